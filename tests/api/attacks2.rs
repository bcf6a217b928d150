//! Attacker X2: tests that break the latest fixes (each fails on the code it was written
//! against; see the report of branch attack-2).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// Every order id the caller's listing shows, following `next_before_id` to the end.
async fn listed_ids(app: &TestApp, t: &str, query: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut before: Option<u64> = None;
    for _ in 0..50 {
        let q = match before {
            Some(b) => format!("limit=100{query}&before_id={b}"),
            None => format!("limit=100{query}"),
        };
        let page = app.orders(t, &q).await;
        out.extend(page.ids());
        match page.next_before_id {
            Some(n) => before = Some(n),
            None => return out,
        }
    }
    panic!("the listing never ended");
}

/// The Redis order index kept a customer's newest 100 orders (now: every order until it is
/// finished and written back), and the listing took the older ones from MySQL. But while the write-back is behind (a MySQL outage: the writer retries
/// without limit and the sale goes on), an order trimmed from the index is in neither place:
/// the owner's listing hides it, open and payable as it is.
#[tokio::test]
async fn attack_index_trim_hides_unwritten_open_orders_from_their_owner() {
    let app = spawn_app().await;
    let sku = app.sale_product(500, None).await;
    let t = app.customer_token(7_001);
    let mut ids = Vec::new();
    // No write-back yet (as during a MySQL outage).
    for _ in 0..105 {
        ids.push(app.buy_now(&t, sku, 1).await.order_id);
    }
    // The oldest order is open, and its owner can read it by id.
    let r = app.try_order(&t, ids[0]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "awaiting_payment");

    let mut all = listed_ids(&app, &t, "").await;
    all.sort_unstable();
    let missing: Vec<u64> = ids.iter().filter(|i| !all.contains(i)).copied().collect();
    let open = listed_ids(&app, &t, "&status=awaiting_payment").await;
    assert!(
        missing.is_empty(),
        "the owner's listing hides open orders {missing:?} ({} of 105 listed, {} open listed)",
        all.len(),
        open.len()
    );
    assert_eq!(open.len(), 105);
}

/// The index also expires (payment window + order cache TTL after the last order). A paid
/// order the write-back has not reached by then (MySQL down longer than that) vanishes from
/// its owner's listing though Redis still holds its record.
#[tokio::test]
async fn attack_index_expiry_hides_paid_orders_not_yet_written() {
    let app = spawn_app_with(|c| {
        c.sale.payment_ttl = Duration::from_secs(1);
        c.outbox.order_cache_ttl = Duration::from_secs(1);
    })
    .await;
    let sku = app.sale_product(10, None).await;
    let t = app.customer_token(7_002);
    let id = app.buy_now(&t, sku, 1).await.order_id;
    let r = app
        .post(
            &format!("/v1/orders/{id}/pay"),
            Some(&t),
            json!({"payment_ref": "x2-paid"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(listed_ids(&app, &t, "").await, vec![id]);
    // The write-back is behind (MySQL down) for longer than the index's lifetime.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let r = app.try_order(&t, id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "paid", "Redis still holds the paid order");
    assert_eq!(
        listed_ids(&app, &t, "").await,
        vec![id],
        "the owner's listing lost the paid order"
    );
    // Once written, it is listed again (from MySQL).
    app.write_back().await;
    assert_eq!(listed_ids(&app, &t, "").await, vec![id]);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {from:?} {to:?}");
}

async fn mysql_i64(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

/// Redis comes back from its persistence a little behind (docs/OPERATIONS.md: with
/// `appendfsync everysec` a crash of the Redis host loses up to a second of decisions), under
/// the running service.
/// The order id counter is there, only lower, so next_order_id.lua hands out ids MySQL already
/// holds for another customer; and the stock counters are those of before the sale that MySQL
/// already recorded. Nothing notices: the service sells again what was sold, and the new order
/// takes a paid order's id (its owner's GET then answers 404).
#[tokio::test]
async fn attack_redis_back_from_older_persistence_reuses_ids_and_resells() {
    let port = crate::helpers::free_port();
    let dir = std::env::temp_dir().join(format!("flashsale-x2-redis-{port}"));
    let snap = std::env::temp_dir().join(format!("flashsale-x2-redis-{port}-snap"));
    let redis_server = crate::helpers::OwnRedis::start(port, &dir).await;
    let url = redis_server.url();
    let app = spawn_app_with(|c| {
        c.stores.redis_url = url.clone();
        c.stores.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let sku = app.sale_product(3, None).await;
    assert_eq!(app.available(sku).await, 3);
    // What the disk holds at the moment the host later crashes (appendfsync always here:
    // this copy is exactly Redis's state now).
    copy_dir(&dir, &snap);

    // Customer A buys all three units and pays; the write-back records it in MySQL.
    let ta = app.customer_token(7_101);
    let a = app.buy_now(&ta, sku, 3).await.order_id;
    app.pay(&ta, a).await;
    assert_eq!(app.write_back().await.events, 2);
    assert_eq!(
        mysql_i64(&app, "SELECT CAST(SUM(on_hand) AS SIGNED) FROM stock").await,
        0
    );

    // The Redis host crashes; Redis restarts from what reached its disk, a moment behind.
    drop(redis_server);
    copy_dir(&snap, &dir);
    let _redis_server = crate::helpers::OwnRedis::start(port, &dir).await;
    let _ = std::fs::remove_dir_all(&snap);
    crate::helpers::eventually(
        "the service reaches Redis again",
        Duration::from_secs(10),
        || async { app.get(&format!("/v1/products/{sku}"), None).await.status == StatusCode::OK },
    )
    .await;

    // Customer B tries to buy: MySQL has nothing on hand. The service sees Redis went back
    // (the id counter is below the id it handed to A) and sells nothing until the operator's
    // rebuild-cache: a 503 that changes nothing, then out of stock.
    let tb = app.customer_token(7_102);
    let buy_b = || async { app.try_buy_now(&tb, sku, 3).await };
    let mut r = buy_b().await;
    let mut wrong = Vec::new();
    if r.status == StatusCode::SERVICE_UNAVAILABLE && r.code() == "unavailable" {
        let ready = app.get("/readyz", None).await;
        if ready.status != StatusCode::SERVICE_UNAVAILABLE {
            wrong.push(format!("/readyz answers {} while sales stop", ready.status));
        }
        // A's order is readable meanwhile.
        let ra = app.try_order(&ta, a).await;
        if ra.status != StatusCode::OK {
            wrong.push(format!(
                "A's paid order {a} answers {} while sales stop",
                ra.status
            ));
        }
        flashsale::service::reconcile::rebuild_cache(&app.state)
            .await
            .unwrap();
        if app.get("/readyz", None).await.status != StatusCode::OK {
            wrong.push("/readyz is not ready again after rebuild-cache".into());
        }
        r = buy_b().await;
        if r.code() != "out_of_stock" {
            wrong.push(format!(
                "after rebuild-cache B's attempt answers {:?}",
                r.body
            ));
        }
        let checks = flashsale::service::reconcile::check(&app.state)
            .await
            .unwrap();
        if !checks.iter().all(|c| c.ok()) {
            wrong.push(flashsale::service::reconcile::table(&checks));
        }
    }
    if r.status == StatusCode::CREATED {
        let b = r.body["order_id"].as_u64().unwrap();
        wrong.push(format!(
            "sold 3 units MySQL does not have (on_hand 0): order {b} created"
        ));
        if b == a {
            wrong.push(format!(
                "order id {a} handed out again, to another customer"
            ));
        }
    } else if r.status.is_server_error() {
        wrong.push(format!("a 5xx: {:?}", r.body));
    }
    let r = app.try_order(&ta, a).await;
    if r.status != StatusCode::OK {
        wrong.push(format!("A's paid order {a} answers {} to A", r.status));
    }
    assert!(wrong.is_empty(), "after Redis came back behind: {wrong:#?}");
}

/// An admin's stock addition puts its units into Redis (sellable at once) before MySQL has
/// them; when the MySQL part then fails (here its connection is killed while it waits for the
/// stock row, as a lock wait timeout or deadlock would end it), the undo cannot take back units
/// that were sold in between: `adjust_stock.lua` answers `short`, which the undo does not even
/// see as a failure. Redis sold units MySQL never had: the identity breaks, and the paid order's
/// write-back fails ("less on hand than sold") for ever.
#[tokio::test]
async fn attack_failed_stock_addition_leaves_sold_units_mysql_never_had() {
    use sqlx::Connection;
    let app = spawn_app().await;
    let sku = app.sale_product(1, None).await;
    let w: u64 = sqlx::query_scalar::<_, u32>("SELECT warehouse_id FROM stock WHERE sku = ?")
        .bind(sku as u32)
        .fetch_one(&app.state.db)
        .await
        .unwrap()
        .into();
    // Another session holds the stock row (a write-back, a second admin, ...).
    let mut other = sqlx::MySqlConnection::connect(&app.state.cfg.stores.mysql_url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT on_hand FROM stock WHERE sku = ? AND warehouse_id = ? FOR UPDATE")
        .bind(sku as u32)
        .bind(w as u32)
        .fetch_all(&mut other)
        .await
        .unwrap();

    let admin = {
        let (client, addr, token) = (
            app.client.clone(),
            app.addr.clone(),
            app.admin_token.clone(),
        );
        tokio::spawn(async move {
            client
                .post(format!("{addr}/v1/products/{sku}/stock"))
                .bearer_auth(token)
                .json(&json!({"warehouse_id": w, "delta": 5}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // The addition's MySQL statement waits for the row.
    let mut victim = 0u64;
    for _ in 0..200 {
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist \
             WHERE db = ? AND info LIKE 'INSERT INTO stock%'",
        )
        .bind(&app.db_name)
        .fetch_all(&mut other)
        .await
        .unwrap();
        if let Some(id) = ids.first() {
            victim = *id;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(victim, 0, "the addition never reached MySQL's stock row");
    // Meanwhile a customer asks for six units: one is on hand, five are being added.
    let t = app.customer_token(7_201);
    let r = app.try_buy_now(&t, sku, 6).await;
    let bought = r.status == StatusCode::CREATED;
    if bought {
        let order = r.body["order_id"].as_u64().unwrap();
        app.pay(&t, order).await;
    }

    // The addition's MySQL statement dies (killed here; a lock wait timeout or deadlock alike).
    sqlx::query(sqlx::AssertSqlSafe(format!("KILL {victim}")))
        .execute(&mut other)
        .await
        .unwrap();
    let admin_status = admin.await.unwrap();
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let on_hand = mysql_i64(
        &app,
        &format!("SELECT CAST(SUM(on_hand) AS SIGNED) FROM stock WHERE sku = {sku}"),
    )
    .await;
    let stats = app.write_back().await;
    assert!(
        !bought || admin_status.is_success() || on_hand >= 6,
        "the addition answered {admin_status} and MySQL has {on_hand} on hand, yet 6 units were \
         sold; write-back: {stats:?}"
    );
    assert_eq!(stats.failing, 0, "{stats:?}");
    app.assert_identity(sku).await;
}

/// A receiver that counts the distinct event ids it was sent (answers 200).
async fn counting_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
) {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let s = seen.clone();
    let router = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let s = s.clone();
            async move {
                let id = headers
                    .get("x-flashsale-event-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                s.lock().unwrap().insert(id);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://127.0.0.1:{port}/hooks"), seen)
}

/// The order-events stream is trimmed to about FLASHSALE_EVENTS_MAX_LEN entries whatever the
/// webhook group has not read yet. A webhook sender that is behind (its receiver down: it holds
/// at most 1,024 failed events in memory and reads no more; or no sender running for a while)
/// while more events than that are written loses the trimmed ones: never delivered, not set
/// aside, not counted. (A small bound here; at 100,000 it takes a longer receiver outage in a
/// busy sale: 50,000 orders make 100,000 events.)
#[tokio::test]
async fn attack_event_stream_trim_drops_webhook_events_never_delivered() {
    const ORDERS: usize = 300;
    let (url, seen) = counting_receiver().await;
    let app = spawn_app_with(|c| c.outbox.events_max_len = 10).await;
    // Webhooks were on before the sale (an instance with FLASHSALE_WEBHOOK_URL started, which
    // makes the group); the sender then fell behind. (Events written while no group exists at
    // all are capped by length: API.md, "Order events".)
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(app.state.redis.keys.order_events())
        .arg(flashsale::worker::webhooks::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut app.state.redis.conn())
        .await
        .unwrap();
    let sku = app.sale_product(ORDERS as i64, None).await;
    let t = app.customer_token(7_301);
    for _ in 0..ORDERS {
        app.buy_now(&t, sku, 1).await;
    }
    let written = app.write_back().await.events;
    assert_eq!(written, ORDERS);

    // The sender catches up.
    let mut cfg = (*app.state.cfg).clone();
    cfg.webhooks.webhook_url = Some(url);
    cfg.webhooks.webhook_secret = Some("x2".into());
    let state = flashsale::app::AppState {
        cfg: std::sync::Arc::new(cfg),
        ..app.state.clone()
    };
    let hooks = flashsale::worker::webhooks::Webhooks::new(state).unwrap();
    let (_stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let stats = hooks.run_once(&mut stop).await.unwrap();
    let delivered = seen.lock().unwrap().len();
    assert_eq!(
        delivered, written,
        "order events written back: {written}; delivered to the webhook: {delivered} \
         (sender: {stats:?}); the rest were trimmed from the stream unread"
    );
}

/// The same Redis, back a moment behind, and the operator does what docs/OPERATIONS.md says
/// after a loss: `flashsale rebuild-cache` before traffic. It only loads skus whose counters are
/// missing, so the stale counters stay, and `reconcile` is the only thing that sees it: the
/// units MySQL recorded as sold are sold a second time.
#[tokio::test]
async fn attack_rebuild_cache_keeps_stale_counters_after_a_partial_loss() {
    let port = crate::helpers::free_port();
    let dir = std::env::temp_dir().join(format!("flashsale-x2-redis-{port}"));
    let snap = std::env::temp_dir().join(format!("flashsale-x2-redis-{port}-snap"));
    let redis_server = crate::helpers::OwnRedis::start(port, &dir).await;
    let url = redis_server.url();
    let app = spawn_app_with(|c| {
        c.stores.redis_url = url.clone();
        c.stores.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let sku = app.sale_product(3, None).await;
    assert_eq!(app.available(sku).await, 3);
    copy_dir(&dir, &snap);

    let ta = app.customer_token(7_401);
    let a = app.buy_now(&ta, sku, 3).await.order_id;
    app.pay(&ta, a).await;
    app.write_back().await;

    drop(redis_server);
    copy_dir(&snap, &dir);
    let _redis_server = crate::helpers::OwnRedis::start(port, &dir).await;
    let _ = std::fs::remove_dir_all(&snap);
    crate::helpers::eventually(
        "the service reaches Redis again",
        Duration::from_secs(10),
        || async { app.get(&format!("/v1/products/{sku}"), None).await.status == StatusCode::OK },
    )
    .await;
    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    let checks = flashsale::service::reconcile::check(&app.state)
        .await
        .unwrap();

    let tb = app.customer_token(7_402);
    let r = app.try_buy_now(&tb, sku, 3).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "out_of_stock"),
        "MySQL has 0 on hand and 3 paid, but after rebuild-cache ({report:?}) the service sold \
         again: {:?}; reconcile said: {}",
        r.body,
        flashsale::service::reconcile::table(&checks)
    );
}

/// Ids handed out before Redis lost its data lie at most 1,000,000 above MySQL's largest,
/// DESIGN assumes. But every buy-now and checkout takes an id before it reserves, and a refusal
/// (sold out, limit, sale not open) records nothing: after a sell-out, a flood of a million
/// refused attempts (25 s at the measured 40,000 requests/s) moves the counter more than the
/// margin past MySQL's largest id. An order being placed under such an id when Redis loses its
/// data (its request holds the id; it records the order in the new Redis and reaches MySQL)
/// then shares its id with an order placed after the loss.
#[tokio::test]
async fn attack_ids_burned_by_refusals_outrun_the_margin_after_a_loss() {
    let port = crate::helpers::free_port();
    let dir = std::env::temp_dir().join(format!("flashsale-x2-redis-{port}"));
    let redis_server = crate::helpers::OwnRedis::start(port, &dir).await;
    let url = redis_server.url();
    let app = spawn_app_with(|c| {
        c.stores.redis_url = url.clone();
    })
    .await;
    let sku = app.sale_product(1, None).await;
    let t = app.customer_token(7_501);
    let sold = app.buy_now(&t, sku, 1).await.order_id;
    app.try_pay(&t, sold).await;
    app.write_back().await;
    // Sold out: the refused attempts each take an id (as the buy-now route does before it
    // reserves). A few over HTTP, the rest through the same call, concurrently.
    for _ in 0..3 {
        let r = app.try_buy_now(&t, sku, 1).await;
        assert_eq!(r.code(), "out_of_stock");
    }
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let state = app.state.clone();
            tokio::spawn(async move {
                for _ in 0..(1_000_000 / 64 + 1) {
                    flashsale::service::order_ids::next(&state).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("1,000,000 ids taken in {:?}", started.elapsed());
    // A request takes its id; then Redis loses its data.
    let in_flight = flashsale::service::order_ids::next(&app.state)
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut app.state.redis.conn())
        .await
        .unwrap();
    // Nothing is handed out until the operator's rebuild-cache (sales stop on a lost Redis).
    let refused = flashsale::service::order_ids::next(&app.state).await;
    assert!(
        matches!(refused, Err(flashsale::error::AppError::Unavailable(_))),
        "an id handed out on a Redis that lost its data: {refused:?}"
    );
    flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    let after = flashsale::service::order_ids::next(&app.state)
        .await
        .unwrap();
    drop(redis_server);
    assert!(
        after > in_flight,
        "the first id after the loss is {after}, at or below {in_flight}, which a request \
         still placing its order holds: ids repeat"
    );
}
