//! A sku's catalog entry and stock counters: loading them from MySQL (lua/load_sku.lua, in
//! chunks staged by lua/stage_hash.lua), catalog changes (lua/set_meta.lua), stock adjustments
//! (lua/adjust_stock.lua) and plain reads.

use redis::AsyncCommands;

use super::{Redis, SlotPipe};
use crate::domain::{SaleMeta, Sku, SkuMeta};
use crate::error::{AppError, AppResult};

/// Field/value pairs per staging call of a load (lua/stage_hash.lua takes at most 2,000).
const STAGE_CHUNK: usize = 1_000;
/// Staging calls sent in one pipeline.
const STAGE_CALLS_PER_PIPELINE: usize = 16;
/// How long a load's staged lists live without a new chunk (a loader that died leaves nothing).
const STAGE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// How a catalog entry is written (lua/set_meta.lua).
#[derive(Debug, Clone, Copy)]
pub enum MetaWrite {
    /// A catalog change's own call, under its token: does nothing once the token is fenced.
    Change(u64),
    /// What MySQL holds after the change `token` was given up: fences the token first, so its
    /// call, should it still arrive, writes nothing.
    Fence(u64),
    /// What MySQL holds, unconditionally.
    Put,
}

/// How long a given-up catalog change's fence lasts: far past any call still queued for a
/// stalled Redis (a call's bytes wait in Redis's socket buffer, not in time).
const META_FENCE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// A catalog entry as the `meta` hash's fields.
fn meta_pairs(meta: &SkuMeta) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("name", meta.name.clone()),
        ("price", meta.price.to_string()),
    ];
    if let Some(s) = &meta.sale {
        v.push(("sale_price", s.sale_price.to_string()));
        v.push(("sale_start", s.start_ms.to_string()));
        v.push(("sale_end", s.end_ms.to_string()));
        v.push(("limit", s.limit.to_string()));
    }
    v
}

/// The `meta` hash's fields as a catalog entry (`None`: no entry).
fn meta_from_fields(flat: Vec<(String, String)>) -> Option<SkuMeta> {
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
    pub(super) fn from_fields(flat: Vec<(String, i64)>) -> Self {
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdjustOutcome {
    /// Done: the counters as they are now (after `Pend` of an addition, without it).
    Adjusted { here: i64, available: i64 },
    /// `Pend` of a removal of more than is available: nothing done.
    Short { available_here: i64 },
    /// No counters (`Commit` and `Undo` settle the change all the same: the next load reads
    /// MySQL).
    NotLoaded,
    /// Settled before, or never pending (`Undo` then sees to it that it never is); `Pend`: the
    /// token was used before.
    Same,
}

/// The steps of an admin stock change in Redis (lua/adjust_stock.lua): recorded as pending
/// with the sku before MySQL's COMMIT (a removal's units out at once, an addition's not yet),
/// then settled once MySQL's outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustStep {
    /// Before the commit; the sweeper settles the change from `settle_at_ms` (unix ms) if
    /// nobody did.
    Pend { settle_at_ms: i64 },
    /// MySQL committed it: an addition's units go in.
    Commit,
    /// MySQL did not: a removal's units come back.
    Undo,
}

/// An admin stock change recorded as pending (lua/adjust_stock.lua's `pend`), not settled yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAdjustment {
    pub token: u64,
    pub warehouse_id: u32,
    pub delta: i64,
}

impl PendingAdjustment {
    /// A member of a sku's pending set: `<token, 16 hex digits>|<warehouse>|<delta>`.
    pub(super) fn parse(member: &str) -> Option<Self> {
        let mut it = member.split('|');
        let token = u64::from_str_radix(it.next()?, 16).ok()?;
        let warehouse_id = it.next()?.parse().ok()?;
        let delta = it.next()?.parse().ok()?;
        it.next().is_none().then_some(PendingAdjustment {
            token,
            warehouse_id,
            delta,
        })
    }
}

impl Redis {
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
        let pairs = meta_pairs(meta);
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

    /// Replaces a sku's catalog entry with `meta` (lua/set_meta.lua); `false`: a
    /// [`MetaWrite::Change`] whose token was fenced, nothing written.
    pub async fn set_meta(&self, sku: Sku, meta: &SkuMeta, how: MetaWrite) -> AppResult<bool> {
        let k = self.keys.sku(sku);
        let (mode, token) = match how {
            MetaWrite::Change(t) => ("change", t),
            MetaWrite::Fence(t) => ("fence", t),
            MetaWrite::Put => ("put", 0),
        };
        let mut args = vec![mode.to_string(), META_FENCE_TTL.as_millis().to_string()];
        for (f, v) in meta_pairs(meta) {
            args.push(f.to_string());
            args.push(v);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = self
            .eval(
                "set_meta",
                &self.scripts.set_meta,
                &[&k.meta(), &k.meta_fence(token)],
                &args,
            )
            .await?;
        Ok(reply.int(0)? == 1)
    }

    /// One step of the admin stock change `token` (see [`AdjustStep`]); repeating a step is
    /// harmless, and a change undone before its `Pend` arrived never happens
    /// (lua/adjust_stock.lua).
    pub async fn adjust_stock(
        &self,
        sku: Sku,
        warehouse_id: u32,
        delta: i64,
        token: u64,
        step: AdjustStep,
    ) -> AppResult<AdjustOutcome> {
        let k = self.keys.sku(sku);
        let (mode, at) = match step {
            AdjustStep::Pend { settle_at_ms } => ("pend", settle_at_ms.to_string()),
            AdjustStep::Commit => ("commit", String::new()),
            AdjustStep::Undo => ("undo", String::new()),
        };
        let r = self
            .eval(
                "adjust_stock",
                &self.scripts.adjust_stock,
                &[&k.stock(), &k.adjustment(token), &k.adjustments_pending()],
                &[&warehouse_id.to_string(), &delta.to_string(), mode, &at],
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

    /// Up to `limit` of the sku's pending stock changes due to be settled by `now_ms`, earliest
    /// first. A member that cannot be read is logged and dropped (nothing could settle it).
    pub async fn due_adjustments(
        &self,
        sku: Sku,
        now_ms: i64,
        limit: usize,
    ) -> AppResult<Vec<PendingAdjustment>> {
        let key = self.keys.sku(sku).adjustments_pending();
        let raw: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await?;
        let mut due = Vec::with_capacity(raw.len());
        for m in raw {
            match PendingAdjustment::parse(&m) {
                Some(p) => due.push(p),
                None => {
                    tracing::error!(%sku, member = %m, "an unreadable pending stock change; dropped");
                    let _: () = self.conn().zrem(&key, &m).await?;
                }
            }
        }
        Ok(due)
    }

    /// Puts off settling a pending stock change until `at_ms` (only if it is still pending).
    pub async fn defer_adjustment(
        &self,
        sku: Sku,
        p: &PendingAdjustment,
        at_ms: i64,
    ) -> AppResult<()> {
        let member = format!("{:016x}|{}|{}", p.token, p.warehouse_id, p.delta);
        let _: () = redis::cmd("ZADD")
            .arg(self.keys.sku(sku).adjustments_pending())
            .arg("XX")
            .arg(at_ms)
            .arg(member)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The sku's counters, or `None` when not loaded.
    pub async fn stock(&self, sku: Sku) -> AppResult<Option<StockSnapshot>> {
        let flat: Vec<(String, i64)> = self.conn().hgetall(self.keys.sku(sku).stock()).await?;
        if flat.is_empty() {
            return Ok(None);
        }
        Ok(Some(StockSnapshot::from_fields(flat)))
    }

    pub async fn metas(&self, skus: &[Sku]) -> AppResult<Vec<Option<SkuMeta>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = SlotPipe::new();
        for sku in skus {
            let meta = self.keys.sku(*sku).meta();
            pipe.add(&meta, &redis::Cmd::hgetall(&meta));
        }
        let raw: Vec<Vec<(String, String)>> = pipe.query(&self.conn()).await?;
        Ok(raw.into_iter().map(meta_from_fields).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_member_reads_as_lua_adjust_stock_writes_it() {
        assert_eq!(
            PendingAdjustment::parse("00000000deadbeef|7|-5"),
            Some(PendingAdjustment {
                token: 0xdead_beef,
                warehouse_id: 7,
                delta: -5,
            })
        );
        for bad in [
            "",
            "xyz|1|2",
            "00000000deadbeef|7",
            "00000000deadbeef|7|5|9",
            "1|-1|3",
        ] {
            assert_eq!(PendingAdjustment::parse(bad), None, "{bad}");
        }
    }
}
