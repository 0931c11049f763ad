//! Contact sheets: a grid of images with a one-line caption under each, written as PNG.
//!
//! `vgg preview` uses this to show augmented training samples, so a person can see what the
//! network sees. The captions use a small embedded 5x7 bitmap font with a descender row
//! (printable ASCII 32..=126; anything else is drawn as `?`), drawn at an integer scale: crisp
//! at any size and exact to the pixel, where the charts of [`crate::report::plot`] use a TTF
//! font. The PNG goes through the report layer's one writer, [`crate::report::png`].
//!
//! Layout: tiles go row-major into `columns` columns. Every cell is as wide as the widest tile
//! and as tall as the tallest tile plus a caption band (present only when some tile has a
//! caption). Cells are separated from each other and from the edge by `padding` pixels. A tile
//! sits at the top of its cell, centred horizontally; its caption is centred under it and
//! truncated with `...` to the cell width.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::report::png::{self, PngError};

/// One image on the sheet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    pub width: u32,
    pub height: u32,
    /// RGB8, row-major HWC, `width * height * 3` bytes. A shorter buffer is drawn as far as it
    /// goes (the rest stays background); extra bytes are ignored.
    pub rgb: Vec<u8>,
    /// One line; empty for none.
    pub caption: String,
}

/// How the sheet looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SheetOptions {
    /// Tiles per row (0 is taken as 1).
    pub columns: u32,
    /// Pixels between cells and around the edge.
    pub padding: u32,
    /// Integer scale of the 5x7 font (0 is taken as 1).
    pub font_scale: u32,
    pub background: [u8; 3],
    pub text: [u8; 3],
}

impl Default for SheetOptions {
    fn default() -> Self {
        SheetOptions {
            columns: 8,
            padding: 6,
            font_scale: 1,
            background: [40, 40, 40],
            text: [255, 255, 255],
        }
    }
}

/// Why a sheet could not be written. Always names the destination path.
#[derive(Debug, thiserror::Error)]
pub enum SheetError {
    /// Encoding or writing the PNG failed.
    #[error(transparent)]
    Png(#[from] PngError),
}

/// Glyph width in font pixels.
const GLYPH_W: u32 = 5;
/// Glyph height in font pixels: seven rows above the baseline and one for descenders.
const GLYPH_H: u32 = 8;
/// Horizontal advance per character in font pixels (glyph plus one column of spacing).
const ADVANCE: u32 = GLYPH_W + 1;
/// Font pixels of space above a caption (between the tile and the text).
const CAPTION_GAP: u32 = 2;
/// Font pixels of space below a caption.
const CAPTION_BELOW: u32 = 1;

/// 5x7 font (plus a descender row for g, j, p, q, y) for ASCII 32..=126, one byte per column
/// (left to right); bit `r` set means the pixel in row `r` (0 = top, 6 = baseline, 7 = descender)
/// is on. Written for this crate; public domain.
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x00, 0x00, 0x5F, 0x00, 0x00], // !
    [0x00, 0x07, 0x00, 0x07, 0x00], // "
    [0x14, 0x7F, 0x14, 0x7F, 0x14], // #
    [0x24, 0x2A, 0x7F, 0x2A, 0x12], // $
    [0x23, 0x13, 0x08, 0x64, 0x62], // %
    [0x36, 0x49, 0x55, 0x22, 0x50], // &
    [0x00, 0x00, 0x07, 0x00, 0x00], // '
    [0x00, 0x1C, 0x22, 0x41, 0x00], // (
    [0x00, 0x41, 0x22, 0x1C, 0x00], // )
    [0x14, 0x08, 0x3E, 0x08, 0x14], // *
    [0x08, 0x08, 0x3E, 0x08, 0x08], // +
    [0x00, 0x50, 0x30, 0x00, 0x00], // ,
    [0x08, 0x08, 0x08, 0x08, 0x08], // -
    [0x00, 0x60, 0x60, 0x00, 0x00], // .
    [0x20, 0x10, 0x08, 0x04, 0x02], // /
    [0x3E, 0x51, 0x49, 0x45, 0x3E], // 0
    [0x00, 0x42, 0x7F, 0x40, 0x00], // 1
    [0x42, 0x61, 0x51, 0x49, 0x46], // 2
    [0x21, 0x41, 0x45, 0x4B, 0x31], // 3
    [0x18, 0x14, 0x12, 0x7F, 0x10], // 4
    [0x27, 0x45, 0x45, 0x45, 0x39], // 5
    [0x3C, 0x4A, 0x49, 0x49, 0x30], // 6
    [0x01, 0x71, 0x09, 0x05, 0x03], // 7
    [0x36, 0x49, 0x49, 0x49, 0x36], // 8
    [0x06, 0x49, 0x49, 0x29, 0x1E], // 9
    [0x00, 0x36, 0x36, 0x00, 0x00], // :
    [0x00, 0x56, 0x36, 0x00, 0x00], // ;
    [0x08, 0x14, 0x22, 0x41, 0x00], // <
    [0x14, 0x14, 0x14, 0x14, 0x14], // =
    [0x00, 0x41, 0x22, 0x14, 0x08], // >
    [0x02, 0x01, 0x51, 0x09, 0x06], // ?
    [0x32, 0x49, 0x79, 0x41, 0x3E], // @
    [0x7E, 0x11, 0x11, 0x11, 0x7E], // A
    [0x7F, 0x49, 0x49, 0x49, 0x36], // B
    [0x3E, 0x41, 0x41, 0x41, 0x22], // C
    [0x7F, 0x41, 0x41, 0x22, 0x1C], // D
    [0x7F, 0x49, 0x49, 0x49, 0x41], // E
    [0x7F, 0x09, 0x09, 0x09, 0x01], // F
    [0x3E, 0x41, 0x49, 0x49, 0x7A], // G
    [0x7F, 0x08, 0x08, 0x08, 0x7F], // H
    [0x00, 0x41, 0x7F, 0x41, 0x00], // I
    [0x20, 0x40, 0x41, 0x3F, 0x01], // J
    [0x7F, 0x08, 0x14, 0x22, 0x41], // K
    [0x7F, 0x40, 0x40, 0x40, 0x40], // L
    [0x7F, 0x02, 0x0C, 0x02, 0x7F], // M
    [0x7F, 0x04, 0x08, 0x10, 0x7F], // N
    [0x3E, 0x41, 0x41, 0x41, 0x3E], // O
    [0x7F, 0x09, 0x09, 0x09, 0x06], // P
    [0x3E, 0x41, 0x51, 0x21, 0x5E], // Q
    [0x7F, 0x09, 0x19, 0x29, 0x46], // R
    [0x46, 0x49, 0x49, 0x49, 0x31], // S
    [0x01, 0x01, 0x7F, 0x01, 0x01], // T
    [0x3F, 0x40, 0x40, 0x40, 0x3F], // U
    [0x1F, 0x20, 0x40, 0x20, 0x1F], // V
    [0x3F, 0x40, 0x38, 0x40, 0x3F], // W
    [0x63, 0x14, 0x08, 0x14, 0x63], // X
    [0x07, 0x08, 0x70, 0x08, 0x07], // Y
    [0x61, 0x51, 0x49, 0x45, 0x43], // Z
    [0x00, 0x7F, 0x41, 0x41, 0x00], // [
    [0x02, 0x04, 0x08, 0x10, 0x20], // backslash
    [0x00, 0x41, 0x41, 0x7F, 0x00], // ]
    [0x04, 0x02, 0x01, 0x02, 0x04], // ^
    [0x40, 0x40, 0x40, 0x40, 0x40], // _
    [0x00, 0x01, 0x02, 0x04, 0x00], // `
    [0x20, 0x54, 0x54, 0x54, 0x78], // a
    [0x7F, 0x48, 0x44, 0x44, 0x38], // b
    [0x38, 0x44, 0x44, 0x44, 0x20], // c
    [0x38, 0x44, 0x44, 0x48, 0x7F], // d
    [0x38, 0x54, 0x54, 0x54, 0x18], // e
    [0x08, 0x7E, 0x09, 0x01, 0x02], // f
    [0x98, 0xA4, 0xA4, 0xA4, 0x7C], // g
    [0x7F, 0x08, 0x04, 0x04, 0x78], // h
    [0x00, 0x44, 0x7D, 0x40, 0x00], // i
    [0x80, 0x80, 0x84, 0x7D, 0x00], // j
    [0x7F, 0x10, 0x28, 0x44, 0x00], // k
    [0x00, 0x41, 0x7F, 0x40, 0x00], // l
    [0x7C, 0x04, 0x18, 0x04, 0x78], // m
    [0x7C, 0x08, 0x04, 0x04, 0x78], // n
    [0x38, 0x44, 0x44, 0x44, 0x38], // o
    [0xFC, 0x24, 0x24, 0x24, 0x18], // p
    [0x18, 0x24, 0x24, 0x24, 0xFC], // q
    [0x7C, 0x08, 0x04, 0x04, 0x08], // r
    [0x48, 0x54, 0x54, 0x54, 0x20], // s
    [0x04, 0x3F, 0x44, 0x40, 0x20], // t
    [0x3C, 0x40, 0x40, 0x20, 0x7C], // u
    [0x1C, 0x20, 0x40, 0x20, 0x1C], // v
    [0x3C, 0x40, 0x30, 0x40, 0x3C], // w
    [0x44, 0x28, 0x10, 0x28, 0x44], // x
    [0x9C, 0xA0, 0xA0, 0xA0, 0x7C], // y
    [0x44, 0x64, 0x54, 0x4C, 0x44], // z
    [0x00, 0x08, 0x36, 0x41, 0x00], // {
    [0x00, 0x00, 0x7F, 0x00, 0x00], // |
    [0x00, 0x41, 0x36, 0x08, 0x00], // }
    [0x08, 0x04, 0x08, 0x10, 0x08], // ~
];

/// The glyph for a character: printable ASCII as itself, anything else as `?`.
fn glyph(c: char) -> &'static [u8; 5] {
    let code = c as u32;
    if (32..=126).contains(&code) {
        &FONT[(code - 32) as usize]
    } else {
        &FONT[(b'?' - 32) as usize]
    }
}

/// Width in pixels of `text` drawn at `scale` (0 is taken as 1): each character advances six
/// font pixels, the last one's trailing spacing column is not counted, and the empty string is 0
/// wide. Every `char` counts as one character (non-ASCII is drawn as `?`).
pub fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    if n == 0 {
        0
    } else {
        (n * ADVANCE - 1).saturating_mul(scale.max(1))
    }
}

/// Draws one line of `text` with its top-left corner at (x, y), in `color`, at integer `scale`
/// (0 is taken as 1). Only the glyph pixels are painted (no background box); anything outside
/// the image is clipped. Non-printable and non-ASCII characters, newlines included, are drawn
/// as `?`.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: [u8; 3]) {
    let scale = scale.max(1);
    let (w, h) = img.dimensions();
    let mut pen_x = u64::from(x);
    let y = u64::from(y);
    let step = u64::from(ADVANCE * scale);
    for c in text.chars() {
        if pen_x >= u64::from(w) {
            break;
        }
        for (col, bits) in glyph(c).iter().enumerate() {
            for row in 0..GLYPH_H {
                if bits >> row & 1 == 0 {
                    continue;
                }
                let px = pen_x + col as u64 * u64::from(scale);
                let py = y + u64::from(row * scale);
                for dy in 0..u64::from(scale) {
                    for dx in 0..u64::from(scale) {
                        let (xx, yy) = (px + dx, py + dy);
                        if xx < u64::from(w) && yy < u64::from(h) {
                            img.put_pixel(xx as u32, yy as u32, Rgb(color));
                        }
                    }
                }
            }
        }
        pen_x += step;
    }
}

/// `text` shortened so that it is at most `max_width` pixels wide at `scale`: unchanged if it
/// fits, otherwise as many leading characters as fit followed by `...` (or as much of `...` as
/// fits in a very narrow cell).
fn truncate_to_width(text: &str, max_width: u32, scale: u32) -> String {
    if text_width(text, scale) <= max_width {
        return text.to_string();
    }
    let dots = "...";
    let mut kept: Vec<char> = text.chars().collect();
    while !kept.is_empty() {
        kept.pop();
        let candidate: String = kept.iter().copied().chain(dots.chars()).collect();
        if text_width(&candidate, scale) <= max_width {
            return candidate;
        }
    }
    let mut d = dots.to_string();
    while text_width(&d, scale) > max_width {
        d.pop();
    }
    d
}

/// Lays the tiles out row-major (see the module docs) and returns the RGB8 sheet. Each cell is
/// the widest tile's width by the tallest tile's height plus one caption line; captions are
/// truncated with `...` to the cell width. With no tiles the sheet is a small background square.
pub fn render(tiles: &[Tile], opts: &SheetOptions) -> RgbImage {
    let scale = opts.font_scale.max(1);
    let pad = opts.padding;
    let n = tiles.len() as u32;
    let columns = opts.columns.max(1).min(n.max(1));
    let rows = n.div_ceil(columns);
    let cell_w = tiles.iter().map(|t| t.width).max().unwrap_or(0);
    let tile_h = tiles.iter().map(|t| t.height).max().unwrap_or(0);
    let captioned = tiles.iter().any(|t| !t.caption.is_empty());
    let band = if captioned {
        (CAPTION_GAP + GLYPH_H + CAPTION_BELOW) * scale
    } else {
        0
    };
    let cell_h = tile_h + band;
    let width = (columns * cell_w + (columns + 1) * pad).max(1);
    let height = (rows * cell_h + (rows + 1) * pad).max(1);
    let mut img = RgbImage::from_pixel(width, height, Rgb(opts.background));

    for (i, tile) in tiles.iter().enumerate() {
        let i = i as u32;
        let (col, row) = (i % columns, i / columns);
        let cell_x = pad + col * (cell_w + pad);
        let cell_y = pad + row * (cell_h + pad);
        let tile_x = cell_x + (cell_w - tile.width) / 2;
        let row_bytes = tile.width as usize * 3;
        if row_bytes > 0 {
            for (ty, line) in tile
                .rgb
                .chunks(row_bytes)
                .take(tile.height as usize)
                .enumerate()
            {
                for (tx, px) in line.chunks_exact(3).enumerate() {
                    img.put_pixel(
                        tile_x + tx as u32,
                        cell_y + ty as u32,
                        Rgb([px[0], px[1], px[2]]),
                    );
                }
            }
        }
        if !tile.caption.is_empty() {
            let text = truncate_to_width(&tile.caption, cell_w, scale);
            let text_x = cell_x + (cell_w - text_width(&text, scale)) / 2;
            let text_y = cell_y + tile_h + CAPTION_GAP * scale;
            draw_text(&mut img, text_x, text_y, &text, scale, opts.text);
        }
    }
    img
}

/// Renders the sheet and writes it as PNG to `path` atomically through
/// [`crate::report::png::write_png`]: a temporary file in the same directory, synced and renamed
/// over `path`. On any failure the temporary file is removed and the error names `path`.
pub fn write_png(path: &Path, tiles: &[Tile], opts: &SheetOptions) -> Result<(), SheetError> {
    Ok(png::write_png(path, &render(tiles, opts))?)
}

/// Turns a normalised float32 CHW tensor (`x = pixel - mean + shift`, `3 * size * size`
/// values) back into viewable RGB8 HWC by adding `mean` per channel, rounding and clamping to
/// 0..=255 (NaN becomes 0).
///
/// # Panics
/// If `chw.len() != 3 * size * size`.
pub fn denormalize_chw(chw: &[f32], size: u32, mean: [f32; 3]) -> Vec<u8> {
    let plane = size as usize * size as usize;
    assert_eq!(
        chw.len(),
        3 * plane,
        "denormalize_chw: {} values for a 3x{size}x{size} tensor",
        chw.len()
    );
    let mut out = vec![0u8; 3 * plane];
    for (c, m) in mean.iter().enumerate() {
        for (i, v) in chw[c * plane..(c + 1) * plane].iter().enumerate() {
            // `as u8` saturates and maps NaN to 0.
            out[i * 3 + c] = (v + m).round() as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn solid(w: u32, h: u32, rgb: [u8; 3], caption: &str) -> Tile {
        Tile {
            width: w,
            height: h,
            rgb: rgb
                .iter()
                .copied()
                .cycle()
                .take((w * h * 3) as usize)
                .collect(),
            caption: caption.to_string(),
        }
    }

    fn opts(columns: u32, padding: u32) -> SheetOptions {
        SheetOptions {
            columns,
            padding,
            font_scale: 1,
            background: [0, 0, 0],
            text: [255, 255, 255],
        }
    }

    fn count_color(img: &RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, c: [u8; 3]) -> usize {
        let mut n = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                if img.get_pixel(x, y).0 == c {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn layout_dimensions_follow_tiles_and_columns() {
        let band = CAPTION_GAP + GLYPH_H + CAPTION_BELOW;
        // 10 tiles in 4 columns: 3 rows; 10 tiles in 16 columns: one row of 10.
        for (n, cols, exp_cols, exp_rows) in
            [(10, 4, 4, 3), (10, 16, 10, 1), (8, 8, 8, 1), (1, 8, 1, 1)]
        {
            let tiles: Vec<Tile> = (0..n)
                .map(|i| solid(20, 12, [1, 2, 3], &format!("{i}")))
                .collect();
            let img = render(&tiles, &opts(cols, 3));
            assert_eq!(
                img.width(),
                exp_cols * 20 + (exp_cols + 1) * 3,
                "n={n} cols={cols}"
            );
            assert_eq!(
                img.height(),
                exp_rows * (12 + band) + (exp_rows + 1) * 3,
                "n={n} cols={cols}"
            );
        }
        // No captions at all: no caption band.
        let tiles: Vec<Tile> = (0..5).map(|_| solid(20, 12, [1, 2, 3], "")).collect();
        let img = render(&tiles, &opts(2, 3));
        assert_eq!(img.dimensions(), (2 * 20 + 3 * 3, 3 * 12 + 4 * 3));
        // The cell is the largest tile; scale 2 doubles the band.
        let tiles = vec![solid(10, 30, [9, 9, 9], "a"), solid(40, 5, [9, 9, 9], "b")];
        let mut o = opts(2, 0);
        o.font_scale = 2;
        assert_eq!(render(&tiles, &o).dimensions(), (80, 30 + 2 * band));
        // Degenerate inputs still give an encodable image.
        assert!(render(&[], &opts(0, 0)).width() >= 1);
        assert_eq!(
            render(&tiles, &opts(0, 0)).width(),
            40,
            "columns 0 is one column"
        );
    }

    #[test]
    fn tile_pixels_land_at_cell_offset() {
        let pad = 5;
        let tiles: Vec<Tile> = (0..6u8)
            .map(|i| {
                let mut t = solid(8, 6, [10 * i + 10, 0, 0], "x");
                // A distinct marker at tile pixel (2, 3).
                let k = (3 * 8 + 2) * 3;
                t.rgb[k..k + 3].copy_from_slice(&[1, 2, 200 + i]);
                t
            })
            .collect();
        let img = render(&tiles, &opts(4, pad));
        let cell_h = 6 + CAPTION_GAP + GLYPH_H + CAPTION_BELOW;
        for i in 0..6u32 {
            let (col, row) = (i % 4, i / 4);
            let x = pad + col * (8 + pad);
            let y = pad + row * (cell_h + pad);
            assert_eq!(
                img.get_pixel(x, y).0,
                [10 * i as u8 + 10, 0, 0],
                "tile {i} corner"
            );
            assert_eq!(img.get_pixel(x + 7, y + 5).0, [10 * i as u8 + 10, 0, 0]);
            assert_eq!(
                img.get_pixel(x + 2, y + 3).0,
                [1, 2, 200 + i as u8],
                "tile {i} marker"
            );
            // Just outside the tile is background.
            assert_eq!(img.get_pixel(x - 1, y).0, [0, 0, 0]);
            assert_eq!(img.get_pixel(x + 8, y).0, [0, 0, 0]);
        }
    }

    #[test]
    fn captions_are_drawn_below_the_tile() {
        let tiles = vec![
            solid(60, 20, [0, 0, 255], "cat 12"),
            solid(60, 20, [0, 0, 255], ""),
        ];
        let o = opts(2, 4);
        let img = render(&tiles, &o);
        let band_top = 4 + 20;
        let band_bottom = band_top + CAPTION_GAP + GLYPH_H + CAPTION_BELOW;
        let white = [255, 255, 255];
        let first = count_color(&img, 4, band_top, 4 + 60, band_bottom, white);
        assert!(first > 10, "expected caption pixels, got {first}");
        // None in the tile area itself or in the empty caption's band.
        assert_eq!(count_color(&img, 4, 4, 64, 24, white), 0);
        assert_eq!(count_color(&img, 68, band_top, 128, band_bottom, white), 0);
        assert_eq!(
            count_color(&img, 0, 0, img.width(), img.height(), white),
            first
        );
    }

    #[test]
    fn long_captions_are_truncated_to_the_cell() {
        let caption = "a very long caption that cannot possibly fit in a small cell";
        let tiles = vec![
            solid(40, 10, [0, 0, 0], caption),
            solid(40, 10, [0, 0, 0], ""),
        ];
        for scale in [1, 2] {
            let mut o = opts(2, 2);
            o.background = [7, 7, 7];
            o.font_scale = scale;
            let img = render(&tiles, &o);
            let white = [255, 255, 255];
            let inside = count_color(&img, 2, 12, 42, img.height(), white);
            assert!(inside > 0);
            // Nothing spilled into the padding or the next cell.
            assert_eq!(
                count_color(&img, 42, 0, img.width(), img.height(), white),
                0
            );
            assert_eq!(count_color(&img, 0, 0, 2, img.height(), white), 0);
        }
        let t = truncate_to_width(caption, 40, 1);
        assert!(t.ends_with("...") && text_width(&t, 1) <= 40, "{t}");
        assert_eq!(truncate_to_width("short", 40, 1), "short");
        assert_eq!(truncate_to_width("abcdef", 12, 1), ".."); // only two dots fit in 12 px
        assert_eq!(truncate_to_width("abcdef", 0, 1), "");
    }

    #[test]
    fn glyphs_differ_and_widths_add_up() {
        let draw = |s: &str| {
            let mut img = RgbImage::new(12, 16);
            draw_text(&mut img, 1, 1, s, 1, [255, 255, 255]);
            img
        };
        let (i, w) = (draw("I"), draw("W"));
        assert_ne!(i, w);
        assert!(i.pixels().any(|p| p.0 == [255, 255, 255]));
        assert_eq!(draw(" "), RgbImage::new(12, 16));
        // Non-ASCII and control characters are drawn as '?'.
        assert_eq!(draw("é"), draw("?"));
        assert_eq!(draw("\n"), draw("?"));
        assert_eq!(text_width("", 1), 0);
        assert_eq!(text_width("I", 1), 5);
        assert_eq!(text_width("IW", 1), 11);
        assert_eq!(text_width("IW", 2), 22);
        assert_eq!(text_width("ñ", 1), 5);
        // Scale 2 paints four times as many pixels, and clipping at the edge does not panic.
        let mut big = RgbImage::new(30, 30);
        draw_text(&mut big, 0, 0, "W", 2, [255, 255, 255]);
        let on = |img: &RgbImage| img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        assert_eq!(on(&big), 4 * on(&w));
        let mut tiny = RgbImage::new(3, 3);
        draw_text(&mut tiny, 1, 1, "WWW", 2, [255, 255, 255]);
        draw_text(&mut tiny, 500, 500, "W", 1, [255, 255, 255]);
        // Every printable glyph except space has ink.
        for c in '!'..='~' {
            assert!(glyph(c).iter().any(|&b| b != 0), "{c:?} is blank");
        }
    }

    #[test]
    fn denormalize_adds_the_mean_and_clamps() {
        let mean = [123.68, 116.779, 103.939];
        let size = 2;
        let pixels: [[u8; 3]; 4] = [[0, 128, 255], [10, 20, 30], [200, 100, 50], [255, 255, 0]];
        let mut chw = vec![0f32; 12];
        for (i, p) in pixels.iter().enumerate() {
            for c in 0..3 {
                chw[c * 4 + i] = f32::from(p[c]) - mean[c];
            }
        }
        let hwc = denormalize_chw(&chw, size, mean);
        assert_eq!(hwc, pixels.concat());
        // Out of range (lighting shifts can push past either end) clamps; NaN is 0.
        let wild = [
            -500.0,
            500.0,
            f32::NAN,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ];
        let hwc = denormalize_chw(&wild, 2, mean);
        assert_eq!(&hwc[0..3], &[0, 117, 104]);
        assert_eq!(&hwc[3..6], &[255, 117, 104]);
        assert_eq!(&hwc[6..9], &[0, 117, 104]);
    }

    #[test]
    #[should_panic(expected = "denormalize_chw")]
    fn denormalize_rejects_wrong_length() {
        denormalize_chw(&[0.0; 11], 2, [0.0; 3]);
    }

    #[test]
    fn write_png_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sheet.png");
        let tiles: Vec<Tile> = (0..5u8)
            .map(|i| {
                let rgb = (0..16 * 9 * 3)
                    .map(|k| (k as u8).wrapping_mul(i + 1))
                    .collect();
                Tile {
                    width: 16,
                    height: 9,
                    rgb,
                    caption: format!("n0{i} ok"),
                }
            })
            .collect();
        let o = SheetOptions::default();
        write_png(&path, &tiles, &o).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!(back, render(&tiles, &o));
        // Overwrites in place; no temporary left behind.
        write_png(&path, &tiles[..2], &o).unwrap();
        assert_eq!(
            image::open(&path).unwrap().to_rgb8(),
            render(&tiles[..2], &o)
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sheet.png")]);
    }

    #[test]
    fn write_errors_name_the_path_and_leave_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let tiles = vec![solid(4, 4, [1, 1, 1], "x")];
        let missing = dir.path().join("no-such-dir").join("sheet.png");
        let err = write_png(&missing, &tiles, &SheetOptions::default()).unwrap_err();
        assert!(
            matches!(err, SheetError::Png(PngError::Io { .. })),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        // The other failures of the shared writer are tested in report::png.
    }
}
