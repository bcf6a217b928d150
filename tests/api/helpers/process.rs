//! The service as a child process and a Redis server of the test's own: what the tests that kill
//! or restart one of them start, each on a free port with its own files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashsale::app::AppState;
use flashsale::config::Config;
use reqwest::StatusCode;

use super::spawn::{TestApp, test_config, test_names};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The service binary, run with `cfg` as environment (none of the caller's FLASHSALE_* or
/// OTEL_*).
pub struct Service {
    pub child: Child,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Service {
    pub fn env_of(cfg: &Config, port: u16) -> Vec<(String, String)> {
        let d = |d: Duration| format!("{}ms", d.as_millis());
        // One Redis, or the cluster's seed nodes (the two are exclusive).
        let redis = if cfg.stores.redis_cluster_nodes.is_empty() {
            ("FLASHSALE_REDIS_URL", cfg.stores.redis_url.clone())
        } else {
            (
                "FLASHSALE_REDIS_CLUSTER_NODES",
                cfg.stores.redis_cluster_nodes.join(","),
            )
        };
        [
            ("FLASHSALE_MYSQL_URL", cfg.stores.mysql_url.clone()),
            redis,
            ("FLASHSALE_REDIS_PREFIX", cfg.stores.redis_prefix.clone()),
            ("FLASHSALE_LISTEN", format!("127.0.0.1:{port}")),
            // A free port of its own: several services run at once.
            ("FLASHSALE_METRICS_LISTEN", "127.0.0.1:0".into()),
            ("FLASHSALE_JWT_SECRET", cfg.auth.jwt_secret.clone().unwrap()),
            (
                "FLASHSALE_ADMIN_PASSWORD",
                cfg.auth.admin_password.clone().unwrap(),
            ),
            (
                "FLASHSALE_ARGON2_MEMORY_KIB",
                cfg.auth.argon2_memory_kib.to_string(),
            ),
            ("FLASHSALE_CART_HOLD_TTL", d(cfg.sale.cart_hold_ttl)),
            ("FLASHSALE_PAYMENT_TTL", d(cfg.sale.payment_ttl)),
            ("FLASHSALE_SWEEP_INTERVAL", d(cfg.sweeper.sweep_interval)),
            ("FLASHSALE_CLAIM_IDLE", d(cfg.outbox.claim_idle)),
            (
                "FLASHSALE_METRICS_INTERVAL",
                d(cfg.telemetry.metrics_interval),
            ),
            ("FLASHSALE_REDIS_TIMEOUT", d(cfg.stores.redis_timeout)),
            ("FLASHSALE_WORKER", cfg.outbox.worker.to_string()),
            ("FLASHSALE_RATE_LIMITS", cfg.limits.rate_limits.to_string()),
            (
                "FLASHSALE_MAX_CONNECTIONS_PER_CLIENT",
                cfg.http.max_connections_per_client.to_string(),
            ),
            ("RUST_LOG", "debug,sqlx=info,hyper=info,h2=info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub async fn start(env: Vec<(String, String)>, log: PathBuf, port: u16) -> Service {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
        cmd.arg("serve");
        for (k, _) in
            std::env::vars().filter(|(k, _)| k.starts_with("FLASHSALE_") || k.starts_with("OTEL_"))
        {
            cmd.env_remove(k);
        }
        let child = cmd
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("the flashsale binary starts");
        let svc = Service { child, env, log };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .map(|r| r.status() == StatusCode::OK)
                .unwrap_or(false);
            if ready {
                return svc;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not get ready: {}",
                std::fs::read_to_string(&svc.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on a fresh database and prefix; returns it, a handle for checks and its
/// port.
pub async fn start_service(tweak: impl FnOnce(&mut Config)) -> (Service, TestApp, u16) {
    start_service_env(tweak, &[]).await
}

/// [`start_service`] with `extra` environment variables (`OTEL_*`, ...).
pub async fn start_service_env(
    tweak: impl FnOnce(&mut Config),
    extra: &[(&str, String)],
) -> (Service, TestApp, u16) {
    let (db_name, prefix) = test_names();
    let mut cfg = test_config(&db_name, &prefix);
    cfg.outbox.worker = true;
    tweak(&mut cfg);
    let port = free_port();
    let log = std::env::temp_dir().join(format!("{prefix}.log"));
    let mut env = Service::env_of(&cfg, port);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let svc = Service::start(env, log, port).await;
    let state = AppState::connect(cfg).await.unwrap();
    let app = TestApp::attach(format!("http://127.0.0.1:{port}"), state, db_name, prefix).await;
    (svc, app, port)
}

/// Waits until `check` holds (polling), or panics with `what`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis server of the test's own, with an append-only file fsynced on every write, as a
/// production Redis would run, so that a restart keeps what was acknowledged.
pub struct OwnRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl OwnRedis {
    pub async fn start(port: u16, dir: &Path) -> OwnRedis {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let r = OwnRedis {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let client = redis::Client::open(r.url()).unwrap();
        eventually("redis-server up", Duration::from_secs(10), || async {
            match client.get_multiplexed_async_connection().await {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
