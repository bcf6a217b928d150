//! Operations routes, and what every response shares: the error envelope, request ids, limits.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

fn content_type(r: &Resp) -> &str {
    r.headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The body is exactly `{"error": {"code", "message"}}` with a non-empty code and message, and
/// the content type is JSON.
fn assert_envelope(r: &Resp, what: &str) {
    assert!(
        content_type(r).starts_with("application/json"),
        "{what}: content-type {:?}",
        content_type(r)
    );
    let top = r
        .body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a JSON object: {:?}", r.body));
    assert_eq!(
        top.keys().collect::<Vec<_>>(),
        vec!["error"],
        "{what}: {:?}",
        r.body
    );
    let err = r.body["error"].as_object().unwrap();
    let code = err["code"].as_str().expect("code is a string");
    assert!(
        !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "{what}: code {code:?}"
    );
    assert!(
        !err["message"]
            .as_str()
            .expect("message is a string")
            .is_empty(),
        "{what}: empty message"
    );
    for k in err.keys() {
        assert!(
            ["code", "message", "order_id"].contains(&k.as_str()),
            "{what}: unexpected field {k}"
        );
    }
}

#[tokio::test]
async fn healthz_and_readyz() {
    let app = spawn_app().await;
    let r = app.get("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "ok");

    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "ready");
    assert_eq!(r.body["redis"], "ok");
    assert_eq!(r.body["mysql"], "ok");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);
    let r = app.get("/v1/products/999999", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // On the operators' listener only (FLASHSALE_METRICS_LISTEN), not on the API's port.
    let r = app.get("/metrics", None).await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    let r = app.ops_get("/metrics").await;
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("flashsale_http_requests_total"),
        "no request counter in:\n{text}"
    );
    assert!(text.contains("# TYPE flashsale_http_requests_total counter"));
    // Labelled by route template, never by raw path.
    let healthz = text
        .lines()
        .find(|l| {
            l.starts_with("flashsale_http_requests_total{")
                && l.contains(r#"route="/healthz""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no /healthz 200 line in:\n{text}"));
    let n: f64 = healthz.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{healthz}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("flashsale_http_requests_total{")
                && l.contains(r#"route="/v1/products/{sku}""#)
                && l.contains(r#"status="404""#)),
        "no templated 404 line in:\n{text}"
    );
    assert!(
        !text.contains("/v1/products/999999"),
        "a raw path leaked into a label"
    );
    assert!(text.contains("flashsale_http_request_duration_seconds"));
}

#[tokio::test]
async fn unknown_routes_are_not_found() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::GET, "/v1"),
        (Method::GET, "/v1/widgets"),
        (Method::POST, "/v1/users/me/extra"),
        (Method::DELETE, "/v2/products"),
    ] {
        let r = app.request(method.clone(), path, None, None).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {:?}",
            r.body
        );
        assert_eq!(r.code(), "not_found", "{method} {path}");
        assert_envelope(&r, path);
    }
}

#[tokio::test]
async fn wrong_methods_are_method_not_allowed() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::DELETE, "/v1/users"),
        (Method::GET, "/v1/users"),
        (Method::GET, "/v1/auth/token"),
        (Method::PUT, "/v1/products/1"),
        (Method::POST, "/healthz"),
        (Method::PATCH, "/v1/cart"),
    ] {
        let r = app.request(method.clone(), path, None, None).await;
        assert_eq!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {:?}",
            r.body
        );
        assert_eq!(r.code(), "method_not_allowed", "{method} {path}");
        assert_envelope(&r, path);
    }
}

#[tokio::test]
async fn method_not_allowed_lists_the_allowed_methods() {
    // RFC 9110 §15.5.6: a 405 response MUST carry an Allow header.
    let app = spawn_app().await;
    let r = app.delete("/v1/users", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let allow = r
        .headers
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(allow.contains("POST"), "Allow: {allow:?}");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let app = spawn_app_with(|c| c.http.body_limit = 1024).await;
    let big = "x".repeat(4096);
    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": big, "password": "long-enough-password"}),
        )
        .await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "");
    assert_envelope(&r, "413 on /v1/users");

    // On an admin route too, and a body under the limit still works.
    let r = app
        .post(
            "/v1/products",
            Some(&app.admin_token),
            json!({"name": "y".repeat(4096), "price": 1}),
        )
        .await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "");
    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": "small", "password": "small-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn every_error_uses_the_envelope() {
    let app = spawn_app().await;
    let sku = app.sale_product(1, None).await;
    let customer = app.customer_token(12345);
    app.register("taken").await;

    let mut cases: Vec<(&str, Resp, StatusCode, &str)> = Vec::new();
    cases.push((
        "invalid_json",
        app.post_raw("/v1/users", None, "application/json", "{oops")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    ));
    cases.push((
        "invalid_request",
        app.post("/v1/users", None, json!({"username": "x", "password": "y"}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    ));
    cases.push((
        "bad path",
        app.get("/v1/products/abc", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    ));
    cases.push((
        "bad query",
        app.get("/v1/products?limit=0", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    ));
    cases.push((
        "unauthenticated",
        app.get("/v1/users/me", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    ));
    cases.push((
        "forbidden",
        app.post("/v1/warehouses", Some(&customer), json!({"name": "nope"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    ));
    cases.push((
        "not_found",
        app.get("/v1/products/999999", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    ));
    cases.push((
        "already_exists",
        app.post(
            "/v1/users",
            None,
            json!({"username": "taken", "password": "taken-password"}),
        )
        .await,
        StatusCode::CONFLICT,
        "already_exists",
    ));
    cases.push((
        "out_of_stock",
        app.try_cart_add(&customer, sku, 2).await,
        StatusCode::CONFLICT,
        "out_of_stock",
    ));
    cases.push((
        "cart_empty",
        app.try_checkout(&customer).await,
        StatusCode::CONFLICT,
        "cart_empty",
    ));
    cases.push((
        "method_not_allowed",
        app.delete("/v1/users", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    ));
    cases.push((
        "no route",
        app.get("/nowhere", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    ));
    for (what, r, status, code) in &cases {
        assert_eq!(r.status, *status, "{what}: {:?}", r.body);
        assert_eq!(r.code(), *code, "{what}");
        assert_envelope(r, what);
    }
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for (method, path) in [
        (Method::GET, "/healthz"),
        (Method::GET, "/healthz"),
        (Method::GET, "/v1/products"),
        (Method::GET, "/nope"),
        (Method::DELETE, "/v1/users"),
        (Method::GET, "/v1/users/me"),
    ] {
        let r = app.request(method.clone(), path, None, None).await;
        let id = r
            .headers
            .get("x-request-id")
            .unwrap_or_else(|| panic!("{method} {path}: no x-request-id ({})", r.status))
            .to_str()
            .unwrap()
            .to_string();
        assert!(!id.is_empty(), "{method} {path}");
        ids.push(id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "request ids repeat: {ids:?}");

    // A caller's own id is kept.
    let resp = app
        .client
        .get(format!("{}/healthz", app.addr))
        .header("x-request-id", "my-trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("my-trace-42")
    );
}
