//! The metrics log of a training run and the plots drawn from it.
//!
//! A run writes `RUN_DIR/metrics.jsonl`: one JSON object per line, a [`Record`] tagged by its
//! `kind`, either a step record (one training batch) or an epoch record (the end of an epoch,
//! with its validation errors when it was validated):
//!
//! ```text
//! {"kind":"step","step":12,"epoch":0,"batch":12,"loss":6.87,"top1_error":0.998,...}
//! {"kind":"epoch","epoch":0,"step":5004,"train_loss":5.1,...,"val_top1_error":0.71,...}
//! ```
//!
//! Errors are fractions in 0..=1 (the plots show them in %). Non-finite numbers (a diverged
//! loss) are written as JSON `null` and read back as NaN (`None` for the optional validation
//! fields), so a bad value never makes the log unreadable.
//!
//! The log survives crashes and resumes: a line is written with one `write` call, so a crash
//! leaves at most one torn last line, which readers skip. Resuming from the checkpoint at step
//! `s` first rewrites the file (atomically) with only the records at or before `s`, dropping
//! what an interrupted run logged past its last checkpoint and the torn line, so the file never
//! holds two records for one step.
//!
//! [`write_plots`] draws the curves as PNG and SVG files (regenerated every epoch by the
//! trainer).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::report::plot::{self, Chart, Series};
use crate::util::fs::write_atomic;

/// File name of the metrics log in a run directory.
pub const FILE_NAME: &str = "metrics.jsonl";
/// File name of the 2x2 grid of all charts in a run directory.
pub const PLOTS_FILE: &str = "plots.png";
/// Folder (in a run directory) of the individual charts.
pub const PLOTS_DIR: &str = "plots";
/// Names of the individual charts in [`PLOTS_DIR`], in grid order (row-major).
pub const CHART_NAMES: [&str; 4] = ["loss", "error", "lr", "throughput"];
/// Size of one chart (each cell of the grid; the grid is twice as wide and twice as high).
pub const CHART_WIDTH: u32 = 800;
/// See [`CHART_WIDTH`].
pub const CHART_HEIGHT: u32 = 500;
/// Window (in steps) of the moving average drawn over the per-step training loss.
pub const LOSS_AVERAGE_STEPS: usize = 50;
/// A series with more points than this is thinned (min and max of each bucket kept) before
/// drawing: a chart is a few hundred pixels wide and a run has hundreds of thousands of steps.
const MAX_POINTS: usize = 4000;

/// One training batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Global step (batches trained since the run started, over resumes), counted after this
    /// batch's update.
    pub step: u64,
    pub epoch: u64,
    /// Batch index within the epoch.
    pub batch: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub loss: f64,
    /// Top-1 error of this batch, a fraction.
    #[serde(deserialize_with = "f64_or_nan")]
    pub top1_error: f64,
    /// Top-5 error of this batch, a fraction.
    #[serde(deserialize_with = "f64_or_nan")]
    pub top5_error: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub lr: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub images_per_sec: f64,
    /// Seconds since the run started, cumulative over resumes.
    #[serde(deserialize_with = "f64_or_nan")]
    pub time: f64,
}

/// The end of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    /// Global step at the epoch's end.
    pub step: u64,
    /// Means over the epoch's batches; errors are fractions.
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_loss: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_top1_error: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_top5_error: f64,
    /// Validation results, `None` when the epoch was not validated.
    pub val_top1_error: Option<f64>,
    pub val_top5_error: Option<f64>,
    pub val_loss: Option<f64>,
    /// Learning rate at the epoch's end.
    #[serde(deserialize_with = "f64_or_nan")]
    pub lr: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub images_per_sec: f64,
    /// Wall-clock seconds the epoch took (in this process).
    #[serde(deserialize_with = "f64_or_nan")]
    pub seconds: f64,
    /// Seconds since the run started, cumulative over resumes.
    #[serde(deserialize_with = "f64_or_nan")]
    pub time: f64,
}

/// One line of the metrics log: `{"kind":"step",...}` or `{"kind":"epoch",...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Step(StepRecord),
    Epoch(EpochRecord),
}

impl Record {
    /// The global step the record belongs to (for an epoch, the step at its end).
    pub fn step(&self) -> u64 {
        match self {
            Record::Step(s) => s.step,
            Record::Epoch(e) => e.step,
        }
    }
}

/// Why the metrics log or the plots could not be read or written. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    /// A line that is not a record and is not the last line (which may be torn by a crash).
    #[error("{path}: line {line}: not a metrics record: {message}")]
    Parse {
        path: PathBuf,
        /// 1-based.
        line: usize,
        message: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> MetricsError + '_ {
    move |source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a number written by `serde_json`, which writes NaN and infinities as `null`.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The open metrics log of a run, appended to line by line.
#[derive(Debug)]
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens `RUN_DIR/metrics.jsonl` for appending (the run directory must exist).
    ///
    /// With `resume_at = Some(step)`, first rewrites the file atomically (temporary file and
    /// rename; untouched when nothing is dropped) keeping only the records whose step is at or
    /// before `step` (an epoch record by the step at its end); a torn last line is dropped. A
    /// missing file starts empty. A corrupt line other than the last is a
    /// [`MetricsError::Parse`] and leaves the file as it was.
    ///
    /// Without `resume_at`, an existing file is truncated (a fresh run).
    pub fn open(run_dir: &Path, resume_at: Option<u64>) -> Result<Self, MetricsError> {
        let path = run_dir.join(FILE_NAME);
        match resume_at {
            None => {
                File::create(&path).map_err(io_error(&path))?;
            }
            Some(at) => match fs::read(&path) {
                Ok(bytes) => {
                    let mut kept = Vec::with_capacity(bytes.len());
                    let mut dropped = 0usize;
                    for (record, raw) in parse_lines(&path, &bytes)? {
                        if record.step() <= at {
                            kept.extend_from_slice(raw);
                            kept.push(b'\n');
                        } else {
                            dropped += 1;
                        }
                    }
                    if kept != bytes {
                        write_atomic(&path, &kept).map_err(io_error(&path))?;
                    }
                    if dropped > 0 {
                        tracing::info!(
                            "{}: dropped {dropped} records logged after step {at}",
                            path.display()
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path)(e)),
            },
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        Ok(MetricsLog { file, path })
    }

    /// Appends `r` as one line, written with a single `write` call (flushed to the OS, not
    /// synced; see [`MetricsLog::sync`]).
    pub fn append(&mut self, r: &Record) -> Result<(), MetricsError> {
        let mut line = serde_json::to_vec(r).expect("metrics records serialise");
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_error(&self.path))
    }

    /// Syncs the log to disk (at a checkpoint, say).
    pub fn sync(&self) -> Result<(), MetricsError> {
        self.file.sync_data().map_err(io_error(&self.path))
    }

    /// `RUN_DIR/metrics.jsonl`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every record of a metrics log, in file order. Blank lines and a torn last line
/// (one that is not a record, from a crash mid-write) are skipped; any other line that is not
/// a record is a [`MetricsError::Parse`].
pub fn read_records(path: &Path) -> Result<Vec<Record>, MetricsError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    Ok(parse_lines(path, &bytes)?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}

/// The records of `bytes` with the text of their lines (without the newline).
fn parse_lines<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<(Record, &'a [u8])>, MetricsError> {
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut out = Vec::with_capacity(lines.len());
    for (k, &(i, line)) in lines.iter().enumerate() {
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => out.push((r, line)),
            Err(_) if k + 1 == lines.len() => {
                tracing::warn!(
                    "{}: line {}: skipping a torn last line",
                    path.display(),
                    i + 1
                );
            }
            Err(e) => {
                return Err(MetricsError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// Regenerates the plots of a run from its records: `RUN_DIR/plots.png`, a 2x2 grid of
/// [`CHART_WIDTH`] x [`CHART_HEIGHT`] charts, and each chart alone as
/// `RUN_DIR/plots/{loss,error,lr,throughput}.png` (the folder is created). The charts:
///
/// - training loss per step (pale), its moving average over [`LOSS_AVERAGE_STEPS`] steps,
///   the epochs' mean training loss and validation loss (at the step ending each epoch);
/// - top-1 and top-5 error in %, training and validation, per epoch (y from 0 to 100);
/// - learning rate per step, log y (per epoch when there are no step records);
/// - images per second per step and per epoch.
///
/// Every file is written atomically. Returns the paths written: the grid as PNG, then as SVG,
/// then each chart's PNG.
pub fn write_plots(run_dir: &Path, records: &[Record]) -> Result<Vec<PathBuf>, MetricsError> {
    let charts = charts(records);
    let dir = run_dir.join(PLOTS_DIR);
    fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let mut written = Vec::with_capacity(1 + charts.len());
    let grid_path = run_dir.join(PLOTS_FILE);
    let grid = plot::render_grid(&charts, 2, CHART_WIDTH, CHART_HEIGHT);
    plot::write_png(&grid_path, &grid)?;
    let svg_path = grid_path.with_extension("svg");
    plot::write_svg(&svg_path, &charts, 2, CHART_WIDTH, CHART_HEIGHT)?;
    written.push(grid_path);
    written.push(svg_path);
    for (chart, name) in charts.iter().zip(CHART_NAMES) {
        let path = dir.join(format!("{name}.png"));
        plot::write_png(&path, &plot::render(chart, CHART_WIDTH, CHART_HEIGHT))?;
        written.push(path);
    }
    Ok(written)
}

const BLUE: [u8; 3] = [31, 119, 180];
const LIGHT_BLUE: [u8; 3] = [174, 199, 232];
const ORANGE: [u8; 3] = [255, 127, 14];
const LIGHT_ORANGE: [u8; 3] = [255, 187, 120];
const GREEN: [u8; 3] = [44, 160, 44];
const LIGHT_GREEN: [u8; 3] = [152, 223, 138];
const RED: [u8; 3] = [214, 39, 40];

/// The four charts, in [`CHART_NAMES`] order.
fn charts(records: &[Record]) -> Vec<Chart> {
    let mut steps: Vec<&StepRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Step(s) => Some(s),
            Record::Epoch(_) => None,
        })
        .collect();
    steps.sort_by_key(|s| s.step);
    let mut epochs: Vec<&EpochRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Epoch(e) => Some(e),
            Record::Step(_) => None,
        })
        .collect();
    epochs.sort_by_key(|e| (e.epoch, e.step));

    let per_step = |f: fn(&StepRecord) -> f64| -> Vec<(f64, f64)> {
        steps.iter().map(|s| (s.step as f64, f(s))).collect()
    };
    let per_epoch_at_step = |f: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        epochs
            .iter()
            .filter_map(|e| f(e).map(|y| (e.step as f64, y)))
            .collect()
    };
    let per_epoch_pct = |f: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        epochs
            .iter()
            .filter_map(|e| f(e).map(|y| (e.epoch as f64, 100.0 * y)))
            .collect()
    };
    let series = |name: &str, color: [u8; 3], points: Vec<(f64, f64)>| Series {
        name: name.to_string(),
        points: thin(points, MAX_POINTS),
        color: Some(color),
    };

    // Loss.
    let step_loss = per_step(|s| s.loss);
    let average = moving_average(&step_loss, LOSS_AVERAGE_STEPS);
    let mut loss = vec![
        series("train (batch)", LIGHT_BLUE, step_loss),
        series(
            &format!("train (mean of {LOSS_AVERAGE_STEPS} batches)"),
            BLUE,
            average,
        ),
        series(
            "train (epoch)",
            ORANGE,
            per_epoch_at_step(|e| Some(e.train_loss)),
        ),
    ];
    let val_loss = per_epoch_at_step(|e| e.val_loss);
    if !val_loss.is_empty() {
        loss.push(series("val (epoch)", GREEN, val_loss));
    }

    // Error.
    let mut error = vec![
        series(
            "train top-1",
            BLUE,
            per_epoch_pct(|e| Some(e.train_top1_error)),
        ),
        series(
            "train top-5",
            LIGHT_BLUE,
            per_epoch_pct(|e| Some(e.train_top5_error)),
        ),
    ];
    let val1 = per_epoch_pct(|e| e.val_top1_error);
    let val5 = per_epoch_pct(|e| e.val_top5_error);
    if !val1.is_empty() || !val5.is_empty() {
        error.push(series("val top-1", ORANGE, val1));
        error.push(series("val top-5", LIGHT_ORANGE, val5));
    }

    // Learning rate.
    let lr_points = if steps.is_empty() {
        per_epoch_at_step(|e| Some(e.lr))
    } else {
        per_step(|s| s.lr)
    };

    // Throughput.
    let mut throughput = vec![series("batch", LIGHT_GREEN, per_step(|s| s.images_per_sec))];
    let epoch_rate = per_epoch_at_step(|e| Some(e.images_per_sec));
    if !epoch_rate.is_empty() {
        throughput.push(series("epoch", GREEN, epoch_rate));
    }

    vec![
        Chart {
            title: "Training loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: loss,
            ..Chart::default()
        },
        Chart {
            title: "Top-1 / top-5 error".into(),
            x_label: "epoch".into(),
            y_label: "error (%)".into(),
            series: error,
            y_min: Some(0.0),
            y_max: Some(100.0),
            ..Chart::default()
        },
        Chart {
            title: "Learning rate".into(),
            x_label: "step".into(),
            y_label: "learning rate".into(),
            series: vec![series("lr", RED, lr_points)],
            log_y: true,
            ..Chart::default()
        },
        Chart {
            title: "Throughput".into(),
            x_label: "step".into(),
            y_label: "images/s".into(),
            series: throughput,
            y_min: Some(0.0),
            ..Chart::default()
        },
    ]
}

/// The trailing mean of the last `window` finite y values at each point (points before any
/// finite value are left out).
fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    points
        .iter()
        .enumerate()
        .filter_map(|(i, &(x, _))| {
            let (sum, n) = points[(i + 1).saturating_sub(window)..=i]
                .iter()
                .filter(|p| p.1.is_finite())
                .fold((0.0, 0usize), |(s, n), p| (s + p.1, n + 1));
            (n > 0).then(|| (x, sum / n as f64))
        })
        .collect()
}

/// At most about `max` points: with more, consecutive buckets are each reduced to their
/// lowest and highest finite point (in x order), which keeps the envelope of a noisy curve.
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points;
    }
    let bucket = points.len().div_ceil(max / 2);
    let mut out = Vec::with_capacity(max);
    for chunk in points.chunks(bucket) {
        let finite = || {
            chunk
                .iter()
                .enumerate()
                .filter(|(_, p)| p.0.is_finite() && p.1.is_finite())
        };
        let lo = finite().min_by(|a, b| a.1 .1.total_cmp(&b.1 .1));
        let hi = finite().max_by(|a, b| a.1 .1.total_cmp(&b.1 .1));
        match (lo, hi) {
            (Some((i, &a)), Some((j, &b))) if i < j => out.extend([a, b]),
            (Some((i, &a)), Some((j, &b))) if i > j => out.extend([b, a]),
            (Some((_, &a)), _) => out.push(a),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u64) -> Record {
        Record::Step(StepRecord {
            step: n,
            epoch: n / 10,
            batch: n % 10,
            loss: 7.0 - n as f64 * 0.01,
            top1_error: 0.99,
            top5_error: 0.95,
            lr: 0.01,
            images_per_sec: 500.0 + n as f64,
            time: n as f64 * 0.5,
        })
    }

    fn epoch(e: u64, val: bool) -> Record {
        Record::Epoch(EpochRecord {
            epoch: e,
            step: (e + 1) * 10,
            train_loss: 6.0 - e as f64,
            train_top1_error: 0.9 - 0.1 * e as f64,
            train_top5_error: 0.7 - 0.1 * e as f64,
            val_top1_error: val.then_some(0.8),
            val_top5_error: val.then_some(0.6),
            val_loss: val.then_some(5.5),
            lr: 0.01,
            images_per_sec: 510.0,
            seconds: 5.0,
            time: (e + 1) as f64 * 5.0,
        })
    }

    /// Steps 1..=n with an epoch record after every 10th.
    fn run(n: u64) -> Vec<Record> {
        let mut out = Vec::new();
        for s in 1..=n {
            out.push(step(s));
            if s.is_multiple_of(10) {
                out.push(epoch(s / 10 - 1, s.is_multiple_of(20)));
            }
        }
        out
    }

    fn write_all(dir: &Path, records: &[Record]) -> PathBuf {
        let mut log = MetricsLog::open(dir, None).unwrap();
        for r in records {
            log.append(r).unwrap();
        }
        log.sync().unwrap();
        log.path().to_path_buf()
    }

    #[test]
    fn append_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let records = run(25);
        let path = write_all(dir.path(), &records);
        assert_eq!(path, dir.path().join(FILE_NAME));
        assert_eq!(read_records(&path).unwrap(), records);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), records.len());
        assert!(text.starts_with("{\"kind\":\"step\",\"step\":1,"), "{text}");
        assert!(text.contains("{\"kind\":\"epoch\",\"epoch\":0,\"step\":10,"));
        assert!(text.contains("\"val_loss\":null"));

        // A fresh run truncates.
        let log = MetricsLog::open(dir.path(), None).unwrap();
        assert_eq!(fs::read(log.path()).unwrap().len(), 0);
        assert!(read_records(&path).unwrap().is_empty());
    }

    #[test]
    fn non_finite_values_read_back_as_nan() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = step(3);
        if let Record::Step(s) = &mut r {
            s.loss = f64::NAN;
            s.images_per_sec = f64::INFINITY;
        }
        let mut e = epoch(0, true);
        if let Record::Epoch(e) = &mut e {
            e.val_loss = Some(f64::NAN);
        }
        let path = write_all(dir.path(), &[r, e]);
        let back = read_records(&path).unwrap();
        match &back[0] {
            Record::Step(s) => {
                assert!(s.loss.is_nan() && s.images_per_sec.is_nan());
                assert_eq!(s.lr, 0.01);
            }
            other => panic!("{other:?}"),
        }
        match &back[1] {
            Record::Epoch(e) => assert_eq!(e.val_loss, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resume_drops_later_records_and_keeps_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let records = run(27);
        let path = write_all(dir.path(), &records);

        let mut log = MetricsLog::open(dir.path(), Some(20)).unwrap();
        let kept: Vec<Record> = records.iter().filter(|r| r.step() <= 20).cloned().collect();
        assert_eq!(kept.len(), 22); // 20 steps, 2 epochs
        assert_eq!(read_records(&path).unwrap(), kept);
        // Continue from step 21: no step appears twice.
        for s in 21..=23 {
            log.append(&step(s)).unwrap();
        }
        drop(log);
        let back = read_records(&path).unwrap();
        let steps: Vec<u64> = back
            .iter()
            .filter_map(|r| match r {
                Record::Step(s) => Some(s.step),
                Record::Epoch(_) => None,
            })
            .collect();
        assert_eq!(steps, (1..=23).collect::<Vec<_>>());
        assert_eq!(back[..22], kept[..]);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![FILE_NAME.to_string()]);

        // Resuming at a later step than logged keeps everything and leaves the bytes alone.
        let before = fs::read(&path).unwrap();
        MetricsLog::open(dir.path(), Some(1000)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), before);
        // Resuming at step 0 keeps nothing.
        MetricsLog::open(dir.path(), Some(0)).unwrap();
        assert!(read_records(&path).unwrap().is_empty());
        // Resuming without a log starts one.
        fs::remove_file(&path).unwrap();
        let mut log = MetricsLog::open(dir.path(), Some(5)).unwrap();
        log.append(&step(6)).unwrap();
        assert_eq!(read_records(&path).unwrap(), vec![step(6)]);
    }

    #[test]
    fn a_torn_last_line_is_dropped_on_read_and_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let records = run(12);
        let path = write_all(dir.path(), &records);
        let full = serde_json::to_string(&step(13)).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&full.as_bytes()[..full.len() / 2]).unwrap();
        drop(f);
        assert_eq!(read_records(&path).unwrap(), records);

        // Zero-filled garbage after a crash is torn too.
        let mut bytes = fs::read(&path).unwrap();
        let clean = bytes.len() - full.len() / 2;
        bytes.truncate(clean);
        bytes.extend_from_slice(&[0u8; 64]);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_records(&path).unwrap(), records);

        // Resume rewrites without it; the next append starts on a line of its own.
        let mut log = MetricsLog::open(dir.path(), Some(12)).unwrap();
        assert_eq!(fs::read(&path).unwrap().len(), clean);
        log.append(&step(13)).unwrap();
        let mut expected = records.clone();
        expected.push(step(13));
        assert_eq!(read_records(&path).unwrap(), expected);

        // A complete last record missing only its newline is kept, and resume ends it.
        let mut bytes = fs::read(&path).unwrap();
        bytes.pop();
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_records(&path).unwrap(), expected);
        let mut log = MetricsLog::open(dir.path(), Some(100)).unwrap();
        log.append(&step(14)).unwrap();
        expected.push(step(14));
        assert_eq!(read_records(&path).unwrap(), expected);
    }

    #[test]
    fn a_corrupt_middle_line_is_a_parse_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let lines = [
            serde_json::to_string(&step(1)).unwrap(),
            String::new(),
            "{\"kind\":\"step\",\"step\":2,\"epo".to_string(),
            serde_json::to_string(&step(3)).unwrap(),
        ];
        let text = lines.join("\n") + "\n";
        fs::write(&path, &text).unwrap();
        let err = read_records(&path).unwrap_err();
        assert!(
            matches!(&err, MetricsError::Parse { line: 3, path: p, .. } if *p == path),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");

        // Resume refuses too and leaves the file alone.
        let err = MetricsLog::open(dir.path(), Some(1)).unwrap_err();
        assert!(
            matches!(err, MetricsError::Parse { line: 3, .. }),
            "{err:?}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), text);

        // An unknown kind is not a record either.
        fs::write(&path, "{\"kind\":\"batch\",\"step\":1}\n{}\n").unwrap();
        let err = read_records(&path).unwrap_err();
        assert!(
            matches!(err, MetricsError::Parse { line: 1, .. }),
            "{err:?}"
        );

        let missing = dir.path().join("none.jsonl");
        let err = read_records(&missing).unwrap_err();
        assert!(matches!(err, MetricsError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("none.jsonl"), "{err}");
    }

    fn check_plots(dir: &Path, records: &[Record]) {
        let written = write_plots(dir, records).unwrap();
        let mut expected = vec![
            dir.join(PLOTS_FILE),
            dir.join(PLOTS_FILE).with_extension("svg"),
        ];
        expected.extend(
            CHART_NAMES
                .iter()
                .map(|n| dir.join(PLOTS_DIR).join(format!("{n}.png"))),
        );
        assert_eq!(written, expected);
        let grid = image::open(&written[0]).unwrap();
        assert_eq!(
            (grid.width(), grid.height()),
            (2 * CHART_WIDTH, 2 * CHART_HEIGHT)
        );
        let svg = fs::read_to_string(&written[1]).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("Training loss"),
            "{svg:.200}"
        );
        for p in &written[2..] {
            let img = image::open(p).unwrap();
            assert_eq!((img.width(), img.height()), (CHART_WIDTH, CHART_HEIGHT));
        }
        let names: Vec<_> = fs::read_dir(dir.join(PLOTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn write_plots_writes_every_chart_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let records = run(120);
        check_plots(dir.path(), &records);
        // Regenerating overwrites in place.
        check_plots(dir.path(), &records);
        // The charts carry the data.
        let charts = charts(&records);
        assert_eq!(charts[0].series.len(), 4);
        assert_eq!(charts[0].series[0].points.len(), 120);
        assert_eq!(charts[0].series[1].points.len(), 120);
        assert_eq!(charts[1].series.len(), 4);
        assert_eq!(charts[1].series[0].points[0], (0.0, 90.0));
        assert_eq!(charts[1].series[2].points.len(), 6);
        assert!(charts[2].log_y);
    }

    #[test]
    fn write_plots_handles_few_records() {
        let dir = tempfile::tempdir().unwrap();
        // Steps only, no epoch yet.
        check_plots(dir.path(), &run(7));
        let charts = charts(&run(7));
        assert_eq!(charts[1].series.len(), 2);
        assert!(charts[1].series.iter().all(|s| s.points.is_empty()));
        // One step.
        check_plots(dir.path(), &[step(1)]);
        // Nothing at all, and an epoch without steps.
        check_plots(dir.path(), &[]);
        check_plots(dir.path(), &[epoch(0, true)]);
        assert_eq!(
            super::charts(&[epoch(0, true)])[2].series[0].points.len(),
            1
        );
    }

    #[test]
    fn moving_average_and_thinning() {
        let pts: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(
            moving_average(&pts, 3),
            vec![
                (0.0, 0.0),
                (1.0, 0.5),
                (2.0, 1.0),
                (3.0, 2.0),
                (4.0, 3.0),
                (5.0, 4.0)
            ]
        );
        let with_nan = [(0.0, f64::NAN), (1.0, 2.0), (2.0, f64::NAN), (3.0, 4.0)];
        assert_eq!(
            moving_average(&with_nan, 2),
            vec![(1.0, 2.0), (2.0, 2.0), (3.0, 4.0)]
        );

        let many: Vec<(f64, f64)> = (0..100_000)
            .map(|i| (i as f64, if i % 2 == 0 { 1.0 } else { 3.0 }))
            .collect();
        let thinned = thin(many, MAX_POINTS);
        assert!(thinned.len() <= MAX_POINTS, "{}", thinned.len());
        assert!(thinned.len() > MAX_POINTS / 2);
        assert!(thinned.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(thinned.iter().any(|p| p.1 == 1.0) && thinned.iter().any(|p| p.1 == 3.0));
        let few = vec![(0.0, 1.0), (1.0, f64::NAN)];
        assert_eq!(thin(few.clone(), MAX_POINTS).len(), few.len());
    }
}
