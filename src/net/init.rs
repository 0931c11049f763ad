//! Parameter initialisation: the paper's scheme and its alternatives.
//!
//! ## What the paper did (Sec. 3.1)
//! Weights were drawn from a zero-mean normal distribution, biases set to zero. Net A, shallow
//! enough to train from that start, was trained first; the deeper nets were then
//! *pre-initialised* from it: their first four convolutional layers and the three fully
//! connected layers were copied from the trained A, the other layers drawn at random
//! ([`pre_initialise`]). The paper adds that, after submission, the authors found that
//! Glorot & Bengio's (2010) initialisation trains the deep nets without pre-training
//! ([`Init::Glorot`]).
//!
//! ## The default: normal, std 0.01
//! The paper writes "variance 10^-2", i.e. a standard deviation of 0.1; most reimplementations
//! (and Caffe's reference models of the time, whose fillers are parameterised by `std`) use a
//! standard deviation of 0.01, and so does [`Init::default`]. Either way the scale ignores the
//! layer's fan-in. With std 0.01 each conv+ReLU layer multiplies the scale of the signal by
//! about `0.01 * sqrt(fan_in / 2)`, from 0.04 (conv1_1, fan-in 27) to 0.5 (fan-in 4608): through
//! A's eight convolutions and three FC layers the forward signal (and the gradient on the way
//! back) shrinks by about 10^-5, through D's sixteen layers by about 10^-8. A still trains;
//! D or E from scratch barely moves, which is why the paper pre-initialised them from A (and
//! why Glorot, which keeps the scale per layer near one, is the alternative it names). With
//! the literal std 0.1 the signal grows instead, by about 10^6 through A.
//!
//! ## Reproducibility
//! Tensor `i` (in [`parameters`] order) draws from its own counter-based generator
//! `Rng::new(seed, Stream::Init, 0, i)`, so a seed fixes every value independently of thread
//! count, and adding a layer at the end leaves the earlier tensors unchanged.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use crate::config::model::{parameters, LayerType, ParamKind, ParamSpec, VggConfig, MOMENTUM};
use crate::config::training::Init;
use crate::net::checkpoint::{
    check_layout, spec_shape, CheckpointError, NamedTensor, TensorMismatch,
};
use crate::util::rng::{Rng, Stream};

impl Init {
    /// One weight tensor of `spec` drawn from `rng`.
    fn draw(self, spec: &ParamSpec, rng: &mut Rng) -> Vec<f32> {
        let n = spec.numel();
        match self {
            Init::Normal { std } => {
                let std = std as f64;
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
            Init::Glorot => {
                let a = glorot_bound(spec);
                (0..n).map(|_| rng.uniform(-a, a) as f32).collect()
            }
            Init::Kaiming => {
                let mut std = (2.0 / spec.fan_in as f64).sqrt();
                if spec.weight_layer == 0 {
                    std /= PIXEL_STD;
                }
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
        }
    }
}

/// The standard deviation of ImageNet pixels on the 0-255 scale (torchvision's normalisation
/// constants average 57.6): the inputs the first layer sees have about this scale.
pub const PIXEL_STD: f64 = 57.6;

/// Glorot's bound `sqrt(6 / (fan_in + fan_out))` for a weight.
pub fn glorot_bound(spec: &ParamSpec) -> f64 {
    (6.0 / (spec.fan_in + spec.fan_out) as f64).sqrt()
}

/// Every parameter of `config`, in [`parameters`] order, weights drawn from `init` and biases
/// zero. Tensor `i` uses `Rng::new(seed, Stream::Init, 0, i)`, so the result depends on
/// `(config, init, seed)` only.
pub fn initialise(config: &VggConfig, init: Init, seed: u64) -> Vec<NamedTensor> {
    parameters(config)
        .par_iter()
        .enumerate()
        .map(|(i, spec)| {
            let shape = spec_shape(spec);
            match spec.kind {
                ParamKind::Bias => NamedTensor::zeros(spec.name.clone(), shape),
                ParamKind::Weight => {
                    let mut rng = Rng::new(seed, Stream::Init, 0, i as u64);
                    NamedTensor {
                        name: spec.name.clone(),
                        shape,
                        data: init.draw(spec, &mut rng),
                    }
                }
            }
        })
        .collect()
}

/// The paper's pre-initialisation: copies the first `conv_layers` convolutional layers (4 in
/// the paper) and fc6, fc7, fc8 of a trained network (`source`, the parameters of
/// `source_config`) into `target` (the parameters of `config`), weights and biases.
///
/// A source conv layer goes to the target layer in the *same block at the same position*
/// (the same name): A's first four convolutions conv1_1, conv2_1, conv3_1, conv3_2 fill D's
/// conv1_1, conv2_1, conv3_1, conv3_2. "The first four layers" cannot mean D's first four
/// (conv1_1, conv1_2, conv2_1, conv2_2): only conv1_1 has the shape of its counterpart in A.
/// Copying by name is also what the paper's Caffe did (`CopyTrainedLayersFrom` matches
/// layers by name), and it keeps every copied layer at the resolution and depth in the
/// network it was trained for. The layers in between keep their values in `target` (draw
/// them with [`initialise`] first).
///
/// Errors: a target without the source layer's name, or shapes that differ (a different
/// width, kernel, class count or input size), name both tensors; `target`/`source` that do not
/// match their configurations name the tensor. Returns the copied target tensor names.
pub fn pre_initialise(
    config: &VggConfig,
    target: &mut [NamedTensor],
    source_config: &VggConfig,
    source: &[NamedTensor],
    conv_layers: usize,
) -> Result<Vec<String>, CheckpointError> {
    let target_specs = parameters(config);
    let source_specs = parameters(source_config);
    check_layout(Path::new(""), config, target, "")?;
    check_layout(Path::new(""), source_config, source, "")?;

    let source_convs: Vec<&ParamSpec> = source_specs
        .iter()
        .filter(|s| s.layer_type == LayerType::Conv && s.kind == ParamKind::Weight)
        .collect();
    if conv_layers > source_convs.len() {
        return Err(CheckpointError::Config {
            path: Default::default(),
            message: format!(
                "network {} has {} convolutional layers; cannot copy the first {conv_layers}",
                source_config.name,
                source_convs.len()
            ),
        });
    }
    let mut layers: Vec<&str> = source_convs[..conv_layers]
        .iter()
        .map(|s| s.layer.as_str())
        .collect();
    layers.extend(
        source_specs
            .iter()
            .filter(|s| s.layer_type == LayerType::Fc && s.kind == ParamKind::Weight)
            .map(|s| s.layer.as_str()),
    );

    let target_index: HashMap<&str, usize> = target_specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // Check every pair before touching `target`, so an error leaves it unchanged.
    let mut copies = Vec::new();
    for layer in layers {
        for (i, s) in source_specs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.layer == layer)
        {
            let Some(&t) = target_index.get(s.name.as_str()) else {
                return Err(CheckpointError::Config {
                    path: Default::default(),
                    message: format!(
                        "network {} has no layer `{layer}` to receive {}'s `{layer}`",
                        config.name, source_config.name
                    ),
                });
            };
            let from = &source[i];
            if from.shape != target[t].shape {
                return Err(CheckpointError::Mismatch(Box::new(TensorMismatch {
                    from_config: source_config.name.clone(),
                    from: from.name.clone(),
                    from_shape: from.shape.clone(),
                    to_config: config.name.clone(),
                    to: target[t].name.clone(),
                    to_shape: target[t].shape.clone(),
                })));
            }
            copies.push((from, t));
        }
    }
    Ok(copies
        .into_iter()
        .map(|(from, t)| {
            target[t].data.copy_from_slice(&from.data);
            target[t].name.clone()
        })
        .collect())
}

/// Zero momentum buffers for `params`, named `NAME.momentum` (the training graph's inputs).
pub fn zero_momenta(params: &[NamedTensor]) -> Vec<NamedTensor> {
    params
        .iter()
        .map(|p| NamedTensor::zeros(format!("{}{MOMENTUM}", p.name), p.shape.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(config: &str) -> VggConfig {
        VggConfig::tiny(config)
    }

    fn stats(x: &[f32]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    #[test]
    fn the_seed_decides_every_value() {
        let c = small("A");
        let a = initialise(&c, Init::default(), 7);
        assert_eq!(a, initialise(&c, Init::default(), 7));
        let b = initialise(&c, Init::default(), 8);
        assert_ne!(a, b);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x.name, &x.shape), (&y.name, &y.shape));
        }
        // In parameters() order with the configuration's shapes.
        let specs = parameters(&c);
        assert_eq!(a.len(), specs.len());
        for (t, s) in a.iter().zip(&specs) {
            assert_eq!(t.name, s.name);
            assert_eq!(t.shape, spec_shape(s));
            assert_eq!(t.data.len(), s.numel());
        }
        // A tensor does not depend on the tensors before it (counter-based per tensor).
        let mut bigger = c.clone();
        bigger.blocks[0][0].channels = 16;
        let other = initialise(&bigger, Init::default(), 7);
        assert_eq!(other[4], a[4]);
    }

    #[test]
    fn normal_weights_have_the_asked_scale_and_zero_biases() {
        let c = small("A");
        let p = initialise(&c, Init::default(), 1);
        let fc7 = p.iter().find(|t| t.name == "fc7.weight").unwrap();
        assert!(fc7.data.len() >= 200_000);
        let (mean, std) = stats(&fc7.data);
        assert!((std - 0.01).abs() < 0.0005, "std {std}");
        assert!(mean.abs() < 1e-4, "mean {mean}");
        for t in p.iter().filter(|t| t.name.ends_with(".bias")) {
            assert!(t.data.iter().all(|&x| x == 0.0), "{}", t.name);
        }
        for t in p.iter().filter(|t| t.name.ends_with(".weight")) {
            assert!(t.data.iter().any(|&x| x != 0.0), "{}", t.name);
        }
        let wide = initialise(&c, Init::Normal { std: 0.1 }, 1);
        let (_, std) = stats(&wide.iter().find(|t| t.name == "fc7.weight").unwrap().data);
        assert!((std - 0.1).abs() < 0.005, "std {std}");
    }

    #[test]
    fn glorot_respects_its_bounds() {
        let c = small("A");
        let p = initialise(&c, Init::Glorot, 3);
        for (t, s) in p.iter().zip(parameters(&c)) {
            if s.kind == ParamKind::Bias {
                assert!(t.data.iter().all(|&x| x == 0.0));
                continue;
            }
            let a = glorot_bound(&s) as f32;
            let max = t.data.iter().fold(0f32, |m, &x| m.max(x.abs()));
            assert!(max <= a, "{}: {max} > {a}", t.name);
            if t.data.len() > 1000 {
                assert!(max > 0.99 * a, "{}: {max} fills [-{a}, {a}]?", t.name);
                // Uniform on [-a, a]: std a / sqrt(3).
                let (mean, std) = stats(&t.data);
                assert!(
                    (std / (a as f64 / 3f64.sqrt()) - 1.0).abs() < 0.05,
                    "{}",
                    t.name
                );
                assert!(mean.abs() < 0.05 * a as f64, "{}", t.name);
            }
        }
        // conv2_1 of the narrow A: 16 outputs, 8 inputs, 3x3.
        let conv2_1 = parameters(&c).into_iter().nth(2).unwrap();
        assert_eq!(glorot_bound(&conv2_1), (6.0f64 / (72.0 + 144.0)).sqrt());
    }

    #[test]
    fn init_settings_read_from_toml_and_json() {
        #[derive(serde::Deserialize)]
        struct T {
            init: Init,
        }
        let t: T = toml::from_str("init = { kind = \"glorot\" }").unwrap();
        assert_eq!(t.init, Init::Glorot);
        let t: T = toml::from_str("[init]\nkind = \"normal\"\nstd = 0.02").unwrap();
        assert_eq!(t.init, Init::Normal { std: 0.02 });
        assert_eq!(
            serde_json::to_string(&Init::default()).unwrap(),
            "{\"kind\":\"normal\",\"std\":0.01}"
        );
    }

    #[test]
    fn pre_initialise_copies_a_into_d_by_block_and_position() {
        let (a_cfg, d_cfg) = (small("A"), small("D"));
        let a = initialise(&a_cfg, Init::default(), 1);
        let fresh = initialise(&d_cfg, Init::default(), 2);
        let mut d = fresh.clone();
        let copied = pre_initialise(&d_cfg, &mut d, &a_cfg, &a, 4).unwrap();
        let layers = [
            "conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8",
        ];
        let expected: Vec<String> = layers
            .iter()
            .flat_map(|l| [format!("{l}.weight"), format!("{l}.bias")])
            .collect();
        assert_eq!(copied, expected);
        for (t, before) in d.iter().zip(&fresh) {
            if copied.contains(&t.name) {
                let src = a.iter().find(|s| s.name == t.name).unwrap();
                assert_eq!(t, src, "{}", t.name);
            } else {
                assert_eq!(t, before, "{} must be untouched", t.name);
            }
        }
        // Weights actually changed (not a copy of zeros onto zeros).
        let w = |ts: &[NamedTensor], n: &str| ts.iter().find(|t| t.name == n).unwrap().clone();
        assert_ne!(w(&d, "conv2_1.weight"), w(&fresh, "conv2_1.weight"));

        // Paper-size shapes line up the same way (checked on the specs, not drawn).
        let shapes = |c: &VggConfig| -> HashMap<String, Vec<i64>> {
            parameters(c)
                .into_iter()
                .map(|s| (s.name, s.shape))
                .collect()
        };
        let (pa, pd) = (
            shapes(&VggConfig::paper("A").unwrap()),
            shapes(&VggConfig::paper("D").unwrap()),
        );
        for l in layers {
            let n = format!("{l}.weight");
            assert_eq!(pa[&n], pd[&n], "{n}");
        }
        assert_ne!(pa["conv2_1.weight"], pd["conv1_2.weight"]);
    }

    #[test]
    fn pre_initialise_refuses_what_does_not_fit() {
        let a_cfg = small("A");
        let a = initialise(&a_cfg, Init::default(), 1);
        // Another class count: fc8 differs, named with both shapes, target untouched.
        let mut d_cfg = small("D");
        d_cfg.classes = 20;
        let fresh = initialise(&d_cfg, Init::default(), 2);
        let mut d = fresh.clone();
        let e = pre_initialise(&d_cfg, &mut d, &a_cfg, &a, 4).unwrap_err();
        match &e {
            CheckpointError::Mismatch(m) => {
                let TensorMismatch {
                    from,
                    from_shape,
                    to,
                    to_shape,
                    ..
                } = &**m;
                assert_eq!((from.as_str(), to.as_str()), ("fc8.weight", "fc8.weight"));
                assert_eq!((from_shape[0], to_shape[0]), (10, 20));
            }
            e => panic!("{e}"),
        }
        assert!(e.to_string().contains("fc8.weight"), "{e}");
        assert_eq!(d, fresh);

        // A target without the layer (one conv per block): conv3_2 has nowhere to go.
        let mut narrow = small("A");
        narrow.blocks = vec![narrow.blocks[0].clone(); 5];
        narrow.blocks[1][0].channels = 16;
        narrow.blocks[2][0].channels = 32;
        let mut t = initialise(&narrow, Init::default(), 2);
        let e = pre_initialise(&narrow, &mut t, &a_cfg, &a, 4).unwrap_err();
        assert!(matches!(e, CheckpointError::Config { .. }), "{e}");

        // More layers than the source has; parameters that are not the configuration's.
        let mut d_cfg = small("D");
        let mut d = initialise(&d_cfg, Init::default(), 2);
        assert!(pre_initialise(&d_cfg, &mut d, &a_cfg, &a, 9).is_err());
        assert!(pre_initialise(&d_cfg, &mut d, &a_cfg, &a[1..], 4).is_err());
        d_cfg.fc = 7;
        assert!(matches!(
            pre_initialise(&d_cfg, &mut d, &a_cfg, &a, 4).unwrap_err(),
            CheckpointError::Shape { .. }
        ));
    }

    #[test]
    fn momenta_are_zero_and_named_for_the_graph() {
        let c = small("A");
        let p = initialise(&c, Init::default(), 1);
        let m = zero_momenta(&p);
        assert_eq!(m.len(), p.len());
        assert_eq!(m[0].name, "conv1_1.weight.momentum");
        for (m, p) in m.iter().zip(&p) {
            assert_eq!(m.shape, p.shape);
            assert!(m.data.iter().all(|&x| x == 0.0) && m.data.len() == p.data.len());
        }
    }
}
