//! The order id counter (lua/next_order_id.lua, lua/raise_seq.lua) and the bounds this
//! instance keeps on it (src/service/order_ids.rs).

use std::sync::atomic::Ordering;

use redis::AsyncCommands;

use super::Redis;
use crate::error::AppResult;

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

    /// The order id counter as Redis holds it (`None`: missing).
    pub async fn order_seq(&self) -> AppResult<Option<u64>> {
        Ok(self.conn().get(self.keys.order_seq()).await?)
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
}
