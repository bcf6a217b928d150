//! Live stock: the scripts announce every change of a sku's `avail` on the sku's own sharded
//! channel (`SPUBLISH <prefix>:{sku:N}:live`, message `"<sku> <avail>"`, see lua/lib.lua); an
//! instance subscribes (`SSUBSCRIBE`) only the skus it has a use for, on a connection of its
//! own ([`StockFeed`]), and src/worker/live.rs decides which.
//!
//! One connection type for both deployments: a RESP3 connection whose pushes (messages,
//! subscription confirmations, the client's note of a dropped connection) arrive on one
//! channel. On one server, a multiplexed connection; on a cluster, the cluster client, which
//! routes each `SSUBSCRIBE` to the master of the channel's slot. Neither is trusted to carry a
//! subscription across a dropped connection: a drop is reported ([`LiveEvent::Lost`]) and the
//! feed makes the connection and every subscription afresh, confirming each again.

use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::reservations::SoldOutFor;
use super::{Deployment, Keys, Redis, SlotPipe};
use crate::domain::Sku;
use crate::error::{AppError, AppResult};

/// One announcement: the sku, its available count and, with none available, how long that
/// holds at most (lua/lib.lua's `live_publish`).
pub type Announcement = (u32, i64, Option<SoldOutFor>);

/// Subscription commands in flight at once on the feed's connection.
const SUBSCRIBE_IN_FLIGHT: usize = 32;

/// What the feed's connection reports.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// A script's announcement on a subscribed sku's channel.
    Announced(Announcement),
    /// Redis confirmed the subscription of the sku's channel: every change of the sku made
    /// after this reaches the feed (while the connection lasts).
    Subscribed(u32),
    /// The sku's channel is no longer subscribed: unsubscribed by the feed, or by Redis (on a
    /// cluster, when the sku's slot moves to another node or its master becomes a replica).
    Unsubscribed(u32),
    /// A connection of the feed dropped: its subscriptions are gone (announcements made since
    /// are lost).
    Lost,
}

/// `"<sku> <avail>"`, or `"<sku> <avail> <ms|none>"` with nothing available.
fn parse_announcement(payload: &[u8]) -> Option<Announcement> {
    let s = std::str::from_utf8(payload).ok()?;
    let mut parts = s.split(' ');
    let sku = parts.next()?.parse().ok()?;
    let avail = parts.next()?.parse().ok()?;
    let holds = match parts.next() {
        None => None,
        Some("none") => Some(SoldOutFor::Unbounded),
        Some(ms) => Some(SoldOutFor::Ms(ms.parse().ok()?)),
    };
    if parts.next().is_some() {
        return None;
    }
    Some((sku, avail, holds))
}

/// The sku of one of this deployment's live channels (`<prefix>:{sku:N}:live`).
fn channel_sku(keys: &Keys, channel: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(channel).ok()?;
    let rest = s.strip_prefix(keys.prefix())?.strip_prefix(":{sku:")?;
    rest.strip_suffix("}:live")?.parse().ok()
}

/// What a push says, for this deployment (`None`: nothing the feed follows).
fn event_of(keys: &Keys, push: &PushInfo) -> Option<LiveEvent> {
    let channel = || match push.data.first() {
        Some(Value::BulkString(b)) => channel_sku(keys, b),
        _ => None,
    };
    match push.kind {
        PushKind::SMessage => {
            let sku = channel()?;
            let (s, avail, holds) = match push.data.get(1) {
                Some(Value::BulkString(b)) => parse_announcement(b)?,
                _ => return None,
            };
            // The channel says whose count it is; a message naming another sku is not ours.
            (s == sku).then_some(LiveEvent::Announced((s, avail, holds)))
        }
        PushKind::SSubscribe => channel().map(LiveEvent::Subscribed),
        PushKind::SUnsubscribe => channel().map(LiveEvent::Unsubscribed),
        PushKind::Disconnection => Some(LiveEvent::Lost),
        _ => None,
    }
}

/// The feed's connection, of either deployment.
#[derive(Clone)]
enum FeedConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// The live stock subscription: a RESP3 connection of its own whose pushes are read with
/// [`StockFeed::next`]. Subscriptions are made and dropped one sku at a time (on a cluster a
/// command reaches one slot; on one server the connection answers each subscription command
/// with its one confirmation).
pub struct StockFeed {
    conn: FeedConn,
    pushes: UnboundedReceiver<PushInfo>,
    keys: Keys,
    timeout: Duration,
    /// The connection's name (`CLIENT LIST` shows it), see [`StockFeed::name`].
    name: String,
}

impl Redis {
    /// Connects the live stock subscription (no channel subscribed yet).
    pub async fn stock_feed(&self) -> AppResult<StockFeed> {
        let (tx, rx) = unbounded_channel();
        let conn = match &*self.deployment {
            Deployment::Single(client) => {
                let info = client.get_connection_info().clone();
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let cfg = AsyncConnectionConfig::new()
                    .set_push_sender(tx)
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                FeedConn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                )
            }
            Deployment::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(tx)
                    // A subscription command may be sent again freely (it is idempotent); a
                    // node that stays away is the feed's to retry, not the client's.
                    .retries(1)
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .build()?;
                FeedConn::Cluster(client.get_async_connection().await?)
            }
        };
        let feed = StockFeed {
            conn,
            pushes: rx,
            keys: self.keys.clone(),
            timeout: self.timeout,
            name: feed_name(self.keys.prefix()),
        };
        // Named for operators (and for the tests that cut it): on a cluster, on every node.
        // Best effort: a node down (a failover under way) must not keep the feed away from
        // the others.
        let mut setname = redis::cmd("CLIENT");
        setname.arg("SETNAME").arg(&feed.name);
        if let Err(e) = feed.query::<()>(&setname).await {
            tracing::debug!(error = %e, "live stock: the connection is not named");
        }
        Ok(feed)
    }
}

/// `flashsale-live:<prefix>`, with what a connection name may not hold (spaces, newlines)
/// replaced.
fn feed_name(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("flashsale-live:{prefix}")
}

impl StockFeed {
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> AppResult<T> {
        let sent = async {
            match self.conn.clone() {
                FeedConn::Single(mut c) => cmd.query_async(&mut c).await,
                FeedConn::Cluster(mut c) => cmd.query_async(&mut c).await,
            }
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(AppError::Unavailable(
                "redis: the live stock subscription did not answer".into(),
            )),
        }
    }

    /// The connection's name (`CLIENT LIST` shows it as `name=`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Subscribes each sku's channel (`SSUBSCRIBE`, one channel per command, a few in flight at
    /// once). Each confirmation arrives as [`LiveEvent::Subscribed`] (also for a sku subscribed
    /// already: Redis confirms every `SSUBSCRIBE`). Returns the skus whose command failed (it
    /// may still have run: its confirmation then comes all the same).
    pub async fn subscribe(&self, skus: &[u32]) -> Vec<u32> {
        self.each("SSUBSCRIBE", skus).await
    }

    /// Unsubscribes each sku's channel (`SUNSUBSCRIBE`); [`LiveEvent::Unsubscribed`] follows
    /// each. Returns the skus whose command failed.
    pub async fn unsubscribe(&self, skus: &[u32]) -> Vec<u32> {
        self.each("SUNSUBSCRIBE", skus).await
    }

    async fn each(&self, command: &'static str, skus: &[u32]) -> Vec<u32> {
        futures::stream::iter(skus.iter().copied())
            .map(|sku| async move {
                let r = match Sku::parse(u64::from(sku)) {
                    Ok(s) => {
                        let channel = self.keys.sku(s).live();
                        self.query::<()>(redis::cmd(command).arg(channel)).await
                    }
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = &r {
                    tracing::debug!(sku, error = %e, "live stock: {command} failed");
                }
                (sku, r.is_ok())
            })
            .buffer_unordered(SUBSCRIBE_IN_FLIGHT)
            .filter_map(|(sku, ok)| std::future::ready((!ok).then_some(sku)))
            .collect()
            .await
    }

    /// The next event (`None`: the connection is gone for good).
    pub async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            let push = self.pushes.recv().await?;
            if let Some(e) = event_of(&self.keys, &push) {
                return Some(e);
            }
        }
    }

    /// The next event if one has arrived already (`None`: none yet, or the connection is gone,
    /// which [`StockFeed::next`] then tells).
    pub fn try_next(&mut self) -> Option<LiveEvent> {
        while let Ok(push) = self.pushes.try_recv() {
            if let Some(e) = event_of(&self.keys, &push) {
                return Some(e);
            }
        }
        None
    }
}

/// What a confirmation re-read found of one sku: its available count and, with none available,
/// how long that holds at most (as the scripts' announcements say it).
pub type CountRead = (i64, Option<SoldOutFor>);

impl Redis {
    /// The available count of each sku (`None`: not loaded), in one pipeline of plain reads.
    pub async fn available_counts(&self, skus: &[Sku]) -> AppResult<Vec<Option<i64>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = SlotPipe::new();
        for sku in skus {
            let stock = self.keys.sku(*sku).stock();
            pipe.add(&stock, &redis::Cmd::hget(&stock, "avail"));
        }
        Ok(pipe.query(&self.conn()).await?)
    }

    /// Each sku's available count with, when none is available, how long that holds at most
    /// (until the sku's earliest reservation deadline, or unbounded without one), read as
    /// lua/lib.lua's `live_publish` computes it: the deadline index and the clock of the sku's
    /// own node, read after the count (a later clock only shortens the bound). `None`: not
    /// loaded. Plain reads, one pipeline per slot.
    pub async fn counts_with_bounds(&self, skus: &[Sku]) -> AppResult<Vec<Option<CountRead>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = SlotPipe::new();
        for sku in skus {
            let k = self.keys.sku(*sku);
            let stock = k.stock();
            pipe.add(&stock, &redis::Cmd::hget(&stock, "avail"));
            pipe.add(
                &stock,
                redis::cmd("ZRANGE")
                    .arg(k.exp())
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES"),
            );
            // No key: on a cluster it goes with its group's pipeline, to the sku's node.
            pipe.add(&stock, &redis::cmd("TIME"));
        }
        let values: Vec<Value> = pipe.query(&self.conn()).await?;
        let parse = |read: &[Value]| -> AppResult<Option<CountRead>> {
            let [avail, first, time] = read else {
                return Err(AppError::internal("redis: a short pipeline"));
            };
            let avail: Option<i64> =
                redis::from_redis_value_ref(avail).map_err(redis::RedisError::from)?;
            let Some(avail) = avail else { return Ok(None) };
            if avail > 0 {
                return Ok(Some((avail, None)));
            }
            let first: Vec<(String, f64)> =
                redis::from_redis_value_ref(first).map_err(redis::RedisError::from)?;
            let (secs, micros): (i64, i64) =
                redis::from_redis_value_ref(time).map_err(redis::RedisError::from)?;
            let holds = match first.first() {
                None => SoldOutFor::Unbounded,
                Some((_, at)) => SoldOutFor::Ms(*at as i64 - (secs * 1000 + micros / 1000)),
            };
            Ok(Some((avail, Some(holds))))
        };
        let mut out = Vec::with_capacity(skus.len());
        for read in values.chunks(3) {
            out.push(parse(read)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse() {
        assert_eq!(parse_announcement(b"42 3"), Some((42, 3, None)));
        assert_eq!(parse_announcement(b"42 -1"), Some((42, -1, None)));
        assert_eq!(parse_announcement(b"42"), None);
        assert_eq!(parse_announcement(b"x 1"), None);
        assert_eq!(
            parse_announcement(b"42 0 1500"),
            Some((42, 0, Some(SoldOutFor::Ms(1500))))
        );
        assert_eq!(
            parse_announcement(b"42 0 -3"),
            Some((42, 0, Some(SoldOutFor::Ms(-3))))
        );
        assert_eq!(
            parse_announcement(b"42 0 none"),
            Some((42, 0, Some(SoldOutFor::Unbounded)))
        );
        assert_eq!(parse_announcement(b"42 0 soon"), None);
        assert_eq!(parse_announcement(b"42 0 1 2"), None);
    }

    fn push(kind: PushKind, data: &[&str]) -> PushInfo {
        PushInfo {
            kind,
            data: data
                .iter()
                .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn pushes_are_read_per_sku_channel_of_this_deployment() {
        let keys = Keys::new("fs");
        let ch = keys.sku(Sku::parse(42).unwrap()).live();
        assert_eq!(channel_sku(&keys, ch.as_bytes()), Some(42));
        assert_eq!(channel_sku(&keys, b"fs2:{sku:42}:live"), None);
        assert_eq!(channel_sku(&keys, b"fs:{sku:42}:stock"), None);
        assert_eq!(channel_sku(&keys, b"fs:stock-live"), None);
        assert_eq!(
            event_of(&keys, &push(PushKind::SMessage, &[&ch, "42 0 none"])),
            Some(LiveEvent::Announced((42, 0, Some(SoldOutFor::Unbounded))))
        );
        assert_eq!(
            event_of(&keys, &push(PushKind::SMessage, &[&ch, "7 3"])),
            None,
            "a message naming another sku than its channel's"
        );
        assert_eq!(
            event_of(&keys, &push(PushKind::SSubscribe, &[&ch, "1"])),
            Some(LiveEvent::Subscribed(42))
        );
        assert_eq!(
            event_of(&keys, &push(PushKind::SUnsubscribe, &[&ch, "0"])),
            Some(LiveEvent::Unsubscribed(42))
        );
        assert_eq!(
            event_of(&keys, &push(PushKind::Disconnection, &[])),
            Some(LiveEvent::Lost)
        );
        assert_eq!(
            event_of(&keys, &push(PushKind::Message, &["fs:stock-live", "42 3"])),
            None,
            "the deployment-wide channel of older versions is not followed"
        );
    }

    #[test]
    fn the_connection_name_has_no_spaces() {
        assert_eq!(feed_name("fs"), "flashsale-live:fs");
        assert_eq!(feed_name("a b\n"), "flashsale-live:a_b_");
    }
}
