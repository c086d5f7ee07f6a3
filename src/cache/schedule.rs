//! ECAD cache schedules: the JSON format, its validation, lossless round-tripping and the
//! genetic-algorithm genome.
//!
//! A schedule is a boolean tensor `S[step, block, component]`; `true` means *recompute* the
//! component at that step, `false` means *reuse* its most recently computed output. The JSON
//! layout is ECAD's (`CacheSchedule.to_dict`):
//!
//! ```json
//! {
//!   "cache_schedule": {
//!     "num_blocks": 28, "num_inference_steps": 20, "name": "...", "attributes": {...},
//!     "schedule": { "000": { "0": {"attn1": true, "attn2": true, "ff": true}, ... }, ... },
//!     "num_single_blocks": 38            // FLUX only
//!   },
//!   "config": {...},                      // optional, kept untouched
//!   "metrics": {...}                      // optional, kept untouched
//! }
//! ```
//!
//! Block keys are `"0".."N-1"` (PixArt blocks, FLUX double-stream blocks) and
//! `"single_0".."single_M-1"` (FLUX single-stream blocks). PixArt blocks may also carry
//! `custom_compute_attn` / `custom_compute_ff` entries (`{"name": ..., "kwargs": {...}}`), which
//! ECAD uses for T-GATE (see [`CustomFunction`]).
//!
//! Everything this module does not interpret (`config`, `metrics`, unknown top-level keys,
//! unknown `cache_schedule` keys) is kept as [`serde_json::Value`] and written back unchanged, in
//! the original key order, so every shipped ECAD file round-trips without loss.
//!
//! Steps: `num_inference_steps` is the number of denoising steps ECAD runs and counts; the
//! `schedule` object must hold at least that many step entries (`"000"`, `"001"`, ...). One
//! shipped file (`flux_cache_schedules/gen_default/default_1024x1024_gs_5.0_steps_08.json`)
//! declares 8 steps but carries 50 entries; ECAD uses the first 8 (its MAC metrics have 8
//! entries). Extra entries are preserved for round-tripping and otherwise ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Every block (PixArt block, FLUX double block, FLUX single block) has three cacheable
/// components.
pub const COMPONENTS_PER_BLOCK: usize = 3;

/// The `name` of ECAD's T-GATE cross-attention function.
pub const TGATE_FUNCTION: &str = "compute_attn_tgate";
/// ECAD's default attention function (explicitly naming it is the same as omitting it).
pub const ATTN_CACHED_FUNCTION: &str = "compute_attn_cached";
/// ECAD's default feed-forward function (explicitly naming it is the same as omitting it).
pub const FF_CACHED_FUNCTION: &str = "compute_ff_cached";

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
    raw: Value,
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
    fn is_empty(&self) -> bool {
        self.attn.is_none() && self.ff.is_none()
    }
}

/// Errors from reading, building or checking a schedule. Messages name what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The file could not be read.
    #[error("cannot read schedule {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An error inside a file, prefixed with the file's path.
    // Not a `source` field: the message already contains the inner error, and a source would
    // print it twice in error chains.
    #[error("{path}: {inner}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        inner: Box<ScheduleError>,
    },
    /// The text is not JSON.
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// A structural problem at a location (`at`), e.g. `cache_schedule.num_blocks`.
    #[error("{at}: {msg}")]
    Invalid {
        /// Where, e.g. `step 007 block 12`.
        at: String,
        /// What.
        msg: String,
    },
    /// A block lacks one of its components.
    #[error("{at}: missing component `{component}`")]
    MissingComponent {
        /// Where, e.g. `step 007 block 12`.
        at: String,
        /// The missing component.
        component: &'static str,
    },
    /// A block has a key that is not one of its components.
    #[error("{at}: unknown component `{component}` (expected {expected})")]
    UnknownComponent {
        /// Where.
        at: String,
        /// The key found.
        component: String,
        /// The components allowed there.
        expected: String,
    },
    /// A custom function this engine does not know.
    #[error("{at}: unknown custom function `{name}` in `{slot}` (known: {known})")]
    UnknownFunction {
        /// Where.
        at: String,
        /// `custom_compute_attn` or `custom_compute_ff`.
        slot: &'static str,
        /// The name found.
        name: String,
        /// The names accepted in that slot.
        known: &'static str,
    },
    /// The schedule's family is not the model's.
    #[error(
        "schedule is a {schedule} schedule (components {schedule_components}) but the model is \
         {model} (components {model_components})"
    )]
    FamilyMismatch {
        /// The schedule's family.
        schedule: ModelFamily,
        /// Its components.
        schedule_components: String,
        /// The model's family.
        model: ModelFamily,
        /// Its components.
        model_components: String,
    },
    /// Step count mismatch.
    #[error("schedule has {schedule} steps (num_inference_steps) but --steps is {expected}")]
    StepsMismatch {
        /// The schedule's `num_inference_steps`.
        schedule: usize,
        /// The requested step count.
        expected: usize,
    },
    /// Block count mismatch.
    #[error("schedule has {schedule} blocks (num_blocks) but the model has {expected}")]
    BlocksMismatch {
        /// The schedule's `num_blocks`.
        schedule: usize,
        /// The model's block count.
        expected: usize,
    },
    /// Single-block count mismatch (FLUX).
    #[error(
        "schedule has {schedule} single blocks (num_single_blocks) but the model has {expected}"
    )]
    SingleBlocksMismatch {
        /// The schedule's `num_single_blocks`.
        schedule: usize,
        /// The model's single-block count.
        expected: usize,
    },
    /// A genome of the wrong length.
    #[error(
        "genome has {got} bits but {family} with {steps} steps, {blocks} blocks and \
         {single_blocks} single blocks needs {expected}"
    )]
    GenomeLength {
        /// Bits given.
        got: usize,
        /// Bits needed.
        expected: usize,
        /// Family.
        family: ModelFamily,
        /// Steps.
        steps: usize,
        /// Blocks.
        blocks: usize,
        /// Single blocks.
        single_blocks: usize,
    },
}

impl ScheduleError {
    fn invalid(at: impl Into<String>, msg: impl Into<String>) -> Self {
        ScheduleError::Invalid {
            at: at.into(),
            msg: msg.into(),
        }
    }
}

type Result<T, E = ScheduleError> = std::result::Result<T, E>;

const KEY_CACHE_SCHEDULE: &str = "cache_schedule";
const KEY_CONFIG: &str = "config";
const KEY_METRICS: &str = "metrics";
const KEY_NUM_BLOCKS: &str = "num_blocks";
const KEY_NUM_STEPS: &str = "num_inference_steps";
const KEY_NUM_SINGLE: &str = "num_single_blocks";
const KEY_NAME: &str = "name";
const KEY_ATTRIBUTES: &str = "attributes";
const KEY_SCHEDULE: &str = "schedule";
const KEY_CUSTOM_ATTN: &str = "custom_compute_attn";
const KEY_CUSTOM_FF: &str = "custom_compute_ff";

/// An ECAD cache schedule.
///
/// Bits are stored for every step entry, block and component; blocks are indexed per kind:
/// regular/double blocks `0..num_blocks`, single blocks `0..num_single_blocks` (the component
/// says which kind is meant).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    family: ModelFamily,
    num_inference_steps: usize,
    num_blocks: usize,
    num_single_blocks: usize,
    num_step_entries: usize,
    bits: Vec<bool>,
    custom: BTreeMap<(usize, usize), BlockCustom>,
    /// `cache_schedule.name`.
    pub name: String,
    /// `cache_schedule.attributes` (ECAD's free-form description of the schedule).
    pub attributes: Map<String, Value>,
    /// The top-level `config` section, untouched (height/width/guidance/weights/pipeline).
    pub config: Option<Value>,
    /// The top-level `metrics` section, untouched.
    pub metrics: Option<Value>,
    top_extra: Map<String, Value>,
    cache_extra: Map<String, Value>,
    top_order: Vec<String>,
    cache_order: Vec<String>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expect_object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| {
        ScheduleError::invalid(
            at,
            format!("expected a JSON object, found {}", type_name(v)),
        )
    })
}

fn expect_usize(v: &Value, at: &str) -> Result<usize> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            ScheduleError::invalid(at, format!("expected a non-negative integer, found {v}"))
        })
}

fn step_key(step: usize) -> String {
    format!("{step:03}")
}

fn block_label(block: usize, single: bool) -> String {
    if single {
        format!("single_{block}")
    } else {
        block.to_string()
    }
}

fn at_block(step: usize, block: usize, single: bool) -> String {
    format!(
        "step {} block {}",
        step_key(step),
        block_label(block, single)
    )
}

/// Parses a canonical decimal (no sign, no leading zeros except "0").
fn parse_canonical_index(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// Parses a custom function entry in slot `slot` (`custom_compute_attn` / `custom_compute_ff`).
fn parse_custom(v: &Value, slot: &'static str, at: &str) -> Result<CustomSpec> {
    let at_slot = format!("{at} `{slot}`");
    let obj = expect_object(v, &at_slot)?;
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ScheduleError::invalid(
                &at_slot,
                format!("`name` must be a string, found {}", type_name(other)),
            ))
        }
        None => return Err(ScheduleError::invalid(&at_slot, "missing `name`")),
    };
    for k in obj.keys() {
        if k != "name" && k != "kwargs" {
            return Err(ScheduleError::invalid(
                &at_slot,
                format!("unknown key `{k}` (expected `name` and `kwargs`)"),
            ));
        }
    }
    let empty = Map::new();
    let kwargs = match obj.get("kwargs") {
        None => &empty,
        Some(k) => expect_object(k, &format!("{at_slot} kwargs"))?,
    };
    let lname = name.to_ascii_lowercase();
    let (function, allowed): (CustomFunction, &[&str]) = match (slot, lname.as_str()) {
        (KEY_CUSTOM_ATTN, ATTN_CACHED_FUNCTION) => (CustomFunction::AttnCached, &[]),
        (KEY_CUSTOM_ATTN, TGATE_FUNCTION) => {
            let gate = kwargs.get("gate_step").ok_or_else(|| {
                ScheduleError::invalid(
                    &at_slot,
                    format!("`{TGATE_FUNCTION}` needs kwargs.gate_step"),
                )
            })?;
            let gate_step = gate
                .as_u64()
                .and_then(|g| usize::try_from(g).ok())
                .filter(|&g| g >= 1)
                .ok_or_else(|| {
                    ScheduleError::invalid(
                        &at_slot,
                        format!("kwargs.gate_step must be an integer >= 1, found {gate}"),
                    )
                })?;
            (CustomFunction::AttnTgate { gate_step }, &["gate_step"])
        }
        (KEY_CUSTOM_FF, FF_CACHED_FUNCTION) => (CustomFunction::FfCached, &[]),
        _ => {
            return Err(ScheduleError::UnknownFunction {
                at: at.to_string(),
                slot,
                name,
                known: if slot == KEY_CUSTOM_ATTN {
                    "compute_attn_tgate, compute_attn_cached"
                } else {
                    "compute_ff_cached"
                },
            })
        }
    };
    for k in kwargs.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ScheduleError::invalid(
                &at_slot,
                format!("unknown kwarg `{k}` for `{}`", function.name()),
            ));
        }
    }
    Ok(CustomSpec {
        function,
        raw: v.clone(),
    })
}

impl Schedule {
    /// A schedule with every bit set to `fill`, no custom functions, empty attributes and no
    /// `config`/`metrics` sections. `single_blocks` must be 0 for PixArt.
    pub fn new_filled(
        family: ModelFamily,
        steps: usize,
        blocks: usize,
        single_blocks: usize,
        name: impl Into<String>,
        fill: bool,
    ) -> Result<Schedule> {
        if family == ModelFamily::PixArt && single_blocks != 0 {
            return Err(ScheduleError::invalid(
                "schedule",
                format!("PixArt has no single blocks (got {single_blocks})"),
            ));
        }
        Ok(Schedule {
            family,
            num_inference_steps: steps,
            num_blocks: blocks,
            num_single_blocks: single_blocks,
            num_step_entries: steps,
            bits: vec![fill; steps * (blocks + single_blocks) * COMPONENTS_PER_BLOCK],
            custom: BTreeMap::new(),
            name: name.into(),
            attributes: Map::new(),
            config: None,
            metrics: None,
            top_extra: Map::new(),
            cache_extra: Map::new(),
            top_order: Vec::new(),
            cache_order: Vec::new(),
        })
    }

    /// Parses a schedule from JSON text.
    pub fn from_json_str(text: &str) -> Result<Schedule> {
        let v: Value = serde_json::from_str(text)?;
        Schedule::from_value(&v)
    }

    /// Reads and parses a schedule file; errors are prefixed with the path.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Schedule> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScheduleError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Schedule::from_json_str(&text).map_err(|e| ScheduleError::InFile {
            path: path.to_path_buf(),
            inner: Box::new(e),
        })
    }

    /// Parses a schedule from an already-parsed JSON document.
    pub fn from_value(v: &Value) -> Result<Schedule> {
        let top = expect_object(v, "top level")?;
        let cs_v = top.get(KEY_CACHE_SCHEDULE).ok_or_else(|| {
            ScheduleError::invalid("top level", format!("missing `{KEY_CACHE_SCHEDULE}`"))
        })?;
        let cs = expect_object(cs_v, KEY_CACHE_SCHEDULE)?;

        let get = |key: &str| {
            cs.get(key).ok_or_else(|| {
                ScheduleError::invalid(KEY_CACHE_SCHEDULE, format!("missing `{key}`"))
            })
        };
        let num_blocks = expect_usize(get(KEY_NUM_BLOCKS)?, "cache_schedule.num_blocks")?;
        let num_steps = expect_usize(get(KEY_NUM_STEPS)?, "cache_schedule.num_inference_steps")?;
        let name = match get(KEY_NAME)? {
            Value::String(s) => s.clone(),
            other => {
                return Err(ScheduleError::invalid(
                    "cache_schedule.name",
                    format!("expected a string, found {}", type_name(other)),
                ))
            }
        };
        let attributes = match cs.get(KEY_ATTRIBUTES) {
            None => Map::new(),
            Some(a) => expect_object(a, "cache_schedule.attributes")?.clone(),
        };
        let sched = expect_object(get(KEY_SCHEDULE)?, "cache_schedule.schedule")?;

        // Step entries: keys are decimal step indices ("000", ...), as ECAD's int(step).
        let slots = sched.len().max(num_steps);
        let mut steps: Vec<Option<&Map<String, Value>>> = vec![None; slots];
        for (k, sv) in sched {
            let at = format!("cache_schedule.schedule step `{k}`");
            let idx: usize = if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) {
                k.parse()
                    .map_err(|_| ScheduleError::invalid(&at, "step index too large"))?
            } else {
                return Err(ScheduleError::invalid(
                    &at,
                    "step keys must be decimal step indices like \"000\"",
                ));
            };
            if idx >= steps.len() {
                return Err(ScheduleError::invalid(
                    &at,
                    format!(
                        "step {idx} out of range: the schedule has {} step entries and \
                         num_inference_steps {num_steps}, so steps must be numbered 000..{:03}",
                        sched.len(),
                        slots.saturating_sub(1)
                    ),
                ));
            }
            if steps[idx].is_some() {
                return Err(ScheduleError::invalid(
                    &at,
                    format!("step {idx} appears twice"),
                ));
            }
            steps[idx] = Some(expect_object(sv, &format!("step {}", step_key(idx)))?);
        }
        if let Some(missing) = steps.iter().position(Option::is_none) {
            return Err(ScheduleError::invalid(
                "cache_schedule.schedule",
                format!(
                    "missing step `{}` (num_inference_steps is {num_steps})",
                    step_key(missing)
                ),
            ));
        }
        let steps: Vec<&Map<String, Value>> = steps.into_iter().flatten().collect();
        if steps.len() < num_steps {
            return Err(ScheduleError::invalid(
                "cache_schedule.schedule",
                format!(
                    "has {} step entries but num_inference_steps is {num_steps}",
                    steps.len()
                ),
            ));
        }

        // Family: from the first block's components, else from num_single_blocks.
        let family = {
            let first_block = steps
                .first()
                .and_then(|s| s.values().next())
                .and_then(|b| b.as_object());
            let has = |fam: ModelFamily| {
                first_block.is_some_and(|b| {
                    b.keys()
                        .any(|k| Component::from_name(k).is_some_and(|c| c.family() == fam))
                })
            };
            if has(ModelFamily::PixArt) {
                ModelFamily::PixArt
            } else if has(ModelFamily::Flux) || cs.contains_key(KEY_NUM_SINGLE) {
                ModelFamily::Flux
            } else {
                ModelFamily::PixArt
            }
        };
        let num_single_blocks = match family {
            ModelFamily::PixArt => 0,
            ModelFamily::Flux => {
                let v = cs.get(KEY_NUM_SINGLE).ok_or_else(|| {
                    ScheduleError::invalid(
                        KEY_CACHE_SCHEDULE,
                        format!("missing `{KEY_NUM_SINGLE}` (required for FLUX schedules)"),
                    )
                })?;
                expect_usize(v, "cache_schedule.num_single_blocks")?
            }
        };

        let mut s =
            Schedule::new_filled(family, num_steps, num_blocks, num_single_blocks, name, true)?;
        s.num_step_entries = steps.len();
        s.bits = vec![true; steps.len() * s.blocks_per_step() * COMPONENTS_PER_BLOCK];
        s.attributes = attributes;

        for (step, blocks) in steps.iter().enumerate() {
            s.parse_step(step, blocks)?;
        }

        // Top-level and cache_schedule key order, unknown keys kept.
        for (k, v) in top {
            s.top_order.push(k.clone());
            match k.as_str() {
                KEY_CACHE_SCHEDULE => {}
                KEY_CONFIG => s.config = Some(v.clone()),
                KEY_METRICS => s.metrics = Some(v.clone()),
                _ => {
                    s.top_extra.insert(k.clone(), v.clone());
                }
            }
        }
        for (k, v) in cs {
            s.cache_order.push(k.clone());
            let known = matches!(
                k.as_str(),
                KEY_NUM_BLOCKS | KEY_NUM_STEPS | KEY_NAME | KEY_ATTRIBUTES | KEY_SCHEDULE
            ) || (family == ModelFamily::Flux && k == KEY_NUM_SINGLE);
            if !known {
                s.cache_extra.insert(k.clone(), v.clone());
            }
        }
        s.check_config()?;
        Ok(s)
    }

    fn parse_step(&mut self, step: usize, blocks: &Map<String, Value>) -> Result<()> {
        let family = self.family;
        let at_step = format!("step {}", step_key(step));
        let mut seen = vec![false; self.blocks_per_step()];
        for (key, bv) in blocks {
            let (block, single) = if let Some(i) = parse_canonical_index(key) {
                if i >= self.num_blocks {
                    return Err(ScheduleError::invalid(
                        &at_step,
                        format!(
                            "block `{key}` out of range (num_blocks = {})",
                            self.num_blocks
                        ),
                    ));
                }
                (i, false)
            } else if let Some(i) = key
                .strip_prefix("single_")
                .filter(|_| family == ModelFamily::Flux)
                .and_then(parse_canonical_index)
            {
                if i >= self.num_single_blocks {
                    return Err(ScheduleError::invalid(
                        &at_step,
                        format!(
                            "block `{key}` out of range (num_single_blocks = {})",
                            self.num_single_blocks
                        ),
                    ));
                }
                (i, true)
            } else {
                let expected = match family {
                    ModelFamily::PixArt => format!(
                        "PixArt block keys are \"0\"..\"{}\"",
                        self.num_blocks.saturating_sub(1)
                    ),
                    ModelFamily::Flux => format!(
                        "FLUX block keys are \"0\"..\"{}\" and \"single_0\"..\"single_{}\"",
                        self.num_blocks.saturating_sub(1),
                        self.num_single_blocks.saturating_sub(1)
                    ),
                };
                return Err(ScheduleError::invalid(
                    &at_step,
                    format!("unknown block `{key}` ({expected})"),
                ));
            };
            let at = at_block(step, block, single);
            let gidx = self.global_block(block, single);
            if seen[gidx] {
                return Err(ScheduleError::invalid(&at, "block appears twice"));
            }
            seen[gidx] = true;
            let obj = expect_object(bv, &at)?;
            let comps: &[Component] = if single {
                family.single_block_components()
            } else {
                family.block_components()
            };
            let mut have = [false; COMPONENTS_PER_BLOCK];
            let mut custom = BlockCustom::default();
            for (ck, cv) in obj {
                if let Some(c) = comps.iter().copied().find(|c| c.name() == ck) {
                    let bit = cv.as_bool().ok_or_else(|| {
                        ScheduleError::invalid(
                            format!("{at} component `{ck}`"),
                            format!("expected true or false, found {cv}"),
                        )
                    })?;
                    have[c.slot()] = true;
                    let i = self.index(step, gidx, c.slot());
                    self.bits[i] = bit;
                } else if ck == KEY_CUSTOM_ATTN || ck == KEY_CUSTOM_FF {
                    if family != ModelFamily::PixArt {
                        return Err(ScheduleError::invalid(
                            &at,
                            format!("`{ck}`: custom compute functions exist for PixArt only"),
                        ));
                    }
                    if ck == KEY_CUSTOM_ATTN {
                        custom.attn = Some(parse_custom(cv, KEY_CUSTOM_ATTN, &at)?);
                    } else {
                        custom.ff = Some(parse_custom(cv, KEY_CUSTOM_FF, &at)?);
                    }
                } else {
                    let mut expected = comps.iter().map(|c| c.name()).collect::<Vec<_>>();
                    if family == ModelFamily::PixArt {
                        expected.extend([KEY_CUSTOM_ATTN, KEY_CUSTOM_FF]);
                    }
                    let kind = match (family, single) {
                        (ModelFamily::PixArt, _) => "PixArt components",
                        (ModelFamily::Flux, false) => "FLUX double-block components",
                        (ModelFamily::Flux, true) => "FLUX single-block components",
                    };
                    return Err(ScheduleError::UnknownComponent {
                        at,
                        component: ck.clone(),
                        expected: format!("{kind}: {}", expected.join(", ")),
                    });
                }
            }
            for c in comps {
                if !have[c.slot()] {
                    return Err(ScheduleError::MissingComponent {
                        at,
                        component: c.name(),
                    });
                }
            }
            if !custom.is_empty() {
                self.custom.insert((step, block), custom);
            }
        }
        if let Some(g) = seen.iter().position(|&x| !x) {
            let label = if g < self.num_blocks {
                block_label(g, false)
            } else {
                block_label(g - self.num_blocks, true)
            };
            return Err(ScheduleError::invalid(
                &at_step,
                format!("missing block {label}"),
            ));
        }
        Ok(())
    }

    /// Checks the parts of `config` that change execution: a T-GATE pipeline needs an integer
    /// `kwargs.gate_step >= 1`.
    fn check_config(&self) -> Result<()> {
        self.tgate_pipeline_gate_step().map(|_| ())
    }

    /// If `config.pipeline.name` is `"tgate"`, the pipeline's gate step
    /// (`config.pipeline.kwargs.gate_step`): from that step on ECAD's `TGATEPipeline` runs the
    /// transformer on the null (negative) embeddings only, batch B, without CFG. `Ok(None)` for
    /// any other pipeline or no config.
    pub fn tgate_pipeline_gate_step(&self) -> Result<Option<usize>> {
        let Some(pipeline) = self.config.as_ref().and_then(|c| c.get("pipeline")) else {
            return Ok(None);
        };
        if pipeline.get("name").and_then(Value::as_str) != Some("tgate") {
            return Ok(None);
        }
        let g = pipeline.get("kwargs").and_then(|k| k.get("gate_step"));
        match g
            .and_then(Value::as_u64)
            .and_then(|g| usize::try_from(g).ok())
        {
            Some(g) if g >= 1 => Ok(Some(g)),
            _ => Err(ScheduleError::invalid(
                "config.pipeline",
                format!(
                    "the tgate pipeline needs kwargs.gate_step, an integer >= 1 (found {})",
                    g.map_or("nothing".to_string(), |v| v.to_string())
                ),
            )),
        }
    }

    fn blocks_per_step(&self) -> usize {
        self.num_blocks + self.num_single_blocks
    }

    fn global_block(&self, block: usize, single: bool) -> usize {
        if single {
            self.num_blocks + block
        } else {
            block
        }
    }

    fn index(&self, step: usize, gblock: usize, slot: usize) -> usize {
        (step * self.blocks_per_step() + gblock) * COMPONENTS_PER_BLOCK + slot
    }

    fn checked_index(&self, step: usize, block: usize, comp: Component) -> usize {
        assert!(
            comp.family() == self.family,
            "component `{comp}` does not belong to a {} schedule",
            self.family
        );
        let limit = if comp.is_single() {
            self.num_single_blocks
        } else {
            self.num_blocks
        };
        assert!(
            step < self.num_step_entries && block < limit,
            "step {step} block {block} `{comp}` out of range ({} step entries, {limit} blocks)",
            self.num_step_entries
        );
        self.index(
            step,
            self.global_block(block, comp.is_single()),
            comp.slot(),
        )
    }

    /// The model family.
    pub fn family(&self) -> ModelFamily {
        self.family
    }

    /// `num_inference_steps`: the number of denoising steps the schedule is for.
    pub fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }

    /// The number of step entries in the `schedule` object (>= `num_inference_steps`).
    pub fn num_step_entries(&self) -> usize {
        self.num_step_entries
    }

    /// `num_blocks` (PixArt blocks or FLUX double blocks).
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// `num_single_blocks` (FLUX; 0 for PixArt).
    pub fn num_single_blocks(&self) -> usize {
        self.num_single_blocks
    }

    /// The raw bit: `true` = recompute at this step, `false` = reuse the cached output.
    /// `block` indexes single blocks when `comp` is a single-block component.
    ///
    /// Panics when the component is not of the schedule's family or the indices are out of
    /// range (check with [`Schedule::validate_for`] first).
    pub fn recompute(&self, step: usize, block: usize, comp: Component) -> bool {
        self.bits[self.checked_index(step, block, comp)]
    }

    /// Sets a bit (same indexing and panics as [`Schedule::recompute`]).
    pub fn set(&mut self, step: usize, block: usize, comp: Component, recompute: bool) {
        let i = self.checked_index(step, block, comp);
        self.bits[i] = recompute;
    }

    /// Whether ECAD actually computes the component at this step:
    /// - step 0 always computes (the cache is empty, whatever the bit says);
    /// - `attn2` of a block whose `custom_compute_attn` is T-GATE with gate step m is never
    ///   computed from step m on (the cached average is used);
    /// - otherwise the bit decides.
    pub fn effective_recompute(&self, step: usize, block: usize, comp: Component) -> bool {
        let bit = self.recompute(step, block, comp);
        if comp == Component::Attn2 {
            if let Some(CustomFunction::AttnTgate { gate_step }) =
                self.custom_compute_attn(step, block)
            {
                if step >= gate_step {
                    return false;
                }
            }
        }
        step == 0 || bit
    }

    /// The block's `custom_compute_attn` at this step, if any.
    pub fn custom_compute_attn(&self, step: usize, block: usize) -> Option<CustomFunction> {
        self.custom
            .get(&(step, block))
            .and_then(|c| c.attn.as_ref())
            .map(|s| s.function)
    }

    /// The block's `custom_compute_ff` at this step, if any.
    pub fn custom_compute_ff(&self, step: usize, block: usize) -> Option<CustomFunction> {
        self.custom
            .get(&(step, block))
            .and_then(|c| c.ff.as_ref())
            .map(|s| s.function)
    }

    /// Sets or clears a block's `custom_compute_attn` (PixArt only; panics otherwise, or when
    /// out of range, or when given a feed-forward function).
    pub fn set_custom_compute_attn(
        &mut self,
        step: usize,
        block: usize,
        f: Option<CustomFunction>,
    ) {
        assert!(
            self.family == ModelFamily::PixArt,
            "custom functions are PixArt-only"
        );
        assert!(
            step < self.num_step_entries && block < self.num_blocks,
            "out of range"
        );
        assert!(
            !matches!(f, Some(CustomFunction::FfCached)),
            "compute_ff_cached is not an attention function"
        );
        let e = self.custom.entry((step, block)).or_default();
        e.attn = f.map(CustomSpec::new);
        if e.is_empty() {
            self.custom.remove(&(step, block));
        }
    }

    /// Sets or clears a block's `custom_compute_ff` (PixArt only; panics otherwise).
    pub fn set_custom_compute_ff(&mut self, step: usize, block: usize, f: Option<CustomFunction>) {
        assert!(
            self.family == ModelFamily::PixArt,
            "custom functions are PixArt-only"
        );
        assert!(
            step < self.num_step_entries && block < self.num_blocks,
            "out of range"
        );
        assert!(
            matches!(f, None | Some(CustomFunction::FfCached)),
            "only compute_ff_cached is a feed-forward function"
        );
        let e = self.custom.entry((step, block)).or_default();
        e.ff = f.map(CustomSpec::new);
        if e.is_empty() {
            self.custom.remove(&(step, block));
        }
    }

    /// Whether any block uses a custom function.
    pub fn has_custom_functions(&self) -> bool {
        !self.custom.is_empty()
    }

    /// Refuses a schedule that does not fit the model: family (component names), step count
    /// (`num_inference_steps` vs `steps`), block count, single-block count.
    pub fn validate_for(
        &self,
        steps: usize,
        blocks: usize,
        single_blocks: usize,
        family: ModelFamily,
    ) -> Result<()> {
        if self.family != family {
            return Err(ScheduleError::FamilyMismatch {
                schedule: self.family,
                schedule_components: self.family.component_list(),
                model: family,
                model_components: family.component_list(),
            });
        }
        if self.num_inference_steps != steps {
            return Err(ScheduleError::StepsMismatch {
                schedule: self.num_inference_steps,
                expected: steps,
            });
        }
        if self.num_blocks != blocks {
            return Err(ScheduleError::BlocksMismatch {
                schedule: self.num_blocks,
                expected: blocks,
            });
        }
        if self.num_single_blocks != single_blocks {
            return Err(ScheduleError::SingleBlocksMismatch {
                schedule: self.num_single_blocks,
                expected: single_blocks,
            });
        }
        Ok(())
    }

    /// The genome length ECAD's GA uses: `steps * (blocks + single_blocks) * 3`.
    pub fn genome_len(steps: usize, blocks: usize, single_blocks: usize) -> usize {
        steps * (blocks + single_blocks) * COMPONENTS_PER_BLOCK
    }

    /// The GA genome in ECAD's order, over the first `num_inference_steps` steps: step-major;
    /// PixArt: per step the blocks, each `[attn1, attn2, ff]`; FLUX: per step the double blocks,
    /// each `[full_attn, full_ff, full_ff_context]`, then the single blocks, each
    /// `[single_attn, single_proj_mlp, single_proj_out]`. Custom functions are not part of it.
    pub fn to_genome(&self) -> Vec<bool> {
        let n = Schedule::genome_len(
            self.num_inference_steps,
            self.num_blocks,
            self.num_single_blocks,
        );
        self.bits[..n].to_vec()
    }

    /// Builds a schedule from a genome (the inverse of [`Schedule::to_genome`]), as ECAD's
    /// population manager writes a GA candidate: attributes are ECAD's
    /// `compute_additional_info` ([`Schedule::ecad_attributes`]), `config` is `{}` (ECAD copies
    /// the run's config there; set it if you have one), no metrics.
    pub fn from_genome(
        family: ModelFamily,
        steps: usize,
        blocks: usize,
        single_blocks: usize,
        genome: &[bool],
        name: impl Into<String>,
    ) -> Result<Schedule> {
        let expected = Schedule::genome_len(steps, blocks, single_blocks);
        if genome.len() != expected {
            return Err(ScheduleError::GenomeLength {
                got: genome.len(),
                expected,
                family,
                steps,
                blocks,
                single_blocks,
            });
        }
        let mut s = Schedule::new_filled(family, steps, blocks, single_blocks, name, true)?;
        s.bits.copy_from_slice(genome);
        s.attributes = s.ecad_attributes();
        s.config = Some(Value::Object(Map::new()));
        Ok(s)
    }

    /// ECAD's `compute_additional_info` for GA candidates, computed over the first
    /// `num_inference_steps` steps against the all-recompute default: PixArt
    /// `{num_affected_steps, num_affected_blocks, total_num_affected_blocks}`; FLUX
    /// `{num_affected_steps, num_affected_blocks, num_affected_blocks_single,
    /// total_num_affected_blocks}`. A block is affected when any bit is false or it has a
    /// custom function.
    pub fn ecad_attributes(&self) -> Map<String, Value> {
        let mut affected_steps = 0u64;
        let mut total = 0u64;
        let mut full = vec![false; self.num_blocks];
        let mut single = vec![false; self.num_single_blocks];
        for step in 0..self.num_inference_steps {
            let mut step_affected = false;
            for g in 0..self.blocks_per_step() {
                let i = self.index(step, g, 0);
                let mut affected = self.bits[i..i + COMPONENTS_PER_BLOCK].iter().any(|b| !b);
                if g < self.num_blocks && self.custom.contains_key(&(step, g)) {
                    affected = true;
                }
                if affected {
                    step_affected = true;
                    total += 1;
                    if g < self.num_blocks {
                        full[g] = true;
                    } else {
                        single[g - self.num_blocks] = true;
                    }
                }
            }
            affected_steps += u64::from(step_affected);
        }
        let count = |v: &[bool]| v.iter().filter(|&&b| b).count() as u64;
        let mut m = Map::new();
        m.insert("num_affected_steps".into(), affected_steps.into());
        m.insert("num_affected_blocks".into(), count(&full).into());
        if self.family == ModelFamily::Flux {
            m.insert("num_affected_blocks_single".into(), count(&single).into());
        }
        m.insert("total_num_affected_blocks".into(), total.into());
        m
    }

    /// Sets the preferred key order of the top level and of `cache_schedule` (used by the
    /// heuristic generators to reproduce ECAD's files byte for byte). Keys not listed are
    /// written after the listed ones, in canonical order.
    pub(crate) fn set_key_order(&mut self, top: &[&str], cache: &[&str]) {
        self.top_order = top.iter().map(|s| s.to_string()).collect();
        self.cache_order = cache.iter().map(|s| s.to_string()).collect();
    }

    fn schedule_value(&self) -> Value {
        let mut steps = Map::new();
        for step in 0..self.num_step_entries {
            let mut blocks = Map::new();
            for g in 0..self.blocks_per_step() {
                let single = g >= self.num_blocks;
                let (b, comps): (usize, &[Component]) = if single {
                    (g - self.num_blocks, self.family.single_block_components())
                } else {
                    (g, self.family.block_components())
                };
                let mut obj = Map::new();
                for c in comps {
                    obj.insert(
                        c.name().into(),
                        Value::Bool(self.bits[self.index(step, g, c.slot())]),
                    );
                }
                if !single {
                    if let Some(custom) = self.custom.get(&(step, b)) {
                        if let Some(a) = &custom.attn {
                            obj.insert(KEY_CUSTOM_ATTN.into(), a.raw.clone());
                        }
                        if let Some(f) = &custom.ff {
                            obj.insert(KEY_CUSTOM_FF.into(), f.raw.clone());
                        }
                    }
                }
                blocks.insert(block_label(b, single), Value::Object(obj));
            }
            steps.insert(step_key(step), Value::Object(blocks));
        }
        Value::Object(steps)
    }

    fn cache_schedule_value(&self) -> Value {
        let mut canonical = vec![
            KEY_NUM_BLOCKS,
            KEY_NUM_STEPS,
            KEY_NAME,
            KEY_ATTRIBUTES,
            KEY_SCHEDULE,
        ];
        if self.family == ModelFamily::Flux {
            canonical.push(KEY_NUM_SINGLE);
        }
        let value_of = |k: &str| -> Option<Value> {
            match k {
                KEY_NUM_BLOCKS => Some(Value::from(self.num_blocks as u64)),
                KEY_NUM_STEPS => Some(Value::from(self.num_inference_steps as u64)),
                KEY_NAME => Some(Value::from(self.name.clone())),
                KEY_ATTRIBUTES => Some(Value::Object(self.attributes.clone())),
                KEY_SCHEDULE => Some(self.schedule_value()),
                KEY_NUM_SINGLE if self.family == ModelFamily::Flux => {
                    Some(Value::from(self.num_single_blocks as u64))
                }
                other => self.cache_extra.get(other).cloned(),
            }
        };
        let mut m = Map::new();
        for k in &self.cache_order {
            if let Some(v) = value_of(k) {
                m.insert(k.clone(), v);
            }
        }
        for k in canonical {
            if !m.contains_key(k) {
                // attributes are always written (ECAD always writes them).
                if let Some(v) = value_of(k) {
                    m.insert(k.to_string(), v);
                }
            }
        }
        for (k, v) in &self.cache_extra {
            if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// The whole document as JSON.
    pub fn to_value(&self) -> Value {
        let value_of = |k: &str| -> Option<Value> {
            match k {
                KEY_CACHE_SCHEDULE => Some(self.cache_schedule_value()),
                KEY_CONFIG => self.config.clone(),
                KEY_METRICS => self.metrics.clone(),
                other => self.top_extra.get(other).cloned(),
            }
        };
        let mut m = Map::new();
        for k in &self.top_order {
            if let Some(v) = value_of(k) {
                m.insert(k.clone(), v);
            }
        }
        for k in [KEY_CACHE_SCHEDULE, KEY_CONFIG, KEY_METRICS] {
            if !m.contains_key(k) {
                if let Some(v) = value_of(k) {
                    m.insert(k.to_string(), v);
                }
            }
        }
        for (k, v) in &self.top_extra {
            if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// Pretty JSON with ECAD's 4-space indentation (`json.dump(data, f, indent=4)`).
    pub fn to_json_string(&self) -> String {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&self.to_value(), &mut ser)
            .expect("serializing a serde_json::Value cannot fail");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixart_json(step_count: usize, blocks: usize, patch: impl Fn(&mut Value)) -> String {
        let s =
            Schedule::new_filled(ModelFamily::PixArt, step_count, blocks, 0, "t", true).unwrap();
        let mut v = s.to_value();
        patch(&mut v);
        v.to_string()
    }

    fn err(text: &str) -> String {
        Schedule::from_json_str(text).unwrap_err().to_string()
    }

    #[test]
    fn error_missing_component() {
        let t = pixart_json(8, 13, |v| {
            v["cache_schedule"]["schedule"]["007"]["12"]
                .as_object_mut()
                .unwrap()
                .remove("ff");
        });
        assert_eq!(err(&t), "step 007 block 12: missing component `ff`");
    }

    #[test]
    fn error_unknown_component() {
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["001"]["2"]["attn3"] = Value::Bool(true);
        });
        let e = err(&t);
        assert!(
            e.starts_with("step 001 block 2: unknown component `attn3`"),
            "{e}"
        );
        assert!(e.contains("attn1, attn2, ff"), "{e}");
    }

    #[test]
    fn error_not_json() {
        let e = err("{ not json");
        assert!(e.starts_with("not JSON: "), "{e}");
    }

    #[test]
    fn error_bad_bit_and_missing_block_and_step() {
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["001"]["2"]["ff"] = Value::from(1);
        });
        assert_eq!(
            err(&t),
            "step 001 block 2 component `ff`: expected true or false, found 1"
        );
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["001"]
                .as_object_mut()
                .unwrap()
                .remove("1");
        });
        assert_eq!(err(&t), "step 001: missing block 1");
        let t = pixart_json(3, 3, |v| {
            v["cache_schedule"]["num_inference_steps"] = Value::from(4);
        });
        assert_eq!(
            err(&t),
            "cache_schedule.schedule: missing step `003` (num_inference_steps is 4)"
        );
        let t = pixart_json(3, 3, |v| {
            v["cache_schedule"]["schedule"]["000"]["3"] =
                v["cache_schedule"]["schedule"]["000"]["2"].clone();
        });
        assert_eq!(err(&t), "step 000: block `3` out of range (num_blocks = 3)");
    }

    #[test]
    fn error_unknown_function() {
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["000"]["1"]["custom_compute_attn"] =
                serde_json::json!({"name": "compute_attn_magic", "kwargs": {}});
        });
        assert_eq!(
            err(&t),
            "step 000 block 1: unknown custom function `compute_attn_magic` in \
             `custom_compute_attn` (known: compute_attn_tgate, compute_attn_cached)"
        );
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["000"]["1"]["custom_compute_attn"] =
                serde_json::json!({"name": "compute_attn_tgate", "kwargs": {}});
        });
        assert_eq!(
            err(&t),
            "step 000 block 1 `custom_compute_attn`: `compute_attn_tgate` needs kwargs.gate_step"
        );
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["000"]["1"]["custom_compute_attn"] =
                serde_json::json!({"name": "compute_attn_tgate", "kwargs": {"gate_step": 0}});
        });
        assert!(err(&t).contains("gate_step must be an integer >= 1"));
    }

    #[test]
    fn flux_errors() {
        let f = Schedule::new_filled(ModelFamily::Flux, 2, 2, 2, "f", true).unwrap();
        let mut v = f.to_value();
        v["cache_schedule"]["schedule"]["001"]["1"]["single_attn"] = Value::Bool(true);
        let e = err(&v.to_string());
        assert_eq!(
            e,
            "step 001 block 1: unknown component `single_attn` (expected FLUX double-block \
             components: full_attn, full_ff, full_ff_context)"
        );
        let mut v = f.to_value();
        v["cache_schedule"]["schedule"]["000"]["single_1"]["custom_compute_attn"] =
            serde_json::json!({"name": "compute_attn_tgate", "kwargs": {"gate_step": 1}});
        assert_eq!(
            err(&v.to_string()),
            "step 000 block single_1: `custom_compute_attn`: custom compute functions exist for \
             PixArt only"
        );
        let mut v = f.to_value();
        v["cache_schedule"]
            .as_object_mut()
            .unwrap()
            .remove("num_single_blocks");
        assert_eq!(
            err(&v.to_string()),
            "cache_schedule: missing `num_single_blocks` (required for FLUX schedules)"
        );
        let t = pixart_json(1, 2, |v| {
            v["cache_schedule"]["schedule"]["000"]["single_0"] =
                v["cache_schedule"]["schedule"]["000"]["0"].clone();
        });
        assert_eq!(
            err(&t),
            "step 000: unknown block `single_0` (PixArt block keys are \"0\"..\"1\")"
        );
    }

    #[test]
    fn error_from_path_names_file() {
        let e = Schedule::from_path("/nonexistent/x.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read schedule /nonexistent/x.json"),
            "{e}"
        );
    }

    #[test]
    fn validate_messages() {
        let s = Schedule::new_filled(ModelFamily::PixArt, 20, 28, 0, "t", true).unwrap();
        assert!(s.validate_for(20, 28, 0, ModelFamily::PixArt).is_ok());
        assert_eq!(
            s.validate_for(25, 28, 0, ModelFamily::PixArt)
                .unwrap_err()
                .to_string(),
            "schedule has 20 steps (num_inference_steps) but --steps is 25"
        );
        assert_eq!(
            s.validate_for(20, 24, 0, ModelFamily::PixArt)
                .unwrap_err()
                .to_string(),
            "schedule has 28 blocks (num_blocks) but the model has 24"
        );
        let e = s
            .validate_for(20, 28, 0, ModelFamily::Flux)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "schedule is a PixArt schedule (components attn1, attn2, ff) but the model is FLUX"
            ),
            "{e}"
        );
        let f = Schedule::new_filled(ModelFamily::Flux, 20, 19, 38, "t", true).unwrap();
        assert_eq!(
            f.validate_for(20, 19, 20, ModelFamily::Flux)
                .unwrap_err()
                .to_string(),
            "schedule has 38 single blocks (num_single_blocks) but the model has 20"
        );
    }

    #[test]
    fn genome_roundtrip_and_order() {
        let mut s = Schedule::new_filled(ModelFamily::Flux, 2, 2, 3, "g", true).unwrap();
        s.set(1, 0, Component::FullFf, false);
        s.set(1, 2, Component::SingleProjOut, false);
        let g = s.to_genome();
        assert_eq!(g.len(), 2 * 5 * 3);
        // step 1 starts at 15; full block 0 ff is slot 1
        assert!(!g[15 + 1]);
        // single block 2 = global block 4 -> 15 + 4*3 + 2
        assert!(!g[15 + 14]);
        assert_eq!(g.iter().filter(|b| !**b).count(), 2);
        let t = Schedule::from_genome(ModelFamily::Flux, 2, 2, 3, &g, "g").unwrap();
        assert_eq!(t.to_genome(), g);
        assert_eq!(
            serde_json::Value::Object(t.attributes.clone()),
            serde_json::json!({"num_affected_steps": 1, "num_affected_blocks": 1,
                "num_affected_blocks_single": 1, "total_num_affected_blocks": 2})
        );
        let e = Schedule::from_genome(ModelFamily::Flux, 2, 2, 3, &g[1..], "g").unwrap_err();
        assert_eq!(
            e.to_string(),
            "genome has 29 bits but FLUX with 2 steps, 2 blocks and 3 single blocks needs 30"
        );
    }

    #[test]
    fn effective_recompute_step0_and_tgate() {
        let mut s = Schedule::new_filled(ModelFamily::PixArt, 4, 1, 0, "t", false).unwrap();
        assert!(s.effective_recompute(0, 0, Component::Attn1));
        assert!(!s.effective_recompute(1, 0, Component::Attn1));
        for step in 0..4 {
            s.set(step, 0, Component::Attn2, true);
            s.set_custom_compute_attn(step, 0, Some(CustomFunction::AttnTgate { gate_step: 2 }));
        }
        assert!(s.effective_recompute(1, 0, Component::Attn2));
        assert!(!s.effective_recompute(2, 0, Component::Attn2));
        let back = Schedule::from_json_str(&s.to_json_string()).unwrap();
        assert_eq!(back.to_value(), s.to_value());
        assert_eq!(
            back.custom_compute_attn(3, 0),
            Some(CustomFunction::AttnTgate { gate_step: 2 })
        );
    }
}
