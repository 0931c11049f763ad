//! The binary's face of [`vgg::util::progress`]: one progress bar style for every long command
//! (prepare, verify, train, eval), drawn on stderr only when it is a terminal and neither
//! `--quiet` nor `--json` asked for silence; and the one Ctrl-C handler, which turns the first
//! interrupt into a [`Cancel`] request that the work honours at its next clean point.

use std::io::IsTerminal;
use std::sync::{LazyLock, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use vgg::util::progress::{Cancel, Progress};

/// The process's cancellation token, cancelled by Ctrl-C.
pub static CANCEL: LazyLock<Cancel> = LazyLock::new(Cancel::new);

/// Installs the interrupt handler: the first Ctrl-C asks the running command to stop cleanly,
/// a second one exits at once with 130.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if CANCEL.cancel() {
            eprintln!("\ninterrupted twice: exiting now");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing cleanly (press Ctrl-C again to exit at once)");
    });
}

/// A progress bar per phase, or nothing when hidden. Lines are printed above the bar (or on
/// stderr when there is none), so they stay in the scrollback.
pub struct Bars {
    hidden: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Bars unless `quiet` (or stderr is not a terminal).
    pub fn new(quiet: bool) -> Self {
        Bars {
            hidden: quiet || !std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    fn with(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(b) = self.bar.lock().expect("progress lock").as_ref() {
            f(b);
        }
    }
}

impl Progress for Bars {
    fn start(&self, label: &str, total: u64, done: u64) {
        self.finish();
        if self.hidden {
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>6} [{bar:32.cyan/blue}] {pos}/{len} {per_sec:>12} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.set_position(done);
        bar.reset_eta();
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn advance(&self, n: u64) {
        self.with(|b| b.inc(n));
    }

    fn set_position(&self, done: u64) {
        self.with(|b| b.set_position(done));
    }

    fn status(&self, text: &str) {
        self.with(|b| b.set_message(text.to_string()));
    }

    fn line(&self, text: &str) {
        match self.bar.lock().expect("progress lock").as_ref() {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
    }
}
