//! Opens a shard through a memory map and hands out records as borrowed slices.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{
    Encoding, Header, IndexRow, RecordFlags, ShardError, HEADER_LEN, MAGIC, PAGE, ROW_LEN, VERSION,
};

/// A validated, memory-mapped shard. Opening checks the header, the metadata checksum, the file
/// length and that every index row points inside the payload; record checksums are checked on
/// demand ([`ShardReader::check_record`]) since that reads every byte.
pub struct ShardReader {
    path: PathBuf,
    map: Mmap,
    header: Header,
}

/// One record, borrowed from the map.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub index: usize,
    pub key: &'a str,
    pub bytes: &'a [u8],
    pub label: u32,
    pub width: u32,
    pub height: u32,
    pub encoding: Encoding,
    pub flags: RecordFlags,
    pub crc: u32,
    pub source_index: u32,
}

impl ShardReader {
    /// Maps and validates a shard file.
    pub fn open(path: &Path) -> Result<Self, ShardError> {
        let file = File::open(path).map_err(|source| ShardError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(ShardError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a folder; a shard file (SPLIT-NNNNN.vggshard, written by `vgg prepare`) is expected",
                ),
            });
        }
        // SAFETY: shards are immutable once renamed into place; the toolkit never writes to a
        // published shard. Another process truncating it underneath would be a user error that
        // can fault the reader, as with any memory-mapped format.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| ShardError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_map(path.to_path_buf(), map)
    }

    fn from_map(path: PathBuf, map: Mmap) -> Result<Self, ShardError> {
        let incomplete = |reason: String| ShardError::Incomplete {
            path: path.clone(),
            reason,
        };
        if map.len() < PAGE as usize {
            return Err(if map.len() >= 8 && map[..8] != MAGIC {
                ShardError::BadMagic { path }
            } else {
                incomplete(format!("{} bytes, shorter than the header page", map.len()))
            });
        }
        if map[..8] != MAGIC {
            // A torn write leaves the first page zero: the header is written last.
            if map[..HEADER_LEN].iter().all(|&b| b == 0) {
                return Err(incomplete("header never written".into()));
            }
            return Err(ShardError::BadMagic { path });
        }
        let header = Header::from_bytes(&map[..HEADER_LEN]);
        if header.version != VERSION {
            return Err(ShardError::Version {
                path,
                found: header.version,
            });
        }
        if header.file_len != map.len() as u64 {
            return Err(incomplete(format!(
                "file is {} bytes, header says {}",
                map.len(),
                header.file_len
            )));
        }
        let ordered = header.payload_offset == PAGE
            && header.payload_offset <= header.index_offset
            && header.index_offset <= header.keys_offset
            && header.keys_offset <= header.meta_offset
            && header.meta_offset <= header.file_len
            && header.keys_offset - header.index_offset == header.record_count * ROW_LEN as u64;
        if !ordered {
            return Err(incomplete("section offsets are inconsistent".into()));
        }
        let section = |a: u64, b: u64| &map[a as usize..b as usize];
        let computed = header.checksum(
            section(header.index_offset, header.keys_offset),
            section(header.keys_offset, header.meta_offset),
            section(header.meta_offset, header.file_len),
        );
        if computed != header.header_crc {
            return Err(ShardError::HeaderChecksum {
                path,
                stored: header.header_crc,
                computed,
            });
        }
        let reader = ShardReader { path, map, header };
        let keys_len = header.meta_offset - header.keys_offset;
        for i in 0..reader.len() {
            let row = reader.row(i).ok_or_else(|| ShardError::BadRecord {
                path: reader.path.clone(),
                record: i,
                reason: "unknown encoding".into(),
            })?;
            let end = row.offset + row.length as u64;
            let key_end = row.key_offset as u64 + row.key_len as u64;
            if row.offset < header.payload_offset || end > header.index_offset || key_end > keys_len
            {
                return Err(ShardError::BadRecord {
                    path: reader.path.clone(),
                    record: i,
                    reason: "index row points outside the file's sections".into(),
                });
            }
        }
        Ok(reader)
    }

    /// The file this reader maps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.header.record_count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn row(&self, i: usize) -> Option<IndexRow> {
        let at = self.header.index_offset as usize + i * ROW_LEN;
        IndexRow::read_from(&self.map[at..at + ROW_LEN])
    }

    /// Record `i`. Panics if `i >= len()` (a programming error); returns `Err` if its key is not
    /// UTF-8 (the file is damaged).
    pub fn record(&self, i: usize) -> Result<RecordRef<'_>, ShardError> {
        assert!(i < self.len(), "record {i} out of range 0..{}", self.len());
        let row = self.row(i).expect("rows were validated at open");
        let keys = self.header.keys_offset as usize;
        let key_bytes = &self.map
            [keys + row.key_offset as usize..keys + row.key_offset as usize + row.key_len as usize];
        let key = std::str::from_utf8(key_bytes).map_err(|_| ShardError::BadRecord {
            path: self.path.clone(),
            record: i,
            reason: "key is not UTF-8".into(),
        })?;
        Ok(RecordRef {
            index: i,
            key,
            bytes: &self.map[row.offset as usize..(row.offset + row.length as u64) as usize],
            label: row.label,
            width: row.width,
            height: row.height,
            encoding: row.encoding,
            flags: row.flags,
            crc: row.crc,
            source_index: row.source_index,
        })
    }

    /// Record `i` after checking its payload against the CRC-32C of its index row; a mismatch is
    /// [`ShardError::RecordChecksum`], naming the file, the record and its key.
    pub fn check_record(&self, i: usize) -> Result<RecordRef<'_>, ShardError> {
        let rec = self.record(i)?;
        let computed = crc32c::crc32c(rec.bytes);
        if computed != rec.crc {
            return Err(ShardError::RecordChecksum {
                path: self.path.clone(),
                record: i,
                key: rec.key.to_string(),
                stored: rec.crc,
                computed,
            });
        }
        Ok(rec)
    }

    /// Checks every record's payload checksum (reads every byte); the first mismatch is the
    /// error.
    pub fn check_all(&self) -> Result<(), ShardError> {
        (0..self.len()).try_for_each(|i| self.check_record(i).map(|_| ()))
    }

    /// The shard's JSON metadata block.
    pub fn meta(&self) -> &[u8] {
        &self.map[self.header.meta_offset as usize..self.header.file_len as usize]
    }

    /// Iterates over all records.
    pub fn records(&self) -> impl Iterator<Item = Result<RecordRef<'_>, ShardError>> + '_ {
        (0..self.len()).map(move |i| self.record(i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{place, ShardWriter};
    use super::*;

    fn write_sample(dir: &Path) -> (PathBuf, Vec<Vec<u8>>) {
        let path = dir.join("s.vggshard");
        let payloads: Vec<Vec<u8>> = [10usize, 5000, 4090, 1, 70_000, 0, 300]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7) as u8).collect())
            .collect();
        let mut w = ShardWriter::create(&path, 99).unwrap();
        for (i, p) in payloads.iter().enumerate() {
            w.append(
                &format!("class/img_{i}.JPEG"),
                p,
                i as u32 % 3,
                100 + i as u32,
                50 + i as u32,
                if i % 2 == 0 {
                    Encoding::Jpeg
                } else {
                    Encoding::Raw
                },
                RecordFlags(i as u8),
                1000 + i as u32,
            )
            .unwrap();
        }
        let ws = w.finish(br#"{"shard":0}"#).unwrap();
        assert_eq!(ws.records, payloads.len() as u64);
        (path, payloads)
    }

    #[test]
    fn write_then_read_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let (path, payloads) = write_sample(dir.path());
        assert!(!crate::util::fs::temp_path(&path).exists());
        let r = ShardReader::open(&path).unwrap();
        assert_eq!(r.len(), payloads.len());
        assert_eq!(r.header().plan_hash, 99);
        assert_eq!(r.meta(), br#"{"shard":0}"#);
        for (i, p) in payloads.iter().enumerate() {
            let rec = r.check_record(i).unwrap();
            assert_eq!(rec.bytes, &p[..]);
            assert_eq!(rec.key, format!("class/img_{i}.JPEG"));
            assert_eq!(rec.label, i as u32 % 3);
            assert_eq!((rec.width, rec.height), (100 + i as u32, 50 + i as u32));
            assert_eq!(rec.flags, RecordFlags(i as u8));
            assert_eq!(rec.source_index, 1000 + i as u32);
            let off = rec.bytes.as_ptr() as usize - r.map.as_ptr() as usize;
            assert_eq!(place(off as u64, p.len() as u64), off as u64);
        }
    }

    #[test]
    fn every_truncation_and_any_metadata_flip_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_sample(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad.vggshard");
        for cut in [0, 7, 100, 4096, 5000, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&bad, &bytes[..cut]).unwrap();
            assert!(
                ShardReader::open(&bad).is_err(),
                "accepted a file cut at {cut}"
            );
        }
        // Flip one bit in each metadata byte region: header, index, keys, meta.
        let h = Header::from_bytes(&bytes);
        for at in [
            20usize,
            h.index_offset as usize + 3,
            h.keys_offset as usize + 2,
            h.meta_offset as usize + 1,
        ] {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            std::fs::write(&bad, &b).unwrap();
            assert!(ShardReader::open(&bad).is_err(), "accepted a flip at {at}");
        }
        // A flipped payload byte opens (the index is intact) but fails its record checksum.
        let mut b = bytes.clone();
        b[PAGE as usize + 3] ^= 1;
        std::fs::write(&bad, &b).unwrap();
        let r = ShardReader::open(&bad).unwrap();
        assert!(matches!(
            r.check_record(0),
            Err(ShardError::RecordChecksum { record: 0, .. })
        ));
        assert!(r.check_all().is_err());
        assert!(r.check_record(1).is_ok());
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.vggshard");
        {
            let mut w = ShardWriter::create(&path, 1).unwrap();
            w.append("k", b"abc", 0, 1, 1, Encoding::Raw, RecordFlags(0), 0)
                .unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
