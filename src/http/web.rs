//! The demo storefront (web/): three static files compiled into the binary, so the page ships
//! with every build and image and cannot be served from a wrong directory. They are not API
//! routes (not in the OpenAPI document); unknown paths still get the JSON 404.
//!
//! The page handles passwords and bearer tokens, so it calls only its own origin or the one
//! API origin fixed at deploy time (`FLASHSALE_STOREFRONT_API_ORIGIN`, written into the page's
//! `<meta name="flashsale-api">`; never taken from the page's URL), and every file is served
//! with a Content-Security-Policy that lets the browser connect nowhere else, no framing, no
//! inline or foreign script, no referrer and no content sniffing.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::app::AppState;
use crate::config::HttpConfig;

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");
/// The page's API origin, as web/index.html carries it before it is filled in.
const API_META: &str = r#"<meta name="flashsale-api" content="">"#;

/// What every storefront file is served with.
#[derive(Clone)]
struct Page {
    index: Arc<str>,
    csp: HeaderValue,
}

impl Page {
    fn new(cfg: &HttpConfig) -> Self {
        // Checked at start-up (`Config::validate`): scheme, host and port only.
        let origin = cfg.storefront_api_origin.trim();
        let index = INDEX.replacen(
            API_META,
            &format!(r#"<meta name="flashsale-api" content="{origin}">"#),
            1,
        );
        let connect = if origin.is_empty() {
            "'self'".to_string()
        } else {
            format!("'self' {origin}")
        };
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src {connect}; form-action 'none'; frame-ancestors 'none'; \
             base-uri 'none'; object-src 'none'"
        );
        Page {
            index: index.into(),
            csp: HeaderValue::from_str(&csp).unwrap_or_else(|_| {
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self'; \
                     connect-src 'self'; frame-ancestors 'none'",
                )
            }),
        }
    }
}

pub fn router(cfg: &HttpConfig) -> Router<AppState> {
    let page = Page::new(cfg);
    let index = {
        let page = page.clone();
        move || {
            let page = page.clone();
            async move { file(&page, "text/html; charset=utf-8", page.index.to_string()) }
        }
    };
    let asset = |content_type: &'static str, body: &'static str| {
        let page = page.clone();
        move || {
            let page = page.clone();
            async move { file(&page, content_type, body.to_string()) }
        }
    };
    Router::new()
        .route("/", get(index.clone()))
        .route("/index.html", get(index))
        .route(
            "/app.js",
            get(asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route("/style.css", get(asset("text/css; charset=utf-8", STYLE)))
}

fn file(page: &Page, content_type: &'static str, body: String) -> impl IntoResponse + use<> {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small files that change with the binary: revalidate, no stale page after a deploy.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CONTENT_SECURITY_POLICY, page.csp.clone()),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_origin_goes_into_the_page_and_its_policy() {
        assert!(INDEX.contains(API_META), "web/index.html has the meta tag");
        let mut cfg = crate::config::Config::defaults().http;
        let p = Page::new(&cfg);
        assert!(p.index.contains(API_META));
        assert!(p.csp.to_str().unwrap().contains("connect-src 'self';"));
        cfg.storefront_api_origin = "https://api.shop.example".into();
        let p = Page::new(&cfg);
        assert!(
            p.index
                .contains(r#"<meta name="flashsale-api" content="https://api.shop.example">"#)
        );
        assert!(
            p.csp
                .to_str()
                .unwrap()
                .contains("connect-src 'self' https://api.shop.example;")
        );
    }
}
