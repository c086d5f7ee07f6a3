//! Progress display: a bar on a terminal (stderr). When stderr is not a terminal (a log, a
//! pipe), plain lines instead: one when a stage ends (a denoising run, a search generation), and
//! one per unit of short stages of at most [`LINE_PER_UNIT_MAX`] units (a bench's runs).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// Stages with at most this many units print a line per unit when stderr is not a terminal.
pub const LINE_PER_UNIT_MAX: usize = 32;

pub struct Progress {
    bar: ProgressBar,
    /// Plain-line mode: (label, total, start, units done).
    lines: Option<(String, usize, Instant, std::cell::Cell<usize>)>,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Self {
        // indicatif's stderr target draws only when stderr is a terminal.
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        let lines = (!std::io::stderr().is_terminal()).then(|| {
            (
                label.to_string(),
                total,
                Instant::now(),
                std::cell::Cell::new(0),
            )
        });
        Progress { bar, lines }
    }
    pub fn set(&self, pos: usize) {
        self.bar.set_position(pos as u64);
        self.line_to(pos);
    }
    pub fn inc(&self) {
        self.bar.inc(1);
        if let Some((_, _, _, done)) = &self.lines {
            self.line_to(done.get() + 1);
        }
    }
    /// Plain-line mode: `pos` units are done.
    fn line_to(&self, pos: usize) {
        if let Some((label, total, start, done)) = &self.lines {
            let before = done.replace(pos);
            if *total <= LINE_PER_UNIT_MAX && pos > before && pos < *total {
                eprintln!(
                    "{label}: {}/{total} ({:.1} s)",
                    done.get(),
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    pub fn finish(&self) {
        self.bar.finish_and_clear();
        if let Some((label, total, start, done)) = &self.lines {
            eprintln!(
                "{label}: {}/{total} done in {:.1} s",
                done.get(),
                start.elapsed().as_secs_f64()
            );
        }
    }
}
