//! The sweeper: drains everything due in one pass, whatever the number (issue 13.5), and visits
//! only skus that have something due, however many are loaded (issue 13.6).

use std::time::{Duration, Instant};

use flashsale::domain::{Count, OrderStatus, Sku};
use flashsale::service::orders;
use flashsale::store::redis::{
    Deadline, ReserveMode, ReserveOutcome, ReserveRequest, Rid, SkuLoad, SkuMeta,
};
use flashsale::worker::sweeper;
use futures::StreamExt;
use redis::AsyncCommands;

use crate::helpers::{TestApp, spawn_app_with};

/// Waits (polling, not asserting) until Redis's clock has passed `deadline_ms`.
async fn wait_past(app: &TestApp, deadline_ms: i64) {
    loop {
        let (s, us): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut app.state.redis.conn())
            .await
            .unwrap();
        if s * 1000 + us / 1000 > deadline_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cart hold of `count` units for `user_id`, living `ttl`; returns its deadline.
async fn hold(app: &TestApp, sku: Sku, user_id: u64, count: u32, ttl: Duration) -> i64 {
    let r = app
        .state
        .redis
        .reserve(ReserveRequest {
            sku,
            user_id,
            count,
            rid: Rid::Hold { user_id },
            deadline: Deadline::In(ttl),
            mode: ReserveMode::Add,
        })
        .await
        .unwrap();
    match r {
        ReserveOutcome::Reserved { deadline_ms, .. } => deadline_ms,
        other => panic!("hold refused: {other:?}"),
    }
}

/// Customers 1..=`n` each buy one unit of `sku` (in the service, 32 at a time); returns each
/// order's id and payment deadline (ms).
async fn place_orders(app: &TestApp, sku: Sku, n: u64) -> Vec<(u64, i64)> {
    futures::stream::iter(1..=n)
        .map(|user| {
            let state = app.state.clone();
            async move {
                let o = orders::buy_now(&state, user, sku, Count::parse(1).unwrap(), &())
                    .await
                    .expect("buy-now");
                (o.order_id, o.expires_at.timestamp_millis())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// 13.5: 3,000 unpaid orders and 1,200 expired cart holds on one sku, all past their deadline:
/// ONE sweep gives every unit back and expires every order (it used to stop after 500 due orders
/// per sku and pass, so 20,000 orders came back at 500 a second).
#[tokio::test]
async fn one_sweep_drains_every_due_order_and_hold_of_a_sku() {
    const ORDERS: u64 = 3_000;
    const HOLDS: u64 = 1_200;
    let app = spawn_app_with(|c| {
        // Only this test's own sweeps run.
        c.sweeper.sweep_interval = Duration::from_secs(3600);
        c.sale.payment_ttl = Duration::from_secs(3);
        c.sale.cart_hold_ttl = Duration::from_secs(3);
    })
    .await;
    let sku_n = app.sale_product((ORDERS + HOLDS + 100) as i64, None).await;
    let sku = Sku::parse(sku_n).unwrap();

    let placed = place_orders(&app, sku, ORDERS).await;
    let mut last = placed.iter().map(|p| p.1).max().unwrap();
    for user in ORDERS + 1..=ORDERS + HOLDS {
        last = last.max(hold(&app, sku, user, 1, Duration::from_secs(3)).await);
    }
    let before = app.assert_identity(sku_n).await;
    assert_eq!(before.reserved, ORDERS as i64);
    assert_eq!(before.held, HOLDS as i64);

    wait_past(&app, last).await;
    let started = Instant::now();
    let stats = sweeper::run_once(&app.state).await.expect("sweep");
    eprintln!(
        "one sweep: {} orders + {} hold units in {:?}",
        stats.orders_due,
        stats.holds_units_released,
        started.elapsed()
    );

    let after = app.assert_identity(sku_n).await;
    assert_eq!(
        (after.reserved, after.held),
        (0, 0),
        "everything due came back in one sweep: {after:?}"
    );
    assert_eq!(after.available, after.on_hand);
    assert_eq!(stats.orders_due, ORDERS as usize);
    assert_eq!(stats.holds_units_released, HOLDS);
    let exp: u64 = app
        .state
        .redis
        .conn()
        .zcard(app.state.redis.keys.sku(sku).exp())
        .await
        .unwrap();
    assert_eq!(exp, 0, "the deadline index is empty");
    let ids: Vec<u64> = placed.iter().map(|p| p.0).collect();
    for rec in app.state.redis.order_records(&ids).await.unwrap() {
        let rec = rec.expect("the order's record");
        assert_eq!(rec.status, OrderStatus::Cancelled, "order {}", rec.order_id);
        assert_eq!(rec.cancel_reason.as_deref(), Some("expired"));
    }
}

/// 13.6: with 3,000 idle skus loaded, a sweep visits none of them; a sku that gets a hold is
/// visited (and its units come back) once the hold is due, and only then.
#[tokio::test]
async fn idle_skus_cost_the_sweeper_nothing() {
    const IDLE: u64 = 3_000;
    let app = spawn_app_with(|c| c.sweeper.sweep_interval = Duration::from_secs(3600)).await;
    let meta = SkuMeta {
        name: "Idle".into(),
        price: 100,
        sale: None,
    };
    let load = SkuLoad {
        stock: vec![(1, 10)],
        ..SkuLoad::default()
    };
    futures::stream::iter(1..=IDLE)
        .for_each_concurrent(32, |n| {
            let (state, meta, load) = (app.state.clone(), meta.clone(), load.clone());
            async move {
                let sku = Sku::parse(1_000_000 + n).unwrap();
                state.redis.load_sku(sku, &meta, &load).await.unwrap();
            }
        })
        .await;

    let idle = sweeper::run_once(&app.state).await.unwrap();
    assert_eq!(idle.skus, 0, "idle skus are not swept: {idle:?}");
    // The audit (once a minute) reads them all with plain commands and notes none.
    let started = Instant::now();
    let (looked, noted) = app.state.redis.audit_due(500).await.unwrap();
    eprintln!("audit of {looked} idle skus: {:?}", started.elapsed());
    assert_eq!((looked, noted), (IDLE as usize, 0));

    let busy = Sku::parse(1_000_007).unwrap();
    let deadline = hold(&app, busy, 42, 3, Duration::from_millis(300)).await;
    let early = sweeper::run_once(&app.state).await.unwrap();
    assert_eq!(early.skus, 0, "nothing is due yet: {early:?}");

    wait_past(&app, deadline).await;
    let due = sweeper::run_once(&app.state).await.unwrap();
    assert_eq!(due.skus, 1, "only the sku with a due hold: {due:?}");
    assert_eq!(due.holds_units_released, 3);
    let avail: i64 = app
        .state
        .redis
        .conn()
        .hget(app.state.redis.keys.sku(busy).stock(), "avail")
        .await
        .unwrap();
    assert_eq!(avail, 10, "the hold's units came back");

    let after = sweeper::run_once(&app.state).await.unwrap();
    assert_eq!(after.skus, 0, "the swept sku left the index: {after:?}");
}

/// A crash before a reservation's note is written leaves the sku out of the due index:
/// the sweep does not see it, the audit puts it back, and the next sweep gives the units back.
#[tokio::test]
async fn the_audit_puts_back_a_sku_whose_note_was_lost() {
    let app = spawn_app_with(|c| c.sweeper.sweep_interval = Duration::from_secs(3600)).await;
    let sku_n = app.sale_product(10, None).await;
    let sku = Sku::parse(sku_n).unwrap();
    let deadline = hold(&app, sku, 7, 4, Duration::from_millis(200)).await;
    assert_eq!(app.state.redis.flush_due_notes().await.unwrap(), 1);
    let keys = &app.state.redis.keys;
    let _: () = app
        .state
        .redis
        .conn()
        .zrem(keys.due(), sku_n)
        .await
        .unwrap();
    wait_past(&app, deadline).await;
    let missed = sweeper::run_once(&app.state).await.unwrap();
    assert_eq!(missed.skus, 0, "the lost note hides the sku: {missed:?}");
    assert_eq!(app.assert_identity(sku_n).await.held, 4);

    let (looked, noted) = app.state.redis.audit_due(2).await.unwrap();
    assert!(looked >= 1, "the audit walked the loaded skus");
    assert_eq!(noted, 1, "only the sku holding something is noted");
    let swept = sweeper::run_once(&app.state).await.unwrap();
    assert_eq!((swept.skus, swept.holds_units_released), (1, 4));
    let b = app.assert_identity(sku_n).await;
    assert_eq!((b.held, b.available), (0, 10));
}

/// A note that lands while the sweeper works on a sku wins: the sweeper does not move or drop
/// the entry on what it saw before the note.
#[tokio::test]
async fn a_note_during_a_sweep_keeps_the_due_entry() {
    let app = spawn_app_with(|c| c.sweeper.sweep_interval = Duration::from_secs(3600)).await;
    let sku_n = app.sale_product(10, None).await;
    let sku = Sku::parse(sku_n).unwrap();
    let redis = &app.state.redis;
    let seen = redis.due_version(sku).await.unwrap();
    // Meanwhile a customer reserves (script + note) ...
    hold(&app, sku, 9, 1, Duration::from_secs(600)).await;
    redis.flush_due_notes().await.unwrap();
    // ... and the sweeper, having seen nothing, would drop the entry: refused.
    assert!(!redis.settle_due(sku, &seen, None).await.unwrap());
    let score: Option<f64> = redis.conn().zscore(redis.keys.due(), sku_n).await.unwrap();
    assert!(score.is_some(), "the sku stays in the due index");
    // With the current version the sweeper moves it.
    let now = redis.due_version(sku).await.unwrap();
    assert!(redis.settle_due(sku, &now, Some(123)).await.unwrap());
    let score: Option<f64> = redis.conn().zscore(redis.keys.due(), sku_n).await.unwrap();
    assert_eq!(score, Some(123.0));
}

/// Due index entries that hold nothing (no ledger entry), more than a batch of them ahead of a
/// real expired hold: one sweep ends, drops them, and still gives the hold back.
#[tokio::test]
async fn orphan_index_entries_neither_stall_nor_loop_the_sweep() {
    let app = spawn_app_with(|c| c.sweeper.sweep_interval = Duration::from_secs(3600)).await;
    let sku_n = app.sale_product(10, None).await;
    let sku = Sku::parse(sku_n).unwrap();
    let exp = app.state.redis.keys.sku(sku).exp();
    let mut pipe = redis::pipe();
    for i in 0..(sweeper::BATCH as u64 + 100) {
        pipe.zadd(&exp, format!("o:{}", 900_000 + i), 1).ignore();
    }
    let _: () = pipe.query_async(&mut app.state.redis.conn()).await.unwrap();
    let deadline = hold(&app, sku, 5, 2, Duration::from_millis(100)).await;
    wait_past(&app, deadline).await;
    let s = sweeper::run_once(&app.state).await.unwrap();
    assert_eq!(s.holds_units_released, 2, "{s:?}");
    let left: u64 = app.state.redis.conn().zcard(&exp).await.unwrap();
    assert_eq!(left, 0);
    assert_eq!(app.assert_identity(sku_n).await.available, 10);
}

/// Notes wait in memory, the earliest per sku: thousands of reservations on a sku cost one note
/// at the next pass; a reservation made after a pass began is noted at the next one.
#[tokio::test]
async fn notes_are_coalesced_per_sku_until_the_next_pass() {
    let app = spawn_app_with(|c| c.sweeper.sweep_interval = Duration::from_secs(3600)).await;
    let sku_n = app.sale_product(1_000, None).await;
    let sku = Sku::parse(sku_n).unwrap();
    let redis = &app.state.redis;
    redis.flush_due_notes().await.unwrap();
    let mut first = i64::MAX;
    for user in 1..=300 {
        first = first.min(hold(&app, sku, user, 1, Duration::from_secs(600)).await);
    }
    let v0 = redis.due_version(sku).await.unwrap();
    assert_eq!(
        redis.flush_due_notes().await.unwrap(),
        1,
        "one note for 300 holds"
    );
    assert_eq!(
        redis.flush_due_notes().await.unwrap(),
        0,
        "nothing left to note"
    );
    let v1 = redis.due_version(sku).await.unwrap();
    assert_ne!(v0, v1);
    let score: Option<f64> = redis.conn().zscore(redis.keys.due(), sku_n).await.unwrap();
    assert_eq!(score, Some(first as f64), "the earliest deadline of them");
}

/// Two instances sweeping the same due orders and holds at once: every unit comes back exactly
/// once (the identity holds, nothing is released twice), every order is expired.
#[tokio::test]
async fn two_sweepers_at_once_give_back_each_unit_once() {
    const ORDERS: u64 = 1_000;
    const HOLDS: u64 = 700;
    let app = spawn_app_with(|c| {
        c.sweeper.sweep_interval = Duration::from_secs(3600);
        c.sale.payment_ttl = Duration::from_secs(2);
    })
    .await;
    let sku_n = app.sale_product((ORDERS + HOLDS) as i64, None).await;
    let sku = Sku::parse(sku_n).unwrap();
    let placed = place_orders(&app, sku, ORDERS).await;
    let mut last = placed.iter().map(|p| p.1).max().unwrap();
    for user in ORDERS + 1..=ORDERS + HOLDS {
        last = last.max(hold(&app, sku, user, 1, Duration::from_secs(2)).await);
    }
    assert_eq!(app.assert_identity(sku_n).await.available, 0);
    wait_past(&app, last).await;

    let (a, b) = tokio::join!(sweeper::run_once(&app.state), sweeper::run_once(&app.state));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.holds_units_released + b.holds_units_released,
        HOLDS,
        "{a:?} {b:?}"
    );
    let after = app.assert_identity(sku_n).await;
    assert_eq!(
        (after.available, after.held, after.reserved),
        ((ORDERS + HOLDS) as i64, 0, 0)
    );
    let ids: Vec<u64> = placed.iter().map(|p| p.0).collect();
    for rec in app.state.redis.order_records(&ids).await.unwrap() {
        assert_eq!(rec.unwrap().status, OrderStatus::Cancelled);
    }
    // Nothing is left due: the next pass visits nothing.
    assert_eq!(sweeper::run_once(&app.state).await.unwrap().skus, 0);
}

/// `reconcile` during a live sale: holds taken, given back and expiring all the while, and
/// every check finds Redis's counters and ledgers together (the soak found "cart holds add up
/// to 5, held is 6": the counters and the ledger were read in two steps, a sweep between).
#[tokio::test]
async fn reconcile_during_a_live_sale_finds_counters_and_ledgers_together() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let app = Arc::new(
        spawn_app_with(|c| {
            c.sale.cart_hold_ttl = std::time::Duration::from_millis(150);
            c.sweeper.sweep_interval = std::time::Duration::from_millis(5);
            c.outbox.worker = true;
        })
        .await,
    );
    let sku = app.sale_product(1_000, None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let churn: Vec<_> = (0..8u64)
        .map(|i| {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let t = app.customer_token(61_000 + i);
                while !stop.load(Ordering::Relaxed) {
                    app.try_cart_add(&t, sku, 1 + i % 3).await;
                    if i % 2 == 0 {
                        app.try_cart_remove(&t, sku, Some(1)).await;
                    }
                }
            })
        })
        .collect();
    let mut checked = 0;
    for _ in 0..300 {
        let checks = flashsale::service::reconcile::check(&app.state)
            .await
            .unwrap();
        for c in &checks {
            assert!(c.ok(), "reconcile during the sale: {c:?}");
            checked += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in churn {
        h.await.unwrap();
    }
    assert!(checked >= 300, "the sku was checked every time");
    app.assert_identity(sku).await;
}
