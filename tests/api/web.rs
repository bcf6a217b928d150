//! The demo storefront is served at `/` without disturbing the API's JSON 404s.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn the_storefront_is_served_and_unknown_paths_stay_json_404s() {
    let app = spawn_app().await;
    for (path, ct, needle) in [
        ("/", "text/html", "data-testid=\"checkout\""),
        ("/index.html", "text/html", "<script src=\"app.js\">"),
        ("/app.js", "text/javascript", "/v1/sales/live"),
        ("/style.css", "text/css", ".card"),
    ] {
        let r = app
            .client
            .get(format!("{}{path}", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let got = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(got.starts_with(ct), "{path}: {got}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    for path in ["/v1/nope", "/nope.js", "/v1/products/1/stock/nope"] {
        let r = app.get(path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.code(), "not_found", "{path}");
    }
}

/// The security headers of a page that handles passwords, on every storefront file.
fn assert_page_headers(h: &reqwest::header::HeaderMap, connect_src: &str, path: &str) {
    let get = |name: &str| {
        h.get(name)
            .unwrap_or_else(|| panic!("{path}: no {name}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let csp = get("content-security-policy");
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    for want in [
        "script-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
        connect_src,
    ] {
        assert!(
            directives.contains(&want),
            "{path}: {want:?} not in {csp:?}"
        );
    }
    assert!(
        directives.iter().any(|d| d.starts_with("default-src")),
        "{path}: {csp}"
    );
    assert_eq!(get("referrer-policy"), "no-referrer", "{path}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{path}");
    assert_eq!(get("x-frame-options"), "DENY", "{path}");
}

#[tokio::test]
async fn the_storefront_calls_only_its_own_origin_and_says_so_in_its_headers() {
    let app = spawn_app().await;
    for path in ["/", "/index.html", "/app.js", "/style.css"] {
        let r = app
            .client
            .get(format!("{}{path}", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_page_headers(r.headers(), "connect-src 'self'", path);
        let body = r.text().await.unwrap();
        if path == "/" {
            assert!(body.contains(r#"<meta name="flashsale-api" content="">"#));
        }
        if path == "/app.js" {
            // The API origin never comes from the page's own address.
            assert!(!body.contains("location.search"), "app.js reads its URL");
            assert!(!body.contains("URLSearchParams"), "app.js reads its URL");
        }
    }
}

#[tokio::test]
async fn a_deployed_api_origin_is_the_only_other_one_the_page_may_call() {
    let app =
        spawn_app_with(|c| c.http.storefront_api_origin = "https://api.shop.example".into()).await;
    let r = app
        .client
        .get(format!("{}/", app.addr))
        .send()
        .await
        .unwrap();
    assert_page_headers(
        r.headers(),
        "connect-src 'self' https://api.shop.example",
        "/",
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains(r#"<meta name="flashsale-api" content="https://api.shop.example">"#),
        "{body}"
    );
    // An origin that is not one cannot be configured (it would go into the page).
    let mut cfg = flashsale::config::Config::defaults();
    cfg.http.storefront_api_origin =
        r#"https://x.example"><script src="//evil.example/x.js">"#.into();
    assert!(cfg.validate().is_err());
}
