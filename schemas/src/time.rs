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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(
    #[serde(deserialize_with = "time::serde::rfc3339::deserialize")] OffsetDateTime,
);

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
    /// Writes RFC 3339 into `buf` exactly as `time`'s `Rfc3339` does (fraction trimmed
    /// of trailing zeros, none when zero; `Z`), without allocating: a job record holds
    /// several timestamps and is encoded at each step of its life, and `time`'s
    /// formatter builds a `String` per timestamp (about 2 % of the leader's CPU under
    /// load, issue 20). `None` for what only `time` formats: an offset other than UTC
    /// (a parsed `+02:00`), a year outside 0..=9999 (which `time` refuses).
    fn write_rfc3339(self, buf: &mut [u8; 30]) -> Option<&str> {
        let t = self.0;
        let year = t.year();
        if !t.offset().is_utc() || !(0..=9999).contains(&year) {
            return None;
        }
        fn put(buf: &mut [u8], at: usize, digits: usize, mut n: u32) {
            for i in (0..digits).rev() {
                buf[at + i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
        put(buf, 0, 4, year as u32);
        buf[4] = b'-';
        put(buf, 5, 2, u8::from(t.month()).into());
        buf[7] = b'-';
        put(buf, 8, 2, t.day().into());
        buf[10] = b'T';
        put(buf, 11, 2, t.hour().into());
        buf[13] = b':';
        put(buf, 14, 2, t.minute().into());
        buf[16] = b':';
        put(buf, 17, 2, t.second().into());
        let mut len = 19;
        let mut nanos = t.nanosecond();
        if nanos != 0 {
            let mut digits = 9;
            while nanos.is_multiple_of(10) {
                nanos /= 10;
                digits -= 1;
            }
            buf[len] = b'.';
            put(buf, len + 1, digits, nanos);
            len += 1 + digits;
        }
        buf[len] = b'Z';
        len += 1;
        std::str::from_utf8(&buf[..len]).ok()
    }
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

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.write_rfc3339(&mut [0; 30]) {
            Some(s) => serializer.serialize_str(s),
            None => time::serde::rfc3339::serialize(&self.0, serializer),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.write_rfc3339(&mut [0; 30]) {
            return f.write_str(s);
        }
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

    /// The allocation-free formatter writes what `time`'s does, for every shape of
    /// fraction (none, trailing zeros of each length, all nine digits), the range's
    /// ends, and a spread of instants; other offsets and years go to `time` itself.
    #[test]
    fn the_fast_rfc3339_matches_times_own() {
        use time::format_description::well_known::Rfc3339;
        let check = |t: OffsetDateTime| {
            let ts = Timestamp(t);
            let want = t.format(&Rfc3339).expect("formattable");
            assert_eq!(ts.to_string(), want, "{t:?}");
            assert_eq!(serde_json::to_string(&ts).unwrap(), format!("\"{want}\""));
            let back: Timestamp = serde_json::from_str(&format!("\"{want}\"")).unwrap();
            assert_eq!(back, ts);
        };
        let base = OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        for nanos in [
            0,
            1,
            10,
            100_000_000,
            120_000_000,
            123_000_000,
            123_456_000,
            123_456_789,
            999_999_999,
            5_000,
            50_000_000,
        ] {
            check(base.replace_nanosecond(nanos).unwrap());
        }
        check(OffsetDateTime::UNIX_EPOCH);
        check(Timestamp::MAX.0);
        check(time::macros::datetime!(0000-01-01 00:00:00 UTC));
        // A deterministic spread over years 1970..=9999, to the nanosecond.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 253_402_300_800) as i64;
            // Whole seconds, milliseconds, microseconds and nanoseconds alike.
            let unit = [1, 1_000, 1_000_000, 1_000_000_000][(x & 3) as usize];
            let nanos = ((x >> 20) % 1_000_000_000) / unit * unit;
            let nanos = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
            check(OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap());
        }
        // An offset other than UTC (only a parsed timestamp has one) keeps it.
        let east = Timestamp(base.to_offset(time::macros::offset!(+2)));
        assert_eq!(east.to_string(), "2026-11-18T13:06:40+02:00");
        assert_eq!(
            serde_json::to_string(&east).unwrap(),
            "\"2026-11-18T13:06:40+02:00\""
        );
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
