//! `flashsale simulate` against a service of its own: the report adds up, nothing is oversold.

use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_reports_a_sale_without_overselling() {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    for (k, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("FLASHSALE_") || k.starts_with("OTEL_"))
    {
        cmd.env_remove(k);
    }
    if let Ok(base) = std::env::var("FLASHSALE_TEST_MYSQL_BASE") {
        cmd.env("FLASHSALE_MYSQL_URL", format!("{base}/flashsale"));
    }
    if let Ok(url) = std::env::var("FLASHSALE_TEST_REDIS_URL") {
        cmd.env("FLASHSALE_REDIS_URL", url);
    }
    let out = cmd
        .env("FLASHSALE_ADMIN_PASSWORD", "simulate-admin-password")
        .env("FLASHSALE_ARGON2_MEMORY_KIB", "1024")
        .args(["simulate", "--buyers", "600", "--units", "50"])
        .args(["--concurrency", "32", "--limit", "2"])
        .args(["--abandon", "0.2", "--pay", "0.7", "--json"])
        .output()
        .await
        .expect("the flashsale binary runs");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "simulate printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{r}");
    let n = |f: &str| r[f].as_u64().unwrap_or_else(|| panic!("{f} in {r}"));
    assert_eq!(n("oversold_units"), 0);
    assert_eq!(r["identity_ok"], true, "{}", r["final_stock"]);
    assert_eq!(r["reconcile_ok"], true);
    let sold = n("units_sold");
    assert!(sold > 0 && sold <= 50, "{r}");
    let answers = r["answers"].as_object().unwrap();
    let adds: u64 = answers
        .iter()
        .filter(|(k, _)| k.as_str() == "200" || k.contains("out_of_stock") || k.contains("limit"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert!(adds >= 600, "every buyer tried: {answers:?}");
    assert!(
        answers.keys().all(|k| !k.starts_with('5')),
        "no 5xx: {answers:?}"
    );
    assert_eq!(r["final_stock"]["sold_total"].as_u64(), Some(sold));
    let p = |q: &str| r["latency_ms"][q].as_f64().unwrap();
    assert!(p("p50") > 0.0 && p("p99") >= p("p50"));
}
