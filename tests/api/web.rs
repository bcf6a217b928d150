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
