//! The trainer's part of a pipeline file: `[optimizer]`, `[schedule]` and `[training]`, with the
//! paper's values as defaults, validated when the pipeline loads so a run never starts with a
//! setting it would fail on hours later.
//!
//! ```toml
//! [optimizer]
//! lr = 0.01              # the paper's initial learning rate
//! momentum = 0.9
//! weight_decay = 5e-4
//! decay_biases = false   # see vgg::net::graph::vgg for why biases are not decayed
//! dropout = 0.5          # on the first two FC layers
//!
//! [schedule]
//! kind = "plateau"       # the paper: divide by 10 when validation top-1 error stops improving
//! factor = 0.1
//! patience = 1           # epochs without improvement before a decrease
//! max_decreases = 3      # the paper decreased it 3 times; the run stops at the next plateau
//! min_delta = 0.0        # an improvement smaller than this (in top-1 error) does not count
//! # kind = "step", every = 20, factor = 0.1    a decrease every 20 epochs
//! # kind = "constant"
//!
//! [training]
//! epochs = 74            # the paper stopped after 370K iterations of 256 images (74 epochs)
//! init = { kind = "normal", std = 0.01 }   # or { kind = "glorot" }
//! init_from = "runs/vgg-a/best.safetensors"     # the paper's pre-initialisation of B-E from A
//! init_conv_layers = 4
//! finetune_from = "runs/vgg-d-256/best.safetensors"  # every parameter (S=384 from S=256)
//! checkpoint_every = 1000  # steps; 0 = none by step count
//! checkpoint_minutes = 30  # also every so many minutes of training (0 = none): a hard kill
//!                          # loses at most this much work, not an epoch of ImageNet
//! log_every = 10           # steps per metrics record
//! val_limit = 10000        # validate on at most this many images (all when absent)
//! threads = 0              # ONNX Runtime intra-op threads (0 = one per core)
//! accumulate = 1           # micro-batches per step and replica (batch_size / K images each)
//! sync_timeout = 600       # seconds a process waits for the others (rendezvous, every exchange)
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// SGD with momentum and L2 weight decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSettings {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub decay_biases: bool,
    pub dropout: f32,
}

impl Default for OptimizerSettings {
    fn default() -> Self {
        OptimizerSettings {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            decay_biases: false,
            dropout: 0.5,
        }
    }
}

fn tenth() -> f32 {
    0.1
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

/// How the learning rate changes between epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The paper's: multiply by `factor` after `patience` epochs without a better validation
    /// top-1 error, at most `max_decreases` times; the next plateau ends the run.
    Plateau {
        #[serde(default = "tenth")]
        factor: f32,
        #[serde(default = "one")]
        patience: u32,
        #[serde(default = "three")]
        max_decreases: u32,
        #[serde(default)]
        min_delta: f64,
    },
    /// Multiply by `factor` every `every` epochs.
    Step {
        every: u32,
        #[serde(default = "tenth")]
        factor: f32,
    },
    Constant,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Plateau {
            factor: 0.1,
            patience: 1,
            max_decreases: 3,
            min_delta: 0.0,
        }
    }
}

/// Length of the run, initialisation, checkpoints and logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSettings {
    pub epochs: u64,
    pub init: Init,
    pub init_from: Option<PathBuf>,
    pub init_conv_layers: usize,
    pub finetune_from: Option<PathBuf>,
    pub checkpoint_every: u64,
    /// Minutes of training between checkpoints (0: none by time).
    pub checkpoint_minutes: f64,
    pub log_every: u64,
    pub val_limit: Option<u64>,
    pub threads: usize,
    /// Gradient accumulation: each replica's share of a batch runs as this many micro-batches,
    /// their gradients summed before the one update (the same step, less activation memory).
    pub accumulate: usize,
    /// Seconds a training process waits for the others at the rendezvous and at every
    /// exchange before it stops with an error naming the missing rank.
    pub sync_timeout: u64,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        TrainingSettings {
            epochs: 74,
            init: Init::default(),
            init_from: None,
            init_conv_layers: 4,
            finetune_from: None,
            checkpoint_every: 0,
            checkpoint_minutes: 30.0,
            log_every: 10,
            val_limit: None,
            threads: 0,
            accumulate: 1,
            sync_timeout: 600,
        }
    }
}

/// Checks the values serde cannot; returns (key, message) for the first bad one.
pub fn validate(
    o: &OptimizerSettings,
    s: &Schedule,
    t: &TrainingSettings,
    batch_size: usize,
) -> Result<(), (String, String)> {
    let bad = |k: &str, m: String| Err((k.to_string(), m));
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return bad(
            "optimizer.lr",
            format!("{} must be a positive number", o.lr),
        );
    }
    if !(0.0..1.0).contains(&o.momentum) {
        return bad(
            "optimizer.momentum",
            format!("{} must be in [0, 1)", o.momentum),
        );
    }
    if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
        return bad(
            "optimizer.weight_decay",
            format!("{} must be at least 0", o.weight_decay),
        );
    }
    if !(0.0..1.0).contains(&o.dropout) {
        return bad(
            "optimizer.dropout",
            format!("{} must be in [0, 1)", o.dropout),
        );
    }
    match s {
        Schedule::Plateau {
            factor, min_delta, ..
        } => {
            if !(*factor > 0.0 && *factor < 1.0) {
                return bad("schedule.factor", format!("{factor} must be in (0, 1)"));
            }
            if !(min_delta.is_finite() && *min_delta >= 0.0) {
                return bad(
                    "schedule.min_delta",
                    format!("{min_delta} must be at least 0"),
                );
            }
        }
        Schedule::Step { every, factor } => {
            if *every == 0 {
                return bad("schedule.every", "must be at least 1 epoch".into());
            }
            if !(*factor > 0.0 && *factor < 1.0) {
                return bad("schedule.factor", format!("{factor} must be in (0, 1)"));
            }
        }
        Schedule::Constant => {}
    }
    if t.epochs == 0 {
        return bad("training.epochs", "must be at least 1".into());
    }
    if let Init::Normal { std } = t.init {
        if !(std.is_finite() && std > 0.0) {
            return bad("training.init.std", format!("{std} must be positive"));
        }
    }
    if t.init_from.is_some() && t.finetune_from.is_some() {
        return bad(
            "training.finetune_from",
            "give init_from (pre-initialise some layers) or finetune_from (all of them), not both"
                .into(),
        );
    }
    if t.accumulate == 0 || !batch_size.is_multiple_of(t.accumulate) {
        return bad(
            "training.accumulate",
            format!(
                "{} micro-batches do not split the batch of {batch_size} (loader.batch_size) evenly",
                t.accumulate
            ),
        );
    }
    if !(t.checkpoint_minutes.is_finite() && t.checkpoint_minutes >= 0.0) {
        return bad(
            "training.checkpoint_minutes",
            format!("{} must be at least 0", t.checkpoint_minutes),
        );
    }
    if t.threads > crate::config::pipeline::MAX_THREADS {
        return bad(
            "training.threads",
            format!(
                "{} is more than {}: give at most one per core (0 = all cores)",
                t.threads,
                crate::config::pipeline::MAX_THREADS
            ),
        );
    }
    if t.sync_timeout == 0 {
        return bad("training.sync_timeout", "must be at least 1 second".into());
    }
    if t.val_limit == Some(0) {
        return bad(
            "training.val_limit",
            "0 validates on no images; give at least 1, or leave it out for every image".into(),
        );
    }
    if t.log_every == 0 {
        return bad("training.log_every", "must be at least 1".into());
    }
    Ok(())
}

/// How to draw the weights (biases are always zero); drawn by [`crate::net::init`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    /// Zero-mean normal with standard deviation `std` (the paper's scheme; see [`crate::net::init`]
    /// for the choice of 0.01).
    Normal { std: f32 },
    /// Glorot & Bengio (2010), "normalised initialisation": uniform in `[-a, a]` with
    /// `a = sqrt(6 / (fan_in + fan_out))`, fans counting the kernel area for a convolution
    /// (PyTorch's `xavier_uniform_`).
    Glorot,
    /// He et al. (2015): normal with std `sqrt(2 / fan_in)` for every layer, which keeps the
    /// signal's scale through each ReLU layer, with the first layer's std divided by
    /// [`PIXEL_STD`](crate::net::init::PIXEL_STD) because its inputs are mean-subtracted pixels on the 0-255 scale (the
    /// paper's input), not unit-variance ones. Activations and logits then start near unit
    /// scale: narrow networks trained from scratch on a CPU learn at once (at a learning rate
    /// near 1e-3; 1e-2 diverges), where the paper's std 0.01 leaves them at chance for
    /// thousands of steps. The demo recipes use it.
    Kaiming,
}

impl Default for Init {
    fn default() -> Self {
        Init::Normal { std: 0.01 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers() {
        let o = OptimizerSettings::default();
        assert_eq!(
            (o.lr, o.momentum, o.weight_decay, o.dropout),
            (0.01, 0.9, 5e-4, 0.5)
        );
        let t = TrainingSettings::default();
        assert_eq!(t.epochs, 74);
        assert_eq!(t.init, Init::Normal { std: 0.01 });
        assert!(validate(&o, &Schedule::default(), &t, 256).is_ok());
    }

    #[test]
    fn tables_parse_and_bad_values_name_their_key() {
        let s: Schedule = toml::from_str("kind = \"step\"\nevery = 20").unwrap();
        assert_eq!(
            s,
            Schedule::Step {
                every: 20,
                factor: 0.1
            }
        );
        assert!(toml::from_str::<Schedule>("kind = \"cosine\"").is_err());
        let t: TrainingSettings =
            toml::from_str("epochs = 3\ninit = { kind = \"glorot\" }").unwrap();
        assert_eq!(t.init, Init::Glorot);
        assert!(toml::from_str::<OptimizerSettings>("lr = 0.1\nmomentun = 0.9").is_err());
        let o = OptimizerSettings {
            momentum: 1.0,
            ..Default::default()
        };
        let err = validate(&o, &Schedule::Constant, &t, 256).unwrap_err();
        assert_eq!(err.0, "optimizer.momentum");
        let t = TrainingSettings {
            init_from: Some("a".into()),
            finetune_from: Some("b".into()),
            ..Default::default()
        };
        let err =
            validate(&OptimizerSettings::default(), &Schedule::Constant, &t, 256).unwrap_err();
        assert_eq!(err.0, "training.finetune_from");
        let t = TrainingSettings {
            accumulate: 3,
            ..Default::default()
        };
        let err =
            validate(&OptimizerSettings::default(), &Schedule::Constant, &t, 256).unwrap_err();
        assert_eq!(err.0, "training.accumulate");
        assert!(err.1.contains("256"), "{}", err.1);
        assert!(validate(&OptimizerSettings::default(), &Schedule::Constant, &t, 258).is_ok());
    }
}
