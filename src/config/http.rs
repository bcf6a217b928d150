//! HTTP server settings: address, what one request and one connection may take, CORS, the
//! storefront page.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// The HTTP server: address, what one request and one connection may take, CORS, the storefront page.
#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "FLASHSALE_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "FLASHSALE_BODY_LIMIT", default_value_t = 16 * 1024, global = true)]
    pub body_limit: usize,

    /// Deadline of a whole request, body included; past it the answer is 408 `request_timeout`.
    #[arg(long, env = "FLASHSALE_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration, global = true)]
    pub request_timeout: Duration,

    /// Requests handled at once; more answer 503 `unavailable` at once (Server-Sent Event
    /// streams do not count).
    #[arg(
        long,
        env = "FLASHSALE_MAX_IN_FLIGHT",
        default_value_t = 4096,
        global = true
    )]
    pub max_in_flight: usize,

    /// Open client connections; beyond it new ones wait in the listen queue.
    #[arg(
        long,
        env = "FLASHSALE_MAX_CONNECTIONS",
        default_value_t = 25_000,
        global = true
    )]
    pub max_connections: usize,

    /// Open connections from one client address (an IPv6 client counts by its /64); one more
    /// is closed as soon as it is accepted, so one client cannot take every connection slot. 0:
    /// no such cap. Not applied when FLASHSALE_TRUST_FORWARDED_FOR is on: every connection then
    /// comes from your proxy, which should cap connections per client itself.
    #[arg(
        long,
        env = "FLASHSALE_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 256,
        global = true
    )]
    pub max_connections_per_client: usize,

    /// Largest request head (request line and headers) in bytes; larger ones get 431. At least
    /// 8192.
    #[arg(long, env = "FLASHSALE_HEADER_LIMIT", default_value_t = 16 * 1024, global = true)]
    pub header_limit: usize,

    /// How long a client may take to send the request head (slow-client protection).
    #[arg(long, env = "FLASHSALE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub header_timeout: Duration,

    /// On SIGTERM or ctrl-c the service stops accepting and gives requests in flight and open
    /// streams at most this long before they are cut; the outbox writer finishes its batch,
    /// then the process exits 0.
    #[arg(long, env = "FLASHSALE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// Take the client address from the last `X-Forwarded-For` entry (the one your proxy
    /// appended) instead of the TCP peer. Only behind a proxy that sets it.
    #[arg(long, env = "FLASHSALE_TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub trust_forwarded_for: bool,

    /// Origins allowed to call the API from a browser (CORS), comma-separated, each exactly as
    /// browsers send it (`https://shop.example`, `http://localhost:3000`), or `*` for any.
    /// Empty (the default): no CORS headers at all (docs/API.md, "CORS").
    #[arg(
        long,
        env = "FLASHSALE_CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,

    /// How long browsers may cache a CORS preflight answer.
    #[arg(long, env = "FLASHSALE_CORS_MAX_AGE", default_value = "1h", value_parser = parse_duration, global = true)]
    pub cors_max_age: Duration,

    /// The API's origin when the storefront page (`/`) is served from another origin than the
    /// API (e.g. `https://api.shop.example`); empty (the default): the page calls its own
    /// origin. Fixed at deploy time: the page never takes it from its URL.
    #[arg(
        long,
        env = "FLASHSALE_STOREFRONT_API_ORIGIN",
        default_value = "",
        global = true
    )]
    pub storefront_api_origin: String,
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.header_limit < 8192 {
            return Err("FLASHSALE_HEADER_LIMIT must be at least 8192".into());
        }
        if self.max_in_flight == 0 || self.max_connections == 0 {
            return Err(
                "max in-flight requests, connections and cart lines must be at least 1".into(),
            );
        }
        for origin in self.cors_origins() {
            check_cors_origin(origin)?;
        }
        if !self.storefront_api_origin.is_empty() {
            check_api_origin(&self.storefront_api_origin)?;
        }
        Ok(())
    }

    /// The cap on one client address's open connections, when there is one (see
    /// `max_connections_per_client`).
    pub fn connections_per_client(&self) -> Option<usize> {
        (self.max_connections_per_client > 0 && !self.trust_forwarded_for)
            .then_some(self.max_connections_per_client)
    }

    /// The CORS origins, trimmed, without empty entries.
    pub fn cors_origins(&self) -> impl Iterator<Item = &str> {
        self.cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
    }
}

/// `*`, or an origin as browsers send it: `http(s)://host[:port]`, no path, query or slash.
fn check_cors_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(format!(
            "FLASHSALE_CORS_ORIGINS: {origin:?} {why} (expected `*` or an origin like https://shop.example)"
        ))
    };
    if axum::http::HeaderValue::from_str(origin).is_err() {
        return bad("is not a valid header value");
    }
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return bad("is not http:// or https://");
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return bad(
            "must be a scheme and a host (and port) only, without a path or trailing slash",
        );
    }
    match origin.parse::<axum::http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => bad("does not parse as an origin"),
    }
}

/// An origin the storefront page may call (it goes into the page and its Content-Security-
/// Policy): `http(s)://host[:port]`, the host letters, digits, dots and dashes or a bracketed
/// IPv6 address, nothing else.
fn check_api_origin(origin: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "FLASHSALE_STOREFRONT_API_ORIGIN: {origin:?} is not an origin like https://api.shop.example"
        ))
    };
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return bad();
    };
    let port = match rest.strip_prefix('[') {
        Some(v6) => {
            let Some((addr, after)) = v6.split_once(']') else {
                return bad();
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return bad();
            }
            after
        }
        None => {
            let (host, after) = rest.split_at(rest.find(':').unwrap_or(rest.len()));
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !host_ok {
                return bad();
            }
            after
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
        });
    if port_ok { Ok(()) } else { bad() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn cors_origins_are_checked() {
        let mut c = Config::defaults().http;
        assert!(c.cors_origins.is_empty());
        assert_eq!(c.cors_max_age, Duration::from_secs(3600));
        for ok in [
            "*",
            "https://shop.example",
            "http://localhost:3000",
            " https://a.example ",
        ] {
            c.cors_origins = vec![ok.into()];
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [
            "shop.example",
            "https://shop.example/",
            "https://shop.example/app",
            "ftp://shop.example",
            "https://",
            "https://a.example?x=1",
            "https://*.example",
        ] {
            c.cors_origins = vec![bad.into()];
            assert!(c.validate().is_err(), "{bad}");
        }
        let c = Config::parse_from([
            "flashsale",
            "--cors-origins",
            "https://a.example,https://b.example",
        ]);
        assert_eq!(
            c.http.cors_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn the_storefront_api_origin_is_an_origin_only() {
        let mut c = Config::defaults().http;
        for ok in [
            "",
            "https://api.shop.example",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
        ] {
            c.storefront_api_origin = ok.into();
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [
            "*",
            "api.shop.example",
            "https://api.shop.example/",
            "https://a.example/x",
            "https://a.example\"><script>",
            "https://a.example; script-src *",
            "https://a.example:99999",
            "https://a.example:",
            "javascript:alert(1)",
            "https://user@a.example",
            "http://[::1",
            "http://[::1]x",
        ] {
            c.storefront_api_origin = bad.into();
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}
