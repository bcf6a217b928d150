//! The sweeper's due index: which skus have a reservation due when (lua/note_due.lua,
//! lua/settle_due.lua).

use redis::AsyncCommands;

use super::{Redis, SlotPipe};
use crate::domain::Sku;
use crate::error::AppResult;

impl Redis {
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

    /// The earliest deadline of each sku: in its `exp`, or when a pending admin stock change
    /// of it is to be settled (None: nothing held, reserved or pending), in one pipeline of
    /// plain reads.
    pub async fn earliest_deadlines(&self, skus: &[Sku]) -> AppResult<Vec<Option<i64>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = SlotPipe::new();
        for sku in skus {
            let k = self.keys.sku(*sku);
            for key in [k.exp(), k.adjustments_pending()] {
                pipe.add(
                    &key,
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(0)
                        .arg("WITHSCORES"),
                );
            }
        }
        let r: Vec<Vec<(String, f64)>> = pipe.query(&self.conn()).await?;
        Ok(r.chunks(2)
            .map(|pair| {
                pair.iter()
                    .filter_map(|v| v.first().map(|(_, score)| *score as i64))
                    .min()
            })
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

    /// Puts back in the due index every loaded sku with something held, reserved or pending
    /// (what a crash between a script and its note, or data from before the index, left out). Walks
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
}
