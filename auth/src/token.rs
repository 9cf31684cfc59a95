//! Enrollment tokens: `gfe_<id>_<secret>`.
//!
//! `id` (16 lowercase hex digits) names the token in listings and the store; `secret`
//! (32 random bytes, 52 lowercase base32 digits) is shown once and only its SHA-256 is
//! stored. The `gfe_` prefix makes a leaked token easy to find with secret scanners.

use rand::RngCore as _;
use sha2::Digest as _;

pub const PREFIX: &str = "gfe_";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 52;

/// A parsed token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    pub id: String,
    secret: String,
}

impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnrollToken({}, ****)", self.id)
    }
}

/// Why a string is not an enrollment token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("an enrollment token starts with `gfe_`")]
    Prefix,
    #[error("an enrollment token is gfe_<16 hex digits>_<52 base32 digits>")]
    Shape,
}

fn is_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl EnrollToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let mut id = [0u8; ID_LEN / 2];
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        Self {
            id: hex::encode(id),
            secret: data_encoding::BASE32_NOPAD
                .encode(&secret)
                .to_ascii_lowercase(),
        }
    }

    /// Parses a token as the user typed it (surrounding whitespace ignored). Total: any
    /// input gives a token or an error, in time linear in its length.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let (id, secret) = rest.split_once('_').ok_or(TokenError::Shape)?;
        let secret_ok = secret.len() == SECRET_LEN
            && secret
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'));
        if !is_id(id) || !secret_ok {
            return Err(TokenError::Shape);
        }
        Ok(Self {
            id: id.into(),
            secret: secret.into(),
        })
    }

    /// The token as shown once to the operator.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, self.secret)
    }

    /// What the store keeps: lowercase hex SHA-256 of the secret.
    pub fn secret_hash(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.secret.as_bytes()))
    }

    /// Whether the secret hashes to `stored` (compared in constant time).
    pub fn matches(&self, stored: &str) -> bool {
        let ours = self.secret_hash();
        ours.len() == stored.len()
            && ours
                .bytes()
                .zip(stored.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Whether `id` is a token id (for `gf factory token revoke ID`).
pub fn valid_id(id: &str) -> bool {
    is_id(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_hash_and_refusals() {
        let t = EnrollToken::generate();
        let shown = t.reveal();
        assert!(shown.starts_with("gfe_") && shown.len() == 4 + 16 + 1 + 52);
        let back = EnrollToken::parse(&format!("  {shown}\n")).unwrap();
        assert_eq!(back, t);
        assert!(back.matches(&t.secret_hash()));
        assert!(!EnrollToken::generate().matches(&t.secret_hash()));
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(EnrollToken::parse("abc"), Err(TokenError::Prefix));
        assert_eq!(EnrollToken::parse("gfe_"), Err(TokenError::Shape));
        let upper = shown.to_ascii_uppercase().replacen("GFE_", "gfe_", 1);
        assert_eq!(EnrollToken::parse(&upper), Err(TokenError::Shape));
        assert_eq!(
            EnrollToken::parse(&format!("{shown}x")),
            Err(TokenError::Shape)
        );
        assert!(valid_id(&t.id) && !valid_id("xyz"));
    }
}
