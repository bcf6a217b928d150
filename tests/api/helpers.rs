//! `spawn_app()` and friends: a real app on 127.0.0.1:0 against the real Redis and MySQL.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use flashsale::app::AppState;
use flashsale::config::Config;
use flashsale::domain::{Role, Sku};
use flashsale::startup::Application;
use rand::Rng;
use redis::AsyncCommands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "admin-test-password";

fn mysql_base() -> String {
    std::env::var("FLASHSALE_TEST_MYSQL_BASE")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

fn redis_url() -> String {
    std::env::var("FLASHSALE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub admin_token: String,
    pub db_name: String,
    pub prefix: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// The error code of an error envelope ("" when there is none).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Drops a test's database (best effort: a test that never made it has nothing to drop).
pub async fn drop_database(db_name: &str) {
    if let Ok(mut conn) = <sqlx::MySqlConnection as sqlx::Connection>::connect(&mysql_base()).await
    {
        let sql = format!("DROP DATABASE IF EXISTS `{db_name}`");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await;
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A fresh test identity: its database name and Redis prefix.
pub fn test_names() -> (String, String) {
    let id: u64 = rand::rng().random();
    (format!("fs_test_{id:016x}"), format!("fst{id:016x}"))
}

/// The test defaults for a database and a prefix.
pub fn test_config(db_name: &str, prefix: &str) -> Config {
    let mut cfg = Config::defaults();
    cfg.stores.mysql_url = format!("{}/{db_name}", mysql_base());
    cfg.stores.redis_url = redis_url();
    cfg.stores.redis_prefix = prefix.to_string();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.auth.jwt_secret = Some(format!("test-secret-{prefix}-0123456789abcdef"));
    cfg.auth.admin_password = Some(ADMIN_PASSWORD.into());
    cfg.auth.argon2_memory_kib = 1024;
    cfg.sweeper.sweep_interval = Duration::from_millis(100);
    cfg.stores.mysql_pool = 8;
    // Tests drive the write-back themselves (`write_back()`), so they can look in between.
    cfg.outbox.worker = false;
    // Every test comes from 127.0.0.1; the rate-limit tests turn the limits on.
    cfg.limits.rate_limits = false;
    cfg
}

/// Starts the app with the test defaults, changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let (db_name, prefix) = test_names();
    let mut cfg = test_config(&db_name, &prefix);
    tweak(&mut cfg);
    let app = Application::build(cfg).await.expect("the app builds");
    let addr = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp::signed_in(addr, state, db_name, prefix, Some((tx, server))).await
}

impl TestApp {
    /// A handle on a service that runs elsewhere (a child process) at `addr`, with `state`
    /// connected to its stores; dropping it drops the test's database and Redis keys.
    pub async fn attach(addr: String, state: AppState, db_name: String, prefix: String) -> TestApp {
        TestApp::signed_in(addr, state, db_name, prefix, None).await
    }

    /// The handle with its HTTP client and the admin's token; `server` is the in-process
    /// server's stop signal and task, when the test runs one.
    async fn signed_in(
        addr: String,
        state: AppState,
        db_name: String,
        prefix: String,
        server: Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<anyhow::Result<()>>,
        )>,
    ) -> TestApp {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let (shutdown, server) = server.unzip();
        let mut t = TestApp {
            addr,
            client,
            state,
            admin_token: String::new(),
            db_name,
            prefix,
            shutdown,
            server,
        };
        t.admin_token = t.login("admin", ADMIN_PASSWORD).await;
        t
    }

    /// Sends the shutdown signal (as SIGTERM would) and returns the server task, which ends when
    /// the app has finished its requests in flight and stopped its background work.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.take().expect("the server runs")
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.client.request(method, format!("{}{path}", self.addr));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let stream = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        // An event stream stays open: its status and headers are the answer (tests/api/live.rs
        // reads streams).
        let text = if stream {
            String::new()
        } else {
            resp.text().await.unwrap_or_default()
        };
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(Method::GET, path, token, None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(Method::POST, path, token, Some(body)).await
    }
    pub async fn post_empty(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(Method::POST, path, token, None).await
    }
    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(Method::PUT, path, token, Some(body)).await
    }
    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(Method::PATCH, path, token, Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(Method::DELETE, path, token, None).await
    }

    /// POST with a raw body and content type (malformed-input tests).
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Resp {
        let mut req = self
            .client
            .post(format!("{}{path}", self.addr))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .post(
                "/v1/auth/token",
                None,
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "login of {username}: {:?}",
            r.body
        );
        r.body["access_token"].as_str().unwrap().to_string()
    }

    /// Registers a customer through the API; returns (user_id, token).
    pub async fn register(&self, username: &str) -> (u64, String) {
        let password = format!("{username}-password");
        let r = self
            .post(
                "/v1/users",
                None,
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "register {username}: {:?}",
            r.body
        );
        let id = r.body["user_id"].as_u64().unwrap();
        (id, self.login(username, &password).await)
    }

    /// A token for a customer id without an account row: what load tests use, since the sale
    /// routes trust the token and argon2 for thousands of logins would only test argon2.
    pub fn customer_token(&self, user_id: u64) -> String {
        self.state.jwt.issue(user_id, Role::Customer).unwrap()
    }

    pub async fn warehouse(&self, name: &str) -> u64 {
        let r = self
            .post(
                "/v1/warehouses",
                Some(&self.admin_token),
                json!({"name": name}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["warehouse_id"].as_u64().unwrap()
    }

    pub async fn product(&self, name: &str, price: u64) -> u64 {
        let r = self
            .post(
                "/v1/products",
                Some(&self.admin_token),
                json!({"name": name, "price": price}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["sku"].as_u64().unwrap()
    }

    pub async fn add_stock(&self, sku: u64, warehouse_id: u64, delta: i64) -> Resp {
        self.post(
            &format!("/v1/products/{sku}/stock"),
            Some(&self.admin_token),
            json!({"warehouse_id": warehouse_id, "delta": delta}),
        )
        .await
    }

    /// Opens a sale on `sku` from an hour ago to an hour from now.
    pub async fn open_sale(&self, sku: u64, sale_price: u64, limit: Option<u64>) {
        let now = Utc::now();
        let r = self
            .put(
                &format!("/v1/products/{sku}/sale"),
                Some(&self.admin_token),
                json!({
                    "sale_price": sale_price,
                    "starts_at": (now - chrono::Duration::hours(1)).to_rfc3339(),
                    "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
                    "per_customer_limit": limit,
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }

    /// A product on sale now with `units` in one new warehouse; returns its sku.
    pub async fn sale_product(&self, units: i64, limit: Option<u64>) -> u64 {
        let sku = self.product("Flash item", 10_000).await;
        let w = self.warehouse(&format!("wh-{sku}")).await;
        let r = self.add_stock(sku, w, units).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        self.open_sale(sku, 5_000, limit).await;
        sku
    }

    /// Buys `count` units with buy-now as customer `user` and pays; returns the order id.
    pub async fn buy_and_pay(&self, user: u64, sku: u64, count: u64) -> u64 {
        let t = self.customer_token(user);
        let r = self
            .post(
                "/v1/orders/buy-now",
                Some(&t),
                json!({"sku": sku, "count": count}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let id = r.body["order_id"].as_u64().unwrap();
        let r = self
            .post_empty(&format!("/v1/orders/{id}/pay"), Some(&t))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["status"], "paid");
        id
    }

    pub async fn available(&self, sku: u64) -> i64 {
        let r = self.get(&format!("/v1/products/{sku}"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.body["available"].as_i64().unwrap()
    }

    /// Writes the outbox back to MySQL now, as the background worker would.
    pub async fn write_back(&self) -> flashsale::worker::writer::WriteStats {
        flashsale::worker::writer::Writer::new(self.state.clone())
            .run_once(&self.state.db, flashsale::worker::writer::Fault::None)
            .await
            .expect("write-back")
    }

    /// Drains expiry now, as the background sweeper would (its due-index audit first: some
    /// tests fake an expiry by writing a past deadline straight into a sku's `exp`).
    pub async fn sweep(&self) {
        self.state.redis.audit_due(500).await.expect("audit");
        flashsale::worker::sweeper::run_once(&self.state)
            .await
            .expect("sweep");
    }

    /// Checks DESIGN.md's identity for `sku` from MySQL and from every Redis structure, and that
    /// Redis's derived counters agree with its ledger. Returns the buckets.
    pub async fn assert_identity(&self, sku: u64) -> Buckets {
        let on_hand: u64 = sqlx::query_scalar::<_, Option<u64>>(
            "SELECT CAST(SUM(on_hand) AS UNSIGNED) FROM stock WHERE sku = ?",
        )
        .bind(sku as u32)
        .fetch_one(&self.state.db)
        .await
        .unwrap()
        .unwrap_or(0);
        let keys = self.state.redis.keys.sku(Sku::parse(sku).unwrap());
        let mut conn = self.state.redis.conn();
        // One atomic read (MULTI/EXEC: the keys share a slot), so that a script running beside
        // a live service (the write-back, the sweeper) is seen wholly or not at all.
        #[allow(clippy::type_complexity)]
        let (stock, ledger, users, exp, sold_ledger): (
            HashMap<String, i64>,
            HashMap<String, String>,
            HashMap<String, i64>,
            Vec<String>,
            HashMap<String, String>,
        ) = redis::pipe()
            .atomic()
            .hgetall(keys.stock())
            .hgetall(keys.res())
            .hgetall(keys.users())
            .zrange(keys.exp(), 0, -1)
            .hgetall(keys.sold())
            .query_async(&mut conn)
            .await
            .unwrap();

        let b = Buckets {
            on_hand: on_hand as i64,
            available: stock["avail"],
            held: stock["held"],
            reserved: stock["reserved"],
            sold: stock["sold"],
            sold_total: stock["sold_total"],
        };
        assert!(
            b.available >= 0 && b.held >= 0 && b.reserved >= 0,
            "sku {sku}: negative bucket {b:?}"
        );
        assert_eq!(
            b.on_hand,
            b.available + b.held + b.reserved + b.sold,
            "sku {sku}: on_hand != available + held + reserved + sold: {b:?}"
        );
        let by_warehouse: i64 = stock
            .iter()
            .filter(|(k, _)| k.starts_with('w'))
            .map(|(_, v)| *v)
            .sum();
        assert_eq!(
            by_warehouse, b.available,
            "sku {sku}: warehouses do not add up to available"
        );
        assert!(
            stock
                .iter()
                .filter(|(k, _)| k.starts_with('w'))
                .all(|(_, v)| *v >= 0)
        );
        let (mut held, mut reserved) = (0, 0);
        for (rid, v) in &ledger {
            let parts: Vec<&str> = v.split('|').collect();
            let count: i64 = parts[1].parse().unwrap();
            let alloc: i64 = parts[2]
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|a| a.split(':').nth(1).unwrap().parse::<i64>().unwrap())
                .sum();
            assert_eq!(
                count, alloc,
                "sku {sku}: ledger entry {rid} allocates {alloc} of {count}"
            );
            if rid.starts_with("h:") {
                held += count;
            } else {
                reserved += count;
            }
            assert!(
                exp.contains(rid),
                "sku {sku}: {rid} missing from the deadline index"
            );
        }
        assert_eq!(held, b.held, "sku {sku}: ledger holds != held counter");
        assert_eq!(
            reserved, b.reserved,
            "sku {sku}: ledger order lines != reserved counter"
        );
        assert_eq!(
            exp.len(),
            ledger.len(),
            "sku {sku}: index and ledger differ"
        );
        let unwritten: i64 = sold_ledger
            .values()
            .map(|v| v.split('|').nth(1).unwrap().parse::<i64>().unwrap())
            .sum();
        assert_eq!(unwritten, b.sold, "sku {sku}: sold ledger != sold counter");
        let per_user: i64 = users.values().sum();
        assert_eq!(
            per_user,
            b.held + b.reserved + b.sold_total,
            "sku {sku}: per-customer counts != held + reserved + bought"
        );
        b
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    pub on_hand: i64,
    pub available: i64,
    pub held: i64,
    pub reserved: i64,
    pub sold: i64,
    pub sold_total: i64,
}

impl Drop for TestApp {
    /// Stops the app and drops the test's database and Redis keys, even when the test failed.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let db_name = self.db_name.clone();
        let pattern = format!("{}:*", self.prefix);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                drop_database(&db_name).await;
                if let Ok(client) = redis::Client::open(redis_url())
                    && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                {
                    let mut cursor: u64 = 0;
                    loop {
                        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut conn)
                            .await
                            .unwrap_or((0, Vec::new()));
                        if !keys.is_empty() {
                            let _: Result<(), _> = conn.del(keys).await;
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            });
        })
        .join();
    }
}
