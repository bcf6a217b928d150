//! Checks below the API and background work drained on demand: the stock identity of
//! DESIGN.md read straight from MySQL and Redis, the write-back and the sweeper run once.

use std::collections::HashMap;

use flashsale::domain::Sku;

use super::spawn::TestApp;
use super::views::Buckets;

impl TestApp {
    /// Checks that `flashsale reconcile`'s checks all pass (MySQL and Redis agree).
    pub async fn assert_reconciles(&self) {
        let checks = flashsale::service::reconcile::check(&self.state)
            .await
            .unwrap();
        assert!(
            checks.iter().all(|c| c.ok()),
            "{}",
            flashsale::service::reconcile::table(&checks)
        );
    }

    /// Writes the outbox back to MySQL now, as the background worker would.
    pub async fn write_back(&self) -> flashsale::worker::writer::WriteStats {
        flashsale::worker::writer::Writer::new(self.state.clone())
            .run_once(&self.state.db, flashsale::worker::writer::Fault::None)
            .await
            .expect("write-back")
    }

    /// Drains expiry now, as the background sweeper would (its due-index audit first: some
    /// tests fake an expiry by writing a past deadline straight into a sku's `exp`).
    pub async fn sweep(&self) {
        self.state.redis.audit_due(500).await.expect("audit");
        flashsale::worker::sweeper::run_once(&self.state)
            .await
            .expect("sweep");
    }

    /// Checks DESIGN.md's identity for `sku` from MySQL and from every Redis structure, and that
    /// Redis's derived counters agree with its ledger. Returns the buckets.
    pub async fn assert_identity(&self, sku: u64) -> Buckets {
        let on_hand: u64 = sqlx::query_scalar::<_, Option<u64>>(
            "SELECT CAST(SUM(on_hand) AS UNSIGNED) FROM stock WHERE sku = ?",
        )
        .bind(sku as u32)
        .fetch_one(&self.state.db)
        .await
        .unwrap()
        .unwrap_or(0);
        let keys = self.state.redis.keys.sku(Sku::parse(sku).unwrap());
        let mut conn = self.state.redis.conn();
        // One atomic read (MULTI/EXEC: the keys share a slot), so that a script running beside
        // a live service (the write-back, the sweeper) is seen wholly or not at all.
        #[allow(clippy::type_complexity)]
        let (stock, ledger, users, exp, sold_ledger): (
            HashMap<String, i64>,
            HashMap<String, String>,
            HashMap<String, i64>,
            Vec<String>,
            HashMap<String, String>,
        ) = redis::pipe()
            .atomic()
            .hgetall(keys.stock())
            .hgetall(keys.res())
            .hgetall(keys.users())
            .zrange(keys.exp(), 0, -1)
            .hgetall(keys.sold())
            .query_async(&mut conn)
            .await
            .unwrap();

        let b = Buckets {
            on_hand: on_hand as i64,
            available: stock["avail"],
            held: stock["held"],
            reserved: stock["reserved"],
            sold: stock["sold"],
            sold_total: stock["sold_total"],
        };
        assert!(
            b.available >= 0 && b.held >= 0 && b.reserved >= 0,
            "sku {sku}: negative bucket {b:?}"
        );
        assert_eq!(
            b.on_hand,
            b.available + b.held + b.reserved + b.sold,
            "sku {sku}: on_hand != available + held + reserved + sold: {b:?}"
        );
        let by_warehouse: i64 = stock
            .iter()
            .filter(|(k, _)| k.starts_with('w'))
            .map(|(_, v)| *v)
            .sum();
        assert_eq!(
            by_warehouse, b.available,
            "sku {sku}: warehouses do not add up to available"
        );
        assert!(
            stock
                .iter()
                .filter(|(k, _)| k.starts_with('w'))
                .all(|(_, v)| *v >= 0)
        );
        let (mut held, mut reserved) = (0, 0);
        for (rid, v) in &ledger {
            let parts: Vec<&str> = v.split('|').collect();
            let count: i64 = parts[1].parse().unwrap();
            let alloc: i64 = parts[2]
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|a| a.split(':').nth(1).unwrap().parse::<i64>().unwrap())
                .sum();
            assert_eq!(
                count, alloc,
                "sku {sku}: ledger entry {rid} allocates {alloc} of {count}"
            );
            if rid.starts_with("h:") {
                held += count;
            } else {
                reserved += count;
            }
            assert!(
                exp.contains(rid),
                "sku {sku}: {rid} missing from the deadline index"
            );
        }
        assert_eq!(held, b.held, "sku {sku}: ledger holds != held counter");
        assert_eq!(
            reserved, b.reserved,
            "sku {sku}: ledger order lines != reserved counter"
        );
        assert_eq!(
            exp.len(),
            ledger.len(),
            "sku {sku}: index and ledger differ"
        );
        let unwritten: i64 = sold_ledger
            .values()
            .map(|v| v.split('|').nth(1).unwrap().parse::<i64>().unwrap())
            .sum();
        assert_eq!(unwritten, b.sold, "sku {sku}: sold ledger != sold counter");
        let per_user: i64 = users.values().sum();
        assert_eq!(
            per_user,
            b.held + b.reserved + b.sold_total,
            "sku {sku}: per-customer counts != held + reserved + bought"
        );
        b
    }
}
