//! The service's edge, in front of the gRPC services and the metrics
//! listener: operator roles from a reloadable file of hashed tokens, checked
//! by a `tower` layer before any request body is read; per-method request
//! size limits, and a body cut mid-message refused as the caller's error; a
//! cap on health watches; and the closed-by-default rule for
//! listening beyond loopback.

mod args;
mod body;
mod credentials;
pub mod exposure;
mod layer;
pub mod methods;
mod operators;
mod subject;

pub use args::EdgeArgs;
pub use credentials::{Credentials, Operator, Role, hash_line};
pub use layer::{EdgeLayer, bearer_credentials};
pub use operators::Operators;
pub use subject::subject as certificate_subject;

/// The operator credentials the configuration names: the roles file, and
/// the admin token from `--operator-token` or `--operator-token-file`.
pub fn operators(config: &crate::config::Config) -> Result<Operators, String> {
    let from_file = match &config.edge.operator_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(|e| {
                format!("cannot read --operator-token-file {}: {e}", path.display())
            })?;
            if token.trim().is_empty() {
                return Err(format!("--operator-token-file {} is empty", path.display()));
            }
            Some(token)
        }
        None => None,
    };
    let token = from_file.as_deref().or(config.operator_token.as_deref());
    Operators::load(config.edge.roles_file.clone(), token)
}
