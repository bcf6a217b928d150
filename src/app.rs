//! The application's state: what every handler, worker and tool reads (the stores, the token
//! keys, the settings, the live hub). Only the state: it is built by `AppState::connect` in
//! src/startup.rs, which also runs the service.

use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::MySqlPool;

use crate::auth::Jwt;
use crate::config::Config;
use crate::live;
use crate::service::lookups::Lookups;
use crate::store::redis::Redis;

#[derive(Clone)]
pub struct AppState {
    pub db: MySqlPool,
    pub redis: Redis,
    /// Connections that one task holds alone: blocking stream reads (the outbox worker, the
    /// webhook sender), which must not stall the shared multiplexed connection.
    pub blocking: deadpool_redis::Pool,
    /// This instance's name among the outbox consumers.
    pub instance: Arc<str>,
    pub jwt: Arc<Jwt>,
    pub cfg: Arc<Config>,
    pub metrics: PrometheusHandle,
    /// Live stock for the SSE streams (`live::run` feeds it).
    pub live: Arc<live::Hub>,
    /// Product lookups that reach MySQL: unknown skus remembered, loads done once.
    pub lookups: Arc<Lookups>,
}

impl FromRef<AppState> for MySqlPool {
    fn from_ref(s: &AppState) -> Self {
        s.db.clone()
    }
}
