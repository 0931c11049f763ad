//! The pure parts of the paper's evaluation protocols (Simonyan & Zisserman, sec. 3.2 and 4):
//! where the crops go, which test scales Q a training scale S implies, how posteriors are
//! averaged over views and nets, and how the results are laid out against the paper's Tables
//! 3-5 (top-1 / top-5 counting itself is [`crate::net::accuracy`], shared with the trainer).
//!
//! # Why a module of its own
//!
//! Running the networks needs ONNX Runtime, a model file and images; none of that is needed to
//! decide *what* the protocol computes. Keeping the arithmetic here, free of ONNX, lets every
//! rule be tested on hand-made numbers in milliseconds (the crop grid, the test scales, the
//! equal weighting of fused posteriors), and leaves the runner that feeds the networks with
//! only the plumbing to get wrong.
//!
//! # The protocol, as this module encodes it
//!
//! - Test scales ([`test_scales`]): Q = S for a fixed training scale S, Q = (Smin + Smax) / 2
//!   for scale jitter; multi-scale uses {S - 32, S, S + 32}, or {Smin, (Smin + Smax) / 2, Smax}.
//! - [`Protocol::Dense`]: the whole rescaled image through the fully convolutional net, class
//!   scores averaged spatially, soft-max, averaged with the horizontal flip.
//! - [`Protocol::MultiCrop`]: a 5 x 5 grid of 224 crops ([`crop_grid`]) plus their flips, 50
//!   views per scale.
//! - [`Protocol::DenseMultiCrop`]: the two above averaged with equal weight
//!   ([`PosteriorSum::add_mean`]); fusion of several nets works the same way.
//! - Every view contributes a soft-max posterior; views are averaged ([`PosteriorSum`]); the
//!   averaged posterior is scored by the rank of the true class
//!   ([`rank_of`](crate::net::accuracy::rank_of), [`TopK`]).

use std::fmt;
use std::str::FromStr;

use crate::net::accuracy::TopK;

/// Which protocol.
///
/// Serialised in kebab-case (`centre`, `dense`, `multi-crop`), except the combination, which is
/// written `dense+multi-crop` like [`Protocol::name`] (`dense-multi-crop` is read too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// One centre crop per scale (the common torchvision protocol; not in the paper's tables).
    #[serde(alias = "center")]
    Centre,
    /// Dense evaluation of the whole image and its flip.
    Dense,
    /// 5 x 5 grid of crops and their flips.
    MultiCrop,
    /// Dense and multi-crop posteriors averaged with equal weight.
    #[serde(rename = "dense+multi-crop", alias = "dense-multi-crop")]
    DenseMultiCrop,
}

impl Protocol {
    /// All protocols, in the order of [`Protocol::name`]'s list of valid names.
    pub const ALL: [Protocol; 4] = [
        Protocol::Centre,
        Protocol::Dense,
        Protocol::MultiCrop,
        Protocol::DenseMultiCrop,
    ];

    /// The name used on the command line, in reports and in serialised form:
    /// `centre`, `dense`, `multi-crop` or `dense+multi-crop`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Centre => "centre",
            Protocol::Dense => "dense",
            Protocol::MultiCrop => "multi-crop",
            Protocol::DenseMultiCrop => "dense+multi-crop",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// Parses `centre` (or `center`), `dense`, `multi-crop`, `dense+multi-crop` (or
    /// `dense-multi-crop`), ignoring case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "centre" | "center" => Ok(Protocol::Centre),
            "dense" => Ok(Protocol::Dense),
            "multi-crop" => Ok(Protocol::MultiCrop),
            "dense+multi-crop" | "dense-multi-crop" => Ok(Protocol::DenseMultiCrop),
            _ => Err(format!(
                "unknown protocol `{s}` (valid: {})",
                Protocol::ALL.map(Protocol::name).join(", ")
            )),
        }
    }
}

/// Origins `(x, y)` of the paper's multi-crop grid: `grid` x `grid` crops of side `crop` spread
/// regularly over a `width` x `height` image. Along each axis the first crop starts at 0, the
/// last at `side - crop`, the others evenly spaced between, rounded to nearest (halves up).
/// Row-major: all x for the first y, then the next y. For `grid == 1` the single crop is the
/// centre crop ([`centre_crop`]).
///
/// The paper uses `grid = 5`, `crop = 224`: on a 256 x 256 image the origins are 0, 8, 16, 24,
/// 32 on both axes.
///
/// # Panics
///
/// If `crop` exceeds `width` or `height`, or `grid` is 0.
pub fn crop_grid(width: u32, height: u32, crop: u32, grid: u32) -> Vec<(u32, u32)> {
    assert!(grid > 0, "crop grid must have at least one crop per side");
    assert!(
        crop <= width && crop <= height,
        "crop {crop} does not fit in a {width}x{height} image"
    );
    if grid == 1 {
        return vec![centre_crop(width, height, crop)];
    }
    let steps = u64::from(grid - 1);
    let axis = |side: u32| -> Vec<u32> {
        let room = u64::from(side - crop);
        (0..=steps)
            // round(i * room / steps), halves up, exactly in integers
            .map(|i| ((2 * i * room + steps) / (2 * steps)) as u32)
            .collect()
    };
    let (xs, ys) = (axis(width), axis(height));
    ys.iter()
        .flat_map(|&y| xs.iter().map(move |&x| (x, y)))
        .collect()
}

/// The centre crop origin: `((width - crop) / 2, (height - crop) / 2)`, rounded down (the same
/// window as the loader's eval transform, `crate::data::augment::eval_sample`).
///
/// # Panics
///
/// If `crop` exceeds `width` or `height`.
pub fn centre_crop(width: u32, height: u32, crop: u32) -> (u32, u32) {
    assert!(
        crop <= width && crop <= height,
        "crop {crop} does not fit in a {width}x{height} image"
    );
    ((width - crop) / 2, (height - crop) / 2)
}

/// The training scale S of a net: fixed, or jittered per image over `[smin, smax]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrainScale {
    /// Fixed S (the paper: 256 or 384).
    Fixed(u32),
    /// S drawn per image from `[smin, smax]` (the paper: [256; 512]).
    Jitter(u32, u32),
}

impl fmt::Display for TrainScale {
    /// The paper's notation: `256`, `[256;512]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TrainScale::Fixed(s) => write!(f, "{s}"),
            TrainScale::Jitter(lo, hi) => write!(f, "[{lo};{hi}]"),
        }
    }
}

impl FromStr for TrainScale {
    type Err = String;

    /// Parses `256` as fixed, and `[256;512]`, `[256,512]` or `256-512` as jittered (spaces
    /// ignored). Errors on zero, non-numbers, or a range whose minimum exceeds its maximum.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let num = |t: &str| -> Result<u32, String> {
            match t.parse::<u32>() {
                Ok(0) => Err(format!("training scale `{s}`: a scale must be positive")),
                Ok(v) => Ok(v),
                Err(_) => Err(format!(
                    "training scale `{s}`: `{t}` is not a whole number \
                     (expected e.g. `256` or `[256;512]`)"
                )),
            }
        };
        let inner = compact
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(&compact);
        match inner.split_once([';', ',', '-']) {
            None => Ok(TrainScale::Fixed(num(inner)?)),
            Some((lo, hi)) => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if lo > hi {
                    return Err(format!("training scale `{s}`: minimum exceeds maximum"));
                }
                Ok(TrainScale::Jitter(lo, hi))
            }
        }
    }
}

/// Test scales Q by the paper's rule. Fixed S: single `[S]`, multi `[S-32, S, S+32]`. Jittered
/// `[smin, smax]`: single `[(smin+smax)/2]`, multi `[smin, (smin+smax)/2, smax]` (the middle
/// rounded down when the sum is odd).
///
/// # Panics
///
/// For a fixed S of 32 or less in multi-scale (S - 32 would not be a scale), or a jitter range
/// with `smin > smax`.
pub fn test_scales(train: TrainScale, multi: bool) -> Vec<u32> {
    match train {
        TrainScale::Fixed(s) if multi => {
            assert!(
                s > 32,
                "multi-scale test needs S > 32 (S - 32 is a test scale)"
            );
            vec![s - 32, s, s + 32]
        }
        TrainScale::Fixed(s) => vec![s],
        TrainScale::Jitter(lo, hi) => {
            assert!(
                lo <= hi,
                "scale jitter [{lo};{hi}]: minimum exceeds maximum"
            );
            let mid = ((u64::from(lo) + u64::from(hi)) / 2) as u32;
            if multi {
                vec![lo, mid, hi]
            } else {
                vec![mid]
            }
        }
    }
}

/// Parses a comma-separated list of test scales, `"256,384,512"`, keeping the given order
/// (duplicates are kept). Spaces around items are ignored. Errors on an empty list, an empty
/// item, zero, or anything that is not a whole number.
pub fn parse_scales(s: &str) -> Result<Vec<u32>, String> {
    if s.trim().is_empty() {
        return Err("no test scales given (expected e.g. `256,384,512`)".into());
    }
    s.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("test scales `{s}`: empty item between commas"));
            }
            match item.parse::<u32>() {
                Ok(0) => Err(format!(
                    "test scales `{s}`: a scale must be positive, not 0"
                )),
                Ok(v) => Ok(v),
                Err(_) => Err(format!(
                    "test scales `{s}`: `{item}` is not a whole number of pixels"
                )),
            }
        })
        .collect()
}

/// Writes test scales the way [`parse_scales`] reads them: `256,384,512`.
pub fn format_scales(scales: &[u32]) -> String {
    scales
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Accumulates posteriors (soft-max outputs) per image over views (crops, flips, scales, nets)
/// as a running sum (in `f64`) and a count; [`PosteriorSum::mean`] gives the average posterior
/// per image.
///
/// Used both for "average over views" ([`PosteriorSum::add`], one call per view) and for the
/// combinations the paper makes with equal weight per source, whatever the number of views
/// each source had: dense + multi-crop, and fusion of nets ([`PosteriorSum::add_mean`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PosteriorSum {
    classes: usize,
    sum: Vec<f64>,
    views: Vec<u32>,
}

impl PosteriorSum {
    /// An empty accumulator for `images` images of `classes` classes.
    pub fn new(images: usize, classes: usize) -> Self {
        PosteriorSum {
            classes,
            sum: vec![0.0; images * classes],
            views: vec![0; images],
        }
    }

    /// Adds one view's posterior of `image`. Non-finite values are accumulated as they are (a
    /// NaN makes the image's mean NaN, which [`TopK`] counts as wrong).
    ///
    /// # Panics
    ///
    /// If `posterior.len()` is not the number of classes, or `image` is out of range.
    pub fn add(&mut self, image: usize, posterior: &[f32]) {
        assert_eq!(
            posterior.len(),
            self.classes,
            "posterior of image {image} has {} classes, expected {}",
            posterior.len(),
            self.classes
        );
        let row = self.row_mut(image);
        for (s, &p) in row.iter_mut().zip(posterior) {
            *s += f64::from(p);
        }
        self.views[image] += 1;
    }

    /// Adds `other`'s per-image mean as one view of each image. This is how fusion (one
    /// accumulator per net) and dense + multi-crop (one per protocol) combine: the paper
    /// averages the posteriors of each net or protocol with equal weight. Images that `other`
    /// has no view of are skipped (compare [`PosteriorSum::views`] with the number of sources
    /// to detect them).
    ///
    /// # Panics
    ///
    /// If `other` has a different number of images or classes.
    pub fn add_mean(&mut self, other: &PosteriorSum) {
        assert_eq!(
            (self.images(), self.classes),
            (other.images(), other.classes),
            "posterior sums of different shapes (images, classes)"
        );
        for image in 0..other.images() {
            let n = other.views[image];
            if n == 0 {
                continue;
            }
            let src = other.row(image);
            let n = f64::from(n);
            for (s, &o) in self.row_mut(image).iter_mut().zip(src) {
                *s += o / n;
            }
            self.views[image] += 1;
        }
    }

    /// The average posterior of `image` over its views. An image with no views gives all NaN,
    /// so it can never be scored as correct.
    ///
    /// # Panics
    ///
    /// If `image` is out of range.
    pub fn mean(&self, image: usize) -> Vec<f32> {
        let n = self.views[image];
        if n == 0 {
            return vec![f32::NAN; self.classes];
        }
        let n = f64::from(n);
        self.row(image).iter().map(|&s| (s / n) as f32).collect()
    }

    /// How many views of `image` have been added.
    pub fn views(&self, image: usize) -> u32 {
        self.views[image]
    }

    /// Number of images.
    pub fn images(&self) -> usize {
        self.views.len()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    fn row(&self, image: usize) -> &[f64] {
        assert!(image < self.images(), "image {image} out of range");
        &self.sum[image * self.classes..(image + 1) * self.classes]
    }

    fn row_mut(&mut self, image: usize) -> &mut [f64] {
        assert!(image < self.images(), "image {image} out of range");
        &mut self.sum[image * self.classes..(image + 1) * self.classes]
    }
}

/// One row of a paper-shaped results table (errors as fractions in 0..=1).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ResultRow {
    /// ConvNet configuration, e.g. `D`, or `D+E` for a fusion.
    pub config: String,
    /// Training scale in the paper's notation: `256`, `[256;512]`.
    pub train_scale: String,
    /// Test scales: `256,384,512`.
    pub test_scales: String,
    /// [`Protocol::name`].
    pub protocol: String,
    /// Top-1 error, fraction.
    pub top1_error: f64,
    /// Top-5 error, fraction.
    pub top5_error: f64,
    /// Images scored.
    pub images: u64,
}

impl ResultRow {
    /// A row from a finished count.
    pub fn new(
        config: impl Into<String>,
        train: TrainScale,
        test_scales: &[u32],
        protocol: Protocol,
        topk: &TopK,
    ) -> Self {
        ResultRow {
            config: config.into(),
            train_scale: train.to_string(),
            test_scales: format_scales(test_scales),
            protocol: protocol.name().to_string(),
            top1_error: topk.top1_error(),
            top5_error: topk.top5_error(),
            images: topk.images,
        }
    }
}

/// Renders rows as an aligned text table like the paper's Tables 3-6, with the columns
/// `ConvNet config.`, `train (S)`, `test (Q)`, `protocol`, `top-1 val. error (%)`,
/// `top-5 val. error (%)`, `images`. Errors are percentages with one decimal. Text columns are
/// left-aligned, numbers right-aligned; a rule of dashes follows the header; every line ends
/// with a newline.
pub fn format_table(rows: &[ResultRow]) -> String {
    const HEADER: [&str; 7] = [
        "ConvNet config.",
        "train (S)",
        "test (Q)",
        "protocol",
        "top-1 val. error (%)",
        "top-5 val. error (%)",
        "images",
    ];
    const RIGHT: [bool; 7] = [false, false, false, false, true, true, true];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.config.clone(),
                r.train_scale.clone(),
                r.test_scales.clone(),
                r.protocol.clone(),
                format!("{:.1}", r.top1_error * 100.0),
                format!("{:.1}", r.top5_error * 100.0),
                r.images.to_string(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: [&str; 7]| -> String {
        let mut out = String::new();
        for (i, c) in row.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - c.chars().count());
            if RIGHT[i] {
                out.push_str(&pad);
                out.push_str(c);
            } else {
                out.push_str(c);
                if i + 1 < row.len() {
                    out.push_str(&pad);
                }
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(HEADER);
    let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in &cells {
        out.push_str(&line(std::array::from_fn(|i| row[i].as_str())));
    }
    out
}

/// One published figure: config, S, Q list, protocol, top-1 %, top-5 %.
type PaperRow = (&'static str, TrainScale, &'static [u32], Protocol, f64, f64);

const J: TrainScale = TrainScale::Jitter(256, 512);
const MULTI_Q: &[u32] = &[256, 384, 512];

/// The paper's figures (top-1 / top-5 val. error, %) as given in the project's reference:
/// Table 3 (single-scale, dense), Table 4 (multi-scale, dense; jittered D and E only) and
/// Table 5 (dense / multi-crop / both, D and E, plus the D+E fusion of Table 6).
const PAPER: &[PaperRow] = &[
    // Table 3: single test scale, dense.
    (
        "A",
        TrainScale::Fixed(256),
        &[256],
        Protocol::Dense,
        29.6,
        10.4,
    ),
    (
        "A-LRN",
        TrainScale::Fixed(256),
        &[256],
        Protocol::Dense,
        29.7,
        10.5,
    ),
    (
        "B",
        TrainScale::Fixed(256),
        &[256],
        Protocol::Dense,
        28.7,
        9.9,
    ),
    (
        "C",
        TrainScale::Fixed(256),
        &[256],
        Protocol::Dense,
        28.1,
        9.4,
    ),
    (
        "C",
        TrainScale::Fixed(384),
        &[384],
        Protocol::Dense,
        28.1,
        9.3,
    ),
    ("C", J, &[384], Protocol::Dense, 27.3, 8.8),
    (
        "D",
        TrainScale::Fixed(256),
        &[256],
        Protocol::Dense,
        27.0,
        8.8,
    ),
    (
        "D",
        TrainScale::Fixed(384),
        &[384],
        Protocol::Dense,
        26.8,
        8.7,
    ),
    ("D", J, &[384], Protocol::Dense, 25.6, 8.1),
    (
        "E",
        TrainScale::Fixed(256),
        &[256],
        Protocol::Dense,
        27.3,
        9.0,
    ),
    (
        "E",
        TrainScale::Fixed(384),
        &[384],
        Protocol::Dense,
        26.9,
        8.7,
    ),
    ("E", J, &[384], Protocol::Dense, 25.5, 8.0),
    // Tables 4 and 5: multi-scale {256, 384, 512}, jittered training.
    ("D", J, MULTI_Q, Protocol::Dense, 24.8, 7.5),
    ("E", J, MULTI_Q, Protocol::Dense, 24.8, 7.5),
    ("D", J, MULTI_Q, Protocol::MultiCrop, 24.6, 7.5),
    ("E", J, MULTI_Q, Protocol::MultiCrop, 24.6, 7.4),
    ("D", J, MULTI_Q, Protocol::DenseMultiCrop, 24.4, 7.2),
    ("E", J, MULTI_Q, Protocol::DenseMultiCrop, 24.4, 7.1),
    // Fusion of D and E, multi-scale, multi-crop & dense.
    ("D+E", J, MULTI_Q, Protocol::DenseMultiCrop, 23.7, 6.8),
];

/// The paper's own figure, `(top-1 %, top-5 %)`, for a row where there is one, else `None`.
///
/// `config` is a Table 1 name (`A`, `A-LRN`, `B`, `C`, `D`, `E`; case ignored) or a fusion
/// such as `D+E` (order ignored); `train_scale` is read by [`TrainScale::from_str`] (`256`,
/// `[256;512]`); `test_scales` by [`parse_scales`], compared as a set. Rows covered: Table 3
/// (single-scale dense), the jittered D and E rows of Table 4, Table 5, and the D+E fusion;
/// other multi-scale rows of Table 4 are not in the project's reference and give `None`, as
/// does [`Protocol::Centre`], which the paper does not report.
pub fn paper_figure(
    config: &str,
    train_scale: &str,
    test_scales: &str,
    protocol: Protocol,
) -> Option<(f64, f64)> {
    let norm_config = |c: &str| -> String {
        let mut parts: Vec<String> = c
            .split('+')
            .map(|p| p.trim().to_ascii_uppercase())
            .collect();
        parts.sort();
        parts.join("+")
    };
    let config = norm_config(config);
    let train: TrainScale = train_scale.parse().ok()?;
    let mut scales = parse_scales(test_scales).ok()?;
    scales.sort_unstable();
    scales.dedup();
    PAPER
        .iter()
        .find(|&&(c, s, q, p, _, _)| {
            norm_config(c) == config && s == train && q == scales.as_slice() && p == protocol
        })
        .map(|&(_, _, _, _, top1, top5)| (top1, top5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.name().parse::<Protocol>(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
            assert_eq!(serde_json::from_str::<Protocol>(&json).unwrap(), p);
        }
        assert_eq!("center".parse::<Protocol>(), Ok(Protocol::Centre));
        assert_eq!(" Dense ".parse::<Protocol>(), Ok(Protocol::Dense));
        let err = "crops".parse::<Protocol>().unwrap_err();
        assert!(err.contains("crops"), "{err}");
        for p in Protocol::ALL {
            assert!(err.contains(p.name()), "{err}");
        }
    }

    #[test]
    fn crop_grid_square_256() {
        let g = crop_grid(256, 256, 224, 5);
        assert_eq!(g.len(), 25);
        let xs: Vec<u32> = g[..5].iter().map(|o| o.0).collect();
        assert_eq!(xs, [0, 8, 16, 24, 32]);
        let ys: Vec<u32> = g.iter().step_by(5).map(|o| o.1).collect();
        assert_eq!(ys, [0, 8, 16, 24, 32]);
        // Row-major by y then x.
        assert_eq!(g[1], (8, 0));
        assert_eq!(g[5], (0, 8));
        assert_eq!(g[24], (32, 32));
    }

    #[test]
    fn crop_grid_wide_and_rounding() {
        let g = crop_grid(384, 256, 224, 5);
        let xs: Vec<u32> = g[..5].iter().map(|o| o.0).collect();
        assert_eq!(xs, [0, 40, 80, 120, 160]);
        let ys: Vec<u32> = g.iter().step_by(5).map(|o| o.1).collect();
        assert_eq!(ys, [0, 8, 16, 24, 32]);
        // room 10 over 4 steps: 2.5, 5, 7.5 round to nearest, halves up.
        let g = crop_grid(234, 224, 224, 5);
        let xs: Vec<u32> = g[..5].iter().map(|o| o.0).collect();
        assert_eq!(xs, [0, 3, 5, 8, 10]);
        assert!(g.iter().all(|o| o.1 == 0));
        // Crop equal to the image: every crop at the origin.
        assert!(crop_grid(224, 224, 224, 5).iter().all(|&o| o == (0, 0)));
    }

    #[test]
    fn crop_grid_one_is_centre() {
        assert_eq!(
            crop_grid(384, 257, 224, 1),
            vec![centre_crop(384, 257, 224)]
        );
        assert_eq!(centre_crop(384, 257, 224), (80, 16));
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn crop_grid_panics_when_crop_too_big() {
        crop_grid(300, 200, 224, 5);
    }

    #[test]
    fn scales_by_paper_rule() {
        assert_eq!(test_scales(TrainScale::Fixed(256), false), [256]);
        assert_eq!(test_scales(TrainScale::Fixed(256), true), [224, 256, 288]);
        assert_eq!(test_scales(TrainScale::Fixed(384), true), [352, 384, 416]);
        assert_eq!(
            test_scales(TrainScale::Jitter(256, 512), true),
            [256, 384, 512]
        );
        assert_eq!(test_scales(TrainScale::Jitter(256, 512), false), [384]);
    }

    #[test]
    fn train_scale_text() {
        assert_eq!(TrainScale::Jitter(256, 512).to_string(), "[256;512]");
        assert_eq!(TrainScale::Fixed(384).to_string(), "384");
        for s in ["[256;512]", "[256, 512]", "256-512"] {
            assert_eq!(s.parse(), Ok(TrainScale::Jitter(256, 512)), "{s}");
        }
        assert_eq!("256".parse(), Ok(TrainScale::Fixed(256)));
        assert!("[512;256]".parse::<TrainScale>().is_err());
        assert!("0".parse::<TrainScale>().is_err());
        assert!("big".parse::<TrainScale>().is_err());
    }

    #[test]
    fn parse_scales_reads_and_rejects() {
        assert_eq!(parse_scales("256,384,512"), Ok(vec![256, 384, 512]));
        assert_eq!(parse_scales(" 512, 256 "), Ok(vec![512, 256]));
        assert!(parse_scales("").unwrap_err().contains("no test scales"));
        assert!(parse_scales("  ").is_err());
        assert!(parse_scales("256,,384").unwrap_err().contains("empty"));
        assert!(parse_scales("256,0").unwrap_err().contains("positive"));
        let e = parse_scales("256,abc").unwrap_err();
        assert!(e.contains("`abc`"), "{e}");
        assert!(parse_scales("-256").is_err());
        assert_eq!(format_scales(&[256, 384, 512]), "256,384,512");
    }

    #[test]
    fn posterior_mean_of_views() {
        let mut s = PosteriorSum::new(2, 3);
        s.add(0, &[0.2, 0.3, 0.5]);
        s.add(0, &[0.6, 0.1, 0.3]);
        s.add(1, &[1.0, 0.0, 0.0]);
        assert_eq!(s.views(0), 2);
        assert_eq!(s.images(), 2);
        let m = s.mean(0);
        for (got, want) in m.iter().zip([0.4, 0.2, 0.4]) {
            assert!((got - want).abs() < 1e-6, "{m:?}");
        }
        assert_eq!(s.mean(1), [1.0, 0.0, 0.0]);
        assert!(PosteriorSum::new(1, 2).mean(0).iter().all(|v| v.is_nan()));
    }

    #[test]
    fn fusion_weights_each_source_equally() {
        // Net 1 has three views of the image, net 2 one: the fused mean is the mean of the two
        // means, not the mean of the four views.
        let mut a = PosteriorSum::new(1, 2);
        a.add(0, &[1.0, 0.0]);
        a.add(0, &[1.0, 0.0]);
        a.add(0, &[0.4, 0.6]);
        let mut b = PosteriorSum::new(1, 2);
        b.add(0, &[0.0, 1.0]);
        let mut fused = PosteriorSum::new(1, 2);
        fused.add_mean(&a);
        fused.add_mean(&b);
        assert_eq!(fused.views(0), 2);
        let (ma, mb, mf) = (a.mean(0), b.mean(0), fused.mean(0));
        for k in 0..2 {
            assert!((mf[k] - (ma[k] + mb[k]) / 2.0).abs() < 1e-6, "{mf:?}");
        }
        assert!((mf[0] - 0.4).abs() < 1e-6, "{mf:?}");
        // A source without views of an image adds nothing to it.
        let mut c = PosteriorSum::new(1, 2);
        c.add_mean(&PosteriorSum::new(1, 2));
        assert_eq!(c.views(0), 0);
    }

    #[test]
    #[should_panic(expected = "expected 3")]
    fn posterior_wrong_length_panics() {
        PosteriorSum::new(1, 3).add(0, &[0.5, 0.5]);
    }

    #[test]
    fn table_layout() {
        let t = TopK {
            images: 1000,
            top1_correct: 704,
            top5_correct: 896,
        };
        let rows = [
            ResultRow::new("A", TrainScale::Fixed(256), &[256], Protocol::Dense, &t),
            ResultRow::new(
                "D",
                TrainScale::Jitter(256, 512),
                &[256, 384, 512],
                Protocol::DenseMultiCrop,
                &TopK::default(),
            ),
        ];
        let s = format_table(&rows);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 4, "{s}");
        for h in [
            "ConvNet config.",
            "train (S)",
            "test (Q)",
            "protocol",
            "top-1 val. error (%)",
            "top-5 val. error (%)",
            "images",
        ] {
            assert!(lines[0].contains(h), "{s}");
        }
        assert!(
            lines[2].contains("29.6") && lines[2].contains("10.4"),
            "{s}"
        );
        assert!(
            lines[3].contains("[256;512]") && lines[3].contains("256,384,512"),
            "{s}"
        );
        assert!(lines[3].contains("dense+multi-crop"), "{s}");
        // Aligned: the numeric columns end at the same place on every line.
        assert_eq!(lines[0].len(), lines[2].len(), "{s}");
        assert_eq!(lines[2].len(), lines[3].len(), "{s}");
        assert_eq!(
            lines[0].find("top-1").unwrap() + "top-1 val. error (%)".len(),
            lines[2].find("29.6").unwrap() + 4,
            "{s}"
        );
    }

    #[test]
    fn paper_figures() {
        assert_eq!(
            paper_figure("D", "[256;512]", "256,384,512", Protocol::Dense),
            Some((24.8, 7.5))
        );
        assert_eq!(
            paper_figure("e", "[256;512]", "512,256,384", Protocol::DenseMultiCrop),
            Some((24.4, 7.1))
        );
        assert_eq!(
            paper_figure("A", "256", "256", Protocol::Dense),
            Some((29.6, 10.4))
        );
        assert_eq!(
            paper_figure("C", "[256;512]", "384", Protocol::Dense),
            Some((27.3, 8.8))
        );
        assert_eq!(
            paper_figure("E+D", "[256;512]", "256,384,512", Protocol::DenseMultiCrop),
            Some((23.7, 6.8))
        );
        assert_eq!(paper_figure("A", "256", "256", Protocol::Centre), None);
        assert_eq!(paper_figure("A", "384", "384", Protocol::Dense), None);
        assert_eq!(paper_figure("D", "256", "not", Protocol::Dense), None);
    }
}
