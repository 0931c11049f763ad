//! Line charts of the training curves, drawn with `plotters`, as PNG and SVG.
//!
//! A training run redraws its curves (training loss, top-1/top-5 error, learning rate, images
//! per second) every epoch, so a person can follow a run with nothing but an image viewer (the
//! PNG) or a browser (the SVG, which stays sharp when zoomed). `plotters` draws the frame, grid,
//! ticks, text and lines; this module decides what goes where: the axis ranges and ticks, the
//! layout at any canvas size, the clipping of data to fixed axis ends and a legend that avoids
//! the data. Text uses DejaVu Sans, embedded in the binary (`assets/fonts`) and registered with
//! `plotters` once, so no system font is ever looked up.
//!
//! A chart has its title on top, the y label on the left (reading bottom to top), the x label
//! below, light grey grid lines at "nice" ticks (1, 2 or 5 times a power of ten; whole decades,
//! with fainter lines at 2..9 times each, on a logarithmic y axis), labelled compactly (`0.5`,
//! `12k`, `1e-3`), and, when it has more than one series, a legend in whichever corner of the
//! plot area the data leave free. A free axis end is rounded outward to a tick; a fixed one
//! ([`Chart::y_min`], [`Chart::y_max`]) clips the lines.
//!
//! Data are never trusted: points with a NaN or infinite coordinate (and, on a log axis, points
//! whose y is not positive) are skipped, and an empty chart, a single point (drawn as a dot), a
//! flat line or a canvas too small for a plot all render without panicking.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::{Rgb, RgbImage};
use plotters::coord::ranged1d::{
    BoldPoints, KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter,
};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::{
    BitMapBackend, ChartBuilder, Circle, DrawingArea, DrawingAreaErrorKind, DrawingBackend,
    IntoDrawingArea, LineSeries, PathElement, Rectangle, SVGBackend, Text,
};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{Color, FontDesc, FontFamily, FontStyle, RGBColor, ShapeStyle, TextStyle};

use crate::report::png::{self, PngError};

/// One line on a chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Shown in the legend (charts with more than one series).
    pub name: String,
    /// (x, y) in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// `None` takes the next colour of [`PALETTE`] by the series' index.
    pub color: Option<[u8; 3]>,
}

impl Series {
    /// A series in the default palette colour.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            color: None,
        }
    }
}

/// One chart: axes, labels and the series drawn on them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic (base 10) y axis with decade ticks; points with y <= 0 are skipped.
    pub log_y: bool,
    /// Fixes the bottom of the y axis (otherwise the data's minimum rounded down to a tick).
    /// Ignored when not finite, or not positive on a log axis.
    pub y_min: Option<f64>,
    /// Fixes the top of the y axis (otherwise the data's maximum rounded up to a tick).
    /// Ignored when not finite, or not positive on a log axis.
    pub y_max: Option<f64>,
}

/// Default series colours, in order (the Tableau 10 palette).
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Why a chart could not be written. Always names the destination path.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Encoding or writing a PNG failed.
    #[error(transparent)]
    Png(#[from] PngError),
    /// Writing an SVG failed; `path` is as it was.
    #[error("{path}: cannot write SVG: {source}")]
    Svg {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const BACKGROUND: [u8; 3] = [255, 255, 255];
const TEXT: [u8; 3] = [30, 30, 30];
const AXIS: [u8; 3] = [90, 90, 90];
const GRID: [u8; 3] = [222, 222, 222];
const MINOR_GRID: [u8; 3] = [242, 242, 242];
const LEGEND_BORDER: [u8; 3] = [170, 170, 170];
const NO_DATA: [u8; 3] = [150, 150, 150];

/// DejaVu Sans (see `assets/fonts/LICENSE-DejaVu.txt`), the one font of every chart.
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family every text of a chart asks for; [`font_ready`] registers [`FONT_BYTES`] as it.
const FAMILY: &str = "sans-serif";

/// Registers the embedded font with `plotters` (once per process); false if it would not load,
/// in which case charts are drawn without their text.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let ok = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT_BYTES).is_ok();
        if !ok {
            tracing::warn!("the embedded chart font does not load; charts will have no text");
        }
        ok
    })
}

fn font(size: f64) -> FontDesc<'static> {
    font_ready();
    FontDesc::new(FontFamily::Name(FAMILY), size, FontStyle::Normal)
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Width in pixels of `text` in `font` (0 when the font cannot measure it).
fn text_width(font: &FontDesc, text: &str) -> i32 {
    font.box_size(text)
        .map_or(0, |(w, _)| i32::try_from(w).unwrap_or(i32::MAX))
}

/// `text`, shortened with `...` until it is at most `max_width` pixels wide in `font` (empty
/// when not even `...` fits).
fn fit_text(text: &str, max_width: i32, font: &FontDesc) -> String {
    if text_width(font, text) <= max_width {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    // Binary search on the number of characters kept.
    let (mut lo, mut hi) = (0, chars.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let candidate: String = chars[..mid].iter().collect::<String>() + "...";
        if text_width(font, &candidate) <= max_width {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let out = chars[..lo]
        .iter()
        .collect::<String>()
        .trim_end()
        .to_string()
        + "...";
    if text_width(font, &out) <= max_width {
        out
    } else {
        String::new()
    }
}

/// Renders `chart` on a `width` x `height` canvas (0 is taken as 1). Never panics on data; a
/// canvas too small for a plot area gets only what fits of the title.
pub fn render(chart: &Chart, width: u32, height: u32) -> RgbImage {
    let (w, h) = (width.max(1), height.max(1));
    let mut img = RgbImage::from_pixel(w, h, Rgb(BACKGROUND));
    {
        let root = BitMapBackend::with_buffer(&mut img, (w, h)).into_drawing_area();
        let drawn = draw(&root, chart, true).and_then(|()| root.present());
        if let Err(e) = drawn {
            tracing::warn!("chart {:?} drawn only in part: {e}", chart.title);
        }
    }
    img
}

/// Several charts in a grid (`columns` per row, 0 is taken as 1, and never more columns than
/// charts), each cell `width` x `height` (0 is taken as 1), one image. No charts give one
/// blank cell.
pub fn render_grid(charts: &[Chart], columns: u32, width: u32, height: u32) -> RgbImage {
    let (w, h) = (width.max(1), height.max(1));
    let (cols, rows) = grid_shape(charts.len(), columns);
    let mut img = RgbImage::from_pixel(cols * w, rows * h, Rgb(BACKGROUND));
    for (i, chart) in charts.iter().enumerate() {
        let i = i as u32;
        let (col, row) = (i % cols, i / cols);
        let cell = render(chart, w, h);
        image::imageops::replace(&mut img, &cell, i64::from(col * w), i64::from(row * h));
    }
    img
}

/// Columns and rows of a grid of `n` charts with at most `columns` per row (at least 1 x 1).
fn grid_shape(n: usize, columns: u32) -> (u32, u32) {
    let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    let cols = columns.max(1).min(n);
    (cols, n.div_ceil(cols))
}

/// The grid of [`render_grid`] as an SVG document (text as `<text>`, lines as `<polyline>`).
pub fn render_svg(charts: &[Chart], columns: u32, width: u32, height: u32) -> String {
    let (w, h) = (width.max(1), height.max(1));
    let (cols, rows) = grid_shape(charts.len(), columns);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (cols * w, rows * h)).into_drawing_area();
        let mut drawn = root.fill(&rgb(BACKGROUND));
        let cells = root.split_evenly((rows as usize, cols as usize));
        for (chart, cell) in charts.iter().zip(&cells) {
            drawn = drawn.and_then(|()| draw(cell, chart, false));
        }
        if let Err(e) = drawn.and_then(|()| root.present()) {
            tracing::warn!("SVG charts drawn only in part: {e}");
        }
    }
    out
}

/// Writes `img` as PNG to `path` atomically, through [`crate::report::png::write_png`]. On any
/// failure the temporary file is removed and the error names `path`.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<(), PlotError> {
    Ok(png::write_png(path, img)?)
}

/// Writes the charts as one SVG grid ([`render_svg`]) to `path` atomically
/// ([`crate::util::fs::write_atomic`]). On failure the error names `path`.
pub fn write_svg(
    path: &Path,
    charts: &[Chart],
    columns: u32,
    width: u32,
    height: u32,
) -> Result<(), PlotError> {
    let svg = render_svg(charts, columns, width, height);
    crate::util::fs::write_atomic(path, svg.as_bytes()).map_err(|source| PlotError::Svg {
        path: path.to_path_buf(),
        source,
    })
}

/// A tick label: `value` written compactly with as many decimals as ticks `step` apart need
/// (`0.5`, `12k`, `1.5M`, `1e-3`, `2.5e-4`); values below 0.01 and from 1e15 on are written in
/// scientific notation.
pub fn format_tick(value: f64, step: f64) -> String {
    let exp = if step.is_finite() && step > 0.0 {
        exponent(step)
    } else {
        0
    };
    format_exp(value, exp)
}

/// `floor(log10(a))` for finite `a > 0`, exact at powers of ten.
fn exponent(a: f64) -> i32 {
    let mut e = a.log10().floor().clamp(-330.0, 330.0) as i32;
    if 10f64.powi(e) > a {
        e -= 1;
    } else if 10f64.powi(e + 1) <= a {
        e += 1;
    }
    e
}

/// [`format_tick`] with the step given as its power of ten.
fn format_exp(value: f64, step_exp: i32) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    let a = value.abs();
    if a == 0.0 || a < 10f64.powi(step_exp) * 1e-6 {
        return "0".to_string();
    }
    let e = exponent(a);
    if (3..15).contains(&e) {
        let unit = e / 3 * 3;
        let suffix = ["k", "M", "G", "T"][(unit / 3 - 1) as usize];
        let decimals = (unit - step_exp).clamp(0, 3) as usize;
        let text = trim_zeros(format!("{:.*}", decimals, value / 10f64.powi(unit)));
        if text == "1000" || text == "-1000" {
            // Rounded up into the next unit (999.96k): say it in that unit instead.
            return format_exp(value.signum() * 10f64.powi(unit + 3), unit + 3);
        }
        format!("{text}{suffix}")
    } else if !(-2..15).contains(&e) {
        let decimals = (e - step_exp).clamp(0, 3) as usize;
        let mut e = e;
        let mut mantissa = trim_zeros(format!("{:.*}", decimals, value / 10f64.powi(e)));
        if mantissa.trim_start_matches('-').starts_with("10") {
            e += 1;
            mantissa = trim_zeros(format!("{:.*}", decimals, value / 10f64.powi(e)));
        }
        format!("{mantissa}e{e}")
    } else {
        let decimals = (-step_exp).clamp(0, 6) as usize;
        trim_zeros(format!("{value:.decimals$}"))
    }
}

/// `1.50` -> `1.5`, `2.0` -> `2`, `-0.0` -> `0`; integers unchanged.
fn trim_zeros(text: String) -> String {
    let out = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if out == "-0" {
        "0".to_string()
    } else {
        out
    }
}

/// `lo..hi` made non-empty: equal ends move apart around the value (half a decade each way
/// in log space, 10% of the value or 1 around 0 otherwise).
fn widen(lo: f64, hi: f64, log: bool) -> (f64, f64) {
    if lo < hi {
        return (lo, hi);
    }
    let d = if log {
        0.5
    } else if lo == 0.0 {
        1.0
    } else {
        lo.abs() * 0.1
    };
    (lo - d, hi + d)
}

/// First and last decade exponent and the stride between ticked decades (at most 6 ticks),
/// for `lo..hi` in log10 space.
fn decades(lo: f64, hi: f64) -> (i32, i32, i32) {
    let kmin = (lo + 1e-9).floor().clamp(-320.0, 310.0) as i32;
    let mut kmax = (hi - 1e-9).ceil().clamp(-320.0, 310.0) as i32;
    if kmax <= kmin {
        kmax = kmin + 1;
    }
    let stride = (kmax - kmin + 4) / 5;
    let kmin = kmin.div_euclid(stride) * stride;
    let kmax = -((-kmax).div_euclid(stride)) * stride;
    (kmin, kmax, stride)
}

/// At most `max` ticks 1, 2 or 5 times a power of ten apart within `lo..=hi` (plotters' own
/// choice). `None` for a range too extreme or too narrow for decimal steps.
fn linear_ticks(lo: f64, hi: f64, max: usize) -> Option<Vec<f64>> {
    let span = hi - lo;
    let size = lo.abs().max(hi.abs());
    if !(span.is_finite() && span > 1e-200 && size < 1e200 && span >= size * 1e-10) {
        return None;
    }
    let eps = span * 1e-9;
    let ticks: Vec<f64> = RangedCoordf64::from(lo..hi)
        .key_points(BoldPoints(max.max(2)))
        .into_iter()
        .filter(|t| *t >= lo - eps && *t <= hi + eps)
        .collect();
    (ticks.len() >= 2).then_some(ticks)
}

/// A tick step, `mult * 10^exp` with `mult` 1, 2 or 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    mult: i64,
    exp: i32,
}

impl Step {
    /// The step between the first two of `ticks` (at least two), snapped to 1/2/5 x 10^k:
    /// differences of ticks carry rounding noise.
    fn of(ticks: &[f64]) -> Step {
        let d = ticks[1] - ticks[0];
        let exp = exponent(d);
        let mult = (d / 10f64.powi(exp)).round() as i64;
        if mult >= 10 {
            Step {
                mult: 1,
                exp: exp + 1,
            }
        } else {
            Step {
                mult: mult.max(1),
                exp,
            }
        }
    }

    fn size(&self) -> f64 {
        self.value(1)
    }

    /// `k` steps, computed from whole numbers and an exact power of ten.
    fn value(&self, k: i64) -> f64 {
        let n = k.saturating_mul(self.mult) as f64;
        if self.exp >= 0 {
            n * 10f64.powi(self.exp)
        } else {
            n / 10f64.powi(-self.exp)
        }
    }

    /// The index of the multiple at or below (`up`: at or above) `v`, forgiving rounding noise.
    fn index(&self, v: f64, up: bool) -> i64 {
        let q = v / self.size();
        let tol = 1e-9 * q.abs().max(1.0);
        if up {
            (q - tol).ceil() as i64
        } else {
            (q + tol).floor() as i64
        }
    }

    /// `lo..hi` with its free ends moved out to multiples of the step.
    fn round_out(&self, lo: f64, hi: f64, lo_fixed: bool, hi_fixed: bool) -> (f64, f64) {
        let a = if lo_fixed {
            lo
        } else {
            lo.min(self.value(self.index(lo, false)))
        };
        let b = if hi_fixed {
            hi
        } else {
            hi.max(self.value(self.index(hi, true)))
        };
        (a, b)
    }

    /// The multiples of the step within `lo..=hi` (at most 100).
    fn multiples(&self, lo: f64, hi: f64) -> Vec<f64> {
        let (a, b) = (self.index(lo, true), self.index(hi, false));
        if b < a || b - a > 100 {
            return Vec::new();
        }
        (a..=b).map(|k| self.value(k)).collect()
    }
}

/// One axis in axis space (log10 of the value on a log axis): its ends, its ticks and labels
/// and its minor grid lines. `plotters` maps and grids through it ([`Ranged`]).
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    /// Positions (axis space) and labels.
    ticks: Vec<(f64, String)>,
    /// Positions of minor grid lines (log axes spanning a few decades).
    minor: Vec<f64>,
}

impl Axis {
    fn frac(&self, t: f64) -> f64 {
        (t - self.lo) / (self.hi - self.lo)
    }

    fn contains(&self, t: f64) -> bool {
        t >= self.lo && t <= self.hi
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let px = f64::from(limit.0) + self.frac(*value) * f64::from(limit.1 - limit.0);
        // `as` saturates (and maps NaN to 0): off-scale values land off the plot, never panic.
        px.round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.iter().map(|(t, _)| *t).collect()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format(value: &f64) -> String {
        format_tick(*value, 0.0)
    }

    fn format_ext(&self, value: &f64) -> String {
        self.ticks
            .iter()
            .min_by(|a, b| (a.0 - value).abs().total_cmp(&(b.0 - value).abs()))
            .map_or_else(|| Self::format(value), |(_, label)| label.clone())
    }
}

/// Builds an axis over `data` (the data's range in axis space, if any) with optionally fixed
/// ends (axis space) and at most about `max_ticks` ticks. Free ends are rounded outward to a
/// tick.
fn build_axis(
    data: Option<(f64, f64)>,
    fixed_lo: Option<f64>,
    fixed_hi: Option<f64>,
    log: bool,
    max_ticks: usize,
) -> Axis {
    let (dlo, dhi) = data.unwrap_or((0.0, 1.0));
    let (mut lo, mut hi) = (fixed_lo.unwrap_or(dlo), fixed_hi.unwrap_or(dhi));
    let (mut lo_fixed, mut hi_fixed) = (fixed_lo.is_some(), fixed_hi.is_some());
    if lo > hi {
        match (lo_fixed, hi_fixed) {
            (true, true) => std::mem::swap(&mut lo, &mut hi),
            (true, false) => hi = lo,
            _ => lo = hi,
        }
    }
    if lo == hi {
        let (a, b) = widen(lo, hi, log);
        match (lo_fixed, hi_fixed) {
            (true, false) => hi = b,
            (false, true) => lo = a,
            _ => {
                (lo, hi) = (a, b);
                (lo_fixed, hi_fixed) = (false, false);
            }
        }
    }
    if !(lo.is_finite() && hi.is_finite() && (hi - lo).is_finite() && hi > lo) {
        (lo, hi) = (0.0, 1.0);
        (lo_fixed, hi_fixed) = (false, false);
    }

    let (mut minor, mut alo, mut ahi) = (Vec::new(), lo, hi);
    let mut ticks: Vec<(f64, String)>;
    if log {
        let (kmin, kmax, stride) = decades(lo, hi);
        if !lo_fixed {
            alo = lo.min(f64::from(kmin));
        }
        if !hi_fixed {
            ahi = hi.max(f64::from(kmax));
        }
        ticks = (kmin..=kmax)
            .step_by(stride as usize)
            .map(|k| (f64::from(k), format_exp(10f64.powi(k), k)))
            .collect();
        if stride == 1 && kmax - kmin <= 4 {
            for k in kmin..kmax {
                for m in 2..=9 {
                    minor.push(f64::from(k) + f64::from(m).log10());
                }
            }
        }
    } else if let Some(first) = linear_ticks(lo, hi, max_ticks) {
        // plotters picks the step; the free ends are rounded out to it, which may call for a
        // coarser step: repeat until the step holds (after one or two rounds). The ticks are
        // then exact multiples of the step (0.6, not 0.6000000000000001).
        let mut step = Step::of(&first);
        for _ in 0..4 {
            (alo, ahi) = step.round_out(lo, hi, lo_fixed, hi_fixed);
            let eps = (ahi - alo) * 1e-9;
            match linear_ticks(alo - eps, ahi + eps, max_ticks) {
                Some(next) if Step::of(&next) != step => step = Step::of(&next),
                _ => break,
            }
        }
        (alo, ahi) = step.round_out(lo, hi, lo_fixed, hi_fixed);
        let t = step.multiples(alo, ahi);
        let size = step.size();
        ticks = if t.len() >= 2 {
            t.into_iter().map(|v| (v, format_tick(v, size))).collect()
        } else {
            let exp = exponent(ahi - alo) - 1;
            vec![(alo, format_exp(alo, exp)), (ahi, format_exp(ahi, exp))]
        };
    } else {
        let exp = exponent(hi - lo) - 1;
        ticks = vec![(lo, format_exp(lo, exp)), (hi, format_exp(hi, exp))];
    }
    let eps = (ahi - alo) * 1e-6;
    ticks.retain(|(t, _)| *t >= alo - eps && *t <= ahi + eps);
    minor.retain(|t| *t >= alo - eps && *t <= ahi + eps);
    if log && ticks.len() < 2 {
        // Fixed ends inside one decade: label the ends themselves.
        let exp = |t: f64| exponent(10f64.powf(t)) - 1;
        ticks = vec![
            (alo, format_exp(10f64.powf(alo), exp(alo))),
            (ahi, format_exp(10f64.powf(ahi), exp(ahi))),
        ];
    }
    Axis {
        lo: alo,
        hi: ahi,
        ticks,
        minor,
    }
}

/// Pixel rectangle `x0..x1` x `y0..y1` (ends exclusive), in the chart's canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl Rect {
    fn width(&self) -> i32 {
        self.x1 - self.x0
    }

    fn height(&self) -> i32 {
        self.y1 - self.y0
    }
}

/// Sizes (pixels) and the plot area of a chart on one canvas.
#[derive(Debug, Clone, PartialEq)]
struct Layout {
    /// Font sizes: tick labels and legend, axis labels, title.
    tick_font: f64,
    label_font: f64,
    title_font: f64,
    /// Margin around everything.
    pad: i32,
    /// Length of the tick marks (their labels sit twice as far from the axis).
    tick: i32,
    line_width: u32,
    /// The plot area inside the frame (lines are clipped to it).
    plot: Rect,
}

/// What [`draw`] draws: the valid points per series in axis space, the axes and the layout
/// (`None`: too small a canvas for a plot).
struct Prepared {
    data: Vec<Vec<(f64, f64)>>,
    x: Axis,
    y: Axis,
    layout: Option<Layout>,
}

fn prepare(chart: &Chart, w: u32, h: u32) -> Prepared {
    let log = chart.log_y;
    let to_y = |v: f64| -> Option<f64> {
        if !v.is_finite() {
            None
        } else if log {
            (v > 0.0).then(|| v.log10())
        } else {
            Some(v)
        }
    };
    let data: Vec<Vec<(f64, f64)>> = chart
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|(x, _)| x.is_finite())
                .filter_map(|&(x, y)| to_y(y).map(|y| (x, y)))
                .collect()
        })
        .collect();
    let range = |pick: fn(&(f64, f64)) -> f64| {
        data.iter()
            .flatten()
            .map(pick)
            .fold(None, |acc, v| match acc {
                None => Some((v, v)),
                Some((a, b)) => Some((v.min(a), v.max(b))),
            })
    };
    let (x_range, y_range) = (range(|p| p.0), range(|p| p.1));
    let (y_lo, y_hi) = (chart.y_min.and_then(to_y), chart.y_max.and_then(to_y));

    // Vertical sizes first: they fix the plot's height, which fixes the y ticks, whose labels'
    // width fixes the plot's width, which fixes the x ticks.
    let (wf, hf) = (f64::from(w), f64::from(h));
    let u = (wf / 800.0).min(hf / 500.0);
    let tick_font = (13.0 * u).clamp(10.0, 40.0);
    let label_font = (14.0 * u).clamp(10.0, 44.0);
    let title_font = (18.0 * u).clamp(11.0, 56.0);
    let pad = (8.0 * u).round().clamp(2.0, 30.0) as i32;
    let tick = (4.0 * u).round().clamp(2.0, 12.0) as i32;
    let line_width = (2.0 * u).round().clamp(2.0, 6.0) as u32;
    let title_h = if chart.title.is_empty() {
        0
    } else {
        (title_font * 1.3) as i32 + pad / 2
    };
    let y0 = pad + title_h.max((tick_font * 0.7) as i32);
    let x_desc_h = if chart.x_label.is_empty() {
        0
    } else {
        (label_font * 1.2) as i32 + pad / 2
    };
    let x_area = 2 * tick + (tick_font * 1.1) as i32 + x_desc_h;
    let y1 = h as i32 - pad - x_area;
    let plot_h = y1 - y0;
    let y_max_ticks = (f64::from(plot_h) / (tick_font * 2.5)).clamp(2.0, 7.0) as usize;
    let y = build_axis(y_range, y_lo, y_hi, log, y_max_ticks);

    let tick_desc = font(tick_font);
    let y_ticks_w = y
        .ticks
        .iter()
        .map(|(_, l)| text_width(&tick_desc, l))
        .max()
        .unwrap_or(0);
    let y_desc_w = if chart.y_label.is_empty() {
        0
    } else {
        (label_font * 1.2) as i32 + pad / 2
    };
    let x0 = pad + y_desc_w + y_ticks_w + 2 * tick;
    let x1 = w as i32 - pad - (tick_font * 1.6) as i32;
    let plot_w = x1 - x0;
    let mut x_max_ticks = (f64::from(plot_w) / (tick_font * 6.0)).clamp(2.0, 10.0) as usize;
    let mut x = build_axis(x_range, None, None, false, x_max_ticks);
    // Fewer ticks while their labels would crowd each other.
    while x_max_ticks > 2 {
        let widest = x
            .ticks
            .iter()
            .map(|(_, l)| text_width(&tick_desc, l))
            .max()
            .unwrap_or(0);
        let room = plot_w / i32::try_from(x.ticks.len().max(1)).unwrap_or(1);
        if widest + (2.0 * tick_font) as i32 <= room {
            break;
        }
        x_max_ticks -= 1;
        x = build_axis(x_range, None, None, false, x_max_ticks);
    }

    let layout = (plot_w >= 24 && plot_h >= 16).then_some(Layout {
        tick_font,
        label_font,
        title_font,
        pad,
        tick,
        line_width,
        plot: Rect { x0, y0, x1, y1 },
    });
    Prepared { data, x, y, layout }
}

fn series_color(chart: &Chart, i: usize) -> [u8; 3] {
    chart.series[i].color.unwrap_or(PALETTE[i % PALETTE.len()])
}

/// The part of segment `a`-`b` inside the axes' rectangle (Liang-Barsky), if any.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    x: &Axis,
    y: &Axis,
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - x.lo),
        (dx, x.hi - a.0),
        (-dy, a.1 - y.lo),
        (dy, y.hi - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
            if t0 > t1 {
                return None;
            }
        }
    }
    let at = |t: f64| {
        if t == 0.0 {
            a
        } else if t == 1.0 {
            b
        } else {
            (a.0 + t * dx, a.1 + t * dy)
        }
    };
    Some((at(t0), at(t1)))
}

/// `points` cut to the axes' rectangle: the connected runs to draw as lines (a single point
/// for a one-point series that lies inside).
fn clip_runs(points: &[(f64, f64)], x: &Axis, y: &Axis) -> Vec<Vec<(f64, f64)>> {
    if let [only] = points {
        return if x.contains(only.0) && y.contains(only.1) {
            vec![vec![*only]]
        } else {
            Vec::new()
        };
    }
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    for pair in points.windows(2) {
        let Some((a, b)) = clip_segment(pair[0], pair[1], x, y) else {
            continue;
        };
        match runs.last_mut() {
            Some(run) if a == pair[0] && run.last() == Some(&a) => run.push(b),
            _ => runs.push(vec![a, b]),
        }
    }
    runs
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Draws `chart` onto `area` (which it fills). With `segments`, each line is drawn segment by
/// segment: plotters joins the segments of a wide path with unlimited miters, which on a
/// noisy per-step curve sprout spikes far beyond the data (SVG viewers limit miters
/// themselves, so SVG keeps whole polylines).
fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
    segments: bool,
) -> DrawResult<DB> {
    area.fill(&rgb(BACKGROUND))?;
    let (w, h) = area.dim_in_pixel();
    let prep = prepare(chart, w, h);
    let text = rgb(TEXT);
    let Some(lay) = prep.layout else {
        // No room for a plot: what fits of the title.
        let f = font((f64::from(h) * 0.6).clamp(6.0, 18.0));
        let title = fit_text(&chart.title, w as i32 - 2, &f);
        if !title.is_empty() {
            let style = f.color(&text).pos(Pos::new(HPos::Center, VPos::Top));
            area.draw(&Text::new(title, (w as i32 / 2, 1), style))?;
        }
        return Ok(());
    };
    let p = lay.plot;
    if !chart.title.is_empty() {
        let f = font(lay.title_font);
        let title = fit_text(&chart.title, w as i32 - 2 * lay.pad, &f);
        let tw = text_width(&f, &title);
        let cx = ((p.x0 + p.x1) / 2).clamp(lay.pad + tw / 2, (w as i32 - lay.pad - tw / 2).max(0));
        let style = f.color(&text).pos(Pos::new(HPos::Center, VPos::Top));
        area.draw(&Text::new(title, (cx, lay.pad), style))?;
    }

    let mut builder = ChartBuilder::on(area);
    builder
        .margin_top(p.y0)
        .margin_left(lay.pad)
        .margin_right(w as i32 - p.x1)
        .margin_bottom(lay.pad)
        .x_label_area_size(h as i32 - lay.pad - p.y1)
        .y_label_area_size(p.x0 - lay.pad);
    let mut cc = builder.build_cartesian_2d(prep.x.clone(), prep.y.clone())?;

    let tick_style: TextStyle = font(lay.tick_font).color(&text);
    let desc_font = font(lay.label_font);
    let x_desc = fit_text(&chart.x_label, p.width(), &desc_font);
    let y_desc = fit_text(&chart.y_label, p.height(), &desc_font);
    let mut mesh = cc.configure_mesh();
    mesh.bold_line_style(rgb(GRID))
        .light_line_style(rgb(MINOR_GRID))
        .axis_style(rgb(AXIS))
        .set_all_tick_mark_size(lay.tick)
        .label_style(tick_style)
        .axis_desc_style(desc_font.color(&text));
    if !x_desc.is_empty() {
        mesh.x_desc(x_desc);
    }
    if !y_desc.is_empty() {
        mesh.y_desc(y_desc);
    }
    mesh.draw()?;

    let runs: Vec<Vec<Vec<(f64, f64)>>> = prep
        .data
        .iter()
        .map(|pts| clip_runs(pts, &prep.x, &prep.y))
        .collect();
    for (i, series_runs) in runs.iter().enumerate() {
        let color = rgb(series_color(chart, i));
        let style = ShapeStyle {
            color: color.to_rgba(),
            filled: false,
            stroke_width: lay.line_width,
        };
        for run in series_runs {
            if let [only] = run.as_slice() {
                let dot = Circle::new(*only, lay.line_width + 1, color.filled());
                cc.draw_series(std::iter::once(dot))?;
            } else if segments {
                cc.draw_series(
                    run.windows(2)
                        .map(|pair| PathElement::new(vec![pair[0], pair[1]], style)),
                )?;
            } else {
                cc.draw_series(LineSeries::new(run.iter().copied(), style))?;
            }
        }
    }

    // Everything below is in pixels of the plot area.
    let plot_area = cc.plotting_area().strip_coord_spec();
    if runs.iter().all(|r| r.is_empty()) {
        let style = font(lay.label_font)
            .color(&rgb(NO_DATA))
            .pos(Pos::new(HPos::Center, VPos::Center));
        plot_area.draw(&Text::new(
            "no data",
            (p.width() / 2, p.height() / 2),
            style,
        ))?;
    }
    if chart.series.len() > 1 {
        draw_legend(&plot_area, chart, &lay, &runs, &prep.x, &prep.y)?;
    }
    // The frame, over the ends of the lines.
    area.draw(&Rectangle::new(
        [(p.x0 - 1, p.y0 - 1), (p.x1, p.y1)],
        rgb(AXIS),
    ))?;
    Ok(())
}

/// The legend box (colour swatch and name per series) in the corner of the plot area that the
/// data leave freest (top right, top left, bottom right, bottom left, then the middles, the
/// first of the least covered).
fn draw_legend<DB: DrawingBackend>(
    plot_area: &DrawingArea<DB, Shift>,
    chart: &Chart,
    lay: &Layout,
    runs: &[Vec<Vec<(f64, f64)>>],
    x: &Axis,
    y: &Axis,
) -> DrawResult<DB> {
    let p = lay.plot;
    let f = font(lay.tick_font);
    let inner = (lay.tick_font * 0.5).round() as i32;
    let row = (lay.tick_font * 1.35).round() as i32;
    let swatch = (lay.tick_font * 1.8).round() as i32;
    let inset = lay.pad.max(4);
    let names_room = (p.width() * 45 / 100).min(p.width() - 2 * inset - 3 * inner - swatch);
    let rows_room = (p.height() - 2 * inset - 2 * inner) / row.max(1);
    if names_room <= 0 || rows_room <= 0 {
        return Ok(());
    }
    let rows = chart.series.len().min(rows_room as usize);
    let names: Vec<String> = chart.series[..rows]
        .iter()
        .map(|s| fit_text(&s.name, names_room, &f))
        .collect();
    let names_w = names.iter().map(|n| text_width(&f, n)).max().unwrap_or(0);
    let (lw, lh) = (3 * inner + swatch + names_w, 2 * inner + rows as i32 * row);

    // Where the data are, in plot-area pixels, sampled every 2 pixels along the lines.
    let (pw, ph) = (f64::from(p.width() - 1), f64::from(p.height() - 1));
    let to_px = |(vx, vy): (f64, f64)| (x.frac(vx) * pw, (1.0 - y.frac(vy)) * ph);
    let mut samples = Vec::new();
    for run in runs.iter().flatten() {
        let px: Vec<(f64, f64)> = run.iter().map(|&v| to_px(v)).collect();
        samples.push(px[0]);
        for pair in px.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let n = ((b.0 - a.0).hypot(b.1 - a.1) / 2.0)
                .ceil()
                .clamp(1.0, 4096.0) as usize;
            for k in 1..=n {
                let t = k as f64 / n as f64;
                samples.push((a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1)));
            }
        }
    }
    let (left, right, mid) = (inset, p.width() - inset - lw, (p.width() - lw) / 2);
    let (top, bottom, centre) = (inset, p.height() - inset - lh, (p.height() - lh) / 2);
    let candidates = [
        (right, top),
        (left, top),
        (right, bottom),
        (left, bottom),
        (mid, top),
        (mid, bottom),
        (right, centre),
        (left, centre),
    ];
    let covered = |(bx, by): (i32, i32)| {
        let (x0, y0) = (f64::from(bx) - 3.0, f64::from(by) - 3.0);
        let (x1, y1) = (f64::from(bx + lw) + 3.0, f64::from(by + lh) + 3.0);
        samples
            .iter()
            .filter(|(sx, sy)| *sx >= x0 && *sx <= x1 && *sy >= y0 && *sy <= y1)
            .count()
    };
    let mut best = candidates[0];
    let mut best_cover = usize::MAX;
    for c in candidates {
        let cover = covered(c);
        if cover < best_cover {
            (best, best_cover) = (c, cover);
        }
    }

    let (bx, by) = best;
    plot_area.draw(&Rectangle::new(
        [(bx, by), (bx + lw, by + lh)],
        rgb(BACKGROUND).filled(),
    ))?;
    plot_area.draw(&Rectangle::new(
        [(bx, by), (bx + lw, by + lh)],
        rgb(LEGEND_BORDER),
    ))?;
    let text = rgb(TEXT);
    for (i, name) in names.iter().enumerate() {
        let cy = by + inner + i as i32 * row + row / 2;
        let sx = bx + inner;
        let color = rgb(series_color(chart, i));
        let style = ShapeStyle {
            color: color.to_rgba(),
            filled: false,
            stroke_width: lay.line_width,
        };
        plot_area.draw(&PathElement::new(vec![(sx, cy), (sx + swatch, cy)], style))?;
        let label = f.color(&text).pos(Pos::new(HPos::Left, VPos::Center));
        plot_area.draw(&Text::new(name.clone(), (sx + swatch + inner, cy), label))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::fs;

    fn line(name: &str, pts: &[(f64, f64)]) -> Series {
        Series::new(name, pts.to_vec())
    }

    fn chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "training loss".into(),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            series,
            ..Chart::default()
        }
    }

    /// Pixels of colour `c` in `x0..=x1` x `y0..=y1` (clamped to the image).
    fn count(img: &RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, c: [u8; 3]) -> usize {
        count_if(img, x0, y0, x1, y1, |p| p == c)
    }

    /// Dark pixels (text; anti-aliased, so not one exact colour).
    fn dark(img: &RgbImage, x0: i32, y0: i32, x1: i32, y1: i32) -> usize {
        count_if(img, x0, y0, x1, y1, |p| p.iter().all(|&v| v < 110))
    }

    fn count_if(
        img: &RgbImage,
        x0: i32,
        y0: i32,
        x1: i32,
        y1: i32,
        f: impl Fn([u8; 3]) -> bool,
    ) -> usize {
        let (w, h) = (img.width() as i32, img.height() as i32);
        let mut n = 0;
        for y in y0.max(0)..=y1.min(h - 1) {
            for x in x0.max(0)..=x1.min(w - 1) {
                if f(img.get_pixel(x as u32, y as u32).0) {
                    n += 1;
                }
            }
        }
        n
    }

    /// The plot area, both ends inclusive.
    fn plot_rect(c: &Chart, w: u32, h: u32) -> Rect {
        let p = prepare(c, w, h).layout.expect("a plot area").plot;
        Rect {
            x1: p.x1 - 1,
            y1: p.y1 - 1,
            ..p
        }
    }

    #[test]
    fn embedded_font_registers_and_measures_text() {
        assert!(font_ready());
        let f = font(14.0);
        let (short, long) = (text_width(&f, "loss"), text_width(&f, "learning rate"));
        assert!(short > 10 && long > 2 * short, "{short} {long}");
        let fitted = fit_text("a title far too long for the room", 80, &f);
        assert!(
            fitted.ends_with("...") && text_width(&f, &fitted) <= 80,
            "{fitted}"
        );
        assert_eq!(fit_text("loss", 200, &f), "loss");
        assert_eq!(fit_text("loss", 1, &f), "");
    }

    #[test]
    fn rising_line_goes_from_bottom_left_to_top_right() {
        let pts: Vec<(f64, f64)> = (0..=10).map(|i| (f64::from(i), f64::from(i))).collect();
        let c = chart(vec![line("loss", &pts)]);
        let (w, h) = (480, 320);
        let img = render(&c, w, h);
        assert_eq!(img.dimensions(), (w, h));
        let p = plot_rect(&c, w, h);
        let blue = PALETTE[0];
        let (qw, qh) = ((p.x1 - p.x0) / 8, (p.y1 - p.y0) / 8);
        assert!(count(&img, p.x0, p.y1 - qh, p.x0 + qw, p.y1, blue) > 10);
        assert!(count(&img, p.x1 - qw, p.y0, p.x1, p.y0 + qh, blue) > 10);
        // Nothing in the top-left or bottom-right corners.
        let (hw, hh) = (3 * qw, 3 * qh);
        assert_eq!(count(&img, p.x0, p.y0, p.x0 + hw, p.y0 + hh, blue), 0);
        assert_eq!(count(&img, p.x1 - hw, p.y1 - hh, p.x1, p.y1, blue), 0);
        // Everything in the series colour lies inside the plot area.
        let all = count(&img, 0, 0, w as i32, h as i32, blue);
        assert_eq!(count(&img, p.x0, p.y0, p.x1, p.y1, blue), all);
        // Text (title, y tick labels and label, x tick labels and label), frame and grid.
        assert!(dark(&img, 0, 0, w as i32, p.y0 - 2) > 20, "title");
        assert!(dark(&img, 0, 0, p.x0 - 2, h as i32) > 20, "y labels");
        assert!(dark(&img, 0, p.y1 + 2, w as i32, h as i32) > 20, "x labels");
        assert!(count(&img, p.x0, p.y0, p.x1, p.y1, GRID) > 100);
        assert_eq!(img.get_pixel((p.x0 - 1) as u32, (p.y0 + 5) as u32).0, AXIS);
        assert_eq!(img.get_pixel((p.x1 + 1) as u32, (p.y0 + 5) as u32).0, AXIS);
        // The image is not mostly one colour.
        let white = count(&img, 0, 0, w as i32, h as i32, BACKGROUND);
        assert!(white < (w * h) as usize * 95 / 100, "{white}");
    }

    #[test]
    fn lines_are_two_to_three_pixels_thick() {
        let c = Chart {
            series: vec![line("flat", &[(0.0, 1.0), (10.0, 1.0)])],
            y_min: Some(0.0),
            y_max: Some(2.0),
            ..Chart::default()
        };
        let img = render(&c, 300, 200);
        let p = plot_rect(&c, 300, 200);
        let x = (p.x0 + p.x1) / 2;
        let col = count(&img, x, p.y0, x, p.y1, PALETTE[0]);
        assert!((2..=3).contains(&col), "{col}");
    }

    #[test]
    fn axes_end_on_ticks_1_2_5_apart() {
        let values = |a: &Axis| a.ticks.iter().map(|t| t.0).collect::<Vec<_>>();
        let labels = |a: &Axis| a.ticks.iter().map(|t| t.1.clone()).collect::<Vec<_>>();
        let a = build_axis(Some((0.0, 97.0)), None, None, false, 7);
        assert_eq!((a.lo, a.hi), (0.0, 100.0));
        assert_eq!(labels(&a), ["0", "20", "40", "60", "80", "100"]);
        let a = build_axis(Some((1.2, 6.9)), None, None, false, 7);
        assert_eq!((a.lo, a.hi), (1.0, 7.0));
        assert_eq!(values(&a), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        let a = build_axis(Some((1.2, 6.9)), None, None, false, 5);
        assert_eq!((a.lo, a.hi), (0.0, 8.0));
        assert_eq!(values(&a), [0.0, 2.0, 4.0, 6.0, 8.0]);
        let a = build_axis(Some((0.3, 0.95)), None, None, false, 7);
        assert_eq!(labels(&a), ["0.2", "0.4", "0.6", "0.8", "1"]);
        let a = build_axis(Some((1.0, 20_000.0)), None, None, false, 9);
        assert_eq!(labels(&a), ["0", "5k", "10k", "15k", "20k"]);
        // Fixed ends stay where they are; the ticks stay inside.
        let a = build_axis(Some((12.0, 30.0)), Some(0.0), Some(100.0), false, 7);
        assert_eq!((a.lo, a.hi), (0.0, 100.0));
        assert_eq!(labels(&a), ["0", "20", "40", "60", "80", "100"]);
        let a = build_axis(Some((1400.0, 1530.0)), Some(0.0), None, false, 7);
        assert_eq!(a.lo, 0.0);
        assert!(a.hi >= 1530.0 && a.hi <= 2000.0, "{a:?}");
        // A flat range is widened; nothing at all gives 0..1.
        let a = build_axis(Some((5.0, 5.0)), None, None, false, 7);
        assert!(a.lo < 5.0 && a.hi > 5.0 && a.ticks.len() >= 2, "{a:?}");
        let a = build_axis(None, None, None, false, 7);
        assert_eq!((a.lo, a.hi), (0.0, 1.0));
        // Over many ranges: 2-7 ticks covering the range, evenly spaced by 1/2/5 x 10^k.
        for lo in [-1234.5, -3.0, 0.0, 0.001, 0.37, 12.0, 1e6] {
            for span in [1e-4, 0.003, 0.7, 1.0, 3.3, 9.9, 42.0, 97.0, 123.0, 5e5] {
                let hi = lo + span;
                let a = build_axis(Some((lo, hi)), None, None, false, 7);
                let t = values(&a);
                assert!((2..=7).contains(&t.len()), "{lo}..{hi}: {t:?}");
                assert!(a.lo <= lo && a.hi >= hi, "{lo}..{hi}: {a:?}");
                let eps = (a.hi - a.lo) * 1e-6;
                assert!(
                    t[0] <= a.lo + eps && *t.last().unwrap() >= a.hi - eps,
                    "{a:?}"
                );
                let step = t[1] - t[0];
                let m = step / 10f64.powi(exponent(step));
                assert!(
                    [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-4),
                    "{lo}..{hi}: step {step}"
                );
                for pair in t.windows(2) {
                    assert!(((pair[1] - pair[0]) / step - 1.0).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(format_tick(0.5, 0.1), "0.5");
        assert_eq!(format_tick(0.6000000000000001, 0.2), "0.6");
        assert_eq!(format_tick(0.0, 0.2), "0");
        assert_eq!(format_tick(1e-17, 0.2), "0");
        assert_eq!(format_tick(12000.0, 2000.0), "12k");
        assert_eq!(format_tick(1500.0, 500.0), "1.5k");
        assert_eq!(format_tick(3e6, 1e6), "3M");
        assert_eq!(format_tick(-20.0, 10.0), "-20");
        assert_eq!(format_tick(250.0, 50.0), "250");
        assert_eq!(format_tick(0.001, 0.001), "1e-3");
        assert_eq!(format_tick(2.5e-4, 5e-5), "2.5e-4");
        assert_eq!(format_tick(0.05, 0.01), "0.05");
        assert_eq!(format_tick(1e20, 1e20), "1e20");
        assert_eq!(format_tick(999_960.0, 10.0), "999.96k");
    }

    #[test]
    fn log_axes_tick_whole_decades() {
        let a = build_axis(
            Some((0.0013f64.log10(), 0.2f64.log10())),
            None,
            None,
            true,
            7,
        );
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1e-3", "0.01", "0.1", "1"]);
        assert_eq!((a.lo, a.hi), (-3.0, 0.0));
        assert_eq!(a.minor.len(), 3 * 8);
        let wide = build_axis(Some((-8.0, 4.0)), None, None, true, 7);
        assert!((4..=6).contains(&wide.ticks.len()), "{wide:?}");
        assert!(wide.ticks.iter().all(|(t, _)| t.fract() == 0.0));
        assert!(wide.minor.is_empty());

        // A chart with a log axis: decade labels, non-positive values skipped.
        let c = Chart {
            series: vec![line(
                "lr",
                &[
                    (0.0, 0.1),
                    (1.0, 0.0),
                    (2.0, -1.0),
                    (3.0, 0.01),
                    (4.0, 1e-4),
                ],
            )],
            log_y: true,
            ..Chart::default()
        };
        let prep = prepare(&c, 400, 300);
        let labels: Vec<&str> = prep.y.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1e-4", "1e-3", "0.01", "0.1"]);
        assert_eq!(prep.data[0].len(), 3);
        assert!(!prep.y.minor.is_empty());
        let img = render(&c, 400, 300);
        assert!(count(&img, 0, 0, 400, 300, PALETTE[0]) > 50);
        // Minor grid lines are drawn between the decades.
        let p = plot_rect(&c, 400, 300);
        assert!(count(&img, p.x0, p.y0, p.x1, p.y1, MINOR_GRID) > 100);
    }

    #[test]
    fn degenerate_charts_render_at_the_requested_size() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let charts = vec![
            Chart::default(),
            chart(vec![]),
            chart(vec![line("empty", &[])]),
            chart(vec![line(
                "nan",
                &[(nan, 1.0), (1.0, nan), (inf, 2.0), (0.0, -inf)],
            )]),
            chart(vec![line("one", &[(3.0, 0.25)])]),
            chart(vec![line("flat", &[(0.0, 7.0), (1.0, 7.0), (2.0, 7.0)])]),
            chart(vec![line("zero", &[(0.0, 0.0), (0.0, 0.0)])]),
            chart(vec![line("huge", &[(-1e308, -1e308), (1e308, 1e308)])]),
            chart(vec![line("tiny", &[(0.0, 1e-310), (1.0, 2e-310)])]),
            chart(vec![line("narrow", &[(0.0, 1e15), (1.0, 1e15 + 0.5)])]),
            Chart {
                series: vec![line("neg", &[(0.0, -1.0), (1.0, 0.0)])],
                log_y: true,
                ..chart(vec![])
            },
            Chart {
                series: vec![line("bounds", &[(0.0, 1.0), (1.0, 2.0)])],
                y_min: Some(3.0),
                y_max: Some(-3.0),
                ..chart(vec![])
            },
            Chart {
                series: vec![line("bounds", &[(0.0, 1.0), (1.0, 2.0)])],
                y_min: Some(5.0),
                y_max: Some(nan),
                log_y: true,
                ..chart(vec![])
            },
            Chart {
                series: vec![line("in one decade", &[(0.0, 3.0), (1.0, 4.0)])],
                y_min: Some(2.0),
                y_max: Some(8.0),
                log_y: true,
                ..chart(vec![])
            },
            Chart {
                title: "a title far too long for a small chart ".repeat(20),
                x_label: "an x label far too long ".repeat(20),
                y_label: "a y label far too long ".repeat(20),
                series: vec![
                    line(&"a very long series name ".repeat(30), &[(0.0, 1.0)]),
                    line("", &[(1.0, 1.0)]),
                ],
                ..chart(vec![])
            },
        ];
        for c in &charts {
            for (w, h) in [(0, 0), (1, 1), (37, 23), (120, 90), (640, 400), (1400, 900)] {
                let img = render(c, w, h);
                assert_eq!(img.dimensions(), (w.max(1), h.max(1)));
            }
        }
        // A single point is a dot; a flat line is drawn; no data says so.
        let one = render(&charts[4], 640, 400);
        let dot_px = count(&one, 0, 0, 640, 400, PALETTE[0]);
        assert!((9..200).contains(&dot_px), "{dot_px}");
        let flat = render(&charts[5], 640, 400);
        assert!(count(&flat, 0, 0, 640, 400, PALETTE[0]) > 300);
        let p = plot_rect(&charts[3], 640, 400);
        let none = render(&charts[3], 640, 400);
        assert_eq!(count(&none, 0, 0, 640, 400, PALETTE[0]), 0);
        let grey = count_if(&none, p.x0, p.y0, p.x1, p.y1, |c| {
            c.iter().all(|&v| (140..=175).contains(&v))
        });
        assert!(grey > 10, "no data: {grey}");
    }

    #[test]
    fn fixed_bounds_clip_the_lines() {
        let pts: Vec<(f64, f64)> = (0..=10).map(|i| (f64::from(i), f64::from(i))).collect();
        let c = Chart {
            series: vec![Series {
                color: Some([200, 0, 0]),
                ..line("loss", &pts)
            }],
            y_min: Some(2.0),
            y_max: Some(5.0),
            ..chart(vec![])
        };
        let (w, h) = (400, 300);
        let img = render(&c, w, h);
        let p = plot_rect(&c, w, h);
        let prep = prepare(&c, w, h);
        assert_eq!((prep.y.lo, prep.y.hi), (2.0, 5.0));
        let red = [200, 0, 0];
        let inside = count(&img, p.x0, p.y0, p.x1, p.y1, red);
        assert!(inside > 50);
        assert_eq!(count(&img, 0, 0, w as i32, h as i32, red), inside);
        // The clipped line runs from the bottom edge to the top edge.
        let runs = clip_runs(&prep.data[0], &prep.x, &prep.y);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].first(), Some(&(2.0, 2.0)));
        assert_eq!(runs[0].last(), Some(&(5.0, 5.0)));
    }

    #[test]
    fn legend_appears_with_several_series() {
        let a = line("train", &[(0.0, 0.0), (10.0, 1.0)]);
        let b = line("val", &[(0.0, 1.0), (10.0, 0.0)]);
        let mk = |series| Chart {
            series,
            y_max: Some(10.0),
            ..chart(vec![])
        };
        let (w, h) = (500, 350);
        let two = mk(vec![a.clone(), b]);
        let p = plot_rect(&two, w, h);
        let (mx, my) = ((p.x0 + p.x1) / 2, (p.y0 + p.y1) / 2);
        let img = render(&two, w, h);
        assert!(count(&img, mx, p.y0, p.x1, my, PALETTE[0]) > 10);
        assert!(count(&img, mx, p.y0, p.x1, my, PALETTE[1]) > 10);
        assert!(dark(&img, mx, p.y0, p.x1, my) > 10, "names");
        assert!(count(&img, mx, p.y0, p.x1, my, LEGEND_BORDER) > 20, "box");
        let one = mk(vec![a]);
        let img = render(&one, w, h);
        assert_eq!(count(&img, mx, p.y0, p.x1, my, PALETTE[0]), 0);
        assert_eq!(dark(&img, mx, p.y0, p.x1, my), 0);
    }

    #[test]
    fn legend_avoids_the_data() {
        // A rising line fills the top-right corner: the legend goes top left instead, and
        // every pixel of the line there is still visible.
        let pts: Vec<(f64, f64)> = (0..=20).map(|i| (f64::from(i), f64::from(i))).collect();
        let rising = line("rising", &pts);
        let low = line("low", &[(0.0, 0.0), (20.0, 0.5)]);
        let (w, h) = (600, 400);
        let alone = chart(vec![rising.clone()]);
        let both = chart(vec![rising, low]);
        let p = plot_rect(&both, w, h);
        let (mx, my) = ((p.x0 + p.x1) / 2, (p.y0 + p.y1) / 2);
        let (img_alone, img_both) = (render(&alone, w, h), render(&both, w, h));
        let blue_alone = count(&img_alone, mx, p.y0, p.x1, my, PALETTE[0]);
        assert!(blue_alone > 100);
        assert_eq!(count(&img_both, mx, p.y0, p.x1, my, PALETTE[0]), blue_alone);
        assert_eq!(count(&img_both, mx, p.y0, p.x1, my, LEGEND_BORDER), 0);
        assert!(count(&img_both, p.x0, p.y0, mx, my, LEGEND_BORDER) > 20);
        assert!(dark(&img_both, p.x0, p.y0, mx, my) > 10, "names");
    }

    #[test]
    fn grid_places_charts_row_major() {
        let charts: Vec<Chart> = (0..5)
            .map(|i| chart(vec![line("s", &[(0.0, 0.0), (1.0, f64::from(i))])]))
            .collect();
        let img = render_grid(&charts, 2, 200, 150);
        assert_eq!(img.dimensions(), (400, 450));
        let third = render(&charts[3], 200, 150);
        let cell = image::imageops::crop_imm(&img, 200, 150, 200, 150).to_image();
        assert_eq!(cell, third);
        // The empty last cell stays blank.
        let blank = image::imageops::crop_imm(&img, 200, 300, 200, 150).to_image();
        assert!(blank.pixels().all(|p| p.0 == BACKGROUND));
        assert_eq!(render_grid(&charts, 0, 50, 40).dimensions(), (50, 200));
        assert_eq!(render_grid(&charts, 9, 50, 40).dimensions(), (250, 40));
        assert_eq!(render_grid(&[], 3, 50, 40).dimensions(), (50, 40));
    }

    #[test]
    fn svg_has_the_titles_the_ticks_and_the_lines() {
        let lr = Chart {
            title: "Learning rate".into(),
            series: vec![line("lr", &[(0.0, 0.01), (50.0, 0.01), (51.0, 0.001)])],
            log_y: true,
            ..chart(vec![])
        };
        let loss = chart(vec![
            line("train", &[(0.0, 7.0), (1.0, 5.0), (2.0, 4.0)]),
            line("val", &[(0.0, 7.5), (2.0, 4.5)]),
        ]);
        let svg = render_svg(&[loss, lr], 2, 400, 300);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains(r#"width="800""#) && svg.contains(r#"height="300""#));
        // plotters writes each text as `<text ...>\nTEXT\n</text>`.
        for text in ["training loss", "Learning rate", "1e-3", "0.01", "val"] {
            assert!(
                svg.contains(&format!(">\n{text}\n</text>")),
                "{text} missing"
            );
        }
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        assert!(svg.to_lowercase().contains("#1f77b4"), "series colour");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plots.svg");
        write_svg(&path, &[chart(vec![])], 1, 300, 200).unwrap();
        let back = fs::read_to_string(&path).unwrap();
        assert!(back.contains(">\ntraining loss\n") && back.contains(">\nno data\n"));
        let missing = dir.path().join("no-such-dir").join("plots.svg");
        let err = write_svg(&missing, &[], 1, 300, 200).unwrap_err();
        assert!(matches!(err, PlotError::Svg { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn write_png_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let c = chart(vec![line("loss", &[(1.0, 6.9), (2.0, 5.1), (3.0, 4.2)])]);
        let img = render(&c, 320, 200);
        write_png(&path, &img).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (320, 200));
        assert_eq!(back, img);
        // Overwrites in place; no temporary left behind.
        let grid = render_grid(&[c.clone(), c], 2, 100, 80);
        write_png(&path, &grid).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8(), grid);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("loss.png")]);
    }

    #[test]
    fn write_errors_name_the_path_and_leave_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let img = render(&Chart::default(), 10, 10);
        let missing = dir.path().join("no-such-dir").join("loss.png");
        let err = write_png(&missing, &img).unwrap_err();
        assert!(
            matches!(err, PlotError::Png(PngError::Io { .. })),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        // The other failures of the shared writer are tested in report::png.

        let empty = RgbImage::new(0, 0);
        let err = write_png(&dir.path().join("empty.png"), &empty).unwrap_err();
        assert!(
            matches!(err, PlotError::Png(PngError::Encode { .. })),
            "{err}"
        );
    }
}
