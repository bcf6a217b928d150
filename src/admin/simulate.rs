//! `flashsale simulate`: a 12.12 sale from the buyers' side. N buyers rush one hot sku with S
//! units at concurrency C: each adds to the cart, most check out, most of those pay, the rest
//! abandon their cart or order and let it expire. Then a report: units sold, rejections by
//! code, requests per second, latency percentiles, and the stock identity checked through the
//! API (and with `reconcile` when the service is this process's own). Oversold units must be 0.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use flashsale::app::AppState;
use flashsale::auth::{self, Jwt};
use flashsale::config::{Config, DEV_ADMIN_PASSWORD};
use flashsale::service::reconcile;
use flashsale::startup::Application;
use flashsale::worker::writer::{Fault, Writer};

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// A running service to load; without it, simulate starts one in this process on a fresh
    /// database and Redis prefix (dropped afterwards) with short hold and payment windows.
    #[arg(long)]
    pub url: Option<String>,
    /// Buyers.
    #[arg(long, default_value_t = 2_000)]
    pub buyers: u64,
    /// Units of the hot sku.
    #[arg(long, default_value_t = 100)]
    pub units: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Per-customer limit of the sale (0: none).
    #[arg(long, default_value_t = 2)]
    pub limit: u64,
    /// Share of buyers with a cart line who walk away (the hold expires).
    #[arg(long, default_value_t = 0.15)]
    pub abandon: f64,
    /// Share of orders that get paid; the others expire.
    #[arg(long, default_value_t = 0.8)]
    pub pay: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub buyers: u64,
    pub units: u64,
    pub concurrency: usize,
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub latency_ms: Percentiles,
    /// Answers by status and code: "200", "409 out_of_stock", ...
    pub answers: BTreeMap<String, u64>,
    pub orders_paid: u64,
    pub units_sold: u64,
    pub oversold_units: u64,
    /// on_hand = available + held + reserved + sold, from the sales report, after expiry.
    pub identity_ok: bool,
    pub final_stock: Value,
    /// `reconcile` over every sku (only when simulate ran the service itself).
    pub reconcile_ok: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    latencies: std::sync::Mutex<Vec<f64>>,
    answers: std::sync::Mutex<BTreeMap<String, u64>>,
    requests: AtomicU64,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let started = Instant::now();
        let resp = req.send().await.with_context(|| path.to_string())?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latencies.lock().unwrap().push(ms);
        let key = match body["error"]["code"].as_str() {
            Some(code) => format!("{status} {code}"),
            None => status.to_string(),
        };
        *self.answers.lock().unwrap().entry(key).or_default() += 1;
        Ok((status, body))
    }
}

/// Runs the sale and prints its report (JSON with `--json`); exit 1 when a unit was oversold or
/// the stock does not add up.
pub async fn run(cfg: Config, args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let report = simulate(cfg, args).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    if report.oversold_units > 0 || !report.identity_ok || report.reconcile_ok == Some(false) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn simulate(mut cfg: Config, args: SimulateArgs) -> anyhow::Result<Report> {
    // The service: the one named, or our own on a fresh database and prefix.
    let own = args.url.is_none();
    let mut shutdown = None;
    let mut state = None;
    let base = match &args.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let tag: u32 = rand::random();
            let (server, _) = cfg
                .stores
                .mysql_url
                .rsplit_once('/')
                .context("FLASHSALE_MYSQL_URL has no database")?;
            cfg.stores.mysql_url = format!("{server}/flashsale_simulate_{tag:08x}");
            cfg.stores.redis_prefix = format!("sim{tag:08x}");
            cfg.http.listen = "127.0.0.1:0".parse()?;
            cfg.telemetry.metrics_listen = "127.0.0.1:0".parse()?;
            cfg.sale.cart_hold_ttl = Duration::from_secs(3);
            cfg.sale.payment_ttl = Duration::from_secs(3);
            cfg.sweeper.sweep_interval = Duration::from_millis(250);
            // Every simulated buyer comes from this one address.
            cfg.limits.rate_limits = false;
            cfg.http.max_connections_per_client = 0;
            if cfg.auth.jwt_secret.is_none() {
                cfg.auth.jwt_secret = Some(auth::generate_secret());
            }
            let app = Application::build(cfg.clone()).await?;
            let port = app.port();
            state = Some(app.state());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(app.run_until(async {
                let _ = rx.await;
            }));
            shutdown = Some(tx);
            format!("http://127.0.0.1:{port}")
        }
    };
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency.max(1))
            .timeout(Duration::from_secs(30))
            .build()?,
        base,
        latencies: Default::default(),
        answers: Default::default(),
        requests: AtomicU64::new(0),
    });

    // The sale: one hot sku with `units`, its window open now.
    let admin_pw = cfg
        .auth
        .admin_password
        .clone()
        .unwrap_or_else(|| DEV_ADMIN_PASSWORD.into());
    let (s, tok) = client
        .call(
            reqwest::Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({"username": cfg.auth.admin_username, "password": admin_pw})),
        )
        .await?;
    if s != 200 {
        bail!("admin login failed ({s}): {tok}");
    }
    let admin = tok["access_token"].as_str().unwrap_or_default().to_string();
    let (_, p) = client
        .call(
            reqwest::Method::POST,
            "/v1/products",
            Some(&admin),
            Some(json!({"name": "12.12 hot deal", "price": 99_900})),
        )
        .await?;
    let sku = p["sku"].as_u64().context("creating the product")?;
    let (_, w) = client
        .call(
            reqwest::Method::POST,
            "/v1/warehouses",
            Some(&admin),
            Some(json!({"name": format!("sim-{sku}-{}", rand::random::<u32>())})),
        )
        .await?;
    let wid = w["warehouse_id"].as_u64().context("creating a warehouse")?;
    client
        .call(
            reqwest::Method::POST,
            &format!("/v1/products/{sku}/stock"),
            Some(&admin),
            Some(json!({"warehouse_id": wid, "delta": args.units})),
        )
        .await?;
    let now = chrono::Utc::now();
    client
        .call(
            reqwest::Method::PUT,
            &format!("/v1/products/{sku}/sale"),
            Some(&admin),
            Some(json!({"sale_price": 49_900, "starts_at": now.to_rfc3339(), "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
                        "per_customer_limit": if args.limit == 0 { Value::Null } else { json!(args.limit) }})),
        )
        .await?;
    // Buyers' tokens: minted with the service's secret (logins would measure argon2, not the
    // sale), their accounts created in the service's database (tokens are checked against them).
    let secret = cfg
        .auth
        .jwt_secret
        .clone()
        .context("simulate against --url needs FLASHSALE_JWT_SECRET (the service's)")?;
    let jwt = Jwt::new(secret.as_bytes(), Duration::from_secs(3600));
    let first_buyer = 1_000_000_000 + u64::from(rand::random::<u32>());
    let db = match &state {
        Some(s) => s.db.clone(),
        None => flashsale::store::mysql::pool(&cfg.stores)?,
    };
    let tokens = crate::admin::mint_tokens::load_tokens(
        &db,
        &jwt,
        first_buyer..first_buyer + args.buyers,
        cfg.auth.argon2_memory_kib,
    )
    .await
    .context("creating the buyers' accounts (simulate against --url needs FLASHSALE_MYSQL_URL, the service's database)")?;

    let bar = indicatif::ProgressBar::new(args.buyers);
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} buyers {bar:40} {pos}/{len} {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let paid = Arc::new(AtomicU64::new(0));
    let paid_units = Arc::new(AtomicU64::new(0));
    // Only the buyers' requests count: forget the setup's.
    client.latencies.lock().unwrap().clear();
    client.answers.lock().unwrap().clear();
    client.requests.store(0, Ordering::Relaxed);
    let started = Instant::now();
    futures::stream::iter(tokens.into_iter().enumerate())
        .map(|(i, t)| {
            let (client, bar, paid, paid_units) = (
                client.clone(),
                bar.clone(),
                paid.clone(),
                paid_units.clone(),
            );
            let limit = args.limit.max(1);
            let (abandon, pay) = (args.abandon, args.pay);
            async move {
                let r = buyer(&client, &t, sku, 1 + (i as u64 % limit), abandon, pay).await;
                if let Ok(Some(units)) = r {
                    paid.fetch_add(1, Ordering::Relaxed);
                    paid_units.fetch_add(units, Ordering::Relaxed);
                }
                bar.inc(1);
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<()>>()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_with_message("done");
    let requests = client.requests.load(Ordering::Relaxed);
    let latency_ms = Percentiles::of(std::mem::take(&mut *client.latencies.lock().unwrap()));
    let answers = std::mem::take(&mut *client.answers.lock().unwrap());

    // Let abandoned carts and unpaid orders expire, then check the identity through the API.
    let window = if own {
        Duration::from_secs(4)
    } else {
        Duration::ZERO
    };
    tokio::time::sleep(window).await;
    let (_, report) = client
        .call(
            reqwest::Method::GET,
            &format!("/v1/products/{sku}/sales-report"),
            Some(&admin),
            None,
        )
        .await?;
    let n = |f: &str| report[f].as_i64().unwrap_or(0);
    let identity_ok = n("on_hand") == n("available") + n("held") + n("reserved") + n("sold")
        && n("available") >= 0;
    let units_sold = paid_units.load(Ordering::Relaxed);
    let reconcile_ok = match &state {
        Some(st) => {
            Writer::new(st.clone())
                .run_once(&st.db, Fault::None)
                .await?;
            Some(reconcile::check(st).await?.iter().all(|c| c.ok()))
        }
        None => None,
    };
    let out = Report {
        buyers: args.buyers,
        units: args.units,
        concurrency: args.concurrency,
        requests,
        seconds,
        requests_per_second: requests as f64 / seconds,
        latency_ms,
        answers,
        orders_paid: paid.load(Ordering::Relaxed),
        units_sold,
        oversold_units: units_sold.saturating_sub(args.units)
            + u64::try_from(-n("available").min(0)).unwrap_or(0),
        identity_ok,
        final_stock: report,
        reconcile_ok,
    };
    if let (Some(tx), Some(st)) = (shutdown, state) {
        let _ = tx.send(());
        cleanup(&st).await;
    }
    Ok(out)
}

/// One buyer: add to cart; then abandon, or check out and pay (or let the order expire).
/// Returns the units paid for.
async fn buyer(
    c: &Client,
    token: &str,
    sku: u64,
    count: u64,
    abandon: f64,
    pay: f64,
) -> anyhow::Result<Option<u64>> {
    let (s, _) = c
        .call(
            reqwest::Method::POST,
            "/v1/cart/items",
            Some(token),
            Some(json!({"sku": sku, "count": count})),
        )
        .await?;
    if s != 200 || rand::random::<f64>() < abandon {
        return Ok(None);
    }
    let (s, order) = c
        .call(reqwest::Method::POST, "/v1/orders", Some(token), None)
        .await?;
    if s != 201 || rand::random::<f64>() >= pay {
        return Ok(None);
    }
    let id = order["order_id"].as_u64().unwrap_or(0);
    let (s, _) = c
        .call(
            reqwest::Method::POST,
            &format!("/v1/orders/{id}/pay"),
            Some(token),
            None,
        )
        .await?;
    Ok((s == 200).then_some(count))
}

/// Drops the simulation's own database and Redis keys (over a connection of its own: a sweep of
/// every key is this tool's business, not the service's).
async fn cleanup(state: &AppState) {
    let db: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&state.db)
        .await
        .ok()
        .flatten();
    if let Some(db) = db.filter(|d| d.starts_with("flashsale_simulate_")) {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{db}`"
        )))
        .execute(&state.db)
        .await;
    }
    state.redis.delete_all_keys().await;
}

/// The report as a person reads it.
fn print(r: &Report) {
    println!(
        "flash sale simulation: {} buyers, {} units, concurrency {}",
        r.buyers, r.units, r.concurrency
    );
    println!(
        "  requests           {} in {:.2} s = {:.0} req/s",
        r.requests, r.seconds, r.requests_per_second
    );
    println!(
        "  latency (ms)       p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        r.latency_ms.p50, r.latency_ms.p95, r.latency_ms.p99, r.latency_ms.max
    );
    println!("  answers");
    for (k, v) in &r.answers {
        println!("    {k:<28} {v}");
    }
    println!("  orders paid        {}", r.orders_paid);
    println!("  units sold         {} of {}", r.units_sold, r.units);
    println!("  final stock        {}", r.final_stock);
    println!(
        "  stock identity     {}",
        if r.identity_ok { "ok" } else { "BROKEN" }
    );
    if let Some(ok) = r.reconcile_ok {
        println!(
            "  reconcile          {}",
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    println!("  oversold units     {}", r.oversold_units);
}
