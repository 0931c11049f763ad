//! The VGG configurations as data (paper Table 1), and the layer arithmetic everything else
//! builds on: output shapes, parameter counts and FLOPs per layer.
//!
//! A configuration is a list of blocks, each a list of convolutions written in the paper's own
//! notation (`conv3-64` is a 3x3 convolution with 64 output channels, `conv1-256` a 1x1), a 2x2
//! max-pool after every block, then the classifier: FC-4096, FC-4096, FC-classes. A-E are rows of
//! one table, not separate code, and a pipeline's `[model]` table can write new rows (the paper's
//! 5x5 variant of B, a narrow network for a CPU) with the same code:
//!
//! ```toml
//! [model]
//! config = "A"          # a row of Table 1 to start from (A, A-LRN, B, C, D, E)
//! width = 0.125         # multiplies every conv width and the FC width
//! classes = 10
//! fc = 4096             # width of the two hidden FC layers (before `width`)
//! input = 224           # training input size
//! lrn = false           # LRN after the first conv (A-LRN sets it)
//! blocks = [["conv5-64"], ["conv5-128"], ["conv5-256"], ["conv5-512"], ["conv5-512"]]
//! ```
//!
//! FLOPs count a multiply-add as two operations; `macs` is given alongside. ReLU, pooling, LRN
//! and dropout are not counted (they are negligible next to the convolutions).
//!
//! ## Parameters
//! Names follow the paper's layers: `conv{block}_{i}.weight` `[out, in, k, k]` and `.bias`
//! `[out]`, then `fc6`, `fc7`, `fc8` with `.weight` `[out, in]` and `.bias` `[out]` -- the
//! layout of torchvision's `nn.Conv2d` and `nn.Linear`, so a tensor moves between the two
//! projects unchanged; only the name differs ([`torchvision_name`]: `features.N.weight`,
//! `classifier.N.weight`). `fc6.weight`'s inputs are the last feature map flattened in C, H, W
//! order, which is what makes it the 7x7 convolution of the dense graph after a reshape.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One convolution: kernel size and output channels.
/// The largest network accepted: 4 G parameters (16 GiB per float32 copy; VGG-19 has 144 M).
pub const MAX_PARAMETERS: u64 = 4_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Conv {
    pub kernel: u32,
    pub channels: u32,
}

impl TryFrom<String> for Conv {
    type Error = String;
    /// Parses the paper's notation `convK-C`.
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a convolution like \"conv3-64\" (kernel 1, 3, 5 or 7)");
        let rest = s.strip_prefix("conv").ok_or_else(bad)?;
        let (k, c) = rest.split_once('-').ok_or_else(bad)?;
        let kernel: u32 = k.parse().map_err(|_| bad())?;
        let channels: u32 = c.parse().map_err(|_| bad())?;
        if !matches!(kernel, 1 | 3 | 5 | 7) || channels == 0 {
            return Err(bad());
        }
        Ok(Conv { kernel, channels })
    }
}

impl From<Conv> for String {
    fn from(c: Conv) -> String {
        c.to_string()
    }
}

impl fmt::Display for Conv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conv{}-{}", self.kernel, self.channels)
    }
}

/// Local response normalisation settings. AlexNet's formula divides by
/// `(k + alpha * sum(x^2))^beta` with no 1/size factor; ONNX's LRN divides alpha by size, so an
/// exporter must pass `alpha * size` to ONNX to get AlexNet's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lrn {
    pub size: u32,
    /// AlexNet convention (no 1/size factor).
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
}

/// AlexNet's settings, used by A-LRN.
pub const ALEXNET_LRN: Lrn = Lrn {
    size: 5,
    alpha: 1e-4,
    beta: 0.75,
    k: 2.0,
};

/// A complete network description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VggConfig {
    pub name: String,
    pub blocks: Vec<Vec<Conv>>,
    /// LRN right after the first convolution.
    pub lrn: Option<Lrn>,
    pub fc: u32,
    pub classes: u32,
    pub input: u32,
    pub in_channels: u32,
}

/// Paper Table 1, as written there.
const TABLE: [(&str, &[&[&str]]); 5] = [
    (
        "A",
        &[
            &["conv3-64"],
            &["conv3-128"],
            &["conv3-256", "conv3-256"],
            &["conv3-512", "conv3-512"],
            &["conv3-512", "conv3-512"],
        ],
    ),
    (
        "B",
        &[
            &["conv3-64", "conv3-64"],
            &["conv3-128", "conv3-128"],
            &["conv3-256", "conv3-256"],
            &["conv3-512", "conv3-512"],
            &["conv3-512", "conv3-512"],
        ],
    ),
    (
        "C",
        &[
            &["conv3-64", "conv3-64"],
            &["conv3-128", "conv3-128"],
            &["conv3-256", "conv3-256", "conv1-256"],
            &["conv3-512", "conv3-512", "conv1-512"],
            &["conv3-512", "conv3-512", "conv1-512"],
        ],
    ),
    (
        "D",
        &[
            &["conv3-64", "conv3-64"],
            &["conv3-128", "conv3-128"],
            &["conv3-256", "conv3-256", "conv3-256"],
            &["conv3-512", "conv3-512", "conv3-512"],
            &["conv3-512", "conv3-512", "conv3-512"],
        ],
    ),
    (
        "E",
        &[
            &["conv3-64", "conv3-64"],
            &["conv3-128", "conv3-128"],
            &["conv3-256", "conv3-256", "conv3-256", "conv3-256"],
            &["conv3-512", "conv3-512", "conv3-512", "conv3-512"],
            &["conv3-512", "conv3-512", "conv3-512", "conv3-512"],
        ],
    ),
];

/// The names of the paper's configurations.
pub const PAPER_CONFIGS: [&str; 6] = ["A", "A-LRN", "B", "C", "D", "E"];

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown configuration `{0}` (the paper's are A, A-LRN, B, C, D, E)")]
    Unknown(String),
    #[error("model.{key}: {message}")]
    Invalid { key: String, message: String },
}

impl VggConfig {
    /// A row of the paper's Table 1 with a 1000-class head at 224x224.
    pub fn paper(name: &str) -> Result<Self, ModelError> {
        let upper = name.to_ascii_uppercase();
        let (row, lrn) = match upper.as_str() {
            "A-LRN" => ("A", Some(ALEXNET_LRN)),
            other => (other, None),
        };
        let (_, blocks) = TABLE
            .iter()
            .find(|(n, _)| *n == row)
            .ok_or_else(|| ModelError::Unknown(name.to_string()))?;
        Ok(VggConfig {
            name: upper,
            blocks: blocks
                .iter()
                .map(|b| {
                    b.iter()
                        .map(|c| Conv::try_from(c.to_string()).expect("table entries parse"))
                        .collect()
                })
                .collect(),
            lrn,
            fc: 4096,
            classes: 1000,
            input: 224,
            in_channels: 3,
        })
    }

    /// A configuration from a pipeline's `[model]` table.
    pub fn from_table(table: &toml::Table) -> Result<Self, ModelError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            config: Option<String>,
            name: Option<String>,
            blocks: Option<Vec<Vec<Conv>>>,
            width: Option<f64>,
            fc: Option<u32>,
            classes: Option<u32>,
            input: Option<u32>,
            lrn: Option<bool>,
        }
        let invalid = |key: &str, message: String| ModelError::Invalid {
            key: key.into(),
            message,
        };
        let raw: Raw = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| invalid("*", e.message().to_string()))?;
        let mut c = match (&raw.config, &raw.blocks) {
            (Some(name), _) => Self::paper(name)?,
            (None, Some(_)) => Self::paper("A")?,
            (None, None) => {
                return Err(invalid("config", "give `config` (A..E) or `blocks`".into()))
            }
        };
        if let Some(b) = raw.blocks {
            if b.is_empty() || b.iter().any(|blk| blk.is_empty()) {
                return Err(invalid(
                    "blocks",
                    "every block needs at least one convolution".into(),
                ));
            }
            c.blocks = b;
            c.name = "custom".into();
        }
        if let Some(w) = raw.width {
            if !(w > 0.0 && w <= 4.0) {
                return Err(invalid("width", format!("{w} is outside (0, 4]")));
            }
            let scale = |n: u32| ((n as f64 * w).round() as u32).max(1);
            for blk in &mut c.blocks {
                for conv in blk.iter_mut() {
                    conv.channels = scale(conv.channels);
                }
            }
            c.fc = scale(c.fc);
            if w != 1.0 {
                c.name = format!("{}x{w}", c.name);
            }
        }
        if let Some(fc) = raw.fc {
            if fc == 0 {
                return Err(invalid(
                    "fc",
                    "the hidden FC layers need at least 1 unit".into(),
                ));
            }
            c.fc = fc;
        }
        if let Some(n) = raw.classes {
            if n < 2 {
                return Err(invalid("classes", "need at least 2 classes".into()));
            }
            c.classes = n;
        }
        if let Some(i) = raw.input {
            c.input = i;
        }
        match raw.lrn {
            Some(true) => c.lrn = Some(ALEXNET_LRN),
            Some(false) => c.lrn = None,
            None => {}
        }
        if let Some(n) = raw.name {
            c.name = n;
        }
        let reduce = 1u32 << c.blocks.len();
        if c.input < reduce || c.input % reduce != 0 {
            return Err(invalid(
                "input",
                format!(
                    "{} is not a multiple of {reduce} (one 2x2 pool per block)",
                    c.input
                ),
            ));
        }
        // Refuse what no machine holds before anything is allocated: training keeps the
        // parameters four times over (two sets of weights and momenta) in float32.
        let params = c.summary().parameters;
        if params > MAX_PARAMETERS {
            return Err(invalid(
                "fc",
                format!(
                    "{params} parameters ({} GiB of float32 each copy, four copies to train) is \
                     beyond the {MAX_PARAMETERS} this toolkit allocates; lower fc, width or classes",
                    (params * 4) >> 30
                ),
            ));
        }
        Ok(c)
    }

    /// The feature map side after the last pool.
    pub fn final_side(&self) -> u32 {
        self.input >> self.blocks.len()
    }

    /// Every layer with its output shape, parameters and FLOPs, for a batch of one.
    pub fn layers(&self) -> Vec<Layer> {
        let mut out = Vec::new();
        let (mut c, mut side) = (self.in_channels as u64, self.input as u64);
        let mut conv_index = 0;
        for (b, block) in self.blocks.iter().enumerate() {
            for (j, conv) in block.iter().enumerate() {
                conv_index += 1;
                let k = conv.kernel as u64;
                let co = conv.channels as u64;
                let params = k * k * c * co + co;
                let macs = k * k * c * co * side * side;
                out.push(Layer {
                    name: format!("conv{}_{}", b + 1, j + 1),
                    kind: LayerKind::Conv,
                    block: b + 1,
                    detail: conv.to_string(),
                    output: vec![co, side, side],
                    parameters: params,
                    macs,
                });
                c = co;
                if conv_index == 1 {
                    if let Some(l) = self.lrn {
                        out.push(Layer {
                            name: "lrn".into(),
                            kind: LayerKind::Lrn,
                            block: b + 1,
                            detail: format!(
                                "size {} alpha {} beta {} k {}",
                                l.size, l.alpha, l.beta, l.k
                            ),
                            output: vec![c, side, side],
                            parameters: 0,
                            macs: 0,
                        });
                    }
                }
            }
            side /= 2;
            out.push(Layer {
                name: format!("pool{}", b + 1),
                kind: LayerKind::MaxPool,
                block: b + 1,
                detail: "maxpool 2x2/2".into(),
                output: vec![c, side, side],
                parameters: 0,
                macs: 0,
            });
        }
        let mut inputs = c * side * side;
        let widths = [self.fc as u64, self.fc as u64, self.classes as u64];
        for (i, &w) in widths.iter().enumerate() {
            out.push(Layer {
                name: format!("fc{}", i + 6),
                kind: LayerKind::Fc,
                block: 0,
                detail: if i < 2 {
                    format!("FC-{w}, dropout 0.5")
                } else {
                    format!("FC-{w}")
                },
                output: vec![w],
                parameters: inputs * w + w,
                macs: inputs * w,
            });
            inputs = w;
        }
        out
    }

    /// Totals over all layers.
    pub fn summary(&self) -> Summary {
        let layers = self.layers();
        let parameters = layers.iter().map(|l| l.parameters).sum();
        let macs: u64 = layers.iter().map(|l| l.macs).sum();
        Summary {
            config: self.clone(),
            weight_layers: layers
                .iter()
                .filter(|l| matches!(l.kind, LayerKind::Conv | LayerKind::Fc))
                .count(),
            parameters,
            macs,
            flops: 2 * macs,
            layers,
        }
    }
}

/// Layer kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Conv,
    Lrn,
    MaxPool,
    Fc,
}

/// One layer of the network (ReLU after every conv and the first two FCs is implied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layer {
    pub name: String,
    pub kind: LayerKind,
    /// Block number (1-5) for the feature layers, 0 for the classifier.
    pub block: usize,
    pub detail: String,
    /// Output shape for one image (C, H, W) or (features).
    pub output: Vec<u64>,
    pub parameters: u64,
    pub macs: u64,
}

/// `vgg model summary` output.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub config: VggConfig,
    pub weight_layers: usize,
    pub parameters: u64,
    pub macs: u64,
    /// 2 x multiply-adds, for one 224x224 image (or the configured input).
    pub flops: u64,
    pub layers: Vec<Layer>,
}

/// Weight or bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Weight,
    Bias,
}

/// Which layer a parameter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerType {
    Conv,
    Fc,
}

/// One parameter tensor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParamSpec {
    /// `conv1_1.weight`, `fc8.bias`, ...
    pub name: String,
    /// `conv1_1`, `fc8`, ...
    pub layer: String,
    pub layer_type: LayerType,
    pub kind: ParamKind,
    pub shape: Vec<i64>,
    /// Inputs per output unit (`in * k * k` for a conv), for initialisation.
    pub fan_in: i64,
    /// Outputs per input unit (`out * k * k` for a conv).
    pub fan_out: i64,
    /// Position among the network's weight layers, from 0 (conv1_1) to the last FC.
    pub weight_layer: usize,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }
}

/// Every parameter of `config`, in network order (weight before bias).
pub fn parameters(config: &VggConfig) -> Vec<ParamSpec> {
    let mut out = Vec::new();
    let mut c = config.in_channels as i64;
    let mut layer_index = 0;
    let mut push = |layer: String, ty: LayerType, wshape: Vec<i64>, fan_in: i64, fan_out: i64| {
        let units = wshape[0];
        for (kind, shape) in [(ParamKind::Weight, wshape), (ParamKind::Bias, vec![units])] {
            out.push(ParamSpec {
                name: format!(
                    "{layer}.{}",
                    if kind == ParamKind::Weight {
                        "weight"
                    } else {
                        "bias"
                    }
                ),
                layer: layer.clone(),
                layer_type: ty,
                kind,
                shape,
                fan_in,
                fan_out,
                weight_layer: layer_index,
            });
        }
        layer_index += 1;
    };
    for (b, block) in config.blocks.iter().enumerate() {
        for (i, conv) in block.iter().enumerate() {
            let k = conv.kernel as i64;
            let co = conv.channels as i64;
            push(
                format!("conv{}_{}", b + 1, i + 1),
                LayerType::Conv,
                vec![co, c, k, k],
                c * k * k,
                co * k * k,
            );
            c = co;
        }
    }
    let side = config.final_side() as i64;
    let mut inputs = c * side * side;
    for (i, w) in [config.fc, config.fc, config.classes]
        .into_iter()
        .enumerate()
    {
        let w = w as i64;
        push(
            format!("fc{}", i + 6),
            LayerType::Fc,
            vec![w, inputs],
            inputs,
            w,
        );
        inputs = w;
    }
    out
}

/// torchvision's `state_dict` key for a parameter of `config`: `features.N.weight` with N the
/// module index in torchvision's `make_layers` (conv, ReLU, ..., MaxPool; an LRN, which
/// torchvision's VGG lacks, counts as one module after the first ReLU), and `classifier.{0,3,6}`
/// for fc6-fc8.
pub fn torchvision_name(config: &VggConfig, param: &ParamSpec) -> String {
    let suffix = match param.kind {
        ParamKind::Weight => "weight",
        ParamKind::Bias => "bias",
    };
    if param.layer_type == LayerType::Fc {
        let n = param.weight_layer - conv_count(config);
        return format!("classifier.{}.{suffix}", 3 * n);
    }
    let mut module = 0;
    let mut seen = 0;
    for block in &config.blocks {
        for _ in block {
            if seen == param.weight_layer {
                return format!("features.{module}.{suffix}");
            }
            module += 2; // conv + ReLU
            if seen == 0 && config.lrn.is_some() {
                module += 1;
            }
            seen += 1;
        }
        module += 1; // MaxPool
    }
    unreachable!("{} is not a layer of {}", param.name, config.name)
}

fn conv_count(config: &VggConfig) -> usize {
    config.blocks.iter().map(|b| b.len()).sum()
}

/// The suffix of a momentum buffer's name.
pub const MOMENTUM: &str = ".momentum";

#[cfg(test)]
impl VggConfig {
    /// A Table 1 row at 1/8 width, 10 classes, 32-pixel input: small enough for unit tests.
    pub(crate) fn tiny(config: &str) -> VggConfig {
        VggConfig::from_table(
            &format!("config = \"{config}\"\nwidth = 0.125\nclasses = 10\ninput = 32")
                .parse()
                .unwrap(),
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(name: &str) -> u64 {
        VggConfig::paper(name).unwrap().summary().parameters
    }

    #[test]
    fn parameter_counts_match_torchvision_and_the_paper() {
        assert_eq!(params("A"), 132_863_336);
        assert_eq!(params("B"), 133_047_848);
        assert_eq!(params("D"), 138_357_544);
        assert_eq!(params("E"), 143_667_240);
        // Paper Table 2, in millions.
        assert_eq!((params("A-LRN") as f64 / 1e6).round(), 133.0);
        assert_eq!((params("C") as f64 / 1e6).round(), 134.0);
    }

    #[test]
    fn weight_layers_match_table_1() {
        for (name, n) in [
            ("A", 11),
            ("A-LRN", 11),
            ("B", 13),
            ("C", 16),
            ("D", 16),
            ("E", 19),
        ] {
            assert_eq!(
                VggConfig::paper(name).unwrap().summary().weight_layers,
                n,
                "{name}"
            );
        }
    }

    #[test]
    fn shapes_and_flops_of_d() {
        let s = VggConfig::paper("D").unwrap().summary();
        let pool5 = s.layers.iter().find(|l| l.name == "pool5").unwrap();
        assert_eq!(pool5.output, vec![512, 7, 7]);
        let fc6 = s.layers.iter().find(|l| l.name == "fc6").unwrap();
        assert_eq!(fc6.parameters, 7 * 7 * 512 * 4096 + 4096);
        // VGG-16's well-known 15.47 G multiply-adds per 224x224 image.
        assert_eq!((s.macs as f64 / 1e9 * 100.0).round() / 100.0, 15.47);
        assert_eq!(s.flops, 2 * s.macs);
    }

    #[test]
    fn a_lrn_has_its_lrn_after_the_first_conv() {
        let s = VggConfig::paper("a-lrn").unwrap().summary();
        assert_eq!(s.layers[0].name, "conv1_1");
        assert_eq!(s.layers[1].kind, LayerKind::Lrn);
        assert_eq!(s.config.lrn, Some(ALEXNET_LRN));
        assert!(VggConfig::paper("A")
            .unwrap()
            .layers()
            .iter()
            .all(|l| l.kind != LayerKind::Lrn));
    }

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn pipeline_tables_write_new_rows() {
        // The paper's shallow variant of B: each pair of 3x3 convs replaced by one 5x5.
        let c = VggConfig::from_table(&table(
            "blocks = [[\"conv5-64\"], [\"conv5-128\"], [\"conv5-256\"], [\"conv5-512\"], [\"conv5-512\"]]",
        ))
        .unwrap();
        assert_eq!(
            c.blocks[0][0],
            Conv {
                kernel: 5,
                channels: 64
            }
        );
        assert_eq!(c.summary().weight_layers, 8);
        // A narrow A for a CPU: widths scale, the class count follows the dataset.
        let small = VggConfig::from_table(&table(
            "config = \"A\"\nwidth = 0.125\nclasses = 10\ninput = 64",
        ))
        .unwrap();
        assert_eq!(small.blocks[0][0].channels, 8);
        assert_eq!(small.blocks[4][1].channels, 64);
        assert_eq!(small.fc, 512);
        assert_eq!(small.final_side(), 2);
        let s = small.summary();
        let fc6 = s.layers.iter().find(|l| l.name == "fc6").unwrap();
        assert_eq!(fc6.parameters, 64 * 2 * 2 * 512 + 512);
    }

    #[test]
    fn bad_rows_are_refused() {
        let e = VggConfig::from_table(&table("config = \"F\"")).unwrap_err();
        assert!(e.to_string().contains("unknown configuration `F`"), "{e}");
        let e = VggConfig::from_table(&table("blocks = [[\"conv4-64\"]]")).unwrap_err();
        assert!(e.to_string().contains("conv4-64"), "{e}");
        let e = VggConfig::from_table(&table("config = \"A\"\ninput = 100")).unwrap_err();
        assert!(e.to_string().contains("multiple of 32"), "{e}");
        let e = VggConfig::from_table(&table("config = \"A\"\nwidht = 2")).unwrap_err();
        assert!(e.to_string().contains("widht"), "{e}");
        let e = VggConfig::from_table(&table("config = \"A\"\nwidth = 0")).unwrap_err();
        assert!(e.to_string().contains("model.width"), "{e}");
        let e = VggConfig::from_table(&table("config = \"A\"\nfc = 0")).unwrap_err();
        assert!(e.to_string().contains("at least 1 unit"), "{e}");
        // E at width 4 with a million-unit FC layer: refused before anything is allocated.
        let e =
            VggConfig::from_table(&table("config = \"E\"\nwidth = 4\nfc = 1000000")).unwrap_err();
        assert!(e.to_string().contains("parameters"), "{e}");
        assert!(VggConfig::from_table(&table("config = \"E\"")).is_ok());
    }
}
