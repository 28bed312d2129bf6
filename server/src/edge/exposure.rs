//! Closed by default: a listener beyond loopback needs something that
//! authenticates operators, unless the operator says otherwise.

use std::net::SocketAddr;

/// What protects the listeners.
#[derive(Debug, Clone, Copy)]
pub struct Protection {
    /// A roles file or an operator token is configured.
    pub operator_credentials: bool,
    /// TLS with required client certificates on the gRPC port.
    pub client_certificates: bool,
    /// `--insecure-allow-unauthenticated`.
    pub insecure_override: bool,
}

/// Refuses, with what to add, a gRPC or metrics listener beyond loopback
/// that nothing protects.
pub fn check(
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    protection: Protection,
) -> Result<(), String> {
    if protection.insecure_override {
        if !listen.ip().is_loopback() && !protection.operator_credentials {
            tracing::warn!(%listen, "--insecure-allow-unauthenticated: operator calls are open to anyone who can reach this address");
        }
        return Ok(());
    }
    if !listen.ip().is_loopback()
        && !protection.operator_credentials
        && !protection.client_certificates
    {
        return Err(format!(
            "refusing to serve on {listen} (beyond loopback) with nothing that authenticates \
             operators: add --roles-file or --operator-token-file (or TLS with --tls-client-ca \
             to require client certificates), listen on 127.0.0.1, or pass \
             --insecure-allow-unauthenticated if anyone who can reach it may provision and delete"
        ));
    }
    if let Some(metrics) = metrics_listen
        && !metrics.ip().is_loopback()
        && !protection.operator_credentials
    {
        return Err(format!(
            "refusing to serve metrics on {metrics} (beyond loopback) without operator \
             credentials: add --roles-file or --operator-token-file (scrapers then send \
             `Authorization: Bearer <viewer token>`), listen on 127.0.0.1, or pass \
             --insecure-allow-unauthenticated"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTHING: Protection = Protection {
        operator_credentials: false,
        client_certificates: false,
        insecure_override: false,
    };

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn beyond_loopback_something_must_authenticate() {
        let local = addr("127.0.0.1:50051");
        let open = addr("0.0.0.0:50051");
        assert!(check(local, Some(addr("[::1]:9090")), NOTHING).is_ok());
        let refused = check(open, None, NOTHING).unwrap_err();
        assert!(
            refused.contains("--roles-file")
                && refused.contains("--insecure-allow-unauthenticated")
        );
        let with_tokens = Protection {
            operator_credentials: true,
            ..NOTHING
        };
        assert!(check(open, Some(addr("0.0.0.0:9090")), with_tokens).is_ok());
        let with_certificates = Protection {
            client_certificates: true,
            ..NOTHING
        };
        assert!(check(open, None, with_certificates).is_ok());
        // Certificates protect gRPC, not the plain-HTTP metrics port.
        let metrics = check(open, Some(addr("0.0.0.0:9090")), with_certificates).unwrap_err();
        assert!(metrics.contains("metrics"));
        assert!(check(local, Some(addr("0.0.0.0:9090")), NOTHING).is_err());
        let overridden = Protection {
            insecure_override: true,
            ..NOTHING
        };
        assert!(check(open, Some(addr("0.0.0.0:9090")), overridden).is_ok());
    }
}
