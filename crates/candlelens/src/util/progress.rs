//! Progress of long sweeps: a bar on a terminal, a start and an end line elsewhere, nothing when
//! disabled. In a notebook (the evcxr kernel) the lines go to stdout, so an exported report shows
//! them as ordinary output rather than as red stderr blocks; elsewhere they go to stderr, so the
//! CLI's `--json` stdout stays clean.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether this code runs inside the evcxr kernel's child process.
fn in_notebook() -> bool {
    std::env::var_os("EVCXR_IS_RUNTIME").is_some()
}

/// Prints one progress line where this context reads them (see the module docs).
fn line(msg: std::fmt::Arguments) {
    if in_notebook() {
        println!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}

/// A progress reporter (see the module docs for where it writes).
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
        let bar = (enabled && !in_notebook() && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label.to_string());
            b
        });
        if enabled && bar.is_none() {
            line(format_args!("{label}: {total} steps ..."));
        }
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
            None if self.enabled => line(format_args!(
                "{}: {} steps in {:.1} s",
                self.label,
                self.total,
                self.start.elapsed().as_secs_f64()
            )),
            None => {}
        }
    }
}
