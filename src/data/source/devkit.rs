//! ImageNet (ILSVRC2012) validation labels and class names, in the forms they are distributed.
//!
//! The 50,000 validation images `ILSVRC2012_val_00000001.JPEG` .. `ILSVRC2012_val_00050000.JPEG`
//! come with their labels in one of three forms, and this module parses each of them, as pure
//! functions over bytes or text with typed errors:
//!
//! 1. The official devkit (`ILSVRC2012_devkit_t12`): `data/ILSVRC2012_validation_ground_truth.txt`
//!    gives one ILSVRC2012_ID (1..=1000) per line, line i labelling image i
//!    ([`parse_ground_truth`]), and `data/meta.mat`, a MATLAB level-5 MAT-file, maps those ids to
//!    WordNet ids ([`parse_meta_mat`]).
//! 2. A `synsets.txt` list, one wnid per line in ILSVRC2012_ID order ([`parse_synset_list`]):
//!    what to give instead of a `meta.mat` this crate cannot read. Compressed MAT-files
//!    (miCOMPRESSED, MATLAB's default since v7) are read, each compressed variable inflated with
//!    `flate2`'s zlib decoder; refused are big-endian files, MATLAB 7.3 (HDF5) files and
//!    compressed elements that do not inflate (the errors for the last two suggest a
//!    `synsets.txt`).
//! 3. Kaggle's `LOC_val_solution.csv`, image id -> wnid directly ([`parse_loc_val_solution`]),
//!    with `LOC_synset_mapping.txt`, the 1000 wnids in sorted order
//!    ([`parse_loc_synset_mapping`]).
//!
//! The trap this module exists for: the devkit's ILSVRC2012_IDs are in the devkit's OWN order
//! (id 1 is n02119789, kit fox), not the sorted-wnid order that frameworks use for class indices
//! (index 0 is n01440764, tench). Taking a ground-truth id minus one as the class index yields
//! labels that are well-formed but wrong: nothing fails, and evaluation just reports chance-level
//! accuracy, a classic silent bug. The only correct route is id -> wnid (via `meta.mat` or
//! `synsets.txt`) -> index in the sorted wnid list.

use std::collections::HashMap;

use mat_types::{
    MI_COMPRESSED, MI_DOUBLE, MI_INT16, MI_INT32, MI_INT64, MI_INT8, MI_MATRIX, MI_SINGLE,
    MI_UINT16, MI_UINT32, MI_UINT64, MI_UINT8, MI_UTF16, MI_UTF8, MX_CHAR_CLASS, MX_DOUBLE_CLASS,
    MX_STRUCT_CLASS, MX_UINT64_CLASS,
};

/// The number of ILSVRC2012 classes: leaf synsets carry ILSVRC2012_IDs 1..=1000.
const CLASS_COUNT: u32 = 1000;

const META_MAT: &str = "meta.mat";
const GROUND_TRUTH: &str = "ILSVRC2012_validation_ground_truth.txt";
const SYNSET_LIST: &str = "synsets.txt";
const LOC_VAL_SOLUTION: &str = "LOC_val_solution.csv";
const LOC_SYNSET_MAPPING: &str = "LOC_synset_mapping.txt";
const LOC_VAL_HEADER: &str = "ImageId,PredictionString";

/// One synset of the devkit: its ILSVRC2012_ID, WordNet id and words.
#[derive(Debug, Clone, PartialEq)]
pub struct DevkitSynset {
    pub ilsvrc2012_id: u32,
    pub wnid: String,
    pub words: String,
}

/// Why a label or class-name file could not be used.
///
/// Every variant names the file in `what`: by default the file's conventional name
/// (`meta.mat`, `ILSVRC2012_validation_ground_truth.txt`, ...), which a caller that knows the
/// real path replaces with [`DevkitError::with_what`]. Byte offsets are from the start of the
/// file; line numbers are 1-based.
#[derive(Debug, thiserror::Error)]
pub enum DevkitError {
    #[error("{what}: not a MATLAB level-5 MAT-file: {reason}")]
    NotMatFile { what: String, reason: String },
    #[error(
        "{what}: big-endian MAT-file (endian indicator \"MI\" at byte 126); only little-endian \
         files are supported"
    )]
    BigEndian { what: String },
    #[error("{what}: unsupported MAT-file version 0x{version:04x} at byte 124{}", version_hint(.version))]
    UnsupportedVersion { what: String, version: u16 },
    #[error(
        "{what}: compressed (miCOMPRESSED, zlib) data element at byte {offset} does not inflate \
         ({reason}); give a `synsets.txt` instead (one wnid per line in ILSVRC2012_ID order, \
         optionally followed by its words; e.g. from scipy.io.loadmat)"
    )]
    Compressed {
        what: String,
        offset: usize,
        reason: String,
    },
    #[error("{what}: truncated at byte {offset}: expected {expected}")]
    Truncated {
        what: String,
        offset: usize,
        expected: String,
    },
    #[error("{what}: malformed at byte {offset}: expected {expected}, found {found}")]
    Malformed {
        what: String,
        offset: usize,
        expected: String,
        found: String,
    },
    #[error("{what}: no `synsets` variable (variables: {})", list_or_none(.variables))]
    NoSynsets {
        what: String,
        variables: Vec<String>,
    },
    #[error("{what}: `synsets` has no field `{field}` (fields: {})", list_or_none(.fields))]
    MissingField {
        what: String,
        field: String,
        fields: Vec<String>,
    },
    #[error(
        "{what}: synsets({index}).{field} at byte {offset}: expected {expected}, found {found}"
    )]
    BadEntry {
        what: String,
        /// 1-based index into the struct array, as MATLAB would write it.
        index: usize,
        field: String,
        offset: usize,
        expected: String,
        found: String,
    },
    #[error("{what}: none of the {entries} synsets has an ILSVRC2012_ID in 1..=1000")]
    NoClasses { what: String, entries: usize },
    #[error(
        "{what}: ILSVRC2012_ID {id} appears twice (synsets({first_index}) and synsets({index}))"
    )]
    DuplicateId {
        what: String,
        id: u32,
        first_index: usize,
        index: usize,
    },
    #[error(
        "{what}: {present} class synsets, but the ILSVRC2012_IDs must be exactly 1..=1000; \
         missing {} ids: {}",
        .missing.len(),
        preview(.missing)
    )]
    MissingIds {
        what: String,
        present: usize,
        missing: Vec<u32>,
    },
    #[error("{what}: line {line}: expected {expected}, found {found:?}")]
    Line {
        what: String,
        line: usize,
        expected: String,
        found: String,
    },
    #[error("{what}: line {line}: duplicate {key} (first on line {first_line})")]
    Duplicate {
        what: String,
        line: usize,
        first_line: usize,
        key: String,
    },
    #[error("{what}: no entries")]
    Empty { what: String },
}

impl DevkitError {
    /// The file this error is about.
    pub fn what(&self) -> &str {
        match self {
            DevkitError::NotMatFile { what, .. }
            | DevkitError::BigEndian { what }
            | DevkitError::UnsupportedVersion { what, .. }
            | DevkitError::Compressed { what, .. }
            | DevkitError::Truncated { what, .. }
            | DevkitError::Malformed { what, .. }
            | DevkitError::NoSynsets { what, .. }
            | DevkitError::MissingField { what, .. }
            | DevkitError::BadEntry { what, .. }
            | DevkitError::NoClasses { what, .. }
            | DevkitError::DuplicateId { what, .. }
            | DevkitError::MissingIds { what, .. }
            | DevkitError::Line { what, .. }
            | DevkitError::Duplicate { what, .. }
            | DevkitError::Empty { what } => what,
        }
    }

    /// The same error naming the file `what` (typically its path) instead of its usual name.
    pub fn with_what(mut self, what: impl Into<String>) -> Self {
        let slot = match &mut self {
            DevkitError::NotMatFile { what, .. }
            | DevkitError::BigEndian { what }
            | DevkitError::UnsupportedVersion { what, .. }
            | DevkitError::Compressed { what, .. }
            | DevkitError::Truncated { what, .. }
            | DevkitError::Malformed { what, .. }
            | DevkitError::NoSynsets { what, .. }
            | DevkitError::MissingField { what, .. }
            | DevkitError::BadEntry { what, .. }
            | DevkitError::NoClasses { what, .. }
            | DevkitError::DuplicateId { what, .. }
            | DevkitError::MissingIds { what, .. }
            | DevkitError::Line { what, .. }
            | DevkitError::Duplicate { what, .. }
            | DevkitError::Empty { what } => what,
        };
        *slot = what.into();
        self
    }
}

fn version_hint(version: &u16) -> &'static str {
    if *version == 0x0200 {
        " (MATLAB 7.3, an HDF5 file; re-save with '-v6' or give a synsets.txt)"
    } else {
        " (expected 0x0100, level 5)"
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn preview(ids: &[u32]) -> String {
    const SHOWN: usize = 10;
    let mut s = ids
        .iter()
        .take(SHOWN)
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        s.push_str(", ...");
    }
    s
}

/// A line's content for an error message, cut short if long.
fn clip(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// meta.mat

/// The 1000 class synsets (ILSVRC2012_ID 1..=1000) of a devkit meta.mat, sorted by ILSVRC2012_ID.
///
/// Reads little-endian MAT v5 files: the `synsets` struct array, its fields
/// `ILSVRC2012_ID`, `WNID` and `words` (others are skipped). Entries with an id above 1000 (the
/// 860 non-leaf synsets) are dropped. Numbers may be stored in any MAT numeric type (MATLAB
/// writes small doubles as miUINT8/miUINT16); text as miUINT16/miUTF16 (UTF-16), miUTF8, or
/// miINT8/miUINT8 (Latin-1).
///
/// Variables saved compressed (miCOMPRESSED, MATLAB's default since v7) are inflated first
/// (zlib, through `flate2`, up to 256 MiB per variable).
///
/// Errors: not a MAT v5 file, big-endian, a v7.3 (HDF5) file, a compressed element that does
/// not inflate (then give [`parse_synset_list`] a `synsets.txt` instead), truncated or malformed
/// elements, no `synsets` variable, missing fields, an id that is not a positive integer, a
/// malformed wnid, no id in 1..=1000, or ids that are not exactly 1..=1000.
pub fn parse_meta_mat(bytes: &[u8]) -> Result<Vec<DevkitSynset>, DevkitError> {
    check_header(bytes)?;
    let mut top = Cursor::new(&bytes[128..], 128, true);
    let mut compressed_err = None;
    let mut variables = Vec::new();
    while let Some(element) = top.next()? {
        match element.ty {
            MI_COMPRESSED => {
                // MATLAB -v7 files wrap each variable in one zlib stream.
                let inflated = match inflate(element.data) {
                    Ok(v) => v,
                    Err(reason) => {
                        compressed_err.get_or_insert((element.tag_at, reason));
                        continue;
                    }
                };
                let mut inner = Cursor::new(&inflated, element.data_at, false);
                while let Some(e) = inner.next()? {
                    if e.ty != MI_MATRIX {
                        continue;
                    }
                    if let Some(matrix) = Matrix::parse(&e)? {
                        if matrix.name == "synsets" {
                            return synsets_from(matrix);
                        }
                        variables.push(matrix.name);
                    }
                }
            }
            MI_MATRIX => {
                let Some(matrix) = Matrix::parse(&element)? else {
                    continue;
                };
                if matrix.name == "synsets" {
                    return synsets_from(matrix);
                }
                variables.push(matrix.name);
            }
            // Anything else at the top level is not a variable: skip it.
            _ => {}
        }
    }
    Err(match compressed_err {
        Some((offset, reason)) => DevkitError::Compressed {
            what: META_MAT.to_string(),
            offset,
            reason,
        },
        None => DevkitError::NoSynsets {
            what: META_MAT.to_string(),
            variables,
        },
    })
}

/// Inflates a miCOMPRESSED payload, refusing to grow past 256 MiB (the real meta.mat holds
/// about 2 MB).
fn inflate(data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    const CAP: u64 = 256 << 20;
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(CAP + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > CAP {
        return Err("inflates past 256 MiB".into());
    }
    Ok(out)
}

fn check_header(bytes: &[u8]) -> Result<(), DevkitError> {
    let not_mat = |reason: String| DevkitError::NotMatFile {
        what: META_MAT.to_string(),
        reason,
    };
    if bytes.len() < 128 {
        return Err(not_mat(format!(
            "{} bytes, shorter than the 128-byte header",
            bytes.len()
        )));
    }
    match &bytes[126..128] {
        b"IM" => {}
        b"MI" => {
            return Err(DevkitError::BigEndian {
                what: META_MAT.to_string(),
            })
        }
        other => {
            return Err(not_mat(format!(
                "endian indicator at byte 126 is {other:02x?}, expected \"IM\""
            )))
        }
    }
    let version = u16::from_le_bytes([bytes[124], bytes[125]]);
    if version != 0x0100 {
        return Err(DevkitError::UnsupportedVersion {
            what: META_MAT.to_string(),
            version,
        });
    }
    Ok(())
}

fn malformed(offset: usize, expected: impl Into<String>, found: impl Into<String>) -> DevkitError {
    DevkitError::Malformed {
        what: META_MAT.to_string(),
        offset,
        expected: expected.into(),
        found: found.into(),
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn type_name(ty: u32) -> String {
    let name = match ty {
        MI_INT8 => "miINT8",
        MI_UINT8 => "miUINT8",
        MI_INT16 => "miINT16",
        MI_UINT16 => "miUINT16",
        MI_INT32 => "miINT32",
        MI_UINT32 => "miUINT32",
        MI_SINGLE => "miSINGLE",
        MI_DOUBLE => "miDOUBLE",
        MI_INT64 => "miINT64",
        MI_UINT64 => "miUINT64",
        MI_MATRIX => "miMATRIX",
        MI_COMPRESSED => "miCOMPRESSED",
        MI_UTF8 => "miUTF8",
        MI_UTF16 => "miUTF16",
        _ => return format!("data type {ty}"),
    };
    name.to_string()
}

/// One tagged data element.
struct Element<'a> {
    ty: u32,
    data: &'a [u8],
    /// File offset of the tag.
    tag_at: usize,
    /// File offset of the data.
    data_at: usize,
}

/// Walks the data elements of the file body or of a matrix.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// File offset of `buf[0]`.
    base: usize,
    /// Whether `buf` runs to the end of the file (overruns are truncation, not malformation).
    top: bool,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], base: usize, top: bool) -> Self {
        Cursor {
            buf,
            pos: 0,
            base,
            top,
        }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn next(&mut self) -> Result<Option<Element<'a>>, DevkitError> {
        let left = self.buf.len() - self.pos;
        if left == 0 {
            return Ok(None);
        }
        let at = self.offset();
        if left < 8 {
            return Err(self.overrun(at, format!("an 8-byte data element tag, {left} bytes left")));
        }
        let word = le_u32(self.buf, self.pos);
        if word >> 16 != 0 {
            // Small data element: type and size share one u32, data in the next 4 bytes.
            let ty = word & 0xffff;
            let size = (word >> 16) as usize;
            if size > 4 {
                return Err(malformed(
                    at,
                    "a small data element of at most 4 bytes",
                    format!("{} of {size} bytes", type_name(ty)),
                ));
            }
            let data = &self.buf[self.pos + 4..self.pos + 4 + size];
            self.pos += 8;
            return Ok(Some(Element {
                ty,
                data,
                tag_at: at,
                data_at: at + 4,
            }));
        }
        let ty = word;
        let size = le_u32(self.buf, self.pos + 4) as usize;
        let start = self.pos + 8;
        let available = self.buf.len() - start;
        if size > available {
            return Err(self.overrun(
                at,
                format!(
                    "{size} bytes of {} data after the tag at byte {at}, {available} present",
                    type_name(ty)
                ),
            ));
        }
        let data = &self.buf[start..start + size];
        // miCOMPRESSED elements are not padded; all others are padded to 8 bytes (a final
        // element of the file missing its padding is tolerated).
        let padded = if ty == MI_COMPRESSED {
            size
        } else {
            size.div_ceil(8) * 8
        };
        self.pos = (start + padded).min(self.buf.len());
        Ok(Some(Element {
            ty,
            data,
            tag_at: at,
            data_at: at + 8,
        }))
    }

    /// The next element, which must exist and have one of the types in `allowed`.
    fn expect(&mut self, what: &str, allowed: &[u32]) -> Result<Element<'a>, DevkitError> {
        let at = self.offset();
        let Some(element) = self.next()? else {
            return Err(malformed(at, what, "the end of the matrix"));
        };
        if !allowed.contains(&element.ty) {
            return Err(malformed(element.tag_at, what, type_name(element.ty)));
        }
        Ok(element)
    }

    fn overrun(&self, at: usize, expected: String) -> DevkitError {
        if self.top {
            DevkitError::Truncated {
                what: META_MAT.to_string(),
                offset: self.base + self.buf.len(),
                expected,
            }
        } else {
            malformed(at, "a sub-element inside its matrix", expected)
        }
    }
}

/// The header of a miMATRIX element, and a cursor over what follows it.
struct Matrix<'a> {
    at: usize,
    class: u8,
    dims: Vec<usize>,
    name: String,
    rest: Cursor<'a>,
}

impl<'a> Matrix<'a> {
    /// `None` for an empty matrix written as a miMATRIX element with no data.
    fn parse(element: &Element<'a>) -> Result<Option<Matrix<'a>>, DevkitError> {
        if element.ty != MI_MATRIX {
            return Err(malformed(
                element.tag_at,
                "a miMATRIX element",
                type_name(element.ty),
            ));
        }
        if element.data.is_empty() {
            return Ok(None);
        }
        let mut rest = Cursor::new(element.data, element.data_at, false);
        let flags = rest.expect("array flags (miUINT32)", &[MI_UINT32])?;
        if flags.data.len() != 8 {
            return Err(malformed(
                flags.tag_at,
                "8 bytes of array flags",
                format!("{} bytes", flags.data.len()),
            ));
        }
        let class = flags.data[0];
        let dims_el = rest.expect("array dimensions (miINT32)", &[MI_INT32])?;
        if dims_el.data.len() < 8 || !dims_el.data.len().is_multiple_of(4) {
            return Err(malformed(
                dims_el.tag_at,
                "at least 2 dimensions as 4-byte integers",
                format!("{} bytes", dims_el.data.len()),
            ));
        }
        let mut dims = Vec::with_capacity(dims_el.data.len() / 4);
        for (k, chunk) in dims_el.data.chunks_exact(4).enumerate() {
            let d = i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let Ok(d) = usize::try_from(d) else {
                return Err(malformed(
                    dims_el.data_at + 4 * k,
                    "a non-negative dimension",
                    d.to_string(),
                ));
            };
            dims.push(d);
        }
        let name_el = rest.expect("the array name (miINT8)", &[MI_INT8, MI_UINT8])?;
        let name = String::from_utf8_lossy(name_el.data).into_owned();
        Ok(Some(Matrix {
            at: element.tag_at,
            class,
            dims,
            name,
            rest,
        }))
    }

    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    fn dims_text(&self) -> String {
        self.dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x")
    }

    /// The real part of a numeric array, converted to f64 whatever its stored type.
    fn numeric(mut self) -> Result<Vec<f64>, DevkitError> {
        if !(MX_DOUBLE_CLASS..=MX_UINT64_CLASS).contains(&self.class) {
            return Err(malformed(
                self.at,
                "a numeric array",
                format!("array class {}", self.class),
            ));
        }
        let n = self.len();
        let at = self.rest.offset();
        let Some(real) = self.rest.next()? else {
            return if n == 0 {
                Ok(Vec::new())
            } else {
                Err(malformed(
                    at,
                    format!("the real part of a {} array", self.dims_text()),
                    "the end of the matrix",
                ))
            };
        };
        let values = decode_numbers(&real)?;
        if values.len() != n {
            return Err(malformed(
                real.tag_at,
                format!("{n} values for a {} array", self.dims_text()),
                format!("{} values", values.len()),
            ));
        }
        Ok(values)
    }

    /// A char array as a string (rows of a multi-row array joined by newlines).
    fn text(mut self) -> Result<String, DevkitError> {
        if self.class != MX_CHAR_CLASS {
            return Err(malformed(
                self.at,
                "a char array",
                format!("array class {}", self.class),
            ));
        }
        let n = self.len();
        let at = self.rest.offset();
        let Some(data) = self.rest.next()? else {
            return if n == 0 {
                Ok(String::new())
            } else {
                Err(malformed(
                    at,
                    format!("the characters of a {} char array", self.dims_text()),
                    "the end of the matrix",
                ))
            };
        };
        let chars = decode_chars(&data)?;
        let rows = self.dims.first().copied().unwrap_or(0);
        if rows <= 1 || chars.len() != n {
            return Ok(chars.into_iter().collect());
        }
        // Column-major: row r is chars[r], chars[r + rows], ...
        let cols = n / rows;
        let lines: Vec<String> = (0..rows)
            .map(|r| {
                let row: String = (0..cols).map(|c| chars[r + c * rows]).collect();
                row.trim_end().to_string()
            })
            .collect();
        Ok(lines.join("\n"))
    }

    /// A struct array: its field names and, per element (column-major) per field, the field's
    /// miMATRIX element.
    fn fields(mut self) -> Result<(Vec<String>, Vec<Element<'a>>), DevkitError> {
        if self.class != MX_STRUCT_CLASS {
            return Err(malformed(
                self.at,
                "a struct array",
                format!("array class {}", self.class),
            ));
        }
        let len_el = self
            .rest
            .expect("the field name length (miINT32)", &[MI_INT32])?;
        if len_el.data.len() != 4 {
            return Err(malformed(
                len_el.tag_at,
                "a 4-byte field name length",
                format!("{} bytes", len_el.data.len()),
            ));
        }
        let name_len = le_u32(len_el.data, 0) as usize;
        let names_el = self
            .rest
            .expect("the field names (miINT8)", &[MI_INT8, MI_UINT8])?;
        if name_len == 0 || !names_el.data.len().is_multiple_of(name_len) {
            return Err(malformed(
                names_el.tag_at,
                format!("field names of {name_len} bytes each"),
                format!("{} bytes", names_el.data.len()),
            ));
        }
        let names: Vec<String> = names_el
            .data
            .chunks_exact(name_len)
            .map(|chunk| {
                let end = chunk.iter().position(|&b| b == 0).unwrap_or(chunk.len());
                String::from_utf8_lossy(&chunk[..end]).into_owned()
            })
            .collect();
        let count = self.len() * names.len();
        let mut values = Vec::with_capacity(count);
        for k in 0..count {
            let what = format!(
                "field `{}` of struct element {} (miMATRIX)",
                names[k % names.len()],
                k / names.len() + 1
            );
            values.push(self.rest.expect(&what, &[MI_MATRIX])?);
        }
        Ok((names, values))
    }
}

fn decode_numbers(element: &Element<'_>) -> Result<Vec<f64>, DevkitError> {
    let width = match element.ty {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        other => return Err(malformed(element.tag_at, "numeric data", type_name(other))),
    };
    if !element.data.len().is_multiple_of(width) {
        return Err(malformed(
            element.tag_at,
            format!("a multiple of {width} bytes of {}", type_name(element.ty)),
            format!("{} bytes", element.data.len()),
        ));
    }
    Ok(element
        .data
        .chunks_exact(width)
        .map(|c| match element.ty {
            MI_INT8 => f64::from(c[0] as i8),
            MI_UINT8 => f64::from(c[0]),
            MI_INT16 => f64::from(i16::from_le_bytes([c[0], c[1]])),
            MI_UINT16 => f64::from(u16::from_le_bytes([c[0], c[1]])),
            MI_INT32 => f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            MI_UINT32 => f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            MI_SINGLE => f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            MI_INT64 => i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
            MI_UINT64 => u64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
            _ => f64::from_le_bytes(c.try_into().expect("8 bytes")),
        })
        .collect())
}

fn decode_chars(element: &Element<'_>) -> Result<Vec<char>, DevkitError> {
    match element.ty {
        MI_UINT16 | MI_UTF16 => {
            if !element.data.len().is_multiple_of(2) {
                return Err(malformed(
                    element.tag_at,
                    "UTF-16 text of an even number of bytes",
                    format!("{} bytes", element.data.len()),
                ));
            }
            let units = element
                .data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<Vec<char>, _>>()
                .map_err(|e| {
                    malformed(
                        element.data_at,
                        "UTF-16 text",
                        format!("unpaired surrogate 0x{:04x}", e.unpaired_surrogate()),
                    )
                })
        }
        MI_UTF8 => std::str::from_utf8(element.data)
            .map(|s| s.chars().collect())
            .map_err(|e| {
                malformed(
                    element.data_at + e.valid_up_to(),
                    "UTF-8 text",
                    "an invalid byte sequence",
                )
            }),
        // One byte per character: Latin-1, as MATLAB and scipy read it.
        MI_INT8 | MI_UINT8 => Ok(element.data.iter().map(|&b| char::from(b)).collect()),
        other => Err(malformed(
            element.tag_at,
            "character data (miUINT16, miUTF16, miUTF8 or miINT8)",
            type_name(other),
        )),
    }
}

fn synsets_from(matrix: Matrix<'_>) -> Result<Vec<DevkitSynset>, DevkitError> {
    let dims = matrix.dims.clone();
    let (fields, values) = matrix.fields()?;
    let column = |field: &str| {
        fields
            .iter()
            .position(|f| f == field)
            .ok_or_else(|| DevkitError::MissingField {
                what: META_MAT.to_string(),
                field: field.to_string(),
                fields: fields.clone(),
            })
    };
    let (id_col, wnid_col, words_col) =
        (column("ILSVRC2012_ID")?, column("WNID")?, column("words")?);
    let entries: usize = dims.iter().product();
    let width = fields.len();
    let mut first_index: Vec<Option<usize>> = vec![None; CLASS_COUNT as usize + 1];
    let mut out = Vec::with_capacity(CLASS_COUNT as usize);
    for k in 0..entries {
        let index = k + 1;
        let Some(id) = entry_id(&values[k * width + id_col], index)? else {
            continue;
        };
        if let Some(first) = first_index[id as usize] {
            return Err(DevkitError::DuplicateId {
                what: META_MAT.to_string(),
                id,
                first_index: first,
                index,
            });
        }
        first_index[id as usize] = Some(index);
        let wnid_el = &values[k * width + wnid_col];
        let wnid = entry_text(wnid_el)?;
        if !is_wnid(&wnid) {
            return Err(DevkitError::BadEntry {
                what: META_MAT.to_string(),
                index,
                field: "WNID".to_string(),
                offset: wnid_el.tag_at,
                expected: "a WordNet id ('n' and 8 digits)".to_string(),
                found: format!("{:?}", clip(&wnid)),
            });
        }
        let words = entry_text(&values[k * width + words_col])?;
        out.push(DevkitSynset {
            ilsvrc2012_id: id,
            wnid,
            words,
        });
    }
    if out.is_empty() {
        return Err(DevkitError::NoClasses {
            what: META_MAT.to_string(),
            entries,
        });
    }
    let missing: Vec<u32> = (1..=CLASS_COUNT)
        .filter(|&id| first_index[id as usize].is_none())
        .collect();
    if !missing.is_empty() {
        return Err(DevkitError::MissingIds {
            what: META_MAT.to_string(),
            present: out.len(),
            missing,
        });
    }
    out.sort_by_key(|s| s.ilsvrc2012_id);
    Ok(out)
}

/// The ILSVRC2012_ID of struct element `index` (1-based): `Some` for a class (1..=1000),
/// `None` for a higher (non-leaf) id.
fn entry_id(element: &Element<'_>, index: usize) -> Result<Option<u32>, DevkitError> {
    let bad = |found: String| DevkitError::BadEntry {
        what: META_MAT.to_string(),
        index,
        field: "ILSVRC2012_ID".to_string(),
        offset: element.tag_at,
        expected: "a positive integer scalar".to_string(),
        found,
    };
    let Some(matrix) = Matrix::parse(element)? else {
        return Err(bad("an empty matrix".to_string()));
    };
    let dims = matrix.dims_text();
    let values = matrix.numeric()?;
    let &[v] = values.as_slice() else {
        return Err(bad(format!("a {dims} array")));
    };
    if !v.is_finite() || v.fract() != 0.0 || v < 1.0 {
        return Err(bad(v.to_string()));
    }
    Ok((v <= f64::from(CLASS_COUNT)).then_some(v as u32))
}

fn entry_text(element: &Element<'_>) -> Result<String, DevkitError> {
    match Matrix::parse(element)? {
        None => Ok(String::new()),
        Some(matrix) => matrix.text(),
    }
}

// ---------------------------------------------------------------------------------------------
// Text files

/// Lines of a text file with their 1-based numbers: a leading UTF-8 BOM dropped, `\r\n` and
/// `\n` endings both accepted, no empty last line after a final newline.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .enumerate()
        .map(|(i, line)| (i + 1, line))
}

fn line_error(what: &str, line: usize, expected: impl Into<String>, found: &str) -> DevkitError {
    DevkitError::Line {
        what: what.to_string(),
        line,
        expected: expected.into(),
        found: clip(found),
    }
}

/// A line's first whitespace-separated token and the (trimmed) rest.
fn split_first_token(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    }
}

/// `(wnid, words)` lines, shared by `synsets.txt` and `LOC_synset_mapping.txt`.
fn parse_wnid_lines(
    text: &str,
    what: &str,
    comments: bool,
) -> Result<Vec<(String, String)>, DevkitError> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line_no, line) in numbered_lines(text) {
        let trimmed = line.trim();
        if trimmed.is_empty() || (comments && trimmed.starts_with('#')) {
            continue;
        }
        let (wnid, words) = split_first_token(trimmed);
        if !is_wnid(wnid) {
            return Err(line_error(
                what,
                line_no,
                "a WordNet id ('n' and 8 digits), then optionally its words",
                line,
            ));
        }
        if let Some(&first_line) = seen.get(wnid) {
            return Err(DevkitError::Duplicate {
                what: what.to_string(),
                line: line_no,
                first_line,
                key: format!("wnid {wnid}"),
            });
        }
        seen.insert(wnid.to_string(), line_no);
        out.push((wnid.to_string(), words.to_string()));
    }
    if out.is_empty() {
        return Err(DevkitError::Empty {
            what: what.to_string(),
        });
    }
    Ok(out)
}

/// `synsets.txt`-style list: one wnid per line (optionally followed by whitespace and words), in
/// ILSVRC2012_ID order; blank lines and '#' comments ignored. The n-th wnid gets id n.
///
/// This must be the devkit's id order (as exported from meta.mat), not a sorted list such as
/// Caffe's `synset_words.txt` or `LOC_synset_mapping.txt`: those number the classes in sorted
/// order, and using them here silently mislabels every validation image.
///
/// Errors: a line that does not start with a wnid, a repeated wnid, no entries.
pub fn parse_synset_list(text: &str) -> Result<Vec<DevkitSynset>, DevkitError> {
    Ok(parse_wnid_lines(text, SYNSET_LIST, true)?
        .into_iter()
        .zip(1u32..)
        .map(|((wnid, words), ilsvrc2012_id)| DevkitSynset {
            ilsvrc2012_id,
            wnid,
            words,
        })
        .collect())
}

/// The ground-truth file: one integer per line; returns ids in line order (line 1 = val image 1).
///
/// Each id must be in 1..=1000. Line numbers are image indices, so a blank line is an error
/// (except blank lines at the very end). The count is not checked (ILSVRC2012 has 50,000); that is
/// for the caller, which knows how many images it has. Tolerates CRLF and a UTF-8 BOM.
pub fn parse_ground_truth(text: &str) -> Result<Vec<u32>, DevkitError> {
    let lines: Vec<(usize, &str)> = numbered_lines(text).collect();
    let Some(last) = lines.iter().rposition(|(_, l)| !l.trim().is_empty()) else {
        return Err(DevkitError::Empty {
            what: GROUND_TRUTH.to_string(),
        });
    };
    let expected = "an ILSVRC2012_ID in 1..=1000";
    lines[..=last]
        .iter()
        .map(|&(line_no, line)| {
            let t = line.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(line_error(GROUND_TRUTH, line_no, expected, line));
            }
            match t.parse::<u32>() {
                Ok(id) if (1..=CLASS_COUNT).contains(&id) => Ok(id),
                _ => Err(line_error(GROUND_TRUTH, line_no, expected, line)),
            }
        })
        .collect()
}

/// The file name of validation image i (1-based): ILSVRC2012_val_00000001.JPEG
pub fn val_image_name(i: usize) -> String {
    format!("ILSVRC2012_val_{i:08}.JPEG")
}

/// Kaggle LOC_val_solution.csv: (image id without extension, wnid) pairs in file order. Errors name
/// the line. Tolerate CRLF and a UTF-8 BOM.
///
/// The header must be `ImageId,PredictionString`. A PredictionString is one or more boxes of five
/// tokens, `wnid x_min y_min x_max y_max`; all boxes of an image have the same wnid, which is
/// returned. Blank lines are ignored; a repeated image id is an error.
pub fn parse_loc_val_solution(text: &str) -> Result<Vec<(String, String)>, DevkitError> {
    let what = LOC_VAL_SOLUTION;
    let mut lines = numbered_lines(text).filter(|(_, l)| !l.trim().is_empty());
    let Some((header_no, header)) = lines.next() else {
        return Err(DevkitError::Empty {
            what: what.to_string(),
        });
    };
    if header.trim() != LOC_VAL_HEADER {
        return Err(line_error(
            what,
            header_no,
            format!("the header `{LOC_VAL_HEADER}`"),
            header,
        ));
    }
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line_no, line) in lines {
        let row_error = |expected: &str| line_error(what, line_no, expected, line);
        let Some((image_id, prediction)) = line.split_once(',') else {
            return Err(row_error("`ImageId,PredictionString`"));
        };
        let image_id = image_id.trim();
        if image_id.is_empty() || image_id.contains(char::is_whitespace) {
            return Err(row_error("an ImageId such as ILSVRC2012_val_00000001"));
        }
        if prediction.contains(',') {
            return Err(row_error("two comma-separated columns"));
        }
        let tokens: Vec<&str> = prediction.split_whitespace().collect();
        if tokens.is_empty() || !tokens.len().is_multiple_of(5) {
            return Err(row_error(
                "a PredictionString of boxes `wnid x_min y_min x_max y_max`",
            ));
        }
        let wnid = tokens[0];
        for boxed in tokens.chunks_exact(5) {
            if !is_wnid(boxed[0]) {
                return Err(row_error(
                    "each box to start with a WordNet id ('n' and 8 digits)",
                ));
            }
            if boxed[0] != wnid {
                return Err(row_error("all boxes of an image to have the same wnid"));
            }
            if !boxed[1..]
                .iter()
                .all(|c| c.parse::<f64>().is_ok_and(f64::is_finite))
            {
                return Err(row_error("four numeric box coordinates after each wnid"));
            }
        }
        if let Some(&first_line) = seen.get(image_id) {
            return Err(DevkitError::Duplicate {
                what: what.to_string(),
                line: line_no,
                first_line,
                key: format!("ImageId {image_id}"),
            });
        }
        seen.insert(image_id.to_string(), line_no);
        out.push((image_id.to_string(), wnid.to_string()));
    }
    if out.is_empty() {
        return Err(DevkitError::Empty {
            what: what.to_string(),
        });
    }
    Ok(out)
}

/// LOC_synset_mapping.txt: (wnid, words) in file order.
///
/// Lines are `wnid words...` (words may be empty); blank lines are ignored; a repeated wnid is an
/// error. The file is in sorted-wnid order, i.e. line n (0-based) is class index n.
pub fn parse_loc_synset_mapping(text: &str) -> Result<Vec<(String, String)>, DevkitError> {
    parse_wnid_lines(text, LOC_SYNSET_MAPPING, false)
}

/// A syntactically valid WordNet id: 'n' followed by 8 digits.
pub fn is_wnid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 9 && b[0] == b'n' && b[1..].iter().all(u8::is_ascii_digit)
}

// ---------------------------------------------------------------------------------------------
// MAT v5 format constants

/// MAT v5 data types (`miINT8`, ...) and array classes (`mxCHAR_CLASS`, ...), with the numbers
/// of MathWorks' "MAT-File Format" document: what the parser reads, and what the test-only writer
/// (`mat_writer`, under `#[cfg(test)]`) writes.
pub mod mat_types {
    pub const MI_INT8: u32 = 1;
    pub const MI_UINT8: u32 = 2;
    pub const MI_INT16: u32 = 3;
    pub const MI_UINT16: u32 = 4;
    pub const MI_INT32: u32 = 5;
    pub const MI_UINT32: u32 = 6;
    pub const MI_SINGLE: u32 = 7;
    pub const MI_DOUBLE: u32 = 9;
    pub const MI_INT64: u32 = 12;
    pub const MI_UINT64: u32 = 13;
    pub const MI_MATRIX: u32 = 14;
    pub const MI_COMPRESSED: u32 = 15;
    pub const MI_UTF8: u32 = 16;
    pub const MI_UTF16: u32 = 17;
    pub const MX_CELL_CLASS: u8 = 1;
    pub const MX_STRUCT_CLASS: u8 = 2;
    pub const MX_CHAR_CLASS: u8 = 4;
    pub const MX_DOUBLE_CLASS: u8 = 6;
    pub const MX_UINT64_CLASS: u8 = 15;
}

/// The MAT v5 writer for fixtures; test-only (the integration tests include its file too).
#[cfg(test)]
pub mod mat_writer;

#[cfg(test)]
mod tests {
    use super::mat_writer::*;
    use super::*;

    /// 1000 classes whose ids are a permutation of 1..=1000 unrelated to wnid order: entry k
    /// (wnid order) gets id ((389 k + 17) mod 1000) + 1.
    fn classes() -> Vec<DevkitSynset> {
        (0..1000u32)
            .map(|k| DevkitSynset {
                ilsvrc2012_id: (k * 389 + 17) % 1000 + 1,
                wnid: format!("n{:08}", 1_440_764 + 7 * k),
                words: format!("class {k}, ÿ-ü é"),
            })
            .collect()
    }

    /// `classes()` plus three non-leaf synsets (ids > 1000) interleaved, as in the real file.
    fn with_extras() -> Vec<DevkitSynset> {
        let mut all = classes();
        for (pos, id) in [(0usize, 1001u32), (500, 1500), (1002, 1860)] {
            all.insert(
                pos,
                DevkitSynset {
                    ilsvrc2012_id: id,
                    wnid: format!("n{:08}", 9_000_000 + id),
                    words: "internal node".to_string(),
                },
            );
        }
        all
    }

    fn expected_sorted() -> Vec<DevkitSynset> {
        let mut v = classes();
        v.sort_by_key(|s| s.ilsvrc2012_id);
        v
    }

    fn check_round_trip(chars: CharEncoding, numbers: NumericEncoding) {
        let bytes = write_synsets_mat_with(&with_extras(), chars, numbers);
        let parsed = parse_meta_mat(&bytes).expect("parses");
        assert_eq!(parsed, expected_sorted());
        // Sorted by id, which is not wnid order: the whole point.
        assert!(parsed
            .iter()
            .zip(1u32..)
            .all(|(s, id)| s.ilsvrc2012_id == id));
        assert!(parsed.windows(2).any(|w| w[0].wnid > w[1].wnid));
        assert!(parsed.iter().all(|s| s.ilsvrc2012_id <= 1000));
    }

    #[test]
    fn round_trip_utf16_matlab_numbers() {
        check_round_trip(CharEncoding::Utf16, NumericEncoding::MatlabLike);
    }

    #[test]
    fn round_trip_utf8_and_int8_text_double_numbers() {
        check_round_trip(CharEncoding::Utf8, NumericEncoding::Double);
        check_round_trip(CharEncoding::Int8, NumericEncoding::MatlabLike);
    }

    #[test]
    fn round_trip_default_writer() {
        let parsed = parse_meta_mat(&write_synsets_mat(&with_extras())).unwrap();
        assert_eq!(parsed, expected_sorted());
        // Id 1 is not the first wnid: ids are not sorted-wnid indices plus one.
        assert_eq!(parsed[0].ilsvrc2012_id, 1);
        assert_ne!(parsed[0].wnid, "n01440764");
    }

    #[test]
    fn writer_uses_matlab_storage_choices() {
        // The real-part element sits after flags (16 bytes), dims (16) and an empty name (8),
        // i.e. 8 + 40 bytes into the miMATRIX element.
        let tag = |m: &[u8]| u32::from_le_bytes(m[48..52].try_into().unwrap());
        let small = |ty: u32, size: u32| ty | (size << 16);
        let m = NumericEncoding::MatlabLike;
        assert_eq!(tag(&double_scalar(7.0, m)), small(MI_UINT8, 1));
        assert_eq!(tag(&double_scalar(700.0, m)), small(MI_UINT16, 2));
        assert_eq!(tag(&double_scalar(-3.0, m)), small(MI_INT8, 1));
        assert_eq!(tag(&double_scalar(0.5, m)), MI_DOUBLE);
        assert_eq!(tag(&double_scalar(7.0, NumericEncoding::Double)), MI_DOUBLE);
        assert_eq!(tag(&char_row("n01440764", CharEncoding::Utf16)), MI_UINT16);
        assert_eq!(
            tag(&char_row("a", CharEncoding::Utf16)),
            small(MI_UINT16, 2)
        );
        assert_eq!(tag(&char_row("n01440764", CharEncoding::Utf8)), MI_UTF8);
        // The struct's field name length is a small miINT32 element holding 32.
        let s = struct_array("s", &["a"], &[double_scalar(1.0, m)]);
        assert_eq!(&s[48..56], &[5, 0, 4, 0, 32, 0, 0, 0]);
    }

    /// Decodes one matrix built by the writer through the parser's own paths.
    fn decode(matrix: &[u8]) -> Matrix<'_> {
        let element = Cursor::new(matrix, 0, true).next().unwrap().unwrap();
        Matrix::parse(&element).unwrap().unwrap()
    }

    #[test]
    fn numeric_storage_types_all_convert() {
        let raw = |data: Vec<u8>| matrix(MX_DOUBLE_CLASS, &[1, 1], "", &data);
        let cases: Vec<(Vec<u8>, f64)> = vec![
            (raw(element(MI_UINT8, &[200])), 200.0),
            (raw(element(MI_INT8, &[0xff])), -1.0),
            (raw(element(MI_UINT16, &999u16.to_le_bytes())), 999.0),
            (raw(element(MI_INT16, &(-999i16).to_le_bytes())), -999.0),
            (raw(element(MI_INT32, &70_000i32.to_le_bytes())), 70_000.0),
            (
                raw(element(MI_UINT32, &4_000_000_000u32.to_le_bytes())),
                4e9,
            ),
            (raw(element(MI_SINGLE, &1.5f32.to_le_bytes())), 1.5),
            (raw(element(MI_DOUBLE, &0.25f64.to_le_bytes())), 0.25),
            (raw(element(MI_INT64, &(-5i64).to_le_bytes())), -5.0),
            (raw(element(MI_UINT64, &6u64.to_le_bytes())), 6.0),
            // A value that needs no small element but uses the regular format anyway.
            (raw(regular_element(MI_UINT8, &[42])), 42.0),
        ];
        for (m, want) in cases {
            assert_eq!(decode(&m).numeric().unwrap(), vec![want]);
        }
    }

    #[test]
    fn char_storage_types_all_decode() {
        let raw = |n: i32, data: Vec<u8>| matrix(MX_CHAR_CLASS, &[1, n], "", &data);
        let utf16: Vec<u8> = "tench, é"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let cases = vec![
            raw(8, element(MI_UINT16, &utf16)),
            raw(8, element(MI_UTF16, &utf16)),
            raw(8, element(MI_UTF8, "tench, é".as_bytes())),
            raw(8, element(MI_INT8, b"tench, \xe9")),
        ];
        for m in cases {
            assert_eq!(decode(&m).text().unwrap(), "tench, é");
        }
        // A 2x3 char matrix, column-major: rows "ab " and "cde".
        let two_rows = matrix(MX_CHAR_CLASS, &[2, 3], "", &element(MI_UTF8, b"acbd e"));
        assert_eq!(decode(&two_rows).text().unwrap(), "ab\ncde");
        // Empty strings: 0x0 with a zero-size element, or no element at all.
        assert_eq!(
            decode(&char_row("", CharEncoding::Utf16)).text().unwrap(),
            ""
        );
        let bare = matrix(MX_CHAR_CLASS, &[0, 0], "", &[]);
        assert_eq!(decode(&bare).text().unwrap(), "");
        // Invalid UTF-8 is an error, not mojibake.
        let bad = raw(2, element(MI_UTF8, &[0xc3, 0x28]));
        assert!(matches!(
            decode(&bad).text(),
            Err(DevkitError::Malformed { .. })
        ));
    }

    #[test]
    fn truncated_file_is_reported_as_truncated() {
        let bytes = write_synsets_mat(&with_extras());
        for cut in [bytes.len() - 3, bytes.len() / 2, 140, 131] {
            match parse_meta_mat(&bytes[..cut]) {
                Err(DevkitError::Truncated { offset, .. }) => assert_eq!(offset, cut),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_meta_mat(&bytes[..100]),
            Err(DevkitError::NotMatFile { .. })
        ));
    }

    #[test]
    fn wrong_magic_and_endianness_are_refused() {
        let good = write_synsets_mat(&with_extras());
        let mut bad = good.clone();
        bad[126..128].copy_from_slice(b"XY");
        assert!(matches!(
            parse_meta_mat(&bad),
            Err(DevkitError::NotMatFile { .. })
        ));
        let mut big = good.clone();
        big[126..128].copy_from_slice(b"MI");
        assert!(matches!(
            parse_meta_mat(&big),
            Err(DevkitError::BigEndian { .. })
        ));
        let mut v73 = good.clone();
        v73[124..126].copy_from_slice(&0x0200u16.to_le_bytes());
        let err = parse_meta_mat(&v73).unwrap_err();
        assert!(matches!(
            err,
            DevkitError::UnsupportedVersion {
                version: 0x0200,
                ..
            }
        ));
        assert!(err.to_string().contains("HDF5"));
        assert!(matches!(
            parse_meta_mat(b"n01440764\nn01443537\n"),
            Err(DevkitError::NotMatFile { .. })
        ));
    }

    #[test]
    fn compressed_synsets_are_inflated() {
        use std::io::Write;
        let plain = write_synsets_mat(&with_extras());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&plain[128..]).unwrap();
        let file = mat_file(&[compressed_element(&z.finish().unwrap())]);
        assert!(file.len() < plain.len());
        assert_eq!(parse_meta_mat(&file).unwrap(), expected_sorted());
    }

    #[test]
    fn compressed_element_gives_the_synsets_txt_advice() {
        // As MATLAB -v7 writes it: the whole variable inside one miCOMPRESSED element.
        let file = mat_file(&[compressed_element(&[0x78, 0x9c, 1, 2, 3, 4, 5])]);
        let err = parse_meta_mat(&file).unwrap_err();
        assert!(
            matches!(err, DevkitError::Compressed { offset: 128, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("compressed") && message.contains("synsets.txt"));
        // An uncompressed `synsets` after a compressed element is still found.
        let synsets = write_synsets_mat(&with_extras());
        let mut mixed = mat_file(&[compressed_element(&[1, 2, 3])]);
        mixed.extend_from_slice(&synsets[128..]);
        assert_eq!(parse_meta_mat(&mixed).unwrap(), expected_sorted());
    }

    fn struct_file(fields: &[&str], per_entry: impl Fn(&DevkitSynset) -> Vec<Vec<u8>>) -> Vec<u8> {
        let values: Vec<Vec<u8>> = with_extras().iter().flat_map(per_entry).collect();
        mat_file(&[struct_array("synsets", fields, &values)])
    }

    #[test]
    fn missing_field_is_named() {
        let m = NumericEncoding::MatlabLike;
        let file = struct_file(&["ILSVRC2012_ID", "words"], |s| {
            vec![
                double_scalar(f64::from(s.ilsvrc2012_id), m),
                char_row(&s.words, CharEncoding::Utf16),
            ]
        });
        match parse_meta_mat(&file) {
            Err(DevkitError::MissingField { field, fields, .. }) => {
                assert_eq!(field, "WNID");
                assert_eq!(fields, ["ILSVRC2012_ID", "words"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_synsets_variable() {
        let other = struct_array(
            "classes",
            &["a"],
            &[double_scalar(1.0, NumericEncoding::Double)],
        );
        match parse_meta_mat(&mat_file(&[other])) {
            Err(DevkitError::NoSynsets { variables, .. }) => assert_eq!(variables, ["classes"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn class_ids_must_be_exactly_1_to_1000() {
        let few: Vec<DevkitSynset> = with_extras().into_iter().take(4).collect();
        match parse_meta_mat(&write_synsets_mat(&few)) {
            Err(DevkitError::MissingIds {
                present, missing, ..
            }) => {
                assert_eq!(present, 3);
                assert_eq!(missing.len(), 997);
            }
            other => panic!("{other:?}"),
        }
        let mut dup = with_extras();
        dup[5].ilsvrc2012_id = dup[6].ilsvrc2012_id;
        assert!(matches!(
            parse_meta_mat(&write_synsets_mat(&dup)),
            Err(DevkitError::DuplicateId {
                first_index: 6,
                index: 7,
                ..
            })
        ));
        let internal_only: Vec<DevkitSynset> = with_extras()
            .into_iter()
            .filter(|s| s.ilsvrc2012_id > 1000)
            .collect();
        assert!(matches!(
            parse_meta_mat(&write_synsets_mat(&internal_only)),
            Err(DevkitError::NoClasses { entries: 3, .. })
        ));
    }

    #[test]
    fn bad_entries_are_named() {
        let mut bad_wnid = with_extras();
        bad_wnid[10].wnid = "x01440764".to_string();
        match parse_meta_mat(&write_synsets_mat(&bad_wnid)) {
            Err(DevkitError::BadEntry { index, field, .. }) => {
                assert_eq!((index, field.as_str()), (11, "WNID"));
            }
            other => panic!("{other:?}"),
        }
        let fields = ["ILSVRC2012_ID", "WNID", "words"];
        let half = struct_file(&fields, |s| {
            let id = if s.ilsvrc2012_id == 17 {
                16.5
            } else {
                f64::from(s.ilsvrc2012_id)
            };
            vec![
                double_scalar(id, NumericEncoding::MatlabLike),
                char_row(&s.wnid, CharEncoding::Utf16),
                char_row(&s.words, CharEncoding::Utf16),
            ]
        });
        match parse_meta_mat(&half) {
            Err(e @ DevkitError::BadEntry { .. }) => {
                assert!(e.to_string().contains("ILSVRC2012_ID"), "{e}");
                assert!(e.to_string().contains("16.5"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let empty_id = struct_file(&fields, |s| {
            vec![
                if s.ilsvrc2012_id == 3 {
                    empty_matrix()
                } else {
                    double_scalar(f64::from(s.ilsvrc2012_id), NumericEncoding::Double)
                },
                char_row(&s.wnid, CharEncoding::Utf16),
                char_row(&s.words, CharEncoding::Utf16),
            ]
        });
        assert!(matches!(
            parse_meta_mat(&empty_id),
            Err(DevkitError::BadEntry { .. })
        ));
    }

    #[test]
    fn with_what_renames_the_file() {
        let err = parse_meta_mat(&[]).unwrap_err();
        assert_eq!(err.what(), "meta.mat");
        let err = err.with_what("/data/devkit/data/meta.mat");
        assert_eq!(err.what(), "/data/devkit/data/meta.mat");
        assert!(err.to_string().starts_with("/data/devkit/data/meta.mat:"));
    }

    #[test]
    fn ground_truth_parses_in_line_order() {
        assert_eq!(
            parse_ground_truth("490\n361\n171\n").unwrap(),
            [490, 361, 171]
        );
        assert_eq!(
            parse_ground_truth("490\r\n361\r\n171").unwrap(),
            [490, 361, 171]
        );
        assert_eq!(
            parse_ground_truth("\u{feff}1\n1000\n\n\n").unwrap(),
            [1, 1000]
        );
        let big: String = (0..50_000).map(|i| format!("{}\n", i % 1000 + 1)).collect();
        let ids = parse_ground_truth(&big).unwrap();
        assert_eq!((ids.len(), ids[0], ids[49_999]), (50_000, 1, 1000));
    }

    #[test]
    fn ground_truth_errors_name_the_line() {
        let line_of = |text: &str| match parse_ground_truth(text) {
            Err(DevkitError::Line { line, .. }) => line,
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!(line_of("1\n2\nthree\n4\n"), 3);
        assert_eq!(line_of("1\n0\n"), 2);
        assert_eq!(line_of("1\n2\n1001\n"), 3);
        assert_eq!(line_of("5\n\n6\n"), 2); // a blank would shift every later image
        assert_eq!(line_of("-4\n"), 1);
        assert_eq!(line_of("1\n2.0\n"), 2);
        assert_eq!(line_of("99999999999\n"), 1);
        let message = parse_ground_truth("1\r\n7 7\r\n").unwrap_err().to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains(GROUND_TRUTH), "{message}");
        assert!(matches!(
            parse_ground_truth("\n\n"),
            Err(DevkitError::Empty { .. })
        ));
    }

    #[test]
    fn val_image_names() {
        assert_eq!(val_image_name(1), "ILSVRC2012_val_00000001.JPEG");
        assert_eq!(val_image_name(50_000), "ILSVRC2012_val_00050000.JPEG");
    }

    #[test]
    fn wnid_syntax() {
        assert!(is_wnid("n01440764"));
        for bad in [
            "",
            "n0144076",
            "n014407640",
            "N01440764",
            "x01440764",
            "n0144076a",
            "n0144076٤",
        ] {
            assert!(!is_wnid(bad), "{bad}");
        }
    }

    const SOLUTION: &str = "ImageId,PredictionString\n\
        ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295 \n\
        ILSVRC2012_val_00020130,n03888605 1 1 499 374\n";

    #[test]
    fn loc_val_solution_parses() {
        let want = vec![
            (
                "ILSVRC2012_val_00008726".to_string(),
                "n02119789".to_string(),
            ),
            (
                "ILSVRC2012_val_00020130".to_string(),
                "n03888605".to_string(),
            ),
        ];
        assert_eq!(parse_loc_val_solution(SOLUTION).unwrap(), want);
        let crlf_bom = format!("\u{feff}{}", SOLUTION.replace('\n', "\r\n"));
        assert_eq!(parse_loc_val_solution(&crlf_bom).unwrap(), want);
    }

    #[test]
    fn loc_val_solution_errors_name_the_line() {
        let line_of = |text: &str| match parse_loc_val_solution(text) {
            Err(DevkitError::Line { line, .. }) => line,
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!(
            line_of("ImageId,Prediction\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n"),
            1
        );
        assert_eq!(line_of("ILSVRC2012_val_00000001,n01440764 1 2 3 4\n"), 1);
        let header = "ImageId,PredictionString\n";
        let row = "ILSVRC2012_val_00000001,n01440764 1 2 3 4\n";
        for bad in [
            "ILSVRC2012_val_00000002 n01440764 1 2 3 4",
            "ILSVRC2012_val_00000002,",
            "ILSVRC2012_val_00000002,x01440764 1 2 3 4",
            "ILSVRC2012_val_00000002,n0144076 1 2 3 4",
            "ILSVRC2012_val_00000002,n01440764 1 2 3",
            "ILSVRC2012_val_00000002,n01440764 1 2 3 4 n01443537 1 2 3 4",
            "ILSVRC2012_val_00000002,n01440764 1 2 x 4",
            ",n01440764 1 2 3 4",
        ] {
            assert_eq!(line_of(&format!("{header}{row}{bad}\n")), 3, "{bad}");
        }
        match parse_loc_val_solution(&format!("{header}{row}\r\n{row}")) {
            Err(DevkitError::Duplicate {
                line, first_line, ..
            }) => assert_eq!((line, first_line), (4, 2)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_loc_val_solution(header),
            Err(DevkitError::Empty { .. })
        ));
    }

    #[test]
    fn loc_synset_mapping_parses() {
        let text =
            "\u{feff}n01440764 tench, Tinca tinca\r\nn01443537 goldfish, Carassius auratus\r\n";
        assert_eq!(
            parse_loc_synset_mapping(text).unwrap(),
            vec![
                ("n01440764".to_string(), "tench, Tinca tinca".to_string()),
                (
                    "n01443537".to_string(),
                    "goldfish, Carassius auratus".to_string()
                ),
            ]
        );
        assert!(matches!(
            parse_loc_synset_mapping("n01440764 tench\nn1443537 goldfish\n"),
            Err(DevkitError::Line { line: 2, .. })
        ));
        assert!(matches!(
            parse_loc_synset_mapping("n01440764 tench\nn01440764 tench\n"),
            Err(DevkitError::Duplicate {
                line: 2,
                first_line: 1,
                ..
            })
        ));
    }

    #[test]
    fn synset_list_numbers_lines_from_one() {
        let text = "# exported from meta.mat\nn02119789 kit fox, Vulpes macrotis\n\nn02100735\n";
        let list = parse_synset_list(text).unwrap();
        assert_eq!(
            list,
            vec![
                DevkitSynset {
                    ilsvrc2012_id: 1,
                    wnid: "n02119789".to_string(),
                    words: "kit fox, Vulpes macrotis".to_string(),
                },
                DevkitSynset {
                    ilsvrc2012_id: 2,
                    wnid: "n02100735".to_string(),
                    words: String::new(),
                },
            ]
        );
        assert!(matches!(
            parse_synset_list("n02119789\nkit fox\n"),
            Err(DevkitError::Line { line: 2, .. })
        ));
        assert!(matches!(
            parse_synset_list("# nothing\n\n"),
            Err(DevkitError::Empty { .. })
        ));
    }
}
