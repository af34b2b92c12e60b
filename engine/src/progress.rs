//! Progress counters shared between the operators that do the work and whoever shows it
//! (the CLI's progress bar). Operators find them in the session's config extensions.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The skipped images a [`Progress`] remembers (it counts them all).
pub const SKIPPED_KEPT: usize = 10_000;

/// An undecodable image that `image_decode(bytes, 'null')` turned into NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedImage {
    /// The file it came from, when the query read it with `read_images`.
    pub file: Option<String>,
    /// Why it could not be decoded.
    pub reason: String,
}

/// Monotonic counters of work done by the statements of one session.
#[derive(Debug, Default)]
pub struct Progress {
    /// The first [`SKIPPED_KEPT`] skipped images, in the order they were counted.
    skipped: Mutex<Vec<SkippedImage>>,
    files_listed: AtomicU64,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    rows_written: AtomicU64,
    bytes_written: AtomicU64,
    files_written: AtomicU64,
    images_skipped: AtomicU64,
}

/// A point-in-time copy of [`Progress`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Files found while listing locations.
    pub files_listed: u64,
    /// Files read (images, TFRecord shards).
    pub files_read: u64,
    /// Bytes read from stores.
    pub bytes_read: u64,
    /// Rows written by sinks.
    pub rows_written: u64,
    /// Bytes written by sinks.
    pub bytes_written: u64,
    /// Files committed by sinks.
    pub files_written: u64,
    /// Undecodable images turned into NULL by `image_decode(bytes, 'null')`.
    pub images_skipped: u64,
}

impl Progress {
    /// Counts `n` listed files.
    pub fn add_files_listed(&self, n: u64) {
        self.files_listed.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts one file of `bytes` bytes read.
    pub fn add_file_read(&self, bytes: u64) {
        self.files_read.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Counts `rows` rows and `bytes` bytes written.
    pub fn add_written(&self, rows: u64, bytes: u64) {
        self.rows_written.fetch_add(rows, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Counts one committed output file.
    pub fn add_file_written(&self) {
        self.files_written.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts one undecodable image that was skipped, from `file` for `reason`.
    pub fn add_image_skipped(&self, file: Option<&str>, reason: &str) {
        let mut skipped = self.skipped.lock().expect("skipped images");
        // Counted under the lock, so that the list's order is the count's.
        self.images_skipped.fetch_add(1, Ordering::Relaxed);
        if skipped.len() < SKIPPED_KEPT {
            skipped.push(SkippedImage {
                file: file.map(str::to_string),
                reason: reason.to_string(),
            });
        }
    }

    /// The skipped images counted since `earlier` (as far as they are kept).
    pub fn skipped_since(&self, earlier: &ProgressSnapshot) -> Vec<SkippedImage> {
        let skipped = self.skipped.lock().expect("skipped images");
        let from = (earlier.images_skipped as usize).min(skipped.len());
        skipped[from..].to_vec()
    }
    /// Reads all counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            files_listed: self.files_listed.load(Ordering::Relaxed),
            files_read: self.files_read.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            rows_written: self.rows_written.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            files_written: self.files_written.load(Ordering::Relaxed),
            images_skipped: self.images_skipped.load(Ordering::Relaxed),
        }
    }
}

impl ProgressSnapshot {
    /// The work done between `earlier` and `self`.
    pub fn since(&self, earlier: &ProgressSnapshot) -> ProgressSnapshot {
        ProgressSnapshot {
            files_listed: self.files_listed - earlier.files_listed,
            files_read: self.files_read - earlier.files_read,
            bytes_read: self.bytes_read - earlier.bytes_read,
            rows_written: self.rows_written - earlier.rows_written,
            bytes_written: self.bytes_written - earlier.bytes_written,
            files_written: self.files_written - earlier.files_written,
            images_skipped: self.images_skipped - earlier.images_skipped,
        }
    }
}
