//! The `missioncontrol.lifecycle.v1` protocol: messages, client stubs and
//! server traits, generated from the `.proto` files beside this one.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("missioncontrol.lifecycle.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("lifecycle_descriptor");
}

pub mod codec;
pub mod tls;

pub use prost_types;
pub use v1::*;

/// The metadata keys that carry credentials (and the forwarding mark), shared by the server and the
/// client library so the two cannot drift apart.
pub mod metadata {
    use tonic::codegen::http::HeaderName;

    /// An agent's token, on `Heartbeat`.
    pub const AGENT_TOKEN: &str = "x-agent-token";
    /// A gateway's token, on `ConnectGateway`.
    pub const GATEWAY_TOKEN: &str = "x-gateway-token";
    /// The token headers as names, to look them up with: a lookup by `&str`
    /// parses the name again on every call.
    pub const AGENT_TOKEN_NAME: HeaderName = HeaderName::from_static(AGENT_TOKEN);
    pub const GATEWAY_TOKEN_NAME: HeaderName = HeaderName::from_static(GATEWAY_TOKEN);
    /// `Bearer <operator token>`, on every operator call.
    pub const AUTHORIZATION: &str = "authorization";
    /// Set by a replica on a call it forwards to the leader (its value: the
    /// forwarding replica's address). The leader then judges the call by the
    /// tokens it carries only, never by the forwarding replica's certificate.
    pub const FORWARDED_BY: &str = "x-mc-forwarded-by";
}

impl v1::ProvisionRequest {
    /// A request for an agent with this id, on this gateway, in this role.
    pub fn new(
        agent_id: impl Into<String>,
        gateway_id: impl Into<String>,
        role: v1::AgentRole,
    ) -> Self {
        Self {
            agent_id: agent_id.into(),
            gateway_id: gateway_id.into(),
            role: role.into(),
            ..Self::default()
        }
    }

    pub fn on_board(mut self, board_id: impl Into<String>) -> Self {
        self.board_id = board_id.into();
        self
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn with_template_version(mut self, version: impl Into<String>) -> Self {
        self.template_version = version.into();
        self
    }

    /// Mint a new token even if the agent exists (the old one stops working).
    pub fn rotating_token(mut self) -> Self {
        self.rotate_token = true;
        self
    }
}
