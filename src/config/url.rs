//! Store and webhook URLs may carry a password (`mysql://user:password@host/db`,
//! `redis+unix:///run/redis.sock?pass=...`): what the logs may show of them, and the password
//! itself for production mode's check (src/config/production.rs).

/// Names of query parameters whose value is a credential.
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "auth"]
        .iter()
        .any(|w| name.contains(w))
}

/// A URL split as the drivers (the url crate) split it: its scheme, its user part (up to the
/// last `@` of the authority, which ends at the first `/`, `?` or `#` after `://`), and the
/// rest (host onwards). None when it has no `://`.
fn split_url(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(match rest[..authority_end].rsplit_once('@') {
        Some((user, _)) => (scheme, Some(user), &rest[user.len() + 1..]),
        None => (scheme, None, rest),
    })
}

/// The URL as the logs may show it: the password of its user part and the values of its
/// credential-looking query parameters replaced by `***`. The user part is the drivers' (see
/// [`split_url`]); over-redacts rather than leaks: an `@` in the path (before any `?` or `#`)
/// is taken for a password with an unescaped `/`, and everything before it for the user part.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, user, rest)) = split_url(url) else {
        // Not a URL: nothing tells what part of it is secret.
        return "(not a URL)".into();
    };
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (user, rest) = match rest[..path_end].rsplit_once('@') {
        // `u:p/w@db/x`: the whole of it before the last such `@` is the user part.
        Some((before, _)) => {
            let whole = &url[scheme.len() + 3..];
            let cut = whole.len() - rest.len() + before.len();
            (Some(&whole[..cut]), &whole[cut + 1..])
        }
        None => (user, rest),
    };
    let user = match user {
        Some(cred) => match cred.split_once(':') {
            Some((user, _)) => format!("{user}:***@"),
            None => format!("{cred}@"),
        },
        None => String::new(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => rest.to_string(),
    };
    format!("{scheme}://{user}{rest}")
}

/// The passwords a URL carries (percent-decoded), as the drivers read them: its user part's
/// (see [`split_url`]), and those of `password=` or `pass=` query parameters.
pub fn url_passwords(url: &str) -> Vec<String> {
    let Some((_, user, rest)) = split_url(url) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    if let Some((_, password)) = user.and_then(|u| u.split_once(':')) {
        found.push(percent_decode(password));
    }
    if let Some((_, query)) = rest.split_once('?') {
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && matches!(name.to_ascii_lowercase().as_str(), "pass" | "password")
            {
                found.push(percent_decode(value));
            }
        }
    }
    found
}

/// `%XX` escapes decoded (a malformed one is kept as it is).
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

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("mysql://root:secret@db:3306/x"),
            "mysql://root:***@db:3306/x"
        );
        assert_eq!(redact_url("mysql://root@db/x"), "mysql://root@db/x");
        assert_eq!(
            redact_url("redis://:s3cr3t@r:6379/0"),
            "redis://:***@r:6379/0"
        );
        // A password with an `@` or a `/` in it, unescaped.
        assert_eq!(redact_url("mysql://u:p@ss/w@db/x"), "mysql://u:***@db/x");
        assert_eq!(
            redact_url("redis+unix:///run/r.sock?db=1&pass=hunter22"),
            "redis+unix:///run/r.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("https://hooks.example/x?token=abc&a=b"),
            "https://hooks.example/x?token=***&a=b"
        );
        assert_eq!(redact_url("hunter22"), "(not a URL)");
        // An `@` after the host is not the user part's end.
        assert_eq!(
            redact_url("mysql://root:flashsale@db:3306/f?ssl-ca=/etc/ca@shop.pem"),
            "mysql://root:***@db:3306/f?ssl-ca=/etc/ca@shop.pem"
        );
        assert_eq!(
            redact_url("redis://:pw@redis:6379/0?client=shop@eu"),
            "redis://:***@redis:6379/0?client=shop@eu"
        );
    }

    #[test]
    fn finds_passwords() {
        assert_eq!(
            url_passwords("mysql://root:fl%61shsale@db/x"),
            ["flashsale"]
        );
        assert!(url_passwords("mysql://root@db/x").is_empty());
        assert_eq!(url_passwords("redis+unix:///run/r.sock?pass=pw"), ["pw"]);
        assert_eq!(percent_decode("a%2"), "a%2");
        // The user part ends at the authority's last `@`, as the drivers read it.
        assert_eq!(
            url_passwords("mysql://root:flashsale@db:3306/f?ssl-ca=/etc/ssl/ca@shop.pem"),
            ["flashsale"]
        );
        assert_eq!(
            url_passwords("redis://:pw@redis:6379/0?client=shop@eu"),
            ["pw"]
        );
        assert_eq!(url_passwords("mysql://u:p@ss@db/x"), ["p@ss"]);
        assert!(url_passwords("mysql://db/x?a=b@c").is_empty());
    }
}
