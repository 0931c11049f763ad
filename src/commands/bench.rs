//! `vgg bench`: throughput of the training loop and of the loader, each printed beside a
//! baseline measured in the same run (the step alone and the loader alone; plain decoding).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use vgg::bench::{self, LoaderReport, LoaderRow, TrainBenchReport};
use vgg::net::session::Devices;
use vgg::train::parallel::ParallelOptions;
use vgg::util::machine::{machine, Machine};

use super::progress::CANCEL;
use super::{bytes, print_json, Common};

/// Throughput benchmarks, each with its baseline measured in the same run.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Training throughput: the whole loop (loader + step) and, in the same run, the step alone
    /// and the loader alone, so you see which one limits.
    ///
    /// With --replicas or --accumulate, the step is the data-parallel one, timed beside the
    /// fused step of one replica (same run, same batch) and with the share of its time spent
    /// summing gradients.
    ///
    /// JSON keys: loop_images_per_sec, step_images_per_sec, loader_images_per_sec, limited_by,
    /// efficiency, batch, steps, config, replicas, accumulate, reduce_share,
    /// one_replica_step_images_per_sec, ratio_to_one_replica, machine.
    Train {
        /// Pipeline file with a [model] table.
        pipeline: PathBuf,
        /// Use this dataset instead of the pipeline's.
        #[arg(long, value_name = "NAME")]
        dataset: Option<String>,
        /// Timed steps per measurement (after warm-up).
        #[arg(long, default_value_t = 20, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// cpu, cuda, cuda:N or cuda:0,1,... (as for `vgg train`).
        #[arg(long, default_value = "cpu", value_name = "DEVICE")]
        device: Devices,
        /// Data-parallel replicas (as for `vgg train`).
        #[arg(long, default_value_t = 1, value_name = "N")]
        replicas: usize,
        /// Micro-batches per replica and step (default: the pipeline's [training] accumulate).
        #[arg(long, value_name = "K")]
        accumulate: Option<usize>,
        /// ONNX Runtime intra-op threads for all replicas together (0: one per core).
        #[arg(long, default_value_t = 0, value_name = "N")]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// Loader images/s for the full pipeline vs plain decoding of the same records, per thread
    /// count (1..all cores).
    ///
    /// JSON keys: images_per_sec, images_per_sec_per_core, decode_only_images_per_sec,
    /// ratio_to_decode (for the largest thread count), scaling, rows[...], machine.
    Loader {
        /// Pipeline file.
        pipeline: PathBuf,
        /// Use this dataset instead of the pipeline's.
        #[arg(long, value_name = "NAME")]
        dataset: Option<String>,
        /// Only this thread count (default: 1, 2, ... all cores).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Timed batches per measurement (after one warm-up batch).
        #[arg(long, default_value_t = 20, value_name = "K")]
        batches: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    match &a.what {
        BenchCommand::Train {
            pipeline,
            dataset,
            steps,
            device,
            replicas,
            accumulate,
            threads,
            json,
        } => {
            let d = c.pipeline_data(pipeline, dataset.as_deref())?;
            let (p, name, split) = (&d.pipeline, d.dataset.as_str(), d.train.clone());
            let parallel = ParallelOptions {
                devices: device.replicas(*replicas).map_err(anyhow::Error::msg)?,
                accumulate: accumulate.unwrap_or(p.training.accumulate),
                threads: *threads,
            };
            let r = bench::train_bench(p, split, &parallel, *steps as usize, &CANCEL)?;
            if *json {
                print_json(&r)?;
            } else {
                print_train(&r, name, &parallel);
            }
        }
        BenchCommand::Loader {
            pipeline,
            dataset,
            threads,
            batches,
            json,
        } => {
            let d = c.pipeline_data(pipeline, dataset.as_deref())?;
            let (p, name, split) = (&d.pipeline, d.dataset.as_str(), d.train.clone());
            let counts: Vec<usize> = match threads {
                Some(t) => vec![*t],
                None => (1..=machine().cores).collect(),
            };
            if !json {
                print_machine(&machine());
                println!(
                    "pipeline {} on {name}: {} records, batch {}, {} timed batches after 1 warm-up",
                    p.name,
                    split.len(),
                    p.loader.batch_size,
                    batches
                );
                println!(
                    "{:>8} {:>14} {:>14} {:>18} {:>8}",
                    "threads", "images/s", "per core", "decode-only img/s", "ratio"
                );
            }
            let report = bench::loader_bench(split, p, name, &counts, *batches, &CANCEL, |r| {
                if !json {
                    print_loader_row(r);
                }
            })?;
            if *json {
                print_json(&report)?;
            } else {
                print_loader_end(&report, &counts);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_machine(m: &Machine) {
    println!("machine: {} ({} cores, {})", m.cpu, m.cores, m.os);
}

fn print_train(r: &TrainBenchReport, dataset: &str, parallel: &ParallelOptions) {
    print_machine(&r.machine);
    let devices: Vec<String> = parallel.devices.iter().map(|d| d.to_string()).collect();
    println!(
        "pipeline {} on {dataset}: network {}, batch {}, {} timed steps, {} replica(s) on {} x {} micro-batch(es)",
        r.pipeline,
        r.config,
        r.batch,
        r.steps,
        r.replicas,
        devices.join(","),
        r.accumulate
    );
    println!("{:<28} {:>12}", "", "images/s");
    println!(
        "{:<28} {:>12.1}",
        "loader + step (training)", r.loop_images_per_sec
    );
    println!("{:<28} {:>12.1}", "step alone", r.step_images_per_sec);
    println!("{:<28} {:>12.1}", "loader alone", r.loader_images_per_sec);
    if let (Some(one), Some(ratio)) = (r.one_replica_step_images_per_sec, r.ratio_to_one_replica) {
        println!("{:<28} {:>12.1}", "one replica, fused step", one);
        println!(
            "split step / one replica: {ratio:.2}x; {:.1}% of the split step sums gradients",
            100.0 * r.reduce_share
        );
    }
    println!(
        "limited by the {}; the loop runs at {:.0}% of it",
        r.limited_by,
        100.0 * r.efficiency
    );
}

fn print_loader_row(r: &LoaderRow) {
    println!(
        "{:>8} {:>14.1} {:>14.1} {:>18.1} {:>8.3}",
        r.threads,
        r.images_per_sec,
        r.images_per_sec_per_core,
        r.decode_only_images_per_sec,
        r.ratio_to_decode
    );
}

fn print_loader_end(r: &LoaderReport, counts: &[usize]) {
    println!(
        "scaling {}->{} threads: {:.2}x; loader buffers {}; peak RSS {}",
        counts[0],
        counts[counts.len() - 1],
        r.scaling,
        bytes(r.loader_buffer_bytes as u64),
        r.peak_rss_bytes
            .map(bytes)
            .unwrap_or_else(|| "unknown".into())
    );
}
