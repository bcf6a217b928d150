//! Stock and orders stay right when MySQL and Redis misbehave: admin stock changes racing the
//! write-back, MySQL errors during the write-back, set-aside events and their replay, and
//! order ids after Redis lost its data.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use flashsale::worker::writer::{Fault, Writer};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

use crate::helpers::*;

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

async fn on_hand(app: &TestApp, sku: u64) -> i64 {
    scalar(
        app,
        &format!("SELECT CAST(COALESCE(SUM(on_hand), 0) AS SIGNED) FROM stock WHERE sku = {sku}"),
    )
    .await
}

/// Buys `count` units with buy-now and pays; returns the order id.
async fn buy_and_pay(app: &TestApp, user: u64, sku: u64, count: u64) -> u64 {
    let t = app.customer_token(user);
    let r = app
        .post(
            "/v1/orders/buy-now",
            Some(&t),
            json!({"sku": sku, "count": count}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["order_id"].as_u64().unwrap();
    let r = app
        .post_empty(&format!("/v1/orders/{id}/pay"), Some(&t))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "paid");
    id
}

/// Another MySQL session on the test's database (the "third session" of the race tests).
async fn session(app: &TestApp) -> sqlx::MySqlConnection {
    sqlx::MySqlConnection::connect(&app.state.cfg.mysql_url)
        .await
        .unwrap()
}

/// Sessions of the test's database in a statement that writes `stock` now: with the rows held
/// by another session, those are waiting for them.
async fn lock_waits(app: &TestApp) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ? \
         AND (INFO LIKE 'UPDATE stock %' OR INFO LIKE 'INSERT INTO stock %')",
    )
    .bind(&app.db_name)
    .fetch_one(&app.state.db)
    .await
    .unwrap()
}

/// Waits until `n` transactions of the test's database wait for a lock (a state, polled), or
/// `unless` turns true (what should have queued finished without waiting).
async fn until_lock_waits_or(app: &TestApp, n: i64, unless: &AtomicBool) {
    for _ in 0..600 {
        if lock_waits(app).await >= n || unless.load(SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sessions = sqlx::query_as::<_, (String, i64, Option<String>, Option<String>)>(
        "SELECT COMMAND, TIME, STATE, INFO FROM information_schema.PROCESSLIST WHERE DB = ?",
    )
    .bind(&app.db_name)
    .fetch_all(&app.state.db)
    .await
    .unwrap();
    panic!("{n} lock waits never happened; sessions: {sessions:?}");
}

async fn until_lock_waits(app: &TestApp, n: i64) {
    until_lock_waits_or(app, n, &AtomicBool::new(false)).await
}

/// Holds the stock rows of `sku` in another session; the write-back queues on them, then the
/// admin's change of `delta`; the rows are let go. Returns the admin's answer.
async fn race_admin_with_write_back(app: &TestApp, sku: u64, w: u64, delta: i64) -> Resp {
    let mut third = session(app).await;
    sqlx::raw_sql("BEGIN").execute(&mut third).await.unwrap();
    sqlx::query("SELECT on_hand FROM stock WHERE sku = ? FOR UPDATE")
        .bind(sku as u32)
        .fetch_all(&mut third)
        .await
        .unwrap();
    let writer = Writer::new(app.state.clone());
    let admin_done = AtomicBool::new(false);
    let (written, adjusted, ()) = tokio::join!(
        writer.run_once(&app.state.db, Fault::None),
        async {
            // The write-back waits for the row; then the admin reads and queues behind it.
            until_lock_waits(app, 1).await;
            let r = app.add_stock(sku, w, delta).await;
            admin_done.store(true, SeqCst);
            r
        },
        async {
            until_lock_waits_or(app, 2, &admin_done).await;
            sqlx::raw_sql("COMMIT").execute(&mut third).await.unwrap();
        }
    );
    written.unwrap();
    adjusted
}

async fn reconciles(app: &TestApp) {
    let checks = flashsale::reconcile::check(&app.state).await.unwrap();
    assert!(
        checks.iter().all(|c| c.ok()),
        "{}",
        flashsale::reconcile::table(&checks)
    );
}

// ---- 12.1: admin stock changes vs the write-back ------------------------------------------

/// The admin's change reads on_hand, the write-back lowers it and commits, then the admin's
/// change is written: staged with a third session holding the stock row, so the write-back
/// queues first and the admin second. No update may be lost.
#[tokio::test]
async fn an_admin_stock_change_racing_the_write_back_loses_no_update() {
    let app = spawn_app().await;
    let sku = app.sale_product(100, None).await;
    buy_and_pay(&app, 1201, sku, 5).await;
    let w = app.get(&format!("/v1/products/{sku}/stocks"), None).await.body["stocks"][0]["warehouse_id"]
        .as_u64()
        .unwrap();

    let adjusted = race_admin_with_write_back(&app, sku, w, 1).await;
    assert_eq!(adjusted.status, StatusCode::OK, "{:?}", adjusted.body);
    assert_eq!(on_hand(&app, sku).await, 96, "100 - 5 sold + 1 added");
    assert_eq!(
        adjusted.body["on_hand"], 96,
        "the answer tells the on_hand after both changes"
    );
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.sold), (96, 96, 0));
    reconciles(&app).await;

    // The same with a removal.
    buy_and_pay(&app, 1202, sku, 3).await;
    let adjusted = race_admin_with_write_back(&app, sku, w, -2).await;
    assert_eq!(adjusted.status, StatusCode::OK, "{:?}", adjusted.body);
    assert_eq!(on_hand(&app, sku).await, 91, "96 - 3 sold - 2 removed");
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.sold), (91, 91, 0));
    reconciles(&app).await;
}

/// Paying customers and an admin adding units all the time, the write-back running throughout:
/// MySQL ends exactly at what was added minus what was sold.
#[tokio::test]
async fn stock_changes_under_a_running_sale_add_up_exactly() {
    let app = spawn_app().await;
    let sku = app.sale_product(1_000, None).await;
    let w = app.get(&format!("/v1/products/{sku}/stocks"), None).await.body["stocks"][0]["warehouse_id"]
        .as_u64()
        .unwrap();
    let done = AtomicBool::new(false);
    let buyers = async {
        let mut n = 0u64;
        for round in 0..20u64 {
            let ids: Vec<u64> = (0..10).map(|i| 60_000 + round * 10 + i).collect();
            futures::future::join_all(ids.iter().map(|u| buy_and_pay(&app, *u, sku, 2))).await;
            n += 20;
        }
        done.store(true, SeqCst);
        n
    };
    let admin = async {
        let mut added = 0i64;
        while !done.load(SeqCst) {
            let r = app.add_stock(sku, w, 1).await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            added += 1;
        }
        added
    };
    let writer = async {
        let writer = Writer::new(app.state.clone());
        while !done.load(SeqCst) {
            writer.run_once(&app.state.db, Fault::None).await.unwrap();
        }
    };
    let (sold, added, ()) = tokio::join!(buyers, admin, writer);
    app.write_back().await;
    assert!(added > 0);
    assert_eq!(on_hand(&app, sku).await, 1_000 + added - sold as i64);
    let b = app.assert_identity(sku).await;
    assert_eq!(b.sold, 0);
    reconciles(&app).await;
}
