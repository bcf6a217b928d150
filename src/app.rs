//! The application's state: what every handler, worker and tool reads (the stores, the token
//! keys, the settings, the live hub). Only the state: it is built by `AppState::connect` in
//! src/startup.rs, which also runs the service.

use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::MySqlPool;

use crate::auth::Jwt;
use crate::config::Config;
use crate::service::live::Hub;
use crate::service::lookups::Lookups;
use crate::service::sold_out::SoldOut;
use crate::service::token_cache::TokenChecks;
use crate::store::redis::Redis;

#[derive(Clone)]
pub struct AppState {
    pub db: MySqlPool,
    pub redis: Redis,
    /// This instance's name among the outbox consumers.
    pub instance: Arc<str>,
    pub jwt: Arc<Jwt>,
    pub cfg: Arc<Config>,
    pub metrics: PrometheusHandle,
    /// Live stock for the SSE streams (`worker::live::run` feeds it).
    pub live: Arc<Hub>,
    /// Product lookups that reach MySQL: unknown skus remembered, loads done once.
    pub lookups: Arc<Lookups>,
    /// The skus this instance knows to be sold out (`worker::live::run` feeds it too).
    pub sold_out: Arc<SoldOut>,
    /// The accounts tokens were checked against lately (src/service/tokens.rs).
    pub tokens: Arc<TokenChecks>,
}

impl FromRef<AppState> for MySqlPool {
    fn from_ref(s: &AppState) -> Self {
        s.db.clone()
    }
}
