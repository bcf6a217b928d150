//! The metrics tell the sale's story: a short sale, then every metric the dashboard and the
//! catalogue in docs/OPERATIONS.md name is on `/metrics`; the ops files parse and fit together.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// Every `flashsale_*` name in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("flashsale_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The metric names `/metrics` exposes (series lines, not comments).
fn exposed(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

pub fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every query of the dashboard's panels (rows hold none).
pub fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

/// (alert name, expression) of every rule in deploy/prometheus/alerts.yml.
pub fn alert_rules() -> Vec<(String, String)> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("deploy/prometheus/alerts.yml")).unwrap();
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_string(),
                r["expr"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn a_short_sale_exposes_every_metric_the_dashboard_and_catalogue_name() {
    let app = spawn_app_with(|c| c.sale.payment_ttl = Duration::from_millis(300)).await;
    let sku = app.sale_product(3, Some(2)).await;
    let (a, b) = (app.customer_token(1), app.customer_token(2));
    app.cart_add(&a, sku, 2).await;
    assert_eq!(app.try_cart_add(&a, sku, 1).await.code(), "limit_exceeded");
    let order = app.try_checkout(&a).await.body["order_id"]
        .as_u64()
        .unwrap();
    app.pay(&a, order).await;
    assert_eq!(app.try_cart_add(&b, sku, 2).await.code(), "out_of_stock");
    let expiring = app.buy_now(&b, sku, 1).await.order_id;
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.sweep().await;
    assert_eq!(
        app.try_order(&b, expiring).await.body["cancel_reason"],
        "expired"
    );
    app.write_back().await;
    flashsale::worker::gauges::refresh(&app.state)
        .await
        .unwrap();

    let text = app.metrics_text().await;
    let have = exposed(&text);
    assert!(
        text.contains(&format!(
            "flashsale_stock_units{{sku=\"{sku}\",bucket=\"sold\"}}"
        )) || text.contains(&format!(
            "flashsale_stock_units{{bucket=\"sold\",sku=\"{sku}\"}}"
        )),
        "per-sku gauges of the open sale"
    );
    assert!(
        text.contains("route=\"/v1/orders/{order_id}/pay\""),
        "routes are templates"
    );

    let dashboard: Value =
        serde_json::from_str(&repo_file("grafana/dashboards/flash-sale-live.json")).unwrap();
    let named: HashSet<String> = dashboard_queries(&dashboard)
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();
    assert!(named.len() >= 10, "the dashboard names {named:?}");
    let missing: Vec<_> = named.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics lacks: {missing:?}"
    );
    // The alert rules too (a renamed metric would silence an alert without a sound).
    let alerts = alert_rules();
    assert!(alerts.len() >= 12, "{alerts:?}");
    for (alert, expr) in &alerts {
        let names = metric_names(expr);
        assert!(
            !names.is_empty() || expr.contains("up{"),
            "{alert} names no metric"
        );
        for n in names {
            // A histogram's quantile reads its _bucket series; the rest are exposed as named.
            assert!(
                have.contains(&n) || n == "flashsale_lua_errors_total",
                "alert {alert} reads {n}, which /metrics lacks"
            );
        }
    }

    let operations = repo_file("docs/OPERATIONS.md");
    let section = operations
        .split("## Metrics")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut catalogue = HashSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `flashsale_")) {
        let name = metric_names(row).remove(0);
        if row.contains("appears on the first") {
            continue;
        }
        let kind = row.split('|').nth(2).unwrap().trim();
        // A histogram is exposed as its _bucket, _sum and _count series.
        let series = if kind == "histogram" {
            format!("{name}_bucket")
        } else {
            name.clone()
        };
        catalogue.insert(series);
    }
    assert!(catalogue.len() >= 20, "{catalogue:?}");
    let missing: Vec<_> = catalogue.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "docs/OPERATIONS.md catalogues metrics /metrics lacks: {missing:?}"
    );
    // And the other way round: nothing is exported that the catalogue does not describe.
    let undocumented: Vec<_> = have
        .iter()
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .filter(|n| n.starts_with("flashsale_") && !section.contains(&format!("`{n}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in the catalogue of docs/OPERATIONS.md: {undocumented:?}"
    );
}

#[test]
fn the_ops_files_parse_and_fit_together() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("docker-compose.yml")).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    for s in ["mysql", "redis", "app", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "docker-compose.yml has no {s}");
    }
    for s in ["mysql", "redis", "app"] {
        assert!(
            compose["services"][s]["healthcheck"]["test"].is_sequence(),
            "{s} has a health check"
        );
    }
    assert_eq!(
        compose["services"]["app"]["depends_on"]["mysql"]["condition"],
        "service_healthy"
    );
    assert_eq!(
        compose["services"]["app"]["depends_on"]["redis"]["condition"],
        "service_healthy"
    );
    // Every file or folder the stack mounts exists in the repository.
    for s in services.values() {
        for v in s["volumes"].as_sequence().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if let Some(path) = src.strip_prefix("./") {
                let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
                assert!(
                    std::path::Path::new(&full).exists(),
                    "mounted {src} is missing"
                );
            }
        }
    }
    assert!(std::path::Path::new(&format!("{}/Dockerfile", env!("CARGO_MANIFEST_DIR"))).exists());

    let prom: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("deploy/prometheus/prometheus.yml")).unwrap();
    assert_eq!(
        prom["rule_files"][0], "alerts.yml",
        "prometheus.yml loads the alert rules"
    );
    // The compose file mounts the folder, so the rules file travels with prometheus.yml.
    let prom_volumes = compose["services"]["prometheus"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(
        prom_volumes
            .iter()
            .any(|v| v.as_str() == Some("./deploy/prometheus:/etc/prometheus:ro")),
        "{prom_volumes:?}"
    );
    let job = &prom["scrape_configs"][0];
    assert_eq!(job["metrics_path"], "/metrics");
    // The operators' listener (FLASHSALE_METRICS_LISTEN), not the API's port.
    assert_eq!(job["static_configs"][0]["targets"][0], "app:9464");
    let app_env = &compose["services"]["app"]["environment"];
    assert_eq!(app_env["FLASHSALE_METRICS_LISTEN"], "0.0.0.0:9464");
    let published = compose["services"]["app"]["ports"].as_sequence().unwrap();
    assert!(
        !published
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("9464"))),
        "the metrics port stays on the compose network: {published:?}"
    );

    let ds: serde_yaml::Value = serde_yaml::from_str(&repo_file(
        "grafana/provisioning/datasources/prometheus.yml",
    ))
    .unwrap();
    let uid = ds["datasources"][0]["uid"].as_str().unwrap().to_string();
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");
    let provider: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("grafana/provisioning/dashboards/flashsale.yml")).unwrap();
    assert_eq!(
        provider["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );

    let dashboard: Value =
        serde_json::from_str(&repo_file("grafana/dashboards/flash-sale-live.json")).unwrap();
    assert_eq!(dashboard["title"], "Flash sale live");
    // On top, the row an operator reads at a glance: stat panels with thresholds.
    let panels = dashboard["panels"].as_array().unwrap();
    assert_eq!(panels[0]["type"], "row");
    assert_eq!(panels[0]["title"], "Is the sale healthy");
    let glance: Vec<_> = panels[1..]
        .iter()
        .take_while(|p| p["type"] != "row")
        .collect();
    assert!(glance.len() >= 4, "{} stat panels on top", glance.len());
    for p in glance {
        assert_eq!(p["type"], "stat", "{}", p["title"]);
        assert_eq!(p["gridPos"]["y"], 1, "{}", p["title"]);
        let steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("{} has thresholds", p["title"]));
        assert!(steps.len() >= 2, "{} has thresholds", p["title"]);
    }
    let mut ids = HashSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"],
            uid.as_str(),
            "panel {} uses the provisioned data source",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            assert_eq!(
                e.matches('(').count(),
                e.matches(')').count(),
                "balanced: {e}"
            );
            assert_eq!(
                e.matches('{').count(),
                e.matches('}').count(),
                "balanced: {e}"
            );
        }
    }
}
