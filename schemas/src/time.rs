//! Wire timestamps: RFC 3339 strings in UTC.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A point in time, always UTC, serialized as RFC 3339 (`2026-11-21T23:30:05.123Z`).
///
/// Lease deadlines are computed from the NATS server's clock (see the coordinator's
/// `ServerClock`), never from a worker's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(#[serde(with = "time::serde::rfc3339")] OffsetDateTime);

impl Timestamp {
    pub fn from_datetime(t: OffsetDateTime) -> Self {
        Self(t.to_offset(time::UtcOffset::UTC))
    }
    /// Local wall clock. Only for display and for values no decision depends on.
    pub fn now_local() -> Self {
        Self(OffsetDateTime::now_utc())
    }
    pub fn from_unix_millis(ms: i64) -> Self {
        Self(
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        )
    }
    pub fn datetime(self) -> OffsetDateTime {
        self.0
    }
    pub fn unix_millis(self) -> i64 {
        (self.0.unix_timestamp_nanos() / 1_000_000) as i64
    }
    /// `self + d`, saturating at the latest representable time (the end of year 9999):
    /// a deadline that far away means "never", and no input may overflow into a panic.
    pub fn plus(self, d: Duration) -> Self {
        time::Duration::try_from(d)
            .ok()
            .and_then(|d| self.0.checked_add(d))
            .map_or(Self::MAX, Self)
    }
    /// The latest representable time.
    pub const MAX: Timestamp = Timestamp(time::PrimitiveDateTime::MAX.assume_utc());
    /// `self - earlier`, zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        let d = self.0 - earlier.0;
        if d.is_negative() {
            Duration::ZERO
        } else {
            d.unsigned_abs()
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self
            .0
            .format(&time::format_description::well_known::Rfc3339)
        {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "date-time"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timestamps serialize as RFC 3339 UTC strings and round-trip.
    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::from_unix_millis(1_795_000_000_123);
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, "\"2026-11-18T11:06:40.123Z\"");
        let back: Timestamp = serde_json::from_str(&s).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.unix_millis(), 1_795_000_000_123);
    }

    #[test]
    fn plus_saturates_instead_of_overflowing() {
        let t = Timestamp::from_unix_millis(1000);
        assert_eq!(t.plus(Duration::from_secs(u64::MAX)), Timestamp::MAX);
        assert_eq!(Timestamp::MAX.plus(Duration::from_secs(1)), Timestamp::MAX);
        assert_eq!(t.plus(Duration::from_secs(1)).unix_millis(), 2000);
    }

    #[test]
    fn since_saturates() {
        let a = Timestamp::from_unix_millis(1000);
        let b = Timestamp::from_unix_millis(3500);
        assert_eq!(b.since(a), Duration::from_millis(2500));
        assert_eq!(a.since(b), Duration::ZERO);
    }
}
