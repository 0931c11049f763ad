//! The binary's face of [`vgg::util::progress`]: one progress bar style for every long command
//! (prepare, verify, train, eval), drawn on stderr only when it is a terminal and neither
//! `--quiet` nor `--json` asked for silence; and the one signal handler, which turns the first
//! SIGINT (Ctrl-C), SIGTERM (how Slurm and Kubernetes preempt) or SIGUSR1 (Slurm's `--signal`
//! warning) into a [`Cancel`] request that the work honours at its next clean point: training
//! writes its checkpoint, other commands stop having written nothing half-done.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{LazyLock, Mutex};

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use indicatif::{ProgressBar, ProgressStyle};
use vgg::util::progress::{Cancel, Progress};

/// The process's cancellation token, cancelled by the first stop signal.
pub static CANCEL: LazyLock<Cancel> = LazyLock::new(Cancel::new);

/// The first stop signal received (0: none), for the exit code `128 + signal`.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The exit code for a command that stopped on request: 128 plus the signal, as a shell
/// reports a process ended by it (130 for Ctrl-C, 143 for SIGTERM).
pub fn interrupted_code() -> u8 {
    let sig = SIGNAL.load(Ordering::SeqCst);
    u8::try_from(128 + if sig > 0 { sig } else { SIGINT }).unwrap_or(130)
}

/// Installs the stop-signal handler: the first SIGINT, SIGTERM or SIGUSR1 asks the running
/// command to stop cleanly; a second one exits at once.
pub fn install_interrupt_handler() {
    let Ok(mut signals) = Signals::new([SIGINT, SIGTERM, SIGUSR1]) else {
        return; // the default dispositions stay: an interrupt then ends the process at once
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let name = match sig {
                SIGTERM => "SIGTERM",
                SIGUSR1 => "SIGUSR1",
                _ => "interrupt",
            };
            let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
            if CANCEL.cancel() {
                eprintln!("\n{name} again: exiting now");
                std::process::exit(interrupted_code().into());
            }
            eprintln!("\n{name}: finishing cleanly (send it again to exit at once)");
        }
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
