//! Runs networks over a prepared split with the paper's test protocols (Simonyan & Zisserman,
//! sec. 3.2): the part of `vgg eval` that touches images and ONNX Runtime.
//!
//! # Why it exists
//!
//! [`super::protocol`] decides *what* is computed (crop grid, scales, equal-weight averaging,
//! top-k); this module feeds the networks so that it is computed at ImageNet scale without
//! wasting the machine: records are decoded once, rescaled once per test scale and shared by all
//! networks, same-sized inputs are batched, and weights are handed to ONNX Runtime once per
//! network instead of once per run. Keeping the plumbing here, and the arithmetic there, means
//! the tests of this module only have to show that the plumbing reproduces the arithmetic
//! (dense = forward graph on a training-sized image, flips, scales, fusion, batching).
//!
//! # What is computed, per image
//!
//! For each test scale Q the image is rescaled isotropically so its smallest side is Q
//! ([`augment::rescale_whole`], the training filter), and the mean RGB is subtracted (float32
//! CHW on the 0-255 scale). Then, per network:
//!
//! - [`Protocol::Dense`]: the whole image through [`dense_graph`] (and its horizontal mirror if
//!   [`EvalSettings::flip`]); the soft-max posteriors of the views are averaged.
//! - [`Protocol::MultiCrop`]: `grid x grid` crops of side `config.input` at [`crop_grid`]
//!   origins (and each crop's mirror if `flip`) through [`forward_graph`]; posteriors averaged
//!   over the views (50 per scale for the paper's 5 x 5 grid with flips).
//! - [`Protocol::DenseMultiCrop`]: the dense posterior (averaged over its views) and the
//!   multi-crop posterior (averaged over its views) combined with equal weight.
//! - [`Protocol::Centre`]: the centre crop of side `config.input` (and its mirror if `flip`)
//!   through [`forward_graph`], made by the loader's kernel
//!   ([`augment::centre_from_rgb`]), so these are the
//!   pixels the trainer's validation sees. Several scales are treated like every other
//!   protocol: one centre crop per scale, averaged over scales.
//!
//! Scales are then averaged with equal weight (the network's posterior, scored on its own in
//! [`EvalReport::per_network`]), and networks are averaged with equal weight (fusion, the
//! posterior scored in [`EvalReport::fused`]). All averaging goes through [`PosteriorSum`] in
//! `f64`.
//!
//! # How it runs
//!
//! - Images go in chunks of [`CHUNK_IMAGES`]. A chunk's records are decoded in parallel (rayon,
//!   one reusable scratch per worker) while the previous chunk runs through the networks. For
//!   each scale the chunk is rescaled in parallel and then run through every network, so at most
//!   one chunk of rescaled images (at one scale) is held, next to the decoded pixels of at most
//!   two chunks.
//! - Dense: a chunk's images are grouped by rescaled size (w, h); each group's views (images
//!   and mirrors) go through in runs of up to [`EvalSettings::batch`] inputs. Crops (multi-crop,
//!   centre) of all images of the chunk go through in runs of up to `batch` crops.
//! - Each network's sessions (dense and/or forward graph) are built once. Its parameters become
//!   ONNX Runtime tensors once: on the CPU they are views of [`Network::params`] (no copy at
//!   all); on CUDA they are copied to the device once, so a run moves only the images. Every
//!   run passes them by reference.
//! - The input batch buffer is reused between runs and handed to ONNX Runtime as a view.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use ort::memory::AllocationDevice;
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorRef};
use rayon::prelude::*;

use crate::config::model::VggConfig;
use crate::data::augment;
use crate::data::loader::LoaderError;
use crate::data::shard::Encoding;
use crate::data::store::PreparedSplit;
use crate::net::checkpoint::{
    check_layout, Checkpoint, CheckpointError, CheckpointInfo, NamedTensor,
};
use crate::net::graph::vgg::{dense_graph, forward_graph};
use crate::net::session::{self, Device, SessionError, SessionSettings};
pub use crate::train::run::{sample_records, LimitError, SAMPLE_SEED};
use crate::util::progress::{Cancel, Progress};

use super::protocol::{crop_grid, PosteriorSum, Protocol};
use crate::net::accuracy::{rank_of, TopK};

/// Images decoded, rescaled and run together. Bounds the memory of rescaled images (one chunk
/// at one scale) and of decoded images (two chunks: the one running and the next).
pub const CHUNK_IMAGES: usize = 32;

/// One network to evaluate: its name in reports, its configuration and its parameters (exactly
/// [`parameters`](crate::config::model::parameters)`(&config)` by name and shape; checked by
/// [`evaluate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// How reports name it, e.g. the checkpoint's file stem.
    pub name: String,
    pub config: VggConfig,
    pub params: Vec<NamedTensor>,
}

impl Network {
    /// Loads a checkpoint (validated by [`Checkpoint::load`]); the network is named after the
    /// file stem. Momentum buffers and trainer state are dropped.
    pub fn from_checkpoint(path: &Path) -> Result<Self, EvalError> {
        Ok(Self::from_checkpoint_with_info(path)?.0)
    }

    /// [`Network::from_checkpoint`] with what the file says beyond its tensors (its class
    /// list, whether its checksums were checked).
    pub fn from_checkpoint_with_info(path: &Path) -> Result<(Self, CheckpointInfo), EvalError> {
        let (ck, info) = Checkpoint::load_with_info(path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| ck.config.name.clone());
        let net = Network {
            name,
            config: ck.config,
            params: ck.params,
        };
        Ok((net, info))
    }
}

/// How to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSettings {
    pub protocol: Protocol,
    /// Test scales Q (smallest side after rescaling), averaged with equal weight. Each must be
    /// at least every network's input size.
    pub scales: Vec<u32>,
    /// Add the horizontal mirror of every view (dense image, crop, centre crop).
    pub flip: bool,
    /// Crops per side of the multi-crop grid (the paper: 5).
    pub grid: u32,
    /// Mean RGB subtracted from every pixel (0-255 scale; [`augment::VGG_MEAN`]).
    pub mean: [f32; 3],
    /// Evaluate only `limit` records: a fixed sample spread over all classes, drawn from
    /// `sample_seed` ([`sample_records`]), in record order. `Some(0)` is an error.
    pub limit: Option<u64>,
    /// The seed of the `limit` sample ([`SAMPLE_SEED`]: the trainer's validation images).
    pub sample_seed: u64,
    pub session: SessionSettings,
    /// Most inputs per run: images (with their mirrors) for dense evaluation, crops otherwise.
    pub batch: usize,
}

/// One image's outcome under the fused posterior.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ImageResult {
    /// Global record index in the split.
    pub index: u64,
    pub label: i64,
    /// The five best classes with their posterior, best first (ties by class index).
    pub top5: Vec<(u32, f32)>,
    pub top1_correct: bool,
    pub top5_correct: bool,
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalReport {
    /// Top-1 / top-5 of the fused posterior (the single network's when there is one).
    pub fused: TopK,
    /// Each network scored on its own posterior, in input order.
    pub per_network: Vec<(String, TopK)>,
    /// Per image, in record order.
    pub images: Vec<ImageResult>,
    /// Wall time of the image loop (sessions already built).
    pub seconds: f64,
    pub images_per_sec: f64,
    /// Peak resident memory of the process at the end ([`crate::util::machine::peak_rss_bytes`]).
    pub peak_rss_bytes: Option<u64>,
}

/// Every posterior [`posteriors`] computed: one row per image, in record order.
#[derive(Debug, Clone, PartialEq)]
pub struct Posteriors {
    /// Global record indices (`0..n`).
    pub indices: Vec<u64>,
    pub labels: Vec<i64>,
    /// The fused posterior of each image, as one view (its mean is the posterior).
    pub fused: PosteriorSum,
    /// Each network's posterior, in input order, as one view per image.
    pub per_network: Vec<PosteriorSum>,
}

/// Why an evaluation could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The largest test scale's activations and the networks do not fit in the memory the
    /// machine has available (estimated before the sessions are built).
    #[error("{0}")]
    Memory(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A record that could not be read or decoded (names shard, record and key).
    #[error(transparent)]
    Record(#[from] LoaderError),
    #[error("nothing to evaluate: no networks given")]
    NoNetworks,
    /// No images to evaluate (an empty split, or a limit of 0): there is no error rate.
    #[error("nothing to evaluate: {0}")]
    NoImages(#[from] LimitError),
    /// A parameter holds NaN or an infinity: every posterior would be NaN.
    #[error(
        "network {network}: tensor `{tensor}` holds {value} (at element {index}); the \
         network's outputs would not be numbers (a diverged run?)"
    )]
    NonFinite {
        network: String,
        tensor: String,
        index: usize,
        value: f32,
    },
    #[error("invalid evaluation settings: {0}")]
    Settings(String),
    #[error(
        "test scale {scale} is smaller than network {network}'s input {input}: every test scale \
         must be at least the input size (the rescaled image's smallest side is the scale)"
    )]
    ScaleTooSmall {
        network: String,
        scale: u32,
        input: u32,
    },
    #[error(
        "network {network} has {network_classes} classes but the split has {split_classes}; \
         evaluate it on a dataset with the classes it was trained on"
    )]
    Classes {
        network: String,
        network_classes: u32,
        split_classes: usize,
    },
    #[error("record {index} has label {label}, outside the networks' {classes} classes")]
    Label {
        index: u64,
        label: i64,
        classes: u32,
    },
    #[error("network {network} takes {channels}-channel input; evaluation feeds RGB (3)")]
    Channels { network: String, channels: u32 },
    #[error("network {network}: cannot place tensor `{tensor}` on {device}: {source}")]
    Upload {
        network: String,
        tensor: String,
        device: Device,
        #[source]
        source: ort::Error,
    },
    #[error("network {network}: {source}")]
    Layout {
        network: String,
        #[source]
        source: Box<CheckpointError>,
    },
    #[error("interrupted after {images} of {total} images; nothing was written")]
    Interrupted { images: u64, total: u64 },
    #[error("network {network}: ONNX Runtime failed on the {graph} graph: {source}")]
    Run {
        network: String,
        graph: &'static str,
        #[source]
        source: ort::Error,
    },
    #[error("network {network}: the {graph} graph gave {message}")]
    Output {
        network: String,
        graph: &'static str,
        message: String,
    },
}

/// Evaluates `nets` on `split` with `s`, scoring each image's fused posterior (and each
/// network's own) as it goes; memory does not grow with the number of classes times images.
/// `progress` counts images, after every chunk; `cancel` stops between chunks with
/// [`EvalError::Interrupted`].
pub fn evaluate(
    split: &PreparedSplit,
    nets: &[Network],
    s: &EvalSettings,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<EvalReport, EvalError> {
    let mut fused = TopK::default();
    let mut per_network = vec![TopK::default(); nets.len()];
    let mut images = Vec::new();
    let seconds = run_chunks(split, nets, s, progress, cancel, &mut |c| {
        for (i, (&index, &label)) in c.indices.iter().zip(c.labels).enumerate() {
            let post = c.fused.mean(i);
            let rank = rank_of(&post, label as usize);
            fused.add(&post, label as usize);
            images.push(ImageResult {
                index,
                label,
                top5: top5(&post),
                top1_correct: rank < 1,
                top5_correct: rank < 5,
            });
            for (t, sum) in per_network.iter_mut().zip(c.per_network) {
                t.add(&sum.mean(i), label as usize);
            }
        }
    })?;
    let n = images.len() as f64;
    Ok(EvalReport {
        fused,
        per_network: nets
            .iter()
            .map(|n| n.name.clone())
            .zip(per_network)
            .collect(),
        images,
        seconds,
        images_per_sec: if seconds > 0.0 { n / seconds } else { 0.0 },
        peak_rss_bytes: crate::util::machine::peak_rss_bytes(),
    })
}

/// The same computation as [`evaluate`], keeping every posterior instead of scoring it (for
/// tests, analysis and small splits: it holds `images x classes` values per network).
pub fn posteriors(
    split: &PreparedSplit,
    nets: &[Network],
    s: &EvalSettings,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Posteriors, EvalError> {
    let total = records(split, s)?.len();
    let classes = nets.first().map_or(0, |n| n.config.classes as usize);
    let mut out = Posteriors {
        indices: Vec::with_capacity(total),
        labels: Vec::with_capacity(total),
        fused: PosteriorSum::new(total, classes),
        per_network: vec![PosteriorSum::new(total, classes); nets.len()],
    };
    run_chunks(split, nets, s, progress, cancel, &mut |c| {
        for (i, (&index, &label)) in c.indices.iter().zip(c.labels).enumerate() {
            let row = out.indices.len();
            out.indices.push(index);
            out.labels.push(label);
            out.fused.add(row, &c.fused.mean(i));
            for (all, sum) in out.per_network.iter_mut().zip(c.per_network) {
                all.add(row, &sum.mean(i));
            }
        }
    })?;
    Ok(out)
}

/// The best five classes of a posterior with their values, best first, ties by class index
/// (the order [`rank_of`] counts in).
fn top5(post: &[f32]) -> Vec<(u32, f32)> {
    let mut order: Vec<u32> = (0..post.len() as u32).collect();
    order.sort_by(|&a, &b| {
        post[b as usize]
            .total_cmp(&post[a as usize])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(5)
        .map(|c| (c, post[c as usize]))
        .collect()
}

/// The records an evaluation reads, in record order.
fn records(split: &PreparedSplit, s: &EvalSettings) -> Result<Vec<u64>, EvalError> {
    Ok(sample_records(split, s.limit, s.sample_seed)?)
}

/// One chunk's posteriors, handed to the sink of [`run_chunks`].
struct ChunkOut<'c> {
    indices: &'c [u64],
    labels: &'c [i64],
    fused: &'c PosteriorSum,
    per_network: &'c [PosteriorSum],
}

/// A decoded record: RGB8 HWC, borrowed from the mapped shard when it is stored raw.
struct Decoded<'a> {
    index: u64,
    label: i64,
    w: u32,
    h: u32,
    rgb: Cow<'a, [u8]>,
}

/// One rescaled image (RGB8 HWC).
struct Rescaled {
    w: u32,
    h: u32,
    rgb: Vec<u8>,
}

/// A network's parameters as ONNX Runtime values, created once.
enum Weight<'a> {
    /// A view of the [`NamedTensor`]'s data (CPU sessions).
    Host(TensorRef<'a, f32>),
    /// A copy in device memory (CUDA sessions).
    Device(Tensor<f32>),
}

impl Weight<'_> {
    fn value(&self) -> &Tensor<f32> {
        match self {
            Weight::Host(r) => r,
            Weight::Device(t) => t,
        }
    }
}

/// Which graph a run goes through.
#[derive(Clone, Copy)]
enum Graph {
    Dense,
    Forward,
}

/// A network ready to run: its sessions and its parameter values.
struct Runner<'a> {
    name: &'a str,
    config: &'a VggConfig,
    dense: Option<Session>,
    forward: Option<Session>,
    weights: Vec<(&'a str, Weight<'a>)>,
}

impl<'a> Runner<'a> {
    fn new(net: &'a Network, s: &EvalSettings) -> Result<Self, EvalError> {
        let needs_dense = matches!(s.protocol, Protocol::Dense | Protocol::DenseMultiCrop);
        let needs_forward = s.protocol != Protocol::Dense;
        let dense = needs_dense
            .then(|| session::build(&dense_graph(&net.config), &s.session))
            .transpose()?;
        let forward = needs_forward
            .then(|| session::build(&forward_graph(&net.config), &s.session))
            .transpose()?;
        let upload_err = |tensor: &str, source: ort::Error| EvalError::Upload {
            network: net.name.clone(),
            tensor: tensor.to_string(),
            device: s.session.device,
            source,
        };
        let mut weights = Vec::with_capacity(net.params.len());
        for t in &net.params {
            let view = TensorRef::from_array_view((t.shape.clone(), t.data.as_slice()))
                .map_err(|e| upload_err(&t.name, e))?;
            let w = match s.session.device {
                Device::Cpu => Weight::Host(view),
                Device::Cuda(id) => Weight::Device(
                    view.to(AllocationDevice::CUDA, id)
                        .map_err(|e| upload_err(&t.name, e))?,
                ),
            };
            weights.push((t.name.as_str(), w));
        }
        Ok(Runner {
            name: &net.name,
            config: &net.config,
            dense,
            forward,
            weights,
        })
    }

    /// Runs `n` inputs of `h x w` (already in `images`, NCHW) and returns their posteriors
    /// (`n * classes`).
    fn infer(
        &mut self,
        graph: Graph,
        images: &[f32],
        n: usize,
        (w, h): (u32, u32),
    ) -> Result<Vec<f32>, EvalError> {
        let (session, what) = match graph {
            Graph::Dense => (self.dense.as_mut(), "dense"),
            Graph::Forward => (self.forward.as_mut(), "forward"),
        };
        let session = session.expect("the protocol's sessions are built up front");
        let err = |source: ort::Error| EvalError::Run {
            network: self.name.to_string(),
            graph: what,
            source,
        };
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(self.weights.len() + 1);
        for (name, w) in &self.weights {
            inputs.push((Cow::Borrowed(*name), SessionInputValue::from(w.value())));
        }
        let shape = [n, 3, h as usize, w as usize];
        let x = TensorRef::from_array_view((shape, images)).map_err(err)?;
        inputs.push((Cow::Borrowed("images"), x.into()));
        let outputs = session.run(inputs).map_err(err)?;
        let wrong = |message: String| EvalError::Output {
            network: self.name.to_string(),
            graph: what,
            message,
        };
        let probs = outputs
            .get("probabilities")
            .ok_or_else(|| wrong("no `probabilities` output".into()))?;
        let (_, data) = probs.try_extract_tensor::<f32>().map_err(err)?;
        let classes = self.config.classes as usize;
        if data.len() != n * classes {
            return Err(wrong(format!(
                "{} `probabilities` values, expected {n} x {classes}",
                data.len()
            )));
        }
        Ok(data.to_vec())
    }
}

/// One input of a run: a window of a rescaled image, possibly mirrored.
#[derive(Debug, Clone, Copy)]
struct View {
    image: usize,
    x: u32,
    y: u32,
    flip: bool,
}

/// Checks everything that can be checked before the first image.
/// Refuses an evaluation whose estimated memory exceeds what the machine has available
/// ([`crate::util::machine::available_memory_bytes`]): each network's parameters twice (the
/// loaded copy and the session's) and, at the largest test scale Q, every convolution and pool
/// output and its input for one run of `batch` square Q x Q views (a lower bound: dense
/// evaluation feeds whole, longer images). Sessions on a CUDA device are not checked.
fn check_memory(nets: &[Network], s: &EvalSettings) -> Result<(), EvalError> {
    if matches!(s.session.device, Device::Cuda(_)) {
        return Ok(());
    }
    let Some(available) = crate::util::machine::available_memory_bytes() else {
        return Ok(());
    };
    let q = s.scales.iter().copied().max().unwrap_or(0);
    let mut params = 0u64;
    let mut activations = 0u64;
    for net in nets {
        params = params.saturating_add(net.config.summary().parameters.saturating_mul(8));
        let mut at_q = net.config.clone();
        at_q.input = q;
        let per_view: u64 = 3 * (q as u64).pow(2)
            + at_q
                .layers()
                .iter()
                .filter(|l| l.kind != crate::config::model::LayerKind::Fc)
                .map(|l| l.output.iter().product::<u64>())
                .sum::<u64>();
        activations = activations.max(per_view.saturating_mul(s.batch as u64 * 4 * 2));
    }
    let total = params.saturating_add(activations);
    if total <= available {
        return Ok(());
    }
    let gib = |b: u64| {
        let g = b as f64 / (1u64 << 30) as f64;
        if g >= 0.1 {
            format!("{g:.1} GiB")
        } else {
            format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
        }
    };
    Err(EvalError::Memory(format!(
        "evaluation needs at least {} of memory, more than the {} this machine has available: \
         the networks' parameters {} (fewer --checkpoint networks at once), activations at \
         scale Q = {q} for a run of {} views {} (lower the largest --scales value, or --batch)",
        gib(total),
        gib(available),
        gib(params),
        s.batch,
        gib(activations)
    )))
}

fn validate(split: &PreparedSplit, nets: &[Network], s: &EvalSettings) -> Result<(), EvalError> {
    if nets.is_empty() {
        return Err(EvalError::NoNetworks);
    }
    if s.scales.is_empty() {
        return Err(EvalError::Settings("no test scales given".into()));
    }
    if s.batch == 0 {
        return Err(EvalError::Settings("batch must be at least 1".into()));
    }
    if s.grid == 0 && matches!(s.protocol, Protocol::MultiCrop | Protocol::DenseMultiCrop) {
        return Err(EvalError::Settings(
            "the multi-crop grid needs at least one crop per side".into(),
        ));
    }
    check_memory(nets, s)?;
    let split_classes = split.manifest.classes.len();
    for net in nets {
        let c = &net.config;
        if c.in_channels != 3 {
            return Err(EvalError::Channels {
                network: net.name.clone(),
                channels: c.in_channels,
            });
        }
        if c.classes as usize != split_classes {
            return Err(EvalError::Classes {
                network: net.name.clone(),
                network_classes: c.classes,
                split_classes,
            });
        }
        if let Some(&scale) = s.scales.iter().find(|&&q| q < c.input) {
            return Err(EvalError::ScaleTooSmall {
                network: net.name.clone(),
                scale,
                input: c.input,
            });
        }
        check_layout(Path::new(""), c, &net.params, "").map_err(|source| EvalError::Layout {
            network: net.name.clone(),
            source: Box::new(source),
        })?;
        for t in &net.params {
            if let Some((index, &value)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(EvalError::NonFinite {
                    network: net.name.clone(),
                    tensor: t.name.clone(),
                    index,
                    value,
                });
            }
        }
    }
    Ok(())
}

/// Decodes `records` of `split` in parallel.
fn decode_chunk<'a>(
    split: &'a PreparedSplit,
    records: &[u64],
) -> Result<Vec<Decoded<'a>>, EvalError> {
    records
        .par_iter()
        .map(|&g| {
            augment::with_record(split, g, |rec, scratch| {
                let (w, h, px) = augment::decode_record(rec, scratch)?;
                let rgb = match rec.encoding {
                    // Validated by decode_record; the mapped bytes are the pixels.
                    Encoding::Raw => Cow::Borrowed(rec.bytes),
                    Encoding::Jpeg => Cow::Owned(px.to_vec()),
                };
                Ok(Decoded {
                    index: g,
                    label: i64::from(rec.label),
                    w,
                    h,
                    rgb,
                })
            })
        })
        .map(|r| r.map_err(|e| EvalError::from(LoaderError::from(e))))
        .collect()
}

/// Writes one view (`cw x ch` window at `(x0, y0)`, mirrored if `flip`) of `img` into `dst` as
/// float32 CHW minus `mean`.
fn fill(dst: &mut [f32], img: &Rescaled, v: &View, (cw, ch): (u32, u32), mean: [f32; 3]) {
    let (w, cw, ch) = (img.w as usize, cw as usize, ch as usize);
    let plane = cw * ch;
    let (r, rest) = dst.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for y in 0..ch {
        let start = ((v.y as usize + y) * w + v.x as usize) * 3;
        let row = &img.rgb[start..start + cw * 3];
        let o = y * cw;
        for x in 0..cw {
            let sx = if v.flip { cw - 1 - x } else { x };
            let p = &row[sx * 3..sx * 3 + 3];
            r[o + x] = f32::from(p[0]) - mean[0];
            g[o + x] = f32::from(p[1]) - mean[1];
            b[o + x] = f32::from(p[2]) - mean[2];
        }
    }
}

/// Runs `views` (windows of size `win`) through `graph` in runs of at most `batch`, adding each
/// view's posterior to `sum`.
#[allow(clippy::too_many_arguments)]
fn run_views(
    runner: &mut Runner<'_>,
    graph: Graph,
    images: &[Rescaled],
    views: &[View],
    win: (u32, u32),
    s: &EvalSettings,
    buf: &mut Vec<f32>,
    sum: &mut PosteriorSum,
) -> Result<(), EvalError> {
    let input = |dst: &mut [f32], v: &View, _: &mut augment::Scratch| {
        fill(dst, &images[v.image], v, win, s.mean)
    };
    infer_views(
        runner,
        graph,
        views,
        win,
        s.batch,
        buf,
        sum,
        |v| v.image,
        input,
    )
}

/// The batching under every protocol: `fill` writes each view's float32 CHW input (of size
/// `win`), in parallel with a reusable [`augment::Scratch`] per worker; the views go through
/// `graph` in runs of at most `batch`, and each posterior is added to the image `image_of`
/// names.
#[allow(clippy::too_many_arguments)]
fn infer_views<V: Sync>(
    runner: &mut Runner<'_>,
    graph: Graph,
    views: &[V],
    win: (u32, u32),
    batch: usize,
    buf: &mut Vec<f32>,
    sum: &mut PosteriorSum,
    image_of: impl Fn(&V) -> usize,
    fill: impl Fn(&mut [f32], &V, &mut augment::Scratch) + Sync,
) -> Result<(), EvalError> {
    let per = 3 * win.0 as usize * win.1 as usize;
    let classes = runner.config.classes as usize;
    for piece in views.chunks(batch) {
        let n = piece.len();
        if buf.len() < n * per {
            buf.resize(n * per, 0.0);
        }
        let data = &mut buf[..n * per];
        data.par_chunks_mut(per)
            .zip(piece.par_iter())
            .for_each_init(augment::Scratch::default, |scratch, (dst, v)| {
                fill(dst, v, scratch)
            });
        let probs = runner.infer(graph, data, n, win)?;
        for (v, p) in piece.iter().zip(probs.chunks_exact(classes)) {
            sum.add(image_of(v), p);
        }
    }
    Ok(())
}

/// The posterior of every image of a rescaled chunk under one network at one scale, per the
/// protocol (views averaged; dense and multi-crop combined with equal weight).
fn chunk_at_scale(
    runner: &mut Runner<'_>,
    images: &[Rescaled],
    s: &EvalSettings,
    buf: &mut Vec<f32>,
) -> Result<PosteriorSum, EvalError> {
    let classes = runner.config.classes as usize;
    let input = runner.config.input;
    let flips: &[bool] = if s.flip { &[false, true] } else { &[false] };
    let dense = |runner: &mut Runner<'_>, buf: &mut Vec<f32>| -> Result<PosteriorSum, EvalError> {
        let mut sum = PosteriorSum::new(images.len(), classes);
        let mut groups: BTreeMap<(u32, u32), Vec<View>> = BTreeMap::new();
        for (i, img) in images.iter().enumerate() {
            let group = groups.entry((img.w, img.h)).or_default();
            for &flip in flips {
                group.push(View {
                    image: i,
                    x: 0,
                    y: 0,
                    flip,
                });
            }
        }
        for (size, views) in &groups {
            run_views(runner, Graph::Dense, images, views, *size, s, buf, &mut sum)?;
        }
        Ok(sum)
    };
    let crops = |runner: &mut Runner<'_>,
                 buf: &mut Vec<f32>,
                 origins: &dyn Fn(&Rescaled) -> Vec<(u32, u32)>|
     -> Result<PosteriorSum, EvalError> {
        let mut sum = PosteriorSum::new(images.len(), classes);
        let mut views = Vec::new();
        for (i, img) in images.iter().enumerate() {
            for (x, y) in origins(img) {
                for &flip in flips {
                    views.push(View {
                        image: i,
                        x,
                        y,
                        flip,
                    });
                }
            }
        }
        run_views(
            runner,
            Graph::Forward,
            images,
            &views,
            (input, input),
            s,
            buf,
            &mut sum,
        )?;
        Ok(sum)
    };
    let grid = |img: &Rescaled| crop_grid(img.w, img.h, input, s.grid);
    Ok(match s.protocol {
        Protocol::Dense => dense(runner, buf)?,
        Protocol::MultiCrop => crops(runner, buf, &grid)?,
        Protocol::Centre => unreachable!("the centre crop is taken by centre_at_scale"),
        Protocol::DenseMultiCrop => {
            let mut both = PosteriorSum::new(images.len(), classes);
            both.add_mean(&dense(runner, buf)?);
            both.add_mean(&crops(runner, buf, &grid)?);
            both
        }
    })
}

/// [`Protocol::Centre`] at test scale `q`: each decoded image's centre crop (and its mirror
/// with flips) made by the loader's own kernel ([`augment::centre_from_rgb`], the pixels the
/// trainer validates on), through the forward graph, views averaged.
fn centre_at_scale(
    runner: &mut Runner<'_>,
    images: &[Decoded<'_>],
    q: u32,
    s: &EvalSettings,
    buf: &mut Vec<f32>,
) -> Result<PosteriorSum, EvalError> {
    let input_side = runner.config.input;
    let classes = runner.config.classes as usize;
    let t = augment::EvalTransform {
        scale: q,
        crop: Some(input_side),
        mean: s.mean,
    };
    let flips: &[bool] = if s.flip { &[false, true] } else { &[false] };
    let views: Vec<(usize, bool)> = (0..images.len())
        .flat_map(|i| flips.iter().map(move |&f| (i, f)))
        .collect();
    let mut sum = PosteriorSum::new(images.len(), classes);
    let input = |dst: &mut [f32], &(i, flip): &(usize, bool), scratch: &mut augment::Scratch| {
        let d = &images[i];
        let out = augment::Output::F32Chw(dst);
        augment::centre_from_rgb(&d.rgb, d.w, d.h, &t, flip, scratch, out);
    };
    let win = (input_side, input_side);
    infer_views(
        runner,
        Graph::Forward,
        &views,
        win,
        s.batch,
        buf,
        &mut sum,
        |v| v.0,
        input,
    )?;
    Ok(sum)
}

/// Runs the whole evaluation, handing each chunk's posteriors to `sink`; returns the seconds
/// the image loop took.
fn run_chunks(
    split: &PreparedSplit,
    nets: &[Network],
    s: &EvalSettings,
    progress: &dyn Progress,
    cancel: &Cancel,
    sink: &mut dyn FnMut(ChunkOut<'_>),
) -> Result<f64, EvalError> {
    validate(split, nets, s)?;
    let mut runners = nets
        .iter()
        .map(|n| Runner::new(n, s))
        .collect::<Result<Vec<_>, _>>()?;
    let classes = nets[0].config.classes;
    let records = records(split, s)?;
    let total = records.len() as u64;
    let mut chunks = records.chunks(CHUNK_IMAGES);
    let started = Instant::now();
    if cancel.is_cancelled() {
        return Err(EvalError::Interrupted { images: 0, total });
    }
    progress.start("eval", total, 0);
    let mut buf = Vec::new();
    let mut done = 0u64;
    let result = std::thread::scope(|scope| -> Result<(), EvalError> {
        let first = chunks.next().expect("records() is never empty");
        let mut current = decode_chunk(split, first)?;
        loop {
            let next_start = done + current.len() as u64;
            // Decode the next chunk while this one runs through the networks.
            let next = chunks
                .next()
                .map(|r| scope.spawn(move || decode_chunk(split, r)));
            let n = current.len();
            let indices: Vec<u64> = current.iter().map(|d| d.index).collect();
            let labels: Vec<i64> = current.iter().map(|d| d.label).collect();
            if let Some(d) = current
                .iter()
                .find(|d| d.label < 0 || d.label >= i64::from(classes))
            {
                return Err(EvalError::Label {
                    index: d.index,
                    label: d.label,
                    classes,
                });
            }
            let mut per_net = vec![PosteriorSum::new(n, classes as usize); runners.len()];
            for &q in &s.scales {
                if s.protocol == Protocol::Centre {
                    for (runner, sum) in runners.iter_mut().zip(&mut per_net) {
                        sum.add_mean(&centre_at_scale(runner, &current, q, s, &mut buf)?);
                    }
                    continue;
                }
                let rescaled: Vec<Rescaled> = current
                    .par_iter()
                    .map(|d| {
                        let (w, h, rgb) = augment::rescale_whole(&d.rgb, d.w, d.h, q);
                        Rescaled { w, h, rgb }
                    })
                    .collect();
                for (runner, sum) in runners.iter_mut().zip(&mut per_net) {
                    sum.add_mean(&chunk_at_scale(runner, &rescaled, s, &mut buf)?);
                }
            }
            let mut fused = PosteriorSum::new(n, classes as usize);
            for sum in &per_net {
                fused.add_mean(sum);
            }
            sink(ChunkOut {
                indices: &indices,
                labels: &labels,
                fused: &fused,
                per_network: &per_net,
            });
            done = next_start;
            progress.set_position(done);
            drop(current);
            if next.is_some() && cancel.is_cancelled() {
                return Err(EvalError::Interrupted {
                    images: next_start,
                    total,
                });
            }
            match next {
                Some(handle) => {
                    current = handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?
                }
                None => break,
            }
        }
        Ok(())
    });
    progress.finish();
    result?;
    Ok(started.elapsed().as_secs_f64())
}
