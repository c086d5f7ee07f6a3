//! The schedule error type.

use super::ModelFamily;
use std::path::PathBuf;

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
    pub(super) fn invalid(at: impl Into<String>, msg: impl Into<String>) -> Self {
        ScheduleError::Invalid {
            at: at.into(),
            msg: msg.into(),
        }
    }
}

pub(super) type Result<T, E = ScheduleError> = std::result::Result<T, E>;
