//! Loader throughput, each figure beside its baseline from the same run.
//!
//! 1. JPEG records, the paper's multi-scale pipeline (S ~ U[256, 512], 224 crops, flip, PCA,
//!    mean; float32 NCHW), against plain decoding of the same records at the same thread count.
//! 2. The same with uint8 NHWC output (normalised on the device): a quarter of the bytes.
//! 3. Raw RGB8 records stored at a 256 shortest side, the S = 256 pipeline: no decode at all, so
//!    this measures the crop-box resize and the normalisation alone.
//!
//! Each row also times the pipeline with the per-record CRC-32C check off (`CRC ratio`: with
//! over without, 1.0 when the check costs nothing).
//!
//! Data: the real photos in `../shared/data/imagenet-sample-500` when present (prepared into a
//! temporary directory first), the generated synthetic set otherwise.
//! Run: `cargo bench --bench loader` (or `make bench`).

use std::path::Path;
use std::sync::Arc;

use vgg::bench::loader_bench;
use vgg::config::pipeline::Pipeline;
use vgg::data::prepare::{prepare, PrepareOptions};
use vgg::data::source::Split;
use vgg::data::store::PreparedSplit;
use vgg::util::machine::machine;
use vgg::util::progress::{Cancel, Silent};

mod common;

fn prepared(work: &Path, root: &Path, name: &str, store: &str) -> Arc<PreparedSplit> {
    let spec = common::folder_dataset(work, root, name, store);
    let opts = PrepareOptions {
        splits: vec![Split::Train],
        ..Default::default()
    };
    prepare(&spec, &opts, &Silent, &Cancel::new()).unwrap();
    Arc::new(PreparedSplit::open(&spec.shards.join("train")).unwrap())
}

fn pipeline(file: &str, batch: usize) -> Pipeline {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(file);
    let mut p = Pipeline::load(&path).unwrap();
    p.loader.batch_size = batch;
    p
}

fn table(title: &str, split: Arc<PreparedSplit>, p: &Pipeline, threads: &[usize], batches: usize) {
    println!(
        "\n## {title}: {} records, batch {}, {batches} timed batches",
        split.len(),
        p.loader.batch_size
    );
    println!(
        "{:>8} {:>12} {:>12} {:>18} {:>8} {:>14} {:>10}",
        "threads",
        "images/s",
        "per core",
        "decode-only img/s",
        "ratio",
        "no-CRC img/s",
        "CRC ratio"
    );
    let r = loader_bench(split, p, "bench", threads, batches, &Cancel::new(), |r| {
        println!(
            "{:>8} {:>12.1} {:>12.1} {:>18.1} {:>8.3} {:>14.1} {:>10.3}",
            r.threads,
            r.images_per_sec,
            r.images_per_sec_per_core,
            r.decode_only_images_per_sec,
            r.ratio_to_decode,
            r.images_per_sec_without_crc,
            r.crc_ratio
        )
    })
    .unwrap();
    println!(
        "scaling {}->{} threads: {:.2}x",
        threads[0],
        threads[threads.len() - 1],
        r.scaling
    );
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let (root, what) = common::photos(work.path());
    let m = machine();
    println!(
        "# loader benchmark\nmachine: {} ({} cores, {})\ndata: {what}",
        m.cpu, m.cores, m.os
    );
    let threads: Vec<usize> = (1..=m.cores).collect();
    let jpeg = prepared(work.path(), &root, "jpeg", "shard_size = \"64MiB\"");
    table(
        "JPEG records, S ~ U[256,512], crop 224, f32 NCHW",
        jpeg.clone(),
        &pipeline("vgg-jitter-256-512.toml", 32),
        &threads,
        30,
    );
    let mut u8_out = pipeline("vgg-jitter-256-512.toml", 32);
    u8_out.loader.output = vgg::config::pipeline::OutputKind::U8Nhwc;
    table(
        "JPEG records, S ~ U[256,512], crop 224, u8 NHWC + shift",
        jpeg.clone(),
        &u8_out,
        &threads,
        30,
    );
    let raw = prepared(
        work.path(),
        &root,
        "raw",
        "encoding = \"raw\"\nmax_shortest_side = 256\nshard_size = \"256MiB\"",
    );
    table(
        "raw records (short side 256), S = 256, crop 224, f32 NCHW",
        raw,
        &pipeline("vgg-s256.toml", 32),
        &threads,
        30,
    );
    println!(
        "\nratio = full pipeline / plain decoding of the same records at the same thread count;\n\
         CRC ratio = full pipeline / the same with the records' CRC-32C check off."
    );
}
