//! A running service: store, runtime and gRPC server wired together. The
//! binary runs one until SIGTERM; tests start them on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::{Clock, Lifecycle};
use crate::store::{MemoryStore, PostgresStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load the TLS files: {0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("cannot start on the database: {0}")]
    Store(#[from] StoreError),
}

pub struct App {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    lifecycle: Lifecycle,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    drain_timeout: Duration,
}

impl App {
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let mut settings = config.settings().map_err(StartError::Config)?;
        let operators = Arc::new(crate::edge::operators(config).map_err(StartError::Config)?);
        crate::edge::exposure::check(
            config.listen,
            config.metrics_listen,
            crate::edge::exposure::Protection {
                operator_credentials: operators.required(),
                client_certificates: config.client_certificates_required(),
                insecure_override: config.edge.insecure_allow_unauthenticated,
            },
        )
        .map_err(StartError::Config)?;
        let open_file_limit = crate::net::raise_open_file_limit();
        let connections = config
            .connections(open_file_limit)
            .map_err(StartError::Config)?;
        let tls = config
            .tls_files()
            .map_err(StartError::Config)?
            .map(crate::net::ReloadingTls::load)
            .transpose()?;
        let listener = crate::net::bind(config.listen).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr();
        settings.advertise_address = config.advertise_address(addr);
        let store = open_store(config).await?;
        let lifecycle = Lifecycle::start(store, settings, Clock::system()).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(
            operators
                .clone()
                .watch(config.edge.roles_reload_interval, shutdown.clone()),
        );
        let edge = crate::edge::EdgeLayer::new(
            operators.clone(),
            config.edge.max_health_watches,
            config.edge.request_timeout,
        );
        let peer_tls = config
            .peer_tls_files()
            .map_err(StartError::Config)?
            .map(crate::net::PeerTls::load)
            .transpose()
            .map_err(|e| StartError::Config(format!("tls files for calls to other replicas: {e}")))?
            .map(Arc::new);
        let forward = crate::grpc::ForwardLayer::new(
            lifecycle.clone(),
            config.advertise_address(addr),
            peer_tls,
            shutdown.clone(),
        );
        if let Some(tls) = &tls {
            tls.spawn_reloader(config.tls_reload_interval, shutdown.clone());
            let forward = forward.clone();
            crate::net::tls::spawn_reload_loop(
                config.tls_reload_interval,
                shutdown.clone(),
                move || forward.reload_peer_tls(),
            );
        }
        tracing::info!(
            %addr,
            tls = tls.is_some(),
            client_certificates = config.client_certificates_required(),
            max_connections = connections.max_connections,
            open_file_limit,
            "listening"
        );
        let edge_for_metrics = edge.clone();
        let listener = crate::net::Listener::start(listener, tls, &connections, shutdown.clone());
        let server = tokio::spawn(crate::grpc::serve(
            lifecycle.clone(),
            forward,
            edge,
            listener,
            connections.clone(),
            shutdown.clone().cancelled_owned(),
        ));
        let metrics_addr = match config.metrics_listen {
            Some(metrics_addr) => {
                let listener =
                    crate::net::bind(metrics_addr).map_err(|source| StartError::Listen {
                        addr: metrics_addr,
                        source,
                    })?;
                let bound = listener.local_addr();
                tokio::spawn(crate::grpc::serve_metrics(
                    lifecycle.clone(),
                    edge_for_metrics,
                    crate::net::Listener::start(listener, None, &connections, shutdown.clone()),
                    shutdown.clone().cancelled_owned(),
                ));
                tracing::info!(addr = %bound, "serving metrics at /metrics");
                Some(bound)
            }
            None => None,
        };
        Ok(Self {
            metrics_addr,
            addr,
            lifecycle,
            shutdown,
            server,
            drain_timeout: config.drain_timeout,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Runs until the server fails or `signal` completes, then drains.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tokio::select! {
            result = &mut self.server => {
                self.lifecycle.stop().await;
                return result.unwrap_or(Ok(()));
            }
            _ = signal => {}
        }
        self.shutdown().await;
        Ok(())
    }

    /// Graceful drain, bounded by the drain timeout whatever the database
    /// does: health turns NOT_SERVING, watches end and no new call is
    /// accepted; calls in flight finish and the wakes they caused are sent
    /// before gateway streams end; leadership is given up; then leases are
    /// checkpointed and the store is closed.
    pub async fn shutdown(self) {
        tracing::info!(timeout = ?self.drain_timeout, "draining");
        let started = tokio::time::Instant::now();
        let end = started + self.drain_timeout;
        // The hand-over, the final checkpoint and the store close get the
        // last slice, whatever calls in flight took.
        let reserve = (self.drain_timeout / 4).min(Duration::from_secs(1));
        let calls_deadline = end - reserve;
        self.lifecycle.begin_drain();
        self.shutdown.cancel();
        if tokio::time::timeout_at(calls_deadline, self.lifecycle.settle())
            .await
            .is_err()
        {
            tracing::warn!("calls still in flight at the drain deadline");
        }
        let hand_over_by = calls_deadline.max(tokio::time::Instant::now()) + reserve / 2;
        if tokio::time::timeout_at(hand_over_by, self.lifecycle.step_down())
            .await
            .is_err()
        {
            tracing::warn!("handing leadership over took too long; the lease will expire instead");
        }
        self.lifecycle.end_streams();
        let mut server = self.server;
        if tokio::time::timeout_at(calls_deadline, &mut server)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.drain_timeout, "calls still in flight after the drain timeout; closing");
            server.abort();
        }
        self.lifecycle.stop_by(end - reserve / 4, reserve / 4).await;
        tracing::info!(took = ?started.elapsed(), "stopped");
    }
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let Some(url) = config.database_url.as_deref().filter(|_| !config.dev) else {
        tracing::warn!(
            "DEV MODE: in-memory store. NOTHING IS DURABLE: every agent, gateway and event \
             is lost when this process exits. Use --database-url for a real deployment."
        );
        return Ok(Arc::new(MemoryStore::new()));
    };
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match PostgresStore::connect(url, &config.pool()).await {
            Ok(store) => return Ok(Arc::new(store)),
            Err(StoreError::Unavailable(error))
                if started.elapsed() < config.database_startup_timeout =>
            {
                tracing::warn!(%error, retry_in = ?delay, "waiting for the database");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error.into()),
        }
    }
}
