//! Order records and the customer's checkout lock (lua/create_order.lua, lua/decide_order.lua,
//! lua/fence_order.lua, lua/unlock.lua).

use redis::AsyncCommands;

use super::keys::{ORDER_PARTITIONS, Rid};
use super::{Redis, SlotPipe};
use crate::domain::{OrderItem, OrderStatus, Sku};
use crate::error::{AppError, AppResult};

/// What `create_order` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Recorded,
    /// A record with that id exists already: nothing written.
    Exists,
    /// The lines' deadline had passed: nothing written (the sweeper may be giving them back).
    Late,
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
    Moved(OrderStatus),
    /// The order was already there (or nothing was due).
    Same(OrderStatus),
    /// Not allowed from the order's status.
    Rejected(OrderStatus),
    Missing,
}

impl Decision {
    pub fn status(self) -> Option<OrderStatus> {
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
    pub status: OrderStatus,
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
                .and_then(|s| OrderStatus::parse(&s))
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

impl Redis {
    /// Where the order's lines took their units, as the skus' ledgers hold them now: JSON
    /// `{"<sku>": "<warehouse_id>:<units>,..."}` for the lines found ('' when none is). One
    /// pipelined read of every line's ledger entry (the skus' slots: single-node Redis, like
    /// `commit_sold_many`).
    async fn lines_alloc(&self, order_id: u64, items_json: &str) -> AppResult<String> {
        let items: Vec<OrderItem> = serde_json::from_str(items_json)
            .map_err(|e| AppError::internal(format!("order {order_id}: items json: {e}")))?;
        let mut skus: Vec<Sku> = items
            .iter()
            .filter_map(|i| Sku::parse(u64::from(i.sku)).ok())
            .collect();
        skus.sort_unstable_by_key(|s| s.get());
        skus.dedup();
        if skus.is_empty() {
            return Ok(String::new());
        }
        let rid = Rid::OrderLine { order_id }.to_string();
        let mut pipe = SlotPipe::new();
        for sku in &skus {
            let res = self.keys.sku(*sku).res();
            pipe.add(&res, &redis::Cmd::hget(&res, &rid));
        }
        let entries: Vec<Option<String>> = pipe.query(&self.conn()).await?;
        let alloc: std::collections::BTreeMap<String, String> = skus
            .iter()
            .zip(entries)
            .filter_map(|(sku, e)| {
                // "<user>|<count>|<alloc>"
                let a = e?.splitn(3, '|').nth(2)?.to_string();
                (!a.is_empty()).then(|| (sku.get().to_string(), a))
            })
            .collect();
        if alloc.is_empty() {
            return Ok(String::new());
        }
        serde_json::to_string(&alloc)
            .map_err(|e| AppError::internal(format!("order {order_id}: alloc json: {e}")))
    }

    /// Records a new order (status `new`) whose lines are reserved, with where each line's
    /// units came from (read from the skus' ledgers first: the record's `alloc`, which every
    /// event of the order carries to the write-back).
    pub async fn create_order(
        &self,
        order_id: u64,
        user_id: u64,
        created_at_ms: i64,
        expires_at_ms: i64,
        items_json: &str,
        total: u64,
    ) -> AppResult<Created> {
        let alloc = self.lines_alloc(order_id, items_json).await?;
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
                    &alloc,
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
        self.index_user_order(user_id, order_id).await?;
        Ok(Created::Recorded)
    }

    /// Puts an order in its customer's index of open orders (by id).
    pub async fn index_user_order(&self, user_id: u64, order_id: u64) -> AppResult<()> {
        let _: () = self
            .conn()
            .zadd(self.keys.user_orders(user_id), order_id, order_id as f64)
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
        let status = || -> AppResult<OrderStatus> {
            let s = r.str_at(1)?;
            OrderStatus::parse(&s)
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

    /// The order's record as stored, or `None`.
    pub async fn order_record(&self, order_id: u64) -> AppResult<Option<OrderRecord>> {
        let flat: Vec<(String, String)> = self.conn().hgetall(self.keys.order(order_id)).await?;
        if flat.is_empty() {
            return Ok(None);
        }
        OrderRecord::from_fields(order_id, flat).map(Some)
    }

    /// The records of several orders, in the order asked (`None`: no such record).
    pub async fn order_records(&self, order_ids: &[u64]) -> AppResult<Vec<Option<OrderRecord>>> {
        if order_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = SlotPipe::new();
        for id in order_ids {
            let record = self.keys.order(*id);
            pipe.add(&record, &redis::Cmd::hgetall(&record));
        }
        let raw: Vec<Vec<(String, String)>> = pipe.query(&self.conn()).await?;
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

    /// Notes that `p` is being placed (lua/note_placing.lua): settled by the sweeper `window`
    /// after now unless its request settles it first ([`Redis::placing_done`]). Returns now
    /// (Redis's clock, unix ms: the placement's start) and the lines an earlier note of the
    /// same order named (a key's retry continuing the order of a request that vanished).
    pub async fn note_placing(
        &self,
        p: &PlacementNote,
        window: std::time::Duration,
    ) -> AppResult<(i64, Vec<(Sku, bool)>)> {
        let (due, lines) = self.keys.placing(p.order_id % ORDER_PARTITIONS);
        let reply = self
            .eval(
                "note_placing",
                &self.scripts.note_placing,
                &[&due, &lines],
                &[
                    &p.order_id.to_string(),
                    &p.encode(),
                    &window.as_millis().to_string(),
                ],
            )
            .await?;
        let before = reply.str_at(1)?;
        let earlier = if before.is_empty() {
            Vec::new()
        } else {
            PlacementNote::decode(p.order_id, &before)
                .map(|n| n.lines)
                .unwrap_or_default()
        };
        Ok((reply.int(0)?, earlier))
    }

    /// The placement of `order_id` is settled: nothing for the sweeper to do.
    pub async fn placing_done(&self, order_id: u64) -> AppResult<()> {
        let (due, lines) = self.keys.placing(order_id % ORDER_PARTITIONS);
        let () = redis::pipe()
            .atomic()
            .zrem(&due, order_id)
            .ignore()
            .hdel(&lines, order_id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Up to `limit` placements of `partition` due by `now` (Redis's clock, unix ms). One whose
    /// lines cannot be read (written by nobody: its MULTI is one step) is dropped with an error
    /// log.
    pub async fn due_placings(
        &self,
        partition: u64,
        now: i64,
        limit: usize,
    ) -> AppResult<Vec<PlacementNote>> {
        let (due, lines) = self.keys.placing(partition);
        let ids: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
            .arg(&due)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&lines)
            .arg(&ids)
            .query_async(&mut self.conn())
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (order_id, v) in ids.into_iter().zip(raw) {
            match v
                .as_deref()
                .and_then(|v| PlacementNote::decode(order_id, v))
            {
                Some(p) => out.push(p),
                None => {
                    tracing::error!(order.id = order_id, lines = ?v, "an unreadable placement; dropped");
                    self.placing_done(order_id).await?;
                }
            }
        }
        Ok(out)
    }
}

/// An order being placed: whose it is and the lines its request sends (each with whether it
/// comes from the cart), so that its lines can be handed back by anyone once its request is
/// gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementNote {
    pub order_id: u64,
    pub user_id: u64,
    pub lines: Vec<(Sku, bool)>,
}

impl PlacementNote {
    fn encode(&self) -> String {
        let lines: Vec<String> = self
            .lines
            .iter()
            .map(|(s, c)| format!("{s}:{}", u8::from(*c)))
            .collect();
        format!("{}|{}", self.user_id, lines.join(","))
    }

    fn decode(order_id: u64, v: &str) -> Option<Self> {
        let (user, lines) = v.split_once('|')?;
        let lines = lines
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (sku, c) = l.split_once(':')?;
                let sku = Sku::parse(sku.parse().ok()?).ok()?;
                Some((sku, c == "1"))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(PlacementNote {
            order_id,
            user_id: user.parse().ok()?,
            lines,
        })
    }
}

#[cfg(test)]
mod placing_tests {
    use super::*;

    #[test]
    fn a_placement_reads_back_as_written() {
        let p = PlacementNote {
            order_id: 7,
            user_id: 9_001,
            lines: vec![
                (Sku::parse(3).unwrap(), true),
                (Sku::parse(12).unwrap(), false),
            ],
        };
        assert_eq!(PlacementNote::decode(7, &p.encode()), Some(p));
        assert_eq!(PlacementNote::decode(7, "x|3:1"), None);
        assert_eq!(PlacementNote::decode(7, "9|3"), None);
    }
}
