//! The data path, from image files to batches:
//!
//! ```text
//! source (list / generate) -> prepare -> shard files + manifest -> store -> loader (augment)
//! ```
//!
//! - [`source`]: listing an ImageNet-style folder (and its label files) or generating the
//!   synthetic stand-in; [`imaging`]: decoding, colour conversion, resizing, encoding;
//! - [`prepare`]: `vgg prepare`, sources into [`shard`] files and a [`manifest`];
//! - [`store`]: a prepared split opened for reading (records by index), inspect and verify;
//! - [`augment`]: the paper's per-sample transforms; [`loader`]: the parallel batch loader;
//! - [`preview`]: augmented samples as captioned tiles for a contact sheet.

pub mod augment;
pub mod imaging;
pub mod loader;
pub mod manifest;
pub mod prepare;
pub mod preview;
pub mod shard;
pub mod source;
pub mod store;
