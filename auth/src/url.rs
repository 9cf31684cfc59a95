//! Credentials in a NATS URL.

/// Connection options for `url`, with the user and password a
/// `nats://user:password@host:port` URL carries (async-nats ignores them; other NATS
/// clients use them), and the URL as it may be shown: without the password.
pub fn connect_options(url: &str) -> (async_nats::ConnectOptions, String) {
    let options = async_nats::ConnectOptions::new();
    let Ok(addr) = url.parse::<async_nats::ServerAddr>() else {
        return (options, url.to_string());
    };
    match addr.username() {
        Some(user) => {
            let user = percent_decode(user);
            let password = percent_decode(addr.password().unwrap_or_default());
            let shown = format!("{}://{user}@{}:{}", addr.scheme(), addr.host(), addr.port());
            (options.user_and_password(user, password), shown)
        }
        None => (options, url.to_string()),
    }
}

/// The user a `nats://user:password@host:port` URL names, decoded.
pub fn user(url: &str) -> Option<String> {
    let addr = url.parse::<async_nats::ServerAddr>().ok()?;
    addr.username().map(percent_decode)
}

/// Undoes a URL's `%XX` escapes (a user or password may hold `@`, `:` or `/`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL's user and password are used (decoded) and never shown.
    #[test]
    fn url_credentials_are_used_and_hidden() {
        let (_, shown) = connect_options("nats://f1:p%40ss%3Aw@127.0.0.1:4333");
        assert_eq!(shown, "nats://f1@127.0.0.1:4333");
        assert_eq!(percent_decode("p%40ss%3Aw%zz%4"), "p@ss:w%zz%4");
        assert_eq!(
            user("nats://f1:p%40ss@127.0.0.1:4333").as_deref(),
            Some("f1")
        );
        assert_eq!(user("nats://127.0.0.1:4222"), None);
        let (_, shown) = connect_options("nats://127.0.0.1:4222");
        assert_eq!(shown, "nats://127.0.0.1:4222");
    }
}
