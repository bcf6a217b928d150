//! One reader of Redis streams through a consumer group, shared by the outbox writer (the order
//! partitions' streams, group `writers`) and the webhook sender (the order-events stream, group
//! `webhooks`): make sure the group exists, read this consumer's pending entries or new ones
//! (blocking on a pooled connection of its own, never on the shared multiplexed one), take over
//! entries idle at other consumers (XAUTOCLAIM), keep entries held (XCLAIM), acknowledge. What
//! each worker does with an entry stays with the worker.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::{Redis, SlotPipe};
use crate::error::AppResult;

/// A field value as text (bulk strings read lossily, integers written out).
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One entry read: which of the consumer's streams it is in (its index), its id, its fields.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub stream: usize,
    pub id: String,
    fields: HashMap<String, Value>,
}

impl StreamEntry {
    fn of(stream: usize, e: StreamId) -> Self {
        StreamEntry {
            stream,
            id: e.id,
            fields: e.map,
        }
    }

    #[cfg(test)]
    pub(super) fn new(stream: usize, id: &str, fields: HashMap<String, Value>) -> Self {
        StreamEntry {
            stream,
            id: id.to_string(),
            fields,
        }
    }

    /// A field's value as text; `None` when missing.
    pub fn field(&self, name: &str) -> Option<String> {
        self.fields.get(name).and_then(text)
    }

    /// No fields at all: the entry left the stream before it was read (a pending entry
    /// deleted meanwhile).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// A consumer `consumer` of group `group` on `streams`.
#[derive(Clone)]
pub struct StreamConsumer {
    redis: Redis,
    streams: Vec<String>,
    group: &'static str,
    consumer: String,
}

impl StreamConsumer {
    pub fn new(redis: &Redis, streams: Vec<String>, group: &'static str, consumer: &str) -> Self {
        StreamConsumer {
            redis: redis.clone(),
            streams,
            group,
            consumer: consumer.to_string(),
        }
    }

    /// Creates the group on every stream (from its start, `0`, `MKSTREAM`); an existing group
    /// is kept.
    pub async fn ensure_group(&self) -> AppResult<()> {
        let mut conn = self.redis.conn();
        for key in &self.streams {
            let r: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(self.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// This consumer's pending entries after `after` ("0": all of them), up to `count` per
    /// stream, in one read of every stream.
    pub async fn read_pending(&self, after: &str, count: usize) -> AppResult<Vec<StreamEntry>> {
        self.read(after, count, None).await
    }

    /// New entries (`>`), up to `count` per stream; `block`: wait that long for some, on a
    /// pooled connection of its own.
    pub async fn read_new(
        &self,
        count: usize,
        block: Option<Duration>,
    ) -> AppResult<Vec<StreamEntry>> {
        self.read(">", count, block).await
    }

    async fn read(
        &self,
        id: &str,
        count: usize,
        block: Option<Duration>,
    ) -> AppResult<Vec<StreamEntry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.streams);
        for _ in &self.streams {
            cmd.arg(id);
        }
        let reply: Option<StreamReadReply> = match block {
            Some(b) => self.redis.blocking_query(&cmd, b).await?,
            None => cmd.query_async(&mut self.redis.conn()).await?,
        };
        let index: HashMap<&str, usize> = self
            .streams
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let mut out = Vec::new();
        for sk in reply.map(|r| r.keys).unwrap_or_default() {
            let i = index.get(sk.key.as_str()).copied().unwrap_or(0);
            out.extend(sk.ids.into_iter().map(|e| StreamEntry::of(i, e)));
        }
        Ok(out)
    }

    /// Takes over up to `count` entries per stream that sat unacknowledged at any consumer for
    /// `min_idle` (XAUTOCLAIM from the start of each stream).
    pub async fn claim_idle(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> AppResult<Vec<StreamEntry>> {
        let mut out = Vec::new();
        let mut conn = self.redis.conn();
        for (i, key) in self.streams.iter().enumerate() {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(key)
                .arg(self.group)
                .arg(&self.consumer)
                .arg(min_idle.as_millis() as u64)
                .arg("0")
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut conn)
                .await?;
            out.extend(reply.claimed.into_iter().map(|e| StreamEntry::of(i, e)));
        }
        Ok(out)
    }

    /// Claims `ids` of stream `stream` again for this consumer (XCLAIM, JUSTID), resetting
    /// their idle time: entries still being worked on do not look abandoned to the others.
    pub async fn keep(&self, stream: usize, ids: &[&str]) -> AppResult<()> {
        let _: Vec<String> = redis::cmd("XCLAIM")
            .arg(&self.streams[stream])
            .arg(self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// Acknowledges entries (XACK), in one round trip; they stay in the stream (shared with
    /// other readers).
    pub async fn ack(&self, entries: &[(usize, &str)]) -> AppResult<()> {
        self.settle(entries, false).await
    }

    /// Acknowledges and deletes entries (XACK, XDEL), in one round trip: a stream only this
    /// group reads then holds exactly its backlog.
    pub async fn ack_and_delete(&self, entries: &[(usize, &str)]) -> AppResult<()> {
        self.settle(entries, true).await
    }

    async fn settle(&self, entries: &[(usize, &str)], delete: bool) -> AppResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut by_stream: HashMap<usize, Vec<&str>> = HashMap::new();
        for (s, id) in entries {
            by_stream.entry(*s).or_default().push(id);
        }
        // One pipeline per stream's slot on a cluster (acknowledgements per slot).
        let mut pipe = SlotPipe::new();
        for (s, ids) in by_stream {
            let key = &self.streams[s];
            pipe.add(key, &redis::Cmd::xack(key, self.group, &ids));
            if delete {
                pipe.add(key, &redis::Cmd::xdel(key, &ids));
            }
        }
        pipe.exec(&self.redis.conn()).await?;
        Ok(())
    }
}
