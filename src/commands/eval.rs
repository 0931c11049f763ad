//! `vgg eval`: evaluates one or more checkpoints on a prepared split with the paper's test
//! protocols (dense, multi-crop, both; several scales; flips; fusion of networks) and prints a
//! table shaped like the paper's, next to the paper's own figure where it has one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use vgg::config::pipeline::{Pipeline, Scale, VGG_MEAN};
use vgg::data::source::Split;
use vgg::eval::protocol::{
    format_scales, format_table, paper_figure, test_scales, Protocol, ResultRow, TrainScale,
};
use vgg::eval::run::{evaluate, EvalReport, EvalSettings, ImageResult, Network, SAMPLE_SEED};
use vgg::net::accuracy::TopK;
use vgg::net::checkpoint::check_classes;
use vgg::net::session::{Device, SessionSettings};

use super::progress::CANCEL;
use super::{bytes, print_json, Common, SplitArg};

/// Where `vgg eval --help` explains the protocols (after the options, so the struct's doc
/// comment stays the one-line summary).
const LONG_HELP: &str = "\
Each image is rescaled isotropically so its smallest side is Q, for every test scale Q in
--scales, and the mean RGB is subtracted. Protocols (--protocol):
  dense             the whole image through the fully convolutional network, class scores
                    averaged spatially (the paper's Tables 3 and 4)
  multi-crop        a --grid x --grid grid of crops of the network's input size (Table 5)
  dense+multi-crop  both posteriors averaged with equal weight (Table 5)
  centre            one centre crop per scale (torchvision's protocol; not in the paper)
Unless --no-flip every view is averaged with its horizontal mirror. Posteriors are averaged
over scales and, with several --checkpoint, over networks (fusion, Table 6).

TARGET is a pipeline file (its dataset, its eval mean, and its training scale S, which sets
the default test scales and the table's \"train (S)\" column) or a dataset name from the
registry (the paper's mean RGB; S = 256 unless --train-scale). The split must be prepared
(`vgg prepare NAME`), and the networks must have the dataset's number of classes.

Default test scales follow the paper: Q = S for a fixed S, Q = (Smin + Smax) / 2 for scale
jitter; with --multi-scale {S - 32, S, S + 32}, or {Smin, (Smin + Smax) / 2, Smax}.

The table has one row per network and, with several, the fusion row (e.g. D+E); rows the
paper reports (1000-class networks at 224 pixels) end with the paper's top-1 / top-5 error.

JSON keys: top1_error, top5_error, images (fused), per_network[{name, path, config,
top1_error, top5_error, images}], rows (the table, each with `paper`), protocol, scales,
flip, grid, train_scale, dataset, split, limit, sample_seed, seconds, images_per_sec,
peak_rss_bytes,
predictions[{index, label, top5[{class, posterior}], top1_correct, top5_correct}] (the
fused posterior, in record order). Errors are fractions in 0..1.

--limit N evaluates a fixed sample of N images spread over all classes (the trainer's
validation images for `val_limit = N`), not the first N records, which are sorted by class.
A checkpoint that stores its class list is refused on a split with other classes (naming the
first difference) unless --allow-class-mismatch; one with a non-finite parameter is refused.

Examples:
  vgg eval pipelines/vgg-jitter-256-512.toml --checkpoint runs/vgg-d/best.safetensors --multi-scale
  vgg eval imagenet --checkpoint vgg16.safetensors --protocol centre --scales 256
  vgg eval imagenet --checkpoint d.safetensors --checkpoint e.safetensors \\
      --protocol dense+multi-crop --scales 256,384,512 --train-scale '[256;512]' --device cuda
  vgg eval pipelines/demo.toml --checkpoint runs/demo/best.safetensors --limit 500 --json";

/// Evaluate checkpoints with the paper's test protocols (dense, multi-crop, scales, fusion).
#[derive(clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// Pipeline file (pipelines/*.toml) or dataset name from the registry.
    target: String,
    /// Checkpoint to evaluate (safetensors, from `vgg train` or `vgg weights`); repeat the
    /// option to fuse several networks (their posteriors averaged with equal weight).
    #[arg(long = "checkpoint", value_name = "FILE", required = true)]
    checkpoints: Vec<PathBuf>,
    /// dense, multi-crop, dense+multi-crop or centre.
    #[arg(long, default_value = "dense", value_name = "PROTOCOL")]
    protocol: Protocol,
    /// Test scales Q, comma-separated, e.g. 256,384,512 (default: the paper's rule for the
    /// training scale S; see --help). Each must be at least the network's input size.
    #[arg(long, value_name = "Q,...", value_delimiter = ',', num_args = 1.., value_parser = test_scale)]
    scales: Option<Vec<u32>>,
    /// Default to the paper's three test scales for S instead of one.
    #[arg(long, conflicts_with = "scales")]
    multi_scale: bool,
    /// The training scale S for the table and the default test scales: `256` or `[256;512]`
    /// (default: the pipeline's; 256 for a dataset name).
    #[arg(long, value_name = "S")]
    train_scale: Option<TrainScale>,
    /// Do not add the horizontal mirror of every view.
    #[arg(long)]
    no_flip: bool,
    /// Crops per side of the multi-crop grid (the paper: 5, i.e. 25 crops, 50 with flips).
    #[arg(long, default_value_t = 5, value_name = "N")]
    grid: u32,
    /// Which prepared split to evaluate.
    #[arg(long, default_value = "val", value_name = "SPLIT", value_parser = one_split())]
    split: SplitArg,
    /// Use this dataset instead of the pipeline's.
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// Evaluate a fixed sample of N records spread over all classes (each class's records in
    /// a seeded order, the classes taking turns), not the first N; the same images as the
    /// trainer's validation with `val_limit = N`. At least 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// The seed of the --limit sample (default: the trainer's validation sample).
    #[arg(long, value_name = "SEED", default_value_t = SAMPLE_SEED)]
    sample_seed: u64,
    /// Evaluate a checkpoint whose stored class list differs from the split's (a deliberate
    /// remap: labels are compared by index). Without it such a checkpoint is refused.
    #[arg(long)]
    allow_class_mismatch: bool,
    /// cpu, cuda (device 0) or cuda:N. CUDA needs the GPU build of ONNX Runtime
    /// (docs/onnxruntime.md).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: Device,
    /// ONNX Runtime intra-op threads on the CPU (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Most inputs per ONNX Runtime run: whole images (with their mirrors) for dense, crops
    /// otherwise. Lower it if memory runs short at large scales.
    #[arg(long, default_value_t = 16, value_name = "N")]
    batch: usize,
    /// Print the result as one JSON object (with per-image predictions).
    #[arg(long)]
    json: bool,
}

/// The largest test scale `--scales` accepts (8x the paper's largest).
const MAX_TEST_SCALE: u32 = 4096;

/// One test scale of `--scales`: a positive whole number (spaces around it allowed).
fn test_scale(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("a test scale must be positive, not 0".into()),
        Ok(q) if q > MAX_TEST_SCALE => Err(format!(
            "a test scale of {q} is beyond {MAX_TEST_SCALE} (the paper tests at 224-512; one image at \
             Q = {q} needs about {} MiB per feature map channel)",
            (q as u64 * q as u64 * 4) >> 20
        )),
        Ok(q) => Ok(q),
        Err(_) => Err(format!("`{}` is not a whole number of pixels", s.trim())),
    }
}

/// `--split`: one split, train or val (not `all`).
fn one_split() -> impl clap::builder::TypedValueParser<Value = SplitArg> {
    use clap::builder::TypedValueParser;
    use clap::ValueEnum;
    clap::builder::PossibleValuesParser::new(["train", "val"])
        .map(|s| SplitArg::from_str(&s, false).expect("a possible value"))
}

/// What the target resolved to.
struct Target {
    dataset: String,
    mean: [f32; 3],
    train: TrainScale,
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    let protocol = a.protocol;
    anyhow::ensure!(a.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(a.grid > 0, "--grid must be at least 1");
    if let Some(s) = &a.scales {
        let mut seen = s.clone();
        seen.sort_unstable();
        seen.dedup();
        anyhow::ensure!(
            seen.len() == s.len(),
            "--scales {}: a scale is listed twice (it would count twice in the average)",
            s.iter()
                .map(|q| q.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    let target = resolve(a)?;
    let scales = match &a.scales {
        Some(s) => s.clone(),
        None => {
            if let (true, TrainScale::Fixed(s)) = (a.multi_scale, target.train) {
                anyhow::ensure!(
                    s > 32,
                    "--multi-scale needs S > 32 (S - 32 is a test scale); give --scales"
                );
            }
            test_scales(target.train, a.multi_scale)
        }
    };
    let split = a.split.one();
    let name = &target.dataset;
    let data = c.open_split(name, split)?;

    let wnids: Vec<String> = data
        .manifest
        .classes
        .iter()
        .map(|c| c.wnid.clone())
        .collect();
    let mut nets = Vec::with_capacity(a.checkpoints.len());
    for path in &a.checkpoints {
        let (net, info) = Network::from_checkpoint_with_info(path)?;
        let shown = format!("{}", path.display());
        let data_name = format!("{name}/{split}");
        match check_classes(&shown, info.classes.as_deref(), &data_name, &wnids) {
            Ok(()) => {}
            Err(e) if a.allow_class_mismatch => {
                eprintln!("note: {e}; evaluating anyway (--allow-class-mismatch)")
            }
            Err(e) => anyhow::bail!(
                "{e}; --allow-class-mismatch evaluates it anyway, comparing labels by index"
            ),
        }
        if !a.json {
            for note in info.notes(path) {
                eprintln!("note: {note}");
            }
        }
        nets.push(net);
    }
    // Networks named after their file stem: make equal stems (runs/a/best, runs/b/best)
    // distinguishable by their path.
    let mut stems: HashMap<String, usize> = HashMap::new();
    for n in &nets {
        *stems.entry(n.name.clone()).or_default() += 1;
    }
    for (n, path) in nets.iter_mut().zip(&a.checkpoints) {
        if stems[&n.name] > 1 {
            n.name = path.display().to_string();
        }
    }

    let settings = EvalSettings {
        protocol,
        scales: scales.clone(),
        flip: !a.no_flip,
        grid: a.grid,
        mean: target.mean,
        limit: a.limit,
        sample_seed: a.sample_seed,
        session: SessionSettings {
            device: a.device,
            threads: a.threads,
        },
        batch: a.batch,
    };
    let report = evaluate(&data, &nets, &settings, &c.bars(a.json), &CANCEL)?;

    let rows = table_rows(&nets, &report, target.train, &scales, protocol);
    if a.json {
        print_json(&json(a, &target, split, &nets, &report, &rows, &settings))?;
        return Ok(ExitCode::SUCCESS);
    }
    let sample = match a.limit {
        Some(n) if n < data.len() => format!(
            " (a fixed sample spread over the classes, seed {}, of {})",
            a.sample_seed,
            data.len()
        ),
        _ => String::new(),
    };
    println!(
        "{} images{sample} of {name}/{split}; protocol {protocol}, test scales {}, {}{}",
        report.fused.images,
        format_scales(&scales),
        if settings.flip {
            "with flips"
        } else {
            "no flips"
        },
        if matches!(protocol, Protocol::MultiCrop | Protocol::DenseMultiCrop) {
            format!(", {0}x{0} crop grid", a.grid)
        } else {
            String::new()
        }
    );
    for (i, (n, path)) in nets.iter().zip(&a.checkpoints).enumerate() {
        let path = path.display().to_string();
        let named = if n.name == path {
            String::new()
        } else {
            format!(" ({})", n.name)
        };
        println!(
            "network {}{named}: {}, {} classes, input {}, from {path}",
            i + 1,
            n.config.name,
            n.config.classes,
            n.config.input,
        );
    }
    println!();
    print!("{}", with_paper_figures(&format_table(&rows), &rows, &nets));
    println!();
    println!(
        "{:.1} images/s ({:.1} s); peak RSS {}",
        report.images_per_sec,
        report.seconds,
        report
            .peak_rss_bytes
            .map(bytes)
            .unwrap_or_else(|| "unknown".into())
    );
    Ok(ExitCode::SUCCESS)
}

/// The dataset, mean and training scale the target implies, with the options applied.
fn resolve(a: &Args) -> Result<Target> {
    let path = Path::new(&a.target);
    let mut t = if path.is_file() || a.target.ends_with(".toml") {
        let p = Pipeline::load(path)?;
        Target {
            dataset: super::pipeline_dataset(&p, a.dataset.as_deref())?,
            mean: p.eval.mean,
            train: match p.train.scale {
                Scale::Fixed(s) => TrainScale::Fixed(s),
                Scale::Jitter { min, max } => TrainScale::Jitter(min, max),
            },
        }
    } else {
        Target {
            dataset: a.target.clone(),
            mean: VGG_MEAN,
            train: TrainScale::Fixed(256),
        }
    };
    if let Some(d) = &a.dataset {
        t.dataset = d.clone();
    }
    if let Some(s) = a.train_scale {
        t.train = s;
    }
    Ok(t)
}

/// One row per network and, with several, the fusion row (`A+D`).
fn table_rows(
    nets: &[Network],
    report: &EvalReport,
    train: TrainScale,
    scales: &[u32],
    protocol: Protocol,
) -> Vec<ResultRow> {
    let mut rows: Vec<ResultRow> = nets
        .iter()
        .zip(&report.per_network)
        .map(|(n, (_, topk))| ResultRow::new(n.config.name.clone(), train, scales, protocol, topk))
        .collect();
    if nets.len() > 1 {
        let names: Vec<&str> = nets.iter().map(|n| n.config.name.as_str()).collect();
        rows.push(ResultRow::new(
            names.join("+"),
            train,
            scales,
            protocol,
            &report.fused,
        ));
    }
    rows
}

/// The paper's `(top-1 %, top-5 %)` for a row, when it has one. Only for networks with the
/// paper's 1000-class head at 224 pixels: a 10-class "A" is not the paper's A.
fn paper(row: &ResultRow, nets: &[Network]) -> Option<(f64, f64)> {
    let paper_like = nets
        .iter()
        .all(|n| n.config.classes == 1000 && n.config.input == 224);
    if !paper_like {
        return None;
    }
    let protocol: Protocol = row.protocol.parse().ok()?;
    paper_figure(&row.config, &row.train_scale, &row.test_scales, protocol)
}

/// The table with `paper: top-1 / top-5` after each row the paper reports.
fn with_paper_figures(table: &str, rows: &[ResultRow], nets: &[Network]) -> String {
    let mut out = String::new();
    // Header and rule, then one line per row.
    for (i, line) in table.lines().enumerate() {
        out.push_str(line);
        if let Some(row) = i.checked_sub(2).and_then(|r| rows.get(r)) {
            if let Some((t1, t5)) = paper(row, nets) {
                out.push_str(&format!("  paper: {t1:.1} / {t5:.1}"));
            }
        }
        out.push('\n');
    }
    out
}

/// Top-1 / top-5 figures of one count, as they appear in the JSON output.
#[derive(Serialize)]
struct Errors {
    top1_error: f64,
    top5_error: f64,
    images: u64,
    top1_correct: u64,
    top5_correct: u64,
}

impl From<&TopK> for Errors {
    fn from(t: &TopK) -> Self {
        Errors {
            top1_error: t.top1_error(),
            top5_error: t.top5_error(),
            images: t.images,
            top1_correct: t.top1_correct,
            top5_correct: t.top5_correct,
        }
    }
}

#[derive(Serialize)]
struct NetworkJson {
    #[serde(flatten)]
    errors: Errors,
    name: String,
    path: String,
    config: String,
    classes: u32,
    input: u32,
}

/// The paper's figure for a row, as fractions.
#[derive(Serialize)]
struct PaperJson {
    top1_error: f64,
    top5_error: f64,
}

#[derive(Serialize)]
struct RowJson<'a> {
    #[serde(flatten)]
    row: &'a ResultRow,
    paper: Option<PaperJson>,
}

#[derive(Serialize)]
struct ClassJson {
    class: u32,
    posterior: f32,
}

#[derive(Serialize)]
struct PredictionJson {
    index: u64,
    label: i64,
    top5: Vec<ClassJson>,
    top1_correct: bool,
    top5_correct: bool,
}

impl From<&ImageResult> for PredictionJson {
    fn from(p: &ImageResult) -> Self {
        PredictionJson {
            index: p.index,
            label: p.label,
            top5: p
                .top5
                .iter()
                .map(|&(class, posterior)| ClassJson { class, posterior })
                .collect(),
            top1_correct: p.top1_correct,
            top5_correct: p.top5_correct,
        }
    }
}

/// `vgg eval --json` (the keys are listed in the command's long help).
#[derive(Serialize)]
struct EvalJson<'a> {
    #[serde(flatten)]
    fused: Errors,
    per_network: Vec<NetworkJson>,
    rows: Vec<RowJson<'a>>,
    protocol: &'static str,
    scales: &'a [u32],
    flip: bool,
    grid: u32,
    train_scale: String,
    mean: [f32; 3],
    dataset: &'a str,
    split: &'static str,
    limit: Option<u64>,
    sample_seed: Option<u64>,
    device: String,
    batch: usize,
    seconds: f64,
    images_per_sec: f64,
    peak_rss_bytes: Option<u64>,
    predictions: Vec<PredictionJson>,
}

fn json<'a>(
    a: &Args,
    target: &'a Target,
    split: Split,
    nets: &[Network],
    report: &EvalReport,
    rows: &'a [ResultRow],
    s: &'a EvalSettings,
) -> EvalJson<'a> {
    EvalJson {
        fused: (&report.fused).into(),
        per_network: nets
            .iter()
            .zip(&a.checkpoints)
            .zip(&report.per_network)
            .map(|((n, path), (name, topk))| NetworkJson {
                errors: topk.into(),
                name: name.clone(),
                path: path.display().to_string(),
                config: n.config.name.clone(),
                classes: n.config.classes,
                input: n.config.input,
            })
            .collect(),
        rows: rows
            .iter()
            .map(|r| RowJson {
                row: r,
                paper: paper(r, nets).map(|(t1, t5)| PaperJson {
                    top1_error: t1 / 100.0,
                    top5_error: t5 / 100.0,
                }),
            })
            .collect(),
        protocol: s.protocol.name(),
        scales: &s.scales,
        flip: s.flip,
        grid: s.grid,
        train_scale: target.train.to_string(),
        mean: s.mean,
        dataset: &target.dataset,
        split: split.name(),
        limit: s.limit,
        sample_seed: s.limit.map(|_| s.sample_seed),
        device: s.session.device.to_string(),
        batch: s.batch,
        seconds: report.seconds,
        images_per_sec: report.images_per_sec,
        peak_rss_bytes: report.peak_rss_bytes,
        predictions: report.images.iter().map(PredictionJson::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg::config::model::VggConfig;

    fn net(config: &str, classes: u32) -> Network {
        let mut config = VggConfig::paper(config).unwrap();
        config.classes = classes;
        Network {
            name: config.name.clone(),
            config,
            params: Vec::new(),
        }
    }

    fn rows(nets: &[Network]) -> Vec<ResultRow> {
        let report = EvalReport {
            fused: TopK::default(),
            per_network: nets
                .iter()
                .map(|n| (n.name.clone(), TopK::default()))
                .collect(),
            images: Vec::new(),
            seconds: 0.0,
            images_per_sec: 0.0,
            peak_rss_bytes: None,
        };
        table_rows(
            nets,
            &report,
            TrainScale::Jitter(256, 512),
            &[256, 384, 512],
            Protocol::DenseMultiCrop,
        )
    }

    #[test]
    fn paper_figures_follow_their_rows_for_paper_networks_only() {
        let nets = [net("D", 1000), net("E", 1000)];
        let r = rows(&nets);
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].config, "D+E");
        let table = with_paper_figures(&format_table(&r), &r, &nets);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(!lines[0].contains("paper"), "{table}");
        assert!(lines[2].ends_with("paper: 24.4 / 7.2"), "{table}");
        assert!(lines[3].ends_with("paper: 24.4 / 7.1"), "{table}");
        assert!(lines[4].ends_with("paper: 23.7 / 6.8"), "{table}");

        // A 10-class "D" is not the paper's D.
        let nets = [net("D", 10)];
        let r = rows(&nets);
        assert_eq!(r.len(), 1);
        let table = with_paper_figures(&format_table(&r), &r, &nets);
        assert!(!table.contains("paper"), "{table}");
    }
}
