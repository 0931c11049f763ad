//! ONNX Runtime sessions for the project's graphs, on the CPU or a CUDA device.
//!
//! Every stage that runs a network (training step, evaluation, benchmarks, tests) builds its
//! session here, so the choice of execution provider, thread count and optimisation level is
//! made once, and a missing CUDA provider is one clear error instead of a silent fall-back to
//! the CPU.

use std::fmt;
use std::str::FromStr;

use ort::ep::CUDA;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::net::graph::ir::Graph;
use crate::net::runtime::{self, RuntimeError};

/// Where a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Device {
    Cpu,
    /// CUDA device ordinal.
    Cuda(i32),
}

impl FromStr for Device {
    type Err = String;
    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|&n| n >= 0)
                .map(Device::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: use cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How to build a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    pub device: Device,
    /// Intra-op threads on the CPU; 0 lets ONNX Runtime choose (one per core).
    pub threads: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            device: Device::Cpu,
            threads: 0,
        }
    }
}

/// Why a session could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(
        "the loaded ONNX Runtime ({library}) has no CUDA execution provider (it has: {available}); \
         install the GPU build (`onnxruntime-gpu`, see docs/onnxruntime.md) and point \
         ORT_DYLIB_PATH at its libonnxruntime.so"
    )]
    NoCuda { library: String, available: String },
    #[error("ONNX Runtime refused the {graph} graph: {source}")]
    Build {
        graph: String,
        #[source]
        source: ort::Error,
    },
}

/// Builds a session for `graph`.
pub fn build(graph: &Graph, settings: &SessionSettings) -> Result<Session, SessionError> {
    build_from_bytes(&graph.encode(), &graph.name, settings)
}

/// Builds a session for a serialized model; `what` names it in errors.
pub fn build_from_bytes(
    model: &[u8],
    what: &str,
    settings: &SessionSettings,
) -> Result<Session, SessionError> {
    let env = runtime::init()?;
    let err = |e: ort::Error| SessionError::Build {
        graph: what.to_string(),
        source: e,
    };
    let mut builder = Session::builder(&env)
        .map_err(err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| err(e.into()))?;
    if settings.threads > 0 {
        builder = builder
            .with_intra_threads(settings.threads)
            .map_err(|e| err(e.into()))?;
    }
    if let Device::Cuda(id) = settings.device {
        let info = runtime::info()?;
        if !info.providers.iter().any(|p| p == "CUDAExecutionProvider") {
            return Err(SessionError::NoCuda {
                library: info.library.display().to_string(),
                available: info.providers.join(", "),
            });
        }
        builder = builder
            .with_execution_providers([CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure()])
            .map_err(|e| err(e.into()))?;
    }
    builder.commit_from_memory(model).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!("gpu"
            .parse::<Device>()
            .unwrap_err()
            .contains("cpu, cuda or cuda:N"));
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }
}
