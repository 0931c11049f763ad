//! What the network sees: the first samples of a training epoch, augmented exactly as the
//! loader augments them for training (same seed, same per-sample randomness), turned back into
//! viewable colour and captioned with their class names, for a contact sheet (`vgg preview`).

use std::sync::Arc;

use crate::config::pipeline::{OutputKind, Pipeline};
use crate::data::loader::{Loader, LoaderError, LoaderOptions, Mode};
use crate::data::store::PreparedSplit;
use crate::report::contact_sheet::{denormalize_chw, Tile};

/// The first `count` samples of `epoch` in the pipeline's order, as tiles. The mean is added
/// back; the PCA lighting shift stays visible. `threads` overrides the loader's.
pub fn training_tiles(
    pipeline: &Pipeline,
    split: Arc<PreparedSplit>,
    count: usize,
    epoch: u64,
    threads: Option<usize>,
) -> Result<Vec<Tile>, LoaderError> {
    let classes: Vec<String> = split
        .manifest
        .classes
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let mut settings = pipeline.loader.clone();
    settings.batch_size = count.max(1);
    settings.drop_last = false;
    settings.output = OutputKind::F32Nchw;
    if let Some(t) = threads {
        settings.threads = t;
    }
    let mut loader = Loader::new(
        split,
        LoaderOptions::new(settings, Mode::Train(pipeline.train.clone()), epoch),
    )?;
    let Some(batch) = loader.next() else {
        return Ok(Vec::new());
    };
    let batch = batch?;
    let images = batch.images().expect("f32 output was asked for");
    let c = pipeline.train.crop;
    Ok((0..batch.len())
        .map(|i| {
            let chw = images.index_axis(ndarray::Axis(0), i);
            let label = batch.labels()[i] as usize;
            Tile {
                width: c,
                height: c,
                rgb: denormalize_chw(
                    chw.as_slice().expect("batches are contiguous"),
                    c,
                    pipeline.train.mean,
                ),
                caption: classes
                    .get(label)
                    .cloned()
                    .unwrap_or_else(|| label.to_string()),
            }
        })
        .collect())
}
