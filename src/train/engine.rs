//! The step a run uses, chosen once: the fused step graph ([`super::step`]) for one replica
//! without accumulation in one process (one session: the fastest form on one core or a GPU),
//! the gradient and update graphs ([`super::parallel`]) for replicas (which `auto` gives small
//! networks on the CPU), micro-batches or several processes. The trainer and the benchmarks
//! drive both through this one type.

use super::parallel::{CrossProcess, ParallelOptions, ParallelStep};
use super::step::{StepResult, StepSession};
use super::TrainError;
use crate::config::model::VggConfig;
use crate::data::loader::Batch;
use crate::net::checkpoint::NamedTensor;
use crate::net::graph::vgg::StepOptions;
use crate::net::session::SessionSettings;

/// The step the run uses: the fused graph for one replica without accumulation, the
/// gradient and update graphs otherwise.
pub enum Engine {
    Fused(Box<StepSession>),
    Parallel(ParallelStep),
}

impl Engine {
    /// The fused step for one replica without accumulation in one process, the parallel step
    /// otherwise.
    pub fn new(
        config: &VggConfig,
        opts: &StepOptions,
        dropout: f32,
        params: &[NamedTensor],
        momenta: &[NamedTensor],
        parallel: &ParallelOptions,
        group: Option<Box<dyn CrossProcess>>,
    ) -> Result<Self, TrainError> {
        if parallel.devices.len() == 1 && parallel.accumulate == 1 && group.is_none() {
            let settings = SessionSettings {
                device: parallel.devices[0],
                threads: parallel.threads,
            };
            return Ok(Engine::Fused(Box::new(StepSession::new(
                config, opts, dropout, params, momenta, &settings,
            )?)));
        }
        Ok(Engine::Parallel(ParallelStep::new(
            config, opts, dropout, params, momenta, parallel, group,
        )?))
    }

    /// Seconds spent summing gradients so far (0 for the fused step).
    pub fn reduce_seconds(&self) -> f64 {
        match self {
            Engine::Fused(_) => 0.0,
            Engine::Parallel(p) => p.reduce_seconds,
        }
    }

    /// One step; `stop` is this process's stop request, the returned flag whether any process
    /// asked to stop (all then stop after this step).
    pub fn step(
        &mut self,
        b: &Batch,
        lr: f32,
        seed: u64,
        stop: bool,
    ) -> Result<(StepResult, bool), TrainError> {
        match self {
            Engine::Fused(s) => Ok((s.step(b, lr, seed)?, stop)),
            Engine::Parallel(p) => p.step_and_vote(b, lr, seed, stop),
        }
    }

    pub fn download(&self) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>), TrainError> {
        match self {
            Engine::Fused(s) => s.download(),
            Engine::Parallel(p) => p.download(),
        }
    }

    pub fn params(&self) -> &[ort::value::Tensor<f32>] {
        match self {
            Engine::Fused(s) => s.params(),
            Engine::Parallel(p) => p.params(),
        }
    }

    pub fn crop(&self) -> usize {
        match self {
            Engine::Fused(s) => s.crop(),
            Engine::Parallel(p) => p.crop(),
        }
    }

    pub fn group(&mut self) -> Option<&mut Box<dyn CrossProcess>> {
        match self {
            Engine::Fused(_) => None,
            Engine::Parallel(p) => p.group(),
        }
    }
}
