//! The Lua scripts of lua/, each prefixed with lua/lib.lua, built once and called by SHA
//! (EVALSHA, loading the script on NOSCRIPT). Each script's body runs inside a function, after
//! which `live_publish()` (lua/lib.lua) announces the sku's new `avail` once if the body changed
//! it: the live stock feed (src/worker/live.rs) follows those announcements.

use std::time::Instant;

use redis::{Script, Value};
use tracing::Instrument as _;

use super::lanes::BatchError;
use super::{Redis, SlotPipe};
use crate::error::{AppError, AppResult};

const LIB: &str = include_str!("../../../lua/lib.lua");

fn with_lib(body: &str) -> Script {
    Script::new(&wrap(body))
}

/// lib + the body as a function + the live stock announcement after it, under the Redis 7
/// `#!lua` shebang: a script that declares its flags (none here) may touch only keys of the
/// slot of the keys it was given, and a Redis Cluster refuses one that strays to another slot
/// even on the same node (without the shebang that passes until a reshard moves the slot).
fn wrap(body: &str) -> String {
    format!(
        "#!lua\n{LIB}\nlocal function script_body()\n{body}\nend\n\
         local reply = script_body()\nlive_publish()\nreturn reply\n"
    )
}

pub struct Scripts {
    pub reserve: Script,
    pub convert_hold: Script,
    pub release: Script,
    pub commit_sold: Script,
    pub sweep: Script,
    pub create_order: Script,
    pub decide_order: Script,
    pub load_sku: Script,
    pub set_meta: Script,
    pub note_placing: Script,
    pub adjust_stock: Script,
    pub raise_seq: Script,
    pub mark_written: Script,
    pub restore_order: Script,
    pub rate_limit: Script,
    pub stage_hash: Script,
    pub unlock: Script,
    pub note_due: Script,
    pub settle_due: Script,
    pub claim_idempotency: Script,
    pub settle_idempotency: Script,
    pub next_order_id: Script,
    pub set_aside: Script,
    pub replay_set_aside: Script,
    pub return_to_cart: Script,
    pub fence_order: Script,
    pub note_account: Script,
    pub hold_lease: Script,
    pub note_reader: Script,
    pub drop_idle_consumers: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            reserve: with_lib(include_str!("../../../lua/reserve.lua")),
            convert_hold: with_lib(include_str!("../../../lua/convert_hold.lua")),
            release: with_lib(include_str!("../../../lua/release.lua")),
            commit_sold: with_lib(include_str!("../../../lua/commit_sold.lua")),
            sweep: with_lib(include_str!("../../../lua/sweep.lua")),
            create_order: with_lib(include_str!("../../../lua/create_order.lua")),
            decide_order: with_lib(include_str!("../../../lua/decide_order.lua")),
            load_sku: with_lib(include_str!("../../../lua/load_sku.lua")),
            set_meta: with_lib(include_str!("../../../lua/set_meta.lua")),
            note_placing: with_lib(include_str!("../../../lua/note_placing.lua")),
            adjust_stock: with_lib(include_str!("../../../lua/adjust_stock.lua")),
            raise_seq: with_lib(include_str!("../../../lua/raise_seq.lua")),
            mark_written: with_lib(include_str!("../../../lua/mark_written.lua")),
            restore_order: with_lib(include_str!("../../../lua/restore_order.lua")),
            rate_limit: with_lib(include_str!("../../../lua/rate_limit.lua")),
            stage_hash: with_lib(include_str!("../../../lua/stage_hash.lua")),
            unlock: with_lib(include_str!("../../../lua/unlock.lua")),
            note_due: with_lib(include_str!("../../../lua/note_due.lua")),
            settle_due: with_lib(include_str!("../../../lua/settle_due.lua")),
            claim_idempotency: with_lib(include_str!("../../../lua/claim_idempotency.lua")),
            settle_idempotency: with_lib(include_str!("../../../lua/settle_idempotency.lua")),
            next_order_id: with_lib(include_str!("../../../lua/next_order_id.lua")),
            set_aside: with_lib(include_str!("../../../lua/set_aside.lua")),
            replay_set_aside: with_lib(include_str!("../../../lua/replay_set_aside.lua")),
            return_to_cart: with_lib(include_str!("../../../lua/return_to_cart.lua")),
            fence_order: with_lib(include_str!("../../../lua/fence_order.lua")),
            note_account: with_lib(include_str!("../../../lua/note_account.lua")),
            hold_lease: with_lib(include_str!("../../../lua/hold_lease.lua")),
            note_reader: with_lib(include_str!("../../../lua/note_reader.lua")),
            drop_idle_consumers: with_lib(include_str!("../../../lua/drop_idle_consumers.lua")),
        }
    }

    pub fn all(&self) -> [(&'static str, &Script); 30] {
        [
            ("reserve", &self.reserve),
            ("convert_hold", &self.convert_hold),
            ("release", &self.release),
            ("commit_sold", &self.commit_sold),
            ("sweep", &self.sweep),
            ("create_order", &self.create_order),
            ("decide_order", &self.decide_order),
            ("load_sku", &self.load_sku),
            ("set_meta", &self.set_meta),
            ("note_placing", &self.note_placing),
            ("adjust_stock", &self.adjust_stock),
            ("raise_seq", &self.raise_seq),
            ("mark_written", &self.mark_written),
            ("restore_order", &self.restore_order),
            ("rate_limit", &self.rate_limit),
            ("stage_hash", &self.stage_hash),
            ("unlock", &self.unlock),
            ("note_due", &self.note_due),
            ("settle_due", &self.settle_due),
            ("claim_idempotency", &self.claim_idempotency),
            ("settle_idempotency", &self.settle_idempotency),
            ("next_order_id", &self.next_order_id),
            ("set_aside", &self.set_aside),
            ("replay_set_aside", &self.replay_set_aside),
            ("return_to_cart", &self.return_to_cart),
            ("fence_order", &self.fence_order),
            ("note_account", &self.note_account),
            ("hold_lease", &self.hold_lease),
            ("note_reader", &self.note_reader),
            ("drop_idle_consumers", &self.drop_idle_consumers),
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// The span of one Lua script call (or of one pipeline of `calls` calls of it), with
/// OpenTelemetry's database client attribute names. Debug level: it exists only when traces are
/// exported (see `telemetry::init_tracing`) or the logs ask for debug.
fn script_span(name: &'static str, calls: usize) -> tracing::Span {
    let span = tracing::debug_span!(
        "redis.script",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system = "redis",
        db.operation.name = "EVALSHA",
        db.operation.batch.size = tracing::field::Empty,
        script = name,
    );
    // A batch is two calls or more (the semantic conventions).
    if calls > 1 {
        span.record("db.operation.batch.size", calls);
    }
    span
}

/// Scripts whose effect nobody needs to know when their reply is lost: a rate-limit token, an
/// `Idempotency-Key` claim or settlement (its lease ends it), an order id (ids may skip), the
/// sweeper's due index and a load's staging (redone by their next pass), a note of an account
/// (a cache of MySQL, written again until it is heard), the leases of shared work and of the
/// outbox partitions, the writers' heartbeats and consumer tidying (taken again, renewed or
/// redone at their next tick; a lease taken unheard runs out). A lost reply of these is
/// "unavailable, nothing was changed" as far as the caller is concerned.
const QUIET: [&str; 12] = [
    "rate_limit",
    "note_placing",
    "claim_idempotency",
    "settle_idempotency",
    "next_order_id",
    "note_due",
    "settle_due",
    "stage_hash",
    "note_account",
    "hold_lease",
    "note_reader",
    "drop_idle_consumers",
];

/// The error of a script call that failed. One that may have been sent and run, its reply not
/// heard (a response timeout, a connection that broke or went away while the call was on it),
/// is [`AppError::OutcomeUnknown`]: never "nothing was changed". Refused before it was sent (no
/// connection to Redis could be made) or answered with a server error (OOM, BUSY, LOADING, ...:
/// refused before its first write) it is the plain mapping: nothing was changed.
pub(super) fn call_error(name: &'static str, e: redis::RedisError) -> AppError {
    let unheard = e.code().is_none()
        && !e.is_connection_refusal()
        && (e.is_timeout() || e.is_io_error() || e.is_connection_dropped());
    if unheard && !QUIET.contains(&name) {
        AppError::OutcomeUnknown(format!(
            "redis: the {name} script's reply was not heard ({e}); it may have run"
        ))
    } else {
        AppError::from(e)
    }
}

impl Redis {
    /// Loads every script, so the first requests do not pay for it.
    pub async fn load_scripts(&self) -> AppResult<()> {
        let mut conn = self.conn();
        for (_, s) in self.scripts.all() {
            s.load_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Scripts keep the sale's state; none runs while Redis may evict it. Rate-limit buckets
    /// are exempt: losing one only forgets a count; so are the notes of accounts: losing one
    /// only sends the next token check of that user to MySQL; so are the leases (of shared
    /// work, of the outbox partitions), the writers' heartbeats and consumer tidying: they hold
    /// none of the sale's state (a lease lost to eviction is only a takeover).
    /// Nor while Redis is behind MySQL (it came back from older persistence), until
    /// `flashsale rebuild-cache` ran (whose own handle, [`Redis::for_repair`], is exempt).
    async fn refuse_if_evicting(&self, script: &'static str) -> AppResult<()> {
        if matches!(
            script,
            "rate_limit" | "note_account" | "hold_lease" | "note_reader" | "drop_idle_consumers"
        ) {
            return Ok(());
        }
        if let Some(e) = self.eviction.refusal() {
            return Err(e);
        }
        if !self.repair
            && let Some(e) = self.behind_refusal().await?
        {
            return Err(e);
        }
        Ok(())
    }

    /// Whether stock scripts are refused now (503) as seen in process, without asking Redis:
    /// an unsafe eviction policy, or Redis behind MySQL.
    pub fn refuses_sales(&self) -> bool {
        self.eviction.refusal().is_some() || self.is_behind()
    }

    pub(super) async fn eval(
        &self,
        name: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> AppResult<Reply> {
        self.refuse_if_evicting(name).await?;
        let reply = self
            .invoke(name, script, keys, args, 1)
            .await
            .map_err(|e| call_error(name, e))?;
        if let Some(key) = keys.first() {
            self.after_durable(name, key).await?;
        }
        Reply::parse(name, reply)
    }

    /// Calls a script whose reply is one reply per entry (lua/reserve.lua), `entries` of them.
    /// A failure of the whole call is a [`BatchError`], which every entry's caller gets a copy
    /// of.
    pub(super) async fn eval_all(
        &self,
        name: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        entries: usize,
    ) -> Result<Vec<AppResult<Reply>>, BatchError> {
        self.refuse_if_evicting(name).await.map_err(BatchError)?;
        let reply = self
            .invoke(name, script, keys, args, entries)
            .await
            .map_err(|e| BatchError(call_error(name, e)))?;
        if let Some(key) = keys.first() {
            self.after_durable(name, key).await.map_err(BatchError)?;
        }
        match reply {
            Value::Array(items) => Ok(items.into_iter().map(|v| Reply::parse(name, v)).collect()),
            other => Err(BatchError(AppError::internal(format!(
                "script {name}: expected one reply per entry, got {other:?}"
            )))),
        }
    }

    /// One EVALSHA (loading the script on NOSCRIPT) of `entries` entries, timed and counted.
    async fn invoke(
        &self,
        name: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        entries: usize,
    ) -> Result<Value, redis::RedisError> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let span = script_span(name, entries);
        let started = Instant::now();
        let r: Result<Value, redis::RedisError> = inv
            .invoke_async(&mut self.conn_for(name))
            .instrument(span.clone())
            .await;
        metrics::histogram!("flashsale_lua_duration_seconds", "script" => name)
            .record(started.elapsed().as_secs_f64());
        if r.is_err() {
            metrics::counter!("flashsale_lua_errors_total", "script" => name).increment(1);
            span.record("otel.status_code", "error");
        }
        r
    }

    /// Runs one script over many key/arg sets in a single pipeline (EVALSHA; the scripts are
    /// loaded again once if Redis lost them). Every use is idempotent, so a retry is safe.
    pub(super) async fn eval_many(
        &self,
        name: &'static str,
        script: &Script,
        calls: &[(Vec<String>, Vec<String>)],
    ) -> AppResult<Vec<Reply>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        self.refuse_if_evicting(name).await?;
        // One pipeline per slot on a cluster (each call's keys share one slot).
        let mut pipe = SlotPipe::new();
        for (keys, args) in calls {
            let Some(first) = keys.first() else {
                return Err(AppError::internal(format!(
                    "script {name}: a call without keys"
                )));
            };
            pipe.add(
                first,
                redis::cmd("EVALSHA")
                    .arg(script.get_hash())
                    .arg(keys.len())
                    .arg(keys)
                    .arg(args),
            );
        }
        let span = script_span(name, calls.len());
        let started = Instant::now();
        let r: AppResult<Vec<Value>> = async {
            let r = pipe.query(&self.conn_for(name)).await;
            if matches!(&r, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
            {
                // Loaded on every master (a cluster's new master after a failover has none).
                self.load_scripts().await?;
                return Ok(pipe.query(&self.conn_for(name)).await?);
            }
            Ok(r?)
        }
        .instrument(span.clone())
        .await;
        metrics::histogram!("flashsale_lua_duration_seconds", "script" => name)
            .record(started.elapsed().as_secs_f64() / calls.len() as f64);
        if r.is_err() {
            span.record("otel.status_code", "error");
        }
        let r = r?;
        self.after_durable_many(name, calls.iter().filter_map(|(keys, _)| keys.first()))
            .await?;
        r.into_iter().map(|v| Reply::parse(name, v)).collect()
    }
}

/// A script's reply: `{tag, values...}` (or a bare array of values).
pub(super) struct Reply {
    script: &'static str,
    items: Vec<Value>,
}

impl Reply {
    pub(super) fn parse(script: &'static str, v: Value) -> AppResult<Self> {
        match v {
            Value::Array(items) => Ok(Reply { script, items }),
            Value::Int(n) => Ok(Reply {
                script,
                items: vec![Value::Int(n)],
            }),
            other => Err(AppError::internal(format!(
                "script {script}: expected an array, got {other:?}"
            ))),
        }
    }

    pub(super) fn tag(&self) -> &str {
        match self.items.first() {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).unwrap_or(""),
            Some(Value::SimpleString(s)) => s,
            _ => "",
        }
    }

    /// Whether the reply has an item `i` (for optional trailing items).
    pub(super) fn has(&self, i: usize) -> bool {
        i < self.items.len()
    }

    pub(super) fn int(&self, i: usize) -> AppResult<i64> {
        match self.items.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            Some(Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.malformed(i)),
            _ => Err(self.malformed(i)),
        }
    }

    pub(super) fn str_at(&self, i: usize) -> AppResult<String> {
        match self.items.get(i) {
            Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            _ => Err(self.malformed(i)),
        }
    }

    pub(super) fn ints_at(&self, i: usize) -> AppResult<Vec<i64>> {
        match self.items.get(i) {
            Some(Value::Array(vs)) => vs
                .iter()
                .map(|v| match v {
                    Value::Int(n) => Some(*n),
                    Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.malformed(i)),
            _ => Err(self.malformed(i)),
        }
    }

    fn malformed(&self, i: usize) -> AppError {
        AppError::internal(format!(
            "script {}: reply item {i} malformed: {:?}",
            self.script, self.items
        ))
    }

    pub(super) fn unexpected(&self, tag: &str) -> AppError {
        AppError::internal(format!("script {}: unexpected reply {tag:?}", self.script))
    }
}
