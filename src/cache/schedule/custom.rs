//! Per-block custom compute functions (ECAD's T-GATE and the named defaults) and their specs.

use serde_json::{Map, Value};

/// The `name` of ECAD's T-GATE cross-attention function.
pub const TGATE_FUNCTION: &str = "compute_attn_tgate";
/// ECAD's default attention function (explicitly naming it is the same as omitting it).
pub const ATTN_CACHED_FUNCTION: &str = "compute_attn_cached";
/// ECAD's default feed-forward function (explicitly naming it is the same as omitting it).
pub const FF_CACHED_FUNCTION: &str = "compute_ff_cached";

/// A per-block custom compute function (PixArt only), as ECAD's `ComputeAttnRegistry` /
/// `ComputeFFRegistry` know them. Names are matched case-insensitively, as ECAD does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CustomFunction {
    /// `compute_attn_cached`: ECAD's default attention function, named explicitly.
    AttnCached,
    /// `compute_ff_cached`: ECAD's default feed-forward function, named explicitly.
    FfCached,
    /// `compute_attn_tgate` with kwargs `{"gate_step": m}` (m >= 1). ECAD semantics
    /// (`CachedTransformerBlock.compute_attn_tgate`), with `s` the 0-based step index:
    /// - `attn1`: exactly the default cached behaviour (the `attn1` bit decides).
    /// - `attn2`, `s <= m-1`: the default cached behaviour (the `attn2` bit decides; step 0
    ///   always computes).
    /// - `attn2`, `s == m-1`: additionally, the value written to the cache is the mean of the
    ///   two CFG halves `(uncond + cond) / 2` (batch B), while this step still returns the
    ///   un-averaged 2B output.
    /// - `attn2`, `s >= m`: always the cached (averaged) tensor, whatever the bit says.
    ///
    /// The T-GATE pipeline (`config.pipeline = {"name": "tgate", "kwargs": {"gate_step": m}}`)
    /// runs the model from step m on with batch B on the *negative* (null) prompt embeddings
    /// only and applies no CFG combination.
    AttnTgate {
        /// ECAD's `gate_step` (T-GATE's m): the first step that uses the cached average.
        gate_step: usize,
    },
}

impl CustomFunction {
    /// ECAD's function name.
    pub fn name(self) -> &'static str {
        match self {
            CustomFunction::AttnCached => ATTN_CACHED_FUNCTION,
            CustomFunction::FfCached => FF_CACHED_FUNCTION,
            CustomFunction::AttnTgate { .. } => TGATE_FUNCTION,
        }
    }

    /// The JSON object ECAD writes for this function.
    pub fn to_value(self) -> Value {
        let mut kwargs = Map::new();
        if let CustomFunction::AttnTgate { gate_step } = self {
            kwargs.insert("gate_step".into(), Value::from(gate_step as u64));
        }
        let mut obj = Map::new();
        obj.insert("name".into(), Value::from(self.name()));
        obj.insert("kwargs".into(), Value::Object(kwargs));
        Value::Object(obj)
    }
}

/// A custom function entry: the parsed function plus the JSON it came from (written back
/// verbatim).
#[derive(Clone, Debug, PartialEq)]
pub struct CustomSpec {
    /// The parsed function.
    pub function: CustomFunction,
    pub(super) raw: Value,
}

impl CustomSpec {
    /// A spec written in ECAD's canonical form.
    pub fn new(function: CustomFunction) -> Self {
        CustomSpec {
            function,
            raw: function.to_value(),
        }
    }

    /// The JSON object (as read, or canonical for a constructed spec).
    pub fn raw(&self) -> &Value {
        &self.raw
    }
}

/// The custom functions of one block at one step.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BlockCustom {
    /// `custom_compute_attn` (applies to both `attn1` and `attn2`).
    pub attn: Option<CustomSpec>,
    /// `custom_compute_ff`.
    pub ff: Option<CustomSpec>,
}

impl BlockCustom {
    pub(super) fn is_empty(&self) -> bool {
        self.attn.is_none() && self.ff.is_none()
    }
}
