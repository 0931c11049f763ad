//! Pipeline files (`pipelines/*.toml`): one experiment recipe, like a row of the paper's tables.
//!
//! A pipeline names the dataset, the model (read by the model and training stages), the training
//! augmentation as an ordered list of stages with their parameters, the evaluation transform,
//! the loader settings, and the optimiser (read by the trainer). It is parsed once, at the edge:
//! unknown keys and impossible values are errors naming the file, line and key, and the shapes
//! are propagated through the stages before any data is read, so a bad recipe fails in
//! milliseconds rather than hours into a run.
//!
//! ```toml
//! name = "vgg-jitter-256-512"
//! dataset = "imagenet"
//!
//! [loader]
//! batch_size = 256
//! seed = 0
//!
//! [[train.stages]]
//! kind = "decode"
//! [[train.stages]]
//! kind = "scale_jitter"      # S uniform in [min, max]; or `s = 256` for a fixed scale
//! min = 256
//! max = 512
//! [[train.stages]]
//! kind = "random_crop"
//! size = 224
//! [[train.stages]]
//! kind = "flip"
//! p = 0.5
//! [[train.stages]]
//! kind = "pca_lighting"
//! std = 0.1
//! [[train.stages]]
//! kind = "normalize"         # mean RGB subtraction; output float32 NCHW
//! mean = [123.68, 116.779, 103.939]
//!
//! [eval]
//! scale = 256                # Q, the smallest side after rescale
//! crop = 224                 # centre crop; omit to keep the whole image
//! ```
//!
//! The stages run as one fused kernel per sample ([`crate::data::augment`]), so their order is
//! fixed: decode, scale, crop, then optional flip and PCA lighting, then normalize.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::model::{ModelError, VggConfig};
use crate::config::training::{self, OptimizerSettings, Schedule, TrainingSettings};

/// The most threads a loader or a session is given: more than any machine has cores.
pub const MAX_THREADS: usize = 1024;

/// Mean RGB of the ImageNet training set on the 0-255 scale (the authors' released Caffe models,
/// given there in BGR order).
pub const VGG_MEAN: [f32; 3] = [123.68, 116.779, 103.939];

/// The training scale S: the shortest side after the isotropic rescale.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Scale {
    /// Single-scale training: S fixed (256 or 384 in the paper).
    Fixed(u32),
    /// Scale jitter: S drawn per image uniformly among the integers `min..=max` ([256, 512]).
    Jitter { min: u32, max: u32 },
}

/// The training augmentation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainTransform {
    pub scale: Scale,
    /// Side of the square random crop (224).
    pub crop: u32,
    /// Probability of a horizontal flip (0.5).
    pub flip_p: f64,
    /// Standard deviation of the PCA lighting coefficients (0.1); 0 disables the lighting.
    pub pca_std: f32,
    /// Mean RGB subtracted from every pixel (0-255 scale).
    pub mean: [f32; 3],
}

/// The evaluation transform.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalTransform {
    /// Test scale Q: the shortest side after the isotropic rescale.
    pub scale: u32,
    /// Side of the centre crop; `None` keeps the whole rescaled image (dense evaluation, variable
    /// size: see [`crate::data::augment::rescale_whole`]).
    pub crop: Option<u32>,
    /// Mean RGB subtracted from every pixel (0-255 scale).
    pub mean: [f32; 3],
}

/// Why a pipeline file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    File(#[from] super::FileError),
    #[error("{path}: {}{key}: {message}", line.map(|l| format!("line {l}, ")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// Where the key is written, when the file sets it (not a default).
        line: Option<usize>,
        key: String,
        message: String,
    },
}

/// Epoch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// A seeded full shuffle of the epoch (datasets that fit in the page cache).
    #[default]
    Shuffle,
    /// Shuffled shard order, records shuffled within windows of `window_shards` shards:
    /// quasi-random, yet reads stay within a few shards at a time (datasets larger than RAM).
    ShardLocal,
    /// Storage order (evaluation).
    Sequential,
}

/// Batch tensor layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// float32 NCHW, normalised on the host.
    #[default]
    F32Nchw,
    /// uint8 NHWC crops plus a float32 [N, 3] per-image shift (PCA shift minus mean) to add on
    /// the device: 4x fewer bytes to move.
    U8Nhwc,
}

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderSettings {
    pub batch_size: usize,
    /// Ready batches queued ahead of the consumer.
    pub prefetch: usize,
    /// Worker threads; 0 means all cores.
    pub threads: usize,
    pub seed: u64,
    pub order: Order,
    /// Shards per shuffle window for `shard_local`.
    pub window_shards: usize,
    pub output: OutputKind,
    /// Drop the last incomplete batch (training) or emit it short (evaluation).
    pub drop_last: bool,
}

impl Default for LoaderSettings {
    fn default() -> Self {
        LoaderSettings {
            batch_size: 256,
            prefetch: 4,
            threads: 0,
            seed: 0,
            order: Order::Shuffle,
            window_shards: 4,
            output: OutputKind::F32Nchw,
            drop_last: true,
        }
    }
}

/// One augmentation stage, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stage {
    /// JPEG (zune-jpeg) or raw records to RGB8.
    Decode,
    /// Fixed training scale S.
    Scale { s: u32 },
    /// S drawn uniformly per image from [min, max].
    ScaleJitter { min: u32, max: u32 },
    /// Uniformly placed square crop.
    RandomCrop { size: u32 },
    /// Horizontal flip with probability p.
    Flip { p: f64 },
    /// AlexNet PCA lighting with alpha ~ N(0, std) on the 0-255 scale.
    PcaLighting { std: f32 },
    /// Mean RGB subtraction (0-255 scale).
    Normalize { mean: [f32; 3] },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StageKind {
    Decode,
    Scale,
    ScaleJitter,
    RandomCrop,
    Flip,
    PcaLighting,
    Normalize,
}

/// A stage as written: one flat table, so that serde keeps the position of every key and an
/// unknown key is reported on its own line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    kind: StageKind,
    s: Option<u32>,
    min: Option<u32>,
    max: Option<u32>,
    size: Option<u32>,
    p: Option<f64>,
    std: Option<f32>,
    mean: Option<[f32; 3]>,
}

impl RawStage {
    /// The stage, or the name of a key that does not belong to its kind.
    fn resolve(&self) -> Result<Stage, String> {
        let allowed: &[&str] = match self.kind {
            StageKind::Decode => &[],
            StageKind::Scale => &["s"],
            StageKind::ScaleJitter => &["min", "max"],
            StageKind::RandomCrop => &["size"],
            StageKind::Flip => &["p"],
            StageKind::PcaLighting => &["std"],
            StageKind::Normalize => &["mean"],
        };
        let present = [
            ("s", self.s.is_some()),
            ("min", self.min.is_some()),
            ("max", self.max.is_some()),
            ("size", self.size.is_some()),
            ("p", self.p.is_some()),
            ("std", self.std.is_some()),
            ("mean", self.mean.is_some()),
        ];
        if let Some((key, _)) = present.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            return Err(format!(
                "`{key}` does not apply to this stage (its keys: {})",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        let need = |v: Option<u32>, key: &str| v.ok_or_else(|| format!("missing `{key}`"));
        Ok(match self.kind {
            StageKind::Decode => Stage::Decode,
            StageKind::Scale => Stage::Scale {
                s: need(self.s, "s")?,
            },
            StageKind::ScaleJitter => Stage::ScaleJitter {
                min: need(self.min, "min")?,
                max: need(self.max, "max")?,
            },
            StageKind::RandomCrop => Stage::RandomCrop {
                size: self.size.unwrap_or_else(default_crop),
            },
            StageKind::Flip => Stage::Flip {
                p: self.p.unwrap_or_else(default_flip),
            },
            StageKind::PcaLighting => Stage::PcaLighting {
                std: self.std.unwrap_or_else(default_pca),
            },
            StageKind::Normalize => Stage::Normalize {
                mean: self.mean.unwrap_or_else(default_mean),
            },
        })
    }
}

fn default_crop() -> u32 {
    224
}
fn default_flip() -> f64 {
    0.5
}
fn default_pca() -> f32 {
    0.1
}
fn default_mean() -> [f32; 3] {
    VGG_MEAN
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainSection {
    stages: Vec<toml::Spanned<RawStage>>,
}

/// The evaluation transform as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Q: smallest side after the isotropic rescale.
    pub scale: u32,
    /// Centre crop size of validation and `--protocol centre`: the training crop (the network's
    /// input); another value is refused.
    pub crop: Option<u32>,
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<String>,
    description: Option<String>,
    /// May be left out when every command is given `--dataset`.
    #[serde(default)]
    dataset: String,
    #[serde(default)]
    loader: LoaderSettings,
    train: TrainSection,
    eval: Option<EvalSection>,
    /// The network: a row of Table 1 and its overrides (see [`crate::config::model`]).
    model: Option<toml::Table>,
    /// The trainer's settings (see [`crate::config::training`]).
    #[serde(default)]
    optimizer: OptimizerSettings,
    #[serde(default)]
    schedule: Schedule,
    #[serde(default)]
    training: TrainingSettings,
}

/// A validated pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    pub path: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// The registry dataset it trains on; empty when the file leaves it to `--dataset`.
    pub dataset: String,
    pub loader: LoaderSettings,
    pub stages: Vec<Stage>,
    pub train: TrainTransform,
    pub eval: EvalTransform,
    /// The network, validated; its input size equals the training crop.
    pub model: Option<VggConfig>,
    pub optimizer: OptimizerSettings,
    pub schedule: Schedule,
    pub training: TrainingSettings,
}

/// The shape after each stage, for `vgg preview` and error messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageShape {
    pub stage: String,
    pub shape: String,
}

impl Pipeline {
    /// `path: line N, key` for an error about `key` found after loading (the file is read
    /// again for the line; without it, `path: key`).
    pub fn at_key(&self, key: &str) -> String {
        let line = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| super::line_of_key(&t, key));
        match line {
            Some(l) => format!("{}: line {l}, {key}", self.path.display()),
            None => format!("{}: {key}", self.path.display()),
        }
    }

    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let text = super::read_text(path, "pipeline")?;
        Self::parse(&text, path)
    }

    /// Parses pipeline text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PipelineError> {
        let raw: RawPipeline = super::parse_toml(text, path)?;
        let invalid = |key: &str, message: String| PipelineError::Invalid {
            path: path.to_path_buf(),
            line: if key.contains("(line ") {
                None
            } else {
                super::line_of_key(text, key)
            },
            key: key.to_string(),
            message,
        };
        let l = &raw.loader;
        if l.batch_size == 0 {
            return Err(invalid("loader.batch_size", "must be at least 1".into()));
        }
        if l.prefetch == 0 {
            return Err(invalid("loader.prefetch", "must be at least 1".into()));
        }
        if l.threads > MAX_THREADS {
            return Err(invalid(
                "loader.threads",
                format!(
                    "{} is more than {MAX_THREADS}: give at most one per core (0 = all cores)",
                    l.threads
                ),
            ));
        }
        if l.prefetch > 1024 {
            return Err(invalid(
                "loader.prefetch",
                format!("{} batches held ahead is more memory than it can help; use at most 1024 (4 is plenty)", l.prefetch),
            ));
        }
        if l.window_shards == 0 {
            return Err(invalid("loader.window_shards", "must be at least 1".into()));
        }
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let mut stages = Vec::with_capacity(raw.train.stages.len());
        let mut lines = Vec::with_capacity(raw.train.stages.len());
        for (i, raw_stage) in raw.train.stages.iter().enumerate() {
            let line = line_of(raw_stage.span().start);
            let stage = raw_stage
                .get_ref()
                .resolve()
                .map_err(|m| invalid(&format!("train.stages[{i}] (line {line})"), m))?;
            stages.push(stage);
            lines.push(line);
        }
        let train = train_transform(&stages, &lines, &invalid)?;
        let eval = match &raw.eval {
            None => EvalTransform {
                scale: train_scale_for_eval(&train.scale),
                crop: Some(train.crop),
                mean: train.mean,
            },
            Some(e) => {
                if e.scale < 16 {
                    return Err(invalid(
                        "eval.scale",
                        format!("Q = {} is too small", e.scale),
                    ));
                }
                if let Some(c) = e.crop {
                    if c == 0 || c > e.scale {
                        return Err(invalid(
                            "eval.crop",
                            format!("centre crop {c} does not fit in Q = {}", e.scale),
                        ));
                    }
                    // Validation and `--protocol centre` crop the network's input size (the
                    // forward graph's), which is the training crop; another value could only
                    // be ignored.
                    if c != train.crop {
                        return Err(invalid(
                            "eval.crop",
                            format!(
                                "{c} differs from the training crop {}: validation and `vgg eval --protocol centre` take a centre crop of the network's input, which is the training crop; set crop = {} or leave the key out",
                                train.crop, train.crop
                            ),
                        ));
                    }
                }
                EvalTransform {
                    scale: e.scale,
                    crop: e.crop,
                    mean: e.mean,
                }
            }
        };
        let model = match &raw.model {
            None => None,
            Some(t) => {
                let mut t = t.clone();
                // The input size follows the training crop unless the file says otherwise.
                t.entry("input")
                    .or_insert_with(|| toml::Value::Integer(train.crop as i64));
                let m = VggConfig::from_table(&t).map_err(|e| match e {
                    ModelError::Invalid { key, message } => {
                        invalid(&format!("model.{key}"), message)
                    }
                    other => invalid("model.config", other.to_string()),
                })?;
                if m.input != train.crop {
                    return Err(invalid(
                        "model.input",
                        format!("{} differs from the training crop {}", m.input, train.crop),
                    ));
                }
                Some(m)
            }
        };
        training::validate(&raw.optimizer, &raw.schedule, &raw.training, l.batch_size)
            .map_err(|(key, message)| invalid(&key, message))?;
        let name = raw.name.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Ok(Pipeline {
            path: path.to_path_buf(),
            name,
            description: raw.description,
            dataset: raw.dataset,
            loader: raw.loader,
            stages,
            train,
            eval,
            model,
            optimizer: raw.optimizer,
            schedule: raw.schedule,
            training: raw.training,
        })
    }

    /// Shapes through the training stages for a batch of `n`.
    pub fn shapes(&self, n: usize) -> Vec<StageShape> {
        let c = self.train.crop;
        let mut out = Vec::new();
        let mut f32_out = false;
        for s in &self.stages {
            let (stage, shape) = match s {
                Stage::Decode => ("decode".to_string(), "H x W x 3 u8 (per image)".to_string()),
                Stage::Scale { s } => (format!("scale S={s}"), format!("min(H,W)={s} x 3 u8")),
                Stage::ScaleJitter { min, max } => (
                    format!("scale_jitter S~U[{min},{max}]"),
                    format!("min(H,W) in [{min},{max}] x 3 u8"),
                ),
                Stage::RandomCrop { size } => (
                    format!("random_crop {size}"),
                    format!("{size} x {size} x 3 u8"),
                ),
                Stage::Flip { p } => (format!("flip p={p}"), format!("{c} x {c} x 3 u8")),
                Stage::PcaLighting { std } => (
                    format!("pca_lighting std={std}"),
                    format!("{c} x {c} x 3 + shift[3]"),
                ),
                Stage::Normalize { .. } => {
                    f32_out = true;
                    ("normalize".to_string(), format!("{c} x {c} x 3"))
                }
            };
            out.push(StageShape { stage, shape });
        }
        let batch = match (self.loader.output, f32_out) {
            (OutputKind::F32Nchw, _) => format!("[{n}, 3, {c}, {c}] f32"),
            (OutputKind::U8Nhwc, _) => format!("[{n}, {c}, {c}, 3] u8 + shift [{n}, 3] f32"),
        };
        out.push(StageShape {
            stage: "batch".into(),
            shape: batch,
        });
        out
    }
}

/// The paper's single-scale test scale: Q = S for fixed S, Q = (Smin + Smax) / 2 for jitter.
fn train_scale_for_eval(s: &Scale) -> u32 {
    match *s {
        Scale::Fixed(s) => s,
        Scale::Jitter { min, max } => (min + max) / 2,
    }
}

/// Checks the stage list and fuses it into one transform.
fn train_transform(
    stages: &[Stage],
    lines: &[usize],
    invalid: &dyn Fn(&str, String) -> PipelineError,
) -> Result<TrainTransform, PipelineError> {
    // Position of each stage kind in the fixed order.
    let rank = |s: &Stage| match s {
        Stage::Decode => 0,
        Stage::Scale { .. } | Stage::ScaleJitter { .. } => 1,
        Stage::RandomCrop { .. } => 2,
        Stage::Flip { .. } => 3,
        Stage::PcaLighting { .. } => 4,
        Stage::Normalize { .. } => 5,
    };
    let names = [
        "decode",
        "scale/scale_jitter",
        "random_crop",
        "flip",
        "pca_lighting",
        "normalize",
    ];
    let mut last = None;
    for (i, s) in stages.iter().enumerate() {
        let r = rank(s);
        if let Some(prev) = last {
            if r <= prev {
                return Err(invalid(
                    &format!("train.stages[{i}] (line {})", lines[i]),
                    format!(
                        "`{}` cannot come after `{}`: stages run in the order {}, each at most once",
                        names[r],
                        names[prev],
                        names.join(", ")
                    ),
                ));
            }
        }
        last = Some(r);
    }
    let has = |r: usize| stages.iter().any(|s| rank(s) == r);
    for (r, what) in [
        (0, "decode"),
        (1, "a scale or scale_jitter"),
        (2, "random_crop"),
        (5, "normalize"),
    ] {
        if !has(r) {
            return Err(invalid("train.stages", format!("needs {what} stage")));
        }
    }
    let mut t = TrainTransform {
        scale: Scale::Fixed(256),
        crop: 224,
        flip_p: 0.0,
        pca_std: 0.0,
        mean: VGG_MEAN,
    };
    for (i, s) in stages.iter().enumerate() {
        let key = format!("train.stages[{i}] (line {})", lines[i]);
        match *s {
            Stage::Decode => {}
            Stage::Scale { s } => {
                if !(16..=4096).contains(&s) {
                    return Err(invalid(&key, format!("S = {s} is outside 16..=4096")));
                }
                t.scale = Scale::Fixed(s);
            }
            Stage::ScaleJitter { min, max } => {
                if min > max || !(16..=4096).contains(&min) || max > 4096 {
                    return Err(invalid(
                        &key,
                        format!("need 16 <= min <= max <= 4096, got [{min}, {max}]"),
                    ));
                }
                t.scale = Scale::Jitter { min, max };
            }
            Stage::RandomCrop { size } => {
                let smallest = match t.scale {
                    Scale::Fixed(s) => s,
                    Scale::Jitter { min, .. } => min,
                };
                if size == 0 {
                    return Err(invalid(
                        &key,
                        format!("crop size 0: the crop must be at least 1 pixel and at most the smallest scale S = {smallest}"),
                    ));
                }
                if size > smallest {
                    return Err(invalid(
                        &key,
                        format!("crop {size} is larger than the smallest scale S = {smallest}"),
                    ));
                }
                t.crop = size;
            }
            Stage::Flip { p } => {
                if !(0.0..=1.0).contains(&p) {
                    return Err(invalid(
                        &key,
                        format!("flip probability {p} is outside [0, 1]"),
                    ));
                }
                t.flip_p = p;
            }
            Stage::PcaLighting { std } => {
                if !(std >= 0.0 && std.is_finite()) {
                    return Err(invalid(&key, format!("std {std} must be finite and >= 0")));
                }
                t.pca_std = std;
            }
            Stage::Normalize { mean } => {
                if mean.iter().any(|m| !m.is_finite()) {
                    return Err(invalid(&key, "mean must be finite".into()));
                }
                t.mean = mean;
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
dataset = "imagenet"
[loader]
batch_size = 32
[[train.stages]]
kind = "decode"
[[train.stages]]
kind = "scale_jitter"
min = 256
max = 512
[[train.stages]]
kind = "random_crop"
size = 224
[[train.stages]]
kind = "flip"
[[train.stages]]
kind = "pca_lighting"
[[train.stages]]
kind = "normalize"
[model]
config = "D"
"#;

    fn parse(s: &str) -> Result<Pipeline, PipelineError> {
        Pipeline::parse(s, Path::new("pipelines/x.toml"))
    }

    #[test]
    fn paper_recipe_fuses_into_one_transform() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name, "x");
        assert_eq!(p.train.scale, Scale::Jitter { min: 256, max: 512 });
        assert_eq!(p.train.crop, 224);
        assert_eq!(p.train.flip_p, 0.5);
        assert_eq!(p.train.pca_std, 0.1);
        assert_eq!(p.train.mean, VGG_MEAN);
        // Jittered S tests at Q = 384 by default, as in the paper.
        assert_eq!(p.eval.scale, 384);
        assert_eq!(p.loader.batch_size, 32);
        let m = p.model.as_ref().unwrap();
        assert_eq!((m.name.as_str(), m.input, m.classes), ("D", 224, 1000));
        let shapes = p.shapes(32);
        assert_eq!(shapes.last().unwrap().shape, "[32, 3, 224, 224] f32");
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn crop_larger_than_the_smallest_scale_is_refused() {
        let e = err(&GOOD.replace("size = 224", "size = 300"));
        assert!(
            e.contains("train.stages[2] (line 11)") && e.contains("smallest scale S = 256"),
            "{e}"
        );
    }

    #[test]
    fn thread_counts_beyond_any_machine_are_refused() {
        let e = err(&GOOD.replace("batch_size = 32", "batch_size = 32\nthreads = 100000"));
        assert!(e.contains("loader.threads") && e.contains("1024"), "{e}");
        let e = err(&format!("{GOOD}\n[training]\nthreads = 5000\n"));
        assert!(e.contains("training.threads"), "{e}");
        let e = err(&GOOD.replace("batch_size = 32", "batch_size = 32\nprefetch = 100000"));
        assert!(e.contains("loader.prefetch"), "{e}");
    }

    #[test]
    fn negative_std_and_bad_probability_are_refused() {
        let e = err(&GOOD.replace(
            "kind = \"pca_lighting\"",
            "kind = \"pca_lighting\"\nstd = -0.1",
        ));
        assert!(e.contains("train.stages[4]") && e.contains("std"), "{e}");
        let e = err(&GOOD.replace("kind = \"flip\"", "kind = \"flip\"\np = 1.5"));
        assert!(e.contains("train.stages[3]"), "{e}");
    }

    #[test]
    fn unknown_keys_name_their_line() {
        let e = err(&GOOD.replace("size = 224", "size = 224\nsizee = 3"));
        assert!(
            e.contains("x.toml") && e.contains("sizee") && e.contains("line 14"),
            "{e}"
        );
        let e = err(&GOOD.replace("batch_size = 32", "batch = 32"));
        assert!(e.contains("line 4") && e.contains("batch"), "{e}");
        let e = err(&GOOD.replace("kind = \"flip\"", "kind = \"mirror\""));
        assert!(e.contains("mirror") && e.contains("line 15"), "{e}");
        let e = err(&GOOD.replace("kind = \"flip\"", "kind = \"flip\"\nsize = 3"));
        assert!(
            e.contains("train.stages[3] (line 14)") && e.contains("`size` does not apply"),
            "{e}"
        );
    }

    #[test]
    fn stage_order_and_presence_are_checked() {
        let swapped = GOOD
            .replace("kind = \"flip\"", "kind = \"TMP\"")
            .replace("kind = \"pca_lighting\"", "kind = \"flip\"")
            .replace("kind = \"TMP\"", "kind = \"pca_lighting\"");
        let e = err(&swapped);
        assert!(e.contains("cannot come after"), "{e}");
        let e = err(&GOOD.replace("[[train.stages]]\nkind = \"normalize\"\n", ""));
        assert!(e.contains("needs normalize"), "{e}");
        let e = err(&GOOD.replace("batch_size = 32", "batch_size = 0"));
        assert!(e.contains("loader.batch_size"), "{e}");
    }

    #[test]
    fn the_model_must_fit_the_crop() {
        let e = err(&GOOD.replace("config = \"D\"", "config = \"D\"\ninput = 256"));
        assert!(e.contains("model.input") && e.contains("224"), "{e}");
        let e = err(&GOOD.replace("config = \"D\"", "config = \"Q\""));
        assert!(e.contains("model.config") && e.contains("`Q`"), "{e}");
    }

    #[test]
    fn eval_crop_must_fit() {
        let e = err(&format!("{GOOD}\n[eval]\nscale = 200\ncrop = 224\n"));
        assert!(e.contains("eval.crop"), "{e}");
        let p = parse(&format!("{GOOD}\n[eval]\nscale = 256\n")).unwrap();
        assert_eq!(p.eval.crop, None);
        let e = err(&format!("{GOOD}\n[eval]\nscale = 256\ncrop = 200\n"));
        assert!(
            e.contains("eval.crop") && e.contains("differs from the training crop 224"),
            "{e}"
        );
    }
}
