//! Live logs of Quiver's processes (driver, executors, servers, jobs) on stderr: Quiver's own lines at `info`, Ballista's and
//! other libraries' at `warn`, or everything at the level in `QUIVER_LOG`
//! (`error`, `warn`, `info`, `debug`, `trace`).

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    everything: Option<LevelFilter>,
}

impl StderrLogger {
    fn level_for(&self, target: &str) -> LevelFilter {
        match self.everything {
            Some(level) => level,
            None if target.starts_with("quiver") => LevelFilter::Info,
            None => LevelFilter::Warn,
        }
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level_for(metadata.target())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let time = chrono::Utc::now().format("%H:%M:%S%.3f");
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "{time} {level} {}: {}",
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Sends log records to stderr; later calls do nothing.
pub fn init() {
    let everything = std::env::var("QUIVER_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok());
    let logger = StderrLogger { everything };
    let max = everything.unwrap_or(LevelFilter::Info);
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(max);
    }
}
