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

/// Another MySQL session on the test's database (the "third session" of the race tests).
async fn session(app: &TestApp) -> sqlx::MySqlConnection {
    sqlx::MySqlConnection::connect(&app.state.cfg.stores.mysql_url)
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

// ---- 12.1: admin stock changes vs the write-back ------------------------------------------

/// The admin's change reads on_hand, the write-back lowers it and commits, then the admin's
/// change is written: staged with a third session holding the stock row, so the write-back
/// queues first and the admin second. No update may be lost.
#[tokio::test]
async fn an_admin_stock_change_racing_the_write_back_loses_no_update() {
    let app = spawn_app().await;
    let sku = app.sale_product(100, None).await;
    app.buy_and_pay(1201, sku, 5).await;
    let w = app
        .get(&format!("/v1/products/{sku}/stocks"), None)
        .await
        .body["stocks"][0]["warehouse_id"]
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
    app.assert_reconciles().await;

    // The same with a removal.
    app.buy_and_pay(1202, sku, 3).await;
    let adjusted = race_admin_with_write_back(&app, sku, w, -2).await;
    assert_eq!(adjusted.status, StatusCode::OK, "{:?}", adjusted.body);
    assert_eq!(on_hand(&app, sku).await, 91, "96 - 3 sold - 2 removed");
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.sold), (91, 91, 0));
    app.assert_reconciles().await;
}

/// Paying customers and an admin adding units all the time, the write-back running throughout:
/// MySQL ends exactly at what was added minus what was sold.
#[tokio::test]
async fn stock_changes_under_a_running_sale_add_up_exactly() {
    let app = spawn_app().await;
    let sku = app.sale_product(1_000, None).await;
    let w = app
        .get(&format!("/v1/products/{sku}/stocks"), None)
        .await
        .body["stocks"][0]["warehouse_id"]
        .as_u64()
        .unwrap();
    let done = AtomicBool::new(false);
    let buyers = async {
        let mut n = 0u64;
        for round in 0..20u64 {
            let ids: Vec<u64> = (0..10).map(|i| 60_000 + round * 10 + i).collect();
            futures::future::join_all(ids.iter().map(|u| app.buy_and_pay(*u, sku, 2))).await;
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
    app.assert_reconciles().await;
}

// ---- 12.2: MySQL trouble never drops a paid order; set-aside events and their replay ------

async fn status_in_mysql(app: &TestApp, order_id: u64) -> Option<String> {
    sqlx::query_scalar::<_, String>("SELECT status FROM orders WHERE id = ?")
        .bind(order_id)
        .fetch_optional(&app.state.db)
        .await
        .unwrap()
}

async fn outbox_len(app: &TestApp) -> u64 {
    Writer::new(app.state.clone()).backlog().await.unwrap().0
}

/// A pool on the test's database whose sessions give up a lock wait after one second.
async fn impatient_pool(app: &TestApp) -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .after_connect(|c, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET SESSION innodb_lock_wait_timeout = 1")
                    .execute(c)
                    .await?;
                Ok(())
            })
        })
        .connect(&app.state.cfg.stores.mysql_url)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_paid_order_reaches_mysql_through_lock_wait_timeouts_and_a_missing_table() {
    let app = spawn_app().await;
    let sku = app.sale_product(100, None).await;
    let order = app.buy_and_pay(1221, sku, 5).await;
    let writer = Writer::new(app.state.clone());

    // Another session holds the stock row: every write-back attempt meets error 1205.
    let impatient = impatient_pool(&app).await;
    let mut third = session(&app).await;
    sqlx::raw_sql("BEGIN").execute(&mut third).await.unwrap();
    sqlx::query("SELECT on_hand FROM stock WHERE sku = ? FOR UPDATE")
        .bind(sku as u32)
        .fetch_all(&mut third)
        .await
        .unwrap();
    for attempt in 0..7 {
        let e = writer
            .run_once(&impatient, Fault::None)
            .await
            .expect_err("the stock row is locked");
        assert!(e.to_string().contains("1205"), "attempt {attempt}: {e}");
    }
    sqlx::raw_sql("COMMIT").execute(&mut third).await.unwrap();
    assert_eq!(app.state.redis.set_aside_count().await.unwrap(), 0);
    assert_eq!(
        outbox_len(&app).await,
        2,
        "created + paid wait in the outbox"
    );

    // The stock table is gone for a while (error 1146).
    sqlx::raw_sql("RENAME TABLE stock TO stock_away")
        .execute(&mut third)
        .await
        .unwrap();
    for _ in 0..7 {
        assert!(writer.run_once(&app.state.db, Fault::None).await.is_err());
    }
    sqlx::raw_sql("RENAME TABLE stock_away TO stock")
        .execute(&mut third)
        .await
        .unwrap();
    assert_eq!(app.state.redis.set_aside_count().await.unwrap(), 0);
    assert_eq!(outbox_len(&app).await, 2);

    // MySQL is well again: the paid order arrives, once.
    let s = writer.run_once(&app.state.db, Fault::None).await.unwrap();
    assert_eq!((s.events, s.set_aside, s.failing), (2, 0, 0));
    assert_eq!(status_in_mysql(&app, order).await.as_deref(), Some("paid"));
    assert_eq!(on_hand(&app, sku).await, 95);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.sold), (95, 0));
    assert_eq!(outbox_len(&app).await, 0);
    app.assert_reconciles().await;
}

#[tokio::test]
async fn an_unparseable_event_is_set_aside_whole_and_the_rest_is_written() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let order = app.buy_and_pay(1222, sku, 2).await;
    let outbox = app.state.redis.keys.outbox(3);
    let mut conn = app.state.redis.conn();
    let _: String = redis::cmd("XADD")
        .arg(&outbox)
        .arg("*")
        .arg("type")
        .arg("paid")
        .arg("order_id")
        .arg("not-a-number")
        .query_async(&mut conn)
        .await
        .unwrap();
    let s = app.write_back().await;
    assert_eq!((s.events, s.set_aside, s.failing), (2, 1, 0), "{s:?}");
    assert_eq!(status_in_mysql(&app, order).await.as_deref(), Some("paid"));
    assert_eq!(outbox_len(&app).await, 0);

    let kept = app.state.redis.list_set_aside(100).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].reason, "unparseable");
    assert!(kept[0].id.starts_with("3-"), "{:?}", kept[0]);
    assert_eq!(kept[0].event["order_id"], "not-a-number", "kept whole");
    assert_eq!(app.state.redis.set_aside_count().await.unwrap(), 1);
    // Writing again changes nothing: it is not retried, not lost.
    assert_eq!(app.write_back().await, Default::default());
    assert_eq!(app.state.redis.set_aside_count().await.unwrap(), 1);

    // The operator's list shows it; a replay puts it back, and it is set aside again.
    let listed = flashsale::service::outbox_dead::list(&app.state, 10)
        .await
        .unwrap();
    assert!(
        listed
            .iter()
            .any(|e| e.id == kept[0].id && e.reason == "unparseable"),
        "{listed:?}"
    );
    let (text, code) = outbox_dead_command(&app, &["list", "--limit", "10"]).await;
    assert_eq!(code, 0);
    assert!(
        text.contains(&kept[0].id) && text.contains("unparseable"),
        "{text}"
    );
    let (_, code) = outbox_dead_command(&app, &["show", "3-nonsense"]).await;
    assert_eq!(code, 2, "a malformed id");
}

/// `flashsale outbox-dead <args>` (the binary) on this app's stores: what it printed, and its
/// exit code.
async fn outbox_dead_command(app: &TestApp, args: &[&str]) -> (String, i32) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    for (k, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("FLASHSALE_") || k.starts_with("OTEL_"))
    {
        cmd.env_remove(k);
    }
    let out = cmd
        .arg("outbox-dead")
        .args(args)
        .envs(Service::env_of(&app.state.cfg, 0))
        .output()
        .await
        .expect("the flashsale binary runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[tokio::test]
async fn a_set_aside_event_is_replayed_exactly_once() {
    use flashsale::service::outbox_dead::{self, Replayed, SetAsideId};
    use flashsale::store::redis::outbox::SetAsideReason;

    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let order = app.buy_and_pay(1223, sku, 3).await;
    // The paid event is set aside (as the old policy did after five failed attempts).
    let p = order % flashsale::store::redis::keys::ORDER_PARTITIONS;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(app.state.redis.keys.outbox(p))
        .arg("-")
        .arg("+")
        .query_async(&mut app.state.redis.conn())
        .await
        .unwrap();
    let paid = entries
        .ids
        .iter()
        .find(|e| e.get::<String>("type").as_deref() == Some("paid"))
        .unwrap()
        .id
        .clone();
    assert!(
        app.state
            .redis
            .set_aside(p, &paid, "writers", SetAsideReason::Collision, "staged")
            .await
            .unwrap()
    );
    assert!(
        !app.state
            .redis
            .set_aside(p, &paid, "writers", SetAsideReason::Collision, "staged")
            .await
            .unwrap(),
        "set aside once"
    );
    app.write_back().await;
    assert_eq!(
        status_in_mysql(&app, order).await.as_deref(),
        Some("awaiting_payment")
    );
    let id = app.state.redis.list_set_aside(10).await.unwrap()[0]
        .id
        .clone();

    // Two operators replay it at the same moment: once.
    let id = SetAsideId::parse(&id).unwrap();
    let replay = || outbox_dead::replay(&app.state, &id);
    let (a, b) = tokio::join!(replay(), replay());
    let both = [a.unwrap(), b.unwrap()];
    let requeued = both
        .iter()
        .filter(|r| matches!(r, Replayed::Requeued(_)))
        .count();
    let gone = both.iter().filter(|r| **r == Replayed::Gone).count();
    assert_eq!(
        (requeued, gone),
        (1, 1),
        "one replayed, one found it gone: {both:?}"
    );
    assert_eq!(app.state.redis.set_aside_count().await.unwrap(), 0);
    let s = app.write_back().await;
    assert_eq!((s.events, s.set_aside), (1, 0));
    assert_eq!(status_in_mysql(&app, order).await.as_deref(), Some("paid"));
    // It keeps its event id (the first stream id).
    let event_id: String = sqlx::query_scalar(
        "SELECT event_id FROM order_status_history WHERE order_id = ? AND event = 'paid'",
    )
    .bind(order)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(event_id, format!("{p}-{paid}"));
    // And again: nothing more.
    assert_eq!(replay().await.unwrap(), Replayed::Gone);
    assert_eq!(app.write_back().await.events, 0);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.sold), (7, 0), "on_hand lowered once");
    app.assert_reconciles().await;
}

// ---- 13.1: order ids after Redis lost its data ----------------------------------------------

async fn flush_prefix(app: &TestApp) {
    let mut conn = app.state.redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(app.state.redis.keys.pattern())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn order_ids_never_repeat_after_redis_lost_its_data_under_the_running_service() {
    let app = spawn_app().await;
    let sku = app.sale_product(100, None).await;
    let a = app.buy_and_pay(1311, sku, 1).await;
    app.write_back().await;

    flush_prefix(&app).await;

    // Redis lost its data under the running service: nothing is sold (no id handed out, no
    // sku counter reloaded without its open orders) until rebuild-cache restored it.
    let r = app
        .post(
            "/v1/orders/buy-now",
            Some(&app.customer_token(1312)),
            json!({"sku": sku, "count": 5}),
        )
        .await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "");
    assert_eq!(
        app.get("/readyz", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();

    let b = app.buy_and_pay(1312, sku, 5).await;
    assert!(b > a, "order id {b} handed out again after {a}");
    app.write_back().await;
    let rows: Vec<(u64, u64, String)> =
        sqlx::query_as("SELECT id, user_id, status FROM orders ORDER BY id")
            .fetch_all(&app.state.db)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![(a, 1311, "paid".into()), (b, 1312, "paid".into())]
    );
    assert_eq!(on_hand(&app, sku).await, 94, "100 - 1 - 5");
    let r = app
        .get(&format!("/v1/orders/{b}"), Some(&app.customer_token(1312)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["items"][0]["count"], 5);
    let r = app
        .get(&format!("/v1/orders/{a}"), Some(&app.customer_token(1311)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["items"][0]["count"], 1);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.sold), (94, 94, 0));
}

#[tokio::test]
async fn a_lost_id_counter_and_mysql_unable_to_tell_the_largest_id_sell_nothing() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let a = app.buy_and_pay(1313, sku, 1).await;
    app.write_back().await;
    flush_prefix(&app).await;
    // The operator rebuilds (sales stop until then); then the orders table goes away for a
    // while and Redis loses the id counter once more.
    let _ = app.get("/readyz", None).await;
    flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    assert_eq!(app.available(sku).await, 9);
    let _: () = redis::cmd("DEL")
        .arg(app.state.redis.keys.order_seq())
        .query_async(&mut app.state.redis.conn())
        .await
        .unwrap();
    let mut third = session(&app).await;
    sqlx::raw_sql("RENAME TABLE orders TO orders_away")
        .execute(&mut third)
        .await
        .unwrap();
    let t = app.customer_token(1314);
    let r = app.try_buy_now(&t, sku, 2).await;
    sqlx::raw_sql("RENAME TABLE orders_away TO orders")
        .execute(&mut third)
        .await
        .unwrap();
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "");
    assert_eq!(app.available(sku).await, 9, "nothing taken");
    flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    let b = app.buy_and_pay(1314, sku, 2).await;
    assert!(b > a);
    app.write_back().await;
    assert_eq!(app.assert_identity(sku).await.on_hand, 7);
}

#[tokio::test]
async fn a_write_back_never_merges_an_order_into_another_customers_row() {
    let app = spawn_app().await;
    let sku = app.sale_product(100, None).await;
    // MySQL holds another customer's order under the id the counter hands out next.
    let next: u64 = redis::cmd("GET")
        .arg(app.state.redis.keys.order_seq())
        .query_async::<Option<u64>>(&mut app.state.redis.conn())
        .await
        .unwrap()
        .unwrap_or(0)
        + 1;
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_price, created_at, expires_at) \
         VALUES (?, 4242, 'awaiting_payment', 7, '2026-01-01 00:00:00', '2026-01-01 00:10:00')",
    )
    .bind(next)
    .execute(&app.state.db)
    .await
    .unwrap();
    let order = app.buy_and_pay(1315, sku, 5).await;
    assert_eq!(order, next);

    let s = app.write_back().await;
    assert_eq!(
        (s.events, s.set_aside),
        (0, 2),
        "created and paid set aside: {s:?}"
    );
    let row: (u64, String, u64) =
        sqlx::query_as("SELECT user_id, status, total_price FROM orders WHERE id = ?")
            .bind(next)
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(
        row,
        (4242, "awaiting_payment".into(), 7),
        "the other row untouched"
    );
    assert_eq!(
        scalar(
            &app,
            &format!("SELECT COUNT(*) FROM order_items WHERE order_id = {next}")
        )
        .await,
        0
    );
    // Not lost either: kept for an operator, and the units stay sold (not sellable) in Redis.
    let kept = app.state.redis.list_set_aside(10).await.unwrap();
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|k| k.reason == "collision"), "{kept:?}");
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.sold), (100, 95, 5));
}

/// An event MySQL refuses on its own data (a payment reference too long for its column) is
/// retried alone and never set aside, while the events behind it are written.
#[tokio::test]
async fn an_event_failing_on_its_data_does_not_hold_the_others_back() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let outbox = app.state.redis.keys.outbox(5);
    let now = chrono::Utc::now().timestamp_millis();
    let _: String = redis::cmd("XADD")
        .arg(&outbox)
        .arg("*")
        .arg(&[
            ("type", "paid"),
            ("order_id", "900000005"),
            ("user", "77"),
            ("status", "paid"),
            ("items", "[]"),
            ("total", "0"),
            ("created_at", &now.to_string()),
            ("expires_at", &now.to_string()),
            ("paid_at", &now.to_string()),
            ("payment_ref", &"x".repeat(300)),
        ])
        .query_async(&mut app.state.redis.conn())
        .await
        .unwrap();
    let first = app.buy_and_pay(1224, sku, 1).await;
    let writer = Writer::new(app.state.clone());
    let s = writer.run_once(&app.state.db, Fault::None).await.unwrap();
    assert_eq!((s.events, s.set_aside, s.failing), (2, 0, 1), "{s:?}");
    assert_eq!(status_in_mysql(&app, first).await.as_deref(), Some("paid"));

    // Later orders go through while the failing one waits for its next attempt.
    let second = app.buy_and_pay(1225, sku, 1).await;
    let s = writer.run_once(&app.state.db, Fault::None).await.unwrap();
    assert_eq!((s.events, s.set_aside), (2, 0), "{s:?}");
    assert_eq!(status_in_mysql(&app, second).await.as_deref(), Some("paid"));
    // It is still there, retried (another writer tries it at once), never set aside.
    let s = Writer::new(app.state.clone())
        .run_once(&app.state.db, Fault::None)
        .await
        .unwrap();
    assert_eq!((s.events, s.set_aside, s.failing), (0, 0, 1), "{s:?}");
    assert_eq!(outbox_len(&app).await, 1);
    assert_eq!(app.state.redis.set_aside_count().await.unwrap(), 0);
    assert_eq!(app.assert_identity(sku).await.on_hand, 8);
}

// ---- Issue 22: Redis data partly lost -------------------------------------------------------

/// Deletes every key of one sku under this test's prefix (`<p>:{sku:N}:*`): Redis lost that
/// sku's counters, ledgers and reservations, nothing else.
async fn lose_sku_keys(app: &TestApp, sku: u64) {
    let mut conn = app.state.redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{sku:{sku}}}:*", app.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "the sku was loaded");
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn movements(app: &TestApp, sku: u64) -> i64 {
    scalar(
        app,
        &format!(
            "SELECT CAST(COALESCE(SUM(units), 0) AS SIGNED) FROM stock_movements WHERE sku = {sku}"
        ),
    )
    .await
}

/// Buys one unit at a time with buy-now (new customers from `first_user`) until refused;
/// returns how many sold and the refusal's code.
async fn sell_out(app: &TestApp, sku: u64, first_user: u64) -> (u64, String) {
    for i in 0..20 {
        let t = app.customer_token(first_user + i);
        let r = app.try_buy_now(&t, sku, 1).await;
        if r.status != StatusCode::CREATED {
            return (i, r.code().to_string());
        }
        let id = r.body["order_id"].as_u64().unwrap();
        app.pay(&t, id).await;
    }
    panic!("20 units sold of a sku that never had them");
}

/// Issue 22, "one sku's keys lost": 5 on hand, 2 in an open order, then the sku's keys vanish
/// (the order record and the id counter survive, so "Redis behind" does not fire). Twice: once
/// as is, once also without the two things that could tell (the sku's entry in `<p>:skus`, and
/// the record's allocation, as an event of an older version would lack it), so MySQL's open
/// order alone must stop the reload, and MySQL must allocate the units itself.
#[tokio::test]
async fn one_skus_keys_lost_with_an_order_open_never_sells_its_units_again() {
    for blind in [false, true] {
        let app = spawn_app().await;
        let sku = app.sale_product(5, None).await;
        let t = app.customer_token(22_100);
        let order = app.buy_now(&t, sku, 2).await.order_id;
        app.write_back().await;
        lose_sku_keys(&app, sku).await;
        if blind {
            let mut conn = app.state.redis.conn();
            let _: () = redis::cmd("SREM")
                .arg(app.state.redis.keys.skus())
                .arg(sku)
                .query_async(&mut conn)
                .await
                .unwrap();
            let _: () = redis::cmd("HDEL")
                .arg(app.state.redis.keys.order(order))
                .arg("alloc")
                .query_async(&mut conn)
                .await
                .unwrap();
        }

        // A product read does not reload it as if nothing were open: the sku is refused.
        let r = app.get(&format!("/v1/products/{sku}"), None).await;
        r.assert_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("blind {blind}: a reload would sell the open order's units again"),
        );
        // The open order is paid (its record survived), and its write-back takes its units
        // off on_hand from the event alone.
        app.pay(&t, order).await;
        app.write_back().await;
        assert_eq!(
            (on_hand(&app, sku).await, movements(&app, sku).await),
            (3, 2),
            "blind {blind}: the paid order's units leave on_hand"
        );
        if blind {
            // Nothing of it is out any more, and MySQL knows it: a reload from on_hand is right.
            let (sold, code) = sell_out(&app, sku, 22_300).await;
            assert_eq!(
                (sold, code.as_str()),
                (3, "out_of_stock"),
                "5 on hand, 2 sold"
            );
        } else {
            // Nothing more sells until rebuild-cache; reconcile and the gauge's set say why.
            let (sold, code) = sell_out(&app, sku, 22_200).await;
            assert_eq!((sold, code.as_str()), (0, "unavailable"));
            let checks = flashsale::service::reconcile::check(&app.state)
                .await
                .unwrap();
            assert!(
                !checks[0].ok(),
                "{}",
                flashsale::service::reconcile::table(&checks)
            );
            assert_eq!(app.state.redis.lost_skus().await.unwrap(), vec![sku as u32]);
            let report = flashsale::service::reconcile::rebuild_cache(&app.state)
                .await
                .unwrap();
            assert!(report.problems.is_empty(), "{report:?}");
            assert_eq!(app.available(sku).await, 3);
            let (sold, code) = sell_out(&app, sku, 22_300).await;
            assert_eq!(
                (sold, code.as_str()),
                (3, "out_of_stock"),
                "5 on hand, 2 sold before"
            );
        }
        assert!(app.state.redis.lost_skus().await.unwrap().is_empty());
        app.write_back().await;
        let b = app.assert_identity(sku).await;
        assert_eq!((b.on_hand, b.available, b.sold), (0, 0, 0), "blind {blind}");
        assert_eq!(movements(&app, sku).await, 5);
        app.assert_reconciles().await;
    }
}

/// `reconcile` reports a paid order MySQL never took off on_hand (what the write-back did when
/// Redis had lost the line's ledger), also once Redis was rebuilt from that on_hand and agrees
/// with it (the "reconcile exits 0").
#[tokio::test]
async fn reconcile_reports_a_paid_line_never_taken_off_on_hand() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let paid = app.buy_and_pay(22_400, sku, 2).await;
    app.write_back().await;
    app.assert_reconciles().await;
    // The state the old write-back left: paid, no movement, on_hand whole.
    sqlx::query("DELETE FROM stock_movements WHERE order_id = ?")
        .bind(paid)
        .execute(&app.state.db)
        .await
        .unwrap();
    sqlx::query("UPDATE stock SET on_hand = on_hand + 2 WHERE sku = ?")
        .bind(sku)
        .execute(&app.state.db)
        .await
        .unwrap();
    // Redis rebuilt from that on_hand agrees with it: only the paid line can tell.
    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    let checks = flashsale::service::reconcile::check(&app.state)
        .await
        .unwrap();
    let table = flashsale::service::reconcile::table(&checks);
    assert!(
        checks[0]
            .problems
            .iter()
            .any(|p| p.contains("never taken off on_hand") && p.contains(&paid.to_string())),
        "{table}"
    );
}

/// Issue 22, "rebuild-cache run as the runbook says": a paid order's write-back is pending at
/// the running instance's writer, which cannot reach MySQL and keeps trying (so its entry is
/// never idle long enough to be claimed). rebuild-cache must not drop the sku's ledgers and
/// reload it from an on_hand that does not know that payment: it waits, says for what, and
/// gives up with nothing changed; once the entry is written it rebuilds, and 5 of 5 sell.
#[tokio::test]
async fn rebuild_cache_waits_for_a_payment_pending_at_another_writer() {
    let app = spawn_app_with(|c| c.outbox.claim_idle = Duration::from_secs(2)).await;
    let sku = app.sale_product(5, None).await;
    let paid = app.buy_and_pay(22_500, sku, 1).await;
    let down = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("mysql://root@127.0.0.1:1/nothing")
        .unwrap();
    let busy = std::sync::Arc::new(Writer::named(app.state.clone(), "instance-a"));
    assert!(busy.run_once(&down, Fault::None).await.is_err());
    // The running instance keeps retrying its pending entries (every few hundred ms).
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let retrying = tokio::spawn({
        let (busy, stop) = (busy.clone(), stop.clone());
        async move {
            while !stop.load(SeqCst) {
                let _ = busy.run_once(&down, Fault::None).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    stop.store(true, SeqCst);
    retrying.await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("instance-a") && p.contains("nothing was rebuilt")),
        "rebuild-cache must say what it waited for: {report:?}"
    );
    // Nothing was dropped: the sold line is still in Redis, the sku as it was.
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.sold), (4, 1));

    // MySQL is back for the instance: it writes its entry; now the rebuild goes through.
    busy.run_once(&app.state.db, Fault::None).await.unwrap();
    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(
        (on_hand(&app, sku).await, movements(&app, sku).await),
        (4, 1),
        "order {paid}'s unit left on_hand once"
    );
    let (sold, code) = sell_out(&app, sku, 22_600).await;
    assert_eq!(
        (sold, code.as_str()),
        (4, "out_of_stock"),
        "5 on hand, 1 sold"
    );
    app.write_back().await;
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.sold), (0, 0, 0));
    app.assert_reconciles().await;
}

/// A payment whose event is not in the outbox when rebuild-cache drains it (here: set aside,
/// replayed after the rebuild; the same as a payment decided while the rebuild runs): MySQL
/// still holds the order open, Redis holds it paid. The rebuild reserves its line again, so the
/// reloaded counters do not sell that unit, and the write-back, when the event comes, sells it.
#[tokio::test]
async fn rebuild_cache_keeps_the_units_of_a_payment_mysql_does_not_know_yet() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(22_800);
    let order = app.buy_now(&t, sku, 1).await.order_id;
    app.write_back().await;
    app.pay(&t, order).await;
    let partition = order % 16;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(app.state.redis.keys.outbox(partition))
        .arg("-")
        .arg("+")
        .query_async(&mut app.state.redis.conn())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "the paid event");
    let id = &entries[0].0;
    assert!(
        app.state
            .redis
            .set_aside(
                partition,
                id,
                flashsale::worker::writer::GROUP,
                flashsale::store::redis::outbox::SetAsideReason::Unparseable,
                "test: out of the outbox while the rebuild drains it",
            )
            .await
            .unwrap()
    );

    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    let b = app.assert_identity(sku).await;
    assert_eq!(
        (b.on_hand, b.available, b.reserved),
        (5, 4, 1),
        "the paid unit is not available again"
    );

    let dead = app.state.redis.list_set_aside(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let dead_id = flashsale::store::redis::outbox::SetAsideId::parse(&dead[0].id).unwrap();
    let replayed = app.state.redis.replay_set_aside(&dead_id).await.unwrap();
    assert!(
        matches!(
            replayed,
            flashsale::store::redis::outbox::Replayed::Requeued(_)
        ),
        "{replayed:?}"
    );
    app.write_back().await;
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.reserved, b.sold), (4, 4, 0, 0));
    let (sold, code) = sell_out(&app, sku, 22_900).await;
    assert_eq!((sold, code.as_str()), (4, "out_of_stock"));
    app.write_back().await;
    app.assert_reconciles().await;
}

/// An admin's stock change on a sku whose keys were lost, with an order of it open, is refused
/// like a purchase (503, nothing changed in MySQL or Redis): it used to load the sku from
/// on_hand first, as if nothing were open, and so sold the open order's units again.
#[tokio::test]
async fn a_stock_change_on_a_lost_sku_is_refused_and_reloads_nothing() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let w = app.stocks(sku).await[0].0;
    let t = app.customer_token(22_400);
    let order = app.buy_now(&t, sku, 2).await.order_id;
    app.write_back().await;
    lose_sku_keys(&app, sku).await;

    let r = app.add_stock(sku, w, 3).await;
    r.assert_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "a stock change must not reload a lost sku from on_hand",
    );
    assert_eq!(on_hand(&app, sku).await, 5, "nothing changed in MySQL");
    assert!(
        app.state
            .redis
            .stock(flashsale::domain::Sku::parse(sku).unwrap())
            .await
            .unwrap()
            .is_none(),
        "nothing loaded in Redis"
    );
    let (sold, code) = sell_out(&app, sku, 22_500).await;
    assert_eq!((sold, code.as_str()), (0, "unavailable"));
    // After rebuild-cache the open order's units stay out and the change goes through.
    flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    app.pay(&t, order).await;
    assert_eq!(app.add_stock(sku, w, 3).await.status, StatusCode::OK);
    let (sold, _) = sell_out(&app, sku, 22_600).await;
    assert_eq!(sold, 6, "5 on hand + 3 added - 2 paid");
}
