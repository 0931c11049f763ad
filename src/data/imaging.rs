//! Pixel I/O shared by the shard writer, the loader and the synthetic dataset generator: decoding
//! any source file to RGB8 under size limits, the shortest-side rescale, and JPEG encoding.
//!
//! Decoding trusts the bytes, never the file name (ImageNet has a PNG named `.JPEG`), converts
//! grayscale and CMYK to RGB, and turns a decompression bomb or a truncated file into an `Err`
//! before it can allocate gigabytes or yield a half-grey picture.

use std::io::Cursor;

use fast_image_resize as fir;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// Why an image could not be decoded. Carries data, not prose, so callers can count reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("not an image (unrecognised signature)")]
    UnknownFormat,
    #[error("unsupported image format {0}")]
    Unsupported(String),
    #[error("{width}x{height} = {pixels} pixels exceeds the cap of {max_pixels} (decompression bomb guard)")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max_pixels: u64,
    },
    #[error("truncated JPEG (no end-of-image marker)")]
    Truncated,
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// A short stable tag for reports and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::UnknownFormat => "not-an-image",
            DecodeError::Unsupported(_) => "unsupported",
            DecodeError::TooLarge { .. } => "too-large",
            DecodeError::Truncated => "truncated",
            DecodeError::Corrupt(_) => "corrupt",
        }
    }
}

/// The colour model of the source, before conversion to RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceColor {
    Rgb,
    Gray,
    /// CMYK or YCCK JPEG (four components).
    Cmyk,
    /// Anything else (alpha, 16-bit, palette): converted to RGB8.
    Other,
}

/// A decoded image as interleaved RGB8.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub format: ImageFormat,
    pub color: SourceColor,
}

/// The formats a dataset may contain. Others are rejected as `Unsupported`.
const ACCEPTED: [ImageFormat; 2] = [ImageFormat::Jpeg, ImageFormat::Png];

/// Detects the format from the leading bytes.
pub fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    match image::guess_format(bytes) {
        Ok(f) if ACCEPTED.contains(&f) => Ok(f),
        Ok(f) => Err(DecodeError::Unsupported(format!("{f:?}"))),
        Err(_) => Err(DecodeError::UnknownFormat),
    }
}

/// Header facts of a JPEG, read from its start-of-frame marker without decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegHeader {
    pub width: u32,
    pub height: u32,
    pub components: u8,
    pub progressive: bool,
}

/// Parses the JPEG markers up to the first start-of-frame. `None` when the stream is not a
/// well-formed JPEG up to that point.
pub fn jpeg_header(bytes: &[u8]) -> Option<JpegHeader> {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return None;
    }
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if (0xD0..=0xD9).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        if len < 2 || i + 2 + len > bytes.len() {
            return None;
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let seg = &bytes[i + 4..i + 2 + len];
            if seg.len() < 6 {
                return None;
            }
            return Some(JpegHeader {
                height: u16::from_be_bytes([seg[1], seg[2]]) as u32,
                width: u16::from_be_bytes([seg[3], seg[4]]) as u32,
                components: seg[5],
                progressive: matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE),
            });
        }
        i += 2 + len;
    }
    None
}

/// True when a JPEG stream ends with its end-of-image marker (trailing zero or whitespace padding,
/// as some writers leave, is allowed). The JPEG decoder fills a truncated scan with grey
/// instead of failing, so this is the check that keeps half-downloaded files out of a dataset.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0x00 && b != b'\r' && b != b'\n' && b != b' ')
        .map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

/// Decodes any accepted image to RGB8, refusing images above `max_pixels` before allocating.
pub fn decode_rgb8(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    let format = sniff_format(bytes)?;
    let mut color = SourceColor::Rgb;
    if format == ImageFormat::Jpeg {
        let header = jpeg_header(bytes).ok_or_else(|| {
            DecodeError::Corrupt("JPEG markers are malformed before the frame header".into())
        })?;
        check_pixels(header.width, header.height, max_pixels)?;
        if !jpeg_is_complete(bytes) {
            return Err(DecodeError::Truncated);
        }
        color = match header.components {
            1 => SourceColor::Gray,
            3 => SourceColor::Rgb,
            4 => SourceColor::Cmyk,
            _ => SourceColor::Other,
        };
    }
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    check_pixels(w, h, max_pixels)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(w.max(1));
    limits.max_image_height = Some(h.max(1));
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => DecodeError::TooLarge {
            width: w,
            height: h,
            pixels: w as u64 * h as u64,
            max_pixels,
        },
        other => DecodeError::Corrupt(other.to_string()),
    })?;
    if format != ImageFormat::Jpeg {
        color = match &img {
            DynamicImage::ImageRgb8(_) => SourceColor::Rgb,
            DynamicImage::ImageLuma8(_) => SourceColor::Gray,
            _ => SourceColor::Other,
        };
    }
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt("zero-sized image".into()));
    }
    let rgb = match img {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        other => other.to_rgb8().into_raw(),
    };
    Ok(Decoded {
        width,
        height,
        rgb,
        format,
        color,
    })
}

fn check_pixels(w: u32, h: u32, max_pixels: u64) -> Result<(), DecodeError> {
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(DecodeError::TooLarge {
            width: w,
            height: h,
            pixels,
            max_pixels,
        });
    }
    if pixels == 0 {
        return Err(DecodeError::Corrupt("zero-sized image".into()));
    }
    Ok(())
}

/// The size after an isotropic rescale that makes the shortest side `short`. The longer side is
/// rounded to nearest, and never below 1.
pub fn scaled_size(width: u32, height: u32, short: u32) -> (u32, u32) {
    let scale_long = |long: u32, s: u32| -> u32 {
        ((long as u64 * short as u64 * 2 + s as u64) / (2 * s as u64)).max(1) as u32
    };
    if width <= height {
        (short, scale_long(height, width))
    } else {
        (scale_long(width, height), short)
    }
}

/// Rescales RGB8 pixels to `(dst_w, dst_h)` with a Lanczos-3 convolution (the store's
/// down-scaling filter: an offline step, so it uses the sharpest standard antialiasing kernel).
pub fn resize_rgb8(
    rgb: &[u8],
    width: u32,
    height: u32,
    dst_w: u32,
    dst_h: u32,
    filter: fir::FilterType,
) -> Vec<u8> {
    let src = fir::images::ImageRef::new(width, height, rgb, fir::PixelType::U8x3)
        .expect("RGB8 buffer size matches its dimensions");
    let mut dst = fir::images::Image::new(dst_w, dst_h, fir::PixelType::U8x3);
    let mut resizer = fir::Resizer::new();
    let options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(filter));
    resizer
        .resize(&src, &mut dst, &options)
        .expect("resize between RGB8 images of valid sizes cannot fail");
    dst.into_vec()
}

/// Encodes RGB8 pixels as a baseline JPEG (4:2:0 chroma subsampling, as libjpeg's default).
pub fn encode_jpeg(rgb: &[u8], width: u32, height: u32, quality: u8) -> Result<Vec<u8>, String> {
    if width > u16::MAX as u32 || height > u16::MAX as u32 {
        return Err(format!(
            "{width}x{height} exceeds JPEG's 65535-pixel side limit"
        ));
    }
    let mut out = Vec::with_capacity(rgb.len() / 8);
    let encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder
        .encode(
            rgb,
            width as u16,
            height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                v.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 128]);
            }
        }
        v
    }

    #[test]
    fn scaled_size_keeps_aspect_and_sets_the_short_side() {
        assert_eq!(scaled_size(500, 375, 256), (341, 256));
        assert_eq!(scaled_size(375, 500, 256), (256, 341));
        assert_eq!(scaled_size(300, 300, 512), (512, 512));
        assert_eq!(scaled_size(10_000, 2, 1), (5000, 1));
    }

    #[test]
    fn jpeg_round_trip_and_header() {
        let rgb = gradient(64, 48);
        let jpg = encode_jpeg(&rgb, 64, 48, 90).unwrap();
        let h = jpeg_header(&jpg).unwrap();
        assert_eq!((h.width, h.height, h.components), (64, 48, 3));
        assert!(jpeg_is_complete(&jpg));
        let d = decode_rgb8(&jpg, 1 << 20).unwrap();
        assert_eq!((d.width, d.height, d.color), (64, 48, SourceColor::Rgb));
        let err: f64 = d
            .rgb
            .iter()
            .zip(&rgb)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / rgb.len() as f64;
        assert!(err < 3.0, "mean abs error {err}");
    }

    #[test]
    fn truncated_jpeg_is_refused() {
        let jpg = encode_jpeg(&gradient(64, 64), 64, 64, 90).unwrap();
        let cut = &jpg[..jpg.len() * 2 / 3];
        assert_eq!(
            decode_rgb8(cut, 1 << 20).unwrap_err(),
            DecodeError::Truncated
        );
        // Trailing zero padding after EOI is fine.
        let mut padded = jpg.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        assert!(decode_rgb8(&padded, 1 << 20).is_ok());
    }

    #[test]
    fn pixel_cap_refuses_before_decoding() {
        let jpg = encode_jpeg(&gradient(64, 64), 64, 64, 90).unwrap();
        match decode_rgb8(&jpg, 64 * 64 - 1).unwrap_err() {
            DecodeError::TooLarge { pixels, .. } => assert_eq!(pixels, 4096),
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn garbage_is_not_an_image() {
        assert_eq!(decode_rgb8(b"", 100).unwrap_err(), DecodeError::Empty);
        assert_eq!(
            decode_rgb8(b"hello, world", 100).unwrap_err(),
            DecodeError::UnknownFormat
        );
    }

    #[test]
    fn resize_lands_on_requested_size() {
        let rgb = gradient(100, 80);
        let out = resize_rgb8(&rgb, 100, 80, 50, 40, fir::FilterType::Lanczos3);
        assert_eq!(out.len(), 50 * 40 * 3);
        // Left edge dark red, right edge bright red.
        assert!(out[0] < 20 && out[(49) * 3] > 230);
    }
}
