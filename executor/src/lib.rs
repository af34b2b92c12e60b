//! The executor role of a Quiver cluster. Cluster mode (Ballista executors with Quiver's
//! functions and codecs, and the trainer service) is not built yet; today every statement runs
//! on the embedded engine of the driver process. This crate exposes the session an executor
//! will run tasks in, so that both roles register exactly the same functions and formats.

/// The session an executor runs tasks in: the same registrations as the driver's.
pub fn executor_session(
    options: quiver_engine::SessionOptions,
) -> quiver_engine::Result<quiver_engine::Session> {
    quiver_sql::session(options)
}
