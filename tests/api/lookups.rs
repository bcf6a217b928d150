//! Product lookups that reach MySQL (a sku Redis does not hold): one pooled connection per
//! request at most, unknown skus remembered for a while, concurrent loads of one sku done once.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

use crate::helpers::*;

/// Products written straight into MySQL, as another instance (or `seed`) would: this instance's
/// Redis does not hold them until something loads them.
async fn unloaded_products(app: &TestApp, skus: impl IntoIterator<Item = u32>) {
    for sku in skus {
        sqlx::query("INSERT INTO products (sku, name, price) VALUES (?, ?, 1000)")
            .bind(sku)
            .bind(format!("unloaded {sku}"))
            .execute(&app.state.db)
            .await
            .unwrap();
    }
}

/// Status of a GET, reading only the head (streams stay open otherwise).
async fn status_of(client: &reqwest::Client, url: String) -> StatusCode {
    client.get(url).send().await.expect("answered").status()
}

#[tokio::test]
async fn a_burst_of_lookups_on_a_pool_of_two_gets_no_503_and_readyz_stays_ready() {
    let app = spawn_app_with(|c| {
        c.stores.mysql_pool = 2;
        c.stores.mysql_timeout = Duration::from_secs(1);
        c.live.live_max_per_client = 1_000;
    })
    .await;
    let known: Vec<u32> = (7001..7021).collect();
    unloaded_products(&app, known.clone()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        // Unknown skus: a few repeated ones and many distinct ones.
        let unknown = if i % 2 == 0 {
            900_000 + i % 7
        } else {
            1_000_000 + i
        };
        let is_known = i % 3 == 0;
        let sku = if is_known {
            known[i as usize % known.len()]
        } else {
            unknown
        };
        let path = match i % 4 {
            0 => format!("/v1/products/{sku}"),
            1 => format!("/v1/products/{sku}/stocks"),
            _ => format!("/v1/products/{sku}/stock/stream"),
        };
        let url = format!("{}{path}", app.addr);
        let client = client.clone();
        tasks.spawn(async move { (path, is_known, status_of(&client, url).await) });
    }
    let mut ready = Vec::new();
    while !tasks.is_empty() {
        ready.push(status_of(&client, format!("{}/readyz", app.addr)).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Some(done) = tasks.try_join_next() {
            let (path, is_known, status) = done.unwrap();
            let want = if is_known {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            assert_eq!(status, want, "{path}");
        }
    }
    assert!(
        ready.iter().all(|s| *s == StatusCode::OK),
        "readyz during the burst: {ready:?}"
    );
    // Every known sku was loaded into Redis, with the stock identity.
    for sku in known {
        let r = app.get(&format!("/v1/products/{sku}"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["available"], 0);
    }
}

#[tokio::test]
async fn an_unknown_sku_costs_mysql_work_once_until_it_is_created_here() {
    let app = spawn_app().await;
    for path in [
        "/v1/products/777777",
        "/v1/products/777777/stocks",
        "/v1/products/777777/stock/stream",
    ] {
        let r = app.get(path, None).await;
        r.assert_error(StatusCode::NOT_FOUND, "not_found", path);
    }
    // MySQL can no longer answer about products: a second lookup of the same unknown sku must
    // not ask it.
    sqlx::query("RENAME TABLE products TO products_away")
        .execute(&app.state.db)
        .await
        .unwrap();
    for path in [
        "/v1/products/777777",
        "/v1/products/777777/stocks",
        "/v1/products/777777/stock/stream",
    ] {
        let r = app.get(path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {:?}", r.body);
    }
    let (_, token) = app.register("unknown-sku-buyer").await;
    let r = app.try_cart_add(&token, 777777, 1).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    let r = app.try_buy_now(&token, 777777, 1).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    sqlx::query("RENAME TABLE products_away TO products")
        .execute(&app.state.db)
        .await
        .unwrap();
    // Created on this instance: known at once.
    let r = app
        .post(
            "/v1/products",
            Some(&app.admin_token),
            json!({"sku": 777777, "name": "Late arrival", "price": 500}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app.get("/v1/products/777777/stocks", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn a_sku_created_on_another_instance_is_found_after_the_negative_cache_ttl() {
    let app = spawn_app_with(|c| c.sale.unknown_sku_ttl = Duration::from_secs(2)).await;
    let r = app.get("/v1/products/888888", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    unloaded_products(&app, [888888]).await;
    // Within the bound it may still be unknown here; past it, it must be found.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get("/v1/products/888888", None).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
        assert!(
            std::time::Instant::now() < deadline,
            "still unknown 10 s after it was created"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connection of the test's own to the app's database (not from the app's pool).
async fn own_connection(app: &TestApp) -> sqlx::MySqlConnection {
    let base = std::env::var("FLASHSALE_TEST_MYSQL_BASE")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    sqlx::MySqlConnection::connect(&format!("{base}/{}", app.db_name))
        .await
        .unwrap()
}

/// Queries of this test's database waiting on a table lock.
async fn lock_waiters(app: &TestApp, conn: &mut sqlx::MySqlConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.processlist \
         WHERE db = ? AND state LIKE 'Waiting for table%'",
    )
    .bind(&app.db_name)
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn concurrent_loads_of_one_sku_take_one_connection_while_mysql_is_stuck() {
    let app = spawn_app_with(|c| {
        c.stores.mysql_pool = 3;
        c.stores.mysql_timeout = Duration::from_secs(20);
    })
    .await;
    unloaded_products(&app, [6001, 6002]).await;
    // Another session locks the products table: reads of it wait.
    let mut locker = own_connection(&app).await;
    let mut observer = own_connection(&app).await;
    sqlx::query("LOCK TABLES products WRITE")
        .execute(&mut locker)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let sku = if i % 2 == 0 { 6001 } else { 6002 };
        let url = format!("{}/v1/products/{sku}/stocks", app.addr);
        let client = client.clone();
        tasks.spawn(async move { status_of(&client, url).await });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lock_waiters(&app, &mut observer).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no load reached MySQL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the other requests arrive and queue behind the one load.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lock_waiters(&app, &mut observer).await,
        1,
        "one load at a time reaches MySQL"
    );
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    sqlx::query("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap(), StatusCode::OK);
    }
}
