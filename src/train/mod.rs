//! `vgg train`: the paper's training protocol on ONNX Runtime.
//!
//! - [`step`]: the training-step session, parameters kept inside ONNX Runtime;
//! - [`parallel`]: the step split over replicas, processes and micro-batches;
//! - [`engine`]: which of the two a run uses;
//! - [`schedule`]: the learning-rate schedule's state;
//! - [`metrics`]: `metrics.jsonl` and the plots;
//! - [`run`]: the loop that ties them to the loader, with checkpoints and resume.

pub mod engine;
pub mod metrics;
pub mod parallel;
pub mod run;
pub mod schedule;
pub mod step;

pub use run::{epoch_line, train, Ending, TrainOptions, TrainState, TrainSummary};

use std::path::PathBuf;

/// Why training could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Setup(String),
    /// Tensors or a batch that do not fit the compiled step.
    #[error("{0}")]
    Mismatch(String),
    #[error("ONNX Runtime: {what}: {source}")]
    Ort {
        what: String,
        #[source]
        source: ort::Error,
    },
    #[error("cannot build the training-step graph: {0}")]
    Graph(#[from] crate::net::graph::autodiff::AutodiffError),
    #[error(transparent)]
    Session(#[from] crate::net::session::SessionError),
    #[error(transparent)]
    Checkpoint(#[from] crate::net::checkpoint::CheckpointError),
    #[error(transparent)]
    Loader(#[from] crate::data::loader::LoaderError),
    /// The other processes or the collective (NCCL, the host all-reduce).
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the loss became {loss} at step {step} (epoch {epoch}, batch {batch}): the run stopped; {}",
        match checkpoint {
            Some(p) => format!("the last good checkpoint is {} (lower the learning rate and resume)", p.display()),
            None => "no checkpoint had been written yet".to_string(),
        }
    )]
    NonFinite {
        loss: f32,
        epoch: u64,
        batch: u64,
        step: u64,
        checkpoint: Option<PathBuf>,
    },
}
