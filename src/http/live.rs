//! Live stock over Server-Sent Events: one sku's available count, or every sale that has not
//! ended, pushed as it changes. The streams read only the process's live hub (`service::live`),
//! never Redis per watcher. The request that opens one meets the same limits as any other
//! (rate limits, deadline, in-flight cap: they end when the answer's head is sent, not when the
//! stream ends), and one client address holds at most `live_max_per_client` streams.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderName;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use rand::Rng;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use utoipa::{IntoResponses, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Path;
use super::limits::ClientIp;
use super::openapi::{E400_SKU, E404_SKU, ErrorEnvelope, Internal};
use super::responses::ProductResponse;
use crate::app::AppState;
use crate::domain::Sku;
use crate::error::AppResult;
use crate::service::catalog::{self, view};
use crate::service::live::{Batch, Hub, SalesList, WatchGuard};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(sku_stream))
        .routes(routes!(sales_stream))
}

const E503_LIVE: &str = "`unavailable`: Redis or MySQL is unreachable, or this instance holds \
     as many live streams as it is configured for (`FLASHSALE_LIVE_MAX_WATCHERS`). Retry after \
     the `Retry-After` seconds.";

const E429_LIVE: &str = "`rate_limited`: this client address already holds \
     `FLASHSALE_LIVE_MAX_PER_CLIENT` live streams (64), or opened more streams than its rate \
     limit allows. Retry after the `Retry-After` seconds, or show the plain catalog \
     (`GET /v1/products`).";

/// [`RateLimited`](super::openapi::RateLimited) of the live streams, which count open streams.
#[derive(IntoResponses)]
#[response(status = 429, description = E429_LIVE,
    headers(("Retry-After" = u32, description = "Seconds to wait.")))]
pub struct LiveRateLimited(pub ErrorEnvelope);

/// [`Unavailable`](super::openapi::Unavailable) of the live streams, also refused past their cap.
#[derive(IntoResponses)]
#[response(status = 503, description = E503_LIVE,
    headers(("Retry-After" = u32, description = "Seconds to wait: 1.")))]
pub struct LiveUnavailable(pub ErrorEnvelope);

/// The data of a `stock` event.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"sku": 1002, "available": 3})))]
pub struct StockEvent {
    pub sku: u32,
    pub available: i64,
}

/// The data of a `snapshot` event of the live sales stream.
#[derive(Serialize, ToSchema)]
pub struct SalesSnapshot {
    /// The server's clock when the snapshot was taken: count down against it, not the device's.
    pub server_time: chrono::DateTime<chrono::Utc>,
    /// Products whose sale has not ended (open or upcoming), soonest start first, at most 100.
    pub sales: Vec<ProductResponse>,
}

/// Live available count of one product
///
/// No auth. A Server-Sent Events stream (`text/event-stream`, e.g. the browser's `EventSource`).
/// The first event is the current count; then an event each time the count changes, at most one
/// per `FLASHSALE_LIVE_TICK` (250 ms by default: changes in between are coalesced into the last
/// count); a `: heartbeat` comment after `FLASHSALE_LIVE_HEARTBEAT` (15 s) of silence. Events:
/// `event: stock`, `id: <n>`, `data: {"sku": 1002, "available": 3}`. Ids only increase within
/// one connection; a reconnect (`EventSource` sends `Last-Event-ID` by itself) again starts with
/// the current count, which supersedes whatever was missed: stock is a level, not a log.
#[utoipa::path(
    get,
    path = "/v1/products/{sku}/stock/stream",
    tag = "Live stock",
    params(
        ("sku" = u32, Path, minimum = 1, example = 1002,
            description = "The product's sku (1..=4294967295)."),
    ),
    responses(
        (status = 200, description = "The stream: `stock` events with `StockEvent` data.",
            content_type = "text/event-stream", body = String,
            example = json!("event: stock\nid: 7\ndata: {\"sku\":1002,\"available\":3}\n\n")),
        (status = 400, description = E400_SKU, body = ErrorEnvelope),
        (status = 404, description = E404_SKU, body = ErrorEnvelope),
        LiveRateLimited,
        Internal,
        LiveUnavailable,
    )
)]
async fn sku_stream(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(raw): Path<u64>,
) -> AppResult<impl IntoResponse> {
    let sku = Sku::parse(raw)?;
    let hub = state.live.clone();
    let guard = hub.watch_sku(sku.get(), ip)?;
    let batches = hub.subscribe();
    let seq = hub.seq();
    let available = hub
        .first_count(sku, catalog::available(&state, sku))
        .await?;
    let first = stock_event(seq, sku.get(), available).retry(reconnect_delay());
    Ok(respond(
        &state,
        Watch {
            hub: hub.clone(),
            scope: Scope::Sku(sku.get()),
            batches,
            sales: None,
            closed: hub.closed(),
            queue: VecDeque::from([first]),
            _guard: guard,
        },
    ))
}

/// Live sales: every sale that has not ended, with live counts
///
/// No auth. A Server-Sent Events stream for a sale's front page. The first event is a
/// `snapshot`: `{"server_time", "sales": [product, ...]}` with each product that has a sale
/// window not yet ended (open or upcoming, soonest start first, at most 100), its sale and its
/// current `available`. Then `stock` events (`{"sku", "available"}`) as counts change, coalesced
/// as on the per-product stream, and a new `snapshot` when the list of sales changes (checked
/// every `FLASHSALE_LIVE_RESYNC`, 5 s). Heartbeats and reconnects as on the per-product stream:
/// a reconnect starts with a fresh snapshot.
#[utoipa::path(
    get,
    path = "/v1/sales/live",
    tag = "Live stock",
    responses(
        (status = 200, description = "The stream: a `snapshot` event (`SalesSnapshot` data), \
            then `stock` events (`StockEvent` data).",
            content_type = "text/event-stream", body = String,
            example = json!("event: snapshot\nid: 7\ndata: {\"server_time\":\"2026-12-12T11:59:30Z\",\"sales\":[]}\n\n")),
        LiveRateLimited,
        Internal,
        LiveUnavailable,
    )
)]
async fn sales_stream(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
) -> AppResult<impl IntoResponse> {
    let hub = state.live.clone();
    let guard = hub.watch_sales(ip)?;
    let batches = hub.subscribe();
    let mut sales = hub.sales_changes();
    let seq = hub.seq();
    let list = hub
        .sales_list(&state.db, |sku| catalog::available(&state, sku))
        .await?;
    sales.mark_unchanged();
    let first = snapshot_event(&hub, seq, &list).retry(reconnect_delay());
    Ok(respond(
        &state,
        Watch {
            hub: hub.clone(),
            scope: Scope::Sales(list.skus()),
            batches,
            sales: Some(sales),
            closed: hub.closed(),
            queue: VecDeque::from([first]),
            _guard: guard,
        },
    ))
}

/// Spreads reconnects after a restart over a few seconds.
fn reconnect_delay() -> Duration {
    Duration::from_millis(rand::rng().random_range(1_000..4_000))
}

fn respond(state: &AppState, watch: Watch) -> impl IntoResponse + use<> {
    let stream = futures::stream::unfold(watch, Watch::next);
    (
        // Proxies (nginx) must not buffer the stream.
        [(HeaderName::from_static("x-accel-buffering"), "no")],
        sse(stream, state.cfg.live.live_heartbeat),
    )
}

fn sse<S>(stream: S, heartbeat: Duration) -> impl IntoResponse + use<S>
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
}

fn stock_event(seq: u64, sku: u32, available: i64) -> Event {
    Event::default()
        .event("stock")
        .id(seq.to_string())
        .json_data(StockEvent { sku, available })
        .unwrap_or_default()
}

fn snapshot_event(hub: &Hub, seq: u64, list: &SalesList) -> Event {
    let sales = list
        .rows
        .iter()
        .map(|r| view(r, hub.current(r.sku).unwrap_or(0)).into())
        .collect();
    Event::default()
        .event("snapshot")
        .id(seq.to_string())
        .json_data(SalesSnapshot {
            server_time: chrono::Utc::now(),
            sales,
        })
        .unwrap_or_default()
}

enum Scope {
    Sku(u32),
    Sales(HashSet<u32>),
}

impl Scope {
    fn covers(&self, sku: u32) -> bool {
        match self {
            Scope::Sku(s) => *s == sku,
            Scope::Sales(skus) => skus.contains(&sku),
        }
    }
}

/// One open stream's state.
struct Watch {
    hub: Arc<Hub>,
    scope: Scope,
    batches: broadcast::Receiver<Arc<Batch>>,
    sales: Option<watch::Receiver<Arc<SalesList>>>,
    closed: watch::Receiver<bool>,
    queue: VecDeque<Event>,
    _guard: WatchGuard,
}

async fn sales_changed(sales: &mut Option<watch::Receiver<Arc<SalesList>>>) -> bool {
    match sales {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Watch {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                metrics::counter!("flashsale_live_events_total").increment(1);
                return Some((Ok(e), self));
            }
            if *self.closed.borrow() {
                return None;
            }
            tokio::select! {
                _ = self.closed.changed() => return None,
                r = self.batches.recv() => match r {
                    Ok(batch) => {
                        for (sku, available) in &batch.changes {
                            if self.scope.covers(*sku) {
                                self.queue.push_back(stock_event(batch.seq, *sku, *available));
                            }
                        }
                    }
                    // Fell behind: the current counts say all that was missed.
                    Err(RecvError::Lagged(_)) => self.push_current(),
                    Err(RecvError::Closed) => return None,
                },
                alive = sales_changed(&mut self.sales) => {
                    if !alive {
                        return None;
                    }
                    self.push_current();
                }
            }
        }
    }

    fn push_current(&mut self) {
        let seq = self.hub.seq();
        match &mut self.scope {
            Scope::Sku(sku) => {
                if let Some(v) = self.hub.current(*sku) {
                    self.queue.push_back(stock_event(seq, *sku, v));
                }
            }
            Scope::Sales(skus) => {
                let list = self
                    .sales
                    .as_mut()
                    .map(|rx| rx.borrow_and_update().clone())
                    .unwrap_or_else(|| Arc::new(SalesList { rows: Vec::new() }));
                *skus = list.skus();
                self.queue.push_back(snapshot_event(&self.hub, seq, &list));
            }
        }
    }
}
