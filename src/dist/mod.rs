//! The process group for data-parallel training: one process per GPU, started by torchrun or
//! Slurm, which must agree on who they are, find each other and sum their gradients.
//!
//! Training code needs four things from here, each in its own file:
//!
//! - [`launch`]: which process this is ([`Launch::from_env`] reads torchrun's or Slurm's
//!   variables; `None` means a plain single-process run);
//! - [`group`]: the rendezvous over TCP ([`Group::connect`]), which also refuses ranks that run
//!   a different build, pipeline or dataset ([`Fingerprint`]), and a host all-reduce, broadcast
//!   and barrier through rank 0. The host all-reduce is for CPU runs and tests; it sums in rank
//!   order, like [`sum_in_rank_order`], so every rank gets the same bits;
//! - [`nccl`]: NCCL on the GPUs for CUDA runs (the group hands out NCCL's unique id with
//!   [`Group::broadcast`]); loaded at run time, and not yet run on a GPU.
//!
//! Every failure is a [`DistError`] that names the rank, variable, address or library involved;
//! nothing here waits forever (every wait is bounded by the group's timeout) or panics on a
//! missing library.

pub mod group;
pub mod launch;
pub mod nccl;

pub use group::{accumulate, sum_in_rank_order, Fingerprint, Group, Summable, CHUNK_BYTES};
pub use launch::{Launch, Launcher, DEFAULT_MASTER_PORT};

use std::io;
use std::time::Duration;

/// Why the process group could not be set up or an operation on it failed. Every message is one
/// sentence naming what went wrong where: the variable, the rank, the address or the library.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launcher variable holds a value that cannot be used.
    #[error("{var}={value:?} {problem}")]
    BadVar {
        var: String,
        value: String,
        problem: String,
    },
    /// A launcher variable that this launch needs is not set.
    #[error("{var} is not set, but {why}")]
    MissingVar { var: &'static str, why: String },
    /// A [`Launch`] built by hand that cannot describe a process group.
    #[error("invalid process group: {what}")]
    InvalidLaunch { what: String },
    /// Rank 0 could not open its listening socket.
    #[error("rank 0 could not listen on {addr} (MASTER_PORT={port}): {source}; is another job using this port? Set MASTER_PORT to a free one")]
    Listen {
        addr: String,
        port: u16,
        #[source]
        source: io::Error,
    },
    /// A rank other than 0 could not connect to rank 0 before the timeout.
    #[error("rank {rank} could not reach rank 0 at {addr} within {waited} (last error: {last}); is rank 0 running, and do MASTER_ADDR and MASTER_PORT point at it? (timeout: [training] sync_timeout)")]
    Unreachable {
        rank: usize,
        addr: String,
        waited: String,
        last: String,
    },
    /// Rank 0 gave up waiting for ranks that never connected.
    #[error("rank 0 waited {waited} for {missing} of {world} at {addr}; did they start?{hint} (timeout: [training] sync_timeout)")]
    RanksMissing {
        waited: String,
        /// e.g. "ranks 2, 3"
        missing: String,
        world: usize,
        addr: String,
        hint: &'static str,
    },
    /// Rank 0 refused a rank at the rendezvous (different world, duplicate rank, different
    /// fingerprint, different protocol); the refused rank gets [`DistError::Aborted`] with the
    /// same reason.
    #[error("rank 0 refused the rendezvous: {reason}")]
    Refused { reason: String },
    /// The ranks entered different operations, or the same one with different sizes.
    #[error("the ranks disagree in {during}: {reason}")]
    Mismatch {
        during: &'static str,
        reason: String,
    },
    /// Rank 0 stopped the rendezvous or an operation and said why (seen on the other ranks).
    #[error("rank 0 stopped the {during}: {reason}")]
    Aborted {
        during: &'static str,
        reason: String,
    },
    /// A peer closed or reset its connection.
    #[error("rank {rank} closed its connection during {during} (did it crash?)")]
    PeerClosed { rank: usize, during: &'static str },
    /// A peer sent nothing (or accepted nothing) for longer than the timeout.
    #[error("rank {rank} sent nothing for {waited} during {during}; did it stall or hang? (timeout: [training] sync_timeout)")]
    PeerStalled {
        rank: usize,
        during: &'static str,
        waited: String,
    },
    /// Any other socket error while talking to a peer.
    #[error("talking to rank {rank} during {during} failed: {source}")]
    Io {
        rank: usize,
        during: &'static str,
        #[source]
        source: io::Error,
    },
    /// A peer sent bytes that are not this protocol.
    #[error("rank {rank} broke the protocol during {during}: {what}")]
    Protocol {
        rank: usize,
        during: &'static str,
        what: String,
    },
    /// An earlier operation failed; the group cannot be used again.
    #[error("the process group already failed ({reason}); restart the job")]
    Broken { reason: String },
    /// A shared library that NCCL or CUDA needs is not there (or does not load).
    #[error("{name} not found: {hint}")]
    Library { name: String, hint: String },
    /// A CUDA driver call failed.
    #[error("CUDA call {call} failed: {message}")]
    Cuda { call: &'static str, message: String },
    /// An NCCL call failed.
    #[error("NCCL call {call} failed: {message}")]
    Nccl { call: &'static str, message: String },
    /// A bad argument to an NCCL wrapper.
    #[error("invalid NCCL argument: {what}")]
    InvalidArgument { what: String },
    /// A call into the CUDA/NCCL bindings panicked (caught; the bindings panic on missing
    /// libraries and symbols).
    #[error("{call} panicked: {message}")]
    Panic { call: &'static str, message: String },
}

impl DistError {
    /// The rank this error is about, when it is about one peer.
    pub fn peer(&self) -> Option<usize> {
        match self {
            DistError::PeerClosed { rank, .. }
            | DistError::PeerStalled { rank, .. }
            | DistError::Io { rank, .. }
            | DistError::Protocol { rank, .. } => Some(*rank),
            _ => None,
        }
    }
}

/// A duration the way the messages print it: "30 s", "1.5 s", "0.25 s".
pub(crate) fn secs(duration: Duration) -> String {
    let s = duration.as_secs_f64();
    if (s - s.round()).abs() < 1e-9 {
        format!("{s:.0} s")
    } else {
        let text = format!("{s:.3}");
        format!("{} s", text.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_without_trailing_zeros() {
        assert_eq!(secs(Duration::from_secs(30)), "30 s");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(secs(Duration::from_millis(250)), "0.25 s");
    }
}
