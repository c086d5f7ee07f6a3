//! Model families and the cacheable components of their blocks, with ECAD's names for them.

use std::fmt;

/// Every block (PixArt block, FLUX double block, FLUX single block) has three cacheable
/// components.
pub const COMPONENTS_PER_BLOCK: usize = 3;

/// Which transformer family a schedule (or a model) belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// PixArt-α / PixArt-Σ: blocks with `attn1`, `attn2`, `ff`.
    PixArt,
    /// FLUX.1: double blocks (`full_*`) followed by single blocks (`single_*`).
    Flux,
}

impl ModelFamily {
    /// Components of a regular block (PixArt) or a double-stream block (FLUX), in genome order.
    pub fn block_components(self) -> &'static [Component; 3] {
        match self {
            ModelFamily::PixArt => &[Component::Attn1, Component::Attn2, Component::Ff],
            ModelFamily::Flux => &[
                Component::FullAttn,
                Component::FullFf,
                Component::FullFfContext,
            ],
        }
    }

    /// Components of a single-stream block (FLUX only; empty for PixArt), in genome order.
    pub fn single_block_components(self) -> &'static [Component] {
        match self {
            ModelFamily::PixArt => &[],
            ModelFamily::Flux => &[
                Component::SingleAttn,
                Component::SingleProjMlp,
                Component::SingleProjOut,
            ],
        }
    }

    /// All component names of the family, comma separated (for messages).
    pub fn component_list(self) -> String {
        self.block_components()
            .iter()
            .chain(self.single_block_components())
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelFamily::PixArt => "PixArt",
            ModelFamily::Flux => "FLUX",
        })
    }
}

/// One cacheable component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// PixArt self-attention output (after `to_out`, before `gate_msa`).
    Attn1,
    /// PixArt cross-attention output (after `to_out`; PixArt has no gate here).
    Attn2,
    /// PixArt feed-forward output (after the second linear, before `gate_mlp`).
    Ff,
    /// FLUX double block: both joint-attention outputs (image `to_out`, text `to_add_out`).
    FullAttn,
    /// FLUX double block: image-stream FFN output.
    FullFf,
    /// FLUX double block: text-stream FFN output.
    FullFfContext,
    /// FLUX single block: attention output (no output projection in single blocks).
    SingleAttn,
    /// FLUX single block: `proj_mlp` output, before the GELU.
    SingleProjMlp,
    /// FLUX single block: `proj_out` output, before the gate.
    SingleProjOut,
}

impl Component {
    /// Every component, PixArt first, then FLUX double, then FLUX single.
    pub const ALL: [Component; 9] = [
        Component::Attn1,
        Component::Attn2,
        Component::Ff,
        Component::FullAttn,
        Component::FullFf,
        Component::FullFfContext,
        Component::SingleAttn,
        Component::SingleProjMlp,
        Component::SingleProjOut,
    ];

    /// The JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Component::Attn1 => "attn1",
            Component::Attn2 => "attn2",
            Component::Ff => "ff",
            Component::FullAttn => "full_attn",
            Component::FullFf => "full_ff",
            Component::FullFfContext => "full_ff_context",
            Component::SingleAttn => "single_attn",
            Component::SingleProjMlp => "single_proj_mlp",
            Component::SingleProjOut => "single_proj_out",
        }
    }

    /// Parses a JSON key.
    pub fn from_name(name: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The family the component belongs to.
    pub fn family(self) -> ModelFamily {
        match self {
            Component::Attn1 | Component::Attn2 | Component::Ff => ModelFamily::PixArt,
            _ => ModelFamily::Flux,
        }
    }

    /// Whether the component lives in a FLUX single-stream block.
    pub fn is_single(self) -> bool {
        matches!(
            self,
            Component::SingleAttn | Component::SingleProjMlp | Component::SingleProjOut
        )
    }

    /// Position (0, 1 or 2) inside its block, in genome order.
    pub fn slot(self) -> usize {
        match self {
            Component::Attn1 | Component::FullAttn | Component::SingleAttn => 0,
            Component::Attn2 | Component::FullFf | Component::SingleProjMlp => 1,
            Component::Ff | Component::FullFfContext | Component::SingleProjOut => 2,
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
