//! Loading a sku into Redis from MySQL when its counters are missing: whatever the number of
//! past buyers, all or nothing; and rebuild-cache going on past a sku it cannot load.

use std::collections::HashMap;

use flashsale::domain::Sku;
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

const BUYERS: u64 = 100_000;
const FIRST_BUYER: u64 = 1_000_000;

/// `buyers` paid orders of one unit each by different customers, plus one customer (`at_limit`)
/// who bought 2; the write-back's stock movements for them (one a line), so the identity holds.
async fn past_buyers(app: &TestApp, sku: u64, warehouse: u64, at_limit: u64, buyers: u64) {
    let db = &app.state.db;
    let mut id = 1u64;
    let list: Vec<(u64, u32)> = (0..buyers)
        .map(|i| (FIRST_BUYER + i, 1))
        .chain([(at_limit, 2)])
        .collect();
    // Redis handed those ids out before MySQL got them: its counter is past them first (else an
    // instance's metrics tick, landing between the inserts and the raise, takes Redis for one
    // that went back behind MySQL and stops selling).
    let last = list.len() as u64;
    let mut conn = app.state.redis.conn();
    let seq: Option<u64> = conn.get(app.state.redis.keys.order_seq()).await.unwrap();
    if seq.unwrap_or(0) < last {
        let _: () = conn
            .set(app.state.redis.keys.order_seq(), last)
            .await
            .unwrap();
    }
    for chunk in list.chunks(5_000) {
        let mut orders = String::from(
            "INSERT INTO orders (id, user_id, status, total_price, created_at, expires_at) VALUES ",
        );
        let mut items = String::from(
            "INSERT INTO order_items (order_id, sku, name, count, unit_price) VALUES ",
        );
        // Each paid line's units left on_hand (as the write-back records them).
        let mut moved = String::from(
            "INSERT INTO stock_movements (order_id, sku, warehouse_id, units) VALUES ",
        );
        for (n, (user, count)) in chunk.iter().enumerate() {
            if n > 0 {
                orders.push(',');
                items.push(',');
                moved.push(',');
            }
            orders.push_str(&format!(
                "({id},{user},'paid',{},NOW(3),NOW(3))",
                5_000 * u64::from(*count)
            ));
            items.push_str(&format!("({id},{sku},'Flash item',{count},5000)"));
            moved.push_str(&format!("({id},{sku},{warehouse},{count})"));
            id += 1;
        }
        // Only integers of our own are formatted into these statements.
        sqlx::query(sqlx::AssertSqlSafe(orders.clone()))
            .execute(db)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(items.clone()))
            .execute(db)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(moved.clone()))
            .execute(db)
            .await
            .unwrap();
    }
}

/// Every Redis key of a sku gone, as after a Redis restart without its data.
async fn forget_sku(app: &TestApp, sku: u64) {
    let mut conn = app.state.redis.conn();
    let pattern = format!("{}:{{sku:{sku}}}:*", app.prefix);
    let keys: Vec<String> = {
        let mut it: redis::AsyncIter<String> = conn.scan_match(&pattern).await.unwrap();
        let mut v = Vec::new();
        while let Some(k) = it.next_item().await {
            v.push(k.unwrap());
        }
        v
    };
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
    let _: () = conn.srem(app.state.redis.keys.skus(), sku).await.unwrap();
}

#[tokio::test]
async fn a_sku_with_100k_past_buyers_loads_whole() {
    let app = spawn_app().await;
    let sku = app.product("Flash item", 10_000).await;
    let w = app.warehouse("wh-big").await;
    assert_eq!(app.add_stock(sku, w, 10).await.status, StatusCode::OK);
    app.open_sale(sku, 5_000, Some(2)).await;
    past_buyers(&app, sku, w, 42, BUYERS).await;
    forget_sku(&app, sku).await;

    let started = std::time::Instant::now();
    let r = app.get(&format!("/v1/products/{sku}"), None).await;
    println!("loading {BUYERS} past buyers took {:?}", started.elapsed());
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["available"], 10);

    let keys = app.state.redis.keys.sku(Sku::parse(sku).unwrap());
    let mut conn = app.state.redis.conn();
    let n: u64 = conn.hlen(keys.users()).await.unwrap();
    assert_eq!(n, BUYERS + 1, "every past buyer is known");
    for key in [keys.users(), keys.stock()] {
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        assert_eq!(ttl, -1, "{key} keeps no staging lifetime");
    }
    let indexed: bool = conn
        .sismember(app.state.redis.keys.skus(), sku)
        .await
        .unwrap();
    assert!(indexed, "the sweeper walks the sku");
    let staging: Vec<String> = conn
        .keys(format!("{}:{{sku:{sku}}}:load:*", app.prefix))
        .await
        .unwrap();
    assert!(staging.is_empty(), "no staging key left: {staging:?}");

    // The per-customer limit remembers them: at the limit, refused; one bought, one more.
    let r = app
        .post(
            "/v1/cart/items",
            Some(&app.customer_token(42)),
            json!({"sku": sku, "count": 1}),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT, "limit_exceeded", "");
    let last = app.customer_token(FIRST_BUYER + BUYERS - 1);
    app.cart_add(&last, sku, 1).await;
    let r = app.try_cart_add(&last, sku, 1).await;
    assert_eq!(r.code(), "limit_exceeded", "{:?}", r.body);
    let bk = app.assert_identity(sku).await;
    assert_eq!((bk.available, bk.held), (9, 1));
}

#[tokio::test]
async fn rebuild_cache_goes_on_past_a_sku_it_cannot_load() {
    let app = spawn_app().await;
    let big = app.product("Flash item", 10_000).await;
    let w = app.warehouse("wh-rb").await;
    assert_eq!(app.add_stock(big, w, 10).await.status, StatusCode::OK);
    app.open_sale(big, 5_000, Some(2)).await;
    past_buyers(&app, big, w, 42, BUYERS).await;
    let broken = app.sale_product(5, None).await;
    let small = app.sale_product(7, None).await;
    for sku in [big, broken, small] {
        forget_sku(&app, sku).await;
    }
    // Something unreadable where the broken sku's counters belong.
    let broken_keys = app.state.redis.keys.sku(Sku::parse(broken).unwrap());
    let _: () = app
        .state
        .redis
        .conn()
        .set(broken_keys.stock(), "not a hash")
        .await
        .unwrap();

    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .expect("rebuild-cache runs to the end");
    assert_eq!(report.skus_loaded, 2, "{report:?}");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].contains(&format!("sku {broken}")),
        "{report:?}"
    );
    let mut conn = app.state.redis.conn();
    let users: HashMap<String, i64> = conn
        .hgetall(app.state.redis.keys.sku(Sku::parse(big).unwrap()).users())
        .await
        .unwrap();
    assert_eq!(users.len() as u64, BUYERS + 1);
    assert_eq!(users["42"], 2);
    for sku in [big, small] {
        app.assert_identity(sku).await;
    }
    assert_eq!(app.available(small).await, 7);
}

/// Loaders racing on one sku (every request that finds it missing loads it): one load wins
/// whole, the others drop their staging; nothing is counted twice.
#[tokio::test]
async fn concurrent_loads_of_one_sku_agree() {
    let app = spawn_app().await;
    let sku = app.product("Flash item", 10_000).await;
    let w = app.warehouse("wh-race").await;
    assert_eq!(app.add_stock(sku, w, 10).await.status, StatusCode::OK);
    app.open_sale(sku, 5_000, Some(2)).await;
    past_buyers(&app, sku, w, 42, 5_000).await;
    forget_sku(&app, sku).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (
                app.client.clone(),
                format!("{}/v1/products/{sku}", app.addr),
            );
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for h in tasks {
        assert_eq!(h.await.unwrap(), StatusCode::OK);
    }
    let keys = app.state.redis.keys.sku(Sku::parse(sku).unwrap());
    let mut conn = app.state.redis.conn();
    let n: u64 = conn.hlen(keys.users()).await.unwrap();
    assert_eq!(n, 5_001);
    let staging: Vec<String> = conn
        .keys(format!("{}:{{sku:{sku}}}:load:*", app.prefix))
        .await
        .unwrap();
    assert!(staging.is_empty(), "{staging:?}");
    let bk = app.assert_identity(sku).await;
    assert_eq!(bk.available, 10);
}
