//! Prepare throughput against a baseline measured in the same run on the same files.
//!
//! Data: the 500 real ImageNet photos in `../shared/data/imagenet-sample-500` when present (typical
//! ImageNet JPEGs, ~400x350, ~110 KB), otherwise the generated synthetic set. The baseline is
//! plain decoding of the same files to RGB8 with the same thread count; the ratio
//! prepare/decode says how close the whole store path (read, decode-check, convert, resize,
//! encode, checksum, write) comes to decoding alone.
//!
//! Run: `cargo bench --bench prepare` (or `make bench`). Set VGG_BENCH_DATA=DIR to use another
//! class-folder tree (DIR/train/<class>/*).

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use vgg::data::prepare::{prepare, PrepareOptions};
use vgg::data::source::Split;
use vgg::util::progress::{Cancel, Silent};

mod common;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for class in std::fs::read_dir(dir).unwrap() {
        let class = class.unwrap().path();
        if class.is_dir() {
            for f in std::fs::read_dir(&class).unwrap() {
                out.push(f.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let (root, what) = common::photos(work.path());
    let list = files(&root.join("train"));
    let bytes: u64 = list
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let m = vgg::util::machine::machine();
    let cores = m.cores;
    println!("# prepare benchmark");
    println!("machine: {} ({} cores available)", m.cpu, cores);
    println!(
        "vgg {} | image 0.25 (zune-jpeg) | jpeg-encoder 0.7 | fast_image_resize 6",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "data: {what}: {} files, {:.1} MiB, mean {:.0} KiB",
        list.len(),
        bytes as f64 / 1048576.0,
        bytes as f64 / list.len() as f64 / 1024.0
    );
    // Warm the page cache so both sides read from memory.
    for p in &list {
        let _ = std::fs::read(p);
    }
    println!();
    println!(
        "{:>8} {:>16} {:>16} {:>16} {:>10}",
        "threads", "decode img/s", "prepare img/s", "per core", "ratio"
    );
    let mut thread_counts = vec![1];
    if cores > 1 {
        thread_counts.push(cores);
    }
    for &threads in &thread_counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let t = Instant::now();
        let decoded: usize = pool.install(|| {
            list.par_iter()
                .filter(|p| {
                    vgg::data::imaging::decode_rgb8(&std::fs::read(p).unwrap(), u64::MAX).is_ok()
                })
                .count()
        });
        let decode_rate = decoded as f64 / t.elapsed().as_secs_f64();

        let spec = common::folder_dataset(
            work.path(),
            &root,
            &format!("bench-{threads}"),
            "shard_size = \"64MiB\"",
        );
        let opts = PrepareOptions {
            splits: vec![Split::Train],
            threads: Some(threads),
            ..Default::default()
        };
        let t = Instant::now();
        let r = prepare(&spec, &opts, &Silent, &Cancel::new()).unwrap();
        let prep_rate = r[0].processed as f64 / t.elapsed().as_secs_f64();
        println!(
            "{threads:>8} {decode_rate:>16.1} {prep_rate:>16.1} {:>16.1} {:>10.2}",
            prep_rate / threads as f64,
            prep_rate / decode_rate
        );
    }
    println!("\nratio = prepare / plain decode of the same files at the same thread count (1.0 = as fast as decoding alone).");
}
