//! The server's TLS configuration, reloaded from disk without a restart.
//!
//! Each new connection takes the configuration current at its accept, so
//! replacing the certificate, key or client CA files (rotation) reaches new
//! connections within one reload interval, or at once on SIGHUP. A file that
//! does not load keeps the previous configuration and is logged once per
//! change.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

/// Where the server's certificate chain, key and (for mutual TLS) the CA
/// that signs client certificates are read from, as PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every client must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub(super) String);

/// The file contents a configuration was built from, to notice a change.
type Contents = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// The current server configuration and what it was loaded from.
pub struct ReloadingTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    /// The contents last tried: loaded, or refused and already logged.
    last_seen: Mutex<Contents>,
}

impl ReloadingTls {
    /// Loads the files once; an error here stops the start.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let contents = read(&files)?;
        let config = build(&contents)?;
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(config),
            last_seen: Mutex::new(contents),
        }))
    }

    /// An acceptor with the configuration current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Re-reads the files; swaps in a new configuration if they changed and
    /// load. Returns whether the configuration was replaced.
    pub fn reload(&self) -> bool {
        let contents = match read(&self.files) {
            Ok(contents) => contents,
            Err(error) => {
                // A missing file mid-rotation is common (rename dance); the
                // next tick sees the new one. Say it at debug only.
                tracing::debug!(%error, "tls files not readable; keeping the current certificate");
                return false;
            }
        };
        let mut last_seen = self.last_seen.lock().expect("tls reload lock");
        if *last_seen == contents {
            return false;
        }
        let result = build(&contents);
        *last_seen = contents;
        drop(last_seen);
        match result {
            Ok(config) => {
                self.current.store(Arc::new(config));
                tracing::info!(cert = %self.files.cert.display(), "tls certificate reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, cert = %self.files.cert.display(),
                    "new tls files do not load; keeping the current certificate");
                false
            }
        }
    }

    /// Reloads every `interval` and on SIGHUP until `stop`.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration, stop: CancellationToken) {
        let tls = Arc::clone(self);
        spawn_reload_loop(interval, stop, move || {
            tls.reload();
        });
    }
}

/// Calls `reload` every `interval` and on SIGHUP, until `stop`.
pub fn spawn_reload_loop(
    interval: Duration,
    stop: CancellationToken,
    reload: impl Fn() + Send + 'static,
) {
    tokio::spawn(async move {
        let mut hangup = sighup();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = next_hangup(&mut hangup) => {}
            }
            reload();
        }
    });
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn sighup() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn sighup() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) {
    match hangup {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}

fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
    };
    Ok((
        read(&files.cert)?,
        read(&files.key)?,
        files.client_ca.as_ref().map(read).transpose()?,
    ))
}

fn build((cert, key, client_ca): &Contents) -> Result<ServerConfig, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError("certificate file holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError(format!("key file: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| TlsError(format!("client CA file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError(format!("client CA file: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError(format!("client CA file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(format!("certificate and key: {e}")))?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
