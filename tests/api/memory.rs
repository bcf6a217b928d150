//! The Redis memory budget (DESIGN.md, "Redis memory budget"): after a sale, every key the
//! service left in Redis belongs to a family with a bound (a TTL, a length cap) or a stated
//! reason to stay (one per sku, one per deployment); a new kind of key must be given one. Also
//! prints what each family costs per order, the figures DESIGN.md records.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app_with};

/// What a key family may do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
    /// Must expire by itself, within this long.
    Ttl(Duration),
    /// A stream whose length is capped (trimmed by MAXLEN ~; one stream node of slack).
    Capped(u64),
    /// Emptied by the write-back: no entry left once it has drained.
    Drained,
    /// Kept while the catalog or the deployment lives (one per sku, or one in all).
    PerSku,
    PerDeployment,
    /// An order record: expires once the order is finished; an open one lives until decided.
    OrderRecord,
    /// A customer's order index: only orders not yet finished and written back.
    OpenOrders,
    /// Emptied once what it holds is settled (a set that empties is gone): none left after a
    /// sale whose admin changes all answered.
    Settled,
}

/// The family of a key (the prefix stripped), and its bound under `app`'s settings.
fn family(key: &str, app_events_cap: u64) -> Option<(&'static str, Bound)> {
    let day = Duration::from_secs(24 * 3600);
    // "{tag:with:colons}:rest:of:it", or a plain "name:more".
    let (tag, tail) = match key.find('}') {
        Some(end) if key.starts_with('{') => (&key[..=end], key[end + 1..].trim_start_matches(':')),
        _ => ("", key),
    };
    let rest: Vec<&str> = tail.split(':').collect();
    Some(if tag.starts_with("{sku") {
        match rest.first().copied() {
            Some("meta" | "stock" | "users" | "res" | "exp" | "sold") => {
                ("sku state", Bound::PerSku)
            }
            Some("h" | "o") => ("reservation ttl key", Bound::Ttl(day)),
            Some("load") => ("load staging", Bound::Ttl(Duration::from_secs(60))),
            Some("adj") => ("stock change token", Bound::Ttl(day)),
            Some("adjp") => ("pending stock changes", Bound::Settled),
            Some(f) if f.starts_with("metafence") => (
                "given-up catalog change",
                Bound::Ttl(Duration::from_secs(3600)),
            ),
            _ => return None,
        }
    } else if tag.starts_with("{ord") {
        match rest.first().copied() {
            Some("o") => ("order record", Bound::OrderRecord),
            Some("outbox") => ("outbox", Bound::Drained),
            Some("outbox-dead") => ("outbox set aside", Bound::PerDeployment),
            Some("placing" | "placing-lines") => ("placement notes", Bound::Settled),
            // The partition's reader: a lease of seconds (FLASHSALE_READER_LEASE).
            Some("reader") => ("partition lease", Bound::Ttl(Duration::from_secs(60))),
            _ => return None,
        }
    } else if tag.starts_with("{user") {
        match rest.first().copied() {
            Some("cart") => ("cart index", Bound::Ttl(Duration::from_secs(600))),
            Some("orders") => ("order index", Bound::OpenOrders),
            Some("idemp") => ("idempotency record", Bound::Ttl(day)),
            Some("checkout") => ("checkout lock", Bound::Ttl(Duration::from_secs(30))),
            // The token's life (the harness keeps the default hour) and a minute.
            Some("account") => ("account note", Bound::Ttl(Duration::from_secs(3600 + 60))),
            _ => return None,
        }
    } else if tag.starts_with("{rl") {
        ("rate-limit bucket", Bound::Ttl(Duration::from_secs(3600)))
    } else if tag == "{due}" {
        ("due index", Bound::PerSku)
    } else if tag == "{lease}" {
        // A lease of shared work: a few ticks of the sweeper or the gauges, 30 s at most.
        ("shared work lease", Bound::Ttl(Duration::from_secs(30)))
    } else {
        match key {
            "order-events" => ("order events", Bound::Capped(app_events_cap)),
            "webhook-dead" => ("webhook set aside", Bound::Capped(100_000)),
            "skus" => ("sku index", Bound::PerSku),
            "seq:order" => ("order id counter", Bound::PerDeployment),
            "outbox-readers" => ("outbox writers' heartbeat", Bound::PerDeployment),
            _ => return None,
        }
    })
}

async fn buy_and_pay(app: &TestApp, user: u64, sku: u64, key: &str) -> u64 {
    let t = app.customer_token(user);
    let r = app
        .client
        .post(format!("{}/v1/orders/buy-now", app.addr))
        .bearer_auth(&t)
        .header("Idempotency-Key", key)
        .json(&json!({"sku": sku, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<serde_json::Value>().await.unwrap()["order_id"]
        .as_u64()
        .unwrap();
    app.pay(&t, id).await;
    id
}

#[tokio::test]
async fn every_redis_key_a_sale_leaves_has_a_bound() {
    const ORDERS: u64 = 300;
    const EVENTS_CAP: u64 = 50;
    let app = spawn_app_with(|c| {
        c.outbox.events_max_len = EVENTS_CAP;
        c.limits.rate_limits = true;
        c.limits.rate_customer_per_sec = 1000.0;
        c.limits.rate_customer_burst = 1000;
        c.limits.rate_ip_per_sec = 100_000.0;
        c.limits.rate_ip_burst = 100_000;
    })
    .await;
    let sku = app.sale_product(ORDERS as i64 + 20, Some(2)).await;
    // Paid orders with keys (the common path), carts left behind, a cancelled order, an open one.
    for user in 0..ORDERS {
        buy_and_pay(&app, 10_000 + user, sku, &format!("k-{user}")).await;
    }
    for user in 0..10 {
        let t = app.customer_token(20_000 + user);
        app.cart_add(&t, sku, 1).await;
    }
    let t = app.customer_token(30_000);
    let id = app.buy_now(&t, sku, 1).await.order_id;
    app.try_cancel(&t, id).await;
    let open = app.try_buy_now(&t, sku, 1).await;
    assert_eq!(open.status, StatusCode::CREATED, "{:?}", open.body);
    while app.write_back().await.events > 0 {}
    app.sweep().await;

    let mut conn = app.state.redis.conn();
    let prefix = format!("{}:", app.prefix);
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }

    let mut bytes: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    for key in &keys {
        let short = key.strip_prefix(&prefix).unwrap();
        let (name, bound) = family(short, EVENTS_CAP).unwrap_or_else(|| {
            panic!("{short}: a key of no known family; give it a bound in DESIGN.md's budget")
        });
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if pttl == -2 {
            continue; // expired since the scan: bounded indeed
        }
        match bound {
            Bound::Ttl(max) => {
                // -1: no TTL. 0: expiring in this very millisecond (Redis answers 0, not -2,
                // until the clock passes the deadline).
                assert!(pttl >= 0, "{short} ({name}) has no TTL");
                assert!(
                    pttl as u128 <= max.as_millis(),
                    "{short} ({name}) lives {pttl} ms, over {max:?}"
                );
            }
            Bound::Capped(cap) => {
                let len: u64 = redis::cmd("XLEN")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                // MAXLEN ~ trims whole stream nodes (100 entries each by default).
                assert!(
                    len <= cap + 100,
                    "{short} ({name}) holds {len}, over {cap} + a node"
                );
            }
            Bound::Drained => {
                let len: u64 = redis::cmd("XLEN")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(len, 0, "{short} ({name}) not drained");
            }
            Bound::OrderRecord => {
                let status: Option<String> = redis::cmd("HGET")
                    .arg(key)
                    .arg("status")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let open = matches!(status.as_deref(), Some("new" | "awaiting_payment"));
                assert!(
                    open || pttl > 0,
                    "{short}: a finished order record ({status:?}) without a TTL"
                );
            }
            Bound::OpenOrders => {
                let ids: Vec<u64> = redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                for id in ids {
                    let status: Option<String> = redis::cmd("HGET")
                        .arg(app.state.redis.keys.order(id))
                        .arg("status")
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    assert!(
                        matches!(status.as_deref(), Some("new" | "awaiting_payment")),
                        "{short}: order {id} ({status:?}) is written back and finished, yet indexed"
                    );
                }
            }
            Bound::Settled => {
                let kind: String = redis::cmd("TYPE")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let len: u64 = redis::cmd(if kind == "hash" { "HLEN" } else { "ZCARD" })
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(len, 0, "{short} ({name}) not settled");
            }
            Bound::PerSku | Bound::PerDeployment => {}
        }
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let e = bytes.entry(name).or_default();
        e.0 += 1;
        e.1 += used.unwrap_or(0);
    }
    // The events stream was capped below what the sale wrote (two events per paid order).
    let events: u64 = redis::cmd("XLEN")
        .arg(app.state.redis.keys.order_events())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(events < 2 * ORDERS, "order-events not trimmed: {events}");

    println!("Redis memory after {ORDERS} paid orders (MEMORY USAGE, per family):");
    for (name, (n, b)) in &bytes {
        println!(
            "  {name:<22} {n:>5} keys {b:>9} B  {:>7.1} B/paid order",
            *b as f64 / ORDERS as f64
        );
    }
}

#[tokio::test]
async fn a_customer_order_index_lets_go_of_written_orders_and_the_listing_still_shows_all() {
    const ORDERS: usize = 130;
    let app = spawn_app_with(|_| {}).await;
    let sku = app.sale_product(ORDERS as i64, None).await;
    let t = app.customer_token(40_000);
    let mut ids = Vec::new();
    for i in 0..ORDERS {
        let id = app.buy_now(&t, sku, 1).await.order_id;
        // Most are paid; every tenth stays open.
        if i % 10 != 0 {
            app.pay(&t, id).await;
        }
        ids.push(id);
    }
    let index = app.state.redis.keys.user_orders(40_000);
    let card = || async {
        let n: u64 = redis::cmd("ZCARD")
            .arg(&index)
            .query_async(&mut app.state.redis.conn())
            .await
            .unwrap();
        n
    };
    assert_eq!(
        card().await,
        ORDERS as u64,
        "before the write-back every order is indexed"
    );
    let listed = list_all(&app, &t).await;
    let mut newest_first = ids.clone();
    newest_first.sort_unstable();
    newest_first.reverse();
    assert_eq!(
        listed, newest_first,
        "listed from Redis before the write-back"
    );

    while app.write_back().await.events > 0 {}
    // Only the open ones stay: the index is bounded by what is not finished yet.
    assert_eq!(
        card().await,
        13,
        "the paid orders left the index once written"
    );
    assert_eq!(
        list_all(&app, &t).await,
        newest_first,
        "every order listed once, newest first, after the write-back"
    );
}

async fn list_all(app: &TestApp, token: &str) -> Vec<u64> {
    let mut listed = Vec::new();
    let mut before = String::new();
    loop {
        let r = app
            .get(&format!("/v1/orders?limit=50{before}"), Some(token))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        for o in r.body["items"].as_array().unwrap() {
            listed.push(o["order_id"].as_u64().unwrap());
        }
        match r.body["next_before_id"].as_u64() {
            Some(next) => before = format!("&before_id={next}"),
            None => break,
        }
    }
    listed
}
