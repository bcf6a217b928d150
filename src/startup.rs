//! Start-up: the state connected (database created and migrated, Redis), the scripts loaded, the
//! admin account present; then the API served (src/server.rs) beside the background workers until
//! a shutdown signal.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::AppState;
use crate::auth::{self, Jwt};
use crate::config::Config;
use crate::service::admin_account;
use crate::service::live::Hub;
use crate::service::lookups::Lookups;
use crate::service::sold_out::SoldOut;
use crate::service::token_cache::TokenChecks;
use crate::service::tokens::CHECK_TTL;
use crate::store::mysql;
use crate::store::redis::Redis;
use crate::{http, server, telemetry, worker};

impl AppState {
    /// Connects to MySQL (creating and migrating the database) and Redis.
    pub async fn connect(cfg: Config) -> anyhow::Result<Self> {
        cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
        let secret = match &cfg.auth.jwt_secret {
            Some(s) => s.clone(),
            None => {
                tracing::warn!(
                    "no FLASHSALE_JWT_SECRET: generated a random one for this run (dev mode). \
                     Tokens die with this process and are not shared between instances; \
                     set a secret and --production for real deployments"
                );
                auth::generate_secret()
            }
        };
        let db = mysql::connect_and_migrate(&cfg.stores).await?;
        let redis = Redis::connect(&cfg.stores)?;
        let mut jwt = Jwt::new(secret.as_bytes(), cfg.auth.token_ttl);
        if let Some(previous) = &cfg.auth.jwt_secret_previous {
            tracing::info!(
                "FLASHSALE_JWT_SECRET_PREVIOUS is set: tokens signed with it are accepted until \
                 they expire; new tokens are signed with FLASHSALE_JWT_SECRET"
            );
            jwt = jwt.accepting(previous.as_bytes());
        }
        let jwt = Arc::new(jwt);
        let instance = format!(
            "{}-{}-{:04x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "flashsale".into()),
            std::process::id(),
            rand::random::<u16>()
        );
        Ok(AppState {
            db,
            redis,
            instance: instance.into(),
            jwt,
            // The recorder first: the hub registers its metrics.
            metrics: telemetry::metrics_handle(),
            live: Arc::new(Hub::new(
                cfg.live.live_max_watchers,
                cfg.live.live_max_per_client,
                cfg.live.live_resync,
            )),
            lookups: Arc::new(Lookups::new(
                cfg.sale.unknown_sku_ttl,
                cfg.stores.mysql_pool,
                cfg.stores.mysql_timeout,
            )),
            sold_out: Arc::new(SoldOut::new(cfg.sale.sold_out_trust)),
            tokens: Arc::new(TokenChecks::new(CHECK_TTL)),
            cfg: Arc::new(cfg),
        })
    }
}

pub struct Application {
    listener: TcpListener,
    /// The operators' listener (`FLASHSALE_METRICS_LISTEN`): metrics, readiness with reasons.
    operators: TcpListener,
    state: AppState,
}

impl Application {
    /// Everything `serve` needs, ready: state connected, admin present, listener bound (port 0
    /// picks a free port, for tests).
    pub async fn build(cfg: Config) -> anyhow::Result<Self> {
        let listen = cfg.http.listen;
        let state = AppState::connect(cfg).await?;
        bootstrap(&state).await?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let ops = state.cfg.telemetry.metrics_listen;
        let operators = TcpListener::bind(ops)
            .await
            .with_context(|| format!("binding FLASHSALE_METRICS_LISTEN {ops}"))?;
        Ok(Application {
            listener,
            operators,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The port of the operators' listener (`/metrics`).
    pub fn metrics_port(&self) -> u16 {
        self.operators.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until SIGTERM or ctrl-c.
    pub async fn run(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves the API and runs the sweeper until `shutdown` completes; then stops accepting,
    /// lets in-flight requests finish (at most `shutdown_grace`), and stops the background work:
    /// the outbox writer finishes the batch it is writing. Last, the queued spans are exported
    /// (when traces are on; at most the OTLP export timeout).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let sweeper = tokio::spawn(worker::sweeper::run(self.state.clone(), stop_rx.clone()));
        let gauges = tokio::spawn(worker::gauges::run(self.state.clone(), stop_rx.clone()));
        let writer = self
            .state
            .cfg
            .outbox
            .worker
            .then(|| tokio::spawn(worker::writer::run(self.state.clone(), stop_rx.clone())));
        let webhooks = self
            .state
            .cfg
            .webhooks
            .webhook_url
            .is_some()
            .then(|| tokio::spawn(worker::webhooks::run(self.state.clone(), stop_rx.clone())));
        let live = tokio::spawn(worker::live::run(self.state.clone(), stop_rx.clone()));
        // Live streams never end by themselves: end them when the shutdown starts, so the
        // graceful shutdown does not wait for them.
        let hub = self.state.live.clone();
        let shutdown = async move {
            shutdown.await;
            hub.close();
        };
        let router = http::router(self.state.clone());
        tracing::info!(addr = %self.listener.local_addr()?, "flashsale listening");
        let cfg = &self.state.cfg;
        let limits = server::ServeLimits {
            max_connections: cfg.http.max_connections,
            max_per_client: cfg.http.connections_per_client(),
            header_limit: cfg.http.header_limit,
            header_timeout: cfg.http.header_timeout,
            shutdown_grace: cfg.http.shutdown_grace,
        };
        // The operators' listener answers until the background work stops (metrics of the
        // shutdown included).
        tracing::info!(addr = %self.operators.local_addr()?, "metrics listening");
        let mut stopped = stop_rx.clone();
        let operators = tokio::spawn(server::serve(
            self.operators,
            http::ops::operators_router(self.state.clone()),
            server::ServeLimits {
                max_connections: 64,
                max_per_client: None,
                ..limits
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        server::serve(self.listener, router, limits, shutdown).await;
        let _ = stop_tx.send(true);
        let _ = operators.await;
        let _ = sweeper.await;
        let _ = gauges.await;
        let _ = live.await;
        for task in [writer, webhooks].into_iter().flatten() {
            let _ = task.await;
        }
        tracing::info!("flashsale stopped");
        // The spans of the last requests and of the final write-back go out before the exit.
        telemetry::flush_traces().await;
        Ok(())
    }
}

/// Start-up work that needs both stores: scripts loaded, admin account, order id floor.
async fn bootstrap(state: &AppState) -> anyhow::Result<()> {
    if let Err(e) = state.redis.load_scripts().await {
        tracing::warn!(error = %e, "could not load the Lua scripts now; they load on first use");
    }
    match state.redis.check_eviction_policy().await {
        Ok(()) => {}
        Err(e) if state.redis.eviction_refusal().is_some() => anyhow::bail!(
            "{e}. Set `maxmemory-policy noeviction` in redis.conf (or CONFIG SET) and start again"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not read Redis's maxmemory-policy now; it is checked every metrics interval \
             and nothing is sold while it is not noeviction"
        ),
    }
    admin_account::ensure(&state.db, &state.cfg.auth).await?;
    // Unknown usernames are checked against it: made now, so no login pays for it.
    auth::dummy_hash(state.cfg.auth.argon2_memory_kib).await?;
    // Requests check the counter again (a missing one is raised before any id is handed out).
    if let Err(e) = crate::service::order_ids::raise(state, false, false).await {
        tracing::warn!(error = %e, "could not check the order id sequence against MySQL");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
