//! `ListAgents` page tokens: opaque to clients, and checked on the way back
//! in, so a token is only ever one this service issued for the same query
//! (not any agent id, nor a token from a differently filtered list).

use sha2::{Digest, Sha256};

use crate::engine::{AgentFilter, AgentId};
use crate::runtime::{LifecycleError, tokens};

const VERSION: &str = "p1";

/// The token for the page after `last`.
pub fn encode(last: &AgentId, filter: &AgentFilter) -> String {
    let id = hex(last.as_str().as_bytes());
    let check = hex(&checksum(last.as_str(), filter));
    format!("{VERSION}.{id}.{check}")
}

/// The agent id to continue after, or INVALID_ARGUMENT.
pub fn decode(token: &str, filter: &AgentFilter) -> Result<AgentId, LifecycleError> {
    let invalid = || {
        LifecycleError::invalid(
            "page_token",
            "is not a token from a previous page of this same list",
        )
    };
    let mut parts = token.split('.');
    let (Some(VERSION), Some(id), Some(check), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let id = String::from_utf8(unhex(id).ok_or_else(invalid)?).map_err(|_| invalid())?;
    if unhex(check).as_deref() != Some(&checksum(&id, filter)[..]) {
        return Err(invalid());
    }
    AgentId::parse(&id).map_err(|_| invalid())
}

/// Binds the token to the agent id and the query's filter.
fn checksum(id: &str, filter: &AgentFilter) -> [u8; 8] {
    let mut hasher = Sha256::new();
    hasher.update(b"mission-control ListAgents page\0");
    hasher.update(format!("{filter:?}").as_bytes());
    hasher.update(b"\0");
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let mut check = [0u8; 8];
    check.copy_from_slice(&digest[..8]);
    check
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::new();
    tokens::push_hex(&mut text, bytes);
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::GatewayId;

    #[test]
    fn tokens_round_trip_and_only_for_the_same_query() {
        let all = AgentFilter::default();
        let id = AgentId::parse("agent-7").unwrap();
        let token = encode(&id, &all);
        assert_eq!(decode(&token, &all).unwrap(), id);

        let on_gateway = AgentFilter {
            gateway_id: Some(GatewayId::parse("gw").unwrap()),
            ..AgentFilter::default()
        };
        let forged_id = token.replace(&hex(b"agent-7"), &hex(b"agent-8"));
        for bad in [
            "agent-7".to_owned(),
            String::new(),
            "p1..".to_owned(),
            format!("{token}.x"),
            token.replacen("p1", "p2", 1),
            forged_id,
            "p1.zz.00".to_owned(),
        ] {
            assert!(
                matches!(
                    decode(&bad, &all),
                    Err(LifecycleError::InvalidArgument {
                        field: "page_token",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(decode(&token, &on_gateway).is_err());
    }
}
