//! Client-side connection settings shared by the client library and by
//! replicas that call each other: an [`Endpoint`] for a URI, over TLS when
//! the URI says `https://`.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// What a client trusts and shows over TLS, as PEM.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA certificates to trust; without any, the system's trust store.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key, for servers that require one
    /// (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify the server's certificate against, when it is not
    /// the host in the URI.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Reads the files (as `--cacert`, `--cert` and `--key` name them).
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> std::io::Result<Self> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a client certificate needs both --cert and --key",
                ));
            }
        };
        Ok(Self {
            ca_pem: ca.map(read).transpose()?,
            identity,
            domain: None,
        })
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

/// An endpoint for `uri` (`http://host:port`, `https://host:port`, or
/// `host:port` for plaintext), with TLS from `tls` when the scheme is
/// `https` (the system's roots when `tls` is `None`). Connects lazily;
/// HTTP/2 keepalive keeps idle connections checked.
pub fn endpoint(uri: &str, tls: Option<&ClientTls>) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if uri.contains("://") {
        uri.to_owned()
    } else {
        format!("http://{uri}")
    };
    let https = uri.starts_with("https://");
    let endpoint = Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if https {
        let default = ClientTls::default();
        endpoint.tls_config(tls.unwrap_or(&default).config())
    } else {
        Ok(endpoint)
    }
}
