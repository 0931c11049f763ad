//! The `vgg` command: a thin front over the library. It parses arguments, resolves the dataset
//! registry, draws progress bars, prints tables or JSON, and decides exit codes; all the work is
//! in the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

mod commands;

use vgg::bench;
use vgg::config::pipeline::{OutputKind, Pipeline};
use vgg::config::registry::{self, Registry, SourceKind};
use vgg::data::loader::{Loader, LoaderOptions, Mode};
use vgg::data::prepare::{self, Part, PrepareOptions, Progress};
use vgg::data::source::{synthetic, Split};
use vgg::data::store;
use vgg::report::contact_sheet::{self, SheetOptions, Tile};

#[derive(Parser)]
#[command(
    name = "vgg",
    version,
    about = "Reproduce and train the VGG networks (Simonyan & Zisserman, ICLR 2015)",
    long_about = "Reproduce and train the VGG networks (Simonyan & Zisserman, ICLR 2015).\n\n\
        Data flow: datasets.toml -> `vgg prepare` -> shards + manifest -> `vgg inspect` / `vgg verify`.\n\
        Datasets are declared by name in datasets.toml (see --datasets); the embedded default is\n\
        `synthetic-shapes`, a generated stand-in for ImageNet that needs no download.",
    after_help = "Examples:\n  vgg prepare synthetic-shapes\n  vgg prepare imagenet --split train --part 3/16 --threads 8\n  vgg prepare imagenet --split train --merge\n  vgg inspect shards/synthetic-shapes --json\n  vgg verify shards/imagenet/val"
)]
struct Cli {
    /// Dataset registry file.
    #[arg(long, global = true, default_value = registry::DEFAULT_PATH, value_name = "FILE")]
    datasets: PathBuf,
    /// More log output (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Val,
    All,
}

#[derive(Subcommand)]
enum Command {
    /// Store a dataset's images into memory-mapped shards with a manifest.
    ///
    /// Decode-checks every file, converts grayscale/CMYK/PNG to RGB, downscales images whose
    /// shortest side exceeds the store cap, keeps source JPEG bytes untouched when they are
    /// already within it, and writes shards of about `shard_size` bytes. Files that cannot be
    /// used (truncated, corrupt, empty, not images, decompression bombs) are skipped and listed
    /// in skipped.tsv beside the manifest. Re-running after an interruption keeps finished
    /// shards and redoes the rest.
    #[command(
        after_help = "Splitting over machines: run `--part I/N` for I = 0..N-1 (e.g. a Slurm array or an\nindexed Kubernetes job) into the same shard directory, then once `--merge`. The merged result\nis byte-identical to a single-machine run."
    )]
    Prepare {
        /// Dataset name from the registry.
        dataset: String,
        #[arg(long, value_enum, default_value = "all")]
        split: SplitArg,
        /// Prepare only part I of N (0-based), a deterministic disjoint slice of the shards.
        #[arg(long, value_name = "I/N")]
        part: Option<Part>,
        /// Worker threads (default: all cores).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Only assemble the manifest from the shards the parts wrote.
        #[arg(long, conflicts_with = "part")]
        merge: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate a synthetic dataset's image files (done by `prepare` when missing).
    Generate {
        /// Dataset name (its source must be "synthetic").
        dataset: String,
        #[arg(long)]
        json: bool,
    },
    /// Show what a prepared dataset holds: counts per class, sizes, encodings, shards.
    ///
    /// JSON keys: records, classes, shards, bytes, skipped, splits[...].
    Inspect {
        /// A shard directory (a split's, or a dataset's with one folder per split), or a
        /// dataset name from the registry.
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum and that every record decodes; exits 1 naming shard and record.
    Verify {
        /// A shard directory or a dataset name.
        target: String,
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// List the datasets of the registry.
    Datasets {
        #[arg(long)]
        json: bool,
    },
    /// Write a contact sheet of augmented training samples (what the network sees).
    ///
    /// Samples are the first COUNT of epoch E in the pipeline's order, augmented exactly as in
    /// training (same seed, same per-sample randomness), then de-normalised back to viewable
    /// colour (the PCA lighting shift stays visible) and captioned with their class names.
    Preview {
        /// Pipeline file (pipelines/*.toml).
        pipeline: PathBuf,
        /// Output PNG file.
        #[arg(long, value_name = "FILE.png")]
        out: PathBuf,
        #[arg(long, default_value_t = 32, value_name = "N")]
        count: usize,
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        #[arg(long, default_value_t = 0, value_name = "E")]
        epoch: u64,
        /// Use this dataset instead of the pipeline's.
        #[arg(long, value_name = "NAME")]
        dataset: Option<String>,
        #[arg(long, default_value_t = 8)]
        columns: u32,
    },
    /// The VGG configurations: layer tables with shapes, parameters and FLOPs.
    Model {
        #[command(subcommand)]
        what: ModelCommand,
    },
    /// Throughput benchmarks, each with its baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    Train(commands::train::Args),
    Eval(commands::eval::Args),
    Weights(commands::weights::Args),
    /// Show the ONNX Runtime library in use: path, version, execution providers.
    Runtime {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// A layer table (output shape, parameters, FLOPs per layer) and totals.
    ///
    /// CONFIG is a row of the paper's Table 1 (A, A-LRN, B, C, D, E) or a pipeline file whose
    /// [model] table defines the network. JSON keys: parameters, flops, macs, weight_layers,
    /// layers[...], config.
    Summary {
        /// A, A-LRN, B, C, D, E, or a pipeline file.
        config: String,
        /// Number of classes (default: 1000, or the pipeline's).
        #[arg(long, value_name = "N")]
        classes: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    Export(commands::export::Args),
}

#[derive(Subcommand)]
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
        #[arg(long, default_value_t = 20, value_name = "K")]
        steps: usize,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu", value_name = "DEVICE")]
        device: String,
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

/// Set by Ctrl-C; long commands poll it and stop cleanly.
pub static CANCEL: std::sync::LazyLock<Arc<AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicBool::new(false)));

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let _ = ctrlc::set_handler(|| {
        if CANCEL.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting now");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing cleanly (press Ctrl-C again to exit at once)");
    });
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            let interrupted = matches!(
                e.downcast_ref::<prepare::PrepareError>(),
                Some(prepare::PrepareError::Interrupted { .. })
            );
            // 130: the shell's code for "ended by SIGINT", so scripts can tell an interruption.
            if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, each cause left out when the message already says it (library
/// errors carry their reason in their own message for callers that print only that).
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Prepare {
            dataset,
            split,
            part,
            threads,
            merge,
            json,
        } => {
            let reg = Registry::load(&cli.datasets)?;
            let spec = reg.get(dataset)?;
            let opts = PrepareOptions {
                splits: match split {
                    SplitArg::Train => vec![Split::Train],
                    SplitArg::Val => vec![Split::Val],
                    SplitArg::All => vec![],
                },
                part: *part,
                threads: *threads,
                merge: *merge,
            };
            let bars = Bars::new(cli.quiet || *json);
            let reports = prepare::prepare(spec, &opts, &bars, &CANCEL)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    print_prepare_report(r);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate { dataset, json } => {
            let reg = Registry::load(&cli.datasets)?;
            let spec = reg.get(dataset)?;
            if spec.source != SourceKind::Synthetic {
                bail!(
                    "dataset `{dataset}` has source `{}`; only synthetic datasets are generated",
                    spec.source
                );
            }
            let s = spec.synthetic.clone().unwrap_or_default();
            let summary = synthetic::generate(&s, &spec.root)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else if summary.reused {
                println!(
                    "{}: already generated ({} images)",
                    summary.root.display(),
                    summary.images
                );
            } else {
                println!(
                    "{}: generated {} images, {}",
                    summary.root.display(),
                    summary.images,
                    human_bytes(summary.bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { target, json } => {
            let dir = resolve_target(cli, target)?;
            let report = store::inspect(&dir)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_inspect(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            target,
            threads,
            json,
        } => {
            let dir = resolve_target(cli, target)?;
            let bar = Bars::new(cli.quiet || *json);
            let progress = |done: u64, total: u64| bar.set(done, total);
            let report = store::verify(&dir, *threads, &progress)?;
            bar.clear();
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for f in &report.failures {
                    match (f.record, &f.key) {
                        (Some(i), Some(k)) => {
                            eprintln!("FAIL {} record {i} ({k}): {}", f.shard.display(), f.reason)
                        }
                        (Some(i), None) => {
                            eprintln!("FAIL {} record {i}: {}", f.shard.display(), f.reason)
                        }
                        _ => eprintln!("FAIL {}: {}", f.shard.display(), f.reason),
                    }
                }
                println!(
                    "{}: {} shards, {} records, {}: {}",
                    dir.display(),
                    report.shards,
                    report.records,
                    human_bytes(report.bytes),
                    if report.ok() {
                        "all checksums match and every record decodes".to_string()
                    } else {
                        format!("{} problem(s)", report.failures.len())
                    }
                );
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Datasets { json } => {
            let reg = Registry::load(&cli.datasets)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&reg.datasets)?);
            } else {
                for (name, d) in &reg.datasets {
                    println!(
                        "{name:<24} {:<10} root {}  shards {}",
                        d.source.to_string(),
                        d.root.display(),
                        d.shards.display()
                    );
                    if let Some(desc) = &d.description {
                        println!("{:<24} {desc}", "");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Preview {
            pipeline,
            out,
            count,
            threads,
            epoch,
            dataset,
            columns,
        } => {
            let p = Pipeline::load(pipeline)?;
            let (name, split) = open_train_split(cli, &p, dataset.as_deref())?;
            let mut settings = p.loader.clone();
            settings.batch_size = (*count).max(1);
            settings.drop_last = false;
            settings.output = OutputKind::F32Nchw;
            if let Some(t) = threads {
                settings.threads = *t;
            }
            let classes: Vec<String> = split
                .manifest
                .classes
                .iter()
                .map(|c| c.name.clone())
                .collect();
            let mut loader = Loader::new(
                split,
                LoaderOptions::new(settings, Mode::Train(p.train.clone()), *epoch),
            )?;
            let batch = loader.next().context("the split is empty")??;
            let images = batch.images().expect("f32 output");
            let c = p.train.crop;
            let tiles: Vec<Tile> = (0..batch.len())
                .map(|i| {
                    let chw = images.index_axis(ndarray::Axis(0), i);
                    let label = batch.labels()[i] as usize;
                    Tile {
                        width: c,
                        height: c,
                        rgb: contact_sheet::denormalize_chw(
                            chw.as_slice().expect("contiguous"),
                            c,
                            p.train.mean,
                        ),
                        caption: classes
                            .get(label)
                            .cloned()
                            .unwrap_or_else(|| label.to_string()),
                    }
                })
                .collect();
            let opts = SheetOptions {
                columns: *columns,
                font_scale: if c >= 160 { 2 } else { 1 },
                ..Default::default()
            };
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            contact_sheet::write_png(out, &tiles, &opts)?;
            println!(
                "{}: {} augmented samples of {name} (epoch {epoch}, pipeline {})",
                out.display(),
                tiles.len(),
                p.name
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchCommand::Train {
                    pipeline,
                    dataset,
                    steps,
                    device,
                    threads,
                    json,
                },
        } => {
            let p = Pipeline::load(pipeline)?;
            let (name, split) = open_train_split(cli, &p, dataset.as_deref())?;
            let session = vgg::net::session::SessionSettings {
                device: device.parse().map_err(anyhow::Error::msg)?,
                threads: *threads,
            };
            anyhow::ensure!(*steps > 0, "--steps must be at least 1");
            let r = bench::train_bench(&p, split, &session, *steps)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "machine: {} ({} cores, {})",
                    r.machine.cpu, r.machine.cores, r.machine.os
                );
                println!(
                    "pipeline {} on {name}: network {}, batch {}, {} timed steps, {}",
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchCommand::Loader {
                    pipeline,
                    dataset,
                    threads,
                    batches,
                    json,
                },
        } => {
            let p = Pipeline::load(pipeline)?;
            let (name, split) = open_train_split(cli, &p, dataset.as_deref())?;
            let counts: Vec<usize> = match threads {
                Some(t) => vec![*t],
                None => (1..=bench::machine().cores).collect(),
            };
            if !json {
                let m = bench::machine();
                println!("machine: {} ({} cores, {})", m.cpu, m.cores, m.os);
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
            let report = bench::loader_bench(split, &p, &name, &counts, *batches, |r| {
                if !json {
                    println!(
                        "{:>8} {:>14.1} {:>14.1} {:>18.1} {:>8.3}",
                        r.threads,
                        r.images_per_sec,
                        r.images_per_sec_per_core,
                        r.decode_only_images_per_sec,
                        r.ratio_to_decode
                    );
                }
            })?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "scaling {}->{} threads: {:.2}x; loader buffers {}; peak RSS {}",
                    counts[0],
                    counts[counts.len() - 1],
                    report.scaling,
                    human_bytes(report.loader_buffer_bytes as u64),
                    report
                        .peak_rss_bytes
                        .map(human_bytes)
                        .unwrap_or_else(|| "unknown".into())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Model {
            what: ModelCommand::Export(a),
        } => commands::export::run(&common(cli), a),
        Command::Model {
            what:
                ModelCommand::Summary {
                    config,
                    classes,
                    json,
                },
        } => {
            let (mut c, _) = commands::network(config)?;
            if let Some(n) = classes {
                c.classes = *n;
            }
            let s = c.summary();
            if *json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_model_summary(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(a) => commands::train::run(&common(cli), a),
        Command::Eval(a) => commands::eval::run(&common(cli), a),
        Command::Weights(a) => commands::weights::run(&common(cli), a),
        Command::Runtime { json } => {
            let info = vgg::net::runtime::info()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!(
                    "ONNX Runtime {} from {}",
                    info.version,
                    info.library.display()
                );
                println!("execution providers: {}", info.providers.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn common(cli: &Cli) -> commands::Common {
    commands::Common {
        datasets: cli.datasets.clone(),
        quiet: cli.quiet,
    }
}

/// The prepared train split of the pipeline's dataset (or `dataset`), with the dataset's name.
fn open_train_split(
    cli: &Cli,
    p: &Pipeline,
    dataset: Option<&str>,
) -> Result<(String, Arc<store::PreparedSplit>)> {
    let name = dataset.unwrap_or(&p.dataset).to_string();
    let reg = Registry::load(&cli.datasets)?;
    let spec = reg.get(&name)?;
    let dir = spec.shards.join(Split::Train.name());
    let split = store::PreparedSplit::open(&dir)
        .with_context(|| format!("dataset `{name}` is not prepared (run `vgg prepare {name}`)"))?;
    Ok((name, Arc::new(split)))
}

/// A directory, or a dataset name whose shard directory is meant.
fn resolve_target(cli: &Cli, target: &str) -> Result<PathBuf> {
    let p = Path::new(target);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let reg = Registry::load(&cli.datasets)
        .with_context(|| format!("`{target}` is not a directory, and the registry could not be read to look it up as a dataset"))?;
    Ok(reg.get(target)?.shards.clone())
}

/// Progress bars for prepare and verify.
struct Bars {
    hidden: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn new(hidden: bool) -> Self {
        Bars {
            hidden: hidden || !std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    fn make(&self, prefix: String, total: u64, done: u64) {
        if self.hidden {
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>6} [{bar:32.cyan/blue}] {pos}/{len} {per_sec:>12} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        bar.set_position(done);
        bar.reset_eta();
        *self.bar.lock().unwrap() = Some(bar);
    }

    fn set(&self, done: u64, total: u64) {
        if self.hidden {
            return;
        }
        let mut g = self.bar.lock().unwrap();
        if g.is_none() {
            drop(g);
            self.make("verify".into(), total, 0);
            g = self.bar.lock().unwrap();
        }
        if let Some(b) = g.as_ref() {
            b.set_position(done);
        }
    }

    fn clear(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bars {
    fn start(&self, split: Split, total: u64, done: u64) {
        self.make(split.to_string(), total, done);
    }
    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().unwrap().as_ref() {
            b.inc(n);
        }
    }
    fn finish(&self, _split: Split) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish();
        }
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_prepare_report(r: &prepare::SplitReport) {
    let part = r
        .part
        .map(|p| format!(" (part {}/{})", p.index, p.count))
        .unwrap_or_default();
    println!(
        "{}{part}: {} shards planned, {} written, {} kept from an earlier run; {} source files processed at {:.1} images/s",
        r.split, r.shards_planned, r.shards_written, r.shards_kept, r.processed, r.images_per_second
    );
    match &r.manifest {
        Some(m) => {
            println!(
                "{}: {} records, {} skipped, {}; manifest {}",
                r.split,
                r.records,
                r.skipped,
                human_bytes(r.bytes),
                m.display()
            );
            if r.skipped > 0 {
                println!("{}: skipped files and reasons: {}", r.split, m.with_file_name(vgg::data::manifest::SKIPPED_FILE).display());
            }
        }
        None => println!("{}: other parts still missing; when all parts are done run `vgg prepare DATASET --split {} --merge`", r.split, r.split),
    }
}

fn print_model_summary(s: &vgg::config::model::Summary) {
    let c = &s.config;
    println!(
        "VGG {}: {} weight layers, input {}x{}x{}, {} classes",
        c.name, s.weight_layers, c.in_channels, c.input, c.input, c.classes
    );
    println!(
        "{:<10} {:<28} {:>16} {:>14} {:>10}",
        "layer", "", "output", "parameters", "GFLOPs"
    );
    for l in &s.layers {
        let shape = l
            .output
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<10} {:<28} {:>16} {:>14} {:>10.3}",
            l.name,
            l.detail,
            shape,
            l.parameters,
            2.0 * l.macs as f64 / 1e9
        );
    }
    println!(
        "total: {} parameters ({:.1} M), {:.2} GFLOPs ({:.2} G multiply-adds) per image",
        s.parameters,
        s.parameters as f64 / 1e6,
        s.flops as f64 / 1e9,
        s.macs as f64 / 1e9
    );
}

fn print_inspect(report: &store::InspectReport) {
    for s in &report.splits {
        println!("{} / {}  ({})", s.dataset, s.split, s.dir.display());
        println!(
            "  records {}  skipped {}  shards {}  size {}  encodings {}",
            s.records,
            s.skipped,
            s.shards.len(),
            human_bytes(s.bytes),
            s.encodings
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  shortest side min/mean/max {}/{:.0}/{}  width {:.0} mean  height {:.0} mean  record {} mean",
            s.shortest_side.min, s.shortest_side.mean, s.shortest_side.max, s.width.mean, s.height.mean, human_bytes(s.record_bytes.mean as u64)
        );
        let c = &s.conversions;
        println!(
            "  stored as-is {}  re-encoded {}  resized {}  from grayscale {}  from CMYK {}  from PNG {}",
            c.passthrough, c.reencoded, c.resized, c.grayscale, c.cmyk, c.png
        );
        if !s.skipped_by_reason.is_empty() {
            println!(
                "  skipped by reason: {}",
                s.skipped_by_reason
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!("  classes ({}):", s.classes.len());
        let show = 20;
        let wnid_w = s.classes.iter().map(|c| c.wnid.len()).max().unwrap_or(0);
        let name_w = s
            .classes
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0)
            .min(40);
        for c in s.classes.iter().take(show) {
            println!(
                "    {:>4}  {:<wnid_w$}  {:<name_w$}  {:>8}",
                c.index, c.wnid, c.name, c.records
            );
        }
        if s.classes.len() > show {
            let min = s.classes.iter().map(|c| c.records).min().unwrap_or(0);
            let max = s.classes.iter().map(|c| c.records).max().unwrap_or(0);
            println!(
                "    ... {} more (records per class {min}..{max}; --json for all)",
                s.classes.len() - show
            );
        }
        println!("  shards:");
        for sh in s.shards.iter().take(show) {
            println!(
                "    {:<24} {:>8} records  {:>10}",
                sh.file,
                sh.records,
                human_bytes(sh.bytes)
            );
        }
        if s.shards.len() > show {
            println!("    ... {} more", s.shards.len() - show);
        }
    }
    println!(
        "total: {} records, {} classes, {} shards, {}, {} skipped",
        report.records,
        report.classes,
        report.shards,
        human_bytes(report.bytes),
        report.skipped
    );
}
