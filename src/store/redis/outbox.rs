//! Outbox events: what decide_order.lua appends to an order partition's stream; and the
//! set-aside streams, where events that can never be written are kept for an operator.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use redis::streams::StreamRangeReply;
use serde::Serialize;

use super::keys::ORDER_PARTITIONS;
use super::streams::{StreamEntry, text};
use super::{Redis, SlotPipe};
use crate::domain::{OrderEventKind, OrderItem, OrderStatus, OutboxEvent};
use crate::error::AppResult;

/// Reads an outbox entry of partition `partition` into its event; `Err` names what is wrong
/// with a malformed one.
pub fn parse_event(partition: u64, entry: &StreamEntry) -> Result<OutboxEvent, String> {
    let stream_id = entry.id.as_str();
    let get = |f: &str| entry.field(f);
    let num = |f: &str| get(f).and_then(|v| v.parse::<i64>().ok());
    let need = |f: &str| num(f).ok_or_else(|| format!("field {f} missing or not a number"));
    let kind = get("type")
        .and_then(|t| OrderEventKind::parse(&t))
        .ok_or("field type missing or unknown")?;
    let status = get("status")
        .and_then(|s| OrderStatus::parse(&s))
        .ok_or("field status missing or unknown")?;
    let items: Vec<OrderItem> = serde_json::from_str(&get("items").unwrap_or_default())
        .map_err(|e| format!("field items: {e}"))?;
    if let Some(bad) = items.iter().find(|i| i.sku == 0) {
        return Err(format!("field items: sku {} is not a sku", bad.sku));
    }
    // A replayed event (`flashsale outbox-dead replay`) keeps its first stream id: its
    // event_id and time are those of the decision.
    let stream_id = get("replay_of").unwrap_or_else(|| stream_id.to_string());
    let at_ms = stream_id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .ok_or("stream id without a time")?;
    Ok(OutboxEvent {
        event_id: format!("{partition}-{stream_id}"),
        kind,
        order_id: need("order_id")? as u64,
        user_id: need("user")? as u64,
        status,
        items,
        total_price: need("total")? as u64,
        created_at_ms: need("created_at")?,
        expires_at_ms: need("expires_at")?,
        paid_at_ms: num("paid_at"),
        cancelled_at_ms: num("cancelled_at"),
        cancel_reason: get("cancel_reason"),
        payment_ref: get("payment_ref").filter(|r| !r.is_empty()),
        at_ms,
        alloc: get("alloc")
            .map(|a| parse_event_alloc(&a))
            .unwrap_or_default(),
    })
}

/// The record's `alloc` field: `{"<sku>": "<warehouse_id>:<units>,..."}`. What cannot be read
/// is left out (the write-back then finds the line's warehouses another way): it never makes an
/// event unwritable.
fn parse_event_alloc(json: &str) -> std::collections::BTreeMap<u32, Vec<(u32, u32)>> {
    let raw: std::collections::BTreeMap<String, String> =
        serde_json::from_str(json).unwrap_or_default();
    raw.into_iter()
        .filter_map(|(sku, a)| {
            let alloc = super::reservations::parse_alloc(&a);
            Some((sku.parse().ok()?, alloc)).filter(|(_, a)| !a.is_empty())
        })
        .collect()
}

/// What is left of the outbox entries `flashsale rebuild-cache` waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxLeft {
    /// Entries not written yet.
    pub entries: u64,
    /// Of them, delivered and not acknowledged, by consumer: (entries, longest idle in ms).
    pub pending: std::collections::BTreeMap<String, (u64, u64)>,
}

impl OutboxLeft {
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

impl std::fmt::Display for OutboxLeft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} order event(s) not yet written to MySQL",
            self.entries
        )?;
        let mut sep = ": ";
        for (consumer, (n, idle)) in &self.pending {
            write!(
                f,
                "{sep}{n} pending at writer {consumer:?} (idle up to {:.1} s)",
                *idle as f64 / 1000.0
            )?;
            sep = ", ";
        }
        let unread = self.entries
            - self
                .pending
                .values()
                .map(|(n, _)| n)
                .sum::<u64>()
                .min(self.entries);
        if unread > 0 {
            write!(f, "{sep}{unread} not yet read by any writer")?;
        }
        Ok(())
    }
}

/// Why an event was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetAsideReason {
    /// The entry is not an event this version can read.
    Unparseable,
    /// MySQL holds another order (another customer, or another creation time) under the
    /// event's order id: writing it would merge two orders.
    Collision,
}

impl SetAsideReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SetAsideReason::Unparseable => "unparseable",
            SetAsideReason::Collision => "collision",
        }
    }
}

/// A set-aside entry's id as operators see it: `<partition>-<entry stream id>`
/// (`legacy-<stream id>` for references left by versions before the set-aside streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAsideId {
    /// `None`: the legacy stream.
    pub partition: Option<u64>,
    pub entry: String,
}

impl std::fmt::Display for SetAsideId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.partition {
            Some(p) => write!(f, "{p}-{}", self.entry),
            None => write!(f, "legacy-{}", self.entry),
        }
    }
}

impl SetAsideId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a set-aside id (<partition>-<ms>-<seq>, as listed)");
        let (head, entry) = s.split_once('-').ok_or_else(bad)?;
        let (ms, seq) = entry.split_once('-').ok_or_else(bad)?;
        if ms.parse::<u64>().is_err() || seq.parse::<u64>().is_err() {
            return Err(bad());
        }
        let partition = match head {
            "legacy" => None,
            p => match p.parse::<u64>() {
                Ok(p) if p < ORDER_PARTITIONS => Some(p),
                _ => return Err(bad()),
            },
        };
        Ok(SetAsideId {
            partition,
            entry: entry.to_string(),
        })
    }
}

/// One set-aside entry: why and when, and the event's fields as the outbox held them.
#[derive(Debug, Clone, Serialize)]
pub struct SetAside {
    pub id: String,
    pub reason: String,
    pub error: String,
    /// The event's stream id in its outbox when it was set aside.
    pub stream_id: String,
    pub set_aside_at_ms: Option<i64>,
    /// The event's own fields (`type`, `order_id`, `user`, `status`, `items`, ...); empty for a
    /// legacy reference.
    pub event: std::collections::BTreeMap<String, String>,
}

impl SetAside {
    fn of(id: SetAsideId, map: &HashMap<String, Value>) -> Self {
        let get = |f: &str| map.get(f).and_then(text).unwrap_or_default();
        let event = map
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("f:")?.to_string(), text(v)?)))
            .collect();
        SetAside {
            id: id.to_string(),
            // Legacy references name no reason: they were given up after failed attempts.
            reason: map
                .get("reason")
                .and_then(text)
                .unwrap_or_else(|| "legacy".into()),
            error: get("error"),
            stream_id: get("stream_id"),
            set_aside_at_ms: get("set_aside_at").parse().ok(),
            event,
        }
    }
}

/// What replaying a set-aside entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Back in its partition's outbox under this stream id; the writer writes it next.
    Requeued(String),
    /// No such entry (replayed before, by this or another operator).
    Gone,
    /// The entry holds no event (a legacy reference): nothing to replay; it stays.
    NoPayload,
}

impl Redis {
    /// Moves an outbox entry of partition `p` into the partition's set-aside stream whole,
    /// acknowledged and deleted in the same atomic step. `false`: it was not in the outbox any
    /// more (handled by another writer).
    pub async fn set_aside(
        &self,
        partition: u64,
        stream_id: &str,
        group: &str,
        reason: SetAsideReason,
        error: &str,
    ) -> AppResult<bool> {
        let r = self
            .eval(
                "set_aside",
                &self.scripts.set_aside,
                &[
                    &self.keys.outbox(partition),
                    &self.keys.set_aside(partition),
                ],
                &[stream_id, group, reason.as_str(), error],
            )
            .await?;
        Ok(r.tag() == "ok")
    }

    /// Set-aside entries, oldest first per partition, at most `limit` per stream; the legacy
    /// references last.
    pub async fn list_set_aside(&self, limit: usize) -> AppResult<Vec<SetAside>> {
        let mut pipe = SlotPipe::new();
        for key in (0..ORDER_PARTITIONS)
            .map(|p| self.keys.set_aside(p))
            .chain([self.keys.legacy_dead_letters()])
        {
            pipe.add(&key, &redis::Cmd::xrange_count(&key, "-", "+", limit));
        }
        let replies: Vec<StreamRangeReply> = pipe.query(&self.conn()).await?;
        let mut out = Vec::new();
        for (i, r) in replies.into_iter().enumerate() {
            let partition = (i < ORDER_PARTITIONS as usize).then_some(i as u64);
            for e in r.ids {
                let id = SetAsideId {
                    partition,
                    entry: e.id.clone(),
                };
                out.push(SetAside::of(id, &e.map));
            }
        }
        Ok(out)
    }

    /// One set-aside entry, `None` when there is no such entry.
    pub async fn get_set_aside(&self, id: &SetAsideId) -> AppResult<Option<SetAside>> {
        let key = match id.partition {
            Some(p) => self.keys.set_aside(p),
            None => self.keys.legacy_dead_letters(),
        };
        let r: StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(&id.entry)
            .arg(&id.entry)
            .query_async(&mut self.conn())
            .await?;
        Ok(r.ids.first().map(|e| SetAside::of(id.clone(), &e.map)))
    }

    /// Puts a set-aside event back into its partition's outbox, once: the move is one atomic
    /// step, so a second or concurrent replay of the same entry finds it gone.
    pub async fn replay_set_aside(&self, id: &SetAsideId) -> AppResult<Replayed> {
        let Some(p) = id.partition else {
            return Ok(match self.get_set_aside(id).await? {
                Some(_) => Replayed::NoPayload,
                None => Replayed::Gone,
            });
        };
        let r = self
            .eval(
                "replay_set_aside",
                &self.scripts.replay_set_aside,
                &[&self.keys.set_aside(p), &self.keys.outbox(p)],
                &[&id.entry],
            )
            .await?;
        Ok(match r.tag() {
            "ok" => Replayed::Requeued(r.str_at(1)?),
            "gone" => Replayed::Gone,
            "empty" => Replayed::NoPayload,
            other => return Err(r.unexpected(other)),
        })
    }

    /// Entries in the set-aside streams (legacy references included): what the
    /// `flashsale_outbox_set_aside` gauge shows, and an alert's condition.
    pub async fn set_aside_count(&self) -> AppResult<u64> {
        let mut pipe = SlotPipe::new();
        for key in (0..ORDER_PARTITIONS)
            .map(|p| self.keys.set_aside(p))
            .chain([self.keys.legacy_dead_letters()])
        {
            pipe.add(&key, &redis::Cmd::xlen(&key));
        }
        let lens: Vec<u64> = pipe.query(&self.conn()).await?;
        Ok(lens.iter().sum())
    }

    /// Age of the oldest event in the outbox (0 when empty), from the stream ids' times.
    pub async fn outbox_oldest_age(&self) -> AppResult<Duration> {
        let mut pipe = SlotPipe::new();
        for p in 0..ORDER_PARTITIONS {
            let key = self.keys.outbox(p);
            pipe.add(&key, &redis::Cmd::xrange_count(&key, "-", "+", 1));
        }
        let firsts: Vec<StreamRangeReply> = pipe.query(&self.conn()).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let oldest = firsts
            .iter()
            .flat_map(|r| r.ids.first())
            .filter_map(|e| e.id.split_once('-')?.0.parse::<i64>().ok())
            .min();
        Ok(oldest.map_or(Duration::ZERO, |ms| {
            Duration::from_millis((now - ms).max(0) as u64)
        }))
    }

    /// The last entry id of every partition's outbox now (`None`: empty): what
    /// [`Redis::outbox_left`] waits for.
    pub async fn outbox_tails(&self) -> AppResult<Vec<Option<String>>> {
        let mut pipe = SlotPipe::new();
        for p in 0..ORDER_PARTITIONS {
            let key = self.keys.outbox(p);
            pipe.add(&key, &redis::Cmd::xrevrange_count(&key, "+", "-", 1));
        }
        let lasts: Vec<StreamRangeReply> = pipe.query(&self.conn()).await?;
        Ok(lasts
            .into_iter()
            .map(|r| r.ids.into_iter().next().map(|e| e.id))
            .collect())
    }

    /// What is still in the outbox of the entries up to `tails` (per partition, from
    /// [`Redis::outbox_tails`]): the written ones are deleted, so what is there is unwritten;
    /// among them, those delivered to a consumer of `group` and not acknowledged. Counts are
    /// exact up to 1,000 entries a partition.
    pub async fn outbox_left(
        &self,
        group: &str,
        tails: &[Option<String>],
    ) -> AppResult<OutboxLeft> {
        let mut pipe = SlotPipe::new();
        let mut asked = Vec::new();
        for (p, tail) in tails.iter().enumerate() {
            let Some(tail) = tail else { continue };
            let key = self.keys.outbox(p as u64);
            pipe.add(&key, &redis::Cmd::xrange_count(&key, "-", tail, 1_000));
            pipe.add(
                &key,
                redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(group)
                    .arg("-")
                    .arg(tail)
                    .arg(1_000),
            );
            asked.push(p);
        }
        let mut left = OutboxLeft::default();
        if asked.is_empty() {
            return Ok(left);
        }
        let raw: Vec<Value> = pipe.query(&self.conn()).await?;
        for pair in raw.chunks(2) {
            if let Value::Array(entries) = &pair[0] {
                left.entries += entries.len() as u64;
            }
            // [[id, consumer, idle ms, deliveries], ...]
            if let Value::Array(pending) = &pair[1] {
                for p in pending {
                    let Value::Array(f) = p else { continue };
                    let (Some(consumer), Some(Value::Int(idle))) =
                        (f.get(1).and_then(text), f.get(2))
                    else {
                        continue;
                    };
                    let e = left.pending.entry(consumer).or_insert((0, 0));
                    e.0 += 1;
                    e.1 = e.1.max(*idle as u64);
                }
            }
        }
        Ok(left)
    }

    /// Outbox entries (every partition) and those delivered to `group` but not acknowledged.
    pub async fn outbox_backlog(&self, group: &str) -> AppResult<(u64, u64)> {
        let mut pipe = SlotPipe::new();
        for p in 0..ORDER_PARTITIONS {
            let key = self.keys.outbox(p);
            pipe.add(&key, &redis::Cmd::xlen(&key));
            pipe.add(&key, redis::cmd("XPENDING").arg(&key).arg(group));
        }
        let raw: Vec<Value> = pipe.query(&self.conn()).await?;
        let (mut len, mut pending) = (0u64, 0u64);
        for pair in raw.chunks(2) {
            if let Value::Int(n) = pair[0] {
                len += n as u64;
            }
            if let Value::Array(items) = &pair[1]
                && let Some(Value::Int(n)) = items.first()
            {
                pending += *n as u64;
            }
        }
        Ok((len, pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_a_paid_event() {
        let mut m = HashMap::new();
        for (k, v) in [
            ("type", "paid"),
            ("order_id", "42"),
            ("user", "7"),
            ("status", "paid"),
            (
                "items",
                r#"[{"sku":1,"name":"TV","count":2,"unit_price":500}]"#,
            ),
            ("total", "1000"),
            ("created_at", "1700000000000"),
            ("expires_at", "1700000600000"),
            ("paid_at", "1700000001000"),
            ("payment_ref", ""),
        ] {
            m.insert(k.to_string(), bulk(v));
        }
        let parse = |id: &str, m: &HashMap<String, Value>| {
            parse_event(3, &StreamEntry::new(0, id, m.clone()))
        };
        let e = parse("1700000001000-0", &m).unwrap();
        assert_eq!(e.event_id, "3-1700000001000-0");
        assert_eq!(e.kind, OrderEventKind::Paid);
        assert_eq!((e.order_id, e.user_id, e.total_price), (42, 7, 1000));
        assert_eq!(e.items[0].count, 2);
        assert_eq!(e.paid_at_ms, Some(1_700_000_001_000));
        assert_eq!(e.payment_ref, None);
        assert_eq!(e.at_ms, 1_700_000_001_000);

        // A replayed event keeps its first stream id.
        m.insert("replay_of".into(), bulk("1700000001000-0"));
        let r = parse("1700000099000-5", &m).unwrap();
        assert_eq!(r.event_id, "3-1700000001000-0");
        assert_eq!(r.at_ms, 1_700_000_001_000);

        m.insert(
            "items".into(),
            bulk(r#"[{"sku":0,"name":"TV","count":2,"unit_price":500}]"#),
        );
        assert!(parse("1-0", &m).is_err(), "sku 0");
        m.remove("status");
        assert!(parse("1-0", &m).is_err());
    }

    #[test]
    fn set_aside_ids_round_trip() {
        for s in ["3-1700000001000-0", "15-1-2", "legacy-1700000001000-7"] {
            assert_eq!(SetAsideId::parse(s).unwrap().to_string(), s);
        }
        for bad in [
            "", "3", "3-17", "16-1-0", "x-1-0", "3-a-0", "-1-0", "3-1-0-0",
        ] {
            assert!(SetAsideId::parse(bad).is_err(), "{bad}");
        }
    }
}
