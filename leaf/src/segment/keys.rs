//! The key of every row of a sealed segment, its `_id` and `_seq`, uncompressed
//! in row order.
//!
//! A needle query selects a few rows with the index and fetches their documents
//! from RocksDB by `_id`, checking by `_seq` that the row is still the current
//! version. Read from tantivy's fast fields, each id cost a zstd context and a
//! block decode of the term dictionary, more than the lookup itself; here a row's
//! key is two array reads in a memory-mapped file:
//!
//! ```text
//!  "ALTK" | version u32 | rows u64 | _seq u64 × rows | end of _id u32 × rows | _id bytes
//! ```
//!
//! (little endian; the `_id` of row `r` is `bytes[end[r-1]..end[r]]`.)

use std::io::Write;
use std::path::Path;

use tantivy::directory::OwnedBytes;

use crate::error::{LeafError, Result};

const MAGIC: &[u8; 4] = b"ALTK";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 16;

/// Collects the keys of a segment's rows as they are indexed.
#[derive(Debug, Default)]
pub struct RowKeysWriter {
    seqs: Vec<u64>,
    ends: Vec<u32>,
    ids: Vec<u8>,
}

impl RowKeysWriter {
    /// Appends the key of the next row.
    pub fn push(&mut self, id: &str, seq: u64) -> Result<()> {
        self.ids.extend_from_slice(id.as_bytes());
        let end = u32::try_from(self.ids.len()).map_err(|_| {
            LeafError::Segment("a segment's ids exceed 4 GiB; seal segments with fewer rows".into())
        })?;
        self.seqs.push(seq);
        self.ends.push(end);
        Ok(())
    }

    /// Writes the keys to `path` and syncs the file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path)?;
        let mut out = std::io::BufWriter::new(file);
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(self.seqs.len() as u64).to_le_bytes())?;
        for seq in &self.seqs {
            out.write_all(&seq.to_le_bytes())?;
        }
        for end in &self.ends {
            out.write_all(&end.to_le_bytes())?;
        }
        out.write_all(&self.ids)?;
        out.into_inner()
            .map_err(|e| LeafError::Io(e.into_error()))?
            .sync_all()?;
        Ok(())
    }
}

/// The row keys of a segment, read in place.
pub struct RowKeys {
    bytes: OwnedBytes,
    rows: usize,
}

impl RowKeys {
    /// Reads keys written by [`RowKeysWriter::write`], checking their layout.
    pub fn open(bytes: OwnedBytes) -> Result<Self> {
        let corrupt = |what: &str| LeafError::Segment(format!("segment row keys file {what}"));
        let data = bytes.as_slice();
        if data.len() < HEADER_BYTES || &data[..4] != MAGIC {
            return Err(corrupt("has no valid header"));
        }
        let version = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(corrupt(&format!(
                "has version {version}, expected {VERSION}"
            )));
        }
        let rows = usize::try_from(u64::from_le_bytes(data[8..16].try_into().expect("8 bytes")))
            .map_err(|_| corrupt("counts too many rows"))?;
        let ids_start = rows
            .checked_mul(12)
            .and_then(|n| n.checked_add(HEADER_BYTES))
            .filter(|&start| start <= data.len())
            .ok_or_else(|| corrupt("is shorter than its row count"))?;
        let keys = Self { bytes, rows };
        let ids_len = keys.end(rows) as usize;
        if ids_start + ids_len != keys.bytes.len() {
            return Err(corrupt("has a length that does not match its ids"));
        }
        Ok(keys)
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The `_id` and `_seq` of `row`, if the segment has it.
    pub fn get(&self, row: u32) -> Option<(&str, u64)> {
        let row = row as usize;
        if row >= self.rows {
            return None;
        }
        let data = self.bytes.as_slice();
        let at = HEADER_BYTES + row * 8;
        let seq = u64::from_le_bytes(data[at..at + 8].try_into().ok()?);
        let ids = HEADER_BYTES + self.rows * 12;
        let (start, end) = (self.end(row) as usize, self.end(row + 1) as usize);
        let id = std::str::from_utf8(data.get(ids + start..ids + end)?).ok()?;
        Some((id, seq))
    }

    /// Where the ids of the first `rows` rows end in the id bytes.
    fn end(&self, rows: usize) -> u32 {
        if rows == 0 {
            return 0;
        }
        let at = HEADER_BYTES + self.rows * 8 + (rows - 1) * 4;
        u32::from_le_bytes(
            self.bytes.as_slice()[at..at + 4]
                .try_into()
                .expect("4 bytes"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_by_row_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let mut writer = RowKeysWriter::default();
        for (id, seq) in [("a", 7), ("", 8), ("ürün-42", 9)] {
            writer.push(id, seq).unwrap();
        }
        writer.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let keys = RowKeys::open(OwnedBytes::new(bytes.clone())).unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.get(0), Some(("a", 7)));
        assert_eq!(keys.get(1), Some(("", 8)));
        assert_eq!(keys.get(2), Some(("ürün-42", 9)));
        assert_eq!(keys.get(3), None);

        let truncated = OwnedBytes::new(bytes[..bytes.len() - 1].to_vec());
        let error = RowKeys::open(truncated).err().unwrap().to_string();
        assert!(error.contains("does not match its ids"), "{error}");
        let error = RowKeys::open(OwnedBytes::new(b"nope".to_vec()))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("no valid header"), "{error}");
    }
}
