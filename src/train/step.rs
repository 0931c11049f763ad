//! One training-step session whose parameters and momenta never leave ONNX Runtime.
//!
//! The step graph reads a parameter set and writes the next one. Two sets are allocated once
//! by ONNX Runtime on the session's device, and two I/O bindings alternate between them: the
//! first step reads set 0 and writes set 1, the next reads set 1 and writes set 0. No step
//! copies a weight through the host; only the batch, the labels, the dropout masks and the
//! learning rate go in (written in place into bound host tensors), and only the loss and two
//! counts come out. Parameters are copied to the host only for a checkpoint.

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::IoBinding;
use ort::session::Session;
use ort::value::Tensor;

use super::TrainError;
use crate::config::model::VggConfig;
use crate::config::model::{parameters, ParamSpec, MOMENTUM};
use crate::data::loader::Batch;
use crate::net::checkpoint::NamedTensor;
use crate::net::graph::vgg::{self as graphs, InputForm, StepOptions, NEXT};
use crate::net::session::{self, Device, SessionSettings};
use crate::util::rng::{Rng, Stream};

/// What one step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    pub loss: f32,
    pub top1_correct: i64,
    pub top5_correct: i64,
}

/// The host-side inputs, bound once and overwritten every step.
struct HostInputs {
    images: Option<Tensor<f32>>,
    pixels: Option<Tensor<u8>>,
    shift: Option<Tensor<f32>>,
    labels: Tensor<i64>,
    lr: Tensor<f32>,
    masks: [Tensor<f32>; 2],
}

/// A compiled training step with its two parameter sets.
pub struct StepSession {
    session: Session,
    bindings: [IoBinding; 2],
    /// `sets[k]`: parameters then momenta, in [`parameters`] order.
    sets: [Vec<Tensor<f32>>; 2],
    host: HostInputs,
    outputs: (Tensor<f32>, Tensor<i64>, Tensor<i64>),
    current: usize,
    specs: Vec<ParamSpec>,
    opts: StepOptions,
    dropout: f32,
    fc: usize,
    crop: usize,
    device: Device,
}

fn ort_err(what: &str) -> impl Fn(ort::Error) -> TrainError + '_ {
    move |source| TrainError::Ort {
        what: what.to_string(),
        source,
    }
}

impl StepSession {
    /// Compiles the step for `config` and uploads `params` and `momenta` (in
    /// [`parameters`] order) to the session's device.
    pub fn new(
        config: &VggConfig,
        opts: &StepOptions,
        dropout: f32,
        params: &[NamedTensor],
        momenta: &[NamedTensor],
        settings: &SessionSettings,
    ) -> Result<Self, TrainError> {
        let specs = parameters(config);
        if params.len() != specs.len() || momenta.len() != specs.len() {
            return Err(TrainError::Mismatch(format!(
                "{} parameters and {} momenta for a network of {} tensors",
                params.len(),
                momenta.len(),
                specs.len()
            )));
        }
        let graph = graphs::train_step_graph(config, opts)?;
        let session = session::build(&graph, settings)?;
        let device_alloc = match settings.device {
            Device::Cpu => Allocator::default(),
            Device::Cuda(id) => {
                let info = MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .map_err(ort_err("CUDA memory"))?;
                Allocator::new(&session, info).map_err(ort_err("CUDA allocator"))?
            }
        };
        let host = Allocator::default();
        let mut sets: [Vec<Tensor<f32>>; 2] = [Vec::new(), Vec::new()];
        for set in sets.iter_mut() {
            for t in params.iter().chain(momenta) {
                set.push(
                    Tensor::<f32>::new(&device_alloc, t.shape.clone())
                        .map_err(ort_err("allocate parameters"))?,
                );
            }
        }
        // Upload set 0 from the host.
        for (dst, src) in sets[0].iter_mut().zip(params.iter().chain(momenta)) {
            if settings.device == Device::Cpu {
                dst.extract_tensor_mut().1.copy_from_slice(&src.data);
            } else {
                let staged = Tensor::from_array((src.shape.clone(), src.data.clone()))
                    .map_err(ort_err("stage parameters"))?;
                staged
                    .copy_into(dst)
                    .map_err(ort_err("upload parameters"))?;
            }
        }
        let n = opts.batch;
        let s = config.input as usize;
        let fc = config.fc as usize;
        let new_f32 = |shape: Vec<usize>| Tensor::<f32>::new(&host, shape);
        let err = ort_err("allocate batch inputs");
        let host_inputs = HostInputs {
            images: match opts.input {
                InputForm::F32Nchw => Some(new_f32(vec![n, 3, s, s]).map_err(&err)?),
                InputForm::U8Nhwc => None,
            },
            pixels: match opts.input {
                InputForm::U8Nhwc => {
                    Some(Tensor::<u8>::new(&host, vec![n, s, s, 3]).map_err(&err)?)
                }
                InputForm::F32Nchw => None,
            },
            shift: match opts.input {
                InputForm::U8Nhwc => Some(new_f32(vec![n, 3]).map_err(&err)?),
                InputForm::F32Nchw => None,
            },
            labels: Tensor::<i64>::new(&host, vec![n]).map_err(&err)?,
            lr: Tensor::<f32>::new(&host, Vec::<usize>::new()).map_err(&err)?,
            masks: [
                new_f32(vec![n, fc]).map_err(&err)?,
                new_f32(vec![n, fc]).map_err(&err)?,
            ],
        };
        let outputs = (
            Tensor::<f32>::new(&host, Vec::<usize>::new()).map_err(&err)?,
            Tensor::<i64>::new(&host, Vec::<usize>::new()).map_err(&err)?,
            Tensor::<i64>::new(&host, Vec::<usize>::new()).map_err(&err)?,
        );
        let mut me = StepSession {
            bindings: [
                session.create_binding().map_err(ort_err("binding"))?,
                session.create_binding().map_err(ort_err("binding"))?,
            ],
            session,
            sets,
            host: host_inputs,
            outputs,
            current: 0,
            specs,
            opts: opts.clone(),
            dropout,
            fc,
            crop: s,
            device: settings.device,
        };
        me.bind()?;
        Ok(me)
    }

    /// Binding k reads set k and writes set 1 - k; both read the same host inputs.
    fn bind(&mut self) -> Result<(), TrainError> {
        let names: Vec<String> = self
            .specs
            .iter()
            .map(|p| p.name.clone())
            .chain(self.specs.iter().map(|p| format!("{}{MOMENTUM}", p.name)))
            .collect();
        let e = ort_err("bind");
        let [set0, set1] = &mut self.sets;
        for (k, binding) in self.bindings.iter_mut().enumerate() {
            let (read, write) = if k == 0 {
                (&*set0, &mut *set1)
            } else {
                (&*set1, &mut *set0)
            };
            for (name, t) in names.iter().zip(read.iter()) {
                binding.bind_input(name.as_str(), t).map_err(&e)?;
            }
            for (name, t) in names.iter().zip(write.iter_mut()) {
                binding
                    .bind_output(format!("{name}{NEXT}"), t)
                    .map_err(&e)?;
            }
            let h = &mut self.host;
            if let Some(t) = &h.images {
                binding.bind_input("images", t).map_err(&e)?;
            }
            if let Some(t) = &h.pixels {
                binding.bind_input("pixels", t).map_err(&e)?;
            }
            if let Some(t) = &h.shift {
                binding.bind_input("shift", t).map_err(&e)?;
            }
            binding.bind_input("labels", &h.labels).map_err(&e)?;
            binding.bind_input("learning_rate", &h.lr).map_err(&e)?;
            binding.bind_input("dropout6", &h.masks[0]).map_err(&e)?;
            binding.bind_input("dropout7", &h.masks[1]).map_err(&e)?;
            let o = &mut self.outputs;
            binding.bind_output("loss", &mut o.0).map_err(&e)?;
            binding.bind_output("top1_correct", &mut o.1).map_err(&e)?;
            binding.bind_output("top5_correct", &mut o.2).map_err(&e)?;
        }
        Ok(())
    }

    /// The step's fixed batch size.
    pub fn batch_size(&self) -> usize {
        self.opts.batch
    }

    /// Runs one SGD step on `batch` (which must be full) at learning rate `lr`; the dropout
    /// masks derive from (`seed`, `epoch`, the batch number).
    pub fn step(&mut self, batch: &Batch, lr: f32, seed: u64) -> Result<StepResult, TrainError> {
        let n = self.opts.batch;
        if batch.len() != n {
            return Err(TrainError::Mismatch(format!(
                "a batch of {} images for a step compiled for {n}",
                batch.len()
            )));
        }
        let h = &mut self.host;
        match (&mut h.images, &mut h.pixels, &mut h.shift) {
            (Some(images), _, _) => {
                let src = batch.images().ok_or_else(|| {
                    TrainError::Mismatch("the loader gives u8 batches, the step wants f32".into())
                })?;
                let dst = images.extract_tensor_mut().1;
                dst.copy_from_slice(src.as_slice().expect("loader batches are contiguous"));
            }
            (None, Some(pixels), Some(shift)) => {
                let (src, sh) = batch.pixels().zip(batch.shift()).ok_or_else(|| {
                    TrainError::Mismatch("the loader gives f32 batches, the step wants u8".into())
                })?;
                pixels
                    .extract_tensor_mut()
                    .1
                    .copy_from_slice(src.as_slice().expect("contiguous"));
                shift
                    .extract_tensor_mut()
                    .1
                    .copy_from_slice(sh.as_slice().expect("contiguous"));
            }
            _ => unreachable!("one batch form is allocated"),
        }
        h.labels
            .extract_tensor_mut()
            .1
            .copy_from_slice(batch.labels());
        h.lr.extract_tensor_mut().1[0] = lr;
        let keep = 1.0 - self.dropout;
        for (i, mask) in h.masks.iter_mut().enumerate() {
            let mut rng = Rng::new(
                seed,
                Stream::Dropout,
                batch.epoch,
                (batch.number * 2 + i) as u64,
            );
            let data = mask.extract_tensor_mut().1;
            if self.dropout == 0.0 {
                data.fill(1.0);
            } else {
                let scale = 1.0 / keep;
                for v in data.iter_mut() {
                    *v = if rng.next_f32() < keep { scale } else { 0.0 };
                }
            }
        }
        debug_assert_eq!(h.masks[0].shape()[1] as usize, self.fc);
        self.session
            .run_binding(&self.bindings[self.current])
            .map_err(ort_err("training step"))?;
        self.current = 1 - self.current;
        let o = &self.outputs;
        Ok(StepResult {
            loss: o.0.extract_tensor().1[0],
            top1_correct: o.1.extract_tensor().1[0],
            top5_correct: o.2.extract_tensor().1[0],
        })
    }

    /// Copies the current parameters and momenta to the host.
    pub fn download(&self) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>), TrainError> {
        let host = Allocator::default();
        let set = &self.sets[self.current];
        let mut out = Vec::with_capacity(set.len());
        for (i, t) in set.iter().enumerate() {
            let spec = &self.specs[i % self.specs.len()];
            let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
            let data = if self.device == Device::Cpu {
                t.extract_tensor().1.to_vec()
            } else {
                let mut staged = Tensor::<f32>::new(&host, shape.clone())
                    .map_err(ort_err("stage parameters"))?;
                t.copy_into(&mut staged)
                    .map_err(ort_err("download parameters"))?;
                staged.extract_tensor().1.to_vec()
            };
            let name = if i < self.specs.len() {
                spec.name.clone()
            } else {
                format!("{}{MOMENTUM}", spec.name)
            };
            out.push(NamedTensor { name, shape, data });
        }
        let momenta = out.split_off(self.specs.len());
        Ok((out, momenta))
    }

    /// The current parameters (not the momenta), on the session's device, in
    /// [`parameters`] order: an evaluation session can read them without a copy.
    pub fn params(&self) -> &[Tensor<f32>] {
        &self.sets[self.current][..self.specs.len()]
    }

    /// The crop side the step expects.
    pub fn crop(&self) -> usize {
        self.crop
    }
}
