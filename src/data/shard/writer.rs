//! Writes one shard under a temporary name and publishes it atomically.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::util::fs::{temp_path, AtomicFile};

use super::{
    place, Encoding, Header, IndexRow, RecordFlags, ShardError, HEADER_LEN, PAGE, ROW_LEN, VERSION,
};

/// What a finished shard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenShard {
    pub path: PathBuf,
    pub records: u64,
    pub file_len: u64,
    pub payload_bytes: u64,
}

/// Appends records to a shard being written, through an [`AtomicFile`]. Dropping it before
/// [`ShardWriter::finish`] removes the temporary file, so an error or an interruption never leaves a partial shard behind.
pub struct ShardWriter {
    out: Option<AtomicFile>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    plan_hash: u64,
    pos: u64,
    payload_bytes: u64,
    index: Vec<u8>,
    keys: Vec<u8>,
    count: u64,
}

impl ShardWriter {
    /// Starts a shard that will appear at `final_path` when finished.
    pub fn create(final_path: &Path, plan_hash: u64) -> Result<Self, ShardError> {
        let tmp_path = temp_path(final_path);
        let io = |source| ShardError::Io {
            path: tmp_path.clone(),
            source,
        };
        let mut out = AtomicFile::create(final_path).map_err(io)?;
        out.write_all(&[0u8; PAGE as usize]).map_err(io)?;
        Ok(ShardWriter {
            out: Some(out),
            tmp_path: tmp_path.clone(),
            final_path: final_path.to_path_buf(),
            plan_hash,
            pos: PAGE,
            payload_bytes: 0,
            index: Vec::new(),
            keys: Vec::new(),
            count: 0,
        })
    }

    fn io(&self, source: std::io::Error) -> ShardError {
        ShardError::Io {
            path: self.tmp_path.clone(),
            source,
        }
    }

    /// Number of records appended so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends one record.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        key: &str,
        payload: &[u8],
        label: u32,
        width: u32,
        height: u32,
        encoding: Encoding,
        flags: RecordFlags,
        source_index: u32,
    ) -> Result<(), ShardError> {
        let length = u32::try_from(payload.len()).map_err(|_| ShardError::RecordTooLarge {
            path: self.final_path.clone(),
            len: payload.len(),
        })?;
        let key_bytes = key.as_bytes();
        let key_len = u16::try_from(key_bytes.len()).unwrap_or(u16::MAX);
        let key_bytes = &key_bytes[..key_len as usize];
        let at = place(self.pos, payload.len() as u64);
        let pad = (at - self.pos) as usize;
        let out = self.out.as_mut().expect("writer is open until finish");
        let result = out
            .write_all(&[0u8; PAGE as usize][..pad])
            .and_then(|_| out.write_all(payload));
        result.map_err(|e| self.io(e))?;
        let row = IndexRow {
            offset: at,
            length,
            label,
            height,
            width,
            crc: crc32c::crc32c(payload),
            key_offset: self.keys.len() as u32,
            key_len,
            encoding,
            flags,
            source_index,
        };
        row.write_to(&mut self.index);
        self.keys.extend_from_slice(key_bytes);
        self.pos = at + payload.len() as u64;
        self.payload_bytes += payload.len() as u64;
        self.count += 1;
        Ok(())
    }

    /// Writes the index, keys, `meta` and header, syncs, and renames the file into place.
    pub fn finish(mut self, meta: &[u8]) -> Result<WrittenShard, ShardError> {
        let index_offset = self.pos.div_ceil(8) * 8;
        let keys_offset = index_offset + self.index.len() as u64;
        let meta_offset = keys_offset + self.keys.len() as u64;
        let file_len = meta_offset + meta.len() as u64;
        debug_assert_eq!(self.index.len(), self.count as usize * ROW_LEN);
        let mut header = Header {
            version: VERSION,
            page_size: PAGE as u32,
            record_count: self.count,
            payload_offset: PAGE,
            index_offset,
            keys_offset,
            meta_offset,
            file_len,
            plan_hash: self.plan_hash,
            header_crc: 0,
        };
        header.header_crc = header.checksum(&self.index, &self.keys, meta);
        let pad = (index_offset - self.pos) as usize;
        let mut out = self.out.take().expect("writer is open until finish");
        let result = (|| {
            out.write_all(&[0u8; 8][..pad])?;
            out.write_all(&self.index)?;
            out.write_all(&self.keys)?;
            out.write_all(meta)?;
            out.seek(SeekFrom::Start(0))?;
            out.write_all(&header.to_bytes())?;
            out.commit()
        })();
        result.map_err(|e| self.io(e))?;
        Ok(WrittenShard {
            path: self.final_path.clone(),
            records: self.count,
            file_len,
            payload_bytes: self.payload_bytes,
        })
    }
}

/// The header length is part of the format; keep the first page large enough for it.
const _: () = assert!(HEADER_LEN as u64 <= PAGE);
