//! Live stock: the scripts announce every change of a sku's `avail` on the sku's own sharded
//! channel (`SPUBLISH <prefix>:{sku:N}:live`, message `"<sku> <avail>"`, see lua/lib.lua); an
//! instance subscribes (`SSUBSCRIBE`) only the skus it has a use for, on connections of its
//! own ([`StockFeed`]), and src/worker/live.rs decides which.
//!
//! The feed's connections are RESP3 connections whose pushes (messages, subscription
//! confirmations, the client's note of a dropped connection) arrive on one channel: on one
//! server, one connection; on a cluster, one per master, each sku's channel subscribed on the
//! master of its slot as `CLUSTER SLOTS` names it. Not the redis crate's cluster client: it
//! may route a subscription to a replica or a connection it later replaces, without a word
//! (seen in a failover test: a confirmed subscription gone from every node, nothing reported);
//! here every connection that holds a subscription is the feed's own, so every loss is heard. A
//! drop is reported ([`LiveEvent::Lost`]) and the feed makes its connections and every
//! subscription afresh, confirming each again. A channel Redis drops itself (a slot moved, a
//! master demoted) is reported as [`LiveEvent::Unsubscribed`], and its next subscription reads
//! the slot map afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion,
    PushInfo, PushKind, RedisError, Value,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::reservations::SoldOutFor;
use super::{Conn, Deployment, Keys, Redis, SlotPipe};
use crate::domain::Sku;
use crate::error::{AppError, AppResult};

/// One announcement: the sku, its available count and, with none available, how long that
/// holds at most (lua/lib.lua's `live_publish`).
pub type Announcement = (u32, i64, Option<SoldOutFor>);

/// Subscription commands in flight at once on the feed's connections.
const SUBSCRIBE_IN_FLIGHT: usize = 32;

/// What the feed's connections report.
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

/// A connection of the feed: RESP3, its pushes sent to the feed, named for operators (and for
/// the tests that cut it; best effort).
async fn feed_connection(
    info: ConnectionInfo,
    tx: UnboundedSender<PushInfo>,
    timeout: Duration,
    name: &str,
) -> Result<MultiplexedConnection, RedisError> {
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3))?;
    let cfg = AsyncConnectionConfig::new()
        .set_push_sender(tx)
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    let named: Result<(), _> = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .query_async(&mut conn)
        .await;
    if let Err(e) = named {
        tracing::debug!(error = %e, "live stock: the connection is not named");
    }
    Ok(conn)
}

/// The feed's connections, of either deployment.
enum FeedConn {
    Single(MultiplexedConnection),
    Cluster(Box<ClusterNodes>),
}

/// A cluster master's address.
type NodeAddr = (String, u16);

/// The feed's connections to a cluster's masters, made as subscriptions need them.
struct ClusterNodes {
    /// The store's cluster connection: reads the slot map.
    shared: Conn,
    /// How to connect (a seed's: password, TLS), its address replaced by each master's.
    seed: ConnectionInfo,
    tx: UnboundedSender<PushInfo>,
    nodes: tokio::sync::Mutex<Nodes>,
    /// Set when Redis dropped a channel itself (its slot may have moved): the slot map is read
    /// again before the next subscription.
    stale: AtomicBool,
    /// Where each sku's channel was subscribed (its `SUNSUBSCRIBE` goes there). A sku taken
    /// out by [`LiveEvent::Unsubscribed`] that was still here was dropped by Redis itself.
    placed: Mutex<HashMap<u32, NodeAddr>>,
}

#[derive(Default)]
struct Nodes {
    /// (first slot, last slot, master), as `CLUSTER SLOTS` said; `None`: to read again.
    slots: Option<Vec<(u16, u16, NodeAddr)>>,
    conns: HashMap<NodeAddr, MultiplexedConnection>,
}

/// The slot map of `CLUSTER SLOTS`: for each range, its master (an empty address: the seed's
/// host, as Redis means it).
fn parse_slots(v: &Value, default_host: &str) -> Option<Vec<(u16, u16, NodeAddr)>> {
    let Value::Array(ranges) = v else { return None };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(r) = r else { return None };
        let (first, last) = (int(r.first()?)?, int(r.get(1)?)?);
        let Value::Array(master) = r.get(2)? else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let host = if host.is_empty() {
            default_host.to_string()
        } else {
            host
        };
        out.push((first, last, (host, int(master.get(1)?)?)));
    }
    Some(out)
}

/// The hash slot of a key, as Redis Cluster computes it (CRC16/XMODEM of its `{tag}`, or of
/// the whole key without one, modulo 16384).
fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for b in tagged {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

impl ClusterNodes {
    /// Reads the slot map (through the store's cluster connection).
    async fn read_slots(&self) -> Result<Vec<(u16, u16, NodeAddr)>, RedisError> {
        let v: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.shared.clone())
            .await?;
        let host = match self.seed.addr() {
            ConnectionAddr::Tcp(h, _) | ConnectionAddr::TcpTls { host: h, .. } => h.clone(),
            _ => String::new(),
        };
        parse_slots(&v, &host).ok_or_else(|| {
            RedisError::from(std::io::Error::other(
                "redis: an unreadable CLUSTER SLOTS answer",
            ))
        })
    }

    /// The connection to the master of `slot` (made now if needed) and its address.
    async fn node_for(
        &self,
        slot: u16,
        timeout: Duration,
        name: &str,
    ) -> Result<(NodeAddr, MultiplexedConnection), RedisError> {
        let mut nodes = self.nodes.lock().await;
        if self.stale.swap(false, Ordering::AcqRel) || nodes.slots.is_none() {
            nodes.slots = Some(self.read_slots().await?);
        }
        let addr = nodes
            .slots
            .iter()
            .flatten()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, addr)| addr.clone())
            .ok_or_else(|| {
                nodes.slots = None;
                RedisError::from(std::io::Error::other(format!(
                    "redis: no master serves slot {slot}"
                )))
            })?;
        if let Some(c) = nodes.conns.get(&addr) {
            return Ok((addr, c.clone()));
        }
        let info = self
            .seed
            .clone()
            .set_addr(ConnectionAddr::Tcp(addr.0.clone(), addr.1));
        match feed_connection(info, self.tx.clone(), timeout, name).await {
            Ok(c) => {
                nodes.conns.insert(addr.clone(), c.clone());
                Ok((addr, c))
            }
            Err(e) => {
                // A master that cannot be reached may have been replaced (a failover).
                nodes.slots = None;
                Err(e)
            }
        }
    }

    /// Runs `command` (`SSUBSCRIBE` / `SUNSUBSCRIBE`) for one sku's channel on the master
    /// of its slot (an unsubscription: where it was subscribed).
    async fn run(
        &self,
        command: &'static str,
        sku: u32,
        channel: &str,
        timeout: Duration,
        name: &str,
    ) -> Result<(), RedisError> {
        let subscribing = command == "SSUBSCRIBE";
        let (addr, mut conn) = if subscribing {
            self.node_for(key_slot(channel.as_bytes()), timeout, name)
                .await?
        } else {
            let Some(addr) = self.placed_lock().remove(&sku) else {
                return Ok(());
            };
            let conn = self.nodes.lock().await.conns.get(&addr).cloned();
            match conn {
                Some(c) => (addr, c),
                None => return Ok(()),
            }
        };
        let r: Result<(), RedisError> = redis::cmd(command)
            .arg(channel)
            .query_async(&mut conn)
            .await;
        match &r {
            Ok(()) if subscribing => {
                self.placed_lock().insert(sku, addr);
            }
            Err(e) if e.code() == Some("MOVED") || e.code() == Some("ASK") => {
                // The slot is served elsewhere now: the map is read again next time.
                self.nodes.lock().await.slots = None;
            }
            _ => {}
        }
        r
    }

    fn placed_lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, NodeAddr>> {
        self.placed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The live stock subscription: connections of its own whose pushes are read with
/// [`StockFeed::next`]. Subscriptions are made and dropped one sku at a time (on a cluster a
/// channel lives on its slot's master; on one server the connection answers each subscription
/// command with its one confirmation).
pub struct StockFeed {
    conn: FeedConn,
    pushes: UnboundedReceiver<PushInfo>,
    keys: Keys,
    timeout: Duration,
    /// The connections' name (`CLIENT LIST` shows it), see [`StockFeed::name`].
    name: String,
}

impl Redis {
    /// Connects the live stock subscription (no channel subscribed yet). On a cluster, reads
    /// the slot map (the masters are connected as their skus are subscribed).
    pub async fn stock_feed(&self) -> AppResult<StockFeed> {
        let (tx, rx) = unbounded_channel();
        let name = feed_name(self.keys.prefix());
        let conn = match &*self.deployment {
            Deployment::Single(client) => {
                let info = client.get_connection_info().clone();
                FeedConn::Single(feed_connection(info, tx, self.timeout, &name).await?)
            }
            Deployment::Cluster(seeds) => {
                let seed = seeds
                    .first()
                    .ok_or_else(|| AppError::internal("redis: no cluster seed node"))?
                    .as_str()
                    .into_connection_info()?;
                let nodes = ClusterNodes {
                    shared: self.conn(),
                    seed,
                    tx,
                    nodes: tokio::sync::Mutex::default(),
                    stale: AtomicBool::new(false),
                    placed: Mutex::default(),
                };
                let slots = nodes.read_slots().await?;
                nodes.nodes.lock().await.slots = Some(slots);
                FeedConn::Cluster(Box::new(nodes))
            }
        };
        Ok(StockFeed {
            conn,
            pushes: rx,
            keys: self.keys.clone(),
            timeout: self.timeout,
            name,
        })
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
    /// The connections' name (`CLIENT LIST` shows it as `name=`).
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

    async fn one(&self, command: &'static str, sku: u32) -> AppResult<()> {
        let channel = self.keys.sku(Sku::parse(u64::from(sku))?).live();
        let sent = async {
            match &self.conn {
                FeedConn::Single(c) => {
                    redis::cmd(command)
                        .arg(&channel)
                        .query_async::<()>(&mut c.clone())
                        .await
                }
                FeedConn::Cluster(nodes) => {
                    nodes
                        .run(command, sku, &channel, self.timeout, &self.name)
                        .await
                }
            }
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(AppError::Unavailable(
                "redis: the live stock subscription did not answer".into(),
            )),
        }
    }

    async fn each(&self, command: &'static str, skus: &[u32]) -> Vec<u32> {
        futures::stream::iter(skus.iter().copied())
            .map(|sku| async move {
                let r = self.one(command, sku).await;
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

    /// A channel Redis dropped itself, on a cluster: the slot map is read again before the
    /// next subscription (the slot may have moved).
    fn dropped(&self, event: &LiveEvent) {
        if let (LiveEvent::Unsubscribed(sku), FeedConn::Cluster(nodes)) = (event, &self.conn)
            && nodes.placed_lock().remove(sku).is_some()
        {
            nodes.stale.store(true, Ordering::Release);
        }
    }

    /// The next event (`None`: the connection is gone for good).
    pub async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            let push = self.pushes.recv().await?;
            if let Some(e) = event_of(&self.keys, &push) {
                self.dropped(&e);
                return Some(e);
            }
        }
    }

    /// The next event if one has arrived already (`None`: none yet, or the connection is gone,
    /// which [`StockFeed::next`] then tells).
    pub fn try_next(&mut self) -> Option<LiveEvent> {
        while let Ok(push) = self.pushes.try_recv() {
            if let Some(e) = event_of(&self.keys, &push) {
                self.dropped(&e);
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
    fn slots_are_computed_as_the_cluster_does() {
        use redis::cluster_routing::Slot;
        for key in [
            "foo",
            "{user1000}.following",
            "fs:{sku:42}:live",
            "fs:{sku:42}:stock",
            "a{}b",
            "{}",
            "x{",
            "}{y}",
            "",
        ] {
            assert_eq!(
                Slot::new(key_slot(key.as_bytes())),
                Some(Slot::for_key(key)),
                "{key}"
            );
        }
        // CLUSTER KEYSLOT's own answers.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{sku:1}"), 2893);
        assert_eq!(key_slot(b"fs:{sku:1}:live"), 2893);
    }

    #[test]
    fn the_slot_map_is_read_from_cluster_slots() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let range = |first, last, host: &str, port| {
            Value::Array(vec![
                Value::Int(first),
                Value::Int(last),
                Value::Array(vec![b(host), Value::Int(port), b("id1")]),
                Value::Array(vec![b("10.0.0.9"), Value::Int(7004), b("id2")]),
            ])
        };
        let v = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 7001),
            range(5461, 16383, "", 7002),
        ]);
        assert_eq!(
            parse_slots(&v, "seed.example"),
            Some(vec![
                (0, 5460, ("10.0.0.1".to_string(), 7001)),
                (5461, 16383, ("seed.example".to_string(), 7002)),
            ])
        );
        assert_eq!(parse_slots(&Value::Int(1), "h"), None);
    }

    #[test]
    fn the_connection_name_has_no_spaces() {
        assert_eq!(feed_name("fs"), "flashsale-live:fs");
        assert_eq!(feed_name("a b\n"), "flashsale-live:a_b_");
    }
}
