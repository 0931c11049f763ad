//! The shard file: many encoded images in one memory-mappable file, each with a fixed-size index
//! row, so a loader reads any record with two slice operations and no copy.
//!
//! # Layout (version 1, all integers little-endian)
//!
//! ```text
//! offset 0        header, 128 bytes, then zero padding to the first page boundary
//! offset 4096     payload: record bytes (JPEG stream or raw RGB8)
//! index_offset    record_count index rows of 40 bytes (8-byte aligned)
//! keys_offset     UTF-8 record keys (the source path relative to the split root), concatenated
//! meta_offset     JSON object: shard number, split, skipped source files with reasons
//! file_len        end of file
//! ```
//!
//! Header: `magic "VGGSHARD"`, `version u32`, `page_size u32`, `record_count u64`,
//! `payload_offset u64`, `index_offset u64`, `keys_offset u64`, `meta_offset u64`, `file_len u64`,
//! `plan_hash u64` (identifies the list of source files and the store policy the shard was made
//! from, so a resumed run never keeps a shard of another plan), `header_crc u32` (CRC-32C of the
//! header with this field zeroed, then the index, keys and meta bytes), zero padding.
//!
//! Index row: `offset u64` (absolute), `length u32`, `label u32`, `height u32`, `width u32`,
//! `crc u32` (CRC-32C of the record bytes), `key_offset u32`, `key_len u16`, `encoding u8`
//! (0 JPEG, 1 raw RGB8), `flags u8` (see [`RecordFlags`]), `source_index u32` (position of the
//! source file in the split's sorted listing).
//!
//! Placement: a record starts where the previous one ended unless that would make it touch more
//! 4 KiB pages than its length needs; then it starts at the next page boundary. Reading a record
//! therefore faults in the fewest pages possible, at a cost of well under one page per record.
//!
//! Crash safety: a shard is written under a temporary name, synced, then renamed; the header is
//! written last and its checksum covers all the metadata, and `file_len` must match the file, so a
//! partial or torn file is never accepted by [`ShardReader::open`].

mod reader;
mod writer;

pub use reader::{RecordRef, ShardReader};
pub use writer::{ShardWriter, WrittenShard};

use std::path::PathBuf;

/// File magic.
pub const MAGIC: [u8; 8] = *b"VGGSHARD";
/// Current format version. Readers refuse other versions.
pub const VERSION: u32 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 128;
/// Index row size in bytes.
pub const ROW_LEN: usize = 40;
/// Page size used for placement.
pub const PAGE: u64 = 4096;
/// File name extension of shard files.
pub const EXTENSION: &str = "vggshard";

pub use crate::config::registry::Encoding;

impl Encoding {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Encoding::Jpeg),
            1 => Some(Encoding::Raw),
            _ => None,
        }
    }
}

/// What happened to a record on its way into the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordFlags(pub u8);

impl RecordFlags {
    /// The source bytes are stored untouched.
    pub const PASSTHROUGH: u8 = 1;
    /// The image was downscaled to the store's cap.
    pub const RESIZED: u8 = 2;
    /// The source was grayscale.
    pub const GRAY_SOURCE: u8 = 4;
    /// The source was a CMYK/YCCK JPEG, converted to RGB.
    pub const CMYK_SOURCE: u8 = 8;
    /// The source was a PNG (whatever its file name said).
    pub const PNG_SOURCE: u8 = 16;

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// One record's index row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRow {
    pub offset: u64,
    pub length: u32,
    pub label: u32,
    pub height: u32,
    pub width: u32,
    pub crc: u32,
    pub key_offset: u32,
    pub key_len: u16,
    pub encoding: Encoding,
    pub flags: RecordFlags,
    pub source_index: u32,
}

impl IndexRow {
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.label.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.width.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.key_offset.to_le_bytes());
        out.extend_from_slice(&self.key_len.to_le_bytes());
        out.push(self.encoding as u8);
        out.push(self.flags.0);
        out.extend_from_slice(&self.source_index.to_le_bytes());
    }

    fn read_from(b: &[u8]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Some(IndexRow {
            offset: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            length: u32_at(8),
            label: u32_at(12),
            height: u32_at(16),
            width: u32_at(20),
            crc: u32_at(24),
            key_offset: u32_at(28),
            key_len: u16::from_le_bytes(b[32..34].try_into().unwrap()),
            encoding: Encoding::from_u8(b[34])?,
            flags: RecordFlags(b[35]),
            source_index: u32_at(36),
        })
    }
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub page_size: u32,
    pub record_count: u64,
    pub payload_offset: u64,
    pub index_offset: u64,
    pub keys_offset: u64,
    pub meta_offset: u64,
    pub file_len: u64,
    pub plan_hash: u64,
    pub header_crc: u32,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        let fields = [
            self.record_count,
            self.payload_offset,
            self.index_offset,
            self.keys_offset,
            self.meta_offset,
            self.file_len,
            self.plan_hash,
        ];
        for (i, v) in fields.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b[72..76].copy_from_slice(&self.header_crc.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Header {
            version: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            page_size: u32::from_le_bytes(b[12..16].try_into().unwrap()),
            record_count: u64_at(16),
            payload_offset: u64_at(24),
            index_offset: u64_at(32),
            keys_offset: u64_at(40),
            meta_offset: u64_at(48),
            file_len: u64_at(56),
            plan_hash: u64_at(64),
            header_crc: u32::from_le_bytes(b[72..76].try_into().unwrap()),
        }
    }

    /// CRC-32C over the header (with the CRC field zeroed) and the metadata sections.
    fn checksum(&self, index: &[u8], keys: &[u8], meta: &[u8]) -> u32 {
        let mut h = *self;
        h.header_crc = 0;
        let mut crc = crc32c::crc32c(&h.to_bytes());
        for part in [index, keys, meta] {
            crc = crc32c::crc32c_append(crc, part);
        }
        crc
    }
}

/// The offset where a record of `len` bytes goes when the previous record ended at `pos`.
pub fn place(pos: u64, len: u64) -> u64 {
    if len == 0 {
        return pos;
    }
    let pages_needed = len.div_ceil(PAGE);
    let first = pos / PAGE;
    let last = (pos + len - 1) / PAGE;
    if last - first + 1 > pages_needed {
        pos.div_ceil(PAGE) * PAGE
    } else {
        pos
    }
}

/// Why a shard could not be written or read. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {source}{hint}", hint = disk_full_hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a shard file (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path}: shard format version {found}, this build reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: incomplete or torn shard: {reason}")]
    Incomplete { path: PathBuf, reason: String },
    #[error(
        "{path}: metadata checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    HeaderChecksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("{path}: record {record}: {reason}")]
    BadRecord {
        path: PathBuf,
        record: usize,
        reason: String,
    },
    /// A record's bytes do not match the CRC-32C its index row stores.
    #[error("{path}: record {record} ({key}): payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); the shard is damaged, re-run `vgg prepare` to redo it")]
    RecordChecksum {
        path: PathBuf,
        record: usize,
        key: String,
        stored: u32,
        computed: u32,
    },
    #[error("{path}: record too large ({len} bytes; a record is at most 4 GiB)")]
    RecordTooLarge { path: PathBuf, len: usize },
}

fn disk_full_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        " (the disk is full: free space or point `shards` elsewhere, then re-run to resume)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_touches_the_fewest_pages() {
        for &(pos, len) in &[
            (4096u64, 10u64),
            (4096 + 4090, 10),
            (4096 + 100, 4096),
            (8192, 9000),
            (8192 + 5, 9000),
            (12_000, 100_000),
            (12_000, 0),
        ] {
            let at = place(pos, len);
            assert!(at >= pos && at - pos < PAGE);
            if len > 0 {
                let touched = (at + len - 1) / PAGE - at / PAGE + 1;
                assert_eq!(touched, len.div_ceil(PAGE), "pos {pos} len {len} -> {at}");
                // Never pads when packing in place was already optimal.
                let in_place = (pos + len - 1) / PAGE - pos / PAGE + 1;
                if in_place == len.div_ceil(PAGE) {
                    assert_eq!(at, pos);
                }
            }
        }
    }

    #[test]
    fn row_and_header_round_trip() {
        let row = IndexRow {
            offset: 1 << 40,
            length: 123_456,
            label: 999,
            height: 512,
            width: 12_345,
            crc: 0xDEAD_BEEF,
            key_offset: 77,
            key_len: 300,
            encoding: Encoding::Raw,
            flags: RecordFlags(RecordFlags::RESIZED | RecordFlags::CMYK_SOURCE),
            source_index: 1_281_166,
        };
        let mut b = Vec::new();
        row.write_to(&mut b);
        assert_eq!(b.len(), ROW_LEN);
        assert_eq!(IndexRow::read_from(&b), Some(row));
        let h = Header {
            version: VERSION,
            page_size: PAGE as u32,
            record_count: 5,
            payload_offset: 4096,
            index_offset: 9000,
            keys_offset: 9200,
            meta_offset: 9300,
            file_len: 9400,
            plan_hash: 42,
            header_crc: 7,
        };
        let hb = h.to_bytes();
        assert_eq!(&hb[..8], b"VGGSHARD");
        assert_eq!(Header::from_bytes(&hb), h);
    }
}
