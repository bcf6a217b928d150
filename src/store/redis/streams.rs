//! One reader of Redis streams through a consumer group, shared by the outbox writer (the order
//! partitions' streams, group `writers`) and the webhook sender (the order-events stream, group
//! `webhooks`): make sure the group exists, read this consumer's pending entries or new ones
//! (blocking on a pooled connection of its own, never on the shared multiplexed one), take over
//! entries idle at other consumers (XAUTOCLAIM), keep entries held (XCLAIM), acknowledge, and
//! delete consumers of instances long gone. What each worker does with an entry stays with the
//! worker.

use std::collections::HashMap;
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{Cmd, Value};

use super::{Redis, SlotPipe};
use crate::error::{AppError, AppResult};

/// A field value as text (bulk strings read lossily, integers written out).
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A consumer of a group as XINFO CONSUMERS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    /// Entries delivered to it and not acknowledged.
    pub pending: u64,
    /// Since it last read (or tried to).
    pub idle: Duration,
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

/// A consumer `consumer` of group `group` on `streams`. Every command reads one stream: on a
/// Redis Cluster the streams are in several slots, so a read or a claim of several streams is
/// one command per stream, pipelined by slot ([`SlotPipe`]); a blocking read reads one stream.
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

    /// This consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn all(&self) -> Vec<usize> {
        (0..self.streams.len()).collect()
    }

    /// Creates the group on every stream (from its start, `0`, `MKSTREAM`); an existing group
    /// is kept.
    pub async fn ensure_group(&self) -> AppResult<()> {
        for i in 0..self.streams.len() {
            self.ensure_group_in(i).await?;
        }
        Ok(())
    }

    /// Creates the group on stream `stream` (see [`StreamConsumer::ensure_group`]).
    pub async fn ensure_group_in(&self, stream: usize) -> AppResult<()> {
        let r: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.streams[stream])
            .arg(self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.redis.conn())
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// This consumer's pending entries after `after` ("0": all of them), up to `count` per
    /// stream, from every stream.
    pub async fn read_pending(&self, after: &str, count: usize) -> AppResult<Vec<StreamEntry>> {
        self.read(&self.all(), after, count, None).await
    }

    /// New entries (`>`), up to `count` per stream, from every stream; `block`: wait that long
    /// for some, on a pooled connection of its own (a consumer of one stream only).
    pub async fn read_new(
        &self,
        count: usize,
        block: Option<Duration>,
    ) -> AppResult<Vec<StreamEntry>> {
        self.read(&self.all(), ">", count, block).await
    }

    /// [`StreamConsumer::read_pending`] of stream `stream` alone.
    pub async fn read_pending_in(
        &self,
        stream: usize,
        after: &str,
        count: usize,
    ) -> AppResult<Vec<StreamEntry>> {
        self.read(&[stream], after, count, None).await
    }

    /// [`StreamConsumer::read_new`] of stream `stream` alone (`block`: on a pooled connection
    /// of its own).
    pub async fn read_new_in(
        &self,
        stream: usize,
        count: usize,
        block: Option<Duration>,
    ) -> AppResult<Vec<StreamEntry>> {
        self.read(&[stream], ">", count, block).await
    }

    fn read_cmd(&self, stream: usize, id: &str, count: usize, block: Option<Duration>) -> Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.streams[stream]).arg(id);
        cmd
    }

    async fn read(
        &self,
        which: &[usize],
        id: &str,
        count: usize,
        block: Option<Duration>,
    ) -> AppResult<Vec<StreamEntry>> {
        let replies: Vec<Option<StreamReadReply>> = match (which, block) {
            ([one], Some(b)) => vec![
                self.redis
                    .blocking_query(&self.read_cmd(*one, id, count, Some(b)), b)
                    .await?,
            ],
            (_, Some(_)) => {
                return Err(AppError::internal(
                    "a blocking read reads one stream (on a cluster, streams are in several slots)",
                ));
            }
            ([one], None) => vec![
                self.read_cmd(*one, id, count, None)
                    .query_async(&mut self.redis.conn())
                    .await?,
            ],
            (many, None) => {
                let mut pipe = SlotPipe::new();
                for i in many {
                    pipe.add(&self.streams[*i], &self.read_cmd(*i, id, count, None));
                }
                pipe.query(&self.redis.conn()).await?
            }
        };
        let mut out = Vec::new();
        for (i, reply) in which.iter().zip(replies) {
            for sk in reply.map(|r| r.keys).unwrap_or_default() {
                out.extend(sk.ids.into_iter().map(|e| StreamEntry::of(*i, e)));
            }
        }
        Ok(out)
    }

    /// Takes over up to `count` entries per stream that sat unacknowledged at any consumer for
    /// `min_idle` (XAUTOCLAIM from the start of each stream), from every stream.
    pub async fn claim_idle(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> AppResult<Vec<StreamEntry>> {
        self.claim(&self.all(), min_idle, count).await
    }

    /// [`StreamConsumer::claim_idle`] of stream `stream` alone.
    pub async fn claim_idle_in(
        &self,
        stream: usize,
        min_idle: Duration,
        count: usize,
    ) -> AppResult<Vec<StreamEntry>> {
        self.claim(&[stream], min_idle, count).await
    }

    async fn claim(
        &self,
        which: &[usize],
        min_idle: Duration,
        count: usize,
    ) -> AppResult<Vec<StreamEntry>> {
        let mut pipe = SlotPipe::new();
        for i in which {
            let key = &self.streams[*i];
            pipe.add(
                key,
                redis::cmd("XAUTOCLAIM")
                    .arg(key)
                    .arg(self.group)
                    .arg(&self.consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg("0")
                    .arg("COUNT")
                    .arg(count.max(1)),
            );
        }
        let replies: Vec<StreamAutoClaimReply> = pipe.query(&self.redis.conn()).await?;
        let mut out = Vec::new();
        for (i, reply) in which.iter().zip(replies) {
            out.extend(reply.claimed.into_iter().map(|e| StreamEntry::of(*i, e)));
        }
        Ok(out)
    }

    /// Deletes the consumers of the group on stream `stream` that hold no pending entry and
    /// have been idle for `min_idle` (instances gone), this one never, at most 1,000 a call, in
    /// one atomic step (lua/drop_idle_consumers.lua): a consumer with pending entries is never
    /// deleted. Their names.
    pub async fn drop_idle_consumers(
        &self,
        stream: usize,
        min_idle: Duration,
    ) -> AppResult<Vec<String>> {
        let r = self
            .redis
            .eval(
                "drop_idle_consumers",
                &self.redis.scripts.drop_idle_consumers,
                &[&self.streams[stream]],
                &[
                    self.group,
                    &(min_idle.as_millis() as u64).to_string(),
                    &self.consumer,
                    "1000",
                ],
            )
            .await?;
        let mut dropped = Vec::new();
        while r.has(dropped.len()) {
            dropped.push(r.str_at(dropped.len())?);
        }
        Ok(dropped)
    }

    /// The consumers of the group on stream `stream`: name, pending entries, idle time.
    pub async fn consumers_in(&self, stream: usize) -> AppResult<Vec<ConsumerInfo>> {
        let raw: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.streams[stream])
            .arg(self.group)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(raw
            .iter()
            .map(|c| ConsumerInfo {
                name: c.get("name").and_then(text).unwrap_or_default(),
                pending: c
                    .get("pending")
                    .and_then(text)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                idle: Duration::from_millis(
                    c.get("idle")
                        .and_then(text)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                ),
            })
            .collect())
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
