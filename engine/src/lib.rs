//! Quiver's engine: the [`Session`] (a DataFusion `SessionContext` plus object stores and
//! configuration), the Arrow data model for images, object-store URLs and whole-object helpers,
//! tables computed at scan time, device names, wall-clock time, logging set-up, progress
//! counters, Prometheus metrics, declared options and errors. Everything above this crate
//! (operators, SQL, driver, executor) builds on it.
pub mod computed;
pub mod device;
pub mod error;
pub mod fault;
pub mod image;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod progress;
pub mod session;
pub mod store;
pub mod time;

pub use error::{QuiverError, Result};
pub use progress::{Progress, Skipped, SkippedImage};
pub use session::{LogSink, Session, SessionOptions};
pub use store::{S3Options, StoreRegistry, resolve_location, store_base, store_url};
/// Re-exported for URL handling.
pub use url;

/// Re-exported so that every crate uses the same DataFusion (and through it, Arrow).
pub use datafusion;
/// Re-exported so that every crate uses the same `object_store`.
pub use object_store;
