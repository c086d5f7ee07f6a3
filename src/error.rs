//! The library's one public error type: an [`ErrorKind`] that callers branch on, and the message
//! (with its cause chain) that names what is wrong and where.
//!
//! Each layer keeps its own detailed error enum (`WeightsError`, `ScheduleError`, ...); they all
//! convert into [`Error`] with a kind chosen from the variant, never from the message text. The
//! CLI maps the kind to its exit code ([`ErrorKind::exit_code`]) and the C ABI to its status code.

use std::fmt;

/// What class of failure an [`Error`] is. Stable: the CLI's exit codes and the C ABI's status
/// codes are derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An argument or input value is out of range, inconsistent or malformed.
    InvalidInput,
    /// A file could not be read or written.
    Io,
    /// A model folder or checkpoint is missing parts, corrupt or does not match its config.
    Checkpoint,
    /// A cache schedule could not be parsed or does not fit the model.
    Schedule,
    /// The device is unavailable or failed (driver missing, out of memory, a kernel error).
    Device,
    /// The request is valid but this build, model or device does not support it.
    Unsupported,
    /// The caller asked the run to stop (a progress callback, a signal).
    Cancelled,
    /// A bug: an invariant of the engine broke. The engine stays usable.
    Internal,
}

impl ErrorKind {
    /// A short lowercase name ("invalid input", "checkpoint", ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Io => "I/O",
            ErrorKind::Checkpoint => "checkpoint",
            ErrorKind::Schedule => "schedule",
            ErrorKind::Device => "device",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }

    /// The CLI's exit status for this kind (documented in the README): 2 invalid input (as for
    /// a usage error), 3 I/O, 4 checkpoint, 5 schedule, 6 device, 7 unsupported, 130 cancelled
    /// (as for SIGINT), 70 internal (EX_SOFTWARE; a panic exits 101).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::InvalidInput => 2,
            ErrorKind::Io => 3,
            ErrorKind::Checkpoint => 4,
            ErrorKind::Schedule => 5,
            ErrorKind::Device => 6,
            ErrorKind::Unsupported => 7,
            ErrorKind::Cancelled => 130,
            ErrorKind::Internal => 70,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The library's error: a kind and a message. The message already includes the cause chain of
/// the layer error it came from, so printing it once (`{e}`) says everything.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// `Result` with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "cancelled by the caller")
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The same error with `context: ` in front of its message (a file name, a flag).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The kind of any error chain: the first error in it whose type the library knows decides
    /// (an [`Error`], or one of the layer errors); an error of an unknown type is invalid input
    /// (the CLI's own argument checks).
    pub fn kind_of(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cur {
            if let Some(k) = known_kind(c) {
                return k;
            }
            cur = c.source();
        }
        ErrorKind::InvalidInput
    }
}

/// The kind of `e` when its type is one of the library's.
fn known_kind(e: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    use crate::backend::BackendError;
    use crate::cache::heuristics::HeuristicError;
    use crate::cache::macs::MacsError;
    use crate::cache::schedule::ScheduleError;
    use crate::models::ModelError;
    use crate::search::SearchError;
    use crate::tokenizer::TokenizerError;
    use crate::weights::WeightsError;
    if let Some(e) = e.downcast_ref::<Error>() {
        return Some(e.kind);
    }
    if let Some(e) = e.downcast_ref::<WeightsError>() {
        return Some(weights_kind(e));
    }
    if let Some(e) = e.downcast_ref::<BackendError>() {
        return Some(backend_kind(e));
    }
    if let Some(e) = e.downcast_ref::<ModelError>() {
        return Some(model_kind(e));
    }
    if let Some(e) = e.downcast_ref::<TokenizerError>() {
        return Some(tokenizer_kind(e));
    }
    if let Some(e) = e.downcast_ref::<ScheduleError>() {
        return Some(schedule_kind(e));
    }
    if let Some(e) = e.downcast_ref::<HeuristicError>() {
        return Some(match e {
            HeuristicError::Schedule(s) => schedule_kind(s),
            _ => ErrorKind::Schedule,
        });
    }
    if let Some(e) = e.downcast_ref::<MacsError>() {
        return Some(match e {
            MacsError::Schedule(s) => schedule_kind(s),
            _ => ErrorKind::InvalidInput,
        });
    }
    if let Some(e) = e.downcast_ref::<crate::cache::builtin::ResolveError>() {
        use crate::cache::builtin::ResolveError as R;
        return Some(match e {
            R::Schedule(s) => schedule_kind(s),
            R::Heuristic(_) | R::Unknown { .. } | R::Policy(_) => ErrorKind::Schedule,
            R::Macs(_) => ErrorKind::InvalidInput,
        });
    }
    if let Some(e) = e.downcast_ref::<SearchError>() {
        return Some(search_kind(e));
    }
    if e.downcast_ref::<std::io::Error>().is_some() {
        return Some(ErrorKind::Io);
    }
    if e.downcast_ref::<serde_json::Error>().is_some() {
        return Some(ErrorKind::InvalidInput);
    }
    None
}

fn weights_kind(e: &crate::weights::WeightsError) -> ErrorKind {
    use crate::weights::WeightsError as W;
    match e {
        W::Io { .. } => ErrorKind::Io,
        _ => ErrorKind::Checkpoint,
    }
}

fn backend_kind(e: &crate::backend::BackendError) -> ErrorKind {
    use crate::backend::BackendError as B;
    match e {
        // A shape the model hands an op is the engine's own doing: the doors validate inputs.
        B::Shape { .. } => ErrorKind::Internal,
        B::OutOfMemory { .. } | B::Device(_) | B::Unavailable(..) => ErrorKind::Device,
    }
}

fn model_kind(e: &crate::models::ModelError) -> ErrorKind {
    use crate::models::ModelError as M;
    match e {
        M::Weights(w) => weights_kind(w),
        M::Backend(b) => backend_kind(b),
        M::Tokenizer(t) => tokenizer_kind(t),
        M::Input(_) => ErrorKind::InvalidInput,
        M::Cancelled { .. } => ErrorKind::Cancelled,
        M::NonFinite { .. } => ErrorKind::InvalidInput,
    }
}

fn tokenizer_kind(e: &crate::tokenizer::TokenizerError) -> ErrorKind {
    use crate::tokenizer::TokenizerError as T;
    match e {
        T::Io { .. } => ErrorKind::Io,
        T::Invalid { .. } | T::Missing { .. } => ErrorKind::Checkpoint,
        T::Encode { .. } => ErrorKind::InvalidInput,
    }
}

fn schedule_kind(e: &crate::cache::schedule::ScheduleError) -> ErrorKind {
    use crate::cache::schedule::ScheduleError as S;
    match e {
        S::Io { .. } => ErrorKind::Io,
        S::InFile { inner, .. } => schedule_kind(inner),
        _ => ErrorKind::Schedule,
    }
}

fn search_kind(e: &crate::search::SearchError) -> ErrorKind {
    use crate::search::SearchError as S;
    match e {
        S::Io { .. } => ErrorKind::Io,
        S::Model(m) => model_kind(m),
        S::Weights(w) => weights_kind(w),
        S::Schedule(s) => schedule_kind(s),
        S::Heuristic(_) => ErrorKind::Schedule,
        S::Macs(_) => ErrorKind::InvalidInput,
        S::Calibration { .. } | S::Seeds(_) | S::Settings(_) => ErrorKind::InvalidInput,
        S::CorruptCheckpoint { .. }
        | S::ForeignCheckpoint { .. }
        | S::CheckpointExists { .. }
        | S::NoCheckpoint { .. } => ErrorKind::InvalidInput,
        // The user's scorer command failed or printed something unusable.
        S::Scorer { .. } => ErrorKind::InvalidInput,
        S::Interrupted { .. } => ErrorKind::Cancelled,
        S::Rank { msg, .. } if msg.starts_with("interrupted") => ErrorKind::Cancelled,
        S::Rank { .. } | S::StoppedByRank0 => ErrorKind::Internal,
    }
}

/// Every layer error converts with its kind; the message keeps the layer's full text.
macro_rules! from_layer {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                let kind = Error::kind_of(&e);
                Error::new(kind, chain_text(&e))
            }
        }
    )*};
}

from_layer!(
    crate::weights::WeightsError,
    crate::backend::BackendError,
    crate::models::ModelError,
    crate::tokenizer::TokenizerError,
    crate::cache::schedule::ScheduleError,
    crate::cache::heuristics::HeuristicError,
    crate::cache::macs::MacsError,
    crate::search::SearchError,
    crate::cache::builtin::ResolveError,
);

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, e.to_string())
    }
}

/// A number over its documented limit (`util::limits`) is invalid input.
impl From<crate::util::limits::OverLimit> for Error {
    fn from(e: crate::util::limits::OverLimit) -> Self {
        Error::invalid(e.to_string())
    }
}

/// `e`'s message followed by each source's that it does not already contain.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_types_not_text() {
        let w = crate::weights::WeightsError::Layout {
            path: "m".into(),
            detail: "invalid input: looks like I/O".into(),
        };
        assert_eq!(Error::from(w).kind(), ErrorKind::Checkpoint);
        let m = crate::models::ModelError::Input("checkpoint missing".into());
        assert_eq!(Error::from(m).kind(), ErrorKind::InvalidInput);
        let b = crate::backend::BackendError::OutOfMemory {
            requested: 1,
            free: 0,
        };
        assert_eq!(Error::from(b).kind(), ErrorKind::Device);
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let wrapped = anyhow::Error::new(io).context("reading x");
        assert_eq!(Error::kind_of(wrapped.as_ref()), ErrorKind::Io);
        let plain = anyhow::anyhow!("--steps must be at least 2");
        assert_eq!(Error::kind_of(plain.as_ref()), ErrorKind::InvalidInput);
    }

    #[test]
    fn exit_codes_are_distinct() {
        use std::collections::HashSet;
        let kinds = [
            ErrorKind::InvalidInput,
            ErrorKind::Io,
            ErrorKind::Checkpoint,
            ErrorKind::Schedule,
            ErrorKind::Device,
            ErrorKind::Unsupported,
            ErrorKind::Cancelled,
            ErrorKind::Internal,
        ];
        let codes: HashSet<i32> = kinds.iter().map(|k| k.exit_code()).collect();
        assert_eq!(codes.len(), kinds.len());
        assert!(!codes.contains(&0) && !codes.contains(&1));
    }
}
