//! Many real concurrent HTTP requests against one app, then DESIGN.md's identity, exactly.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn post_status(
    app: &TestApp,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    // Spread over the instances on a Redis Cluster (two, taken in turn).
    let mut req = app.client.post(app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("sent");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_buyers_one_hundred_units() {
    let app = spawn_app().await;
    let sku = app.sale_product(100, None).await;
    let tokens: Vec<String> = (0..2_000u64)
        .map(|i| app.customer_token(10_000 + i))
        .collect();
    let started = Instant::now();
    let results = futures::future::join_all(tokens.iter().map(|t| {
        post_status(
            &app,
            "/v1/cart/items",
            t,
            Some(json!({"sku": sku, "count": 1})),
        )
    }))
    .await;
    let elapsed = started.elapsed();
    let mut by: HashMap<(u16, String), usize> = HashMap::new();
    for (status, body) in &results {
        let code = body["error"]["code"].as_str().unwrap_or("").to_string();
        *by.entry((status.as_u16(), code)).or_default() += 1;
    }
    println!("2000 concurrent add-to-cart in {elapsed:?}: {by:?}");
    assert_eq!(by.get(&(200, String::new())), Some(&100), "{by:?}");
    assert_eq!(
        by.get(&(409, "out_of_stock".to_string())),
        Some(&1_900),
        "{by:?}"
    );
    assert_eq!(by.len(), 2, "nothing but 200 and 409 out_of_stock: {by:?}");
    assert_eq!(app.available(sku).await, 0);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.held), (0, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_fifty_requests_limit_two() {
    let app = spawn_app().await;
    let sku = app.sale_product(100, Some(2)).await;
    let t = app.customer_token(777);
    let results = futures::future::join_all((0..50).map(|i| {
        // Half add to the cart, half buy now: the limit counts both.
        if i % 2 == 0 {
            post_status(
                &app,
                "/v1/cart/items",
                &t,
                Some(json!({"sku": sku, "count": 1})),
            )
        } else {
            post_status(
                &app,
                "/v1/orders/buy-now",
                &t,
                Some(json!({"sku": sku, "count": 1})),
            )
        }
    }))
    .await;
    let ok = results.iter().filter(|(s, _)| s.is_success()).count();
    let limited = results
        .iter()
        .filter(|(_, b)| b["error"]["code"] == "limit_exceeded")
        .count();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(limited, 48);
    let b = app.assert_identity(sku).await;
    assert_eq!(b.held + b.reserved, 2);
    assert_eq!(b.available, 98);
}

#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    paid_units: AtomicU64,
    codes: std::sync::Mutex<HashMap<String, u64>>,
}

/// Adds, removes, checkouts, buy-nows, pays and cancels from 150 customers on 4 skus with short
/// hold and payment windows, so expiry happens throughout. Afterwards every unpaid unit is back
/// and the identity holds exactly for every sku.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_run_keeps_the_identity() {
    const OPS: u64 = 6_000;
    const WORKERS: usize = 48;
    let app = Arc::new(
        spawn_app_with(|c| {
            c.sale.cart_hold_ttl = Duration::from_millis(250);
            c.sale.payment_ttl = Duration::from_millis(350);
            c.sweeper.sweep_interval = Duration::from_millis(50);
            // The write-back runs in the background during the run, as in production.
            c.outbox.worker = true;
        })
        .await,
    );
    let mut skus = Vec::new();
    for (units, limit) in [(200, None), (100, Some(3)), (1_000, Some(5)), (30, None)] {
        skus.push(app.sale_product(units, limit).await);
    }
    let skus = Arc::new(skus);
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (app, skus, tally, next) = (app.clone(), skus.clone(), tally.clone(), next.clone());
            tokio::spawn(async move {
                let mut my_orders: Vec<(u64, u64)> = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < OPS {
                    let (user, sku, count, op) = {
                        let mut rng = rand::rng();
                        (
                            20_000 + (w as u64) * 3 + rng.random_range(0..3),
                            skus[rng.random_range(0..skus.len())],
                            rng.random_range(1..=3u64),
                            rng.random_range(0..100u32),
                        )
                    };
                    let t = app.customer_token(user);
                    let (status, body) = match op {
                        0..=34 => {
                            post_status(
                                &app,
                                "/v1/cart/items",
                                &t,
                                Some(json!({"sku": sku, "count": count})),
                            )
                            .await
                        }
                        35..=44 => {
                            let r = app
                                .delete(&format!("/v1/cart/items/{sku}?count={count}"), Some(&t))
                                .await;
                            (r.status, r.body)
                        }
                        45..=59 => post_status(&app, "/v1/orders", &t, None).await,
                        60..=72 => {
                            post_status(
                                &app,
                                "/v1/orders/buy-now",
                                &t,
                                Some(json!({"sku": sku, "count": count})),
                            )
                            .await
                        }
                        // Pay or cancel one of this worker's orders, which may have expired by now.
                        73..=89 if !my_orders.is_empty() => {
                            let (owner, id) = my_orders.swap_remove(0);
                            let t = app.customer_token(owner);
                            post_status(&app, &format!("/v1/orders/{id}/pay"), &t, None).await
                        }
                        90.. if !my_orders.is_empty() => {
                            let (owner, id) = my_orders.swap_remove(0);
                            let t = app.customer_token(owner);
                            post_status(&app, &format!("/v1/orders/{id}/cancel"), &t, None).await
                        }
                        _ => {
                            post_status(
                                &app,
                                "/v1/cart/items",
                                &t,
                                Some(json!({"sku": sku, "count": count})),
                            )
                            .await
                        }
                    };
                    tally.ops.fetch_add(1, Ordering::Relaxed);
                    assert!(!status.is_server_error(), "5xx: {status} {body}");
                    if status.is_success() {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if status == StatusCode::CREATED {
                            // Paid or cancelled later, by the customer who made it.
                            my_orders.push((user, body["order_id"].as_u64().unwrap()));
                        }
                    } else {
                        tally.rejected.fetch_add(1, Ordering::Relaxed);
                        let code = body["error"]["code"].as_str().unwrap_or("");
                        tally
                            .codes
                            .lock()
                            .unwrap()
                            .entry(code.to_string())
                            .and_modify(|n| *n += 1)
                            .or_insert(1u64);
                        assert!(
                            [
                                "out_of_stock",
                                "limit_exceeded",
                                "cart_empty",
                                "cart_changed",
                                "order_not_payable",
                                "order_not_cancellable",
                                "not_found",
                            ]
                            .contains(&code),
                            "unexpected rejection {status} {body}"
                        );
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("worker");
    }
    let elapsed = started.elapsed();
    println!("rejections by code: {:?}", tally.codes.lock().unwrap());

    // Let every hold and unpaid order run out, then drain the sweeper and the write-back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.sweep().await;
    let writer = flashsale::worker::writer::Writer::new(app.state.clone());
    for _ in 0..300 {
        if writer.backlog().await.unwrap() == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        writer.backlog().await.unwrap(),
        (0, 0),
        "the outbox drained"
    );
    let (events, avg_ms, max_ms): (i64, f64, f64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(AVG(TIMESTAMPDIFF(MICROSECOND, at, written_at)) / 1000 AS DOUBLE), \
         CAST(MAX(TIMESTAMPDIFF(MICROSECOND, at, written_at)) / 1000 AS DOUBLE) FROM order_status_history",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    println!(
        "write-back during the run: {events} events, lag from decision to MySQL avg {avg_ms:.1} ms, max {max_ms:.1} ms"
    );

    // Units in paid orders, from the API, customer by customer.
    for w in 0..WORKERS as u64 {
        for u in 0..3 {
            let t = app.customer_token(20_000 + w * 3 + u);
            let mut before = String::new();
            loop {
                let r = app
                    .get(
                        &format!("/v1/orders?status=paid&limit=100{before}"),
                        Some(&t),
                    )
                    .await;
                for o in r.body["items"].as_array().unwrap() {
                    for i in o["items"].as_array().unwrap() {
                        tally
                            .paid_units
                            .fetch_add(i["count"].as_u64().unwrap(), Ordering::Relaxed);
                    }
                }
                match r.body["next_before_id"].as_u64() {
                    Some(id) => before = format!("&before_id={id}"),
                    None => break,
                }
            }
        }
    }
    let mut sold_total = 0;
    for &sku in skus.iter() {
        let b = app.assert_identity(sku).await;
        println!("sku {sku}: {b:?}");
        assert_eq!(
            (b.held, b.reserved),
            (0, 0),
            "sku {sku}: every unpaid unit came back"
        );
        assert_eq!(b.sold, 0, "sku {sku}: every sold unit was written back");
        assert_eq!(b.available, b.on_hand);
        sold_total += b.sold_total;
    }
    assert_eq!(
        sold_total as u64,
        tally.paid_units.load(Ordering::Relaxed),
        "units sold = units of paid orders"
    );
    println!(
        "mixed run: {} operations ({} ok, {} rejected) in {:?} ({:.0} ops/s), {} units sold",
        tally.ops.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        tally.rejected.load(Ordering::Relaxed),
        elapsed,
        tally.ops.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        sold_total
    );
    assert_eq!(tally.ops.load(Ordering::Relaxed), OPS);
}

/// Pay sent right at the payment deadline while the sweeper expires: each order ends paid with
/// its units sold, or cancelled with its units back, never both and never neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_racing_expiry() {
    let app = spawn_app_with(|c| {
        c.sale.payment_ttl = Duration::from_millis(300);
        c.sweeper.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    const ROUNDS: usize = 40;
    let sku = app.sale_product(ROUNDS as i64 * 2, None).await;
    let t = app.customer_token(888);
    let mut paid_units = 0;
    let (mut paid, mut expired) = (0, 0);
    for round in 0..ROUNDS {
        let count = 1 + (round % 2) as u64;
        let (s, o) = post_status(
            &app,
            "/v1/orders/buy-now",
            &t,
            Some(json!({"sku": sku, "count": count})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{o}");
        let id = o["order_id"].as_u64().unwrap();
        let expires: chrono::DateTime<chrono::Utc> =
            o["expires_at"].as_str().unwrap().parse().unwrap();
        // Aim both at the deadline, spread over ±15 ms.
        let jitter = rand::rng().random_range(-15..15i64);
        let wait = (expires - chrono::Utc::now()).num_milliseconds() + jitter;
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let pay_path = format!("/v1/orders/{id}/pay");
        let pay = post_status(&app, &pay_path, &t, None);
        let sweep = async {
            // The sweeper only sees the line once its deadline passed; keep trying briefly.
            for _ in 0..10 {
                app.sweep().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let ((ps, pb), ()) = tokio::join!(pay, sweep);
        let final_order = app.try_order(&t, id).await.body;
        match final_order["status"].as_str().unwrap() {
            "paid" => {
                assert_eq!(ps, StatusCode::OK, "paid, so the pay call won: {pb}");
                paid += 1;
                paid_units += count as i64;
            }
            "cancelled" => {
                assert_eq!(final_order["cancel_reason"], "expired");
                assert_eq!(
                    ps,
                    StatusCode::CONFLICT,
                    "expired, so the pay call lost: {pb}"
                );
                assert_eq!(pb["error"]["code"], "order_not_payable");
                expired += 1;
            }
            other => panic!("order {id} ended {other}"),
        }
        let b = app.assert_identity(sku).await;
        assert_eq!(
            b.reserved, 0,
            "round {round}: the order is settled either way"
        );
        assert_eq!(
            b.sold, paid_units,
            "round {round}: sold units are exactly the paid ones"
        );
    }
    println!("pay racing expiry: {paid} paid, {expired} expired of {ROUNDS}");
    assert_eq!(paid + expired, ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checkouts_and_buy_nows_never_oversell() {
    let app = spawn_app().await;
    let sku = app.sale_product(30, None).await;
    let results = futures::stream::iter(0..300u64)
        .map(|i| {
            let t = app.customer_token(30_000 + i);
            let app = &app;
            async move {
                if i % 2 == 0 {
                    let (s, _) = post_status(
                        app,
                        "/v1/cart/items",
                        &t,
                        Some(json!({"sku": sku, "count": 1})),
                    )
                    .await;
                    if s != StatusCode::OK {
                        return 0;
                    }
                    let (s, _) = post_status(app, "/v1/orders", &t, None).await;
                    u64::from(s == StatusCode::CREATED)
                } else {
                    let (s, _) = post_status(
                        app,
                        "/v1/orders/buy-now",
                        &t,
                        Some(json!({"sku": sku, "count": 1})),
                    )
                    .await;
                    u64::from(s == StatusCode::CREATED)
                }
            }
        })
        .buffer_unordered(128)
        .collect::<Vec<u64>>()
        .await;
    let orders: u64 = results.iter().sum();
    assert_eq!(orders, 30, "exactly the stock was ordered");
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.reserved), (0, 30));
}
