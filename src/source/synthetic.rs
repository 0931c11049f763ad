//! The embedded default dataset: a synthetic, ImageNet-laid-out image classification set.
//!
//! Why this exists: the toolkit's pipeline (prepare, shards, the augmentation loader, training,
//! evaluation) needs *some* image-classification data, and ImageNet is a download of well over
//! 100 GB that needs an account. This module draws a small stand-in from nothing but a seed, so
//! that `make demo`, the tests and CI run anywhere, offline, in seconds.
//!
//! **It is synthetic.** Every image is a procedurally drawn scene, not a photograph. Accuracy on
//! it says nothing about accuracy on ImageNet or on any real images; it is a plumbing and
//! smoke test, not a benchmark. The generated root says so too, in `SYNTHETIC.txt`, and every
//! class folder is named `synthetic-<shape>` so it can never be mistaken for a WordNet id.
//!
//! # What an image looks like
//!
//! Photo-like sizes (shortest side uniform in `[min_short_side, max_short_side]`, aspect ratio
//! 1:1, 4:3, 3:2, 16:9 or 5:4, landscape or portrait) and a scene of:
//!
//! * a textured background: a random palette driven by 2-3 sinusoidal gratings and two octaves
//!   of smooth lattice value noise;
//! * one large object whose **shape is the class** ([`SHAPES`]), drawn from an anti-aliased
//!   signed-distance function with random rotation, radius (15-45% of the shortest side) and
//!   position, a fill colour independent of the class, sometimes striped or graded fill, a soft
//!   drop shadow or an outline;
//! * 1-3 small distractor shapes of other kinds (5-12% of the shortest side), so the label is
//!   "the big object", not "any object";
//! * a linear lighting gradient and mild per-pixel noise.
//!
//! # Determinism
//!
//! Image `index` of split `split` is a pure function of `(spec, split, index)`: all of its
//! randomness comes from `Rng::new(spec.seed, Stream::Synthetic, split_id, index)` (train = 0,
//! val = 1), so the output does not depend on the number of threads. (Bit-identical on one
//! platform; the `f32` sine/cosine of another maths library may move a few pixel values.)
//! Index `i` has class `i % classes`, so every prefix of a split is class balanced.
//!
//! # Layout
//!
//! ```text
//! ROOT/SYNTHETIC.txt                                 what this is, and the spec
//! ROOT/train/synthetic-circle/synthetic-circle_000000.JPEG
//! ROOT/val/synthetic-square/synthetic-square_000001.JPEG
//! ROOT/.complete                                     the spec as JSON, written last
//! ```
//!
//! The number in a file name is the image's index within its split.

use std::f32::consts::{SQRT_2, TAU};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rng::{Rng, Stream};

/// Shape names, one per class, in class order. The folder of class `i` is
/// `format!("synthetic-{}", SHAPES[i])`.
pub const SHAPES: &[&str] = &[
    "circle",
    "square",
    "triangle",
    "ring",
    "cross",
    "star",
    "hexagon",
    "crescent",
    "bar",
    "semicircle",
    "heart",
    "pentagon",
];

/// The smallest allowed `min_short_side`: below this the shapes are a handful of pixels.
const MIN_SHORT_SIDE_FLOOR: u32 = 32;
/// The largest allowed `max_short_side`: keeps the long side (16:9) well inside JPEG's 65535
/// limit and one image's buffer small.
const MAX_SHORT_SIDE_CEIL: u32 = 4096;
/// Aspect ratios (long:short) drawn uniformly.
const ASPECTS: [(u32, u32); 5] = [(1, 1), (4, 3), (3, 2), (16, 9), (5, 4)];
/// The two splits, in split-id order.
const SPLITS: [&str; 2] = ["train", "val"];
/// Marker written last; holds the spec as JSON.
const COMPLETE: &str = ".complete";
/// The human-readable note written into the root.
const NOTE: &str = "SYNTHETIC.txt";
/// Prefix of every class folder and file.
const PREFIX: &str = "synthetic-";

/// How to generate the synthetic dataset (the `[synthetic]` table of a registry entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of classes, `1..=SHAPES.len()`; class `i` is shape `SHAPES[i]`.
    pub classes: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    /// Smallest shortest side, in pixels.
    pub min_short_side: u32,
    /// Largest shortest side, in pixels.
    pub max_short_side: u32,
    /// JPEG quality, 1..=100.
    pub jpeg_quality: u8,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            seed: 0,
            classes: 10,
            train_per_class: 120,
            val_per_class: 30,
            min_short_side: 160,
            max_short_side: 360,
            jpeg_quality: 90,
        }
    }
}

impl SyntheticSpec {
    /// Checks every field; the error names the field and why.
    pub fn validate(&self) -> Result<(), SyntheticError> {
        let invalid =
            |field: &'static str, reason: String| Err(SyntheticError::Invalid { field, reason });
        if self.classes == 0 || self.classes > SHAPES.len() {
            return invalid(
                "classes",
                format!(
                    "must be 1..={} (one per shape), got {}",
                    SHAPES.len(),
                    self.classes
                ),
            );
        }
        if self.train_per_class == 0 {
            return invalid("train_per_class", "must be at least 1".into());
        }
        if self.val_per_class == 0 {
            return invalid("val_per_class", "must be at least 1".into());
        }
        if self.min_short_side < MIN_SHORT_SIDE_FLOOR {
            return invalid(
                "min_short_side",
                format!(
                    "must be at least {MIN_SHORT_SIDE_FLOOR}, got {}",
                    self.min_short_side
                ),
            );
        }
        if self.max_short_side > MAX_SHORT_SIDE_CEIL {
            return invalid(
                "max_short_side",
                format!(
                    "must be at most {MAX_SHORT_SIDE_CEIL}, got {}",
                    self.max_short_side
                ),
            );
        }
        if self.min_short_side > self.max_short_side {
            return invalid(
                "min_short_side",
                format!(
                    "must not exceed max_short_side ({}), got {}",
                    self.max_short_side, self.min_short_side
                ),
            );
        }
        if self.jpeg_quality == 0 || self.jpeg_quality > 100 {
            return invalid(
                "jpeg_quality",
                format!("must be 1..=100, got {}", self.jpeg_quality),
            );
        }
        Ok(())
    }

    /// Number of images in `split` (0 = train, 1 = val).
    fn split_len(&self, split_id: usize) -> usize {
        let per_class = if split_id == 0 {
            self.train_per_class
        } else {
            self.val_per_class
        };
        self.classes * per_class
    }
}

/// What [`generate`] did.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateSummary {
    /// The dataset root (holds `train/` and `val/`).
    pub root: PathBuf,
    /// Number of JPEG images in the root (both splits).
    pub images: usize,
    /// Total size of those JPEG files, in bytes.
    pub bytes: u64,
    /// `true` when a complete set with the same spec was already there and nothing was written.
    pub reused: bool,
}

/// Why the synthetic dataset could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    /// A spec field is out of range.
    #[error("synthetic spec: `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Reading or writing the dataset root failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The JPEG encoder refused an image.
    #[error("cannot encode {path} as JPEG: {message}")]
    Encode { path: PathBuf, message: String },
    /// `train/` or `val/` of the root hold something other than synthetic class folders.
    #[error(
        "{path} holds `{entry}`, which is not a synthetic class folder; refusing to generate \
         synthetic images into a directory with other data (choose another root)"
    )]
    Foreign { path: PathBuf, entry: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SyntheticError + '_ {
    move |source| SyntheticError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn class_dir(class: usize) -> String {
    format!("{PREFIX}{}", SHAPES[class])
}

fn image_path(root: &Path, split_id: usize, class: usize, index: usize) -> PathBuf {
    let dir = class_dir(class);
    root.join(SPLITS[split_id])
        .join(&dir)
        .join(format!("{dir}_{index:06}.JPEG"))
}

/// All `(split_id, index)` pairs of the spec, train first.
fn plan(spec: &SyntheticSpec) -> Vec<(usize, usize)> {
    (0..SPLITS.len())
        .flat_map(|s| (0..spec.split_len(s)).map(move |i| (s, i)))
        .collect()
}

/// Writes `ROOT/train/synthetic-<shape>/synthetic-<shape>_<NNNNNN>.JPEG` and
/// `ROOT/val/synthetic-<shape>/...`, plus `ROOT/SYNTHETIC.txt` (what this is, the spec) and, last,
/// `ROOT/.complete` holding the spec as JSON.
///
/// If `ROOT/.complete` holds the same spec and every image is present, writes nothing and returns
/// `reused = true`. Otherwise regenerates in place: removes `.complete` and the old
/// `synthetic-*` class folders first, then writes every image (to a temporary name, renamed into
/// place) in parallel on the current rayon pool. Refuses ([`SyntheticError::Foreign`]) when
/// `train/` or `val/` hold anything that is not a synthetic class folder, so it never mixes
/// shapes into a real dataset.
pub fn generate(spec: &SyntheticSpec, root: &Path) -> Result<GenerateSummary, SyntheticError> {
    spec.validate()?;
    let jobs = plan(spec);
    if let Some(bytes) = existing(spec, root, &jobs)? {
        return Ok(GenerateSummary {
            root: root.to_path_buf(),
            images: jobs.len(),
            bytes,
            reused: true,
        });
    }
    clear(spec, root)?;
    write_atomic(&root.join(NOTE), note(spec).as_bytes())?;
    let bytes = jobs
        .par_iter()
        .map(|&(split_id, index)| write_image(spec, root, split_id, index))
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    let json = serde_json::to_string_pretty(spec).expect("a spec always serialises");
    write_atomic(&root.join(COMPLETE), format!("{json}\n").as_bytes())?;
    Ok(GenerateSummary {
        root: root.to_path_buf(),
        images: jobs.len(),
        bytes,
        reused: false,
    })
}

/// `Some(total JPEG bytes)` when the root holds a complete set made from `spec`.
fn existing(
    spec: &SyntheticSpec,
    root: &Path,
    jobs: &[(usize, usize)],
) -> Result<Option<u64>, SyntheticError> {
    let marker = root.join(COMPLETE);
    let text = match fs::read_to_string(&marker) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&marker)(e)),
    };
    match serde_json::from_str::<SyntheticSpec>(&text) {
        Ok(old) if old == *spec => {}
        _ => return Ok(None),
    }
    let mut bytes = 0;
    for &(split_id, index) in jobs {
        let path = image_path(root, split_id, index % spec.classes, index);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => bytes += m.len(),
            _ => {
                tracing::warn!(
                    "{} is marked complete but lacks {}; regenerating",
                    root.display(),
                    path.display()
                );
                return Ok(None);
            }
        }
    }
    Ok(Some(bytes))
}

/// Removes the marker and every old class folder, then creates the class folders of `spec`.
fn clear(spec: &SyntheticSpec, root: &Path) -> Result<(), SyntheticError> {
    // Check both splits before deleting anything.
    let mut stale = Vec::new();
    for split in SPLITS {
        let dir = root.join(split);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) {
                stale.push(entry.path());
            } else if !name.starts_with('.') {
                return Err(SyntheticError::Foreign {
                    path: dir,
                    entry: name,
                });
            }
        }
    }
    let marker = root.join(COMPLETE);
    match fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&marker)(e)),
    }
    for path in stale {
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_err(&path))?;
    }
    for split in SPLITS {
        for class in 0..spec.classes {
            let dir = root.join(split).join(class_dir(class));
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SyntheticError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Renders, encodes and writes one image; returns its size in bytes.
fn write_image(
    spec: &SyntheticSpec,
    root: &Path,
    split_id: usize,
    index: usize,
) -> Result<u64, SyntheticError> {
    let img = render_scene(spec, split_id, index);
    let path = image_path(root, split_id, img.class, index);
    let mut jpeg = Vec::with_capacity(img.rgb.len() / 6);
    jpeg_encoder::Encoder::new(&mut jpeg, spec.jpeg_quality)
        .encode(
            &img.rgb,
            img.width as u16,
            img.height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(|e| SyntheticError::Encode {
            path: path.clone(),
            message: e.to_string(),
        })?;
    write_atomic(&path, &jpeg)?;
    Ok(jpeg.len() as u64)
}

/// The text of `ROOT/SYNTHETIC.txt`.
fn note(spec: &SyntheticSpec) -> String {
    let classes: Vec<String> = (0..spec.classes).map(class_dir).collect();
    let json = serde_json::to_string_pretty(spec).expect("a spec always serialises");
    format!(
        "SYNTHETIC DATA - NOT IMAGENET, NOT PHOTOGRAPHS\n\
         \n\
         This directory was generated by the vgg toolkit (src/source/synthetic.rs) from a seed.\n\
         Every image is a procedurally drawn scene: a textured background, one large shape that\n\
         decides the class, 1-3 small distractor shapes of other kinds, lighting and noise.\n\
         It exists so the pipeline (prepare, shards, training, evaluation) runs anywhere without\n\
         downloading ImageNet. Accuracy on it says nothing about accuracy on real images.\n\
         \n\
         Layout (ImageNet-style): train/<class>/<class>_<NNNNNN>.JPEG and\n\
         val/<class>/<class>_<NNNNNN>.JPEG, where NNNNNN is the image's index within its split\n\
         and the class is index mod {n}.\n\
         Images: {train} train ({tpc} per class), {val} val ({vpc} per class).\n\
         Classes ({n}): {list}\n\
         \n\
         The same spec always produces the same images (bit for bit on one platform; another\n\
         maths library may move a few pixel values by one level). Spec:\n\
         {json}\n",
        n = spec.classes,
        train = spec.split_len(0),
        tpc = spec.train_per_class,
        val = spec.split_len(1),
        vpc = spec.val_per_class,
        list = classes.join(", "),
    )
}

/// Renders one image as RGB8 (row-major, `width * height * 3` bytes) for `(spec, split, index)`,
/// where `index` counts within the split. Returns `(width, height, rgb, class)`; the class is
/// `index % spec.classes`.
///
/// # Panics
///
/// If `split` is neither `"train"` nor `"val"`, or the spec is invalid (see
/// [`SyntheticSpec::validate`]).
pub fn render(spec: &SyntheticSpec, split: &str, index: usize) -> (u32, u32, Vec<u8>, usize) {
    let split_id = SPLITS
        .iter()
        .position(|&s| s == split)
        .unwrap_or_else(|| panic!("unknown split `{split}` (expected \"train\" or \"val\")"));
    let img = render_scene(spec, split_id, index);
    (img.width, img.height, img.rgb, img.class)
}

/// One rendered image, plus what the tests want to know about it.
struct Rendered {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
    class: usize,
    /// Sum of the main object's anti-aliased coverage over all pixels (its area in pixels).
    #[cfg_attr(not(test), allow(dead_code))]
    main_area: f64,
}

/// A sinusoidal grating, separable: sin(ax + by + p) = sin(ax)cos(by + p) + cos(ax)sin(by + p).
struct Grating {
    weight: f32,
    sin_x: Vec<f32>,
    cos_x: Vec<f32>,
    sin_y: Vec<f32>,
    cos_y: Vec<f32>,
}

impl Grating {
    fn new(rng: &mut Rng, w: usize, h: usize, short: f32) -> Self {
        let angle = rng.uniform(0.0, std::f64::consts::PI) as f32;
        // 1 to 12 cycles across the shortest side, log-uniform.
        let cycles = (rng.uniform(0.0, 12f64.ln())).exp() as f32;
        let phase = rng.uniform(0.0, std::f64::consts::TAU) as f32;
        let weight = rng.uniform(0.3, 1.0) as f32;
        let k = TAU * cycles / short;
        let (a, b) = (k * angle.cos(), k * angle.sin());
        let (sin_x, cos_x) = (0..w).map(|x| (a * (x as f32 + 0.5)).sin_cos()).unzip();
        let (sin_y, cos_y) = (0..h)
            .map(|y| (b * (y as f32 + 0.5) + phase).sin_cos())
            .unzip();
        Grating {
            weight,
            sin_x,
            cos_x,
            sin_y,
            cos_y,
        }
    }
}

/// One octave of lattice value noise: random values on a grid of `cell`-pixel cells,
/// interpolated bilinearly with smoothstep weights. Cell indices and weights are separable, so
/// they are tabulated per column and per row.
struct ValueNoise {
    amp: f32,
    grid: Vec<f32>,
    grid_w: usize,
    col: Vec<(usize, f32)>,
    row: Vec<(usize, f32)>,
}

impl ValueNoise {
    fn new(rng: &mut Rng, w: usize, h: usize, cell: f32, amp: f32) -> Self {
        let grid_w = (w as f32 / cell).ceil() as usize + 2;
        let grid_h = (h as f32 / cell).ceil() as usize + 2;
        let grid = (0..grid_w * grid_h).map(|_| rng.next_f32()).collect();
        // A random sub-cell offset so lattice lines do not line up with the image edges.
        let (ox, oy) = (rng.next_f32() * cell, rng.next_f32() * cell);
        let table = |n: usize, off: f32| -> Vec<(usize, f32)> {
            (0..n)
                .map(|i| {
                    let u = (i as f32 + 0.5 + off) / cell;
                    let c = u.floor();
                    let t = u - c;
                    (c as usize, t * t * (3.0 - 2.0 * t))
                })
                .collect()
        };
        ValueNoise {
            amp,
            grid,
            grid_w,
            col: table(w, ox),
            row: table(h, oy),
        }
    }

    /// Adds this octave's row `y` to `out`; `scratch` holds the lattice row interpolated in y.
    fn add_row(&self, y: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
        let (iy, ty) = self.row[y];
        let top = &self.grid[iy * self.grid_w..][..self.grid_w];
        let bottom = &self.grid[(iy + 1) * self.grid_w..][..self.grid_w];
        scratch.clear();
        scratch.extend(
            top.iter()
                .zip(bottom)
                .map(|(a, b)| (a + (b - a) * ty) * self.amp),
        );
        for (o, &(ix, tx)) in out.iter_mut().zip(&self.col) {
            let (a, b) = (scratch[ix], scratch[ix + 1]);
            *o += a + (b - a) * tx;
        }
    }
}

/// How an object's interior is painted.
enum Fill {
    Flat,
    /// Soft stripes of a second colour, in the object's own frame.
    Stripes {
        color: [f32; 3],
        freq: f32,
        cos: f32,
        sin: f32,
        phase: f32,
    },
    /// A linear blend to a second colour across the object.
    Gradient {
        color: [f32; 3],
        cos: f32,
        sin: f32,
    },
}

struct Shadow {
    dx: f32,
    dy: f32,
    soft: f32,
    opacity: f32,
}

/// One shape in the scene.
struct Object {
    kind: usize,
    cx: f32,
    cy: f32,
    /// Radius in pixels: the shape's unit is scaled by this.
    r: f32,
    cos: f32,
    sin: f32,
    color: [f32; 3],
    fill: Fill,
    /// Outline width in pixels and colour.
    outline: Option<(f32, [f32; 3])>,
    shadow: Option<Shadow>,
}

impl Object {
    /// Signed distance in pixels from the pixel centre `(px, py)` to the shape's edge.
    #[inline]
    fn distance(&self, px: f32, py: f32) -> f32 {
        let (dx, dy) = (px - self.cx, py - self.cy);
        let lx = (dx * self.cos + dy * self.sin) / self.r;
        let ly = (dy * self.cos - dx * self.sin) / self.r;
        sdf(self.kind, lx, ly) * self.r
    }

    /// Pixel span `[lo, hi)` within `ext` pixels of `centre`, clipped to `[0, n)`.
    fn span(centre: f32, ext: f32, n: usize) -> (usize, usize) {
        let clip = |v: f32| (v.max(0.0) as usize).min(n);
        (
            clip((centre - ext).floor()),
            clip((centre + ext).ceil() + 1.0),
        )
    }

    /// How far from the centre anything of this object (shape, outline) reaches, in pixels.
    fn reach(&self) -> f32 {
        // Every shape fits in a circle of radius 1.1 in its unit frame.
        1.15 * self.r + 2.0 + self.outline.map_or(0.0, |(width, _)| width)
    }

    /// Paints row `y` (`w` RGB pixels as `f32`) with the object's shadow, fill and outline;
    /// returns the summed fill coverage on that row.
    fn draw_row(&self, row: &mut [f32], w: usize, h: usize, y: usize) -> f64 {
        let py = y as f32 + 0.5;
        let reach = self.reach();
        if let Some(s) = &self.shadow {
            let (y0, y1) = Self::span(self.cy + s.dy, reach + s.soft, h);
            if (y0..y1).contains(&y) {
                let (x0, x1) = Self::span(self.cx + s.dx, reach + s.soft, w);
                for (x, p) in row.chunks_exact_mut(3).enumerate().take(x1).skip(x0) {
                    let d = self.distance(x as f32 + 0.5 - s.dx, py - s.dy);
                    let a = s.opacity * (0.5 - d / s.soft).clamp(0.0, 1.0);
                    for v in p.iter_mut() {
                        *v *= 1.0 - a;
                    }
                }
            }
        }
        let (y0, y1) = Self::span(self.cy, reach, h);
        if !(y0..y1).contains(&y) {
            return 0.0;
        }
        let (x0, x1) = Self::span(self.cx, reach, w);
        let mut area = 0.0f64;
        for (x, p) in row.chunks_exact_mut(3).enumerate().take(x1).skip(x0) {
            let px = x as f32 + 0.5;
            let d = self.distance(px, py);
            let a = (0.5 - d).clamp(0.0, 1.0);
            if a > 0.0 {
                area += f64::from(a);
                blend(p, self.fill_color(px, py), a);
            }
            if let Some((width, col)) = self.outline {
                let ao = (0.5 - (d.abs() - 0.5 * width)).clamp(0.0, 1.0);
                if ao > 0.0 {
                    blend(p, col, ao);
                }
            }
        }
        area
    }

    #[inline]
    fn fill_color(&self, px: f32, py: f32) -> [f32; 3] {
        match &self.fill {
            Fill::Flat => self.color,
            Fill::Stripes {
                color,
                freq,
                cos,
                sin,
                phase,
            } => {
                let u = ((px - self.cx) * cos + (py - self.cy) * sin) / self.r;
                let t = 0.5 + 0.5 * (u * freq + phase).sin();
                // Sharpen into stripes with soft edges.
                let t = ((t - 0.3) / 0.4).clamp(0.0, 1.0);
                mix(self.color, *color, t)
            }
            Fill::Gradient { color, cos, sin } => {
                let u = ((px - self.cx) * cos + (py - self.cy) * sin) / self.r;
                mix(self.color, *color, (0.5 + 0.5 * u).clamp(0.0, 1.0))
            }
        }
    }
}

#[inline]
fn to_u8(v: f32) -> u8 {
    // `as` saturates (and maps NaN to 0), so this clamps to 0..=255.
    (v * 255.0 + 0.5) as u8
}

#[inline]
fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

#[inline]
fn blend(p: &mut [f32], col: [f32; 3], a: f32) {
    for (v, c) in p.iter_mut().zip(col) {
        *v += (c - *v) * a;
    }
}

fn random_color(rng: &mut Rng) -> [f32; 3] {
    [rng.next_f32(), rng.next_f32(), rng.next_f32()]
}

fn color_distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// A random colour at least `min_dist` from `avoid` (up to 16 draws; the last is kept).
fn contrasting_color(rng: &mut Rng, avoid: [f32; 3], min_dist: f32) -> [f32; 3] {
    let mut c = random_color(rng);
    for _ in 0..15 {
        if color_distance(c, avoid) >= min_dist {
            break;
        }
        c = random_color(rng);
    }
    c
}

fn random_fill(rng: &mut Rng) -> Fill {
    let roll = rng.next_f64();
    if roll < 0.45 {
        Fill::Flat
    } else {
        let color = random_color(rng);
        let angle = rng.uniform(0.0, std::f64::consts::TAU) as f32;
        if roll < 0.72 {
            Fill::Stripes {
                color,
                freq: rng.uniform(6.0, 18.0) as f32,
                cos: angle.cos(),
                sin: angle.sin(),
                phase: rng.uniform(0.0, std::f64::consts::TAU) as f32,
            }
        } else {
            Fill::Gradient {
                color,
                cos: angle.cos(),
                sin: angle.sin(),
            }
        }
    }
}

/// Draws the whole scene of image `index` of split `split_id`.
fn render_scene(spec: &SyntheticSpec, split_id: usize, index: usize) -> Rendered {
    let mut rng = Rng::new(spec.seed, Stream::Synthetic, split_id as u64, index as u64);
    let class = index % spec.classes;

    // Size: shortest side, aspect ratio, orientation.
    let short = rng.range_inclusive(
        u64::from(spec.min_short_side),
        u64::from(spec.max_short_side),
    ) as u32;
    let (num, den) = ASPECTS[rng.below(ASPECTS.len() as u64) as usize];
    let long = (short * num + den / 2) / den;
    let (width, height) = if rng.bernoulli(0.5) {
        (short, long)
    } else {
        (long, short)
    };
    let (w, h) = (width as usize, height as usize);
    let s = short as f32;

    // Background: palette, gratings, value noise, lighting.
    let base = random_color(&mut rng);
    let tone_a = random_color(&mut rng);
    let tone_b = random_color(&mut rng);
    let grating_amp = rng.uniform(0.15, 0.6) as f32;
    let noise_amp = rng.uniform(0.2, 0.7) as f32;
    let n_gratings = rng.range_inclusive(2, 3) as usize;
    let gratings: Vec<Grating> = (0..n_gratings)
        .map(|_| Grating::new(&mut rng, w, h, s))
        .collect();
    let grating_norm = 1.0 / gratings.iter().map(|g| g.weight).sum::<f32>();
    let cell = s / rng.uniform(2.0, 5.0) as f32;
    let noise = [
        ValueNoise::new(&mut rng, w, h, cell, 0.65),
        ValueNoise::new(&mut rng, w, h, cell / 2.3, 0.35),
    ];
    let light_angle = rng.uniform(0.0, std::f64::consts::TAU) as f32;
    let light_strength = rng.uniform(0.0, 0.35) as f32;
    let exposure = rng.uniform(0.8, 1.15) as f32;
    let pixel_noise = rng.uniform(1.5, 6.0) as f32 / 255.0;
    let bg_mean = mix(
        mix(base, tone_a, 0.5 * grating_amp),
        tone_b,
        0.5 * noise_amp,
    );

    // The main object: its shape is the class.
    let r = rng.uniform(0.15, 0.45) as f32 * s;
    let margin = 0.85 * r;
    let cx = rng.uniform(f64::from(margin), f64::from(width as f32 - margin)) as f32;
    let cy = rng.uniform(f64::from(margin), f64::from(height as f32 - margin)) as f32;
    let main = random_object(&mut rng, class, cx, cy, r, bg_mean, s, true);

    // Distractors: other kinds, small, preferably away from the main object.
    let n_distractors = rng.range_inclusive(1, 3) as usize;
    let mut distractors = Vec::with_capacity(n_distractors);
    for _ in 0..n_distractors {
        let other = rng.below(SHAPES.len() as u64 - 1) as usize;
        let kind = if other >= class { other + 1 } else { other };
        let dr = rng.uniform(0.05, 0.12) as f32 * s;
        let (mut dx, mut dy) = (0.0, 0.0);
        for _ in 0..12 {
            dx = rng.uniform(f64::from(dr), f64::from(width as f32 - dr)) as f32;
            dy = rng.uniform(f64::from(dr), f64::from(height as f32 - dr)) as f32;
            if ((dx - cx).powi(2) + (dy - cy).powi(2)).sqrt() > 1.1 * r + dr {
                break;
            }
        }
        distractors.push(random_object(&mut rng, kind, dx, dy, dr, bg_mean, s, false));
    }

    // Paint row by row into one f32 row: background, objects (the main one first, distractors
    // over it where they overlap), then lighting and per-pixel noise on the way out to RGB8.
    let mut rgb = vec![0u8; w * h * 3];
    let mut row = vec![0f32; w * 3];
    let d_a = [
        tone_a[0] - base[0],
        tone_a[1] - base[1],
        tone_a[2] - base[2],
    ];
    let d_b = [
        tone_b[0] - base[0],
        tone_b[1] - base[1],
        tone_b[2] - base[2],
    ];
    let (lc, ls) = (light_angle.cos(), light_angle.sin());
    let half = 0.5 * width.max(height) as f32;
    let light_x: Vec<f32> = (0..w)
        .map(|x| light_strength * (x as f32 + 0.5 - 0.5 * width as f32) * lc / half)
        .collect();
    let light_y: Vec<f32> = (0..h)
        .map(|y| light_strength * (y as f32 + 0.5 - 0.5 * height as f32) * ls / half)
        .collect();
    const UNIT21: f32 = 1.0 / (1u32 << 21) as f32;
    let mut main_area = 0.0;
    let mut tone_a_row = vec![0f32; w];
    let mut tone_b_row = vec![0f32; w];
    let mut gain = vec![0f32; w];
    let mut scratch = Vec::new();
    for (y, out) in rgb.chunks_exact_mut(w * 3).enumerate() {
        // Background, one separable term at a time over the whole row.
        tone_a_row.fill(0.0);
        for gr in &gratings {
            let (cy, sy) = (gr.weight * gr.cos_y[y], gr.weight * gr.sin_y[y]);
            for ((t, sx), cx) in tone_a_row.iter_mut().zip(&gr.sin_x).zip(&gr.cos_x) {
                *t += sx * cy + cx * sy;
            }
        }
        tone_b_row.fill(0.0);
        for octave in &noise {
            octave.add_row(y, &mut tone_b_row, &mut scratch);
        }
        for ((p, ta), tb) in row.chunks_exact_mut(3).zip(&tone_a_row).zip(&tone_b_row) {
            let ta = grating_amp * (0.5 + 0.5 * ta * grating_norm);
            let tb = noise_amp * tb;
            for (c, v) in p.iter_mut().enumerate() {
                *v = base[c] + d_a[c] * ta + d_b[c] * tb;
            }
        }
        main_area += main.draw_row(&mut row, w, h, y);
        for d in &distractors {
            d.draw_row(&mut row, w, h, y);
        }
        let ly = exposure * (1.0 + light_y[y]);
        for (g, lx) in gain.iter_mut().zip(&light_x) {
            *g = ly + exposure * lx;
        }
        for ((q, p), g) in out.chunks_exact_mut(3).zip(row.chunks_exact(3)).zip(&gain) {
            let bits = rng.next_u64();
            for (c, (o, v)) in q.iter_mut().zip(p).enumerate() {
                let u = ((bits >> (21 * c)) & 0x1F_FFFF) as f32 * UNIT21;
                *o = to_u8(v * g + (2.0 * u - 1.0) * pixel_noise);
            }
        }
    }

    Rendered {
        width,
        height,
        rgb,
        class,
        main_area,
    }
}

/// Draws the looks of one object of shape `kind` at `(cx, cy)` with radius `r`.
#[allow(clippy::too_many_arguments)]
fn random_object(
    rng: &mut Rng,
    kind: usize,
    cx: f32,
    cy: f32,
    r: f32,
    background: [f32; 3],
    short: f32,
    main: bool,
) -> Object {
    let angle = rng.uniform(0.0, std::f64::consts::TAU) as f32;
    let color = contrasting_color(rng, background, if main { 0.3 } else { 0.2 });
    let fill = if main { random_fill(rng) } else { Fill::Flat };
    let outline = if rng.bernoulli(if main { 0.3 } else { 0.15 }) {
        let width = rng.uniform(1.0, 1.0 + 0.012 * f64::from(short)) as f32;
        let col = if rng.bernoulli(0.5) {
            let v = rng.uniform(0.0, 0.2) as f32;
            [v, v, v]
        } else {
            random_color(rng)
        };
        Some((width, col))
    } else {
        None
    };
    let shadow = if main && rng.bernoulli(0.35) {
        let dir = rng.uniform(0.0, std::f64::consts::TAU) as f32;
        let off = rng.uniform(0.01, 0.04) as f32 * short;
        Some(Shadow {
            dx: off * dir.cos(),
            dy: off * dir.sin(),
            soft: rng.uniform(0.01, 0.05) as f32 * short + 1.0,
            opacity: rng.uniform(0.3, 0.6) as f32,
        })
    } else {
        None
    };
    Object {
        kind,
        cx,
        cy,
        r,
        cos: angle.cos(),
        sin: angle.sin(),
        color,
        fill,
        outline,
        shadow,
    }
}

// Signed-distance functions in a unit frame: every shape fits in a circle of radius ~1.1.
// Negative inside. Exact ones follow Inigo Quilez's catalogue of 2D distance functions; unions
// and differences (cross, crescent, semicircle) are exact outside and close enough inside for
// one pixel of anti-aliasing.

#[inline]
fn len(x: f32, y: f32) -> f32 {
    (x * x + y * y).sqrt()
}

/// The shape `kind` (an index into [`SHAPES`]) at `(x, y)` in its unit frame.
#[inline]
fn sdf(kind: usize, x: f32, y: f32) -> f32 {
    match kind {
        0 => len(x, y) - 1.0,
        1 => sd_box(x, y, 0.75, 0.75),
        2 => sd_triangle(x, y, 0.866_025_4),
        3 => (len(x, y) - 0.72).abs() - 0.28,
        4 => sd_box(x, y, 1.0, 0.3).min(sd_box(x, y, 0.3, 1.0)),
        5 => sd_star5(x, y, 1.0, 0.45),
        6 => sd_hexagon(x, y, 0.866_025_4),
        7 => (len(x, y) - 1.0).max(0.8 - len(x - 0.5, y)),
        8 => sd_box(x, y, 1.0, 0.28),
        9 => (len(x, y - 0.4) - 1.0).max(y - 0.4),
        10 => {
            const S: f32 = 1.6;
            sd_heart(x / S, 0.55 - y / S) * S
        }
        11 => sd_pentagon(x, y, 0.809_017),
        _ => unreachable!("shape {kind} out of range"),
    }
}

#[inline]
fn sd_box(x: f32, y: f32, bx: f32, by: f32) -> f32 {
    let (dx, dy) = (x.abs() - bx, y.abs() - by);
    len(dx.max(0.0), dy.max(0.0)) + dx.max(dy).min(0.0)
}

/// Equilateral triangle with half side `r`, centred on its centroid.
#[inline]
fn sd_triangle(x: f32, y: f32, r: f32) -> f32 {
    const K: f32 = 1.732_050_8;
    let (mut x, mut y) = (x.abs() - r, y + r / K);
    if x + K * y > 0.0 {
        (x, y) = ((x - K * y) / 2.0, (-K * x - y) / 2.0);
    }
    x -= x.clamp(-2.0 * r, 0.0);
    -len(x, y) * y.signum()
}

/// Five-pointed star, outer radius `r`, inner radius factor `rf`.
#[inline]
fn sd_star5(x: f32, y: f32, r: f32, rf: f32) -> f32 {
    const K1: (f32, f32) = (0.809_017, -0.587_785_25);
    const K2: (f32, f32) = (-K1.0, K1.1);
    let (mut x, mut y) = (x.abs(), y);
    let d1 = 2.0 * (K1.0 * x + K1.1 * y).max(0.0);
    x -= d1 * K1.0;
    y -= d1 * K1.1;
    let d2 = 2.0 * (K2.0 * x + K2.1 * y).max(0.0);
    x -= d2 * K2.0;
    y -= d2 * K2.1;
    x = x.abs();
    y -= r;
    let (bx, by) = (-rf * K1.1, rf * K1.0 - 1.0);
    let h = ((x * bx + y * by) / (bx * bx + by * by)).clamp(0.0, r);
    len(x - bx * h, y - by * h) * (y * bx - x * by).signum()
}

/// Regular hexagon with inradius `r`.
#[inline]
fn sd_hexagon(x: f32, y: f32, r: f32) -> f32 {
    const K: (f32, f32, f32) = (-0.866_025_4, 0.5, 0.577_350_3);
    let (mut x, mut y) = (x.abs(), y.abs());
    let d = 2.0 * (K.0 * x + K.1 * y).min(0.0);
    x -= d * K.0;
    y -= d * K.1;
    x -= x.clamp(-K.2 * r, K.2 * r);
    y -= r;
    len(x, y) * y.signum()
}

/// Regular pentagon with inradius `r`.
#[inline]
fn sd_pentagon(x: f32, y: f32, r: f32) -> f32 {
    const K: (f32, f32, f32) = (0.809_017, 0.587_785_25, 0.726_542_5);
    let (mut x, mut y) = (x.abs(), y);
    let d1 = 2.0 * (-K.0 * x + K.1 * y).min(0.0);
    x += d1 * K.0;
    y -= d1 * K.1;
    let d2 = 2.0 * (K.0 * x + K.1 * y).min(0.0);
    x -= d2 * K.0;
    y -= d2 * K.1;
    x -= x.clamp(-r * K.2, r * K.2);
    y -= r;
    len(x, y) * y.signum()
}

/// Heart spanning y in [0, 1.1] (y up), x in [-0.6, 0.6].
#[inline]
fn sd_heart(x: f32, y: f32) -> f32 {
    let x = x.abs();
    if x + y > 1.0 {
        len(x - 0.25, y - 0.75) - SQRT_2 / 4.0
    } else {
        let m = 0.5 * (x + y).max(0.0);
        let a = x * x + (y - 1.0) * (y - 1.0);
        let b = (x - m) * (x - m) + (y - m) * (y - m);
        a.min(b).sqrt() * (x - y).signum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn tiny() -> SyntheticSpec {
        SyntheticSpec {
            seed: 7,
            classes: 3,
            train_per_class: 2,
            val_per_class: 1,
            min_short_side: 40,
            max_short_side: 72,
            jpeg_quality: 85,
        }
    }

    /// Every file under `root`, relative, with `/` separators.
    fn files(root: &Path) -> BTreeSet<String> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else {
                    let rel = p.strip_prefix(root).unwrap();
                    out.insert(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(root, root, &mut out);
        out
    }

    #[test]
    fn rendering_is_a_pure_function_of_spec_split_and_index() {
        let spec = tiny();
        let a = render(&spec, "train", 4);
        assert_eq!(a, render(&spec, "train", 4));
        assert_eq!(a.2.len(), (a.0 * a.1 * 3) as usize);
        assert_ne!(a.2, render(&spec, "train", 5).2);
        assert_ne!(a.2, render(&spec, "val", 4).2);
        let other_seed = SyntheticSpec { seed: 8, ..tiny() };
        assert_ne!(a.2, render(&other_seed, "train", 4).2);
    }

    #[test]
    fn classes_interleave_and_sizes_follow_the_spec() {
        let spec = SyntheticSpec {
            classes: 4,
            min_short_side: 48,
            max_short_side: 64,
            ..tiny()
        };
        let mut shapes = BTreeSet::new();
        let mut portrait = false;
        let mut landscape = false;
        for i in 0..40 {
            let (w, h, rgb, class) = render(&spec, "train", i);
            assert_eq!(class, i % 4);
            assert_eq!(rgb.len(), (w * h * 3) as usize);
            let (short, long) = (w.min(h), w.max(h));
            assert!((48..=64).contains(&short), "{w}x{h}");
            assert!(long * 9 <= short * 16 + 9, "{w}x{h}: wider than 16:9");
            portrait |= h > w;
            landscape |= w > h;
            shapes.insert((w, h));
        }
        assert!(portrait && landscape);
        assert!(shapes.len() > 5, "sizes barely vary: {shapes:?}");
    }

    #[test]
    fn validate_rejects_impossible_specs() {
        assert!(SyntheticSpec::default().validate().is_ok());
        assert!(tiny().validate().is_ok());
        let bad = [
            (
                "classes",
                SyntheticSpec {
                    classes: 0,
                    ..tiny()
                },
            ),
            (
                "classes",
                SyntheticSpec {
                    classes: SHAPES.len() + 1,
                    ..tiny()
                },
            ),
            (
                "min_short_side",
                SyntheticSpec {
                    min_short_side: 80,
                    max_short_side: 79,
                    ..tiny()
                },
            ),
            (
                "jpeg_quality",
                SyntheticSpec {
                    jpeg_quality: 0,
                    ..tiny()
                },
            ),
            (
                "jpeg_quality",
                SyntheticSpec {
                    jpeg_quality: 101,
                    ..tiny()
                },
            ),
            (
                "min_short_side",
                SyntheticSpec {
                    min_short_side: 31,
                    ..tiny()
                },
            ),
            (
                "max_short_side",
                SyntheticSpec {
                    max_short_side: MAX_SHORT_SIDE_CEIL + 1,
                    ..tiny()
                },
            ),
            (
                "train_per_class",
                SyntheticSpec {
                    train_per_class: 0,
                    ..tiny()
                },
            ),
            (
                "val_per_class",
                SyntheticSpec {
                    val_per_class: 0,
                    ..tiny()
                },
            ),
        ];
        for (field, spec) in bad {
            match spec.validate() {
                Err(SyntheticError::Invalid { field: f, .. }) => assert_eq!(f, field, "{spec:?}"),
                other => panic!("{spec:?}: expected Invalid({field}), got {other:?}"),
            }
        }
        assert!(SyntheticSpec {
            classes: SHAPES.len(),
            min_short_side: 32,
            max_short_side: 32,
            jpeg_quality: 100,
            ..tiny()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn spec_reads_from_partial_json_and_rejects_unknown_keys() {
        let spec: SyntheticSpec = serde_json::from_str(r#"{"seed": 3}"#).unwrap();
        assert_eq!(
            spec,
            SyntheticSpec {
                seed: 3,
                ..Default::default()
            }
        );
        assert!(serde_json::from_str::<SyntheticSpec>(r#"{"colours": 3}"#).is_err());
    }

    #[test]
    fn generate_writes_the_layout_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("synth");
        let spec = tiny();
        let summary = generate(&spec, &root).unwrap();
        assert!(!summary.reused);
        assert_eq!(summary.images, 9);

        let mut expected: BTreeSet<String> = [".complete", "SYNTHETIC.txt"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for i in 0..6 {
            let s = SHAPES[i % 3];
            expected.insert(format!("train/synthetic-{s}/synthetic-{s}_{i:06}.JPEG"));
        }
        for i in 0..3 {
            let s = SHAPES[i % 3];
            expected.insert(format!("val/synthetic-{s}/synthetic-{s}_{i:06}.JPEG"));
        }
        assert_eq!(files(&root), expected);

        let mut bytes = 0;
        for (split, n) in [("train", 6), ("val", 3)] {
            for i in 0..n {
                let (w, h, _, class) = render(&spec, split, i);
                let s = SHAPES[class];
                let path = root
                    .join(split)
                    .join(format!("synthetic-{s}"))
                    .join(format!("synthetic-{s}_{i:06}.JPEG"));
                let data = fs::read(&path).unwrap();
                bytes += data.len() as u64;
                let img = image::load_from_memory(&data).unwrap();
                assert_eq!((img.width(), img.height()), (w, h), "{}", path.display());
                let short = w.min(h);
                assert!((spec.min_short_side..=spec.max_short_side).contains(&short));
            }
        }
        assert_eq!(summary.bytes, bytes);

        let marker: SyntheticSpec =
            serde_json::from_str(&fs::read_to_string(root.join(".complete")).unwrap()).unwrap();
        assert_eq!(marker, spec);
        let note = fs::read_to_string(root.join("SYNTHETIC.txt")).unwrap();
        assert!(note.contains("SYNTHETIC") && note.contains("NOT IMAGENET"));
        assert!(note.contains("\"seed\": 7"));

        // Same spec: nothing is rewritten.
        let probe = root.join("train/synthetic-circle/synthetic-circle_000000.JPEG");
        let before = fs::metadata(&probe).unwrap().modified().unwrap();
        let marker_before = fs::metadata(root.join(".complete"))
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = generate(&spec, &root).unwrap();
        assert!(again.reused);
        assert_eq!((again.images, again.bytes), (summary.images, summary.bytes));
        assert_eq!(fs::metadata(&probe).unwrap().modified().unwrap(), before);
        assert_eq!(
            fs::metadata(root.join(".complete"))
                .unwrap()
                .modified()
                .unwrap(),
            marker_before
        );

        // A changed spec regenerates in place and drops the old classes.
        let old = fs::read(&probe).unwrap();
        let changed = SyntheticSpec {
            seed: 8,
            classes: 2,
            ..tiny()
        };
        let third = generate(&changed, &root).unwrap();
        assert!(!third.reused);
        assert_eq!(third.images, 6);
        assert_ne!(fs::read(&probe).unwrap(), old);
        assert!(!root.join("train/synthetic-triangle").exists());
        assert!(!root.join("val/synthetic-triangle").exists());
        assert_eq!(files(&root).len(), 6 + 2);
        let marker: SyntheticSpec =
            serde_json::from_str(&fs::read_to_string(root.join(".complete")).unwrap()).unwrap();
        assert_eq!(marker, changed);
    }

    #[test]
    fn generate_repairs_a_set_missing_its_marker_or_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let spec = tiny();
        generate(&spec, root).unwrap();
        let all = files(root);

        // An image deleted after completion: regenerated.
        let victim = root.join("val/synthetic-square/synthetic-square_000001.JPEG");
        fs::remove_file(&victim).unwrap();
        assert!(!generate(&spec, root).unwrap().reused);
        assert!(victim.exists());

        // No marker (an interrupted run), with a stray leftover: regenerated, leftover gone.
        fs::remove_file(root.join(".complete")).unwrap();
        let stray = root.join("train/synthetic-circle/synthetic-circle_000099.JPEG.tmp");
        fs::write(&stray, b"partial").unwrap();
        assert!(!generate(&spec, root).unwrap().reused);
        assert!(!stray.exists());
        assert_eq!(files(root), all);
        assert!(generate(&spec, root).unwrap().reused);
    }

    #[test]
    fn generate_refuses_to_mix_into_foreign_data() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let foreign = root.join("train/n01440764");
        fs::create_dir_all(&foreign).unwrap();
        fs::write(foreign.join("n01440764_10026.JPEG"), b"real").unwrap();
        match generate(&tiny(), root) {
            Err(SyntheticError::Foreign { entry, .. }) => assert_eq!(entry, "n01440764"),
            other => panic!("expected Foreign, got {other:?}"),
        }
        assert!(foreign.join("n01440764_10026.JPEG").exists());
        assert!(!root.join(".complete").exists());
    }

    #[test]
    fn output_does_not_depend_on_the_thread_count() {
        let spec = tiny();
        let mut sets = Vec::new();
        for threads in [1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| generate(&spec, dir.path())).unwrap();
            let contents: Vec<(String, Vec<u8>)> = files(dir.path())
                .into_iter()
                .map(|f| {
                    let data = fs::read(dir.path().join(&f)).unwrap();
                    (f, data)
                })
                .collect();
            sets.push(contents);
        }
        assert_eq!(sets[0], sets[1]);
    }

    /// Area of shape `kind` in its unit frame, by sampling a grid.
    fn unit_area(kind: usize) -> f64 {
        let n = 400;
        let step = 2.4 / n as f32;
        let mut inside = 0usize;
        for j in 0..n {
            for i in 0..n {
                let x = -1.2 + (i as f32 + 0.5) * step;
                let y = -1.2 + (j as f32 + 0.5) * step;
                inside += usize::from(sdf(kind, x, y) < 0.0);
            }
        }
        inside as f64 * f64::from(step * step)
    }

    #[test]
    fn distance_functions_have_the_right_areas_and_extent() {
        use std::f64::consts::PI;
        let known = [
            ("circle", PI),
            ("square", 1.5 * 1.5),
            ("triangle", 3.0 * 3f64.sqrt() / 4.0),
            ("ring", PI * (1.0 - 0.44 * 0.44)),
            ("cross", 2.0 * 2.0 * 0.6 - 0.6 * 0.6),
            ("hexagon", 3.0 * 3f64.sqrt() / 2.0),
            ("bar", 2.0 * 0.56),
            ("semicircle", PI / 2.0),
            ("pentagon", 2.5 * (72f64).to_radians().sin()),
        ];
        for (name, area) in known {
            let kind = SHAPES.iter().position(|&s| s == name).unwrap();
            let got = unit_area(kind);
            assert!(
                (got - area).abs() < 0.02 * area,
                "{name}: area {got}, expected {area}"
            );
        }
        for (kind, name) in SHAPES.iter().enumerate() {
            let area = unit_area(kind);
            assert!((0.7..=3.2).contains(&area), "{name}: area {area}");
            // Nothing reaches outside radius 1.1 (the drawing bounds assume 1.15).
            for k in 0..360 {
                let a = (k as f32).to_radians();
                let d = sdf(kind, 1.1 * a.cos(), 1.1 * a.sin());
                assert!(d > 0.0, "{name} reaches radius 1.1 at {k} degrees");
            }
            // The distance is a distance: about one unit per unit step, far from the shape.
            let far = sdf(kind, 3.0, 0.0);
            assert!((1.8..=3.0).contains(&far), "{name}: sdf(3, 0) = {far}");
        }
    }

    /// Masks of two shapes scaled to equal area (`sa`, `sb`: square roots of their unit areas):
    /// their best overlap over rotations.
    fn best_iou(a: usize, b: usize, sa: f32, sb: f32) -> f64 {
        let n = 96;
        let step = 4.0 / n as f32;
        let mut best = 0.0f64;
        for k in 0..72 {
            let t = (k as f32 * 5.0).to_radians();
            let (c, s) = (t.cos(), t.sin());
            let (mut inter, mut union) = (0u32, 0u32);
            for j in 0..n {
                for i in 0..n {
                    let x = -2.0 + (i as f32 + 0.5) * step;
                    let y = -2.0 + (j as f32 + 0.5) * step;
                    let ina = sdf(a, x * sa, y * sa) < 0.0;
                    let inb = sdf(b, (x * c + y * s) * sb, (y * c - x * s) * sb) < 0.0;
                    inter += u32::from(ina && inb);
                    union += u32::from(ina || inb);
                }
            }
            best = best.max(f64::from(inter) / f64::from(union));
        }
        best
    }

    #[test]
    fn classes_are_separable_in_principle() {
        // Shapes differ from each other even after matching area and the best rotation.
        let scale: Vec<f32> = (0..SHAPES.len())
            .map(|k| unit_area(k).sqrt() as f32)
            .collect();
        for a in 0..SHAPES.len() {
            for b in a + 1..SHAPES.len() {
                let iou = best_iou(a, b, scale[a], scale[b]);
                assert!(iou < 0.95, "{} vs {}: IoU {iou:.3}", SHAPES[a], SHAPES[b]);
            }
        }
        // And the main object is big in its image: a clear share of the pixels, never a speck.
        let spec = SyntheticSpec {
            classes: SHAPES.len(),
            min_short_side: 48,
            max_short_side: 96,
            ..tiny()
        };
        let mut total = 0.0;
        let n = 60;
        for i in 0..n {
            let img = render_scene(&spec, 0, i);
            let frac = img.main_area / f64::from(img.width * img.height);
            assert!(
                frac > 0.005 && frac < 0.7,
                "image {i}: main object covers {frac:.4}"
            );
            total += frac;
        }
        let mean = total / n as f64;
        assert!((0.03..0.3).contains(&mean), "mean coverage {mean:.3}");
    }

    /// Timing of the default spec; run with
    /// `cargo test --release --lib source::synthetic -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn time_the_default_spec() {
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        let s = generate(&SyntheticSpec::default(), dir.path()).unwrap();
        let first = t.elapsed();
        let t = std::time::Instant::now();
        assert!(
            generate(&SyntheticSpec::default(), dir.path())
                .unwrap()
                .reused
        );
        eprintln!(
            "default spec: {} images, {:.1} MB in {:.2?} on {} threads (reuse check {:.2?})",
            s.images,
            s.bytes as f64 / 1e6,
            first,
            rayon::current_num_threads(),
            t.elapsed()
        );
    }
}
