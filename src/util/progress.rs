//! How long work shows where it is and learns that it should stop: one [`Progress`] interface
//! and one [`Cancel`] token for prepare, verify, train, eval and the benchmarks.
//!
//! The library only reports (a phase with a length, its position, a status beside it, lines
//! worth keeping); the binary decides how it looks (progress bars on a terminal, nothing in a
//! pipe or with `--quiet`). Cancellation is cooperative: the binary's signal handler calls
//! [`Cancel::cancel`], and each stage polls [`Cancel::is_cancelled`] at points where it can stop
//! cleanly (between shards, steps, chunks of images), then returns its `Interrupted` error or
//! ending, having written nothing half-done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What long work reports while it runs. Every method has an empty default; the calls come from
/// worker threads too, hence `Sync` and `&self`.
pub trait Progress: Sync {
    /// A phase begins (a split, an epoch, an evaluation): `total` units (records, batches,
    /// images), `done` of them already done by an earlier, interrupted run.
    fn start(&self, _label: &str, _total: u64, _done: u64) {}
    /// `n` more units done.
    fn advance(&self, _n: u64) {}
    /// The position within the phase, when the work knows it rather than counting.
    fn set_position(&self, _done: u64) {}
    /// A short status shown beside the position (speed, running loss), replaced by the next.
    fn status(&self, _text: &str) {}
    /// A line worth keeping (an epoch summary, a notice), printed above the bar.
    fn line(&self, _text: &str) {}
    /// The phase is over.
    fn finish(&self) {}
}

/// Reports nothing (tests, `--quiet`, `--json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;
impl Progress for Silent {}

/// A request to stop, shared between whoever asks (a signal handler) and the work that polls it.
/// Clones share the same flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token nobody has cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the work to stop at its next clean point. Returns whether it had been asked before
    /// (a second request, on which a signal handler may exit at once).
    pub fn cancel(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    /// Whether a stop has been requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_request() {
        let a = Cancel::new();
        let b = a.clone();
        assert!(!b.is_cancelled());
        assert!(!a.cancel());
        assert!(b.is_cancelled());
        assert!(b.cancel(), "a second request is reported as such");
    }
}
