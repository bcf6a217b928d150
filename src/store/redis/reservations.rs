//! Reservations: cart holds and order lines on a sku's stock (lua/reserve.lua,
//! lua/convert_hold.lua, lua/return_to_cart.lua, lua/release.lua), their sale and write-back
//! (lua/commit_sold.lua, lua/mark_written.lua) and the sweep of expired ones (lua/sweep.lua).

use super::lanes::BatchError;
use super::scripts::Reply;
use super::{Redis, Rid, SlotPipe};
use crate::domain::Sku;
use crate::error::{AppError, AppResult};

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
    /// An order line given up (with a fence) before this call arrived: its own request, which
    /// timed out waiting for this very call, handed the line back (lua/release.lua). Nothing
    /// changed.
    Fenced,
}

/// With a reservation's answer that leaves no unit of its sku available: how long "sold out"
/// holds at most, as Redis saw it (lua/reserve.lua's `sold_out_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoldOutFor {
    /// Until the sku's earliest reservation deadline, this many ms after the answer; <= 0: a
    /// reservation past its deadline, not given back yet, which its owner may take again now.
    Ms(i64),
    /// No reservation to lapse: only a change of stock (announced) ends it.
    Unbounded,
}

impl SoldOutFor {
    /// The optional last item of an entry's reply (`None`: units left, or not said).
    fn of(r: &Reply) -> Option<Self> {
        let i = match r.tag() {
            "ok" => 6,
            "out_of_stock" => 2,
            _ => return None,
        };
        // Absent while units are left: not an error to build (and throw away) on every sale.
        if !r.has(i) {
            return None;
        }
        match r.str_at(i) {
            Ok(s) if s == "none" => Some(SoldOutFor::Unbounded),
            _ => r.int(i).ok().map(SoldOutFor::Ms),
        }
    }
}

/// A reservation's outcome, with how long "sold out" holds when it left no unit available.
pub type Answer = (ReserveOutcome, Option<SoldOutFor>);

impl ReserveOutcome {
    /// One entry of lua/reserve.lua's reply.
    fn of(r: &Reply) -> AppResult<Self> {
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
            "fenced" => ReserveOutcome::Fenced,
            other => return Err(r.unexpected(other)),
        })
    }
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
    /// The order's line on this sku was handed back (with a fence) before this call arrived:
    /// its request timed out waiting for this very call. Nothing changed; the hold stays.
    Fenced,
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

/// What `commit_sold` found: the line's allocation as (warehouse_id, units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Moved from reserved to sold by this call.
    Now(Vec<(u32, u32)>),
    /// Sold before, not yet written back.
    Before(Vec<(u32, u32)>),
    /// Redis holds no such line: written back already, never reserved, or its sku's keys were
    /// lost. Nothing left to do on this line in Redis; the write-back takes MySQL's figures
    /// from the event, never from this answer.
    WrittenBack,
}

impl Committed {
    /// commit_sold.lua's reply.
    fn of(r: &Reply) -> AppResult<Self> {
        let alloc = parse_alloc(&r.str_at(2)?);
        Ok(match r.tag() {
            "ok" => Committed::Now(alloc),
            "sold" => Committed::Before(alloc),
            "none" => Committed::WrittenBack,
            other => return Err(r.unexpected(other)),
        })
    }

    pub fn alloc(&self) -> &[(u32, u32)] {
        match self {
            Committed::Now(a) | Committed::Before(a) => a,
            Committed::WrittenBack => &[],
        }
    }
}

/// A fence's life in ms, at least 1 (lua/release.lua and return_to_cart.lua).
fn fence_ms(fence: std::time::Duration) -> String {
    fence.as_millis().clamp(1, i64::MAX as u128).to_string()
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

impl Redis {
    /// Runs `reqs` (all of `sku`) in one call, each with its own outcome, as the lanes do; for
    /// tests and tools that need the grouping fixed. The error is the whole call's failure.
    pub async fn reserve_together(
        &self,
        sku: Sku,
        reqs: &[ReserveRequest],
    ) -> AppResult<Vec<AppResult<ReserveOutcome>>> {
        let answers = self
            .reserve_now(sku, reqs)
            .await
            .map_err(BatchError::into_error)?;
        Ok(answers
            .into_iter()
            .map(|a| a.map(|(outcome, _)| outcome))
            .collect())
    }

    /// Runs reservations of one sku in one call of lua/reserve.lua, in order, each with its own
    /// outcome (as many calls one after another would). Callers go through [`Redis::reserve`],
    /// which gathers concurrent requests of a sku into such calls (src/store/redis/lanes.rs).
    pub(super) async fn reserve_now(
        &self,
        sku: Sku,
        reqs: &[ReserveRequest],
    ) -> Result<Vec<AppResult<Answer>>, BatchError> {
        let k = self.keys.sku(sku);
        let mut keys = vec![k.meta(), k.stock(), k.users(), k.res(), k.exp()];
        let mut args = Vec::with_capacity(reqs.len() * 6);
        for req in reqs {
            // Every entry goes on `sku`'s keys: another sku's would be reserved on this one.
            if req.sku != sku {
                return Err(BatchError(AppError::internal(format!(
                    "reserve: a request of sku {} in a call of sku {sku}",
                    req.sku
                ))));
            }
            let (kind, ms) = match req.deadline {
                Deadline::In(d) => ("ttl", d.as_millis().to_string()),
                Deadline::At(ms) => ("at", ms.to_string()),
            };
            let mode = match req.mode {
                ReserveMode::Add => "add",
                ReserveMode::Once => "once",
                ReserveMode::Restore => "restore",
            };
            keys.push(k.ttl(&req.rid));
            args.extend([
                req.user_id.to_string(),
                req.count.to_string(),
                req.rid.to_string(),
                kind.to_string(),
                ms,
                mode.to_string(),
            ]);
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let replies = self
            .eval_all("reserve", &self.scripts.reserve, &keys, &args, reqs.len())
            .await?;
        if replies.len() != reqs.len() {
            return Err(BatchError(AppError::internal(format!(
                "script reserve: {} replies for {} entries",
                replies.len(),
                reqs.len()
            ))));
        }
        Ok(replies
            .into_iter()
            .map(|r| {
                let r = r?;
                let outcome = ReserveOutcome::of(&r)?;
                if let ReserveOutcome::Reserved { deadline_ms, .. } = outcome {
                    self.note_due(sku, deadline_ms);
                }
                Ok((outcome, SoldOutFor::of(&r)))
            })
            .collect())
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
            "fenced" => ConvertOutcome::Fenced,
            other => return Err(r.unexpected(other)),
        })
    }

    /// Turns an order's line on `sku` back into the customer's cart hold (a checkout that will
    /// record no order); see lua/return_to_cart.lua. When the order has no line there, the line
    /// is fenced for `fence`: a `convert_hold` of it still on its way is refused.
    pub async fn return_to_cart(
        &self,
        sku: Sku,
        user_id: u64,
        order_id: u64,
        fence: std::time::Duration,
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
                &[
                    &user_id.to_string(),
                    &order_id.to_string(),
                    &fence_ms(fence),
                ],
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

    /// Gives back `count` units of a reservation (`None`: all); what is left keeps its deadline.
    /// Returns (released, left).
    pub async fn release(&self, sku: Sku, rid: Rid, count: Option<u32>) -> AppResult<(u32, u32)> {
        self.release_call(sku, rid, count, None).await
    }

    /// Gives back a whole order line its request will not keep; when it does not exist, fences
    /// it for `fence` (lua/release.lua), so that a `reserve` of it still on its way is refused.
    /// Returns the units released.
    pub async fn release_fenced(
        &self,
        sku: Sku,
        order_id: u64,
        fence: std::time::Duration,
    ) -> AppResult<u32> {
        let rid = Rid::OrderLine { order_id };
        let (released, _) = self.release_call(sku, rid, None, Some(fence)).await?;
        Ok(released)
    }

    /// One call of lua/release.lua: (released, left).
    async fn release_call(
        &self,
        sku: Sku,
        rid: Rid,
        count: Option<u32>,
        fence: Option<std::time::Duration>,
    ) -> AppResult<(u32, u32)> {
        let k = self.keys.sku(sku);
        let fence = fence.map(fence_ms).unwrap_or_else(|| "0".into());
        let r = self
            .eval(
                "release",
                &self.scripts.release,
                &[&k.stock(), &k.users(), &k.res(), &k.exp(), &k.ttl(&rid)],
                &[&rid.to_string(), &count.unwrap_or(0).to_string(), &fence],
            )
            .await?;
        // What is left keeps its deadline, noted when it was reserved: nothing new to note.
        Ok((r.int(1)? as u32, r.int(2)? as u32))
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
        Committed::of(&r)
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
            .map(|r| Committed::of(&r))
            .collect()
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

    /// The units of `order_id`'s line on each sku, if it has one there.
    pub async fn order_lines(&self, order_id: u64, skus: &[Sku]) -> AppResult<Vec<Option<u32>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let rid = Rid::OrderLine { order_id }.to_string();
        let mut pipe = SlotPipe::new();
        for sku in skus {
            let res = self.keys.sku(*sku).res();
            pipe.add(&res, &redis::Cmd::hget(&res, &rid));
        }
        let raw: Vec<Option<String>> = pipe.query(&self.conn()).await?;
        Ok(raw
            .into_iter()
            .map(|v| v.and_then(|v| v.split('|').nth(1).and_then(|c| c.parse().ok())))
            .collect())
    }

    /// The units of each live reservation of a customer on a sku's cart hold: (count, deadline).
    pub async fn holds(&self, user_id: u64, skus: &[Sku]) -> AppResult<Vec<Option<(u32, i64)>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let rid = Rid::Hold { user_id };
        let mut pipe = SlotPipe::new();
        for sku in skus {
            let ttl = self.keys.sku(*sku).ttl(&rid);
            pipe.add(&ttl, &redis::Cmd::get(&ttl));
            pipe.add(&ttl, redis::cmd("PEXPIRETIME").arg(&ttl));
        }
        let raw: Vec<(Option<u32>, i64)> = pipe.query(&self.conn()).await?;
        Ok(raw
            .into_iter()
            .map(|(count, at)| count.filter(|_| at > 0).map(|c| (c, at)))
            .collect())
    }
}
