//! `vgg bench`: throughput of the training loop and of the loader, each printed beside a
//! baseline measured in the same run (the step alone and the loader alone; plain decoding).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use vgg::bench::step::{step_bench, Peer, StepBenchOptions, StepBenchReport};
use vgg::bench::{self, LoaderReport, LoaderRow, TrainBenchReport};
use vgg::config::model::VggConfig;
use vgg::net::session::Devices;
use vgg::train::parallel::{ParallelOptions, Replicas};
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
    /// With several replicas (what `vgg train` picks, or --replicas) or --accumulate, the
    /// step is the data-parallel one, timed beside the fused step of one replica (same run,
    /// same batch) and with the share of its time spent summing gradients.
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
        /// Data-parallel replicas, a count or auto (as for `vgg train`).
        #[arg(long, default_value = "auto", value_name = "N|auto")]
        replicas: Replicas,
        /// Micro-batches per replica and step (default: the pipeline's [training] accumulate).
        #[arg(long, value_name = "K")]
        accumulate: Option<usize>,
        /// ONNX Runtime intra-op threads for all replicas together (0: one per core).
        #[arg(long, default_value_t = 0, value_name = "N")]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// The training step alone, as the trainer runs it (inputs and outputs bound, nothing
    /// copied back), on a random batch, and with --peer the same step in PyTorch in the same
    /// run: ms/step of both, their ratio, and each one's forward/backward/update split.
    ///
    /// The network is a row of the paper's Table 1 at a width multiplier (the default is the
    /// demo network of pipelines/demo.toml). VGG-16 at full size: --config D --width 1
    /// --input 224 --classes 1000 --batch 4. The peer is benches/peers/torch_train_step.py,
    /// run with --python (it needs torch; without it the figures of vgg alone are printed,
    /// with how to install it, and the exit status is 2).
    ///
    /// JSON keys: vgg_ms_per_step, peer_ms_per_step, ratio, phases, peer_phases, peer_error,
    /// rows[threads, vgg{ms_per_step, images_per_sec, phases, top_ops, ...}, peer{...}, ratio],
    /// network, parameters, batch, steps, rounds, machine.
    TrainStep {
        /// A row of the paper's Table 1: A, A-LRN, B, C, D or E.
        #[arg(long, default_value = "A", value_name = "NAME")]
        config: String,
        /// Multiplies every layer's width.
        #[arg(long, default_value_t = 0.125, value_name = "W")]
        width: f64,
        /// Input side in pixels.
        #[arg(long, default_value_t = 64, value_name = "S")]
        input: u32,
        #[arg(long, default_value_t = 10, value_name = "C")]
        classes: u32,
        #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        batch: u64,
        /// Intra-op thread counts, one row each (e.g. 1,2).
        #[arg(long, default_value = "1", value_name = "LIST", value_delimiter = ',')]
        threads: Vec<usize>,
        /// Timed steps per measurement (after 3 warm-up steps); medians are reported.
        #[arg(long, default_value_t = 20, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// Measurements of each side per thread count, alternating vgg and the peer, so load
        /// from elsewhere on a shared machine hits both alike.
        #[arg(long, default_value_t = 1, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
        rounds: u64,
        /// Time the data-parallel step of N CPU replicas (as `vgg train --replicas N`), each
        /// on its share of the batch and of the threads; the phases stay the fused step's.
        /// auto: what `vgg train` picks (two for networks up to 16 M parameters whose batch
        /// splits into two); 1: the fused step.
        #[arg(long, default_value = "auto", value_name = "N|auto")]
        replicas: Replicas,
        /// Profiled steps for the phase split (0: no profile).
        #[arg(long, default_value_t = 5, value_name = "K")]
        profile_steps: usize,
        /// Also run the PyTorch peer and report the ratio.
        #[arg(long)]
        peer: bool,
        /// The Python that runs the peer (one with torch installed).
        #[arg(long, default_value = "python3", value_name = "PATH")]
        python: PathBuf,
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
            let accumulate = accumulate.unwrap_or(p.training.accumulate);
            let parallel = ParallelOptions {
                devices: super::replica_devices(device, *replicas, p, accumulate, 1)?,
                accumulate,
                threads: *threads,
            };
            let r = bench::train_bench(p, split, &parallel, *steps as usize, &CANCEL)?;
            if *json {
                print_json(&r)?;
            } else {
                print_train(&r, name, &parallel);
            }
        }
        BenchCommand::TrainStep {
            config,
            width,
            input,
            classes,
            batch,
            threads,
            steps,
            rounds,
            replicas,
            profile_steps,
            peer,
            python,
            json,
        } => {
            if threads.is_empty() || threads.contains(&0) {
                anyhow::bail!("--threads: give one or more thread counts of at least 1");
            }
            let mut t = toml::Table::new();
            t.insert("config".into(), config.clone().into());
            t.insert("width".into(), (*width).into());
            t.insert("classes".into(), i64::from(*classes).into());
            t.insert("input".into(), i64::from(*input).into());
            let network = VggConfig::from_table(&t)?;
            let o = StepBenchOptions {
                config: network,
                table_row: config.clone(),
                width: *width,
                batch: *batch as usize,
                threads: threads.clone(),
                replicas: *replicas,
                steps: *steps as usize,
                profile_steps: *profile_steps,
                rounds: *rounds as usize,
                peer: peer.then(|| Peer {
                    python: python.clone(),
                    script: Peer::default_script(),
                }),
            };
            let r = step_bench(&o, &CANCEL, |line| {
                if !json {
                    eprintln!("  {line}");
                }
            })?;
            if *json {
                print_json(&r)?;
            } else {
                print_step(&r);
            }
            if let Some(e) = &r.peer_error {
                eprintln!("the peer did not run: {e}");
                return Ok(ExitCode::from(2));
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

fn print_step(r: &StepBenchReport) {
    print_machine(&r.machine);
    println!(
        "network {} ({:.2} M parameters, {:.3} GFLOP/image forward), batch {}, {} timed steps x {} round(s)",
        r.network,
        r.parameters as f64 / 1e6,
        r.gflops_per_image_forward,
        r.batch,
        r.steps,
        r.rounds
    );
    println!(
        "{:>7} {:>8} {:>12} {:>12} {:>8}   phases fwd / bwd / update (+other), ms",
        "threads", "replicas", "vgg ms/step", "peer ms/step", "ratio"
    );
    for row in &r.rows {
        let p = &row.vgg.phases;
        let (peer, ratio) = match (&row.peer, row.ratio) {
            (Some(peer), Some(ratio)) => {
                (format!("{:.1}", peer.ms_per_step), format!("{ratio:.2}"))
            }
            _ => ("-".into(), "-".into()),
        };
        let peer_phases = row.peer.as_ref().map_or(String::new(), |q| {
            let q = &q.phases;
            format!(
                "; peer {:.1} / {:.1} / {:.1}",
                q.forward_ms, q.backward_ms, q.update_ms
            )
        });
        // The phases are the fused step's profile (none with --profile-steps 0).
        let phases = if row.vgg.profiled_run_ms > 0.0 {
            format!(
                "{}{:.1} / {:.1} / {:.1} (+{:.1})",
                if row.replicas > 1 { "fused " } else { "" },
                p.forward_ms,
                p.backward_ms,
                p.update_ms,
                p.other_ms
            )
        } else {
            "-".into()
        };
        println!(
            "{:>7} {:>8} {:>12.1} {:>12} {:>8}   vgg {phases}{peer_phases}",
            row.threads, row.replicas, row.vgg.ms_per_step, peer, ratio,
        );
    }
    if let Some(row) = r.rows.first() {
        let ops: Vec<String> = row
            .vgg
            .top_ops
            .iter()
            .take(8)
            .map(|o| format!("{} {:.1}", o.op, o.ms))
            .collect();
        if !ops.is_empty() {
            println!(
                "vgg's op types at {} thread(s), ms: {}",
                row.threads,
                ops.join(", ")
            );
        }
    }
    println!(
        "ratio = vgg / peer (below 1: vgg is faster); phases are node time from ONNX Runtime's \
         profiler (vgg) and wall time (PyTorch)"
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
