//! The HTTP/1.1 accept loop: axum's router on hyper, with the limits `axum::serve` does not
//! expose: a cap on open connections, in all and per client address, the largest request head,
//! a deadline for receiving it (slow clients), and a bounded graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::domain::ClientKey;

/// What one server accepts.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Open connections; past it, new ones wait in the kernel's listen queue.
    pub max_connections: usize,
    /// Open connections of one client address (see [`ClientKey`]: an IPv6 client by its /64);
    /// one more is closed as soon as it is accepted, so one client cannot hold every slot of
    /// `max_connections` and leave the others waiting. `None`: no such cap (behind a trusted
    /// proxy every connection comes from the proxy).
    pub max_per_client: Option<usize>,
    /// Largest request head in bytes (hyper answers 431 beyond it).
    pub header_limit: usize,
    /// Deadline for receiving a request head.
    pub header_timeout: Duration,
    /// How long open connections get to finish after the shutdown signal.
    pub shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets every
/// open connection finish its request in flight (at most `shutdown_grace`), and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = limits.max_per_client.map(ClientConnections::new);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.header_limit)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let held = match &per_client {
            Some(counts) => match counts.admit(peer) {
                Some(held) => Some(held),
                None => {
                    // Closed at once (its global slot with it): the client's other connections
                    // are still served; it may open a new one when one of them ends.
                    metrics::counter!("flashsale_http_connections_refused_total").increment(1);
                    tracing::debug!(%peer, "connection refused: its address holds its share");
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let resp = router.oneshot(req.map(axum::body::Body::new)).await;
                Ok::<_, Infallible>(resp.unwrap_or_else(|e| match e {}))
            }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(held);
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; finishing requests in flight");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?limits.shutdown_grace,
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

/// The connections open per client address, each counted while its [`HeldConnection`] lives.
#[derive(Clone)]
struct ClientConnections {
    max: usize,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
}

impl ClientConnections {
    fn new(max: usize) -> Self {
        ClientConnections {
            max,
            open: Arc::default(),
        }
    }

    /// Counts a new connection of `peer`, or `None` when its address already holds `max`.
    fn admit(&self, peer: SocketAddr) -> Option<HeldConnection> {
        let key = ClientKey::of(peer.ip());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(HeldConnection {
            counts: self.clone(),
            key,
        })
    }
}

/// One open connection, counted against its address until dropped.
struct HeldConnection {
    counts: ClientConnections,
    key: ClientKey,
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The client's address: the TCP peer, or with `trust_forwarded_for` the last
/// `X-Forwarded-For` entry (the one the proxy in front appended), read as the proxy wrote it:
/// a bare address, `ip:port` or `[v6]:port`, in a header whose earlier, client-written part may
/// hold any bytes (only the proxy's last entry is read). An entry that is no address at all
/// falls back to the TCP peer.
pub fn client_ip(
    parts: &axum::http::request::Parts,
    trust_forwarded_for: bool,
) -> Option<std::net::IpAddr> {
    if trust_forwarded_for {
        let last = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                text.rsplit(',').next().and_then(forwarded_address)
            });
        if last.is_some() {
            return last;
        }
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// One `X-Forwarded-For` entry: `198.51.100.7`, `198.51.100.7:50123`, `2001:db8::1` or
/// `[2001:db8::1]:443`.
fn forwarded_address(entry: &str) -> Option<std::net::IpAddr> {
    let entry = entry.trim();
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_entries_are_read_with_or_without_their_port() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        assert_eq!(forwarded_address(" 198.51.100.7"), ip("198.51.100.7"));
        assert_eq!(forwarded_address("198.51.100.7:50123"), ip("198.51.100.7"));
        assert_eq!(forwarded_address("2001:db8::1"), ip("2001:db8::1"));
        assert_eq!(forwarded_address("[2001:db8::1]:443"), ip("2001:db8::1"));
        assert_eq!(forwarded_address("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(forwarded_address("unknown"), None);
    }

    #[test]
    fn one_address_holds_at_most_its_share_of_connections() {
        let counts = ClientConnections::new(2);
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        let a = counts.admit(peer("10.0.0.1:1000")).unwrap();
        let _b = counts.admit(peer("10.0.0.1:1001")).unwrap();
        assert!(counts.admit(peer("10.0.0.1:1002")).is_none());
        // Another address is not affected; an IPv6 /64 is one client.
        assert!(counts.admit(peer("10.0.0.2:1000")).is_some());
        let _c = counts.admit(peer("[2001:db8:1:2::1]:1000")).unwrap();
        let _d = counts.admit(peer("[2001:db8:1:2::ffff]:1000")).unwrap();
        assert!(counts.admit(peer("[2001:db8:1:2:9::9]:1000")).is_none());
        // A closed connection frees its place; nothing is left over for gone clients.
        drop(a);
        assert!(counts.admit(peer("10.0.0.1:1003")).is_some());
        assert_eq!(counts.open.lock().unwrap().len(), 2);
    }
}
