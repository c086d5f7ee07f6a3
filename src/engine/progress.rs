//! Progress and cancellation: what an engine reports while it works, and how a caller stops it.

use crate::error::{Error, Result};

/// One progress report.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<'a> {
    /// A stage of `total` units begins ("denoise" steps, "prompt 2/3", "bench" runs, ...).
    Start { label: &'a str, total: usize },
    /// `done` of the current stage's units are finished.
    Advance { done: usize },
    /// The current stage is over.
    Finish,
    /// A warning for the user (the library itself never prints).
    Warning(&'a str),
}

/// Where an engine sends its [`Event`]s. The callback returns `true` to go on and `false` to
/// cancel: the engine then stops at the next point it can (after the current sampler step) and
/// returns an error of kind [`crate::ErrorKind::Cancelled`].
pub struct Progress<'a> {
    sink: Option<&'a mut (dyn FnMut(&Event<'_>) -> bool + Send)>,
    cancelled: bool,
    current: (usize, usize),
}

impl<'a> Progress<'a> {
    pub fn new(sink: &'a mut (dyn FnMut(&Event<'_>) -> bool + Send)) -> Self {
        Progress {
            sink: Some(sink),
            cancelled: false,
            current: (0, 0),
        }
    }
    /// Reports nothing and never cancels.
    pub fn none() -> Progress<'static> {
        Progress {
            sink: None,
            cancelled: false,
            current: (0, 0),
        }
    }
    fn emit(&mut self, e: &Event<'_>) {
        if let Some(s) = self.sink.as_mut() {
            if !s(e) {
                self.cancelled = true;
            }
        }
    }
    pub fn start(&mut self, label: &str, total: usize) {
        self.current = (0, total);
        self.emit(&Event::Start { label, total });
    }
    /// Reports `done` units of the current stage; returns whether to go on (`false` once the
    /// caller asked to stop), so it can serve directly as a pipeline's step callback.
    pub fn advance(&mut self, done: usize) -> bool {
        self.current.0 = done;
        self.emit(&Event::Advance { done });
        !self.cancelled
    }
    /// One more unit done.
    pub fn tick(&mut self) {
        let _ = self.advance(self.current.0 + 1);
    }
    pub fn finish(&mut self) {
        self.emit(&Event::Finish);
    }
    pub fn warn(&mut self, msg: &str) {
        self.emit(&Event::Warning(msg));
    }
    /// Whether the caller asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }
    /// `Err(Cancelled)` once the caller asked to stop.
    pub fn check(&self) -> Result<()> {
        if self.cancelled {
            Err(Error::cancelled())
        } else {
            Ok(())
        }
    }
}
