//! The parallel loader: prepared shards in, augmented batches out, reproducibly.
//!
//! One producer thread walks the epoch order batch by batch. For each batch it takes a free
//! buffer, and a rayon pool of workers decodes and augments every sample straight into its slot
//! of that buffer; the filled batch goes to the consumer over a bounded crossbeam channel
//! (`prefetch` deep). When the consumer drops a batch its buffer returns to the free list, so
//! the steady state allocates nothing per batch, and memory is bounded by
//! `(prefetch + 2) x batch bytes` plus one image of scratch per worker.
//!
//! Reproducibility: a sample's augmentation is drawn from `(seed, epoch, record index)` and the
//! epoch order from `(seed, epoch)`, so the batches are bit-identical whatever the number of
//! worker threads. Several training processes (`rank` of `world`) read disjoint parts of each
//! epoch.
//!
//! Errors: a record that fails to decode ends the epoch with an error naming the shard, record
//! and key, delivered to the consumer in order; a worker never panics on data. Dropping the
//! loader stops and joins its threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use ndarray::{ArrayView2, ArrayView4};
use rayon::prelude::*;

use crate::config::pipeline::{LoaderSettings, Order, OutputKind};
use crate::data::augment::{self, EvalTransform, Output, SampleError, TrainTransform};
use crate::data::store::PreparedSplit;
use crate::util::rng::{Rng, Stream};

/// What the loader produces per sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Training augmentation.
    Train(TrainTransform),
    /// Rescale to Q and centre crop (the crop must be set).
    Eval(EvalTransform),
}

impl Mode {
    fn crop(&self) -> Option<u32> {
        match self {
            Mode::Train(t) => Some(t.crop),
            Mode::Eval(e) => e.crop,
        }
    }
}

/// Everything a loader needs besides the data.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub settings: LoaderSettings,
    pub mode: Mode,
    /// First epoch to load.
    pub epoch: u64,
    /// Number of consecutive epochs to load (at least 1). Loading several keeps the buffers,
    /// threads and prefetch queue warm across epoch boundaries; `Batch::epoch` tells them apart.
    pub epochs: u64,
    /// This process's share of the epoch: `rank` of `world`.
    pub rank: usize,
    pub world: usize,
    /// Let the ranks' shares differ by one sample instead of cutting them to the same length
    /// (evaluation, where every image counts once; training needs equal shares so that all
    /// ranks step together).
    pub uneven: bool,
    /// Batches of the first epoch to skip without loading them (resuming a run mid-epoch);
    /// batch numbers keep counting from the epoch's start.
    pub start_batch: usize,
}

impl LoaderOptions {
    /// One whole epoch of the split, from its first batch, in one process.
    pub fn new(settings: LoaderSettings, mode: Mode, epoch: u64) -> Self {
        LoaderOptions {
            settings,
            mode,
            epoch,
            epochs: 1,
            rank: 0,
            world: 1,
            uneven: false,
            start_batch: 0,
        }
    }
}

/// Why the loader stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error("invalid loader options: {0}")]
    Options(String),
    #[error("cannot start loader threads: {0}")]
    Threads(String),
}

/// The record indices of one epoch for this rank, in order: every `world`-th record of the
/// epoch's order from position `rank`, cut to the same length on every rank unless `uneven`.
#[allow(clippy::too_many_arguments)]
pub fn epoch_order(
    shard_lengths: &[u64],
    order: Order,
    window_shards: usize,
    seed: u64,
    epoch: u64,
    rank: usize,
    world: usize,
    uneven: bool,
) -> Vec<u64> {
    let n: u64 = shard_lengths.iter().sum();
    let mut all: Vec<u64> = match order {
        Order::Sequential => (0..n).collect(),
        Order::Shuffle => {
            let mut v: Vec<u64> = (0..n).collect();
            Rng::new(seed, Stream::Order, epoch, 0).shuffle(&mut v);
            v
        }
        Order::ShardLocal => {
            let mut starts = Vec::with_capacity(shard_lengths.len());
            let mut acc = 0;
            for &l in shard_lengths {
                starts.push(acc);
                acc += l;
            }
            let mut shards: Vec<usize> = (0..shard_lengths.len()).collect();
            Rng::new(seed, Stream::Order, epoch, 0).shuffle(&mut shards);
            let mut v = Vec::with_capacity(n as usize);
            for (w, window) in shards.chunks(window_shards.max(1)).enumerate() {
                let from = v.len();
                for &k in window {
                    v.extend(starts[k]..starts[k] + shard_lengths[k]);
                }
                Rng::new(seed, Stream::Order, epoch, 1 + w as u64).shuffle(&mut v[from..]);
            }
            v
        }
    };
    if world > 1 {
        // Strided, then cut to the same length on every rank so all ranks step together.
        let per_rank = if uneven {
            (all.len() + world - 1 - rank) / world
        } else {
            all.len() / world
        };
        all = all
            .into_iter()
            .skip(rank)
            .step_by(world)
            .take(per_rank)
            .collect();
    }
    all
}

/// One batch's storage, recycled between batches.
struct Buffers {
    f32: Vec<f32>,
    u8: Vec<u8>,
    shift: Vec<f32>,
    labels: Vec<i64>,
    indices: Vec<u64>,
}

/// A batch of samples. Dropping it hands its buffers back to the loader.
pub struct Batch {
    buf: Option<Buffers>,
    n: usize,
    crop: usize,
    output: OutputKind,
    /// Batch number within the epoch.
    pub number: usize,
    pub epoch: u64,
    recycle: Sender<Buffers>,
}

impl Batch {
    /// A float32 NCHW batch made outside a loader (benchmarks on random data): `images` holds
    /// `labels.len()` images of `crop` x `crop`; the samples get record indices 0, 1, ...
    pub fn from_images(images: Vec<f32>, crop: usize, labels: Vec<i64>) -> Batch {
        let n = labels.len();
        assert_eq!(images.len(), n * 3 * crop * crop, "images for {n} labels");
        let (recycle, _) = crossbeam_channel::bounded(1);
        Batch {
            buf: Some(Buffers {
                f32: images,
                u8: Vec::new(),
                shift: Vec::new(),
                labels,
                indices: (0..n as u64).collect(),
            }),
            n,
            crop,
            output: OutputKind::F32Nchw,
            number: 0,
            epoch: 0,
            recycle,
        }
    }

    fn buf(&self) -> &Buffers {
        self.buf.as_ref().expect("buffers present until drop")
    }

    /// Number of samples (the last batch of an epoch may be short).
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// float32 NCHW images (output `f32_nchw`).
    pub fn images(&self) -> Option<ArrayView4<'_, f32>> {
        (self.output == OutputKind::F32Nchw).then(|| {
            let c = self.crop;
            ArrayView4::from_shape((self.n, 3, c, c), &self.buf().f32[..self.n * 3 * c * c])
                .expect("buffer sized for the batch")
        })
    }

    /// uint8 NHWC crops (output `u8_nhwc`).
    pub fn pixels(&self) -> Option<ArrayView4<'_, u8>> {
        (self.output == OutputKind::U8Nhwc).then(|| {
            let c = self.crop;
            ArrayView4::from_shape((self.n, c, c, 3), &self.buf().u8[..self.n * 3 * c * c])
                .expect("buffer sized for the batch")
        })
    }

    /// Per-image [N, 3] shift to add to `pixels` (PCA shift minus mean; output `u8_nhwc`).
    pub fn shift(&self) -> Option<ArrayView2<'_, f32>> {
        (self.output == OutputKind::U8Nhwc).then(|| {
            ArrayView2::from_shape((self.n, 3), &self.buf().shift[..self.n * 3])
                .expect("buffer sized for the batch")
        })
    }

    /// Class labels.
    pub fn labels(&self) -> &[i64] {
        &self.buf().labels[..self.n]
    }

    /// Global record indices of the samples.
    pub fn indices(&self) -> &[u64] {
        &self.buf().indices[..self.n]
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let _ = self.recycle.send(b);
        }
    }
}

/// Iterates over the batches of one epoch.
pub struct Loader {
    rx: Receiver<Result<Batch, LoaderError>>,
    stop_tx: Option<Sender<()>>,
    stopped: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    batches: usize,
    buffer_bytes: usize,
    done: bool,
}

impl Loader {
    /// Starts loading one epoch of `split`.
    pub fn new(split: Arc<PreparedSplit>, opts: LoaderOptions) -> Result<Self, LoaderError> {
        let s = &opts.settings;
        if s.batch_size == 0 || s.prefetch == 0 {
            return Err(LoaderError::Options(
                "batch_size and prefetch must be at least 1".into(),
            ));
        }
        if opts.epoch.checked_add(opts.epochs).is_none() {
            return Err(LoaderError::Options(format!(
                "epoch {} and {} more do not fit in a 64-bit epoch number",
                opts.epoch, opts.epochs
            )));
        }
        if opts.world == 0 || opts.rank >= opts.world {
            return Err(LoaderError::Options(format!(
                "rank {} of world {}: need rank < world",
                opts.rank, opts.world
            )));
        }
        let crop = opts.mode.crop().ok_or_else(|| {
            LoaderError::Options("batches need a fixed size: set a centre crop".into())
        })? as usize;
        if opts.epochs == 0 {
            return Err(LoaderError::Options("epochs must be at least 1".into()));
        }
        let lengths: Vec<u64> = split.shards.iter().map(|r| r.len() as u64).collect();
        // Every epoch of one rank has the same length; only the order differs.
        let per_rank = if opts.world > 1 && opts.uneven {
            (split.len() as usize + opts.world - 1 - opts.rank) / opts.world
        } else if opts.world > 1 {
            split.len() as usize / opts.world
        } else {
            split.len() as usize
        };
        let samples = if s.drop_last {
            per_rank / s.batch_size * s.batch_size
        } else {
            per_rank
        };
        let batches = samples.div_ceil(s.batch_size);
        let bs = s.batch_size;
        let per = 3 * crop * crop;
        let n_buffers = s.prefetch + 2;
        let (free_tx, free_rx) = bounded::<Buffers>(n_buffers);
        let mut buffer_bytes = 0;
        for _ in 0..n_buffers {
            let b = Buffers {
                f32: if s.output == OutputKind::F32Nchw {
                    vec![0.0; bs * per]
                } else {
                    Vec::new()
                },
                u8: if s.output == OutputKind::U8Nhwc {
                    vec![0; bs * per]
                } else {
                    Vec::new()
                },
                shift: if s.output == OutputKind::U8Nhwc {
                    vec![0.0; bs * 3]
                } else {
                    Vec::new()
                },
                labels: vec![0; bs],
                indices: vec![0; bs],
            };
            buffer_bytes += b.f32.len() * 4 + b.u8.len() + b.shift.len() * 4 + bs * 16;
            free_tx
                .send(b)
                .expect("free list has room for every buffer");
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(s.threads)
            .thread_name(|i| format!("loader-{i}"))
            .build()
            .map_err(|e| LoaderError::Threads(e.to_string()))?;
        let (tx, rx) = bounded(s.prefetch);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let stopped = Arc::new(AtomicBool::new(false));
        let producer = Producer {
            split,
            lengths,
            settings: s.clone(),
            rank: opts.rank,
            world: opts.world,
            uneven: opts.uneven,
            epochs: opts.epoch..opts.epoch + opts.epochs,
            start_batch: opts.start_batch,
            samples,
            batch_size: bs,
            crop,
            output: s.output,
            mode: opts.mode.clone(),
            stopped: stopped.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || pool.install(|| producer.run(tx, free_tx, free_rx, stop_rx)))
            .map_err(|e| LoaderError::Threads(e.to_string()))?;
        Ok(Loader {
            rx,
            stop_tx: Some(stop_tx),
            stopped,
            handle: Some(handle),
            batches: (batches * opts.epochs as usize).saturating_sub(opts.start_batch),
            buffer_bytes,
            done: false,
        })
    }

    /// Batches the loader yields over all its epochs.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// Bytes held in batch buffers (the loader's whole steady-state footprint, but for one
    /// image of scratch per worker).
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, LoaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.rx.recv() {
            Ok(Ok(b)) => Some(Ok(b)),
            Ok(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            Err(_) => {
                self.done = true;
                None
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop_tx.take(); // wakes a producer blocked in select!
                             // Drain so a producer blocked on a full channel can exit; batches drop their buffers.
        while self.rx.try_recv().is_ok() {}
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Producer {
    split: Arc<PreparedSplit>,
    lengths: Vec<u64>,
    settings: LoaderSettings,
    rank: usize,
    world: usize,
    uneven: bool,
    epochs: std::ops::Range<u64>,
    start_batch: usize,
    samples: usize,
    batch_size: usize,
    crop: usize,
    output: OutputKind,
    mode: Mode,
    stopped: Arc<AtomicBool>,
}

impl Producer {
    fn run(
        self,
        tx: Sender<Result<Batch, LoaderError>>,
        free_tx: Sender<Buffers>,
        free_rx: Receiver<Buffers>,
        stop_rx: Receiver<()>,
    ) {
        for epoch in self.epochs.clone() {
            let s = &self.settings;
            let order = epoch_order(
                &self.lengths,
                s.order,
                s.window_shards,
                s.seed,
                epoch,
                self.rank,
                self.world,
                self.uneven,
            );
            let skip = if epoch == self.epochs.start {
                self.start_batch
            } else {
                0
            };
            if !self.run_epoch(
                epoch,
                skip,
                &order[..self.samples],
                &tx,
                &free_tx,
                &free_rx,
                &stop_rx,
            ) {
                return;
            }
        }
    }

    /// One epoch's batches from batch `skip` on; false when the loader must stop.
    #[allow(clippy::too_many_arguments)] // the channels of `run`, passed through
    fn run_epoch(
        &self,
        epoch: u64,
        skip: usize,
        order: &[u64],
        tx: &Sender<Result<Batch, LoaderError>>,
        free_tx: &Sender<Buffers>,
        free_rx: &Receiver<Buffers>,
        stop_rx: &Receiver<()>,
    ) -> bool {
        for (number, chunk) in order.chunks(self.batch_size).enumerate().skip(skip) {
            let mut buf = select! {
                recv(free_rx) -> b => match b { Ok(b) => b, Err(_) => return false },
                recv(stop_rx) -> _ => return false,
            };
            let result = self.fill(&mut buf, chunk, epoch);
            let item = result.map(|()| Batch {
                buf: Some(buf),
                n: chunk.len(),
                crop: self.crop,
                output: self.output,
                number,
                epoch,
                recycle: free_tx.clone(),
            });
            let failed = item.is_err();
            select! {
                send(tx, item) -> r => if r.is_err() { return false },
                recv(stop_rx) -> _ => return false,
            }
            if failed || self.stopped.load(Ordering::Relaxed) {
                return false;
            }
        }
        true
    }

    /// Decodes and augments every sample of `chunk` into its slot of `buf`, in parallel.
    fn fill(&self, buf: &mut Buffers, chunk: &[u64], epoch: u64) -> Result<(), LoaderError> {
        let per = 3 * self.crop * self.crop;
        let n = chunk.len();
        buf.indices[..n].copy_from_slice(chunk);
        let labels = buf.labels[..n].par_iter_mut().zip(chunk.par_iter());
        match self.output {
            OutputKind::F32Nchw => buf.f32[..n * per]
                .par_chunks_mut(per)
                .zip(labels)
                .try_for_each(|(slot, (label, &g))| {
                    self.sample(g, epoch, label, Output::F32Chw(slot))
                }),
            OutputKind::U8Nhwc => buf.u8[..n * per]
                .par_chunks_mut(per)
                .zip(buf.shift[..n * 3].par_chunks_mut(3))
                .zip(labels)
                .try_for_each(|((pixels, shift), (label, &g))| {
                    self.sample(g, epoch, label, Output::U8Hwc { pixels, shift })
                }),
        }
    }

    /// Augments record `global` into `out` and writes its class into `label`.
    fn sample(
        &self,
        global: u64,
        epoch: u64,
        label: &mut i64,
        out: Output<'_>,
    ) -> Result<(), LoaderError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Ok(()); // the batch is discarded anyway
        }
        augment::with_record(&self.split, global, |rec, scratch| {
            *label = rec.label as i64;
            match &self.mode {
                Mode::Train(t) => {
                    let p = t.params(self.settings.seed, epoch, global);
                    augment::train_sample(rec, t, &p, scratch, out)
                }
                Mode::Eval(e) => augment::eval_sample(rec, e, scratch, out),
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_permutations_and_ranks_are_disjoint() {
        let lengths = [5u64, 7, 3, 9, 1];
        let n: u64 = lengths.iter().sum();
        for order in [Order::Shuffle, Order::ShardLocal, Order::Sequential] {
            let mut v = epoch_order(&lengths, order, 2, 7, 3, 0, 1, false);
            assert_eq!(v.len() as u64, n);
            if order != Order::Sequential {
                assert_ne!(v, (0..n).collect::<Vec<_>>(), "{order:?} did not shuffle");
                assert_eq!(
                    v,
                    epoch_order(&lengths, order, 2, 7, 3, 0, 1, false),
                    "{order:?} not reproducible"
                );
                assert_ne!(
                    v,
                    epoch_order(&lengths, order, 2, 7, 4, 0, 1, false),
                    "{order:?} same for another epoch"
                );
            }
            v.sort();
            assert_eq!(v, (0..n).collect::<Vec<_>>());
            // Three ranks: disjoint, equal length, covering all but the remainder.
            let parts: Vec<Vec<u64>> = (0..3)
                .map(|r| epoch_order(&lengths, order, 2, 7, 3, r, 3, false))
                .collect();
            let mut union: Vec<u64> = parts.concat();
            assert!(parts.iter().all(|p| p.len() as u64 == n / 3));
            union.sort();
            union.dedup();
            assert_eq!(union.len() as u64, n / 3 * 3);
        }
    }

    #[test]
    fn shard_local_order_stays_within_windows() {
        let lengths = [10u64; 8];
        let v = epoch_order(&lengths, Order::ShardLocal, 2, 1, 0, 0, 1, false);
        // Each run of 20 consecutive samples comes from exactly two shards.
        for w in v.chunks(20) {
            let mut shards: Vec<u64> = w.iter().map(|g| g / 10).collect();
            shards.sort();
            shards.dedup();
            assert_eq!(shards.len(), 2, "{w:?}");
        }
    }
}
