//! Per-sample kernels of the data loader: one shard record in, one network input out.
//!
//! This is the hot path of training (about 1.3 million calls an epoch on ImageNet, run inside
//! the loader's rayon pool), so it lives apart from the loader's scheduling and is written to
//! cost little more than the JPEG decode it starts with.
//!
//! # The training transform (Simonyan & Zisserman sec. 3.1, after AlexNet)
//!
//! 1. Decode: JPEG records with zune-jpeg into a reused per-thread buffer ([`Scratch`]); raw RGB8
//!    records are used straight from the (memory-mapped) record, no copy.
//! 2. Isotropic rescale so the shortest side is S ([`Scale::Fixed`] or, for scale jitter, drawn
//!    per image uniformly among the integers `min..=max`), the long side rounded to nearest
//!    ([`crate::data::imaging::scaled_size`]).
//! 3. A `crop x crop` window (224 in the paper) at a uniformly drawn origin ([`crop_origin`]).
//! 4. Horizontal flip with probability `flip_p` (0.5).
//! 5. AlexNet's PCA lighting: the same RGB vector ([`pca_shift`]) added to every pixel, with
//!    `alpha_i ~ N(0, pca_std)` (0.1) drawn once per image.
//! 6. Mean RGB subtraction ([`VGG_MEAN`]).
//!
//! Output is either `f32` CHW (`x = pixel + shift - mean`), or the `u8` HWC crop plus the one
//! per-image vector `shift - mean`, so a consumer can finish the arithmetic on the device from a
//! quarter of the bytes ([`Output`]). Both describe the same numbers exactly.
//!
//! # Crop-box resize: the cost does not grow with S
//!
//! Steps 2 and 3 are fused. The crop window is placed in the rescaled image's coordinates, mapped
//! back to a fractional rectangle of the stored image, and only that rectangle is resampled to
//! `crop x crop` (fast_image_resize's crop box). Every output pixel sees exactly the source pixels
//! and filter weights it would see in the full rescale, because the kernel windows are taken
//! from the whole source image, not clipped to the box; the result equals rescale-then-crop up
//! to the rounding of the filter coefficients (the tests measure 0-1 levels; identity scale is
//! an exact copy). Rescaling a 500x375 image to S = 512 first would resample 683x512 pixels to
//! keep 224x224 of them; the crop box resamples only those.
//!
//! # Filter: bilinear, as a convolution, both ways
//!
//! Both directions use `fir::ResizeAlg::Convolution(FilterType::Bilinear)`:
//! - downscaling (S below the stored short side, the common case after the store's 512 cap):
//!   the triangle filter stretched by the scale factor, i.e. an antialiased bilinear like PIL's
//!   and torchvision's `bilinear` with `antialias=True`, so small S values do not alias;
//! - upscaling (S above the stored size, e.g. a 375-pixel photo at S = 512): the kernel stays
//!   one source pixel wide, which is plain bilinear interpolation.
//!
//! Lanczos-3 (the store's offline filter) would read 3x as many taps per output pixel on the
//! hot path and rings on edges; nearest aliases. Bilinear is the cheapest filter that is both
//! antialiased and ring-free, and the network never sees a sharper original anyway.
//! The evaluation rescale ([`eval_sample`], [`rescale_whole`]) uses the same filter, so test
//! images are rescaled exactly as training images were.
//!
//! # Randomness
//!
//! Every random choice comes from `Rng::new(seed, Stream::Augment, epoch, index)`, never from a
//! shared generator, so a sample's augmentation is the same whatever the thread count or order.
//! [`TrainTransform::params`] draws, in this fixed order: S (only for [`Scale::Jitter`]), the
//! crop's `u` then `v` (`[0, 1)`), the flip (one Bernoulli draw, always made), then
//! `alpha[0..3]` (three normal draws, always made; `pca_std = 0` scales them to 0).
//!
//! # Contract
//!
//! A record that is not what its index row says (corrupt or truncated JPEG, wrong decoded size,
//! raw bytes of the wrong length, zero size) is an [`AugmentError`], never a panic or a black
//! image. Programmer errors panic: an output slice of the wrong length, a crop larger than the
//! scale (the pipeline configuration refuses it), an [`EvalTransform`] without a crop passed to
//! [`eval_sample`].
//!
//! # Allocation
//!
//! With a [`Scratch`] per thread, the steady state allocates none of the image-sized buffers:
//! the decode buffer, the crop buffer and the resizer's intermediate image are reused and only
//! grow. What is out of reach: zune-jpeg allocates its own per-decode state (row buffers,
//! Huffman tables) and fast_image_resize its coefficient tables (a few KiB per call).

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use fast_image_resize as fir;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

pub use crate::config::pipeline::{EvalTransform, Scale, TrainTransform, VGG_MEAN};
use crate::data::imaging::{jpeg_is_complete, scaled_size};
use crate::data::shard::{Encoding, RecordRef, ShardError};
use crate::data::store::PreparedSplit;
use crate::util::rng::{Rng, Stream};

/// Eigenvalues of the ImageNet RGB covariance on the 0-1 scale (AlexNet's PCA lighting).
pub const PCA_EIGVAL: [f32; 3] = [0.2175, 0.0188, 0.0045];

/// Eigenvectors of the ImageNet RGB covariance: rows are R, G, B; columns are the eigenvectors
/// belonging to [`PCA_EIGVAL`] in order.
pub const PCA_EIGVEC: [[f32; 3]; 3] = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
];

/// The resampling filter of every rescale in this module (see the module documentation).
const RESIZE_ALG: fir::ResizeAlg = fir::ResizeAlg::Convolution(fir::FilterType::Bilinear);

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A record that could not be turned into a sample, named by shard, record and key.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The record's index entry is damaged.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// The record's bytes are not what its index row says.
    #[error("{shard}: record {record} ({key}): {source}")]
    Record {
        shard: PathBuf,
        record: usize,
        key: String,
        #[source]
        source: AugmentError,
    },
}

/// Runs `f` on record `global` of `split` with this thread's reusable [`Scratch`] (decode and
/// resize buffers, so workers allocate only while warming up); a failure names the record.
/// The one way the loader, the evaluator and the benchmarks read a record's pixels.
pub fn with_record<'s, R>(
    split: &'s PreparedSplit,
    global: u64,
    f: impl FnOnce(&RecordRef<'s>, &mut Scratch) -> Result<R, AugmentError>,
) -> Result<R, SampleError> {
    let rec = split.record(global)?;
    SCRATCH
        .with(|s| f(&rec, &mut s.borrow_mut()))
        .map_err(|source| SampleError::Record {
            shard: split.shard_path(global).to_path_buf(),
            record: rec.index,
            key: rec.key.to_string(),
            source,
        })
}

/// One sample's random choices, drawn by [`TrainTransform::params`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// S for this image.
    pub scale: u32,
    /// Horizontal crop position in `[0, 1)` (see [`crop_origin`]).
    pub crop_u: f64,
    /// Vertical crop position in `[0, 1)`.
    pub crop_v: f64,
    /// Mirror the crop left-right.
    pub flip: bool,
    /// PCA lighting coefficients, already multiplied by `pca_std`.
    pub alpha: [f32; 3],
}

impl TrainTransform {
    /// Draws the sample's random parameters from `(seed, epoch, index)`; the draw order is in the
    /// module documentation and never changes, or old runs stop reproducing.
    pub fn params(&self, seed: u64, epoch: u64, index: u64) -> SampleParams {
        let mut rng = Rng::new(seed, Stream::Augment, epoch, index);
        let scale = match self.scale {
            Scale::Fixed(s) => s,
            Scale::Jitter { min, max } => rng.range_inclusive(min as u64, max as u64) as u32,
        };
        let crop_u = rng.next_f64();
        let crop_v = rng.next_f64();
        let flip = rng.bernoulli(self.flip_p);
        let mut alpha = [0.0f32; 3];
        for a in &mut alpha {
            *a = (rng.normal() * self.pca_std as f64) as f32;
        }
        SampleParams {
            scale,
            crop_u,
            crop_v,
            flip,
            alpha,
        }
    }
}

/// Crop origin `(x, y)` in the rescaled image of size `(sw, sh)` for a `crop x crop` window:
/// `x = floor(u * (sw - crop + 1))`, clamped to `sw - crop` (and to 0 when the crop does not
/// fit); the same for `y` with `v`. With `u` uniform in `[0, 1)` every one of the
/// `sw - crop + 1` positions is equally likely.
pub fn crop_origin(sw: u32, sh: u32, crop: u32, u: f64, v: f64) -> (u32, u32) {
    let pick = |side: u32, t: f64| -> u32 {
        let room = side.saturating_sub(crop);
        // `as` saturates: negative and NaN give 0.
        ((t * (room as f64 + 1.0)).floor() as u32).min(room)
    };
    (pick(sw, u), pick(sh, v))
}

/// The RGB shift (0-255 scale) of AlexNet's PCA lighting for coefficients `alpha`:
/// `eigvec . (alpha * eigval * 255)`.
pub fn pca_shift(alpha: [f32; 3]) -> [f32; 3] {
    let mut shift = [0.0f32; 3];
    for (s, row) in shift.iter_mut().zip(&PCA_EIGVEC) {
        *s = (0..3)
            .map(|j| row[j] * (alpha[j] * PCA_EIGVAL[j] * 255.0))
            .sum();
    }
    shift
}

/// Where a kernel writes one sample.
pub enum Output<'a> {
    /// `3 * crop * crop` floats, planes R, G, B: `pixel + shift - mean`.
    F32Chw(&'a mut [f32]),
    /// The crop's pixels (`crop * crop * 3` bytes, HWC) and the per-image `shift - mean` (3
    /// floats): the network input is `pixels + shift`, channel by channel.
    U8Hwc {
        pixels: &'a mut [u8],
        shift: &'a mut [f32],
    },
}

/// Per-thread working memory, reused from sample to sample so the steady state allocates no
/// image-sized buffers. Keep one per worker thread (`Scratch::default()`).
#[derive(Default)]
pub struct Scratch {
    /// Decoded RGB8 of the current JPEG record (length only grows).
    decoded: Vec<u8>,
    kernel: Kernel,
}

/// The part of [`Scratch`] the resampling uses, apart from the decode buffer so both can be
/// borrowed at once.
#[derive(Default)]
struct Kernel {
    resizer: fir::Resizer,
    /// The resampled crop before it is written out as `f32` (length only grows).
    crop: Vec<u8>,
}

impl Scratch {
    /// Bytes held by the reusable buffers (for tests that check the steady state allocates
    /// nothing new).
    #[doc(hidden)]
    pub fn capacity_bytes(&self) -> usize {
        self.decoded.capacity()
            + self.kernel.crop.capacity()
            + self.kernel.resizer.size_of_internal_buffers()
    }
}

/// Why a record could not be turned into a sample: the data was wrong, not the caller.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    #[error("JPEG decode failed: {reason}")]
    Decode { reason: String },
    #[error(
        "decoded size {}x{} differs from the index row's {}x{}",
        found.0, found.1, expected.0, expected.1
    )]
    SizeMismatch {
        expected: (u32, u32),
        found: (u32, u32),
    },
    #[error("raw record has {found} bytes, its index row's size needs {expected}")]
    Raw { expected: usize, found: usize },
    #[error("record's index row says {width}x{height}, a zero-sized image")]
    Empty { width: u32, height: u32 },
}

impl AugmentError {
    /// A short stable tag for reports and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            AugmentError::Decode { .. } => "decode",
            AugmentError::SizeMismatch { .. } => "size-mismatch",
            AugmentError::Raw { .. } => "raw-length",
            AugmentError::Empty { .. } => "empty",
        }
    }
}

/// Decodes a record to RGB8 and returns `(width, height, pixels)`: a JPEG into `scratch` (any
/// colour model comes out RGB; grayscale is replicated to R = G = B), a raw record borrowed as
/// it is. The decoded size must equal the index row's; it is checked from the JPEG header
/// before any pixel is decoded.
pub fn decode_record<'a>(
    rec: &RecordRef<'a>,
    scratch: &'a mut Scratch,
) -> Result<(u32, u32, &'a [u8]), AugmentError> {
    decode_into(rec, &mut scratch.decoded)
}

fn decode_into<'a>(
    rec: &RecordRef<'a>,
    buf: &'a mut Vec<u8>,
) -> Result<(u32, u32, &'a [u8]), AugmentError> {
    let (w, h) = (rec.width, rec.height);
    if w == 0 || h == 0 {
        return Err(AugmentError::Empty {
            width: w,
            height: h,
        });
    }
    let expected = w as usize * h as usize * 3;
    match rec.encoding {
        Encoding::Raw => {
            if rec.bytes.len() != expected {
                return Err(AugmentError::Raw {
                    expected,
                    found: rec.bytes.len(),
                });
            }
            Ok((w, h, rec.bytes))
        }
        Encoding::Jpeg => {
            decode_jpeg(rec.bytes, (w, h), buf)?;
            Ok((w, h, &buf[..expected]))
        }
    }
}

/// Decodes a JPEG of known size into `buf[..w * h * 3]`, growing `buf` only when too short.
fn decode_jpeg(bytes: &[u8], (w, h): (u32, u32), buf: &mut Vec<u8>) -> Result<(), AugmentError> {
    let fail = |reason: String| AugmentError::Decode { reason };
    // The decoder fills a truncated scan with grey instead of failing; the store refused such
    // files, so one here is a damaged record.
    if !jpeg_is_complete(bytes) {
        return Err(fail("truncated JPEG (no end-of-image marker)".into()));
    }
    // The same options as the `image` crate the store decoded with, so what `prepare` accepted
    // decodes here too; the size check against the index row is the bomb guard.
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    // A decoder bug on hostile input must not take the loader's worker down with it.
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), AugmentError> {
        decoder
            .decode_headers()
            .map_err(|e| fail(format!("{e:?}")))?;
        let (dw, dh) = decoder
            .dimensions()
            .ok_or_else(|| fail("no frame header".into()))?;
        if (dw, dh) != (w as usize, h as usize) {
            return Err(AugmentError::SizeMismatch {
                expected: (w, h),
                found: (dw as u32, dh as u32),
            });
        }
        let n = w as usize * h as usize * 3;
        if decoder.output_buffer_size() != Some(n) {
            return Err(fail(format!(
                "output colour space {:?} is not RGB",
                decoder.output_colorspace()
            )));
        }
        if buf.len() < n {
            buf.resize(n, 0);
        }
        decoder
            .decode_into(&mut buf[..n])
            .map_err(|e| fail(format!("{e:?}")))
    }));
    result.unwrap_or_else(|_| Err(fail("the JPEG decoder panicked".into())))
}

/// Training sample: decode + scale/crop (crop-box resize) + flip + PCA lighting + mean into
/// `out`.
pub fn train_sample(
    rec: &RecordRef<'_>,
    t: &TrainTransform,
    p: &SampleParams,
    scratch: &mut Scratch,
    out: Output<'_>,
) -> Result<(), AugmentError> {
    with_decoded(rec, scratch, |k, rgb, w, h| {
        train_kernel(k, rgb, w, h, t, p, out)
    })
}

/// Decodes `rec` into the scratch's buffer and hands the pixels, with the scratch's resize
/// kernel, to `f` (the two halves of [`Scratch`] borrowed apart).
fn with_decoded(
    rec: &RecordRef<'_>,
    scratch: &mut Scratch,
    f: impl FnOnce(&mut Kernel, &[u8], u32, u32),
) -> Result<(), AugmentError> {
    let Scratch { decoded, kernel } = scratch;
    let (w, h, rgb) = decode_into(rec, decoded)?;
    f(kernel, rgb, w, h);
    Ok(())
}

/// [`train_sample`] from already-decoded RGB8 (`w * h * 3` bytes, HWC).
pub fn train_from_rgb(
    rgb: &[u8],
    w: u32,
    h: u32,
    t: &TrainTransform,
    p: &SampleParams,
    scratch: &mut Scratch,
    out: Output<'_>,
) {
    train_kernel(&mut scratch.kernel, rgb, w, h, t, p, out);
}

fn train_kernel(
    kernel: &mut Kernel,
    rgb: &[u8],
    w: u32,
    h: u32,
    t: &TrainTransform,
    p: &SampleParams,
    out: Output<'_>,
) {
    let scaled = scaled_size(w, h, p.scale);
    let crop = t.crop;
    let origin = crop_origin(scaled.0, scaled.1, crop, p.crop_u, p.crop_v);
    let shift = pca_shift(p.alpha);
    let offset = [
        shift[0] - t.mean[0],
        shift[1] - t.mean[1],
        shift[2] - t.mean[2],
    ];
    let win = Window {
        scaled,
        origin,
        crop,
    };
    render(kernel, (rgb, w, h), win, p.flip, offset, out);
}

/// Eval: rescale so the shortest side is Q, then the centre `crop x crop` window into `out`
/// (origin `((sw - crop) / 2, (sh - crop) / 2)`, rounded down), minus the mean. Panics when
/// `t.crop` is `None` (whole images go through [`rescale_whole`]).
///
/// This is the one centre crop of the toolkit: the trainer's validation (through the loader)
/// and `vgg eval --protocol centre` (through [`centre_from_rgb`]) feed the network exactly these
/// pixels.
pub fn eval_sample(
    rec: &RecordRef<'_>,
    t: &EvalTransform,
    scratch: &mut Scratch,
    out: Output<'_>,
) -> Result<(), AugmentError> {
    with_decoded(rec, scratch, |k, rgb, w, h| {
        centre_kernel(k, rgb, w, h, t, false, out)
    })
}

/// [`eval_sample`]'s centre crop of an already decoded RGB8 image (`w x h`), mirrored
/// left-right when `flip`: the evaluator decodes an image once and takes its views at several
/// scales.
pub fn centre_from_rgb(
    rgb: &[u8],
    w: u32,
    h: u32,
    t: &EvalTransform,
    flip: bool,
    scratch: &mut Scratch,
    out: Output<'_>,
) {
    centre_kernel(&mut scratch.kernel, rgb, w, h, t, flip, out);
}

fn centre_kernel(
    kernel: &mut Kernel,
    rgb: &[u8],
    w: u32,
    h: u32,
    t: &EvalTransform,
    flip: bool,
    out: Output<'_>,
) {
    let crop = t
        .crop
        .expect("a centre crop needs EvalTransform::crop; whole images go through rescale_whole");
    let scaled = scaled_size(w, h, t.scale);
    let origin = (
        scaled.0.saturating_sub(crop) / 2,
        scaled.1.saturating_sub(crop) / 2,
    );
    let offset = [-t.mean[0], -t.mean[1], -t.mean[2]];
    let win = Window {
        scaled,
        origin,
        crop,
    };
    render(kernel, (rgb, w, h), win, flip, offset, out);
}

/// Eval whole image: rescale RGB8 so the shortest side is `q` (same filter as training) and
/// return `(width, height, rgb8)`. Allocates; used by dense evaluation.
pub fn rescale_whole(rgb: &[u8], w: u32, h: u32, q: u32) -> (u32, u32, Vec<u8>) {
    let (sw, sh) = scaled_size(w, h, q);
    let src = source_view(rgb, w, h);
    let mut dst = fir::images::Image::new(sw, sh, fir::PixelType::U8x3);
    fir::Resizer::new()
        .resize(
            &src,
            &mut dst,
            &fir::ResizeOptions::new().resize_alg(RESIZE_ALG),
        )
        .expect("resize between RGB8 images of valid sizes cannot fail");
    (sw, sh, dst.into_vec())
}

/// A square crop of a rescaled image: the rescaled size, the crop's origin in it, its side.
#[derive(Debug, Clone, Copy)]
struct Window {
    scaled: (u32, u32),
    origin: (u32, u32),
    crop: u32,
}

fn source_view(rgb: &[u8], w: u32, h: u32) -> fir::images::ImageRef<'_> {
    assert_eq!(
        rgb.len(),
        w as usize * h as usize * 3,
        "RGB8 buffer of {w}x{h} must be w*h*3 bytes"
    );
    fir::images::ImageRef::new(w, h, rgb, fir::PixelType::U8x3)
        .expect("RGB8 buffer size matches its dimensions")
}

/// Resamples, from the `w x h` source, exactly the window `win` of the source rescaled to
/// `win.scaled`, into `dst` (`crop * crop * 3` bytes, HWC).
fn resample_window(
    resizer: &mut fir::Resizer,
    (rgb, w, h): (&[u8], u32, u32),
    win: Window,
    dst: &mut [u8],
) {
    let (sw, sh) = win.scaled;
    let c = win.crop;
    assert!(
        c >= 1 && c <= sw && c <= sh,
        "crop {c} does not fit the rescaled {sw}x{sh} image"
    );
    // Rescaled coordinate -> source coordinate, per axis (the rounded long side makes the two
    // factors differ slightly, exactly as in the full rescale). Multiplying before dividing keeps
    // integer ratios exact, so the identity scale stays an integer box (a plain copy).
    let to_src = |x: u32, src: u32, scaled: u32| -> f64 {
        (x as f64 * src as f64 / scaled as f64).min(src as f64)
    };
    let (x0, y0) = win.origin;
    let left = to_src(x0, w, sw);
    let right = to_src(x0 + c, w, sw);
    let top = to_src(y0, h, sh);
    let bottom = to_src(y0 + c, h, sh);
    let src = source_view(rgb, w, h);
    let mut out = fir::images::Image::from_slice_u8(c, c, dst, fir::PixelType::U8x3)
        .expect("crop buffer holds crop*crop RGB8 pixels");
    let options = fir::ResizeOptions::new().resize_alg(RESIZE_ALG).crop(
        left,
        top,
        right - left,
        bottom - top,
    );
    resizer
        .resize(&src, &mut out, &options)
        .expect("a crop box inside the source image cannot fail to resize");
}

/// Resamples the window, mirrors it when `flip`, and writes it with `offset` (= shift - mean).
fn render(
    kernel: &mut Kernel,
    src: (&[u8], u32, u32),
    win: Window,
    flip: bool,
    offset: [f32; 3],
    out: Output<'_>,
) {
    let c = win.crop as usize;
    let n = c * c * 3;
    match out {
        Output::F32Chw(x) => {
            assert_eq!(x.len(), n, "F32Chw output must hold 3*crop*crop floats");
            if kernel.crop.len() < n {
                kernel.crop.resize(n, 0);
            }
            let crop = &mut kernel.crop[..n];
            resample_window(&mut kernel.resizer, src, win, crop);
            write_f32_chw(crop, c, flip, offset, x);
        }
        Output::U8Hwc { pixels, shift } => {
            assert_eq!(pixels.len(), n, "U8Hwc pixels must hold crop*crop*3 bytes");
            assert_eq!(shift.len(), 3, "U8Hwc shift must hold 3 floats");
            resample_window(&mut kernel.resizer, src, win, pixels);
            if flip {
                for row in pixels.chunks_exact_mut(3 * c) {
                    row.as_chunks_mut::<3>().0.reverse();
                }
            }
            shift.copy_from_slice(&offset);
        }
    }
}

/// HWC RGB8 crop -> CHW `f32` planes R, G, B with `pixel + offset`, rows mirrored when `flip`.
fn write_f32_chw(crop: &[u8], c: usize, flip: bool, offset: [f32; 3], out: &mut [f32]) {
    let (r, gb) = out.split_at_mut(c * c);
    let (g, b) = gb.split_at_mut(c * c);
    let rows = crop
        .chunks_exact(3 * c)
        .zip(r.chunks_exact_mut(c))
        .zip(g.chunks_exact_mut(c))
        .zip(b.chunks_exact_mut(c));
    for (((src, r), g), b) in rows {
        let px = src.as_chunks::<3>().0;
        if flip {
            row_to_planes::<true>(px, r, g, b, offset);
        } else {
            row_to_planes::<false>(px, r, g, b, offset);
        }
    }
}

/// One row: `px`, `r`, `g` and `b` all hold `c` elements (checked once, so the loop has no
/// bounds checks).
#[inline(always)]
fn row_to_planes<const FLIP: bool>(
    px: &[[u8; 3]],
    r: &mut [f32],
    g: &mut [f32],
    b: &mut [f32],
    offset: [f32; 3],
) {
    let c = px.len();
    let (r, g, b) = (&mut r[..c], &mut g[..c], &mut b[..c]);
    for i in 0..c {
        let p = if FLIP { px[c - 1 - i] } else { px[i] };
        r[i] = f32::from(p[0]) + offset[0];
        g[i] = f32::from(p[1]) + offset[1];
        b[i] = f32::from(p[2]) + offset[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::imaging::{encode_jpeg, jpeg_header, resize_rgb8};
    use crate::data::shard::RecordFlags;

    /// A textured test image: gradients, a hard edge and noise (the hardest case for rounding).
    fn texture(w: u32, h: u32, seed: u64) -> Vec<u8> {
        let mut rng = Rng::from_seed(seed);
        let mut v = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let edge = if (x / 7 + y / 5) % 2 == 0 { 60 } else { 0 };
                let n = rng.below(80) as u32;
                v.push(((x * 150 / w) + n) as u8);
                v.push(((y * 150 / h) + edge + n / 2) as u8);
                v.push((((x + y) * 7) % 256) as u8);
            }
        }
        v
    }

    /// A photo-like image: smooth colour fields with mild noise (compresses like a photo).
    fn photo_like(w: u32, h: u32, seed: u64) -> Vec<u8> {
        let mut rng = Rng::from_seed(seed);
        let mut v = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
                let base = [
                    128.0 + 100.0 * (fx * 9.0).sin() * (fy * 4.0).cos(),
                    128.0 + 90.0 * (fx * 3.0 + fy * 7.0).sin(),
                    128.0 + 80.0 * ((fx - fy) * 11.0).cos(),
                ];
                for b in base {
                    let n = rng.below(25) as f32 - 12.0;
                    v.push((b + n).clamp(0.0, 255.0) as u8);
                }
            }
        }
        v
    }

    fn record(bytes: &[u8], width: u32, height: u32, encoding: Encoding) -> RecordRef<'_> {
        RecordRef {
            index: 0,
            key: "test",
            bytes,
            label: 0,
            width,
            height,
            encoding,
            flags: RecordFlags::default(),
            crc: 0,
            source_index: 0,
        }
    }

    fn transform(scale: Scale, crop: u32) -> TrainTransform {
        TrainTransform {
            scale,
            crop,
            flip_p: 0.5,
            pca_std: 0.1,
            mean: VGG_MEAN,
        }
    }

    fn fixed(scale: u32, u: f64, v: f64, flip: bool, alpha: [f32; 3]) -> SampleParams {
        SampleParams {
            scale,
            crop_u: u,
            crop_v: v,
            flip,
            alpha,
        }
    }

    /// The crop as `u8` HWC (no flip, no lighting), through the crop-box path.
    fn crop_u8(
        rgb: &[u8],
        w: u32,
        h: u32,
        c: u32,
        p: &SampleParams,
        scratch: &mut Scratch,
    ) -> Vec<u8> {
        let t = transform(Scale::Fixed(p.scale), c);
        let mut pixels = vec![0u8; (c * c * 3) as usize];
        let mut shift = [0.0f32; 3];
        train_from_rgb(
            rgb,
            w,
            h,
            &t,
            p,
            scratch,
            Output::U8Hwc {
                pixels: &mut pixels,
                shift: &mut shift,
            },
        );
        pixels
    }

    fn f32_out(
        rgb: &[u8],
        w: u32,
        h: u32,
        t: &TrainTransform,
        p: &SampleParams,
        scratch: &mut Scratch,
    ) -> Vec<f32> {
        let mut x = vec![0.0f32; (3 * t.crop * t.crop) as usize];
        train_from_rgb(rgb, w, h, t, p, scratch, Output::F32Chw(&mut x));
        x
    }

    /// Cuts the `c x c` window at `(x0, y0)` out of an RGB8 image `w` wide.
    fn cut(rgb: &[u8], w: u32, x0: u32, y0: u32, c: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity((c * c * 3) as usize);
        for y in y0..y0 + c {
            let start = ((y * w + x0) * 3) as usize;
            out.extend_from_slice(&rgb[start..start + (c * 3) as usize]);
        }
        out
    }

    #[test]
    fn crop_box_resize_matches_rescale_then_crop() {
        // (w, h, crop, S values: below, equal to (identity), above (upsampling) the short side)
        let cases: [(u32, u32, u32, &[u32]); 5] = [
            (500, 375, 224, &[224, 256, 300, 375, 384, 512]),
            (375, 500, 224, &[256, 375, 512]),
            (97, 61, 32, &[32, 40, 61, 150]),
            (64, 64, 24, &[24, 33, 64, 200]),
            (1000, 120, 96, &[100, 120, 131]),
        ];
        let mut rng = Rng::from_seed(9);
        let mut scratch = Scratch::default();
        let (mut worst, mut compared, mut differing) = (0u8, 0usize, 0usize);
        for (k, &(w, h, c, scales)) in cases.iter().enumerate() {
            let rgb = texture(w, h, k as u64);
            for &s in scales {
                let (sw, sh) = scaled_size(w, h, s);
                let full = resize_rgb8(&rgb, w, h, sw, sh, fir::FilterType::Bilinear);
                let mut positions = vec![(0.0, 0.0), (0.999_999_9, 0.999_999_9), (0.5, 0.25)];
                positions.extend((0..3).map(|_| (rng.next_f64(), rng.next_f64())));
                for (u, v) in positions {
                    let p = fixed(s, u, v, false, [0.0; 3]);
                    let got = crop_u8(&rgb, w, h, c, &p, &mut scratch);
                    let (x0, y0) = crop_origin(sw, sh, c, u, v);
                    let want = cut(&full, sw, x0, y0, c);
                    let diff = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| a.abs_diff(*b))
                        .max()
                        .unwrap();
                    compared += got.len();
                    differing += got.iter().zip(&want).filter(|(a, b)| a != b).count();
                    assert!(
                        diff <= 2,
                        "{w}x{h} S={s} crop {c} at ({x0},{y0}): max diff {diff}"
                    );
                    if s == w.min(h) {
                        // Identity scale: a plain crop of the source, bit for bit.
                        assert_eq!(got, cut(&rgb, w, x0, y0, c), "{w}x{h} S={s} identity");
                    }
                    worst = worst.max(diff);
                }
            }
        }
        eprintln!(
            "crop-box vs rescale-then-crop: max abs difference {worst}, \
             {differing} of {compared} values differ"
        );
    }

    #[test]
    fn known_crop_equals_the_source_window() {
        let (w, h, c) = (12u32, 9u32, 5u32);
        // Every pixel distinct, so a misplaced window cannot match by accident.
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        for (u, v) in [(0.0, 0.0), (0.3, 0.7), (0.999_999, 0.999_999), (0.5, 0.5)] {
            let p = fixed(h, u, v, false, [0.0; 3]);
            let got = crop_u8(&rgb, w, h, c, &p, &mut Scratch::default());
            let (x0, y0) = crop_origin(w, h, c, u, v);
            assert_eq!(got, cut(&rgb, w, x0, y0, c), "u={u} v={v}");
        }
        assert_eq!(crop_origin(12, 9, 5, 0.0, 0.0), (0, 0));
        assert_eq!(crop_origin(12, 9, 5, 1.0 - 1e-12, 1.0 - 1e-12), (7, 4));
        assert_eq!(crop_origin(12, 9, 5, 1.0, 1.0), (7, 4)); // clamped
                                                             // 8 horizontal positions: u in [3/8, 4/8) is position 3.
        assert_eq!(crop_origin(12, 9, 5, 0.375, 0.0), (3, 0));
        assert_eq!(crop_origin(12, 9, 5, 0.374_999, 0.0), (2, 0));
        assert_eq!(crop_origin(256, 300, 224, 0.5, 0.5), (16, 38));
    }

    #[test]
    fn flip_mirrors_the_unflipped_output_exactly() {
        let (w, h) = (150u32, 110u32);
        let rgb = texture(w, h, 3);
        let t = transform(Scale::Fixed(96), 64);
        let alpha = [0.05, -0.1, 0.2];
        let mut scratch = Scratch::default();
        let plain = f32_out(
            &rgb,
            w,
            h,
            &t,
            &fixed(96, 0.3, 0.6, false, alpha),
            &mut scratch,
        );
        let flipped = f32_out(
            &rgb,
            w,
            h,
            &t,
            &fixed(96, 0.3, 0.6, true, alpha),
            &mut scratch,
        );
        let c = 64usize;
        assert_ne!(plain, flipped);
        for plane in 0..3 {
            for y in 0..c {
                let row = plane * c * c + y * c;
                for x in 0..c {
                    assert_eq!(
                        flipped[row + x].to_bits(),
                        plain[row + c - 1 - x].to_bits(),
                        "plane {plane} row {y} col {x}"
                    );
                }
                // The left column of the flipped output is the right column of the plain one.
                assert_eq!(flipped[row], plain[row + c - 1]);
            }
        }
        // Same for the u8 output.
        let a = crop_u8(
            &rgb,
            w,
            h,
            64,
            &fixed(96, 0.3, 0.6, false, alpha),
            &mut scratch,
        );
        let b = crop_u8(
            &rgb,
            w,
            h,
            64,
            &fixed(96, 0.3, 0.6, true, alpha),
            &mut scratch,
        );
        for y in 0..c {
            for x in 0..c {
                let (i, j) = ((y * c + x) * 3, (y * c + c - 1 - x) * 3);
                assert_eq!(b[i..i + 3], a[j..j + 3], "row {y} col {x}");
            }
        }
    }

    #[test]
    fn pca_shift_follows_the_formula() {
        let alpha = [0.1f32, -0.2, 0.05];
        let by_hand = [
            -0.5675 * 0.1 * 0.2175 * 255.0
                + 0.7192 * -0.2 * 0.0188 * 255.0
                + 0.4009 * 0.05 * 0.0045 * 255.0,
            -0.5808 * 0.1 * 0.2175 * 255.0
                + -0.0045 * -0.2 * 0.0188 * 255.0
                + -0.8140 * 0.05 * 0.0045 * 255.0,
            -0.5836 * 0.1 * 0.2175 * 255.0
                + -0.6948 * -0.2 * 0.0188 * 255.0
                + 0.4203 * 0.05 * 0.0045 * 255.0,
        ];
        let got = pca_shift(alpha);
        for i in 0..3 {
            assert!(
                (got[i] as f64 - by_hand[i]).abs() < 1e-4,
                "{got:?} vs {by_hand:?}"
            );
        }
        // alpha = 1: each channel is its eigvec row dotted with eigval * 255.
        let ones = pca_shift([1.0; 3]);
        let want = [-27.5678, -33.1682, -35.2165];
        for i in 0..3 {
            let row: f64 = (0..3)
                .map(|j| PCA_EIGVEC[i][j] as f64 * PCA_EIGVAL[j] as f64 * 255.0)
                .sum();
            assert!((ones[i] as f64 - row).abs() < 1e-4);
            assert!((ones[i] - want[i]).abs() < 1e-3, "{ones:?}");
        }
        assert_eq!(pca_shift([0.0; 3]), [0.0; 3]);
    }

    #[test]
    fn pca_shift_is_added_to_every_pixel() {
        let (w, h) = (120u32, 90u32);
        let rgb = texture(w, h, 4);
        let t = transform(Scale::Fixed(80), 48);
        let alpha = [0.3, -0.2, 0.1];
        let shift = pca_shift(alpha);
        let mut scratch = Scratch::default();
        let base = f32_out(
            &rgb,
            w,
            h,
            &t,
            &fixed(80, 0.2, 0.9, false, [0.0; 3]),
            &mut scratch,
        );
        let lit = f32_out(
            &rgb,
            w,
            h,
            &t,
            &fixed(80, 0.2, 0.9, false, alpha),
            &mut scratch,
        );
        let plane = 48 * 48;
        for (i, (a, b)) in lit.iter().zip(&base).enumerate() {
            let want = shift[i / plane];
            assert!(
                (a - b - want).abs() < 1e-3,
                "element {i}: {} vs {want}",
                a - b
            );
        }
        // pca_std = 0 draws zero coefficients, hence no shift.
        let dark = TrainTransform {
            pca_std: 0.0,
            ..transform(Scale::Jitter { min: 256, max: 512 }, 224)
        };
        for i in 0..100 {
            let p = dark.params(1, 0, i);
            assert_eq!(p.alpha, [0.0; 3]);
            assert_eq!(pca_shift(p.alpha), [0.0; 3]);
        }
    }

    #[test]
    fn constant_image_gives_colour_minus_mean_in_chw_planes() {
        let (w, h) = (90u32, 70u32);
        let colour = [10u8, 200, 77];
        let rgb: Vec<u8> = (0..w * h).flat_map(|_| colour).collect();
        let t = transform(Scale::Fixed(50), 40);
        let x = f32_out(
            &rgb,
            w,
            h,
            &t,
            &fixed(50, 0.4, 0.4, true, [0.0; 3]),
            &mut Scratch::default(),
        );
        let plane = 40 * 40;
        for c in 0..3 {
            let want = colour[c] as f32 - VGG_MEAN[c];
            for (i, v) in x[c * plane..(c + 1) * plane].iter().enumerate() {
                assert_eq!(*v, want, "plane {c} element {i}");
            }
        }
    }

    #[test]
    fn u8_output_plus_shift_equals_f32_output() {
        let (w, h) = (140u32, 100u32);
        let rgb = texture(w, h, 5);
        let t = transform(Scale::Fixed(110), 72);
        let mut scratch = Scratch::default();
        for flip in [false, true] {
            let p = fixed(110, 0.7, 0.1, flip, [0.15, 0.05, -0.12]);
            let x = f32_out(&rgb, w, h, &t, &p, &mut scratch);
            let mut pixels = vec![0u8; 72 * 72 * 3];
            let mut shift = [0.0f32; 3];
            train_from_rgb(
                &rgb,
                w,
                h,
                &t,
                &p,
                &mut scratch,
                Output::U8Hwc {
                    pixels: &mut pixels,
                    shift: &mut shift,
                },
            );
            let s = pca_shift(p.alpha);
            assert_eq!(
                shift,
                [s[0] - VGG_MEAN[0], s[1] - VGG_MEAN[1], s[2] - VGG_MEAN[2]]
            );
            let plane = 72 * 72;
            for (i, px) in pixels.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    assert_eq!(
                        x[c * plane + i],
                        px[c] as f32 + shift[c],
                        "pixel {i} channel {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn params_are_deterministic_and_well_distributed() {
        let t = transform(Scale::Jitter { min: 256, max: 512 }, 224);
        assert_eq!(t.params(7, 2, 11), t.params(7, 2, 11));
        assert_ne!(t.params(7, 2, 11), t.params(7, 2, 12));
        assert_ne!(t.params(7, 2, 11), t.params(7, 3, 11));
        assert_ne!(t.params(7, 2, 11), t.params(8, 2, 11));

        let n = 20_000u64;
        let mut counts = vec![0u32; 257];
        let (mut flips, mut sum, mut sum2) = (0u32, [0.0f64; 3], [0.0f64; 3]);
        let (mut u_sum, mut v_sum) = (0.0, 0.0);
        for i in 0..n {
            let p = t.params(1, 0, i);
            assert!((256..=512).contains(&p.scale));
            counts[(p.scale - 256) as usize] += 1;
            flips += p.flip as u32;
            for k in 0..3 {
                sum[k] += p.alpha[k] as f64;
                sum2[k] += (p.alpha[k] as f64).powi(2);
            }
            assert!((0.0..1.0).contains(&p.crop_u) && (0.0..1.0).contains(&p.crop_v));
            u_sum += p.crop_u;
            v_sum += p.crop_v;
        }
        assert!(
            counts[0] > 0 && counts[256] > 0,
            "S = min and S = max both occur"
        );
        let expected = n as f64 / 257.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        // 256 degrees of freedom: mean 256, sd about 23.
        assert!(chi2 < 360.0, "chi-square {chi2}");
        let rate = flips as f64 / n as f64;
        assert!((rate - 0.5).abs() < 0.02, "flip rate {rate}");
        for k in 0..3 {
            let mean = sum[k] / n as f64;
            let std = (sum2[k] / n as f64 - mean * mean).sqrt();
            assert!(mean.abs() < 0.005, "alpha[{k}] mean {mean}");
            assert!((std - 0.1).abs() < 0.005, "alpha[{k}] std {std}");
        }
        assert!((u_sum / n as f64 - 0.5).abs() < 0.01);
        assert!((v_sum / n as f64 - 0.5).abs() < 0.01);

        // Fixed S, and flip_p 0 / 1.
        let mut never = transform(Scale::Fixed(384), 224);
        never.flip_p = 0.0;
        let mut always = never.clone();
        always.flip_p = 1.0;
        for i in 0..200 {
            assert_eq!(never.params(3, 1, i).scale, 384);
            assert!(!never.params(3, 1, i).flip);
            assert!(always.params(3, 1, i).flip);
        }
    }

    #[test]
    fn decode_record_handles_jpeg_gray_corrupt_raw_and_mismatch() {
        let (w, h) = (80u32, 60u32);
        let rgb = photo_like(w, h, 1);
        let jpg = encode_jpeg(&rgb, w, h, 90).unwrap();
        let mut scratch = Scratch::default();
        let (dw, dh, px) =
            decode_record(&record(&jpg, w, h, Encoding::Jpeg), &mut scratch).unwrap();
        assert_eq!((dw, dh, px.len()), (w, h, (w * h * 3) as usize));
        let err = px
            .iter()
            .zip(&rgb)
            .map(|(a, b)| a.abs_diff(*b) as f64)
            .sum::<f64>()
            / rgb.len() as f64;
        assert!(
            err < 8.0,
            "mean abs JPEG error {err} (noisy source, 4:2:0 chroma)"
        );
        // The same pixels as the store's decoder (the `image` crate) gives.
        let store = crate::data::imaging::decode_rgb8(&jpg, 1 << 20).unwrap();
        assert_eq!(px, &store.rgb[..]);

        // Grayscale JPEG: one component in, R = G = B out.
        let luma: Vec<u8> = (0..w * h).map(|i| ((i * 7) % 256) as u8).collect();
        let mut gray = Vec::new();
        jpeg_encoder::Encoder::new(&mut gray, 90)
            .encode(&luma, w as u16, h as u16, jpeg_encoder::ColorType::Luma)
            .unwrap();
        assert_eq!(jpeg_header(&gray).unwrap().components, 1);
        let (_, _, px) = decode_record(&record(&gray, w, h, Encoding::Jpeg), &mut scratch).unwrap();
        assert_eq!(px.len(), (w * h * 3) as usize);
        assert!(px.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        assert!(px.chunks_exact(3).any(|p| p[0] > 100), "not a black image");

        // Corrupt: garbage, a broken header, a truncated stream, an empty record.
        let mut broken = jpg.clone();
        broken[2..40].fill(0x55);
        for bad in [
            &b"not a jpeg at all"[..],
            &broken,
            &jpg[..jpg.len() / 2],
            &[],
        ] {
            let e = decode_record(&record(bad, w, h, Encoding::Jpeg), &mut scratch).unwrap_err();
            assert!(matches!(e, AugmentError::Decode { .. }), "{e:?}");
        }

        // Raw: borrowed as is when the length is right, an error otherwise.
        let rec = record(&rgb, w, h, Encoding::Raw);
        let (_, _, px) = decode_record(&rec, &mut scratch).unwrap();
        assert_eq!(px.as_ptr(), rgb.as_ptr(), "raw records are not copied");
        match decode_record(&record(&rgb[1..], w, h, Encoding::Raw), &mut scratch).unwrap_err() {
            AugmentError::Raw { expected, found } => {
                assert_eq!((expected, found), (14_400, 14_399))
            }
            e => panic!("unexpected {e:?}"),
        }

        // The index row says another size.
        match decode_record(&record(&jpg, 60, 80, Encoding::Jpeg), &mut scratch).unwrap_err() {
            AugmentError::SizeMismatch { expected, found } => {
                assert_eq!((expected, found), ((60, 80), (80, 60)))
            }
            e => panic!("unexpected {e:?}"),
        }
        let e = decode_record(&record(&jpg, 0, 60, Encoding::Jpeg), &mut scratch).unwrap_err();
        assert!(matches!(e, AugmentError::Empty { .. }), "{e:?}");

        // The sample kernels pass the errors on.
        let t = transform(Scale::Fixed(60), 48);
        let mut x = vec![0.0f32; 3 * 48 * 48];
        let p = t.params(0, 0, 0);
        let bad = record(&jpg[..jpg.len() / 2], w, h, Encoding::Jpeg);
        assert!(train_sample(&bad, &t, &p, &mut scratch, Output::F32Chw(&mut x)).is_err());
        let ok = record(&jpg, w, h, Encoding::Jpeg);
        assert!(train_sample(&ok, &t, &p, &mut scratch, Output::F32Chw(&mut x)).is_ok());
    }

    #[test]
    fn train_sample_from_jpeg_and_raw_agree_with_train_from_rgb() {
        let (w, h) = (130u32, 97u32);
        let rgb = photo_like(w, h, 2);
        let jpg = encode_jpeg(&rgb, w, h, 92).unwrap();
        let t = transform(Scale::Jitter { min: 64, max: 160 }, 56);
        let mut scratch = Scratch::default();
        let decoded = decode_record(&record(&jpg, w, h, Encoding::Jpeg), &mut scratch)
            .unwrap()
            .2
            .to_vec();
        for i in 0..8 {
            let p = t.params(5, 0, i);
            let mut a = vec![0.0f32; 3 * 56 * 56];
            train_sample(
                &record(&jpg, w, h, Encoding::Jpeg),
                &t,
                &p,
                &mut scratch,
                Output::F32Chw(&mut a),
            )
            .unwrap();
            assert_eq!(a, f32_out(&decoded, w, h, &t, &p, &mut scratch));
            let mut b = vec![0.0f32; 3 * 56 * 56];
            train_sample(
                &record(&rgb, w, h, Encoding::Raw),
                &t,
                &p,
                &mut scratch,
                Output::F32Chw(&mut b),
            )
            .unwrap();
            assert_eq!(b, f32_out(&rgb, w, h, &t, &p, &mut scratch));
        }
    }

    #[test]
    fn eval_centre_crop_and_whole_image() {
        let (w, h) = (120u32, 90u32);
        let rgb = texture(w, h, 6);
        let jpg_rec = record(&rgb, w, h, Encoding::Raw);
        let mut scratch = Scratch::default();
        // Q equal to the short side: the centre window of the source itself.
        let t = EvalTransform {
            scale: 90,
            crop: Some(64),
            mean: VGG_MEAN,
        };
        let mut pixels = vec![0u8; 64 * 64 * 3];
        let mut shift = [0.0f32; 3];
        eval_sample(
            &jpg_rec,
            &t,
            &mut scratch,
            Output::U8Hwc {
                pixels: &mut pixels,
                shift: &mut shift,
            },
        )
        .unwrap();
        assert_eq!(pixels, cut(&rgb, w, 28, 13, 64));
        assert_eq!(shift, [-VGG_MEAN[0], -VGG_MEAN[1], -VGG_MEAN[2]]);
        // Another Q: the centre window of the whole rescale (within rounding).
        let t = EvalTransform { scale: 70, ..t };
        eval_sample(
            &jpg_rec,
            &t,
            &mut scratch,
            Output::U8Hwc {
                pixels: &mut pixels,
                shift: &mut shift,
            },
        )
        .unwrap();
        let (sw, sh, whole) = rescale_whole(&rgb, w, h, 70);
        assert_eq!((sw, sh), (93, 70));
        assert_eq!(whole.len(), 93 * 70 * 3);
        let want = cut(&whole, sw, (93 - 64) / 2, (70 - 64) / 2, 64);
        let diff = pixels
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(diff <= 2, "eval crop vs whole rescale: {diff}");
        let mut x = vec![0.0f32; 3 * 64 * 64];
        eval_sample(&jpg_rec, &t, &mut scratch, Output::F32Chw(&mut x)).unwrap();
        assert_eq!(x[0], pixels[0] as f32 - VGG_MEAN[0]);
        assert_eq!(x[64 * 64], pixels[1] as f32 - VGG_MEAN[1]);
    }

    #[test]
    fn scratch_stops_growing_after_warm_up() {
        let (w, h) = (200u32, 150u32);
        let jpgs: Vec<Vec<u8>> = (0..4)
            .map(|k| encode_jpeg(&photo_like(w, h, 10 + k), w, h, 90).unwrap())
            .collect();
        let t = transform(Scale::Jitter { min: 100, max: 300 }, 96);
        let mut scratch = Scratch::default();
        let mut x = vec![0.0f32; 3 * 96 * 96];
        let mut pixels = vec![0u8; 96 * 96 * 3];
        let mut shift = [0.0f32; 3];
        let mut run = |scratch: &mut Scratch, i: u64, p: &SampleParams| {
            let rec = record(&jpgs[i as usize % 4], w, h, Encoding::Jpeg);
            train_sample(&rec, &t, p, scratch, Output::F32Chw(&mut x)).unwrap();
            let out = Output::U8Hwc {
                pixels: &mut pixels,
                shift: &mut shift,
            };
            train_sample(&rec, &t, p, scratch, out).unwrap();
        };
        // Warm-up: the smallest S reads the largest source window.
        for u in [0.0, 0.5, 0.99] {
            run(&mut scratch, 0, &fixed(100, u, u, false, [0.0; 3]));
        }
        let warm = scratch.capacity_bytes();
        assert!(warm >= (w * h * 3 + 96 * 96 * 3) as usize);
        for i in 0..200 {
            let p = t.params(2, 0, i);
            run(&mut scratch, i, &p);
            assert_eq!(scratch.capacity_bytes(), warm, "grew at sample {i} ({p:?})");
        }
        // The decode buffer is the same allocation from call to call, not a fresh one.
        let rec = record(&jpgs[1], w, h, Encoding::Jpeg);
        let first = decode_record(&rec, &mut scratch).unwrap().2.as_ptr();
        for jpg in &jpgs {
            let rec = record(jpg, w, h, Encoding::Jpeg);
            assert_eq!(decode_record(&rec, &mut scratch).unwrap().2.as_ptr(), first);
        }
    }

    /// Timing, run by hand in release mode:
    /// `cargo test --release --lib augment::tests::timing -- --ignored --nocapture`.
    /// Uses the real photos in `../shared/data/imagenet-sample-500` when present.
    #[test]
    #[ignore]
    fn timing() {
        use std::time::Instant;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/imagenet-sample-500/train");
        let mut files: Vec<(Vec<u8>, u32, u32)> = Vec::new();
        if let Ok(classes) = std::fs::read_dir(&dir) {
            for class in classes.flatten() {
                for f in std::fs::read_dir(class.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let bytes = std::fs::read(f.path()).unwrap();
                    if let Some(hd) = jpeg_header(&bytes) {
                        files.push((bytes, hd.width, hd.height));
                    }
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let source = if files.is_empty() {
            let rgb = photo_like(500, 375, 1);
            files.push((encode_jpeg(&rgb, 500, 375, 90).unwrap(), 500, 375));
            "synthetic 500x375"
        } else {
            "imagenet-sample-500"
        };
        let t = transform(Scale::Jitter { min: 256, max: 512 }, 224);
        let mut scratch = Scratch::default();
        let mut x = vec![0.0f32; 3 * 224 * 224];
        let mut pixels = vec![0u8; 224 * 224 * 3];
        let mut shift = [0.0f32; 3];
        let mut ok: Vec<usize> = Vec::new();
        for (i, (b, w, h)) in files.iter().enumerate() {
            if decode_record(&record(b, *w, *h, Encoding::Jpeg), &mut scratch).is_ok() {
                ok.push(i);
            }
        }
        let mut report = |label: &str, set: &[usize], scratch: &mut Scratch| {
            let reps = (2000 / set.len()).max(2);
            let bytes: usize = set.iter().map(|&i| files[i].0.len()).sum::<usize>() / set.len();
            let mut best = [f64::MAX; 3];
            for _round in 0..3 {
                let t0 = Instant::now();
                for _ in 0..reps {
                    for &i in set {
                        let (b, w, h) = &files[i];
                        let r = decode_record(&record(b, *w, *h, Encoding::Jpeg), scratch).unwrap();
                        std::hint::black_box(r.2[0]);
                    }
                }
                let n = (reps * set.len()) as f64;
                best[0] = best[0].min(t0.elapsed().as_secs_f64() * 1e6 / n);
                let t0 = Instant::now();
                for r in 0..reps {
                    for &i in set {
                        let (b, w, h) = &files[i];
                        let p = t.params(0, r as u64, i as u64);
                        let rec = record(b, *w, *h, Encoding::Jpeg);
                        train_sample(&rec, &t, &p, scratch, Output::F32Chw(&mut x)).unwrap();
                        std::hint::black_box(x[0]);
                    }
                }
                best[1] = best[1].min(t0.elapsed().as_secs_f64() * 1e6 / n);
                let t0 = Instant::now();
                for r in 0..reps {
                    for &i in set {
                        let (b, w, h) = &files[i];
                        let p = t.params(0, r as u64, i as u64);
                        let rec = record(b, *w, *h, Encoding::Jpeg);
                        let out = Output::U8Hwc {
                            pixels: &mut pixels,
                            shift: &mut shift,
                        };
                        train_sample(&rec, &t, &p, scratch, out).unwrap();
                        std::hint::black_box(pixels[0]);
                    }
                }
                best[2] = best[2].min(t0.elapsed().as_secs_f64() * 1e6 / n);
            }
            eprintln!(
                "{label}: {} images, mean {} KB: decode {:.0} us, train_sample f32 {:.0} us \
                 (ratio {:.3}), u8 {:.0} us (ratio {:.3})",
                set.len(),
                bytes / 1000,
                best[0],
                best[1],
                best[0] / best[1],
                best[2],
                best[0] / best[2]
            );
        };
        eprintln!("timing on {source}, S jitter [256, 512], crop 224, best of 3 rounds");
        report("all", &ok, &mut scratch);
        let near: Vec<usize> = ok
            .iter()
            .copied()
            .filter(|&i| (files[i].1, files[i].2) == (500, 375))
            .collect();
        if !near.is_empty() {
            report("500x375 only", &near, &mut scratch);
        }
        // The kernel alone (already decoded pixels), to show where the time beyond decode goes.
        let decoded: Vec<(Vec<u8>, u32, u32)> = ok
            .iter()
            .map(|&i| {
                let (b, w, h) = &files[i];
                let rec = record(b, *w, *h, Encoding::Jpeg);
                let px = decode_record(&rec, &mut scratch).unwrap().2.to_vec();
                (px, *w, *h)
            })
            .collect();
        let mut best = [f64::MAX; 2];
        for _round in 0..3 {
            for (k, b) in best.iter_mut().enumerate() {
                let t0 = Instant::now();
                for (i, (px, w, h)) in decoded.iter().enumerate() {
                    let p = t.params(0, 0, i as u64);
                    let out = if k == 0 {
                        Output::F32Chw(&mut x)
                    } else {
                        Output::U8Hwc {
                            pixels: &mut pixels,
                            shift: &mut shift,
                        }
                    };
                    train_from_rgb(px, *w, *h, &t, &p, &mut scratch, out);
                }
                *b = b.min(t0.elapsed().as_secs_f64() * 1e6 / decoded.len() as f64);
            }
        }
        eprintln!(
            "kernel only (train_from_rgb): f32 {:.0} us, u8 {:.0} us",
            best[0], best[1]
        );
    }
}
