//! Operator authentication. With `--operator-token` set, every operator
//! call (everything but an agent's Heartbeat and a gateway's stream, which
//! carry their own tokens) must send `authorization: Bearer <token>`.

use tonic::{Request, Status};

use crate::engine::TokenHash;
use crate::runtime::tokens;

pub const AUTHORIZATION_HEADER: &str = "authorization";

#[derive(Clone, Default)]
pub struct OperatorAuth {
    /// Only the hash is kept, as for every other token.
    expected: Option<TokenHash>,
}

impl OperatorAuth {
    /// `token` is trimmed, as presented tokens are: one read from a file
    /// or an environment variable often ends with a newline.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| tokens::hash(t.trim())),
        }
    }

    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let presented = request
            .metadata()
            .get(AUTHORIZATION_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_credentials)
            .ok_or_else(|| {
                Status::unauthenticated("this call needs `authorization: Bearer <operator token>`")
            })?;
        if tokens::hash(presented.trim()) != *expected {
            return Err(Status::unauthenticated("invalid operator token"));
        }
        Ok(())
    }
}

/// The credentials of `Bearer <token>`; the scheme is case-insensitive
/// (RFC 9110).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credentials.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert(AUTHORIZATION_HEADER, value.parse().unwrap());
        }
        request
    }

    #[test]
    fn without_a_token_configured_everything_passes() {
        assert!(OperatorAuth::new(None).check(&request(None)).is_ok());
    }

    #[test]
    fn with_a_token_only_the_right_bearer_passes() {
        let auth = OperatorAuth::new(Some("s3cret"));
        assert!(auth.check(&request(Some("Bearer s3cret"))).is_ok());
        assert!(auth.check(&request(Some("bearer s3cret"))).is_ok());
        assert!(auth.check(&request(Some("  Bearer   s3cret "))).is_ok());
        let from_a_file = OperatorAuth::new(Some("s3cret\n"));
        assert!(from_a_file.check(&request(Some("Bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("Bearer"),
            Some("Bearer "),
            Some("Bearer\ts3cret"),
            Some("Bearers3cret"),
        ] {
            let status = auth.check(&request(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }
}
