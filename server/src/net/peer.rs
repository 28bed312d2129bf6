//! TLS for this replica's own calls to the others (forwarding to the
//! leader), reloaded from disk like the server's files: the CA it trusts for
//! their certificates (`--peer-ca`, else `--tls-client-ca`, else the
//! system's roots) and the certificate it presents (its own `--tls-cert`,
//! which the leader checks under mutual TLS).

use std::path::PathBuf;
use std::sync::Mutex;

use mission_control_proto::tls::ClientTls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::tls::TlsError;

/// Where the peer settings are read from, as PEM.
#[derive(Debug, Clone)]
pub struct PeerTlsFiles {
    /// The CA that signs the other replicas' certificates; without it, the
    /// system's roots.
    pub ca: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The file contents a setting was built from, to notice a change.
type Contents = (Option<Vec<u8>>, Vec<u8>, Vec<u8>);

/// The peer settings in force, and which version they are (a new version
/// means channels made with an older one should be made again).
pub struct PeerTls {
    files: PeerTlsFiles,
    state: Mutex<Loaded>,
}

struct Loaded {
    /// The contents last tried: in force, or refused and already logged.
    last_seen: Contents,
    tls: ClientTls,
    version: u64,
}

impl PeerTls {
    /// Loads the files once; an error here stops the start.
    pub fn load(files: PeerTlsFiles) -> Result<Self, TlsError> {
        let contents = read(&files)?;
        let tls = build(&contents)?;
        Ok(Self {
            files,
            state: Mutex::new(Loaded {
                last_seen: contents,
                tls,
                version: 0,
            }),
        })
    }

    /// The settings in force and their version.
    pub fn current(&self) -> (u64, ClientTls) {
        let state = self.state();
        (state.version, state.tls.clone())
    }

    /// Re-reads the files; takes the new settings if they changed and load.
    /// Returns whether they were replaced.
    pub fn reload(&self) -> bool {
        let contents = match read(&self.files) {
            Ok(contents) => contents,
            Err(error) => {
                // Mid-rotation (a rename dance): the next try sees the file.
                tracing::debug!(%error, "peer tls files not readable; keeping the current ones");
                return false;
            }
        };
        let mut state = self.state();
        if state.last_seen == contents {
            return false;
        }
        let built = build(&contents);
        state.last_seen = contents;
        match built {
            Ok(tls) => {
                state.tls = tls;
                state.version += 1;
                tracing::info!("tls settings for calls to other replicas reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error,
                    "new tls files for calls to other replicas do not load; keeping the current ones");
                false
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.state.lock().expect("peer tls lock")
    }
}

fn read(files: &PeerTlsFiles) -> Result<Contents, TlsError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
    };
    Ok((
        files.ca.as_ref().map(read).transpose()?,
        read(&files.cert)?,
        read(&files.key)?,
    ))
}

/// Checks the PEM before it is used, so a half-written file is refused
/// here rather than failing every forwarded call.
fn build((ca, cert, key): &Contents) -> Result<ClientTls, TlsError> {
    let certificates = |pem: &[u8], what: &str| {
        let parsed = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("{what}: {e}")))?;
        if parsed.is_empty() {
            return Err(TlsError(format!("{what} holds no certificate")));
        }
        Ok(())
    };
    if let Some(ca) = ca {
        certificates(ca, "peer CA file")?;
    }
    certificates(cert, "certificate file")?;
    PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError(format!("key file: {e}")))?;
    Ok(ClientTls {
        ca_pem: ca.clone(),
        identity: Some((cert.clone(), key.clone())),
        domain: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::certs::TestPki;

    #[test]
    fn a_changed_ca_is_a_new_version_and_a_broken_one_keeps_the_old() {
        let pki = TestPki::new("peer ca");
        let ca = pki.write_ca();
        let (cert, key) = pki.write_pair("replica", &pki.server("replica", &["localhost"]));
        let peer = PeerTls::load(PeerTlsFiles {
            ca: Some(ca.clone()),
            cert,
            key,
        })
        .unwrap();
        let (version, tls) = peer.current();
        assert_eq!(tls.ca_pem.as_deref(), Some(pki.ca_pem().as_bytes()));
        assert!(!peer.reload(), "nothing changed");

        let other = TestPki::new("another ca");
        pki.write("ca.pem", &other.ca_pem());
        assert!(peer.reload());
        let (newer, tls) = peer.current();
        assert!(newer > version);
        assert_eq!(tls.ca_pem.as_deref(), Some(other.ca_pem().as_bytes()));

        pki.write("ca.pem", "-----BEGIN CERTIFICATE-----\nhalf");
        assert!(!peer.reload());
        assert_eq!(peer.current().0, newer, "the broken file is not taken");
        assert!(!peer.reload(), "and is not tried again until it changes");
    }
}
