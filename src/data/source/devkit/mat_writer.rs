//! A minimal MAT v5 writer for test fixtures: uncompressed, little-endian, enough to build
//! `meta.mat`-shaped files for the parser in [`super`]. It copies MATLAB's encoding choices where
//! cheap: integral doubles stored in the narrowest integer type, small data elements for data of
//! 1 to 4 bytes, UTF-16 (miUINT16) text, field names padded to 32 bytes, and empty matrices as
//! data-less miMATRIX elements.
//!
//! Test-only: the library compiles it under `#[cfg(test)]`, and the integration tests include
//! this file with `#[path]` (`tests/it/fixtures.rs`), so it is not part of the library. It uses
//! only `super::DevkitSynset` and `super::mat_types`, which both includers provide.

use super::mat_types::*;
use super::DevkitSynset;

/// The fields of the real devkit's `synsets`, in its order.
pub const SYNSET_FIELDS: [&str; 8] = [
    "ILSVRC2012_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
];

/// How char arrays are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharEncoding {
    /// miUINT16 code units, as MATLAB writes.
    Utf16,
    /// miUTF8.
    Utf8,
    /// miINT8, one Latin-1 byte per character (others become '?').
    Int8,
}

/// How double arrays are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumericEncoding {
    /// The narrowest integer type holding an integral value (miUINT8, miUINT16, ...), as
    /// MATLAB writes; miDOUBLE otherwise.
    MatlabLike,
    /// Always miDOUBLE.
    Double,
}

/// A meta.mat-shaped file: one `synsets` struct array, N x 1, with the devkit's fields
/// (gloss empty, num_children 0, children empty, wordnet_height 0, num_train_images 0).
pub fn write_synsets_mat(synsets: &[DevkitSynset]) -> Vec<u8> {
    write_synsets_mat_with(synsets, CharEncoding::Utf16, NumericEncoding::MatlabLike)
}

/// [`write_synsets_mat`] with the given storage choices.
pub fn write_synsets_mat_with(
    synsets: &[DevkitSynset],
    chars: CharEncoding,
    numbers: NumericEncoding,
) -> Vec<u8> {
    let mut values = Vec::with_capacity(synsets.len() * SYNSET_FIELDS.len());
    for s in synsets {
        values.push(double_scalar(f64::from(s.ilsvrc2012_id), numbers));
        values.push(char_row(&s.wnid, chars));
        values.push(char_row(&s.words, chars));
        values.push(char_row("", chars));
        values.push(double_scalar(0.0, numbers));
        values.push(empty_matrix());
        values.push(double_scalar(0.0, numbers));
        values.push(double_scalar(0.0, numbers));
    }
    mat_file(&[struct_array("synsets", &SYNSET_FIELDS, &values)])
}

/// The 128-byte header of a little-endian level-5 MAT-file.
pub fn header() -> Vec<u8> {
    let text = "MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970 \
                by vgg mat_writer";
    let mut h: Vec<u8> = text.bytes().take(116).collect();
    h.resize(116, b' ');
    h.extend_from_slice(&[0; 8]); // subsystem data offset: none
    h.extend_from_slice(&0x0100u16.to_le_bytes());
    h.extend_from_slice(b"IM");
    h
}

/// A file: the header, then the given top-level elements.
pub fn mat_file(variables: &[Vec<u8>]) -> Vec<u8> {
    let mut out = header();
    for v in variables {
        out.extend_from_slice(v);
    }
    out
}

/// A data element, in the small format when its data is 1 to 4 bytes (as MATLAB writes).
pub fn element(ty: u32, data: &[u8]) -> Vec<u8> {
    if (1..=4).contains(&data.len()) {
        let mut out = (ty | ((data.len() as u32) << 16)).to_le_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(8, 0);
        out
    } else {
        regular_element(ty, data)
    }
}

/// A data element with an 8-byte tag, padded to 8 bytes.
pub fn regular_element(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len().div_ceil(8) * 8);
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(8 + data.len().div_ceil(8) * 8, 0);
    out
}

/// A miCOMPRESSED element around `payload` (not padded, as in real files). `payload` is stored
/// as given: pass a zlib stream (what MATLAB writes, and what the parser inflates), or anything
/// else to test the error for one that does not inflate.
pub fn compressed_element(payload: &[u8]) -> Vec<u8> {
    let mut out = MI_COMPRESSED.to_le_bytes().to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A miMATRIX element with no data: how MATLAB writes an empty (`[]`) struct field.
pub fn empty_matrix() -> Vec<u8> {
    regular_element(MI_MATRIX, &[])
}

/// A miMATRIX element: array flags, dimensions, name, then `body` (already encoded).
pub fn matrix(class: u8, dims: &[i32], name: &str, body: &[u8]) -> Vec<u8> {
    let mut inner = regular_element(MI_UINT32, &[class, 0, 0, 0, 0, 0, 0, 0]);
    let dims_bytes: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
    inner.extend(element(MI_INT32, &dims_bytes));
    inner.extend(element(MI_INT8, name.as_bytes()));
    inner.extend_from_slice(body);
    regular_element(MI_MATRIX, &inner)
}

/// The data element MATLAB would write for a double value.
pub fn double_data(v: f64, numbers: NumericEncoding) -> Vec<u8> {
    let integral = v.fract() == 0.0 && v.is_finite();
    match numbers {
        NumericEncoding::MatlabLike if integral && (0.0..=255.0).contains(&v) => {
            element(MI_UINT8, &[v as u8])
        }
        NumericEncoding::MatlabLike if integral && (0.0..=65535.0).contains(&v) => {
            element(MI_UINT16, &(v as u16).to_le_bytes())
        }
        NumericEncoding::MatlabLike if integral && (-128.0..0.0).contains(&v) => {
            element(MI_INT8, &(v as i8).to_le_bytes())
        }
        NumericEncoding::MatlabLike if integral && (-32768.0..0.0).contains(&v) => {
            element(MI_INT16, &(v as i16).to_le_bytes())
        }
        NumericEncoding::MatlabLike
            if integral && (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&v) =>
        {
            element(MI_INT32, &(v as i32).to_le_bytes())
        }
        _ => element(MI_DOUBLE, &v.to_le_bytes()),
    }
}

/// An unnamed 1x1 double.
pub fn double_scalar(v: f64, numbers: NumericEncoding) -> Vec<u8> {
    matrix(MX_DOUBLE_CLASS, &[1, 1], "", &double_data(v, numbers))
}

/// An unnamed 1xN char array (0x0 when empty).
pub fn char_row(s: &str, chars: CharEncoding) -> Vec<u8> {
    let (n, data) = match chars {
        CharEncoding::Utf16 => {
            let units: Vec<u16> = s.encode_utf16().collect();
            let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
            (units.len(), element(MI_UINT16, &bytes))
        }
        CharEncoding::Utf8 => (s.chars().count(), element(MI_UTF8, s.as_bytes())),
        CharEncoding::Int8 => {
            let bytes: Vec<u8> = s.chars().map(|c| u8::try_from(c).unwrap_or(b'?')).collect();
            (bytes.len(), element(MI_INT8, &bytes))
        }
    };
    let dims = if n == 0 { [0, 0] } else { [1, n as i32] };
    matrix(MX_CHAR_CLASS, &dims, "", &data)
}

/// An N x 1 struct array; `values` holds, per element, per field, an encoded miMATRIX
/// (N = values.len() / field_names.len()).
pub fn struct_array(name: &str, field_names: &[&str], values: &[Vec<u8>]) -> Vec<u8> {
    assert!(!field_names.is_empty(), "a struct needs fields");
    assert_eq!(values.len() % field_names.len(), 0, "values per field");
    let longest = field_names.iter().map(|f| f.len()).max().unwrap_or(0);
    let name_len = if longest < 32 {
        32
    } else {
        (longest + 1).div_ceil(8) * 8
    };
    let mut body = element(MI_INT32, &(name_len as u32).to_le_bytes());
    let mut names = Vec::with_capacity(name_len * field_names.len());
    for f in field_names {
        let start = names.len();
        names.extend_from_slice(f.as_bytes());
        names.resize(start + name_len, 0);
    }
    body.extend(element(MI_INT8, &names));
    for v in values {
        body.extend_from_slice(v);
    }
    let n = (values.len() / field_names.len()) as i32;
    matrix(MX_STRUCT_CLASS, &[n, 1], name, &body)
}
