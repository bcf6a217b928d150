//! CORS from `FLASHSALE_CORS_ORIGINS`: preflights answered before routing, allowed origins on
//! every answer (errors included), nothing for other origins, nothing at all when unset.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

const SHOP: &str = "https://shop.example";

async fn shop_app() -> TestApp {
    spawn_app_with(|c| c.http.cors_origins = vec![SHOP.into()]).await
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The comma-separated values of `name`, lower-cased.
fn list(h: &HeaderMap, name: &str) -> Vec<String> {
    header(h, name)
        .unwrap_or("")
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

fn no_cors_headers(h: &HeaderMap) {
    let cors: Vec<_> = h
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "unexpected CORS headers: {h:?}");
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, format!("{}/v1/cart/items", app.addr))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

async fn get(app: &TestApp, path: &str, origin: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.addr))
        .header("Origin", origin)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn preflight_is_answered_for_an_allowed_origin() {
    let app = shop_app().await;
    let r = preflight(&app, SHOP).await;
    assert!(r.status().is_success(), "preflight: {}", r.status());
    let h = r.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(SHOP));
    let allowed_headers = list(h, "access-control-allow-headers");
    for wanted in ["authorization", "content-type", "idempotency-key"] {
        assert!(
            allowed_headers.iter().any(|v| v == wanted),
            "{wanted}: {h:?}"
        );
    }
    let methods = list(h, "access-control-allow-methods");
    for wanted in ["get", "post", "put", "patch", "delete"] {
        assert!(methods.iter().any(|v| v == wanted), "{wanted}: {h:?}");
    }
    assert_eq!(header(h, "access-control-max-age"), Some("3600"));
    assert!(h.get("access-control-allow-credentials").is_none(), "{h:?}");
}

#[tokio::test]
async fn allowed_origin_on_answers_and_errors() {
    let app = shop_app().await;

    let r = get(&app, "/v1/products", SHOP).await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(SHOP));
    let exposed = list(h, "access-control-expose-headers");
    for wanted in ["retry-after", "idempotent-replayed", "x-request-id"] {
        assert!(exposed.iter().any(|v| v == wanted), "{wanted}: {h:?}");
    }
    assert!(h.get("access-control-allow-credentials").is_none(), "{h:?}");

    // Errors too, or the browser hides them from the shop's code.
    let r = get(&app, "/v1/cart", SHOP).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some(SHOP)
    );

    let r = get(&app, "/v1/nowhere", SHOP).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some(SHOP)
    );
}

#[tokio::test]
async fn other_origins_get_nothing() {
    let app = shop_app().await;
    let evil = "https://evil.example";

    let r = preflight(&app, evil).await;
    assert!(
        r.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers()
    );

    let r = get(&app, "/v1/products", evil).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers()
    );
}

#[tokio::test]
async fn no_cors_by_default() {
    let app = spawn_app().await;
    let r = preflight(&app, SHOP).await;
    no_cors_headers(r.headers());
    // Without the CORS layer a preflight is just an OPTIONS request: 405 on a known route.
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = get(&app, "/v1/products", SHOP).await;
    assert_eq!(r.status(), StatusCode::OK);
    no_cors_headers(r.headers());
}

#[tokio::test]
async fn star_allows_any_origin() {
    let app = spawn_app_with(|c| c.http.cors_origins = vec!["*".into()]).await;
    for origin in [SHOP, "https://anyone.example", "http://localhost:3000"] {
        let r = preflight(&app, origin).await;
        assert!(r.status().is_success(), "preflight: {}", r.status());
        assert_eq!(
            header(r.headers(), "access-control-allow-origin"),
            Some("*")
        );
        assert!(
            r.headers()
                .get("access-control-allow-credentials")
                .is_none()
        );
        let r = get(&app, "/v1/products", origin).await;
        assert_eq!(
            header(r.headers(), "access-control-allow-origin"),
            Some("*")
        );
    }
}
