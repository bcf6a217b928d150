//! `flashsale simulate` against a service of its own: the report adds up, nothing is oversold.

use flashsale::config::Config;
use flashsale::simulate::{self, SimulateArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_reports_a_sale_without_overselling() {
    let mut cfg = Config::defaults();
    if let Ok(base) = std::env::var("FLASHSALE_TEST_MYSQL_BASE") {
        cfg.mysql_url = format!("{base}/flashsale");
    }
    if let Ok(url) = std::env::var("FLASHSALE_TEST_REDIS_URL") {
        cfg.redis_url = url;
    }
    cfg.admin_password = Some("simulate-admin-password".into());
    cfg.argon2_memory_kib = 1024;
    let args = SimulateArgs {
        url: None,
        buyers: 600,
        units: 50,
        concurrency: 32,
        limit: 2,
        abandon: 0.2,
        pay: 0.7,
        json: true,
    };
    let r = simulate::run(cfg, args).await.expect("simulate runs");
    assert_eq!(r.oversold_units, 0);
    assert!(r.identity_ok, "{:?}", r.final_stock);
    assert_eq!(r.reconcile_ok, Some(true));
    assert!(r.units_sold > 0 && r.units_sold <= 50, "{r:?}");
    let adds: u64 = r
        .answers
        .iter()
        .filter(|(k, _)| k.as_str() == "200" || k.contains("out_of_stock") || k.contains("limit"))
        .map(|(_, v)| v)
        .sum();
    assert!(adds >= 600, "every buyer tried: {:?}", r.answers);
    assert!(
        r.answers.keys().all(|k| !k.starts_with('5')),
        "no 5xx: {:?}",
        r.answers
    );
    assert_eq!(r.final_stock["sold_total"].as_u64(), Some(r.units_sold));
    assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.p99 >= r.latency_ms.p50);
}
