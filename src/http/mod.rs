//! The HTTP API: one module per resource, thin handlers, every failure in the error envelope.

pub mod cart;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod limits;
pub mod live;
pub mod openapi;
pub mod ops;
pub mod orders;
pub mod products;
pub mod responses;
pub mod users;
pub mod web;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use crate::config::HttpConfig;
use crate::error::AppError;

/// Every route, each registered with its OpenAPI operation (`utoipa_axum::routes!`): the router
/// and the document at `GET /openapi.json` come from these same registrations.
pub fn api() -> OpenApiRouter<AppState> {
    requests().merge(streams())
}

/// Routes that answer and are done.
fn requests() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(users::router())
        .merge(products::router())
        .merge(cart::router())
        .merge(orders::router())
        .merge(ops::router())
}

/// Routes that stay open (Server-Sent Events): the per-request limits apply to the request that
/// opens one (until its head is answered); open streams have their own caps
/// (`live_max_watchers`, `live_max_per_client`).
fn streams() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(live::router())
}

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let body_limit = state.cfg.http.body_limit;
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(state.cfg.http.max_in_flight));
    let cors = cors(&state.cfg.http);
    let (requests, mut doc) = requests().split_for_parts();
    let (streams, streams_doc) = streams().split_for_parts();
    doc.merge(streams_doc);
    openapi::publish(&doc);
    let routes = requests
        .merge(streams)
        .merge(web::router(&state.cfg.http))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::sale_rate_limit,
        ))
        .layer(middleware::from_fn_with_state(
            state.cfg.http.request_timeout,
            limits::deadline,
        ))
        .layer(middleware::from_fn_with_state(
            in_flight,
            limits::in_flight_cap,
        ))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(track_metrics))
        .layer(CatchPanicLayer::custom(|_| {
            AppError::internal("a handler panicked").into_response()
        }));
    // Outside every answer of ours (404, 405, 401, 408, 429, 503, a panic's 500), so a browser
    // can read them all, and so preflights are answered here, before routing.
    let routes = match cors {
        Some(cors) => routes.layer(cors),
        None => routes,
    };
    routes
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(RecordResponse),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
        ]))
        .with_state(state)
}

/// The span of one request, with OpenTelemetry's HTTP server attribute names: a server span
/// named `{method} {route}` (the route template, never the raw path) with the request id.
fn request_span(req: &Request) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let method = req.method().as_str();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let span = tracing::info_span!(
        "http",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        url.path = %req.uri().path(),
        request.id = %id,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(route) = route {
        span.record("http.route", route);
    }
    // The name is only for the trace (the logs have the fields): no formatting when off.
    if crate::telemetry::traces_on() {
        let name = match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        };
        span.record("otel.name", name);
    }
    span
}

/// Puts the answer's status on the request span (5xx marks the span as an error), then logs
/// as before.
#[derive(Clone, Copy)]
struct RecordResponse;

impl<B> tower_http::trace::OnResponse<B> for RecordResponse {
    fn on_response(
        self,
        response: &axum::http::Response<B>,
        latency: std::time::Duration,
        span: &tracing::Span,
    ) {
        span.record("http.response.status_code", response.status().as_u16());
        if response.status().is_server_error() {
            span.record("otel.status_code", "error");
        }
        tower_http::trace::DefaultOnResponse::default().on_response(response, latency, span);
    }
}

/// CORS from `FLASHSALE_CORS_ORIGINS` (none when empty): exact origins or any (`*`), without
/// credentials (the API takes bearer tokens, never cookies).
fn cors(cfg: &HttpConfig) -> Option<CorsLayer> {
    let origins: Vec<&str> = cfg.cors_origins().collect();
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("idempotent-replayed"),
                HeaderName::from_static("x-request-id"),
            ])
            .allow_credentials(false)
            .max_age(cfg.cors_max_age),
    )
}

async fn not_found(method: Method, uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> AppError {
    AppError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

/// Counts requests and records latency by route template (bounded labels: never a raw path).
async fn track_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    let labels = [
        ("method", method),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("flashsale_http_requests_total", &labels).increment(1);
    metrics::histogram!("flashsale_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        metrics::counter!("flashsale_http_internal_errors_total").increment(1);
    }
    resp
}
