//! Progress of long sweeps: a bar on a terminal, a compact start/end line elsewhere (notebooks,
//! logs), nothing when disabled.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress reporter on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    start: Instant,
    enabled: bool,
}

impl Progress {
    /// Starts reporting `total` steps of `label`.
    pub fn new(label: &str, total: u64, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label.to_string());
            b
        });
        Progress {
            bar,
            label: label.to_string(),
            total,
            start: Instant::now(),
            enabled,
        }
    }

    /// One step done.
    pub fn inc(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    /// All done: clears the bar, or prints one line with the time taken.
    pub fn finish(&self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None if self.enabled => eprintln!(
                "{}: {} steps in {:.1} s",
                self.label,
                self.total,
                self.start.elapsed().as_secs_f64()
            ),
            None => {}
        }
    }
}
