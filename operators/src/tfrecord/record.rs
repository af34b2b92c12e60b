//! TFRecord framing: lengths, masked CRC32C checksums, gzip.

use std::io::Read;

/// The CRC32C of `data`, masked as TFRecord (and LevelDB) store it.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends one framed record holding `data` to `out`.
pub fn write_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// A damaged record: where it starts (in the uncompressed stream) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {index} at byte offset {offset}: {reason}")]
pub struct RecordError {
    /// Zero-based index of the record.
    pub index: u64,
    /// Byte offset of the record's header in the uncompressed stream.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// Whether `bytes` look like gzip rather than a TFRecord whose first length happens to start
/// with the gzip magic: the first record's length CRC decides.
pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    if bytes.len() < 3 || bytes[..3] != [0x1f, 0x8b, 0x08] {
        return false;
    }
    bytes.len() < 12
        || u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"))
            != masked_crc32c(&bytes[..8])
}

/// Gunzips `bytes` (all members).
pub(crate) fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

/// Iterates over the records of an uncompressed TFRecord stream, checking both CRCs.
#[derive(Debug)]
pub struct RecordReader<'a> {
    data: &'a [u8],
    pos: usize,
    index: u64,
    failed: bool,
}

impl<'a> RecordReader<'a> {
    /// A reader over the whole stream.
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            index: 0,
            failed: false,
        }
    }

    fn error(&mut self, reason: String) -> Option<Result<&'a [u8], RecordError>> {
        self.failed = true;
        Some(Err(RecordError {
            index: self.index,
            offset: self.pos as u64,
            reason,
        }))
    }
}

impl<'a> Iterator for RecordReader<'a> {
    type Item = Result<&'a [u8], RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos == self.data.len() {
            return None;
        }
        let rest = &self.data[self.pos..];
        if rest.len() < 12 {
            return self.error(format!("truncated header ({} of 12 bytes)", rest.len()));
        }
        let len_bytes = &rest[..8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let len_crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if len_crc != masked_crc32c(len_bytes) {
            return self.error("length CRC mismatch (corrupt header)".into());
        }
        let available = (rest.len() - 12) as u64;
        if len > available.saturating_sub(4) || available < 4 {
            return self.error(format!(
                "truncated record: {len} data bytes + 4 CRC bytes declared, {available} present"
            ));
        }
        let len = len as usize;
        let data = &rest[12..12 + len];
        let data_crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("4 bytes"));
        if data_crc != masked_crc32c(data) {
            return self.error("data CRC mismatch (corrupt record)".into());
        }
        self.pos += 16 + len;
        self.index += 1;
        Some(Ok(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_crc() {
        // CRC32C("123456789") = 0xe3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let masked = masked_crc32c(b"123456789");
        assert_eq!(
            masked,
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn round_trip_and_corruption() {
        let mut out = Vec::new();
        write_record(&mut out, b"hello");
        write_record(&mut out, b"");
        write_record(&mut out, b"world!");
        let records: Vec<_> = RecordReader::new(&out).collect::<Result<_, _>>().unwrap();
        assert_eq!(records, vec![&b"hello"[..], b"", b"world!"]);
        assert!(!is_gzip(&out));

        // Flip a data byte of the third record: the first two still read, then an error.
        let mut bad = out.clone();
        let third = 16 + 5 + 16;
        bad[third + 12] ^= 0x40;
        let results: Vec<_> = RecordReader::new(&bad).collect();
        assert_eq!(results.len(), 3);
        let err = results[2].clone().unwrap_err();
        assert_eq!((err.index, err.offset), (2, third as u64));
        assert!(err.reason.contains("data CRC"));

        // A flipped length byte is a header error.
        let mut bad = out.clone();
        bad[0] ^= 1;
        let err = RecordReader::new(&bad).next().unwrap().unwrap_err();
        assert!(err.reason.contains("length CRC"), "{err}");

        // Truncation.
        let err = RecordReader::new(&out[..out.len() - 2])
            .nth(2)
            .unwrap()
            .unwrap_err();
        assert!(err.reason.contains("truncated"), "{err}");
    }

    #[test]
    fn gzip_detection() {
        use std::io::Write;
        let mut out = Vec::new();
        write_record(&mut out, b"x");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&out).unwrap();
        let gz = gz.finish().unwrap();
        assert!(is_gzip(&gz));
        assert_eq!(gunzip(&gz).unwrap(), out);
    }
}
