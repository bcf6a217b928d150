//! The public order-events stream (`<prefix>:order-events`): the write-back publishes each
//! written event there (and lets go of finished orders' records), readers' consumer groups say
//! how far it may be trimmed, and the webhook sender sets aside what no receiver took.

use std::collections::HashMap;

use redis::Value;

use super::{Redis, SlotPipe};
use crate::error::AppResult;

/// Entries `<p>:webhook-dead` keeps (about): its memory bound, ~60 MB of events that no
/// receiver took. Each is also counted (`outcome="gave_up"`), and every order is in MySQL.
const WEBHOOK_DEAD_MAX_LEN: u64 = 100_000;

/// An order event written back to MySQL, as the write-back publishes it.
pub struct Published {
    pub order_id: u64,
    pub user_id: u64,
    /// The order reached a final status: its record may expire, its customer's index lets go.
    pub finished: bool,
    /// The public event's JSON.
    pub payload: String,
}

/// An order event no webhook receiver took, as `<p>:webhook-dead` keeps it.
pub struct DeadDelivery<'a> {
    pub stream_id: &'a str,
    pub event_id: &'a str,
    pub body: &'a str,
    pub error: &'a str,
    pub attempts: u32,
}

/// "<ms>-<seq>" as a pair that orders like the stream.
fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Redis {
    /// After a write-back: finished orders' records expire after `record_ttl_secs` and leave
    /// their customer's index, and the events go out on the public stream, in one round trip
    /// (after one read of the stream's consumer groups). The stream is capped at about
    /// `max_len` only while no consumer group reads it; a group is never trimmed past an entry
    /// it has not had.
    pub async fn publish_written(
        &self,
        events: &[Published],
        record_ttl_secs: i64,
        max_len: u64,
    ) -> AppResult<()> {
        let readers = self.order_events_needed_from().await?;
        let mut pipe = SlotPipe::new();
        let stream = self.keys.order_events();
        for ev in events {
            if ev.finished {
                let record = self.keys.order(ev.order_id);
                pipe.add(&record, &redis::Cmd::expire(&record, record_ttl_secs));
                // MySQL has its final status now: the customer's index lets go of it.
                let index = self.keys.user_orders(ev.user_id);
                pipe.add(&index, &redis::Cmd::zrem(&index, ev.order_id));
            }
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&stream);
            if readers.is_none() {
                xadd.arg("MAXLEN").arg("~").arg(max_len);
            }
            xadd.arg("*").arg("event").arg(&ev.payload);
            pipe.add(&stream, &xadd);
        }
        if let Some(Some(from)) = &readers {
            // Delivered entries leave; what a group still needs stays, however many.
            pipe.add(
                &stream,
                redis::cmd("XTRIM")
                    .arg(&stream)
                    .arg("MINID")
                    .arg("~")
                    .arg(from),
            );
        }
        pipe.exec(&self.conn()).await?;
        Ok(())
    }

    /// Sets an order event aside in `<p>:webhook-dead` and acknowledges it for `group`, in one
    /// round trip (a crash in between repeats the dead letter, never loses the event).
    pub async fn set_aside_delivery(&self, group: &str, dead: &DeadDelivery<'_>) -> AppResult<()> {
        let mut pipe = SlotPipe::new();
        let dead_letters = self.keys.webhook_dead();
        let stream = self.keys.order_events();
        pipe.in_order();
        pipe.add(
            &dead_letters,
            redis::cmd("XADD")
                .arg(&dead_letters)
                .arg("MAXLEN")
                .arg("~")
                .arg(WEBHOOK_DEAD_MAX_LEN)
                .arg("*")
                .arg("event_id")
                .arg(dead.event_id)
                .arg("stream_id")
                .arg(dead.stream_id)
                .arg("event")
                .arg(dead.body)
                .arg("error")
                .arg(dead.error)
                .arg("attempts")
                .arg(dead.attempts),
        );
        pipe.add(
            &stream,
            redis::cmd("XACK")
                .arg(&stream)
                .arg(group)
                .arg(dead.stream_id),
        );
        pipe.exec(&self.conn()).await?;
        Ok(())
    }

    /// Who reads the public order-events stream through consumer groups: `None` without any
    /// group (the stream is then capped by length); `Some(from)`: the oldest entry id some
    /// group still needs (its oldest unacknowledged entry, or its last delivered one), `None`
    /// inside when a group has had nothing yet.
    pub async fn order_events_needed_from(&self) -> AppResult<Option<Option<String>>> {
        let key = self.keys.order_events();
        let mut conn = self.conn();
        let groups: Vec<HashMap<String, Value>> = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut conn)
            .await
        {
            Ok(g) => g,
            // No stream yet: no group either.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if groups.is_empty() {
            return Ok(None);
        }
        let mut oldest: Option<(u64, u64)> = None;
        for g in &groups {
            let text = |f: &str| match g.get(f) {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            };
            let name = text("name");
            let mut from = text("last-delivered-id");
            let pending = matches!(g.get("pending"), Some(Value::Int(n)) if *n > 0);
            if pending {
                // XPENDING's summary: [count, smallest id, greatest id, consumers].
                let (_, smallest, _, _): (u64, Option<String>, Option<String>, Value) =
                    redis::cmd("XPENDING")
                        .arg(&key)
                        .arg(&name)
                        .query_async(&mut conn)
                        .await?;
                if let Some(s) = smallest {
                    from = s;
                }
            }
            let Some(id) = parse_stream_id(&from) else {
                // A group that has had nothing ("0-0") needs everything.
                return Ok(Some(None));
            };
            if id == (0, 0) {
                return Ok(Some(None));
            }
            oldest = Some(oldest.map_or(id, |o| o.min(id)));
        }
        Ok(Some(oldest.map(|(ms, seq)| format!("{ms}-{seq}"))))
    }
}
