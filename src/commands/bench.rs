//! `vgg bench`: throughput of the training loop and of the loader, each printed beside a
//! baseline measured in the same run (the step alone and the loader alone; plain decoding).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use vgg::bench::{self, LoaderReport, LoaderRow, TrainBenchReport};
use vgg::net::session::{Device, SessionSettings};
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
    /// JSON keys: loop_images_per_sec, step_images_per_sec, loader_images_per_sec, limited_by,
    /// efficiency, batch, steps, config, machine.
    Train {
        /// Pipeline file with a [model] table.
        pipeline: PathBuf,
        /// Use this dataset instead of the pipeline's.
        #[arg(long, value_name = "NAME")]
        dataset: Option<String>,
        /// Timed steps per measurement (after warm-up).
        #[arg(long, default_value_t = 20, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu", value_name = "DEVICE")]
        device: Device,
        /// ONNX Runtime intra-op threads (0: one per core).
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
            threads,
            json,
        } => {
            let d = c.pipeline_data(pipeline, dataset.as_deref())?;
            let (p, name, split) = (&d.pipeline, d.dataset.as_str(), d.train.clone());
            let session = SessionSettings {
                device: *device,
                threads: *threads,
            };
            let r = bench::train_bench(p, split, &session, *steps as usize, &CANCEL)?;
            if *json {
                print_json(&r)?;
            } else {
                print_train(&r, name, &session);
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

fn print_train(r: &TrainBenchReport, dataset: &str, session: &SessionSettings) {
    print_machine(&r.machine);
    println!(
        "pipeline {} on {dataset}: network {}, batch {}, {} timed steps, {}",
        r.pipeline, r.config, r.batch, r.steps, session.device
    );
    println!("{:<28} {:>12}", "", "images/s");
    println!(
        "{:<28} {:>12.1}",
        "loader + step (training)", r.loop_images_per_sec
    );
    println!("{:<28} {:>12.1}", "step alone", r.step_images_per_sec);
    println!("{:<28} {:>12.1}", "loader alone", r.loader_images_per_sec);
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
