//! Wall-clock time as stored in run records, registries and logs, as trial logs print it, and
//! as the time columns of Quiver's tables hold it (one type for all of them).

use datafusion::arrow::array::TimestampMicrosecondBuilder;
use datafusion::arrow::datatypes::{DataType, TimeUnit};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Nanoseconds since the Unix epoch, now (0 if the clock is before it).
pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// An id no other process on any machine makes: the time in hex, the process and a counter
/// (`187e0c2b9a1f3c00-4242-0`).
pub fn unique_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{:x}-{}-{}",
        now_nanos(),
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// `seconds` since the Unix epoch as UTC to the second: `2026-11-27T01:02:03Z`.
pub fn utc_timestamp(seconds: f64) -> String {
    chrono::DateTime::from_timestamp(seconds.floor() as i64, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The type of every time column in Quiver's tables: `Timestamp(Microsecond, "UTC")`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A builder of a time column of [`timestamp_type`].
pub fn timestamp_builder() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

/// `seconds` since the Unix epoch as a time column's value (microseconds).
pub fn timestamp_micros(seconds: f64) -> i64 {
    (seconds * 1e6).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(utc_timestamp(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_741_323.9), "2026-11-27T01:02:03Z");
        assert_eq!(utc_timestamp(951_782_400.0), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn time_columns_hold_utc_microseconds() {
        use datafusion::arrow::array::Array;
        let mut column = timestamp_builder();
        column.append_value(timestamp_micros(1.5));
        let column = column.finish();
        assert_eq!(column.data_type(), &timestamp_type());
        assert_eq!(column.value(0), 1_500_000);
    }
}
