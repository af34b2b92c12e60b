//! Progress counters shared between the operators that do the work and whoever shows it
//! (the CLI's progress bar). Operators find them in the session's config extensions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The skipped images a [`Progress`] remembers per statement (it counts them all).
pub const SKIPPED_KEPT: usize = 10_000;

/// How long the skipped images of a statement nobody asked about are kept.
const SKIPPED_TTL: Duration = Duration::from_secs(3600);

/// An undecodable image that `image_decode(bytes, 'null')` turned into NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedImage {
    /// The file it came from, when the query read it with `read_images`.
    pub file: Option<String>,
    /// Why it could not be decoded.
    pub reason: String,
}

/// The images one statement skipped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Skipped {
    /// How many.
    pub count: u64,
    /// The first [`SKIPPED_KEPT`], in the order they were counted.
    pub images: Vec<SkippedImage>,
}

impl Skipped {
    /// Adds `other`'s (from another process), keeping at most [`SKIPPED_KEPT`] images.
    pub fn merge(&mut self, other: Skipped) {
        self.count += other.count;
        let room = SKIPPED_KEPT.saturating_sub(self.images.len());
        self.images.extend(other.images.into_iter().take(room));
    }
}

/// Monotonic counters of work done by the statements of one session (or, on an executor, of
/// every statement it runs tasks of).
#[derive(Debug, Default)]
pub struct Progress {
    /// Skipped images by statement id, with when the statement's first one was counted.
    skipped: Mutex<HashMap<String, (Instant, Skipped)>>,
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
    /// Counts one undecodable image that statement `statement` skipped, from `file` for
    /// `reason`.
    pub fn add_image_skipped(&self, statement: &str, file: Option<&str>, reason: &str) {
        let mut by_statement = self.skipped.lock().expect("skipped images");
        self.images_skipped.fetch_add(1, Ordering::Relaxed);
        if !by_statement.contains_key(statement) {
            // Statements nobody asked about (their client went away) are forgotten in time.
            by_statement.retain(|_, (since, _)| since.elapsed() < SKIPPED_TTL);
        }
        let (_, skipped) = by_statement
            .entry(statement.to_string())
            .or_insert_with(|| (Instant::now(), Skipped::default()));
        skipped.count += 1;
        if skipped.images.len() < SKIPPED_KEPT {
            skipped.images.push(SkippedImage {
                file: file.map(str::to_string),
                reason: reason.to_string(),
            });
        }
    }

    /// The images statement `statement` skipped, which are forgotten here.
    pub fn take_skipped(&self, statement: &str) -> Skipped {
        let mut by_statement = self.skipped.lock().expect("skipped images");
        by_statement
            .remove(statement)
            .map(|(_, skipped)| skipped)
            .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_images_are_kept_per_statement_until_taken() {
        let p = Progress::default();
        p.add_image_skipped("a", Some("x.jpg"), "truncated");
        p.add_image_skipped("b", None, "not an image");
        p.add_image_skipped("a", Some("y.jpg"), "bad header");
        let a = p.take_skipped("a");
        assert_eq!(a.count, 2);
        assert_eq!(
            a.images
                .iter()
                .map(|i| i.file.as_deref())
                .collect::<Vec<_>>(),
            [Some("x.jpg"), Some("y.jpg")]
        );
        assert_eq!(p.take_skipped("a"), Skipped::default());
        let mut b = p.take_skipped("b");
        assert_eq!(b.images[0].reason, "not an image");
        b.merge(a);
        assert_eq!((b.count, b.images.len()), (3, 3));
        assert_eq!(p.snapshot().images_skipped, 3);
    }
}
