//! `spawn_app()` and friends: a real app on 127.0.0.1:0 against the real Redis and MySQL, with
//! its own database and Redis key prefix, dropped with the handle; and the raw HTTP requests the
//! typed calls (calls.rs) are made of.

use std::time::Duration;

use flashsale::app::AppState;
use flashsale::config::Config;
use flashsale::startup::Application;

use super::accounts::Accounts;
use super::cluster::{cluster_nodes, delete_keys};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub const ADMIN_PASSWORD: &str = "admin-test-password";

pub fn mysql_base() -> String {
    std::env::var("FLASHSALE_TEST_MYSQL_BASE")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// The tests' one Redis (single-Redis mode).
pub(super) fn redis_url() -> String {
    std::env::var("FLASHSALE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestApp {
    /// The (first) instance's address; the typed calls spread over [`TestApp::addrs`].
    pub addr: String,
    /// Every instance's address: one, or two on a Redis Cluster (the same stores), which the
    /// requests of [`TestApp::send`] take in turn.
    pub addrs: Vec<String>,
    next: std::sync::atomic::AtomicUsize,
    /// The operators' listener (`/metrics`), when the test runs the app in-process.
    pub ops_addr: Option<String>,
    pub client: reqwest::Client,
    pub state: AppState,
    pub admin_token: String,
    pub db_name: String,
    pub prefix: String,
    /// The maker of `customer_token`'s accounts, started on first use.
    accounts: std::sync::OnceLock<Accounts>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The other in-process instances' stop signals (cluster mode).
    others: Vec<tokio::sync::oneshot::Sender<()>>,
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
        // The app's own connections first: one that holds a transaction open (a write-back
        // waiting on Redis) would make DROP DATABASE wait for its metadata lock, and the app,
        // whose runtime thread is the one blocked in `TestApp`'s drop, could never end it.
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND ID <> CONNECTION_ID()",
        )
        .bind(db_name)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        for id in ids {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
                .execute(&mut conn)
                .await;
        }
        let sql = format!("DROP DATABASE IF EXISTS `{db_name}`");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await;
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// `FLASHSALE_TEST_LOG=<filter>` (e.g. `warn` or `flashsale=debug`): the in-process apps'
/// logs on stderr, past the test harness's capture (run one test at a time with it: the lines
/// of concurrent tests are not told apart). What a failed answer of an in-process app was
/// (a 500's cause is logged, never answered) is found there.
fn log_if_asked() {
    if let Ok(filter) = std::env::var("FLASHSALE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// A fresh test identity: its database name and Redis prefix.
pub fn test_names() -> (String, String) {
    let id: u64 = rand::rng().random();
    (format!("fs_test_{id:016x}"), format!("fst{id:016x}"))
}

/// The test defaults for a database and a prefix (on the Redis Cluster in cluster mode:
/// helpers/cluster.rs).
pub fn test_config(db_name: &str, prefix: &str) -> Config {
    let mut cfg = Config::defaults();
    cfg.stores.mysql_url = format!("{}/{db_name}", mysql_base());
    match cluster_nodes() {
        Some(nodes) => {
            cfg.stores.redis_cluster_nodes = nodes;
            cfg.stores.redis_url = String::new();
        }
        None => cfg.stores.redis_url = redis_url(),
    }
    cfg.stores.redis_prefix = prefix.to_string();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.telemetry.metrics_listen = "127.0.0.1:0".parse().unwrap();
    cfg.auth.jwt_secret = Some(format!("test-secret-{prefix}-0123456789abcdef"));
    cfg.auth.admin_password = Some(ADMIN_PASSWORD.into());
    cfg.auth.argon2_memory_kib = 1024;
    cfg.sweeper.sweep_interval = Duration::from_millis(100);
    cfg.stores.mysql_pool = 8;
    // Tests drive the write-back themselves (`write_back()`), so they can look in between.
    cfg.outbox.worker = false;
    // Every test comes from 127.0.0.1; the rate-limit tests turn the limits on (and the
    // connection tests the cap on one address's connections).
    cfg.limits.rate_limits = false;
    cfg.http.max_connections_per_client = 0;
    cfg
}

/// Starts the app with the test defaults, changed by `tweak`. On a Redis Cluster, two
/// instances on the same database and prefix (as a deployment behind a load balancer runs),
/// the requests taking them in turn; `state` and `ops_addr` are the first one's.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    log_if_asked();
    let (db_name, prefix) = test_names();
    let mut cfg = test_config(&db_name, &prefix);
    tweak(&mut cfg);
    let second = cluster_nodes().is_some().then(|| {
        let mut c = cfg.clone();
        c.http.listen = "127.0.0.1:0".parse().unwrap();
        c.telemetry.metrics_listen = "127.0.0.1:0".parse().unwrap();
        c
    });
    let app = Application::build(cfg).await.expect("the app builds");
    let addr = format!("http://127.0.0.1:{}", app.port());
    let ops_addr = format!("http://127.0.0.1:{}", app.metrics_port());
    let state = app.state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let mut addrs = vec![addr.clone()];
    let mut others = Vec::new();
    if let Some(cfg) = second {
        let app = Application::build(cfg)
            .await
            .expect("the second instance builds");
        addrs.push(format!("http://127.0.0.1:{}", app.port()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Its end is its own business: the test judges the first instance's.
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        others.push(tx);
    }
    let mut app = TestApp::signed_in(addr, state, db_name, prefix, Some((tx, server))).await;
    app.ops_addr = Some(ops_addr);
    app.addrs = addrs;
    app.others = others;
    app
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
            addrs: vec![addr.clone()],
            next: Default::default(),
            others: Vec::new(),
            addr,
            ops_addr: None,
            client,
            state,
            admin_token: String::new(),
            db_name,
            prefix,
            accounts: std::sync::OnceLock::new(),
            shutdown,
            server,
        };
        t.admin_token = t.login("admin", ADMIN_PASSWORD).await;
        t
    }

    /// The maker of `customer_token`'s accounts (helpers/accounts.rs), straight to the test's
    /// database (not through the proxy some tests put between the app and MySQL).
    pub(super) fn accounts(&self) -> &Accounts {
        self.accounts
            .get_or_init(|| Accounts::start(format!("{}/{}", mysql_base(), self.db_name)))
    }

    /// `path` on the next instance in turn (the only one, but on a Redis Cluster).
    pub fn url(&self, path: &str) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{path}", self.addrs[n % self.addrs.len()])
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
        self.send(method, path, token, body, &[]).await
    }

    /// A request with extra headers (an `Idempotency-Key`, an `Origin`, ...).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
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

    /// GET on the operators' listener (`/metrics`, `/readyz` with its reason).
    pub async fn ops_get(&self, path: &str) -> reqwest::Response {
        let ops = self.ops_addr.as_deref().expect("the app runs in-process");
        self.client
            .get(format!("{ops}{path}"))
            .send()
            .await
            .expect("the operators' listener answers")
    }

    /// The Prometheus text of `GET /metrics` (on the operators' listener).
    pub async fn metrics_text(&self) -> String {
        let r = self.ops_get("/metrics").await;
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
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
            .post(self.url(path))
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
}

/// Opens a raw connection to the app and sends the head of `method_path` plus the first `sent`
/// bytes of a JSON body of `len` bytes: a request still coming.
pub async fn partial_request(
    app: &TestApp,
    method_path: &str,
    token: Option<&str>,
    len: usize,
    sent: &[u8],
) -> TcpStream {
    let port = app.addr.rsplit(':').next().unwrap();
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method_path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    s
}

impl Drop for TestApp {
    /// Stops the app and drops the test's database and Redis keys, even when the test failed.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for tx in self.others.drain(..) {
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
                // Every master's share of the keys on a cluster.
                delete_keys(&redis_url(), &pattern).await;
            });
        })
        .join();
    }
}
