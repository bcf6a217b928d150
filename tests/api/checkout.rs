//! Checkout and buy-now at their edges: one cart checked out many times at once, totals at the
//! limits of numbers, a sale window that ended while the cart held its line, and refusals for
//! lack of stock that must cost no order.

use std::collections::HashMap;
use std::time::Duration;

use flashsale::domain::Sku;
use flashsale::store::redis::{Created, Deadline, ReserveMode, ReserveRequest, Rid};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// The largest order total: every total stays an exact integer in Lua (doubles), JSON clients
/// and MySQL's BIGINT UNSIGNED.
const MAX_TOTAL: u64 = (1 << 53) - 1;

/// Order records in Redis and orders in MySQL (after the write-back), and 'failed' events.
async fn order_footprint(app: &TestApp) -> (usize, i64, i64) {
    let mut conn = app.state.redis.conn();
    let pattern = format!("{}:{{ord:*}}:o:*", app.prefix);
    let mut records = 0;
    let mut it: redis::AsyncIter<String> = conn.scan_match(&pattern).await.unwrap();
    while it.next_item().await.is_some() {
        records += 1;
    }
    drop(it);
    app.write_back().await;
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    let failed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM order_status_history WHERE event = 'failed'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    (records, orders, failed)
}

/// Every Redis key of the test's prefix with its serialized size (what a refusal must not grow).
async fn prefix_keys(app: &TestApp) -> Vec<(String, u64)> {
    let mut conn = app.state.redis.conn();
    let mut keys: Vec<String> = conn.keys(format!("{}:*", app.prefix)).await.unwrap();
    // The notes of the accounts whose tokens were checked are a cache of MySQL's users, kept a
    // minute (src/service/tokens.rs), not something a request stores.
    keys.retain(|k| !k.ends_with(":account"));
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let size: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.push((k, size.unwrap_or(0)));
    }
    out
}

// ---- 12.5: concurrent checkouts of one cart ------------------------------------------------

#[tokio::test]
async fn concurrent_checkouts_of_one_cart_make_one_order() {
    let app = spawn_app().await;
    let a = app.sale_product(1_000, None).await;
    let b = app.sale_product(1_000, None).await;
    for round in 0..6u64 {
        let user = 7_100 + round;
        let t = app.customer_token(user);
        for sku in [a, b] {
            app.cart_add(&t, sku, 2).await;
        }
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (client, url, t) = (
                    app.client.clone(),
                    format!("{}/v1/orders", app.addr),
                    t.clone(),
                );
                tokio::spawn(async move {
                    let r = client.post(url).bearer_auth(t).send().await.unwrap();
                    let status = r.status();
                    let body: serde_json::Value = r.json().await.unwrap();
                    (status, body)
                })
            })
            .collect();
        let mut created = Vec::new();
        for h in tasks {
            let (status, body) = h.await.unwrap();
            if status == StatusCode::CREATED {
                created.push(body);
            } else {
                assert_eq!(status, StatusCode::CONFLICT, "{body}");
                let code = body["error"]["code"].as_str().unwrap();
                assert!(
                    code == "cart_changed" || code == "cart_empty",
                    "round {round}: {body}"
                );
                assert!(
                    body["error"]["order_id"].is_null(),
                    "no failed order: {body}"
                );
            }
        }
        assert_eq!(created.len(), 1, "round {round}: one cart, one order");
        assert_eq!(created[0]["items"].as_array().unwrap().len(), 2);
        let list = app.get("/v1/orders", Some(&t)).await;
        assert_eq!(
            list.body["items"].as_array().unwrap().len(),
            1,
            "round {round}"
        );
        for sku in [a, b] {
            let bk = app.assert_identity(sku).await;
            assert_eq!(bk.held, 0, "round {round}");
            assert_eq!(bk.reserved, 2 * (round as i64 + 1), "round {round}");
        }
    }
}

// ---- 12.6: totals at the limits of numbers -------------------------------------------------

#[tokio::test]
async fn totals_beyond_exact_integers_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let price = 10_000_000_000_000u64; // the largest price
    let sku = app.product("Gold bar", price).await;
    let w = app.warehouse("vault").await;
    assert_eq!(app.add_stock(sku, w, 200_000).await.status, StatusCode::OK);
    let t = app.customer_token(7_201);

    // 1,000 units at 10^13 = 10^16 > 2^53: not representable exactly everywhere.
    let r = app.try_buy_now(&t, sku, 1_000).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    let r = app.try_cart_add(&t, sku, 1_000).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    let bk = app.assert_identity(sku).await;
    assert_eq!((bk.available, bk.held, bk.reserved), (200_000, 0, 0));

    // The largest line that fits: 900 units (9 * 10^15 <= 2^53 - 1).
    let r = app.try_buy_now(&t, sku, 900).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["total_price"], 900 * price);
    assert!(900 * price <= MAX_TOTAL);

    // Two lines that fit alone but not together: the checkout is refused, the cart stays.
    let u = app.customer_token(7_202);
    for n in [500, 400] {
        // 900 units in one line at last: fits.
        app.cart_add(&u, sku, n).await;
    }
    let other = app.product("Platinum bar", price).await;
    assert_eq!(app.add_stock(other, w, 1_000).await.status, StatusCode::OK);
    app.cart_add(&u, other, 100).await;
    let r = app.try_checkout(&u).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    let cart = app.get("/v1/cart", Some(&u)).await;
    assert_eq!(
        cart.body["items"].as_array().unwrap().len(),
        2,
        "a refused checkout leaves the cart as it was"
    );
    for s in [sku, other] {
        let bk = app.assert_identity(s).await;
        assert_eq!(bk.reserved, if s == sku { 900 } else { 0 });
    }
}

#[tokio::test]
async fn a_cart_line_holds_at_most_65535_units() {
    let app = spawn_app().await;
    let sku = app.product("Screws", 1).await;
    let w = app.warehouse("bins").await;
    assert_eq!(app.add_stock(sku, w, 200_000).await.status, StatusCode::OK);
    let t = app.customer_token(7_203);
    app.cart_add(&t, sku, 65_535).await;
    let r = app.try_cart_add(&t, sku, 1).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    let bk = app.assert_identity(sku).await;
    assert_eq!((bk.held, bk.available), (65_535, 200_000 - 65_535));
}

#[tokio::test]
async fn a_price_raised_after_adding_cannot_overflow_the_order() {
    let app = spawn_app().await;
    // 15 lines of 65,535 units: at 10^13 each, their sum passes i64::MAX (and 2^53 long before).
    let t = app.customer_token(7_204);
    let w = app.warehouse("depot").await;
    let mut skus = Vec::new();
    for i in 0..15 {
        let sku = app.product(&format!("Item {i}"), 1).await;
        assert_eq!(app.add_stock(sku, w, 65_535).await.status, StatusCode::OK);
        app.cart_add(&t, sku, 65_535).await;
        skus.push(sku);
    }
    for &sku in &skus {
        let r = app
            .patch(
                &format!("/v1/products/{sku}"),
                Some(&app.admin_token),
                json!({"price": 10_000_000_000_000u64}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let cart = app.get("/v1/cart", Some(&t)).await;
    assert_eq!(cart.status, StatusCode::OK, "the cart still shows");
    let r = app.try_checkout(&t).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    assert_eq!(order_footprint(&app).await, (0, 0, 0), "no order written");
    for &sku in &skus {
        let bk = app.assert_identity(sku).await;
        assert_eq!((bk.held, bk.reserved), (65_535, 0), "the holds stay");
    }
}

// ---- 12.7: checkout after the sale window ------------------------------------------------

#[tokio::test]
async fn checkout_after_the_sale_window_ended_is_refused_and_gives_units_back() {
    let app = spawn_app().await;
    let sku = app.product("Short sale", 100_000).await;
    let w = app.warehouse("wh-short").await;
    assert_eq!(app.add_stock(sku, w, 10).await.status, StatusCode::OK);
    let now = chrono::Utc::now();
    let ends = now + chrono::Duration::seconds(3);
    let r = app
        .put(
            &format!("/v1/products/{sku}/sale"),
            Some(&app.admin_token),
            json!({"sale_price": 100, "starts_at": (now - chrono::Duration::hours(1)).to_rfc3339(),
                "ends_at": ends.to_rfc3339(), "per_customer_limit": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let t = app.customer_token(7_301);
    let r = app.try_cart_add(&t, sku, 2).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["items"][0]["unit_price"], 100);
    // Wait for the window to end (the hold, 10 minutes, is still live).
    let left = (ends - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(100)).await;

    let r = app.try_checkout(&t).await;
    r.assert_error(StatusCode::CONFLICT, "sale_not_active", "");
    let bk = app.assert_identity(sku).await;
    assert_eq!(
        (bk.available, bk.held, bk.reserved),
        (10, 0, 0),
        "the units went back"
    );
    assert_eq!(order_footprint(&app).await, (0, 0, 0), "no order, no event");
}

#[tokio::test]
async fn checkout_of_a_line_whose_window_moved_away_is_refused() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let t = app.customer_token(7_302);
    app.cart_add(&t, sku, 2).await;
    // The admin moves the window to tomorrow: the product cannot be bought now.
    app.close_sale(sku).await;
    let r = app.try_checkout(&t).await;
    r.assert_error(StatusCode::CONFLICT, "sale_not_active", "");
    let bk = app.assert_identity(sku).await;
    assert_eq!((bk.available, bk.held, bk.reserved), (10, 0, 0));
}

/// A checkout that reserved a line and then met a refusal gives the line back and records the
/// order as `failed` (what the contract keeps that status for).
#[tokio::test]
async fn a_partly_reserved_checkout_is_recorded_as_failed() {
    let app = spawn_app().await;
    let a = app.sale_product(10, None).await;
    let b = app.sale_product(10, None).await;
    let t = app.customer_token(7_303);
    for sku in [a, b] {
        app.cart_add(&t, sku, 2).await;
    }
    app.close_sale(b).await;
    let r = app.try_checkout(&t).await;
    r.assert_error(StatusCode::CONFLICT, "sale_not_active", "");
    let failed = r.body["error"]["order_id"]
        .as_u64()
        .expect("the failed order");
    let o = app.try_order(&t, failed).await;
    assert_eq!(o.body["status"], "failed");
    for sku in [a, b] {
        let bk = app.assert_identity(sku).await;
        assert_eq!((bk.available, bk.held, bk.reserved), (10, 0, 0));
    }
    assert_eq!(order_footprint(&app).await, (1, 1, 1));
}

// ---- 13.9: a refusal for lack of stock costs nothing -----------------------------------

#[tokio::test]
async fn sold_out_buy_now_writes_no_order() {
    let app = spawn_app().await;
    let sku = app.sale_product(1, Some(1)).await;
    let first = app
        .post(
            "/v1/orders/buy-now",
            Some(&app.customer_token(7_400)),
            json!({"sku": sku, "count": 1}),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    // The first order's deadline bookkeeping ({due} keys) may still be on its way under load:
    // the keys are taken once two readings agree.
    let mut keys_before = prefix_keys(&app).await;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let again = prefix_keys(&app).await;
        if again == keys_before {
            break;
        }
        keys_before = again;
    }
    let tasks: Vec<_> = (0..50u64)
        .map(|i| {
            let (client, url, t) = (
                app.client.clone(),
                format!("{}/v1/orders/buy-now", app.addr),
                app.customer_token(7_401 + i),
            );
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(t)
                    .json(&json!({"sku": sku, "count": 1}))
                    .send()
                    .await
                    .unwrap();
                (r.status(), r.json::<serde_json::Value>().await.unwrap())
            })
        })
        .collect();
    for h in tasks {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "out_of_stock");
        assert!(body["error"]["order_id"].is_null(), "{body}");
    }
    assert_eq!(
        prefix_keys(&app).await,
        keys_before,
        "a refusal for lack of stock stores nothing"
    );
    // The customer at the limit: refused, no order either.
    let r = app
        .post(
            "/v1/orders/buy-now",
            Some(&app.customer_token(7_400)),
            json!({"sku": sku, "count": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert!(r.body["error"]["order_id"].is_null());
    assert_eq!(
        order_footprint(&app).await,
        (1, 1, 0),
        "only the one order that got the unit"
    );
    app.assert_identity(sku).await;
}

/// A line reserved for an order whose record was never written (a crash between the two) is
/// given back by the sweeper at its deadline.
#[tokio::test]
async fn the_sweeper_gives_back_a_line_without_an_order_record() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let s = Sku::parse(sku).unwrap();
    let order_id = flashsale::service::order_ids::next(&app.state)
        .await
        .unwrap();
    let past = chrono::Utc::now().timestamp_millis() - 1;
    app.state
        .redis
        .reserve(ReserveRequest {
            sku: s,
            user_id: 7_500,
            count: 3,
            rid: Rid::OrderLine { order_id },
            deadline: Deadline::At(past),
            mode: ReserveMode::Once,
        })
        .await
        .unwrap();
    let bk = app.assert_identity(sku).await;
    assert_eq!(bk.reserved, 3);
    app.sweep().await;
    let bk = app.assert_identity(sku).await;
    assert_eq!((bk.available, bk.reserved), (5, 0));
    let users: HashMap<String, i64> = app
        .state
        .redis
        .conn()
        .hgetall(app.state.redis.keys.sku(s).users())
        .await
        .unwrap();
    assert!(users.is_empty(), "{users:?}");
}

/// An order is never recorded once its lines' deadline passed (the sweeper may be giving those
/// lines back as lines without a record): `create_order` refuses, nothing is written.
#[tokio::test]
async fn an_order_is_not_recorded_after_its_lines_deadline() {
    let app = spawn_app().await;
    let redis = &app.state.redis;
    let now = redis.now_ms().await.unwrap();
    let id = flashsale::service::order_ids::next(&app.state)
        .await
        .unwrap();
    let late = redis
        .create_order(id, 7_600, now - 10, now - 1, "[]", 0)
        .await
        .unwrap();
    assert_eq!(late, Created::Late);
    assert!(redis.order_record(id).await.unwrap().is_none());
    let ok = redis
        .create_order(id, 7_600, now, now + 60_000, "[]", 0)
        .await
        .unwrap();
    assert_eq!(ok, Created::Recorded);
    let again = redis
        .create_order(id, 7_600, now, now + 60_000, "[]", 0)
        .await
        .unwrap();
    assert_eq!(again, Created::Exists);
}

/// While a checkout of the cart holds its lock (here: one abandoned by a crashed instance,
/// until its lease ends), another checkout is refused and changes nothing.
#[tokio::test]
async fn a_held_checkout_lock_refuses_a_second_checkout() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(7_700);
    app.cart_add(&t, sku, 2).await;
    let lock = app.state.redis.keys.checkout_lock(7_700);
    let mut conn = app.state.redis.conn();
    let _: () = conn.set_ex(&lock, "999999", 30).await.unwrap();
    let r = app.try_checkout(&t).await;
    r.assert_error(StatusCode::CONFLICT, "cart_changed", "");
    let bk = app.assert_identity(sku).await;
    assert_eq!((bk.held, bk.reserved), (2, 0), "the cart is untouched");
    let held: String = conn.get(&lock).await.unwrap();
    assert_eq!(
        held, "999999",
        "another checkout's lock is not ours to release"
    );
    let _: () = conn.del(&lock).await.unwrap();
    let r = app.try_checkout(&t).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let exists: bool = conn.exists(&lock).await.unwrap();
    assert!(!exists, "the lock is let go once the checkout answered");
}

/// A script validates its arguments before it writes (Redis keeps the writes of a script that
/// fails half-way): a malformed deadline leaves the hold as it was.
#[tokio::test]
async fn a_malformed_call_of_convert_hold_changes_nothing() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(7_800);
    app.cart_add(&t, sku, 2).await;
    let k = app.state.redis.keys.sku(Sku::parse(sku).unwrap());
    let scripts = flashsale::store::redis::scripts::Scripts::new();
    let mut inv = scripts.convert_hold.prepare_invoke();
    for key in [
        k.meta(),
        k.stock(),
        k.users(),
        k.res(),
        k.exp(),
        k.ttl(&Rid::Hold { user_id: 7_800 }),
        k.ttl(&Rid::OrderLine { order_id: 1 }),
    ] {
        inv.key(key);
    }
    inv.arg("7800").arg("1").arg("not-a-deadline");
    let r: Result<redis::Value, _> = inv.invoke_async(&mut app.state.redis.conn()).await;
    assert!(r.is_err(), "{r:?}");
    let bk = app.assert_identity(sku).await;
    assert_eq!((bk.held, bk.reserved), (2, 0), "the hold is as it was");
}
