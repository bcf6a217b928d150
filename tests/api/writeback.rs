//! The outbox write-back: orders reach MySQL exactly once in effect, whatever fails and when.

use std::time::Duration;

use flashsale::worker::writer::{Fault, Writer};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

async fn mysql_count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

async fn backlog(app: &TestApp) -> (u64, u64) {
    Writer::new(app.state.clone()).backlog().await.unwrap()
}

#[tokio::test]
async fn every_outcome_reaches_mysql_once() {
    let app = spawn_app_with(|c| c.sale.payment_ttl = Duration::from_millis(800)).await;
    let sku = app.sale_product(20, None).await;
    let paid = app.buy_and_pay(701, sku, 3).await;
    let t = app.customer_token(702);
    let cancelled = app.buy_now(&t, sku, 2).await.order_id;
    app.try_cancel(&t, cancelled).await;
    let expiring = app.buy_now(&t, sku, 1).await.order_id;
    let failed = app.failed_order(702, sku, 1).await;

    // Before the write-back: sold in Redis, not yet off MySQL's on_hand.
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.sold), (20, 3));

    let s = app.write_back().await;
    assert!(s.events >= 5, "{s:?}");
    tokio::time::sleep(Duration::from_millis(900)).await;
    app.sweep().await; // expires `expiring`
    app.write_back().await;

    let b = app.assert_identity(sku).await;
    assert_eq!(
        (b.on_hand, b.sold, b.reserved, b.available),
        (17, 0, 0, 17),
        "paid units left on_hand once"
    );
    let status = |id: u64| {
        let db = app.state.db.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>)>(
                "SELECT status, cancel_reason FROM orders WHERE id = ?",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    assert_eq!(status(paid).await, ("paid".into(), None));
    assert_eq!(
        status(cancelled).await,
        ("cancelled".into(), Some("customer".into()))
    );
    assert_eq!(
        status(expiring).await,
        ("cancelled".into(), Some("expired".into()))
    );
    assert_eq!(
        status(failed).await,
        ("failed".into(), Some("failed".into()))
    );
    assert_eq!(
        mysql_count(
            &app,
            &format!("SELECT COUNT(*) FROM order_status_history WHERE order_id = {paid}")
        )
        .await,
        2
    );
    assert_eq!(
        mysql_count(
            &app,
            &format!("SELECT CAST(SUM(count) AS SIGNED) FROM order_items WHERE order_id = {paid}")
        )
        .await,
        3
    );
    assert_eq!(backlog(&app).await, (0, 0), "everything acknowledged");

    // Running again changes nothing.
    assert_eq!(app.write_back().await.events, 0);
    assert_eq!(app.assert_identity(sku).await.on_hand, 17);

    // Reads of finished orders survive their Redis record: MySQL answers.
    let mut conn = app.state.redis.conn();
    let _: () = conn.del(app.state.redis.keys.order(paid)).await.unwrap();
    let r = app
        .get(
            &format!("/v1/orders/{paid}"),
            Some(&app.customer_token(701)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "paid");
    assert_eq!(r.body["items"][0]["count"], 3);
    let r = app
        .post_empty(
            &format!("/v1/orders/{paid}/pay"),
            Some(&app.customer_token(701)),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "paying a paid order again answers it: {:?}",
        r.body
    );
    let r = app
        .post_empty(
            &format!("/v1/orders/{paid}/cancel"),
            Some(&app.customer_token(701)),
        )
        .await;
    assert_eq!(r.code(), "order_not_cancellable");
    let r = app
        .get(
            &format!("/v1/orders/{paid}"),
            Some(&app.customer_token(702)),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "still private");
}

#[tokio::test]
async fn mysql_down_the_sale_goes_on_and_nothing_is_lost() {
    let app = spawn_app().await;
    let sku = app.sale_product(600, None).await;
    // The worker's MySQL is unreachable (a closed port): every attempt fails.
    let down = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("mysql://root@127.0.0.1:1/nothing")
        .unwrap();
    let writer = Writer::new(app.state.clone());
    let mut ids = Vec::new();
    for i in 0..500u64 {
        ids.push(app.buy_and_pay(40_000 + i, sku, 1).await);
        if i % 100 == 0 {
            let r = writer.run_once(&down, Fault::None).await;
            assert!(r.is_err(), "MySQL is down: nothing can be written");
        }
    }
    let (len, pending) = backlog(&app).await;
    assert_eq!(
        len, 1_000,
        "500 created + 500 paid events wait in the outbox"
    );
    assert!(pending > 0, "the failed attempts left entries pending");
    assert_eq!(mysql_count(&app, "SELECT COUNT(*) FROM orders").await, 0);
    let b = app.assert_identity(sku).await;
    assert_eq!(
        (b.sold, b.available),
        (500, 100),
        "Redis sold them all the same"
    );

    // MySQL is back.
    let started = std::time::Instant::now();
    let s = writer.run_once(&app.state.db, Fault::None).await.unwrap();
    let took = started.elapsed();
    println!(
        "write-back of a 1000-event backlog (500 orders created + paid): {took:?}, {:.0} events/s",
        1_000.0 / took.as_secs_f64()
    );
    assert_eq!(s.events, 1_000);
    assert_eq!(backlog(&app).await, (0, 0));
    assert_eq!(
        mysql_count(&app, "SELECT COUNT(*) FROM orders WHERE status = 'paid'").await,
        500
    );
    assert_eq!(
        mysql_count(&app, "SELECT COUNT(*) FROM order_items").await,
        500
    );
    assert_eq!(
        mysql_count(
            &app,
            "SELECT CAST(SUM(units) AS SIGNED) FROM stock_movements"
        )
        .await,
        500
    );
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.sold, b.available), (100, 0, 100));
}

#[tokio::test]
async fn a_crash_between_commit_and_ack_applies_nothing_twice() {
    let app = spawn_app_with(|c| c.outbox.claim_idle = Duration::ZERO).await;
    let sku = app.sale_product(50, None).await;
    for i in 0..10 {
        app.buy_and_pay(50_000 + i, sku, 2).await;
    }
    // The first worker commits to MySQL and dies before its Redis follow-up and its ack.
    let first = Writer::named(app.state.clone(), "worker-a");
    assert!(
        first
            .run_once(&app.state.db, Fault::AfterCommit)
            .await
            .is_err()
    );
    assert_eq!(
        mysql_count(&app, "SELECT COUNT(*) FROM orders WHERE status = 'paid'").await,
        10
    );
    let on_hand = mysql_count(
        &app,
        &format!("SELECT CAST(SUM(on_hand) AS SIGNED) FROM stock WHERE sku = {sku}"),
    )
    .await;
    assert_eq!(on_hand, 30);
    let (_, pending) = backlog(&app).await;
    assert_eq!(pending, 20, "nothing acknowledged");

    // Another instance claims the dead one's entries and finishes the job.
    let second = Writer::named(app.state.clone(), "worker-b");
    let s = second.run_once(&app.state.db, Fault::None).await.unwrap();
    assert_eq!(s.events, 20);
    assert_eq!(backlog(&app).await, (0, 0));
    assert_eq!(mysql_count(&app, "SELECT COUNT(*) FROM orders").await, 10);
    assert_eq!(
        mysql_count(&app, "SELECT COUNT(*) FROM order_status_history").await,
        20
    );
    assert_eq!(
        mysql_count(&app, "SELECT COUNT(*) FROM stock_movements").await,
        10
    );
    let b = app.assert_identity(sku).await;
    assert_eq!(
        (b.on_hand, b.sold, b.available),
        (30, 0, 30),
        "on_hand lowered once, not twice"
    );

    app.assert_reconciles().await;
}

#[tokio::test]
async fn reconcile_finds_a_planted_mismatch() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    app.buy_and_pay(801, sku, 2).await;
    app.write_back().await;
    let checks = flashsale::service::reconcile::check(&app.state)
        .await
        .unwrap();
    assert_eq!(checks.len(), 1);
    assert!(
        checks[0].ok(),
        "{}",
        flashsale::service::reconcile::table(&checks)
    );
    assert_eq!(
        (checks[0].on_hand, checks[0].available, checks[0].sold),
        (8, 8, 0)
    );

    // A unit appears in Redis from nowhere.
    let keys = app
        .state
        .redis
        .keys
        .sku(flashsale::domain::Sku::parse(sku).unwrap());
    let mut conn = app.state.redis.conn();
    let _: () = redis::cmd("HINCRBY")
        .arg(keys.stock())
        .arg("avail")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let checks = flashsale::service::reconcile::check(&app.state)
        .await
        .unwrap();
    assert!(!checks[0].ok());
    let table = flashsale::service::reconcile::table(&checks);
    assert!(table.contains("MISMATCH"), "{table}");
    assert!(
        checks[0].problems.iter().any(|p| p.contains("on_hand")),
        "{:?}",
        checks[0].problems
    );
    assert!(
        checks[0]
            .problems
            .iter()
            .any(|p| p.contains("warehouses add up")),
        "{:?}",
        checks[0].problems
    );
}

#[tokio::test]
async fn redis_flushed_rebuild_restores_without_overselling() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, Some(4)).await;
    app.buy_and_pay(901, sku, 3).await; // paid: 3
    let t = app.customer_token(902);
    let open = app.buy_now(&t, sku, 4).await.order_id; // awaiting payment: 4
    app.post(
        "/v1/cart/items",
        Some(&app.customer_token(903)),
        json!({"sku": sku, "count": 1}),
    )
    .await; // held: 1
    app.write_back().await;
    assert_eq!(app.available(sku).await, 2);

    // Redis loses everything of this deployment (on a cluster, every master's share).
    let gone = delete_keys(
        &app.state.cfg.stores.redis_url,
        &app.state.redis.keys.pattern(),
    )
    .await;
    assert!(gone > 0);

    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    assert_eq!(report.skus_loaded, 1);
    assert_eq!(report.orders_restored, 1);
    assert_eq!(report.units_reserved, 4);
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // The cart hold is gone (its customer's cart lived in Redis), the open order is back.
    assert_eq!(app.available(sku).await, 3);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.reserved, b.held, b.sold), (7, 4, 0, 0));
    // No further sale oversells: 3 can be had, not 4.
    let r = app
        .post(
            "/v1/orders/buy-now",
            Some(&app.customer_token(904)),
            json!({"sku": sku, "count": 4}),
        )
        .await;
    assert_eq!(r.code(), "out_of_stock");
    let r = app
        .post(
            "/v1/orders/buy-now",
            Some(&app.customer_token(904)),
            json!({"sku": sku, "count": 3}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(app.available(sku).await, 0);
    // The limit remembers what customer 901 bought.
    let r = app
        .post(
            "/v1/cart/items",
            Some(&app.customer_token(901)),
            json!({"sku": sku, "count": 2}),
        )
        .await;
    assert!(
        ["limit_exceeded", "out_of_stock"].contains(&r.code()),
        "{:?}",
        r.body
    );
    // The restored order can still be paid, and the paid one is still listed.
    app.pay(&t, open).await;
    let list = app
        .get("/v1/orders?status=paid", Some(&app.customer_token(901)))
        .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    app.write_back().await;
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.reserved, b.sold), (3, 3, 0));
    app.assert_reconciles().await;
}

/// A paid line's units leave the warehouses they were taken from, also when Redis lost the
/// line's ledger: the event carries the allocation (the order record's `alloc`).
#[tokio::test]
async fn a_paid_lines_warehouses_come_from_the_event_when_its_ledger_is_gone() {
    let app = spawn_app().await;
    let sku = app.product("Flash item", 10_000).await;
    let (w1, w2) = (app.warehouse("wh-a").await, app.warehouse("wh-b").await);
    app.restock(sku, w1, 2).await;
    app.restock(sku, w2, 3).await;
    app.open_sale(sku, 5_000, None).await;
    let t = app.customer_token(22_700);
    let order = app.buy_now(&t, sku, 4).await.order_id;
    // Its record says where the units came from: both of w1's, two of w2's.
    let alloc: Option<String> = app
        .state
        .redis
        .conn()
        .hget(app.state.redis.keys.order(order), "alloc")
        .await
        .unwrap();
    assert_eq!(
        alloc.as_deref(),
        Some(format!("{{\"{sku}\":\"{w1}:2,{w2}:2\"}}").as_str())
    );
    app.pay(&t, order).await;
    // Redis loses the sku's keys (the sold ledger with them) before the write-back.
    let pattern = format!("{}:{{sku:{sku}}}:*", app.prefix);
    assert!(delete_keys(&app.state.cfg.stores.redis_url, &pattern).await > 0);
    app.write_back().await;
    let rows: Vec<(u32, u32)> = sqlx::query_as(
        "SELECT warehouse_id, units FROM stock_movements WHERE order_id = ? ORDER BY warehouse_id",
    )
    .bind(order)
    .fetch_all(&app.state.db)
    .await
    .unwrap();
    assert_eq!(rows, vec![(w1 as u32, 2), (w2 as u32, 2)]);
    let on_hand: Vec<(u32, u64)> = sqlx::query_as(
        "SELECT warehouse_id, on_hand FROM stock WHERE sku = ? ORDER BY warehouse_id",
    )
    .bind(sku)
    .fetch_all(&app.state.db)
    .await
    .unwrap();
    assert_eq!(on_hand, vec![(w1 as u32, 0), (w2 as u32, 1)]);
    assert_eq!(
        mysql_count(
            &app,
            "SELECT CAST(SUM(units) AS SIGNED) FROM stock_movements"
        )
        .await,
        4
    );
}
