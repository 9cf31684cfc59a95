//! Cron expressions for schedules: `sec min hour dom month dow` (seconds optional).

use std::str::FromStr;

use croner::parser::{CronParser, Seconds};
use croner::Cron;
use gf_schemas::Timestamp;

/// Parses an expression, with an error fit for an operator.
pub fn parse(expr: &str) -> Result<Cron, String> {
    let _ = Cron::from_str; // the default parser refuses seconds; use the builder below
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("`{expr}` is not a cron expression ({e}); use `sec min hour day month weekday`, seconds optional"))
}

fn to_chrono(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(t.unix_millis()).unwrap_or_default()
}

/// The most recent tick at or before `now` that is later than `last`, if any. Missed
/// ticks collapse into the latest one: a schedule never fires a burst after downtime.
pub fn latest_tick(expr: &str, last: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
    let cron = parse(expr).ok()?;
    // Ticks are whole seconds; search from the start of the current one.
    let whole = Timestamp::from_unix_millis(now.unix_millis() - now.unix_millis().rem_euclid(1000));
    let prev = cron
        .find_previous_occurrence(&to_chrono(whole), true)
        .ok()?;
    let tick = Timestamp::from_unix_millis(prev.timestamp_millis());
    match last {
        Some(l) if tick <= l => None,
        _ => Some(tick),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + ms)
    }

    /// Every-second schedule: fires for the latest second, once.
    #[test]
    fn latest_tick_once() {
        let now = t(2_500);
        let tick = latest_tick("* * * * * *", None, now).unwrap();
        assert_eq!(tick, t(2_000));
        assert_eq!(latest_tick("* * * * * *", Some(tick), t(2_900)), None);
        assert_eq!(
            latest_tick("* * * * * *", Some(tick), t(3_100)),
            Some(t(3_000))
        );
        // Missed ticks collapse into one.
        assert_eq!(
            latest_tick("* * * * * *", Some(tick), t(9_400)),
            Some(t(9_000))
        );
    }

    #[test]
    fn bad_expression_named() {
        assert!(parse("every tuesday")
            .unwrap_err()
            .contains("every tuesday"));
        assert!(parse("0 */5 * * * *").is_ok());
        assert!(parse("*/5 * * * *").is_ok());
    }
}
