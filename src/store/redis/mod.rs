//! Redis access: one shared multiplexed connection for every request (concurrent requests are
//! pipelined onto it), the Lua scripts, and typed outcomes of each script.

pub mod idempotency;
pub mod keys;
pub mod outbox;
pub mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, Value};
use tracing::Instrument as _;

pub use keys::{Keys, Rid, SkuKeys};
use scripts::Scripts;

use crate::config::StoresConfig;
use crate::domain::Sku;
use crate::error::{AppError, AppResult};

/// Field/value pairs per staging call of a load (lua/stage_hash.lua takes at most 2,000).
const STAGE_CHUNK: usize = 1_000;
/// Staging calls sent in one pipeline.
const STAGE_CALLS_PER_PIPELINE: usize = 16;
/// How long a load's staged lists live without a new chunk (a loader that died leaves nothing).
const STAGE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    pub keys: Keys,
    scripts: Arc<Scripts>,
    eviction: Arc<EvictionGuard>,
    rollback: Arc<RollbackGuard>,
    /// A handle for `flashsale rebuild-cache`: its scripts run while sales are refused.
    repair: bool,
    /// Deadlines noted since the last flush, earliest per sku (see [`Redis::note_due`]).
    due_notes: Arc<Mutex<HashMap<Sku, i64>>>,
}

/// The only `maxmemory-policy` under which Redis never drops a key by itself. Any other policy
/// may evict stock counters, ledgers or order records: oversell and lost orders.
pub const REQUIRED_POLICY: &str = "noeviction";

/// What this instance last saw of Redis's `maxmemory-policy`.
struct EvictionGuard {
    /// 0: not seen yet, 1: `noeviction`, 2: another policy.
    state: AtomicU8,
    policy: std::sync::Mutex<String>,
}

impl EvictionGuard {
    const UNKNOWN: u8 = 0;
    const SAFE: u8 = 1;
    const UNSAFE: u8 = 2;

    fn record(&self, policy: &str) {
        let safe = policy == REQUIRED_POLICY;
        if let Ok(mut p) = self.policy.lock() {
            p.clear();
            p.push_str(policy);
        }
        self.state.store(
            if safe { Self::SAFE } else { Self::UNSAFE },
            Ordering::Relaxed,
        );
        metrics::gauge!("flashsale_redis_eviction_safe").set(if safe { 1.0 } else { 0.0 });
    }

    /// The refusal while the last policy seen lets Redis evict keys.
    fn refusal(&self) -> Option<AppError> {
        if self.state.load(Ordering::Relaxed) != Self::UNSAFE {
            return None;
        }
        let policy = self.policy.lock().map(|p| p.clone()).unwrap_or_default();
        Some(unsafe_policy(&policy))
    }
}

fn behind_refusal(why: &str) -> AppError {
    AppError::Unavailable(format!(
        "redis came back behind MySQL ({why}): nothing is sold until `flashsale rebuild-cache` ran"
    ))
}

fn unsafe_policy(policy: &str) -> AppError {
    AppError::Unavailable(format!(
        "redis maxmemory-policy is {policy}: it may evict stock and orders, so nothing is sold \
         until it is {REQUIRED_POLICY}"
    ))
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

/// What this instance knows about Redis going back in time (restarted from older persistence):
/// the ids it saw handed out, the order id mark MySQL holds, and whether sales are refused until
/// `flashsale rebuild-cache` ran.
#[derive(Default)]
struct RollbackGuard {
    /// No id at or below it may be handed out again (the largest id seen, or MySQL's largest).
    floor: AtomicU64,
    /// The order id mark last read from MySQL: no id above it may be handed out.
    limit: AtomicU64,
    behind: AtomicBool,
    /// Why sales stop, and the rebuild marker seen then (`None`: not read yet).
    why: std::sync::Mutex<(String, Option<Option<String>>)>,
}

/// What next_order_id.lua answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextId {
    Id(u64),
    /// The counter is missing: raise it from MySQL first.
    Lost,
    /// The next id is past the id mark: raise the mark in MySQL first (the counter is given).
    Block(u64),
    /// The counter is below an id already handed out: Redis went back (the counter is given).
    Behind(u64),
}

impl Redis {
    /// Connects lazily: the service starts while Redis is down and answers 503 until it is up.
    pub fn connect(cfg: &StoresConfig) -> anyhow::Result<Self> {
        let client = redis::Client::open(cfg.redis_url.as_str())?;
        let mgr = ConnectionManagerConfig::new()
            .set_response_timeout(Some(cfg.redis_timeout))
            .set_connection_timeout(Some(cfg.redis_timeout))
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, mgr)?;
        Ok(Redis {
            conn,
            keys: Keys::new(&cfg.redis_prefix),
            scripts: Arc::new(Scripts::new()),
            eviction: Arc::new(EvictionGuard {
                state: AtomicU8::new(EvictionGuard::UNKNOWN),
                policy: std::sync::Mutex::new(String::new()),
            }),
            rollback: Arc::default(),
            repair: false,
            due_notes: Arc::default(),
        })
    }

    /// Reads Redis's `maxmemory-policy` (from INFO, which managed services that rename CONFIG
    /// still answer) and remembers it: while it is not `noeviction`, every script that changes
    /// stock or orders answers 503 without running. Err(Unavailable) names an unsafe policy.
    pub async fn check_eviction_policy(&self) -> AppResult<()> {
        let mut conn = self.conn();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let policy = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("maxmemory_policy:"))
            .ok_or_else(|| AppError::internal("redis INFO memory has no maxmemory_policy"))?;
        self.eviction.record(policy);
        match self.eviction.refusal() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The 503 to answer while Redis may evict keys (the last check saw another policy).
    pub fn eviction_refusal(&self) -> Option<AppError> {
        self.eviction.refusal()
    }

    /// The same Redis for `flashsale rebuild-cache`: its scripts run while this instance refuses
    /// sales because Redis went back.
    pub fn for_repair(&self) -> Redis {
        Redis {
            repair: true,
            ..self.clone()
        }
    }

    /// The floor and block limit next_order_id.lua is called with.
    pub fn id_bounds(&self) -> (u64, u64) {
        (
            self.rollback.floor.load(Ordering::Relaxed),
            self.rollback.limit.load(Ordering::Relaxed),
        )
    }

    /// Raises the floor (an id handed out, or MySQL's largest) and the block limit (the mark).
    pub fn raise_id_bounds(&self, floor: u64, limit: u64) {
        self.rollback.floor.fetch_max(floor, Ordering::Relaxed);
        self.rollback.limit.fetch_max(limit, Ordering::Relaxed);
    }

    /// Starts refusing every stock and order script (503) because Redis went back: it lost
    /// decisions MySQL already holds. Sales resume once `flashsale rebuild-cache` wrote its
    /// marker. Returns the refusal.
    pub async fn mark_behind(&self, why: String) -> AppError {
        let marker = self.rebuild_marker().await.ok();
        let (first, refusal) = {
            let mut g = self.rollback.why.lock().unwrap_or_else(|p| p.into_inner());
            let first = !self.rollback.behind.swap(true, Ordering::SeqCst);
            if first {
                *g = (why, marker);
            }
            (first, behind_refusal(&g.0))
        };
        if first {
            metrics::counter!("flashsale_redis_rollbacks_total").increment(1);
            metrics::gauge!("flashsale_redis_behind").set(1.0);
            tracing::error!(
                reason = %refusal,
                "Redis went back in time (restarted from older persistence): it lacks decisions \
                 MySQL holds; refusing every sale until `flashsale rebuild-cache` ran"
            );
            // The other instances' ticks find it here (they may hand out no id to notice).
            let set: Result<(), _> = self.conn().set(self.keys.behind(), 1).await;
            if let Err(e) = set {
                tracing::warn!(error = %e, "could not tell the other instances Redis is behind");
            }
        }
        refusal
    }

    /// The 503 to answer while Redis is behind MySQL and no rebuild ran since; `None` once
    /// `flashsale rebuild-cache` wrote a new marker (checked here: one GET while refusing).
    pub async fn behind_refusal(&self) -> AppResult<Option<AppError>> {
        if !self.rollback.behind.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let now = self.rebuild_marker().await?;
        let mut g = self.rollback.why.lock().unwrap_or_else(|p| p.into_inner());
        if !self.rollback.behind.load(Ordering::SeqCst) {
            return Ok(None);
        }
        match &g.1 {
            None => g.1 = Some(now),
            Some(seen) if *seen != now => {
                self.rollback.behind.store(false, Ordering::SeqCst);
                metrics::gauge!("flashsale_redis_behind").set(0.0);
                tracing::warn!(
                    "`flashsale rebuild-cache` ran after Redis went back: selling again"
                );
                return Ok(None);
            }
            Some(_) => {}
        }
        Ok(Some(behind_refusal(&g.0)))
    }

    /// Drops a sku's stock counters and ledgers (rebuild-cache's forced reload, before it loads
    /// them again from MySQL): stock, holds and order lines, unwritten sold lines, buyers, and
    /// each reservation's TTL key. Its catalog entry stays.
    pub async fn drop_sku_counters(&self, sku: Sku) -> AppResult<()> {
        let k = self.keys.sku(sku);
        let mut conn = self.conn();
        let rids: Vec<String> = conn.hkeys(k.res()).await?;
        let mut keys = vec![k.stock(), k.res(), k.exp(), k.sold(), k.users()];
        for chunk in rids.chunks(1_000) {
            let ttl: Vec<String> = chunk
                .iter()
                .map(|r| format!("{}{r}", k.ttl_base()))
                .collect();
            let _: () = conn.del(ttl).await?;
        }
        keys.dedup();
        let _: () = conn.del(keys).await?;
        Ok(())
    }

    /// Whether this instance refuses sales because Redis went back (as last seen).
    pub fn is_behind(&self) -> bool {
        self.rollback.behind.load(Ordering::SeqCst)
    }

    /// Written last by `flashsale rebuild-cache`: instances refusing sales resume when it changes.
    pub async fn rebuild_marker(&self) -> AppResult<Option<String>> {
        Ok(self.conn().get(self.keys.rebuilt()).await?)
    }

    /// Whether an instance found Redis behind MySQL and no rebuild ran since.
    pub async fn behind_flagged(&self) -> AppResult<bool> {
        Ok(self.conn().exists(self.keys.behind()).await?)
    }

    /// Clears the flag, then writes the marker (rebuild-cache's last step).
    pub async fn write_rebuild_marker(&self) -> AppResult<()> {
        let _: () = self.conn().del(self.keys.behind()).await?;
        let token = format!(
            "{}-{:016x}",
            chrono::Utc::now().timestamp_millis(),
            rand::random::<u64>()
        );
        let _: () = self.conn().set(self.keys.rebuilt(), token).await?;
        Ok(())
    }

    /// The order id counter as Redis holds it (`None`: missing).
    pub async fn order_seq(&self) -> AppResult<Option<u64>> {
        Ok(self.conn().get(self.keys.order_seq()).await?)
    }

    /// A handle on the shared connection (cheap: clones share one socket).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Loads every script, so the first requests do not pay for it.
    pub async fn load_scripts(&self) -> AppResult<()> {
        let mut conn = self.conn();
        for (_, s) in self.scripts.all() {
            s.load_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Scripts keep the sale's state; none runs while Redis may evict it. Rate-limit buckets
    /// are exempt: losing one only forgets a count.
    /// Nor while Redis is behind MySQL (it came back from older persistence), until
    /// `flashsale rebuild-cache` ran (whose own handle, [`Redis::for_repair`], is exempt).
    async fn refuse_if_evicting(&self, script: &'static str) -> AppResult<()> {
        if script == "rate_limit" {
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

    async fn eval(
        &self,
        name: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> AppResult<Reply> {
        self.refuse_if_evicting(name).await?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let span = script_span(name, 1);
        let started = Instant::now();
        let r: Result<Value, redis::RedisError> = inv
            .invoke_async(&mut self.conn())
            .instrument(span.clone())
            .await;
        metrics::histogram!("flashsale_lua_duration_seconds", "script" => name)
            .record(started.elapsed().as_secs_f64());
        if r.is_err() {
            metrics::counter!("flashsale_lua_errors_total", "script" => name).increment(1);
            span.record("otel.status_code", "error");
        }
        Reply::parse(name, r?)
    }

    /// Runs one script over many key/arg sets in a single pipeline (EVALSHA; the scripts are
    /// loaded again once if Redis lost them). Every use is idempotent, so a retry is safe.
    async fn eval_many(
        &self,
        name: &'static str,
        script: &Script,
        calls: &[(Vec<String>, Vec<String>)],
    ) -> AppResult<Vec<Reply>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        self.refuse_if_evicting(name).await?;
        let mut pipe = redis::pipe();
        for (keys, args) in calls {
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(keys.len())
                .arg(keys)
                .arg(args);
        }
        let span = script_span(name, calls.len());
        let started = Instant::now();
        let r: AppResult<Vec<Value>> = async {
            let r = pipe.query_async(&mut self.conn()).await;
            if matches!(&r, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
            {
                self.load_scripts().await?;
                return Ok(pipe.query_async(&mut self.conn()).await?);
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
        r?.into_iter().map(|v| Reply::parse(name, v)).collect()
    }

    /// `commit_sold` for many paid lines at once: (sku, order_id) -> what was found.
    pub async fn commit_sold_many(&self, lines: &[(Sku, u64)]) -> AppResult<Vec<Committed>> {
        let calls: Vec<_> = lines
            .iter()
            .map(|(sku, order_id)| {
                let k = self.keys.sku(*sku);
                let rid = Rid::OrderLine {
                    order_id: *order_id,
                };
                (
                    vec![k.stock(), k.res(), k.exp(), k.ttl(&rid), k.sold()],
                    vec![rid.to_string()],
                )
            })
            .collect();
        self.eval_many("commit_sold", &self.scripts.commit_sold, &calls)
            .await?
            .into_iter()
            .map(|r| {
                let alloc = parse_alloc(&r.str_at(2)?);
                Ok(match r.tag() {
                    "ok" => Committed::Now(alloc),
                    "sold" => Committed::Before(alloc),
                    "none" => Committed::WrittenBack,
                    other => return Err(r.unexpected(other)),
                })
            })
            .collect()
    }

    /// `release` of whole order lines, many at once (follow-up of cancelled or failed orders).
    pub async fn release_lines(&self, lines: &[(Sku, u64)]) -> AppResult<u64> {
        let calls: Vec<_> = lines
            .iter()
            .map(|(sku, order_id)| {
                let k = self.keys.sku(*sku);
                let rid = Rid::OrderLine {
                    order_id: *order_id,
                };
                (
                    vec![k.stock(), k.users(), k.res(), k.exp(), k.ttl(&rid)],
                    vec![rid.to_string(), "0".into()],
                )
            })
            .collect();
        let mut released = 0;
        for r in self
            .eval_many("release", &self.scripts.release, &calls)
            .await?
        {
            released += r.int(1)? as u64;
        }
        Ok(released)
    }

    /// `mark_written` for many paid lines at once.
    pub async fn mark_written_many(&self, lines: &[(Sku, u64)]) -> AppResult<()> {
        let calls: Vec<_> = lines
            .iter()
            .map(|(sku, order_id)| {
                let k = self.keys.sku(*sku);
                (
                    vec![k.stock(), k.sold()],
                    vec![
                        Rid::OrderLine {
                            order_id: *order_id,
                        }
                        .to_string(),
                    ],
                )
            })
            .collect();
        self.eval_many("mark_written", &self.scripts.mark_written, &calls)
            .await?;
        Ok(())
    }

    // ---- stock and catalog -------------------------------------------------------------

    /// Loads a sku's catalog entry and stock into Redis, each only where missing; with the
    /// stock, the units sold so far and what each customer bought. Lists of any length: the
    /// warehouses and buyers are staged in bounded chunks first, and the stock hash, whose
    /// existence means "loaded", is written last (lua/load_sku.lua).
    pub async fn load_sku(&self, sku: Sku, meta: &SkuMeta, load: &SkuLoad) -> AppResult<()> {
        // While the stock is loaded nothing needs staging; the script says when it must be.
        if self.try_load_sku(sku, meta, load, None).await? {
            let token: u64 = rand::random();
            self.stage_load(sku, token, load).await?;
            if self.try_load_sku(sku, meta, load, Some(token)).await? {
                return Err(AppError::Unavailable(format!(
                    "sku {sku}: its staged load expired before it completed"
                )));
            }
        }
        let _: () = self.conn().sadd(self.keys.skus(), sku.get()).await?;
        Ok(())
    }

    /// One call of lua/load_sku.lua; `true` when it wants (again) staged lists.
    async fn try_load_sku(
        &self,
        sku: Sku,
        meta: &SkuMeta,
        load: &SkuLoad,
        staged: Option<u64>,
    ) -> AppResult<bool> {
        let k = self.keys.sku(sku);
        let token = staged.unwrap_or(0);
        let pairs = meta.pairs();
        let available: u64 = load.stock.iter().map(|(_, n)| *n).sum();
        let mut args: Vec<String> = vec![
            pairs.len().to_string(),
            if staged.is_some() { "1" } else { "0" }.into(),
            load.stock.len().to_string(),
            load.bought.len().to_string(),
            available.to_string(),
            load.sold_total.to_string(),
        ];
        for (f, v) in pairs {
            args.push(f.to_string());
            args.push(v);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = self
            .eval(
                "load_sku",
                &self.scripts.load_sku,
                &[
                    &k.meta(),
                    &k.stock(),
                    &k.users(),
                    &k.staging(token, "stock"),
                    &k.staging(token, "users"),
                ],
                &args,
            )
            .await?;
        Ok(matches!(r.tag(), "stage" | "incomplete"))
    }

    /// Writes a load's warehouses and buyers into its staging hashes, `STAGE_CHUNK` pairs a call.
    async fn stage_load(&self, sku: Sku, token: u64, load: &SkuLoad) -> AppResult<()> {
        let k = self.keys.sku(sku);
        let ttl = STAGE_TTL.as_millis().to_string();
        let mut calls: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        for chunk in load.stock.chunks(STAGE_CHUNK) {
            let mut args = vec![ttl.clone()];
            for (w, n) in chunk {
                args.push(format!("w{w}"));
                args.push(n.to_string());
            }
            calls.push((vec![k.staging(token, "stock")], args));
        }
        for chunk in load.bought.chunks(STAGE_CHUNK) {
            let mut args = vec![ttl.clone()];
            for (u, n) in chunk {
                args.push(u.to_string());
                args.push(n.to_string());
            }
            calls.push((vec![k.staging(token, "users")], args));
        }
        for batch in calls.chunks(STAGE_CALLS_PER_PIPELINE) {
            self.eval_many("stage_hash", &self.scripts.stage_hash, batch)
                .await?;
        }
        Ok(())
    }

    /// Replaces a sku's catalog entry (after MySQL committed the change).
    pub async fn set_meta(&self, sku: Sku, meta: &SkuMeta) -> AppResult<()> {
        let mut args = Vec::new();
        for (f, v) in meta.pairs() {
            args.push(f.to_string());
            args.push(v);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.eval(
            "set_meta",
            &self.scripts.set_meta,
            &[&self.keys.sku(sku).meta()],
            &args,
        )
        .await?;
        Ok(())
    }

    /// Applies (or, `undo`, takes back) the admin stock change `token`; repeating either is
    /// harmless (lua/adjust_stock.lua).
    pub async fn adjust_stock(
        &self,
        sku: Sku,
        warehouse_id: u32,
        delta: i64,
        token: u64,
        undo: bool,
    ) -> AppResult<AdjustOutcome> {
        let k = self.keys.sku(sku);
        let r = self
            .eval(
                "adjust_stock",
                &self.scripts.adjust_stock,
                &[&k.stock(), &k.adjustment(token)],
                &[
                    &warehouse_id.to_string(),
                    &delta.to_string(),
                    if undo { "undo" } else { "apply" },
                ],
            )
            .await?;
        Ok(match r.tag() {
            "ok" => AdjustOutcome::Adjusted {
                here: r.int(1)?,
                available: r.int(2)?,
            },
            "short" => AdjustOutcome::Short {
                available_here: r.int(1)?,
            },
            "not_loaded" => AdjustOutcome::NotLoaded,
            "same" => AdjustOutcome::Same,
            other => return Err(r.unexpected(other)),
        })
    }

    /// The sku's counters, or `None` when not loaded.
    pub async fn stock(&self, sku: Sku) -> AppResult<Option<StockSnapshot>> {
        let flat: Vec<(String, i64)> = self.conn().hgetall(self.keys.sku(sku).stock()).await?;
        if flat.is_empty() {
            return Ok(None);
        }
        Ok(Some(StockSnapshot::from_fields(flat)))
    }

    // ---- reservations ------------------------------------------------------------------

    pub async fn reserve(&self, req: ReserveRequest) -> AppResult<ReserveOutcome> {
        let k = self.keys.sku(req.sku);
        let (kind, ms) = match req.deadline {
            Deadline::In(d) => ("ttl", d.as_millis().to_string()),
            Deadline::At(ms) => ("at", ms.to_string()),
        };
        let mode = match req.mode {
            ReserveMode::Add => "add",
            ReserveMode::Once => "once",
            ReserveMode::Restore => "restore",
        };
        let r = self
            .eval(
                "reserve",
                &self.scripts.reserve,
                &[
                    &k.meta(),
                    &k.stock(),
                    &k.users(),
                    &k.res(),
                    &k.exp(),
                    &k.ttl(&req.rid),
                ],
                &[
                    &req.user_id.to_string(),
                    &req.count.to_string(),
                    &req.rid.to_string(),
                    kind,
                    &ms,
                    mode,
                ],
            )
            .await?;
        if r.tag() == "ok" {
            self.note_due(req.sku, r.int(2)?);
        }
        Ok(match r.tag() {
            "ok" => ReserveOutcome::Reserved {
                units: r.int(1)? as u32,
                deadline_ms: r.int(2)?,
                unit_price: r.int(3)? as u64,
                available: r.int(4)?,
                name: r.str_at(5).unwrap_or_default(),
            },
            "out_of_stock" => ReserveOutcome::OutOfStock {
                available: r.int(1)?,
            },
            "limit_exceeded" => ReserveOutcome::LimitExceeded {
                has: r.int(1)?,
                limit: r.int(2)?,
            },
            "sale_not_active" => ReserveOutcome::SaleNotActive,
            "too_large" => ReserveOutcome::TooLarge {
                units: r.int(1)?,
                unit_price: r.int(2)? as u64,
            },
            "not_loaded" => ReserveOutcome::NotLoaded,
            other => return Err(r.unexpected(other)),
        })
    }

    pub async fn convert_hold(
        &self,
        sku: Sku,
        user_id: u64,
        order_id: u64,
        deadline_ms: i64,
    ) -> AppResult<ConvertOutcome> {
        let k = self.keys.sku(sku);
        let r = self
            .eval(
                "convert_hold",
                &self.scripts.convert_hold,
                &[
                    &k.meta(),
                    &k.stock(),
                    &k.users(),
                    &k.res(),
                    &k.exp(),
                    &k.ttl(&Rid::Hold { user_id }),
                    &k.ttl(&Rid::OrderLine { order_id }),
                    &k.hold_deadline(order_id),
                ],
                &[
                    &user_id.to_string(),
                    &order_id.to_string(),
                    &deadline_ms.to_string(),
                ],
            )
            .await?;
        if r.tag() == "ok" {
            self.note_due(sku, r.int(3)?);
        }
        Ok(match r.tag() {
            "ok" => ConvertOutcome::Converted {
                units: r.int(1)? as u32,
                unit_price: r.int(2)? as u64,
                deadline_ms: r.int(3)?,
            },
            "no_hold" => ConvertOutcome::NoHold,
            "sale_not_active" => ConvertOutcome::SaleNotActive {
                released: r.int(1)? as u32,
            },
            "too_large" => ConvertOutcome::TooLarge {
                units: r.int(1)?,
                unit_price: r.int(2)? as u64,
            },
            "not_loaded" => ConvertOutcome::NotLoaded,
            other => return Err(r.unexpected(other)),
        })
    }

    /// Turns an order's line on `sku` back into the customer's cart hold (a checkout that will
    /// record no order); see lua/return_to_cart.lua.
    pub async fn return_to_cart(
        &self,
        sku: Sku,
        user_id: u64,
        order_id: u64,
    ) -> AppResult<Returned> {
        let k = self.keys.sku(sku);
        let r = self
            .eval(
                "return_to_cart",
                &self.scripts.return_to_cart,
                &[
                    &k.stock(),
                    &k.users(),
                    &k.res(),
                    &k.exp(),
                    &k.ttl(&Rid::Hold { user_id }),
                    &k.ttl(&Rid::OrderLine { order_id }),
                    &k.hold_deadline(order_id),
                ],
                &[&user_id.to_string(), &order_id.to_string()],
            )
            .await?;
        Ok(match r.tag() {
            "held" => {
                self.note_due(sku, r.int(2)?);
                Returned::Held(r.int(1)? as u32)
            }
            "released" => Returned::Released(r.int(1)? as u32),
            "none" => Returned::None,
            other => return Err(r.unexpected(other)),
        })
    }

    /// The units of `order_id`'s line on each sku, if it has one there.
    pub async fn order_lines(&self, order_id: u64, skus: &[Sku]) -> AppResult<Vec<Option<u32>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let rid = Rid::OrderLine { order_id }.to_string();
        let mut pipe = redis::pipe();
        for sku in skus {
            pipe.hget(self.keys.sku(*sku).res(), &rid);
        }
        let raw: Vec<Option<String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(raw
            .into_iter()
            .map(|v| v.and_then(|v| v.split('|').nth(1).and_then(|c| c.parse().ok())))
            .collect())
    }

    /// Makes sure `order_id` is never recorded from here on (lua/fence_order.lua): `None` when
    /// fenced, else the status of the record that exists.
    pub async fn fence_order(
        &self,
        order_id: u64,
        user_id: u64,
        keep: std::time::Duration,
    ) -> AppResult<Option<String>> {
        let r = self
            .eval(
                "fence_order",
                &self.scripts.fence_order,
                &[&self.keys.order(order_id)],
                &[&user_id.to_string(), &keep.as_millis().max(1).to_string()],
            )
            .await?;
        match r.tag() {
            "fenced" => Ok(None),
            "exists" => Ok(Some(r.str_at(1)?)),
            other => Err(r.unexpected(other)),
        }
    }

    /// Gives back `count` units of a reservation (`None`: all); what is left keeps its deadline.
    /// Returns (released, left).
    pub async fn release(&self, sku: Sku, rid: Rid, count: Option<u32>) -> AppResult<(u32, u32)> {
        let k = self.keys.sku(sku);
        let r = self
            .eval(
                "release",
                &self.scripts.release,
                &[&k.stock(), &k.users(), &k.res(), &k.exp(), &k.ttl(&rid)],
                &[&rid.to_string(), &count.unwrap_or(0).to_string()],
            )
            .await?;
        // What is left keeps its deadline, noted when it was reserved: nothing new to note.
        Ok((r.int(1)? as u32, r.int(2)? as u32))
    }

    /// Turns a paid order's line into sold units (idempotent): the units and where they came from.
    pub async fn commit_sold(&self, sku: Sku, order_id: u64) -> AppResult<Committed> {
        let k = self.keys.sku(sku);
        let rid = Rid::OrderLine { order_id };
        let r = self
            .eval(
                "commit_sold",
                &self.scripts.commit_sold,
                &[&k.stock(), &k.res(), &k.exp(), &k.ttl(&rid), &k.sold()],
                &[&rid.to_string()],
            )
            .await?;
        let alloc = parse_alloc(&r.str_at(2)?);
        Ok(match r.tag() {
            "ok" => Committed::Now(alloc),
            "sold" => Committed::Before(alloc),
            "none" => Committed::WrittenBack,
            other => return Err(r.unexpected(other)),
        })
    }

    /// The write-back lowered MySQL's on_hand for this line: its units leave `sold`.
    pub async fn mark_written(&self, sku: Sku, order_id: u64) -> AppResult<u32> {
        let k = self.keys.sku(sku);
        let r = self
            .eval(
                "mark_written",
                &self.scripts.mark_written,
                &[&k.stock(), &k.sold()],
                &[&Rid::OrderLine { order_id }.to_string()],
            )
            .await?;
        Ok(r.int(0)? as u32)
    }

    /// Gives back expired cart holds of a sku, looking at up to `limit` due entries after
    /// skipping `skip` of them; lists the due order lines found.
    pub async fn sweep(&self, sku: Sku, limit: u32, skip: u32) -> AppResult<SweepBatch> {
        let k = self.keys.sku(sku);
        let r = self
            .eval(
                "sweep",
                &self.scripts.sweep,
                &[&k.stock(), &k.users(), &k.res(), &k.exp()],
                &[&limit.to_string(), &skip.to_string()],
            )
            .await?;
        Ok(SweepBatch {
            released: r.int(0)? as u64,
            orders: r.ints_at(1)?.into_iter().map(|n| n as u64).collect(),
            looked_at: r.int(2)? as u32,
            kept: r.int(3)? as u32,
        })
    }

    // ---- the sweeper's due index -------------------------------------------------------

    /// Notes that `sku` has a reservation due at `deadline_ms`, after the script that added it
    /// to the sku's `exp`. The note waits in memory (the earliest per sku) until
    /// [`Redis::flush_due_notes`], which the sweeper calls at the start of every pass: a sale's
    /// thousands of reservations a second on a sku cost one note per sku and tick, not one more
    /// script call each. A note lost in a crash is made good by the sweeper's audit
    /// ([`Redis::audit_due`]); the reservation itself is in place either way.
    pub fn note_due(&self, sku: Sku, deadline_ms: i64) {
        let mut notes = self.due_notes.lock().unwrap_or_else(|p| p.into_inner());
        notes
            .entry(sku)
            .and_modify(|d| *d = (*d).min(deadline_ms))
            .or_insert(deadline_ms);
    }

    /// Writes the noted deadlines into the due index (lua/note_due.lua, in pipelines of 500).
    /// On an error the notes not written are kept for the next flush. Returns the skus noted.
    pub async fn flush_due_notes(&self) -> AppResult<usize> {
        let notes: Vec<(Sku, i64)> = {
            let mut pending = self.due_notes.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *pending).into_iter().collect()
        };
        for (i, chunk) in notes.chunks(500).enumerate() {
            let calls: Vec<_> = chunk
                .iter()
                .map(|(sku, at)| {
                    (
                        vec![self.keys.due(), self.keys.due_version()],
                        vec![sku.to_string(), at.to_string()],
                    )
                })
                .collect();
            if let Err(e) = self
                .eval_many("note_due", &self.scripts.note_due, &calls)
                .await
            {
                metrics::counter!("flashsale_due_notes_failed_total").increment(1);
                for (sku, at) in &notes[i * 500..] {
                    self.note_due(*sku, *at);
                }
                return Err(e);
            }
        }
        Ok(notes.len())
    }

    /// Up to `limit` skus whose due-index time is at or before `now_ms`, earliest first.
    pub async fn due_skus(&self, now_ms: i64, limit: usize) -> AppResult<Vec<Sku>> {
        let raw: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.due())
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await?;
        Ok(raw.into_iter().filter_map(|n| Sku::parse(n).ok()).collect())
    }

    /// The version of a sku's due-index entry ("0": never noted).
    pub async fn due_version(&self, sku: Sku) -> AppResult<String> {
        let v: Option<String> = self.conn().hget(self.keys.due_version(), sku.get()).await?;
        Ok(v.unwrap_or_else(|| "0".into()))
    }

    /// The earliest deadline in each sku's `exp` (None: nothing held or reserved), in one
    /// pipeline of plain reads.
    pub async fn earliest_deadlines(&self, skus: &[Sku]) -> AppResult<Vec<Option<i64>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for sku in skus {
            pipe.cmd("ZRANGE")
                .arg(self.keys.sku(*sku).exp())
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        let r: Vec<Vec<(String, f64)>> = pipe.query_async(&mut self.conn()).await?;
        Ok(r.into_iter()
            .map(|v| v.first().map(|(_, score)| *score as i64))
            .collect())
    }

    /// After a sweep of `sku`: its due-index entry moves to `next_ms` (None: dropped), unless a
    /// note came since `seen` was read. True when it moved.
    pub async fn settle_due(&self, sku: Sku, seen: &str, next_ms: Option<i64>) -> AppResult<bool> {
        let next = next_ms.map(|n| n.to_string()).unwrap_or_default();
        let r = self
            .eval(
                "settle_due",
                &self.scripts.settle_due,
                &[&self.keys.due(), &self.keys.due_version()],
                &[&sku.to_string(), seen, &next],
            )
            .await?;
        Ok(r.int(0)? == 1)
    }

    /// Puts back in the due index every loaded sku with something held or reserved (what a
    /// crash between a script and its note, or data from before the index, left out). Walks
    /// the `skus` set with SSCAN, `chunk` skus at a time, with plain reads; notes only skus
    /// that hold something. Returns (skus looked at, skus noted).
    pub async fn audit_due(&self, chunk: usize) -> AppResult<(usize, usize)> {
        let mut cursor: u64 = 0;
        let (mut seen, mut noted) = (0, 0);
        loop {
            let (next, raw): (u64, Vec<u64>) = redis::cmd("SSCAN")
                .arg(self.keys.skus())
                .arg(cursor)
                .arg("COUNT")
                .arg(chunk)
                .query_async(&mut self.conn())
                .await?;
            let skus: Vec<Sku> = raw.into_iter().filter_map(|n| Sku::parse(n).ok()).collect();
            seen += skus.len();
            let calls: Vec<_> = skus
                .iter()
                .zip(self.earliest_deadlines(&skus).await?)
                .filter_map(|(sku, min)| {
                    min.map(|m| {
                        (
                            vec![self.keys.due(), self.keys.due_version()],
                            vec![sku.to_string(), m.to_string()],
                        )
                    })
                })
                .collect();
            noted += calls.len();
            self.eval_many("note_due", &self.scripts.note_due, &calls)
                .await?;
            if next == 0 {
                return Ok((seen, noted));
            }
            cursor = next;
        }
    }

    /// The units of each live reservation of a customer on a sku's cart hold: (count, deadline).
    pub async fn holds(&self, user_id: u64, skus: &[Sku]) -> AppResult<Vec<Option<(u32, i64)>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let rid = Rid::Hold { user_id };
        let mut pipe = redis::pipe();
        for sku in skus {
            let ttl = self.keys.sku(*sku).ttl(&rid);
            pipe.get(&ttl).cmd("PEXPIRETIME").arg(&ttl);
        }
        let raw: Vec<(Option<u32>, i64)> = pipe.query_async(&mut self.conn()).await?;
        Ok(raw
            .into_iter()
            .map(|(count, at)| count.filter(|_| at > 0).map(|c| (c, at)))
            .collect())
    }

    pub async fn metas(&self, skus: &[Sku]) -> AppResult<Vec<Option<SkuMeta>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for sku in skus {
            pipe.hgetall(self.keys.sku(*sku).meta());
        }
        let raw: Vec<Vec<(String, String)>> = pipe.query_async(&mut self.conn()).await?;
        Ok(raw.into_iter().map(SkuMeta::from_fields).collect())
    }

    // ---- orders ------------------------------------------------------------------------

    /// The next order id, at or below `limit` (the mark MySQL holds) and above `floor` (every id
    /// handed out before); see [`NextId`] and src/service/order_ids.rs.
    pub async fn next_order_id(&self, floor: u64, limit: u64) -> AppResult<NextId> {
        let r = self
            .eval(
                "next_order_id",
                &self.scripts.next_order_id,
                &[&self.keys.order_seq()],
                &[&limit.to_string(), &floor.to_string()],
            )
            .await?;
        Ok(match r.tag() {
            "ok" => NextId::Id(r.int(1)? as u64),
            "lost" => NextId::Lost,
            "block" => NextId::Block(r.int(1)? as u64),
            "behind" => NextId::Behind(r.int(1)? as u64),
            other => return Err(r.unexpected(other)),
        })
    }

    /// Raises the order id counter to at least `floor` (the largest id MySQL knows); a missing
    /// counter is set to `floor + margin`. Returns (the counter, whether it was missing).
    pub async fn raise_order_seq(&self, floor: u64, margin: u64) -> AppResult<(u64, bool)> {
        let r = self
            .eval(
                "raise_seq",
                &self.scripts.raise_seq,
                &[&self.keys.order_seq()],
                &[&floor.to_string(), &margin.to_string()],
            )
            .await?;
        Ok((r.int(0)? as u64, r.int(1)? == 1))
    }

    /// Redis's clock (unix ms): the one every deadline is measured by.
    pub async fn now_ms(&self) -> AppResult<i64> {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut self.conn()).await?;
        Ok(secs * 1000 + micros / 1000)
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

    /// Records a new order (status `new`) whose lines are reserved.
    pub async fn create_order(
        &self,
        order_id: u64,
        user_id: u64,
        created_at_ms: i64,
        expires_at_ms: i64,
        items_json: &str,
        total: u64,
    ) -> AppResult<Created> {
        let r = self
            .eval(
                "create_order",
                &self.scripts.create_order,
                &[&self.keys.order(order_id)],
                &[
                    &user_id.to_string(),
                    &created_at_ms.to_string(),
                    &expires_at_ms.to_string(),
                    items_json,
                    &total.to_string(),
                ],
            )
            .await?;
        match r.tag() {
            "ok" => {}
            "exists" => return Ok(Created::Exists),
            "late" => return Ok(Created::Late),
            other => return Err(r.unexpected(other)),
        }
        // The customer's index: orders not yet finished and written back (the write-back takes
        // each out once MySQL has its final status; listings read MySQL for the rest).
        let _: () = self
            .conn()
            .zadd(self.keys.user_orders(user_id), order_id, order_id as f64)
            .await?;
        Ok(Created::Recorded)
    }

    /// Takes the customer's checkout lock for `lease` (token: the checkout's order id); `false`
    /// when another checkout of the cart holds it.
    pub async fn lock_checkout(
        &self,
        user_id: u64,
        token: u64,
        lease: std::time::Duration,
    ) -> AppResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.checkout_lock(user_id))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .query_async(&mut self.conn())
            .await?;
        Ok(set.is_some())
    }

    /// The token of the checkout holding the customer's lock, if one does.
    pub async fn checkout_lock_token(&self, user_id: u64) -> AppResult<Option<u64>> {
        let v: Option<String> = self.conn().get(self.keys.checkout_lock(user_id)).await?;
        Ok(v.and_then(|t| t.parse().ok()))
    }

    /// Lets go of the customer's checkout lock if `token` still holds it.
    pub async fn unlock_checkout(&self, user_id: u64, token: u64) -> AppResult<()> {
        self.eval(
            "unlock",
            &self.scripts.unlock,
            &[&self.keys.checkout_lock(user_id)],
            &[&token.to_string()],
        )
        .await?;
        Ok(())
    }

    pub async fn decide_order(
        &self,
        order_id: u64,
        action: OrderAction<'_>,
    ) -> AppResult<Decision> {
        let (name, payload, total) = match action {
            OrderAction::Activate { items_json, total } => ("activate", items_json, total),
            OrderAction::Fail { items_json, total } => ("fail", items_json, total),
            OrderAction::Pay { payment_ref } => ("pay", payment_ref, 0),
            OrderAction::Cancel => ("cancel", "", 0),
            OrderAction::Expire => ("expire", "", 0),
        };
        let r = self
            .eval(
                "decide_order",
                &self.scripts.decide_order,
                &[&self.keys.order(order_id), &self.keys.outbox_of(order_id)],
                &[name, payload, &total.to_string()],
            )
            .await?;
        let status = || -> AppResult<crate::domain::OrderStatus> {
            let s = r.str_at(1)?;
            crate::domain::OrderStatus::parse(&s)
                .ok_or_else(|| AppError::internal(format!("order {order_id}: bad status {s:?}")))
        };
        Ok(match r.tag() {
            "ok" => Decision::Moved(status()?),
            "same" => Decision::Same(status()?),
            "reject" => Decision::Rejected(status()?),
            "missing" => Decision::Missing,
            other => return Err(r.unexpected(other)),
        })
    }

    /// The records of several orders, in the order asked (`None`: no such record).
    pub async fn order_records(&self, order_ids: &[u64]) -> AppResult<Vec<Option<OrderRecord>>> {
        if order_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in order_ids {
            pipe.hgetall(self.keys.order(*id));
        }
        let raw: Vec<Vec<(String, String)>> = pipe.query_async(&mut self.conn()).await?;
        order_ids
            .iter()
            .zip(raw)
            .map(|(id, flat)| {
                if flat.is_empty() {
                    Ok(None)
                } else {
                    OrderRecord::from_fields(*id, flat).map(Some)
                }
            })
            .collect()
    }

    /// A customer's order ids below `before` (exclusive), newest first.
    pub async fn user_order_ids(
        &self,
        user_id: u64,
        before: Option<u64>,
        count: usize,
    ) -> AppResult<Vec<u64>> {
        let max = match before {
            Some(b) => format!("({b}"),
            None => "+inf".to_string(),
        };
        Ok(self
            .conn()
            .zrevrangebyscore_limit(
                self.keys.user_orders(user_id),
                max,
                "-inf",
                0,
                count as isize,
            )
            .await?)
    }

    /// Puts back an open order's record (rebuild-cache); `false` when one exists.
    pub async fn restore_order(&self, order_id: u64, fields: &[(&str, String)]) -> AppResult<bool> {
        let mut args = Vec::new();
        for (f, v) in fields {
            args.push(f.to_string());
            args.push(v.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = self
            .eval(
                "restore_order",
                &self.scripts.restore_order,
                &[&self.keys.order(order_id)],
                &args,
            )
            .await?;
        Ok(r.int(0)? == 1)
    }

    /// The order's record as stored, or `None`.
    pub async fn order_record(&self, order_id: u64) -> AppResult<Option<OrderRecord>> {
        let flat: Vec<(String, String)> = self.conn().hgetall(self.keys.order(order_id)).await?;
        if flat.is_empty() {
            return Ok(None);
        }
        OrderRecord::from_fields(order_id, flat).map(Some)
    }

    /// Runs token buckets in one round trip (one EVALSHA each, pipelined): for each, `None` when
    /// allowed, or how long until it allows again.
    pub async fn rate_limit(
        &self,
        checks: &[(String, Bucket, BucketMode)],
    ) -> AppResult<Vec<Option<std::time::Duration>>> {
        let calls: Vec<(Vec<String>, Vec<String>)> = checks
            .iter()
            .map(|(key, b, mode)| {
                (
                    vec![key.clone()],
                    vec![
                        b.per_second.to_string(),
                        b.burst.to_string(),
                        mode.as_str().to_string(),
                    ],
                )
            })
            .collect();
        let replies = self
            .eval_many("rate_limit", &self.scripts.rate_limit, &calls)
            .await?;
        replies
            .iter()
            .map(|r| {
                if r.int(0)? == 1 {
                    Ok(None)
                } else {
                    let ms = r.int(1)?.max(1) as u64;
                    Ok(Some(std::time::Duration::from_millis(ms)))
                }
            })
            .collect()
    }
}

// ---- typed values --------------------------------------------------------------------------

/// What one `sweep` call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepBatch {
    /// Units of expired holds given back.
    pub released: u64,
    /// Order lines past their payment deadline: the caller settles them.
    pub orders: Vec<u64>,
    /// Due entries looked at (fewer than asked: nothing more is due).
    pub looked_at: u32,
    /// Due holds left in place (their TTL key still lives).
    pub kept: u32,
}

/// What MySQL knows of a sku's stock, for loading it into Redis.
#[derive(Debug, Clone, Default)]
pub struct SkuLoad {
    /// (warehouse_id, on_hand)
    pub stock: Vec<(u32, u64)>,
    /// Units sold and written back so far.
    pub sold_total: u64,
    /// (customer, units bought)
    pub bought: Vec<(u64, u64)>,
}

/// A token bucket's shape: refilled at `per_second`, holding at most `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

/// How a rate-limit check uses its bucket (see lua/rate_limit.lua).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketMode {
    /// Take a token if there is one; refused otherwise (and nothing taken).
    Take,
    /// Is a token there? Takes none.
    Peek,
    /// Take one if any is left (a failed login), never below zero.
    Charge,
    /// Give one back, never above the burst (a login taken for a failure turned out right).
    Refund,
}

impl BucketMode {
    fn as_str(self) -> &'static str {
        match self {
            BucketMode::Take => "take",
            BucketMode::Peek => "peek",
            BucketMode::Charge => "charge",
            BucketMode::Refund => "refund",
        }
    }
}

/// A sku's catalog entry as the scripts read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuMeta {
    pub name: String,
    pub price: u64,
    pub sale: Option<SaleMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleMeta {
    pub sale_price: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    /// 0: no per-customer limit.
    pub limit: u32,
}

impl SkuMeta {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("name", self.name.clone()),
            ("price", self.price.to_string()),
        ];
        if let Some(s) = &self.sale {
            v.push(("sale_price", s.sale_price.to_string()));
            v.push(("sale_start", s.start_ms.to_string()));
            v.push(("sale_end", s.end_ms.to_string()));
            v.push(("limit", s.limit.to_string()));
        }
        v
    }

    fn from_fields(flat: Vec<(String, String)>) -> Option<Self> {
        if flat.is_empty() {
            return None;
        }
        let get = |f: &str| flat.iter().find(|(k, _)| k == f).map(|(_, v)| v.as_str());
        let num = |f: &str| get(f).and_then(|v| v.parse::<i64>().ok());
        let sale = match (num("sale_price"), num("sale_start"), num("sale_end")) {
            (Some(p), Some(s), Some(e)) => Some(SaleMeta {
                sale_price: p as u64,
                start_ms: s,
                end_ms: e,
                limit: num("limit").unwrap_or(0) as u32,
            }),
            _ => None,
        };
        Some(SkuMeta {
            name: get("name").unwrap_or_default().to_string(),
            price: num("price").unwrap_or(0) as u64,
            sale,
        })
    }

    /// The unit price at `now_ms`: the sale price while the sale window is open.
    pub fn price_at(&self, now_ms: i64) -> u64 {
        match &self.sale {
            Some(s) if now_ms >= s.start_ms && now_ms < s.end_ms => s.sale_price,
            _ => self.price,
        }
    }
}

/// A sku's counters: the buckets of DESIGN.md's identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockSnapshot {
    /// (warehouse_id, available there), ascending by warehouse.
    pub warehouses: Vec<(u32, i64)>,
    pub available: i64,
    pub held: i64,
    pub reserved: i64,
    /// Sold and not yet written back to MySQL's on_hand.
    pub sold: i64,
    /// Sold since this counter was loaded.
    pub sold_total: i64,
}

impl StockSnapshot {
    fn from_fields(flat: Vec<(String, i64)>) -> Self {
        let mut s = StockSnapshot::default();
        for (f, v) in flat {
            match f.as_str() {
                "avail" => s.available = v,
                "held" => s.held = v,
                "reserved" => s.reserved = v,
                "sold" => s.sold = v,
                "sold_total" => s.sold_total = v,
                w => {
                    if let Some(id) = w.strip_prefix('w').and_then(|n| n.parse().ok()) {
                        s.warehouses.push((id, v));
                    }
                }
            }
        }
        s.warehouses.sort_unstable();
        s
    }
}

pub enum Deadline {
    /// From now (Redis time).
    In(std::time::Duration),
    /// At this unix ms.
    At(i64),
}

pub struct ReserveRequest {
    pub sku: Sku,
    pub user_id: u64,
    pub count: u32,
    pub rid: Rid,
    pub deadline: Deadline,
    pub mode: ReserveMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveMode {
    /// Grow a live reservation (a cart hold); it keeps its deadline.
    Add,
    /// An existing live reservation is the answer (an order line).
    Once,
    /// As `Once`, without the sale window and limit checks (rebuild-cache).
    Restore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved {
        units: u32,
        deadline_ms: i64,
        unit_price: u64,
        available: i64,
        name: String,
    },
    OutOfStock {
        available: i64,
    },
    LimitExceeded {
        has: i64,
        limit: i64,
    },
    SaleNotActive,
    /// The reservation would pass a bound of lua/lib.lua: too many units, or a line total that
    /// is not an exact integer everywhere.
    TooLarge {
        units: i64,
        unit_price: u64,
    },
    NotLoaded,
}

/// What `commit_sold` found: the line's allocation as (warehouse_id, units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Moved from reserved to sold by this call.
    Now(Vec<(u32, u32)>),
    /// Sold before, not yet written back.
    Before(Vec<(u32, u32)>),
    /// Written back already (or never reserved): nothing left to do on this line.
    WrittenBack,
}

impl Committed {
    pub fn alloc(&self) -> &[(u32, u32)] {
        match self {
            Committed::Now(a) | Committed::Before(a) => a,
            Committed::WrittenBack => &[],
        }
    }
}

/// "w:n,w:n" -> [(w, n)]
pub fn parse_alloc(s: &str) -> Vec<(u32, u32)> {
    s.split(',')
        .filter_map(|p| {
            let (w, n) = p.split_once(':')?;
            Some((w.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// What `create_order` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Recorded,
    /// A record with that id exists already: nothing written.
    Exists,
    /// The lines' deadline had passed: nothing written (the sweeper may be giving them back).
    Late,
}

/// What became of an order line handed back to the cart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// The customer's cart hold again, with these units.
    Held(u32),
    /// Given back to available (the hold's own deadline had passed).
    Released(u32),
    /// No such line.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertOutcome {
    /// The line is the order's (now, or already: a retry continuing the order), with its
    /// deadline.
    Converted {
        units: u32,
        unit_price: u64,
        deadline_ms: i64,
    },
    /// No hold: another checkout converted it, or it lapsed and was swept.
    NoHold,
    /// The sale window is not open: the hold was released.
    SaleNotActive {
        released: u32,
    },
    /// The line's total at today's price passes the bound; nothing changed.
    TooLarge {
        units: i64,
        unit_price: u64,
    },
    NotLoaded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdjustOutcome {
    Adjusted {
        here: i64,
        available: i64,
    },
    Short {
        available_here: i64,
    },
    NotLoaded,
    /// The change was applied (or taken back) before: nothing done now.
    Same,
}

pub enum OrderAction<'a> {
    Activate { items_json: &'a str, total: u64 },
    Fail { items_json: &'a str, total: u64 },
    Pay { payment_ref: &'a str },
    Cancel,
    Expire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This call moved the order to the status.
    Moved(crate::domain::OrderStatus),
    /// The order was already there (or nothing was due).
    Same(crate::domain::OrderStatus),
    /// Not allowed from the order's status.
    Rejected(crate::domain::OrderStatus),
    Missing,
}

impl Decision {
    pub fn status(self) -> Option<crate::domain::OrderStatus> {
        match self {
            Decision::Moved(s) | Decision::Same(s) | Decision::Rejected(s) => Some(s),
            Decision::Missing => None,
        }
    }
}

/// An order as its Redis record holds it.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub order_id: u64,
    pub user_id: u64,
    pub status: crate::domain::OrderStatus,
    pub items_json: String,
    pub total: u64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub paid_at_ms: Option<i64>,
    pub cancelled_at_ms: Option<i64>,
    pub cancel_reason: Option<String>,
}

impl OrderRecord {
    fn from_fields(order_id: u64, flat: Vec<(String, String)>) -> AppResult<Self> {
        let get = |f: &str| flat.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone());
        let num = |f: &str| get(f).and_then(|v| v.parse::<i64>().ok());
        let bad = |what: &str| AppError::internal(format!("order {order_id}: bad record ({what})"));
        Ok(OrderRecord {
            order_id,
            user_id: num("user").ok_or_else(|| bad("user"))? as u64,
            status: get("status")
                .and_then(|s| crate::domain::OrderStatus::parse(&s))
                .ok_or_else(|| bad("status"))?,
            items_json: get("items").unwrap_or_else(|| "[]".into()),
            total: get("total")
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad("total"))?,
            created_at_ms: num("created_at").ok_or_else(|| bad("created_at"))?,
            expires_at_ms: num("expires_at").ok_or_else(|| bad("expires_at"))?,
            paid_at_ms: num("paid_at"),
            cancelled_at_ms: num("cancelled_at"),
            cancel_reason: get("cancel_reason"),
        })
    }
}

/// A script's reply: `{tag, values...}` (or a bare array of values).
struct Reply {
    script: &'static str,
    items: Vec<Value>,
}

impl Reply {
    fn parse(script: &'static str, v: Value) -> AppResult<Self> {
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

    fn tag(&self) -> &str {
        match self.items.first() {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).unwrap_or(""),
            Some(Value::SimpleString(s)) => s,
            _ => "",
        }
    }

    fn int(&self, i: usize) -> AppResult<i64> {
        match self.items.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            Some(Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.malformed(i)),
            _ => Err(self.malformed(i)),
        }
    }

    fn str_at(&self, i: usize) -> AppResult<String> {
        match self.items.get(i) {
            Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            _ => Err(self.malformed(i)),
        }
    }

    fn ints_at(&self, i: usize) -> AppResult<Vec<i64>> {
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

    fn unexpected(&self, tag: &str) -> AppError {
        AppError::internal(format!("script {}: unexpected reply {tag:?}", self.script))
    }
}

/// "<ms>-<seq>" as a pair that orders like the stream.
fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
