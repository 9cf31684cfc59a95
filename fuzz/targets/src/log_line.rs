//! A log line a factory publishes on `gf.logs.<factory>.<job>` (stored as sent in
//! `GF_LOGS`): the subject, a newline, then the payload. Readers (`gf logs`, the
//! dashboard) file it by its subject and decode the payload as a [`LogLine`]; what
//! decodes survives a round trip, and a subject that parses names one factory and job.

use gf_schemas::{names, LogLine};

use crate::check::round_trip;

pub fn run(data: &[u8]) {
    let (subject, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Some((factory, job)) = std::str::from_utf8(subject)
        .ok()
        .and_then(names::parse_logs)
    {
        assert_eq!(
            names::parse_logs(&names::logs(&factory, &job)),
            Some((factory, job))
        );
    }
    if let Ok(line) = serde_json::from_slice::<LogLine>(payload) {
        round_trip(&line);
    }
}
