//! Line charts as PNG files, for the training curves.
//!
//! A training run writes its curves (training loss, top-1/top-5 error on the training and
//! validation sets, learning rate, images per second) as PNG files every epoch, so a person can
//! follow a run with nothing but an image viewer. There is no plotting crate in the build, so
//! this module draws small line charts straight onto an [`image::RgbImage`] and writes the text
//! with the embedded bitmap font of [`crate::report::contact_sheet`].
//!
//! A chart has its title on top, the y label on the left (reading bottom to top), the x label
//! below, light grey grid lines at 4-6 "nice" tick values (1, 2 or 5 times a power of ten;
//! whole decades on a logarithmic y axis, labelled compactly: `0.5`, `12k`, `1e-3`) and, when it
//! has more than one series, a legend in the top-right corner of the plot area. Lines are 2 px
//! wide and clipped to the plot area; a series with a single point is drawn as a dot.
//!
//! Data are never trusted: points with a NaN or infinite coordinate (and, on a log axis, points
//! whose y is not positive) are skipped, and an empty chart, a single point, a flat line or a
//! canvas too small for a plot all render without panicking.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};

use crate::report::contact_sheet::{draw_text, text_width};

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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot encode PNG: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

const BACKGROUND: [u8; 3] = [255, 255, 255];
const TEXT: [u8; 3] = [30, 30, 30];
const AXIS: [u8; 3] = [90, 90, 90];
const GRID: [u8; 3] = [225, 225, 225];
const MINOR_GRID: [u8; 3] = [242, 242, 242];
const LEGEND_BORDER: [u8; 3] = [170, 170, 170];
const NO_DATA: [u8; 3] = [150, 150, 150];

/// Renders `chart` on a `width` x `height` canvas (0 is taken as 1). Never panics on data; a
/// canvas too small for a plot area gets only what fits of the title.
pub fn render(chart: &Chart, width: u32, height: u32) -> RgbImage {
    let (w, h) = (width.max(1), height.max(1));
    let mut img = RgbImage::from_pixel(w, h, Rgb(BACKGROUND));
    let prep = prepare(chart, w, h);
    let lay = prep.layout;
    let (s, si) = (lay.scale, i64::from(lay.scale));
    let p = lay.plot;

    // Title, centred over the plot area (or the canvas when there is no room for a plot).
    if !chart.title.is_empty() {
        let title = fit_text(&chart.title, i64::from(w) - 2 * lay.pad, lay.title_scale);
        let tw = i64::from(text_width(&title, lay.title_scale));
        let centre = if p.x1 > p.x0 {
            (p.x0 + p.x1) / 2
        } else {
            i64::from(w) / 2
        };
        let x = (centre - tw / 2).clamp(0, (i64::from(w) - tw).max(0));
        text(&mut img, x, lay.pad, &title, lay.title_scale, TEXT);
    }
    if p.x1 - p.x0 < 8 || p.y1 - p.y0 < 8 {
        return img;
    }

    let (xa, ya) = (&prep.x, &prep.y);
    let (tick, gap) = (4 * si, 3 * si);
    // Grid lines, minor first so that the major ones stay visible.
    for &t in &ya.minor {
        let py = map_y(p, ya, t).round() as i64;
        hline(&mut img, p.x0, p.x1, py, MINOR_GRID, p);
    }
    for (t, _) in &ya.ticks {
        let py = map_y(p, ya, *t).round() as i64;
        hline(&mut img, p.x0, p.x1, py, GRID, p);
    }
    for (t, _) in &xa.ticks {
        let px = map_x(p, xa, *t).round() as i64;
        vline(&mut img, px, p.y0, p.y1, GRID, p);
    }
    // Frame, tick marks and tick labels.
    let all = Rect {
        x0: 0,
        y0: 0,
        x1: i64::from(w) - 1,
        y1: i64::from(h) - 1,
    };
    hline(&mut img, p.x0 - 1, p.x1 + 1, p.y0 - 1, AXIS, all);
    hline(&mut img, p.x0 - 1, p.x1 + 1, p.y1 + 1, AXIS, all);
    vline(&mut img, p.x0 - 1, p.y0 - 1, p.y1 + 1, AXIS, all);
    vline(&mut img, p.x1 + 1, p.y0 - 1, p.y1 + 1, AXIS, all);
    for (t, label) in &ya.ticks {
        let py = map_y(p, ya, *t).round() as i64;
        hline(&mut img, p.x0 - 1 - tick, p.x0 - 2, py, AXIS, all);
        let lw = i64::from(text_width(label, s));
        text(
            &mut img,
            p.x0 - 1 - tick - gap - lw,
            py - 7 * si / 2,
            label,
            s,
            TEXT,
        );
    }
    for (t, label) in &xa.ticks {
        let px = map_x(p, xa, *t).round() as i64;
        vline(&mut img, px, p.y1 + 2, p.y1 + 1 + tick, AXIS, all);
        let lw = i64::from(text_width(label, s));
        text(&mut img, px - lw / 2, p.y1 + 2 + tick + gap, label, s, TEXT);
    }
    // Axis labels.
    if !chart.x_label.is_empty() {
        let label = fit_text(&chart.x_label, i64::from(w) - 2 * lay.pad, s);
        let lw = i64::from(text_width(&label, s));
        let x = ((p.x0 + p.x1) / 2 - lw / 2).clamp(0, (i64::from(w) - lw).max(0));
        text(
            &mut img,
            x,
            i64::from(h) - lay.pad - 8 * si,
            &label,
            s,
            TEXT,
        );
    }
    if !chart.y_label.is_empty() {
        draw_text_up(
            &mut img,
            lay.pad,
            (p.y0 + p.y1) / 2,
            &chart.y_label,
            s,
            p.y1 - p.y0 + 1,
        );
    }

    // The series.
    let mut any = false;
    for (i, pts) in prep.data.iter().enumerate() {
        let color = series_color(chart, i);
        let px: Vec<(f64, f64)> = pts
            .iter()
            .map(|&(x, y)| (map_x(p, xa, x), map_y(p, ya, y)))
            .collect();
        match px.as_slice() {
            [] => {}
            [only] => {
                any = true;
                dot(&mut img, *only, 1 + 2 * si, color, p);
            }
            _ => {
                any = true;
                for pair in px.windows(2) {
                    thick_line(&mut img, pair[0], pair[1], color, p);
                }
            }
        }
    }
    if !any {
        let msg = "no data";
        let mw = i64::from(text_width(msg, s));
        text(
            &mut img,
            (p.x0 + p.x1) / 2 - mw / 2,
            (p.y0 + p.y1) / 2 - 4 * si,
            msg,
            s,
            NO_DATA,
        );
    }
    if chart.series.len() > 1 {
        legend(&mut img, chart, p, s);
    }
    img
}

/// Several charts in a grid (`columns` per row, 0 is taken as 1, and never more columns than
/// charts), each cell `width` x `height` (0 is taken as 1), one image. No charts give one
/// blank cell.
pub fn render_grid(charts: &[Chart], columns: u32, width: u32, height: u32) -> RgbImage {
    let (w, h) = (width.max(1), height.max(1));
    let n = u32::try_from(charts.len()).unwrap_or(u32::MAX);
    if n == 0 {
        return RgbImage::from_pixel(w, h, Rgb(BACKGROUND));
    }
    let cols = columns.max(1).min(n);
    let rows = n.div_ceil(cols);
    let mut img = RgbImage::from_pixel(cols * w, rows * h, Rgb(BACKGROUND));
    for (i, chart) in charts.iter().enumerate() {
        let i = i as u32;
        let (col, row) = (i % cols, i / cols);
        let cell = render(chart, w, h);
        image::imageops::replace(&mut img, &cell, i64::from(col * w), i64::from(row * h));
    }
    img
}

/// Writes `img` as PNG to `path` atomically ([`crate::util::fs::write_atomic`]: a temporary
/// file, synced and renamed over `path`). On any failure the temporary file is removed and the
/// error names `path`.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<(), PlotError> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|source| PlotError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    crate::util::fs::write_atomic(path, &bytes).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// 4-6 "nice" ticks (1, 2 or 5 times a power of ten apart) from at or below `min(lo, hi)` to
/// at or above `max(lo, hi)`: `0..1` gives `0, 0.2, .., 1`; `0..97` gives `0, 20, .., 100`.
/// Equal ends are widened around the value. Empty when either end is not finite; just the two
/// ends when the range is too extreme for decimal steps.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() {
        return Vec::new();
    }
    let (lo, hi) = widen(lo.min(hi), lo.max(hi), false);
    match nice_steps(lo, hi) {
        Some(st) => st.values(),
        None => vec![lo, hi],
    }
}

/// Whole-decade ticks covering `min(lo, hi)..=max(lo, hi)` (every decade, or every 2nd, 3rd,
/// .. decade so that there are at most 6): `0.0013..0.2` gives `0.001, 0.01, 0.1, 1`. Empty
/// when either end is not finite and positive.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && hi > 0.0) {
        return Vec::new();
    }
    let (a, b) = widen(lo.min(hi).log10(), lo.max(hi).log10(), true);
    let (kmin, kmax, stride) = decades(a, b);
    (kmin..=kmax)
        .step_by(stride as usize)
        .map(|k| 10f64.powi(k))
        .collect()
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

/// Ticks `first * mult * 10^exp`, `(first + 1) * mult * 10^exp`, .. (`count` of them).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Steps {
    first: i64,
    count: i64,
    mult: i64,
    exp: i32,
}

impl Steps {
    fn value(&self, i: i64) -> f64 {
        // Whole multiples divided by an exact power of ten: 0.6, not 0.6000000000000001.
        let n = ((self.first + i) * self.mult) as f64;
        if self.exp >= 0 {
            n * 10f64.powi(self.exp)
        } else {
            n / 10f64.powi(-self.exp)
        }
    }

    fn values(&self) -> Vec<f64> {
        (0..self.count).map(|i| self.value(i)).collect()
    }
}

/// The step (1, 2 or 5 times a power of ten) whose ticks cover `lo..=hi` in 4-6 ticks, the
/// tightest of those, or the nearest to that count. `None` for an empty, infinite or extreme
/// range.
fn nice_steps(lo: f64, hi: f64) -> Option<Steps> {
    let span = hi - lo;
    if !lo.is_finite() || !hi.is_finite() || !span.is_finite() || span <= 0.0 {
        return None;
    }
    let k = (span / 5.0).log10().floor();
    if !(-280.0..=280.0).contains(&k) {
        return None;
    }
    let k = k as i32;
    let mut best: Option<(Steps, i64, f64, i64)> = None;
    for exp in k - 1..=k + 1 {
        for mult in [1i64, 2, 5] {
            let step = mult as f64 * 10f64.powi(exp);
            let a = (lo / step + 1e-9).floor();
            let b = (hi / step - 1e-9).ceil();
            if !(a.abs() <= 1e15 && b.abs() <= 1e15) {
                continue;
            }
            let (first, last) = (a as i64, b as i64);
            let count = (last - first + 1).max(1);
            let miss = if count < 4 {
                4 - count
            } else {
                (count - 6).max(0)
            };
            let waste = (count - 1) as f64 * step / span;
            let off = (count - 5).abs();
            let better = match best {
                None => true,
                Some((_, bm, bw, bo)) => {
                    miss < bm || miss == bm && (waste < bw || waste == bw && off < bo)
                }
            };
            if better {
                best = Some((
                    Steps {
                        first,
                        count,
                        mult,
                        exp,
                    },
                    miss,
                    waste,
                    off,
                ));
            }
        }
    }
    best.map(|b| b.0).filter(|st| st.count <= 50)
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

/// First and last decade exponent and the stride between ticked decades, for `lo..hi` in
/// log10 space.
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

/// One axis in axis space (log10 of the value on a log axis).
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
}

/// Builds an axis over `data` (the data's range in axis space, if any) with optionally fixed
/// ends (axis space). Free ends are rounded outward to a tick.
fn build_axis(
    data: Option<(f64, f64)>,
    fixed_lo: Option<f64>,
    fixed_hi: Option<f64>,
    log: bool,
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

    let (mut ticks, mut minor, alo, ahi);
    if log {
        let (kmin, kmax, stride) = decades(lo, hi);
        alo = if lo_fixed {
            lo
        } else {
            lo.min(f64::from(kmin))
        };
        ahi = if hi_fixed {
            hi
        } else {
            hi.max(f64::from(kmax))
        };
        ticks = (kmin..=kmax)
            .step_by(stride as usize)
            .map(|k| (f64::from(k), format_exp(10f64.powi(k), k)))
            .collect::<Vec<_>>();
        minor = Vec::new();
        if stride == 1 && kmax - kmin <= 4 {
            for k in kmin..kmax {
                for m in 2..=9 {
                    minor.push(f64::from(k) + f64::from(m).log10());
                }
            }
        }
    } else {
        minor = Vec::new();
        match nice_steps(lo, hi) {
            Some(st) => {
                alo = if lo_fixed { lo } else { lo.min(st.value(0)) };
                ahi = if hi_fixed {
                    hi
                } else {
                    hi.max(st.value(st.count - 1))
                };
                ticks = st
                    .values()
                    .into_iter()
                    .map(|v| (v, format_exp(v, st.exp)))
                    .collect();
            }
            None => {
                (alo, ahi) = (lo, hi);
                let exp = exponent(hi - lo) - 1;
                ticks = vec![(lo, format_exp(lo, exp)), (hi, format_exp(hi, exp))];
            }
        }
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

/// Pixel rectangle, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Rect {
    fn contains(&self, x: i64, y: i64) -> bool {
        x >= self.x0 && x <= self.x1 && y >= self.y0 && y <= self.y1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Font scale of tick labels, axis labels and the legend.
    scale: u32,
    title_scale: u32,
    /// Margin around everything.
    pad: i64,
    /// The plot area inside the frame (lines are clipped to it).
    plot: Rect,
}

/// What `render` draws: the valid points per series in axis space, the axes and the layout.
struct Prepared {
    data: Vec<Vec<(f64, f64)>>,
    x: Axis,
    y: Axis,
    layout: Layout,
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
    let x = build_axis(range(|p| p.0), None, None, false);
    let y = build_axis(
        range(|p| p.1),
        chart.y_min.and_then(to_y),
        chart.y_max.and_then(to_y),
        log,
    );
    let layout = layout(chart, &x, &y, w, h);
    Prepared { data, x, y, layout }
}

fn layout(chart: &Chart, x: &Axis, y: &Axis, w: u32, h: u32) -> Layout {
    let scale = (w / 640).min(h / 400).clamp(1, 3);
    let title_scale = if w >= 320 && h >= 160 {
        scale + 1
    } else {
        scale
    };
    let s = i64::from(scale);
    let (w, h) = (i64::from(w), i64::from(h));
    let (pad, tick, gap, text_h) = (5 * s, 4 * s, 3 * s, 8 * s);
    let title_h = if chart.title.is_empty() {
        0
    } else {
        8 * i64::from(title_scale) + 4 * s
    };
    let y_label_w = if chart.y_label.is_empty() {
        0
    } else {
        text_h + 4 * s
    };
    let y_ticks_w = y
        .ticks
        .iter()
        .map(|(_, l)| i64::from(text_width(l, scale)))
        .max()
        .unwrap_or(0);
    let x_label_h = if chart.x_label.is_empty() {
        0
    } else {
        text_h + 3 * s
    };
    let last_x_half = x
        .ticks
        .last()
        .map_or(0, |(_, l)| i64::from(text_width(l, scale)) / 2);
    let plot = Rect {
        x0: pad + y_label_w + y_ticks_w + gap + tick + 1,
        // Room above the top tick label's upper half.
        y0: pad + title_h + 4 * s,
        x1: w - 2 - pad.max(last_x_half + 2),
        y1: h - 2 - pad - x_label_h - text_h - gap - tick,
    };
    Layout {
        scale,
        title_scale,
        pad,
        plot,
    }
}

fn map_x(p: Rect, axis: &Axis, t: f64) -> f64 {
    p.x0 as f64 + axis.frac(t) * (p.x1 - p.x0) as f64
}

fn map_y(p: Rect, axis: &Axis, t: f64) -> f64 {
    p.y1 as f64 - axis.frac(t) * (p.y1 - p.y0) as f64
}

fn series_color(chart: &Chart, i: usize) -> [u8; 3] {
    chart.series[i].color.unwrap_or(PALETTE[i % PALETTE.len()])
}

fn put(img: &mut RgbImage, x: i64, y: i64, color: [u8; 3], clip: Rect) {
    if clip.contains(x, y)
        && x >= 0
        && y >= 0
        && x < i64::from(img.width())
        && y < i64::from(img.height())
    {
        img.put_pixel(x as u32, y as u32, Rgb(color));
    }
}

fn hline(img: &mut RgbImage, x0: i64, x1: i64, y: i64, color: [u8; 3], clip: Rect) {
    for x in x0.max(clip.x0)..=x1.min(clip.x1) {
        put(img, x, y, color, clip);
    }
}

fn vline(img: &mut RgbImage, x: i64, y0: i64, y1: i64, color: [u8; 3], clip: Rect) {
    for y in y0.max(clip.y0)..=y1.min(clip.y1) {
        put(img, x, y, color, clip);
    }
}

/// `draw_text` at a possibly negative position (clamped to 0).
fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: u32, color: [u8; 3]) {
    let c = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    draw_text(img, c(x), c(y), s, scale, color);
}

/// `text` shortened with `...` to at most `max_width` pixels at `scale`.
fn fit_text(text: &str, max_width: i64, scale: u32) -> String {
    let fits = |t: &str| i64::from(text_width(t, scale)) <= max_width;
    if fits(text) {
        return text.to_string();
    }
    let mut kept: Vec<char> = text.chars().collect();
    while !kept.is_empty() {
        kept.pop();
        let candidate: String = kept.iter().copied().chain("...".chars()).collect();
        if fits(&candidate) {
            return candidate;
        }
    }
    String::new()
}

/// Text turned 90 degrees counter-clockwise (reading bottom to top), its left edge at `x`,
/// centred on `centre_y`, shortened to `max_len` pixels.
fn draw_text_up(img: &mut RgbImage, x: i64, centre_y: i64, s: &str, scale: u32, max_len: i64) {
    let s = fit_text(s, max_len, scale);
    let len = text_width(&s, scale);
    if len == 0 {
        return;
    }
    let mut flat = RgbImage::new(len, 8 * scale);
    draw_text(&mut flat, 0, 0, &s, scale, [255, 255, 255]);
    let up = image::imageops::rotate270(&flat);
    let top = centre_y - i64::from(len) / 2;
    let all = Rect {
        x0: 0,
        y0: 0,
        x1: i64::MAX,
        y1: i64::MAX,
    };
    for (px, py, p) in up.enumerate_pixels() {
        if p.0[0] != 0 {
            put(img, x + i64::from(px), top + i64::from(py), TEXT, all);
        }
    }
}

/// The part of segment `a`-`b` inside `r` (Liang-Barsky), or `None`.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    r: (f64, f64, f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    if ![a.0, a.1, dx, dy].iter().all(|v| v.is_finite()) {
        return None;
    }
    let (xmin, ymin, xmax, ymax) = r;
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - xmin),
        (dx, xmax - a.0),
        (-dy, a.1 - ymin),
        (dy, ymax - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                if t > t1 {
                    return None;
                }
                t0 = t0.max(t);
            } else {
                if t < t0 {
                    return None;
                }
                t1 = t1.min(t);
            }
        }
    }
    Some((
        (a.0 + t0 * dx, a.1 + t0 * dy),
        (a.0 + t1 * dx, a.1 + t1 * dy),
    ))
}

/// A 2 px wide line (Bresenham, doubled across its major direction) clipped to `clip`.
fn thick_line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), color: [u8; 3], clip: Rect) {
    let r = (
        clip.x0 as f64 - 1.0,
        clip.y0 as f64 - 1.0,
        clip.x1 as f64 + 1.0,
        clip.y1 as f64 + 1.0,
    );
    let Some((a, b)) = clip_segment(a, b, r) else {
        return;
    };
    let (mut x, mut y) = (a.0.round() as i64, a.1.round() as i64);
    let (x1, y1) = (b.0.round() as i64, b.1.round() as i64);
    let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
    let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
    let x_major = dx >= -dy;
    let mut err = dx + dy;
    loop {
        put(img, x, y, color, clip);
        if x_major {
            put(img, x, y + 1, color, clip);
        } else {
            put(img, x + 1, y, color, clip);
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A filled disc of `radius` pixels around `c`, clipped to `clip`.
fn dot(img: &mut RgbImage, c: (f64, f64), radius: i64, color: [u8; 3], clip: Rect) {
    if !(c.0.is_finite() && c.1.is_finite()) {
        return;
    }
    let (cx, cy) = (c.0.round(), c.1.round());
    let reach = radius as f64 + 1.0;
    if cx < clip.x0 as f64 - reach
        || cx > clip.x1 as f64 + reach
        || cy < clip.y0 as f64 - reach
        || cy > clip.y1 as f64 + reach
    {
        return;
    }
    let (cx, cy) = (cx as i64, cy as i64);
    for dy in -radius..=radius {
        for dx in -radius..=radius {
            if dx * dx + dy * dy <= radius * radius + radius {
                put(img, cx + dx, cy + dy, color, clip);
            }
        }
    }
}

/// The legend box (colour swatch and name per series) in the top-right corner of `p`.
fn legend(img: &mut RgbImage, chart: &Chart, p: Rect, scale: u32) {
    let s = i64::from(scale);
    let (inner, swatch, row) = (4 * s, 14 * s, 10 * s);
    let n = chart.series.len() as i64;
    let right = p.x1 - 4 * s;
    let names_room = right - p.x0 - 3 * inner - swatch;
    if names_room <= 0 {
        return;
    }
    let names: Vec<String> = chart
        .series
        .iter()
        .map(|sr| fit_text(&sr.name, names_room, scale))
        .collect();
    let name_w = names
        .iter()
        .map(|t| i64::from(text_width(t, scale)))
        .max()
        .unwrap_or(0);
    let x0 = right - (3 * inner + swatch + name_w);
    let y0 = p.y0 + 4 * s;
    let y1 = (y0 + 2 * inner + n * row - 2 * s).min(p.y1);
    for y in y0..=y1 {
        hline(img, x0, right, y, BACKGROUND, p);
    }
    hline(img, x0, right, y0, LEGEND_BORDER, p);
    hline(img, x0, right, y1, LEGEND_BORDER, p);
    vline(img, x0, y0, y1, LEGEND_BORDER, p);
    vline(img, right, y0, y1, LEGEND_BORDER, p);
    let inside = Rect {
        x0: x0 + 1,
        y0: y0 + 1,
        x1: right - 1,
        y1: y1 - 1,
    };
    for (i, name) in names.iter().enumerate() {
        let top = y0 + inner + i as i64 * row;
        if top + 8 * s > y1 {
            break;
        }
        let mid = (top + 7 * s / 2) as f64;
        let sx = (x0 + inner) as f64;
        thick_line(
            img,
            (sx, mid),
            (sx + swatch as f64, mid),
            series_color(chart, i),
            inside,
        );
        text(img, x0 + 2 * inner + swatch, top, name, scale, TEXT);
    }
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

    fn count(img: &RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) -> usize {
        let mut n = 0;
        for y in y0.max(0)..=y1.min(i64::from(img.height()) - 1) {
            for x in x0.max(0)..=x1.min(i64::from(img.width()) - 1) {
                if img.get_pixel(x as u32, y as u32).0 == c {
                    n += 1;
                }
            }
        }
        n
    }

    fn plot_rect(c: &Chart, w: u32, h: u32) -> Rect {
        prepare(c, w, h).layout.plot
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
        let all = count(&img, 0, 0, i64::from(w), i64::from(h), blue);
        assert_eq!(count(&img, p.x0, p.y0, p.x1, p.y1, blue), all);
        // Text, frame and grid are there too.
        assert!(
            count(&img, 0, 0, i64::from(w), p.y0 - 2, TEXT) > 20,
            "title"
        );
        assert!(
            count(&img, 0, 0, p.x0 - 2, i64::from(h), TEXT) > 20,
            "y labels"
        );
        assert!(count(&img, 0, p.y1 + 2, i64::from(w), i64::from(h), TEXT) > 20);
        assert!(count(&img, p.x0, p.y0, p.x1, p.y1, GRID) > 100);
        assert_eq!(img.get_pixel((p.x0 - 1) as u32, p.y0 as u32).0, AXIS);
    }

    #[test]
    fn lines_are_two_pixels_thick() {
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
        assert_eq!(col, 2);
    }

    #[test]
    fn nice_ticks_use_1_2_5_steps() {
        assert_eq!(nice_ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(
            nice_ticks(0.0, 97.0),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(nice_ticks(1.2, 6.9), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(nice_ticks(97.0, 0.0), nice_ticks(0.0, 97.0));
        assert_eq!(nice_ticks(0.0, 40.0), vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        assert_eq!(nice_ticks(0.3, 0.95), vec![0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(
            nice_ticks(0.0, 0.01),
            vec![0.0, 0.002, 0.004, 0.006, 0.008, 0.01]
        );
        assert!(nice_ticks(f64::NAN, 1.0).is_empty());
        assert!(nice_ticks(0.0, f64::INFINITY).is_empty());
        let flat = nice_ticks(5.0, 5.0);
        assert!(flat.len() >= 2 && flat[0] < 5.0 && *flat.last().unwrap() > 5.0);
        // Over many ranges: 3-7 ticks covering the range, evenly spaced by 1/2/5 x 10^k.
        for lo in [-1234.5, -3.0, 0.0, 0.001, 0.37, 12.0, 1e6] {
            for span in [1e-4, 0.003, 0.7, 1.0, 3.3, 9.9, 42.0, 97.0, 123.0, 5e5] {
                let hi = lo + span;
                let t = nice_ticks(lo, hi);
                assert!((3..=7).contains(&t.len()), "{lo}..{hi}: {t:?}");
                assert!(t[0] <= lo && *t.last().unwrap() >= hi, "{lo}..{hi}: {t:?}");
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
    fn log_ticks_are_powers_of_ten() {
        assert_eq!(log_ticks(0.0013, 0.2), vec![0.001, 0.01, 0.1, 1.0]);
        assert_eq!(log_ticks(10.0, 10.0), vec![1.0, 10.0, 100.0]);
        let wide = log_ticks(1e-8, 1e4);
        assert!(wide.len() <= 6 && wide.len() >= 4, "{wide:?}");
        assert!(wide[0] <= 1e-8 && *wide.last().unwrap() >= 1e4);
        for t in wide.iter().chain(&log_ticks(3e-5, 7e-2)) {
            let l = t.log10();
            assert!((l - l.round()).abs() < 1e-12, "{t} is not a power of ten");
        }
        assert!(log_ticks(0.0, 1.0).is_empty());
        assert!(log_ticks(-1.0, 1.0).is_empty());

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
        assert!(count(&none, p.x0, p.y0, p.x1, p.y1, NO_DATA) > 10);
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
        assert_eq!(count(&img, 0, 0, i64::from(w), i64::from(h), red), inside);
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
        assert!(count(&img, mx, p.y0, p.x1, my, TEXT) > 10, "names");
        let one = mk(vec![a]);
        let img = render(&one, w, h);
        assert_eq!(count(&img, mx, p.y0, p.x1, my, PALETTE[0]), 0);
        assert_eq!(count(&img, mx, p.y0, p.x1, my, TEXT), 0);
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
        assert!(matches!(err, PlotError::Io { .. }));
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        let taken = dir.path().join("taken.png");
        fs::create_dir(&taken).unwrap();
        fs::write(taken.join("keep"), b"x").unwrap();
        let err = write_png(&taken, &img).unwrap_err();
        assert!(
            err.to_string().contains(&taken.display().to_string()),
            "{err}"
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("taken.png")]);

        let empty = RgbImage::new(0, 0);
        let err = write_png(&dir.path().join("empty.png"), &empty).unwrap_err();
        assert!(matches!(err, PlotError::Encode { .. }), "{err}");
    }
}
