//! The loader over prepared shards: determinism, partitioning, buffer reuse, errors, shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vgg::config::pipeline::{LoaderSettings, Order, OutputKind, Pipeline};
use vgg::config::registry::Registry;
use vgg::data::loader::{Loader, LoaderError, LoaderOptions, Mode};
use vgg::data::prepare::PrepareOptions;
use vgg::data::source::Split;
use vgg::data::store::PreparedSplit;

use crate::prepare::run;

/// A small prepared synthetic dataset (3 shards of train) and a pipeline for it.
pub fn prepared_toy(dir: &Path) -> (Arc<PreparedSplit>, Pipeline) {
    std::fs::write(
        dir.join("datasets.toml"),
        "[datasets.toy]\nsource = \"synthetic\"\n[datasets.toy.synthetic]\nclasses = 4\ntrain_per_class = 10\nval_per_class = 2\nmin_short_side = 48\nmax_short_side = 90\n[datasets.toy.store]\nmax_shortest_side = 80\nrecords_per_shard = 16\n",
    )
    .unwrap();
    let reg = Registry::load(&dir.join("datasets.toml")).unwrap();
    let spec = reg.get("toy").unwrap();
    run(
        spec,
        &PrepareOptions {
            splits: vec![Split::Train],
            ..Default::default()
        },
    );
    let split = Arc::new(PreparedSplit::open(&spec.shards.join("train")).unwrap());
    let pipeline = Pipeline::parse(
        "dataset = \"toy\"\n[loader]\nbatch_size = 8\nprefetch = 2\nseed = 5\n\
         [[train.stages]]\nkind = \"decode\"\n[[train.stages]]\nkind = \"scale_jitter\"\nmin = 32\nmax = 64\n\
         [[train.stages]]\nkind = \"random_crop\"\nsize = 28\n[[train.stages]]\nkind = \"flip\"\n\
         [[train.stages]]\nkind = \"pca_lighting\"\n[[train.stages]]\nkind = \"normalize\"\n",
        Path::new("toy.toml"),
    )
    .unwrap();
    (split, pipeline)
}

fn options(
    p: &Pipeline,
    threads: usize,
    epoch: u64,
    f: impl FnOnce(&mut LoaderSettings),
) -> LoaderOptions {
    let mut settings = p.loader.clone();
    settings.threads = threads;
    f(&mut settings);
    LoaderOptions {
        settings,
        mode: Mode::Train(p.train.clone()),
        epoch,
        epochs: 1,
        rank: 0,
        world: 1,
        uneven: false,
        start_batch: 0,
    }
}

/// All batches of an epoch as (images, labels, indices).
fn epoch(split: &Arc<PreparedSplit>, opts: LoaderOptions) -> Vec<(Vec<f32>, Vec<i64>, Vec<u64>)> {
    Loader::new(split.clone(), opts)
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            (
                b.images().unwrap().iter().copied().collect(),
                b.labels().to_vec(),
                b.indices().to_vec(),
            )
        })
        .collect()
}

#[test]
fn batches_are_bit_identical_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (split, p) = prepared_toy(dir.path());
    let one = epoch(&split, options(&p, 1, 0, |_| {}));
    let four = epoch(&split, options(&p, 4, 0, |_| {}));
    assert_eq!(one.len(), 40 / 8);
    assert!(one == four, "1 and 4 threads gave different batches");
    let next = epoch(&split, options(&p, 2, 1, |_| {}));
    assert!(one != next, "epoch 1 repeated epoch 0");
    // Labels are those of the records.
    for (_, labels, indices) in &one {
        for (l, &g) in labels.iter().zip(indices) {
            let (k, i) = split.locate(g);
            assert_eq!(*l, split.shards[k].record(i).unwrap().label as i64);
        }
    }
    // An epoch covers every record once.
    let mut all: Vec<u64> = one.iter().flat_map(|b| b.2.clone()).collect();
    all.sort();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
}

#[test]
fn a_multi_epoch_loader_equals_one_loader_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (split, p) = prepared_toy(dir.path());
    let mut separate = epoch(&split, options(&p, 2, 3, |_| {}));
    separate.extend(epoch(&split, options(&p, 2, 4, |_| {})));
    let mut o = options(&p, 2, 3, |_| {});
    o.epochs = 2;
    let loader = Loader::new(split.clone(), o).unwrap();
    assert_eq!(loader.batches(), 10);
    let mut epochs = Vec::new();
    let joint: Vec<_> = loader
        .map(|b| {
            let b = b.unwrap();
            epochs.push(b.epoch);
            (
                b.images().unwrap().iter().copied().collect::<Vec<f32>>(),
                b.labels().to_vec(),
                b.indices().to_vec(),
            )
        })
        .collect();
    assert!(joint == separate);
    assert_eq!(epochs, [3, 3, 3, 3, 3, 4, 4, 4, 4, 4]);
}

#[test]
fn u8_output_plus_shift_equals_f32_output() {
    let dir = tempfile::tempdir().unwrap();
    let (split, p) = prepared_toy(dir.path());
    let f = epoch(&split, options(&p, 2, 0, |_| {}));
    let mut loader = Loader::new(
        split.clone(),
        options(&p, 2, 0, |s| s.output = OutputKind::U8Nhwc),
    )
    .unwrap();
    let b = loader.next().unwrap().unwrap();
    let (px, shift) = (b.pixels().unwrap(), b.shift().unwrap());
    let c = p.train.crop as usize;
    for n in 0..b.len() {
        for ch in 0..3 {
            for y in 0..c {
                for x in 0..c {
                    let want = f[0].0[((n * 3 + ch) * c + y) * c + x];
                    let got = px[[n, y, x, ch]] as f32 + shift[[n, ch]];
                    assert!(
                        (want - got).abs() < 1e-3,
                        "n{n} c{ch} y{y} x{x}: {want} vs {got}"
                    );
                }
            }
        }
    }
}

#[test]
fn ranks_read_disjoint_parts() {
    let dir = tempfile::tempdir().unwrap();
    let (split, p) = prepared_toy(dir.path());
    let mut seen = Vec::new();
    for rank in 0..3 {
        let mut o = options(&p, 1, 0, |s| s.drop_last = false);
        o.rank = rank;
        o.world = 3;
        let idx: Vec<u64> = epoch(&split, o).into_iter().flat_map(|b| b.2).collect();
        assert_eq!(idx.len(), 40 / 3);
        seen.extend(idx);
    }
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "ranks overlap");
}

#[test]
fn buffers_are_recycled_and_memory_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (split, p) = prepared_toy(dir.path());
    for order in [Order::Shuffle, Order::ShardLocal, Order::Sequential] {
        let loader = Loader::new(
            split.clone(),
            options(&p, 2, 0, |s| {
                s.batch_size = 2;
                s.order = order;
            }),
        )
        .unwrap();
        let bytes = loader.buffer_bytes();
        let per_batch = 2 * 3 * 28 * 28 * 4;
        assert!(
            bytes >= (2 + 2) * per_batch && bytes < (2 + 3) * per_batch,
            "{bytes}"
        );
        let mut ptrs: Vec<usize> = loader
            .map(|b| b.unwrap().images().unwrap().as_ptr() as usize)
            .collect();
        assert_eq!(ptrs.len(), 20);
        ptrs.sort();
        ptrs.dedup();
        assert!(
            ptrs.len() <= 2 + 2,
            "{} distinct buffers for prefetch 2",
            ptrs.len()
        );
    }
}

#[test]
fn dropping_the_loader_mid_epoch_stops_its_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (split, p) = prepared_toy(dir.path());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut loader = Loader::new(split, options(&p, 2, 0, |s| s.batch_size = 1)).unwrap();
        let first = loader.next().unwrap().unwrap();
        drop(loader); // while the producer is blocked on a full queue
        drop(first);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("loader drop did not return");
}

fn corrupt_record(shard: &PathBuf, record: usize) -> String {
    let (key, payload) = {
        let r = vgg::data::shard::ShardReader::open(shard).unwrap();
        let rec = r.record(record).unwrap();
        (rec.key.to_string(), rec.bytes.to_vec())
    };
    let mut bytes = std::fs::read(shard).unwrap();
    let off = bytes
        .windows(payload.len())
        .position(|w| w == &payload[..])
        .unwrap();
    bytes[off..off + 16].fill(0); // no JPEG start marker any more
    std::fs::write(shard, bytes).unwrap();
    key
}

/// A sequential epoch of batches of 2 over the toy set after `damage` has changed record 3 of
/// shard 1 (it returns the record's key).
fn sequential_epoch_with(
    damage: impl Fn(&std::path::PathBuf) -> String,
) -> (Vec<Result<vgg::data::loader::Batch, LoaderError>>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (split, p) = prepared_toy(dir.path());
    let shard = split.shards[1].path().to_path_buf();
    drop(split);
    let key = damage(&shard);
    let split = Arc::new(PreparedSplit::open(shard.parent().unwrap()).unwrap());
    let results = Loader::new(split, options(&p, 2, 0, |s| s.order = Order::Sequential))
        .unwrap()
        .collect();
    (results, key)
}

#[test]
fn a_record_that_fails_to_decode_is_an_error_naming_shard_and_record() {
    let (results, key) = sequential_epoch_with(|shard| corrupt_record(shard, 3));
    // Record 3 of shard 1 is global record 19: batches 0 and 1 are fine, batch 2 fails, then the
    // epoch ends.
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[1].is_ok());
    let e = results[2]
        .as_ref()
        .err()
        .expect("the bad batch is an error")
        .to_string();
    assert!(
        e.contains("train-00001.vggshard") && e.contains("record 3") && e.contains(&key),
        "{e}"
    );
}

#[test]
fn the_shipped_pipelines_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let p = Pipeline::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(p.train.crop <= p.eval.scale, "{}", path.display());
            let m = p
                .model
                .as_ref()
                .unwrap_or_else(|| panic!("{} has no model", path.display()));
            assert_eq!(m.input, p.train.crop, "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 4);
    let j = Pipeline::load(&dir.join("vgg-jitter-256-512.toml")).unwrap();
    assert_eq!(
        j.train.scale,
        vgg::data::augment::Scale::Jitter { min: 256, max: 512 }
    );
    assert_eq!(j.eval.scale, 384);
}

#[test]
fn eval_batches_are_centre_crops_in_storage_order() {
    let dir = tempfile::tempdir().unwrap();
    let (split, p) = prepared_toy(dir.path());
    let eval = vgg::data::augment::EvalTransform {
        scale: 40,
        crop: Some(28),
        mean: vgg::data::augment::VGG_MEAN,
    };
    let mut o = options(&p, 2, 0, |s| {
        s.order = Order::Sequential;
        s.drop_last = false;
        s.batch_size = 16;
    });
    o.mode = Mode::Eval(eval.clone());
    let batches = epoch(&split, o);
    assert_eq!(
        batches.iter().map(|b| b.2.len()).collect::<Vec<_>>(),
        [16, 16, 8]
    );
    let mut scratch = vgg::data::augment::Scratch::default();
    let per = 3 * 28 * 28;
    for (images, _, indices) in &batches {
        for (j, &g) in indices.iter().enumerate() {
            let (k, i) = split.locate(g);
            let rec = split.shards[k].record(i).unwrap();
            let mut want = vec![0f32; per];
            vgg::data::augment::eval_sample(
                &rec,
                &eval,
                &mut scratch,
                vgg::data::augment::Output::F32Chw(&mut want),
            )
            .unwrap();
            assert!(images[j * per..(j + 1) * per] == want[..], "record {g}");
        }
    }
    let order: Vec<u64> = batches.iter().flat_map(|b| b.2.clone()).collect();
    assert_eq!(order, (0..40).collect::<Vec<_>>());
}

#[test]
fn a_loader_started_mid_epoch_gives_the_rest_of_that_epoch() {
    // Resuming a run from a checkpoint taken after batch 2 must see exactly batches 2.. of the
    // epoch (same samples, same augmentation), then the following epochs unchanged.
    let dir = tempfile::tempdir().unwrap();
    let (split, p) = prepared_toy(dir.path());
    let mut whole = options(&p, 2, 3, |_| {});
    whole.epochs = 2;
    let mut resumed = whole.clone();
    resumed.start_batch = 2;
    let full = epoch(&split, whole);
    let rest = epoch(&split, resumed.clone());
    assert_eq!(full.len(), 10);
    assert!(rest == full[2..], "a mid-epoch start changed the batches");
    let loader = Loader::new(split.clone(), resumed).unwrap();
    assert_eq!(loader.batches(), 8);
    let numbers: Vec<usize> = loader.map(|b| b.unwrap().number).collect();
    assert_eq!(numbers, vec![2, 3, 4, 0, 1, 2, 3, 4]);
}

/// Flips one byte in the middle of record `record`'s payload; returns its key.
pub fn flip_payload_byte(shard: &Path, record: usize) -> String {
    let (key, payload) = {
        let r = vgg::data::shard::ShardReader::open(shard).unwrap();
        let rec = r.record(record).unwrap();
        (rec.key.to_string(), rec.bytes.to_vec())
    };
    let mut bytes = std::fs::read(shard).unwrap();
    let off = bytes
        .windows(payload.len())
        .position(|w| w == &payload[..])
        .unwrap();
    let at = off + payload.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(shard, bytes).unwrap();
    assert!(at > 4096);
    key
}

#[test]
fn a_record_with_one_flipped_byte_fails_the_epoch_naming_shard_record_and_key() {
    // The index and header are intact, so the store opens; the record's bytes are refused.
    let (results, key) = sequential_epoch_with(|shard| flip_payload_byte(shard, 3));
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[1].is_ok());
    let e = results[2]
        .as_ref()
        .err()
        .expect("the damaged batch is an error")
        .to_string();
    assert!(
        e.contains("train-00001.vggshard")
            && e.contains("record 3")
            && e.contains(&key)
            && e.contains("checksum"),
        "{e}"
    );
}
