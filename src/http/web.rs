//! The demo storefront (web/): three static files compiled into the binary, so the page ships
//! with every build and image and cannot be served from a wrong directory. They are not API
//! routes (not in the OpenAPI document); unknown paths still get the JSON 404.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::app::AppState;

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| file("text/html; charset=utf-8", INDEX)))
        .route(
            "/index.html",
            get(|| file("text/html; charset=utf-8", INDEX)),
        )
        .route(
            "/app.js",
            get(|| file("text/javascript; charset=utf-8", APP_JS)),
        )
        .route("/style.css", get(|| file("text/css; charset=utf-8", STYLE)))
}

async fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small files that change with the binary: revalidate, no stale page after a deploy.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
