//! A webhook delivery to the bridge (`POST /api/bridge/<source>`): anyone who can
//! reach the coordinators' HTTP port can send one. The first byte picks the source
//! (GitHub or Standard Webhooks) and whether the target signs the body with the
//! source's secret; the rest is the event header, a newline, then the body. Runs
//! what the bridge runs before its store (`bridge/src/inbound.rs`): the signature
//! check, then the rule that decides the job.
//!
//! A body the target signed always verifies; one it did not sign never does (the
//! fuzzer cannot forge HMAC-SHA256); what decides a job labels it with its source
//! and item and keys it within the 256 characters of an idempotency key.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use gf_bridge::config::Source;
use gf_bridge::inbound::{self, Decision, LABEL_ITEM, LABEL_SOURCE};
use gf_bridge::verify;
use gf_bridge::{BridgeConfig, BridgeSettings};
use http::{HeaderMap, HeaderValue};

fn config() -> &'static BridgeConfig {
    static CONFIG: OnceLock<BridgeConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let settings: BridgeSettings = serde_json::from_value(serde_json::json!({
            "sources": {
                "gh": {
                    "format": "github",
                    "secret_env": "GH_SECRET",
                    "rules": [
                        {
                            "events": ["issues.labeled", "issues.opened"],
                            "label": "gf",
                            "command": ["echo", "{issue.number}", "{issue.title}"],
                            "revision": "{issue.updated_at}",
                            "labels": {"title": "{issue.title}"}
                        },
                        {"events": ["pull_request.synchronize"], "command": ["test", "{pull_request.head.sha}"]}
                    ]
                },
                "std": {
                    "format": "standard",
                    "secret_env": "STD_SECRET",
                    "rules": [{"events": [], "command": ["run", "{data.id}", "{data.title}"]}]
                }
            }
        }))
        .expect("settings");
        let env = BTreeMap::from([
            ("GH_SECRET".to_string(), "gh-fuzz-secret".to_string()),
            (
                "STD_SECRET".to_string(),
                "whsec_ZnV6ei1zdGFuZGFyZC1zZWNyZXQ=".to_string(),
            ),
        ]);
        settings.resolve(&env, true).expect("a valid bridge config")
    })
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (event, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let cfg = config();
    let github = mode & 1 == 0;
    let sign = mode & 2 == 0;
    let src = &cfg.sources[if github { "gh" } else { "std" }];
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &[u8]| {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    };
    let now = now_secs();
    if github {
        put("x-github-event", event);
        put("x-github-delivery", b"d-1");
        let sig = if sign {
            verify::sign_github(&src.secret, body).into_bytes()
        } else {
            event.to_vec()
        };
        put("x-hub-signature-256", &sig);
    } else {
        put("webhook-id", b"msg_1");
        put("webhook-timestamp", now.to_string().as_bytes());
        let sig = if sign {
            verify::sign_standard(&src.secret, "msg_1", now, body).into_bytes()
        } else {
            event.to_vec()
        };
        put("webhook-signature", &sig);
    }
    let verified = inbound::verify(src, &headers, body);
    if sign {
        assert!(verified.is_ok(), "a signed delivery refused: {verified:?}");
    } else {
        assert!(verified.is_err(), "an unsigned delivery verified");
    }
    decided(src, inbound::decide(src, &headers, body));
}

fn decided(src: &Source, decision: Result<Decision, gf_bridge::BridgeError>) {
    let Ok(Decision::Submit { spec, item }) = decision else {
        return;
    };
    assert_eq!(spec.labels.get(LABEL_SOURCE), Some(&src.name));
    assert_eq!(spec.labels.get(LABEL_ITEM), Some(&item));
    let key = spec
        .idempotency_key
        .as_deref()
        .expect("a bridged job has a key");
    assert!(key.len() <= 256, "a key of {} bytes", key.len());
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
