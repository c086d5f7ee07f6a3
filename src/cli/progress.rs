//! Progress display: a bar on a terminal (stderr), nothing when piped.

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
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
        Progress { bar }
    }
    pub fn set(&self, pos: usize) {
        self.bar.set_position(pos as u64);
    }
    pub fn inc(&self) {
        self.bar.inc(1);
    }
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
