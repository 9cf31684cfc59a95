//! An enrollment token as a worker sends it (CONNECT `auth_token`, always a string):
//! [`EnrollToken::parse`]. What parses is exactly the token it reveals, and its secret
//! matches only its own hash.

use gf_auth::token::{self, EnrollToken};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = token::valid_id(text);
    let Ok(t) = EnrollToken::parse(text) else {
        return;
    };
    assert_eq!(t.reveal(), text.trim());
    assert_eq!(EnrollToken::parse(&t.reveal()), Ok(t.clone()));
    assert!(token::valid_id(&t.id));
    assert!(t.matches(&t.secret_hash()));
    assert!(!t.matches(&EnrollToken::generate().secret_hash()));
}
