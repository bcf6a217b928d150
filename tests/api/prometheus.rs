//! A real Prometheus (Debian's `prometheus`, installed by scripts/check-ops) scrapes a throwaway
//! service with the project's deploy/prometheus/prometheus.yml and alerts.yml: after a short
//! sale every dashboard query returns data, and MySQL made unreachable (the service reaches it
//! through a TCP proxy the test closes) fires FlashsaleWriteBackStalled within its `for`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use crate::helpers::*;
use crate::metrics::{alert_rules, dashboard_queries, repo_file};

/// A TCP proxy to MySQL that the test can cut (listener closed, open connections dropped) and
/// open again on the same port.
struct MysqlProxy {
    addr: SocketAddr,
    upstream: String,
    accept: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl MysqlProxy {
    async fn start(upstream: &str) -> MysqlProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = MysqlProxy {
            addr: listener.local_addr().unwrap(),
            upstream: upstream.to_string(),
            accept: Mutex::new(None),
            conns: Arc::default(),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, conns) = (self.upstream.clone(), self.conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// MySQL unreachable: new connections are refused, open ones are closed.
    fn cut(&self) {
        if let Some(t) = self.accept.lock().unwrap().take() {
            t.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// MySQL reachable again, on the same address.
    async fn reopen(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the proxy's port {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

/// A Prometheus server on a free loopback port with its own storage, stopped and removed on drop.
struct Prometheus {
    url: String,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with the project's prometheus.yml and alert rules, its scrape target
    /// pointed at `target` (host:port).
    fn start(target: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("fs-prometheus-{}", rand::random::<u64>()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut cfg: serde_yaml::Value =
            serde_yaml::from_str(&repo_file("deploy/prometheus/prometheus.yml")).unwrap();
        assert_eq!(cfg["rule_files"][0], "alerts.yml");
        cfg["scrape_configs"][0]["static_configs"][0]["targets"] =
            serde_yaml::to_value(vec![target]).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            serde_yaml::to_string(&cfg).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("alerts.yml"),
            repo_file("deploy/prometheus/alerts.yml"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "`prometheus` runs (Debian's package prometheus; scripts/check-ops installs it)",
            );
        Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/-/ready", self.url)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not get ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The result vector of an instant query.
    async fn query(&self, client: &reqwest::Client, q: &str) -> Vec<Value> {
        let r: Value = client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "success", "{q}: {r}");
        r["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The state (`pending`, `firing`) of an alert, if it is active.
    async fn alert_state(&self, client: &reqwest::Client, name: &str) -> Option<String> {
        let r: Value = client
            .get(format!("{}/api/v1/alerts", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap().to_string())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// host:port of a mysql:// URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap()
}

#[tokio::test]
async fn a_real_prometheus_sees_every_dashboard_query_and_fires_the_write_back_alert() {
    let upstream = authority(&test_config("db", "prefix").stores.mysql_url).to_string();
    let proxy = MysqlProxy::start(&upstream).await;
    let via = proxy.addr.to_string();
    let app = spawn_app_with(|c| {
        c.stores.mysql_url = c.stores.mysql_url.replacen(&upstream, &via, 1);
        c.outbox.worker = true;
        c.telemetry.metrics_interval = Duration::from_millis(500);
        c.stores.mysql_timeout = Duration::from_millis(500);
        c.sale.payment_ttl = Duration::from_secs(2);
    })
    .await;
    assert!(
        app.state.cfg.stores.mysql_url.contains(&via),
        "through the proxy"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Prometheus scrapes the operators' listener, as deploy/prometheus/prometheus.yml does.
    let target = app
        .ops_addr
        .as_deref()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let prom = Prometheus::start(&target);
    prom.ready(&client).await;

    // A short sale: cart, checkout, pay, a refusal, an expiry, the write-back.
    let sku = app.sale_product(5, Some(2)).await;
    let (a, b) = (app.customer_token(1), app.customer_token(2));
    app.cart_add(&a, sku, 2).await;
    let order = app.try_checkout(&a).await.body["order_id"]
        .as_u64()
        .unwrap();
    app.pay(&a, order).await;
    assert_eq!(app.try_cart_add(&a, sku, 1).await.code(), "limit_exceeded");
    let r = app.try_buy_now(&b, sku, 1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // Every dashboard query returns data once Prometheus has scraped twice or more (rate()
    // needs two samples).
    let queries = dashboard_queries(
        &serde_json::from_str(&repo_file("grafana/dashboards/flash-sale-live.json")).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut empty = Vec::new();
        for q in &queries {
            if prom.query(&client, q).await.is_empty() {
                empty.push(q.as_str());
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries without data after 40 s: {empty:#?}\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let up = prom.query(&client, r#"up{job="flashsale"}"#).await;
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    // Every alert's expression is valid for the server (a broken one fails the query) and
    // nothing pages on a healthy sale.
    for (alert, expr) in alert_rules() {
        let _ = prom.query(&client, &expr).await;
        assert_eq!(
            prom.alert_state(&client, &alert).await,
            None,
            "{alert} is active on a healthy sale"
        );
    }

    // A customer signs in (here: is checked once, which notes the account in Redis as a login
    // does), then MySQL becomes unreachable: the sale goes on in Redis, its events wait in the
    // outbox.
    let r = app.get("/v1/cart", Some(&app.customer_token(3))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    proxy.cut();
    let fault_at = Instant::now();
    let r = app
        .post(
            "/v1/orders/buy-now",
            Some(&app.customer_token(3)),
            json!({"sku": sku, "count": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let waiting = r.body["order_id"].as_u64().unwrap();
    let r = app
        .post_empty(
            &format!("/v1/orders/{waiting}/pay"),
            Some(&app.customer_token(3)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // The oldest event passes 10 s at fault_at + 10 s at the earliest; the rule then waits its
    // `for` (30 s). Prometheus scrapes and evaluates every 5 s, the gauge is refreshed every
    // 0.5 s: firing by fault_at + 40 s + 5 + 5 + 1, plus slack for a loaded machine (80 s in all).
    let state = loop {
        let state = prom.alert_state(&client, "FlashsaleWriteBackStalled").await;
        if state.as_deref() == Some("firing") || fault_at.elapsed() > Duration::from_secs(80) {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let took = fault_at.elapsed();
    assert_eq!(
        state.as_deref(),
        Some("firing"),
        "FlashsaleWriteBackStalled not firing {took:?} after MySQL became unreachable"
    );
    assert!(
        took >= Duration::from_secs(40),
        "fired after {took:?}, before 10 s of age and its 30 s `for`"
    );
    println!("FlashsaleWriteBackStalled fired {took:.1?} after MySQL became unreachable");
    let age = prom
        .query(&client, "max(flashsale_outbox_oldest_age_seconds)")
        .await;
    let age: f64 = age[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(age > 10.0, "oldest event {age} s");

    // Nothing was lost: MySQL back, the waiting events reach it.
    proxy.reopen().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE id = ?")
            .bind(waiting)
            .fetch_optional(&app.state.db)
            .await
            .ok()
            .flatten();
        if status.as_deref() == Some("paid") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "order {waiting} is {status:?} in MySQL 20 s after it came back"
        );
        let _ = flashsale::worker::writer::Writer::new(app.state.clone())
            .run_once(&app.state.db, flashsale::worker::writer::Fault::None)
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
