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

/// The devices of a data-parallel run: `cpu`, `cuda` (device 0), `cuda:N`, or several CUDA
/// devices `cuda:0,1,2,3` (one replica each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    pub list: Vec<Device>,
    /// A CUDA index was written (`cuda:0`, not `cuda`).
    pub indexed: bool,
}

impl FromStr for Devices {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(list) = s.strip_prefix("cuda:").filter(|l| l.contains(',')) {
            let ids = list
                .split(',')
                .map(|n| n.trim().parse::<i32>().ok().filter(|&n| n >= 0))
                .collect::<Option<Vec<i32>>>()
                .ok_or_else(|| format!("`{s}` is not a device list: use e.g. cuda:0,1,2,3"))?;
            let mut seen = ids.clone();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() != ids.len() {
                return Err(format!(
                    "`{s}` names a device twice (for replicas sharing one device use --replicas)"
                ));
            }
            return Ok(Devices {
                list: ids.into_iter().map(Device::Cuda).collect(),
                indexed: true,
            });
        }
        Ok(Devices {
            list: vec![s.parse()?],
            indexed: s.starts_with("cuda:"),
        })
    }
}

impl Devices {
    /// `replicas` replicas over these devices: `cpu` repeated; `cuda` (device 0) becomes
    /// devices 0..replicas; a single `cuda:N` is shared by all replicas; a list must have
    /// `replicas` entries.
    pub fn replicas(&self, replicas: usize) -> Result<Vec<Device>, String> {
        if replicas == 0 {
            return Err("--replicas must be at least 1".into());
        }
        match self.list.as_slice() {
            [Device::Cpu] => Ok(vec![Device::Cpu; replicas]),
            [Device::Cuda(0)] if !self.indexed => {
                Ok((0..replicas as i32).map(Device::Cuda).collect())
            }
            [one] => Ok(vec![*one; replicas]),
            list if replicas == 1 || list.len() == replicas => Ok(list.to_vec()),
            list => Err(format!(
                "--replicas {replicas} with {} devices listed: give one device per replica",
                list.len()
            )),
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

/// Rarer session options: a user compute stream, profiling, TF32.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// The CUDA stream (a `CUstream`) ONNX Runtime's kernels run on, so that another library
    /// (NCCL) can queue work on the same stream in order with them.
    pub cuda_stream: Option<*mut std::ffi::c_void>,
    /// Writes ONNX Runtime's profile (JSON, one event per node run, with its provider) to a
    /// file starting with this prefix.
    pub profile: Option<std::path::PathBuf>,
    /// Sets the CUDA provider's `use_tf32` to 0, for exact comparisons with the CPU; otherwise
    /// the provider's default applies (its cuDNN frontend path may use TF32).
    pub no_tf32: bool,
    /// Intra-op threads sleep as soon as a run ends instead of spinning for more work: for a
    /// session that runs briefly between other sessions' runs (the update after the
    /// gradients), whose spinning threads would otherwise take the cores from them.
    pub no_spinning: bool,
}

/// Builds a session for `graph`.
pub fn build(graph: &Graph, settings: &SessionSettings) -> Result<Session, SessionError> {
    build_from_bytes(&graph.encode(), &graph.name, settings)
}

/// Builds a session for `graph` with [`Extras`].
pub fn build_with(
    graph: &Graph,
    settings: &SessionSettings,
    extras: &Extras,
) -> Result<Session, SessionError> {
    build_from_bytes_with(&graph.encode(), &graph.name, settings, extras)
}

/// Builds a session for a serialized model; `what` names it in errors.
pub fn build_from_bytes(
    model: &[u8],
    what: &str,
    settings: &SessionSettings,
) -> Result<Session, SessionError> {
    build_from_bytes_with(model, what, settings, &Extras::default())
}

fn build_from_bytes_with(
    model: &[u8],
    what: &str,
    settings: &SessionSettings,
    extras: &Extras,
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
        let mut cuda = CUDA::default().with_device_id(id);
        if let Some(stream) = extras.cuda_stream {
            // SAFETY: the caller keeps the stream alive for the session's lifetime (it is owned
            // next to the session, see train::parallel).
            cuda = unsafe { cuda.with_compute_stream(stream.cast()) };
        }
        if extras.no_tf32 {
            cuda = cuda.with_tf32(false);
        }
        builder = builder
            .with_execution_providers([cuda.build().error_on_failure()])
            .map_err(|e| err(e.into()))?;
    }
    if extras.no_spinning {
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(|e| err(e.into()))?;
    }
    if let Some(prefix) = &extras.profile {
        builder = builder.with_profiling(prefix).map_err(|e| err(e.into()))?;
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

    #[test]
    fn device_lists_parse_and_spread_replicas() {
        let d = |s: &str| s.parse::<Devices>();
        assert_eq!(
            d("cuda:0,1,3").unwrap().list,
            vec![Device::Cuda(0), Device::Cuda(1), Device::Cuda(3)]
        );
        assert!(d("cuda:0,0").unwrap_err().contains("twice"));
        assert!(d("cuda:0,x").is_err());
        assert_eq!(d("cpu").unwrap().replicas(3).unwrap(), vec![Device::Cpu; 3]);
        assert_eq!(
            d("cuda").unwrap().replicas(2).unwrap(),
            vec![Device::Cuda(0), Device::Cuda(1)]
        );
        assert_eq!(
            d("cuda:1").unwrap().replicas(2).unwrap(),
            vec![Device::Cuda(1), Device::Cuda(1)]
        );
        assert_eq!(d("cuda:0,1").unwrap().replicas(1).unwrap().len(), 2);
        assert!(d("cuda:0,1").unwrap().replicas(3).is_err());
        assert!(d("cpu").unwrap().replicas(0).is_err());
    }
}
