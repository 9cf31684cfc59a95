//! Time as the NATS server sees it.
//!
//! Lease deadlines must not depend on any worker's clock, nor on a coordinator's wall
//! clock. [`ServerClock`] is anchored to the timestamp the server stamps on a KV write
//! and advanced with this process' monotonic clock between anchors, so `now()` is the
//! server's time give or take one round trip.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use gf_schemas::Timestamp;

#[derive(Clone, Debug)]
pub struct ServerClock {
    anchor: Arc<RwLock<(Timestamp, Instant)>>,
}

impl ServerClock {
    /// A clock anchored at a known server time (tests; or before the first sync).
    pub fn anchored(server_time: Timestamp) -> Self {
        Self {
            anchor: Arc::new(RwLock::new((server_time, Instant::now()))),
        }
    }

    pub fn now(&self) -> Timestamp {
        let (t, at) = *self.anchor.read().expect("clock lock");
        t.plus(at.elapsed())
    }

    /// Writes `key` in `bucket` and re-anchors to the server's timestamp on it.
    /// Returns the estimated offset of the local wall clock from the server's.
    pub async fn sync(&self, bucket: &kv::Store, key: &str) -> Result<Duration, async_nats::Error> {
        let sent = Instant::now();
        let rev = bucket.put(key, bytes::Bytes::new()).await?;
        let entry = bucket.entry(key).await?.ok_or("clock key vanished")?;
        if entry.revision != rev {
            // Someone else wrote the key in between; its timestamp is still server time,
            // just not ours to pair with `sent`. Try again next tick.
            return Err("clock key overwritten".into());
        }
        let server = Timestamp::from_datetime(entry.created);
        // The write happened somewhere between `sent` and now; assume the middle.
        let rtt = sent.elapsed();
        let anchor_local = sent + rtt / 2;
        *self.anchor.write().expect("clock lock") = (server, anchor_local);
        let local = Timestamp::now_local();
        let server_now = self.now();
        Ok(if local > server_now {
            local.since(server_now)
        } else {
            server_now.since(local)
        })
    }
}
