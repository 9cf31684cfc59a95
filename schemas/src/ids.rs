//! Identifiers. Job ids are UUIDv7, so they sort by creation time.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{0}` is not a job id (expected a UUID such as 019a...-...)")]
    BadJobId(String),
    #[error("`{0}` is not a valid worker id: use 1-64 characters from A-Z a-z 0-9 _ -")]
    BadWorkerId(String),
    #[error("`{0}` is not a valid consumer name: use 1-64 characters from A-Z a-z 0-9 _ -")]
    BadConsumerName(String),
}

/// A job's id: a UUIDv7, time-ordered, safe as a KV key and a subject token.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| IdError::BadJobId(s.to_string()))
    }
}

/// A worker's id. Also a subject token (`gf.ctl.worker.<id>`) and a KV key, so its
/// characters are restricted; the constructor enforces it and deserialization too.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct WorkerId(#[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))] String);

impl WorkerId {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if crate::names::is_token(&s) && s.len() <= 64 && s != crate::names::ANY {
            Ok(Self(s))
        } else {
            Err(IdError::BadWorkerId(s))
        }
    }
    /// A fresh id made of the host name and a random suffix.
    pub fn generate(host: &str) -> Self {
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let suffix = Uuid::now_v7().simple().to_string();
        let host = if host.is_empty() {
            "worker".into()
        } else {
            host
        };
        Self(format!("{host}-{}", &suffix[suffix.len() - 8..]))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for WorkerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        WorkerId::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for WorkerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerId::new(s)
    }
}

/// The name of a durable dispatch consumer on `GF_DISPATCH`, as a coordinator created
/// it and named it to a worker in its `RegisterReply`. It becomes a subject token in a
/// factory's permissions (`$JS.API.CONSUMER.MSG.NEXT.GF_DISPATCH.<name>`), so like a
/// worker id it is a token: no `.`, `*`, `>` or whitespace can widen a grant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct ConsumerName(#[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))] String);

impl ConsumerName {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if crate::names::is_token(&s) && s.len() <= 64 {
            Ok(Self(s))
        } else {
            Err(IdError::BadConsumerName(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ConsumerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ConsumerName::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Job ids created later sort later, and round-trip through their text form.
    #[test]
    fn job_ids_sort_by_time_and_parse() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
        assert!(matches!("nope".parse::<JobId>(), Err(IdError::BadJobId(_))));
    }

    /// Worker ids reject characters that would break subjects or KV keys.
    #[test]
    fn worker_ids_are_tokens() {
        assert!(WorkerId::new("w-1_a").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "_"] {
            assert!(WorkerId::new(bad).is_err(), "{bad:?} accepted");
        }
        let g = WorkerId::generate("my.host name");
        assert!(WorkerId::new(g.as_str()).is_ok(), "{g}");
        assert!(serde_json::from_str::<WorkerId>("\"a.b\"").is_err());
    }

    /// Consumer names are tokens too: none can widen a permission it is put into.
    #[test]
    fn consumer_names_are_tokens() {
        assert!(ConsumerName::new("gfw_0123abcd").is_ok());
        for bad in ["", "a.b", "*", ">", "a b", &"x".repeat(65)] {
            assert!(ConsumerName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<ConsumerName>("\">\"").is_err());
    }
}
