//! Every RPC the server answers, with who may call it and how large its
//! request may be. Unknown methods of our services need an admin (closed by
//! default); anything else unknown is left to tonic's UNIMPLEMENTED.

use super::credentials::Role;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health and reflection.
    Open,
    /// An agent, with its token in `x-agent-token`.
    Agent,
    /// A gateway, with its token in `x-gateway-token`.
    Gateway,
    /// An operator with at least this role.
    Operator(Role),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub access: Access,
    /// For a unary request, the most bytes its body may hold (the 5-byte
    /// gRPC frame header included). Streams are bounded per message by the
    /// service's decoding limit instead.
    pub max_request_bytes: Option<usize>,
    /// A health `Watch`: counted against the health-watch cap.
    pub health_watch: bool,
    /// A plain HTTP route beside the services (`/metrics`): refused with an
    /// HTTP status (401, 403) that a scraper understands, not a gRPC one.
    pub plain_http: bool,
}

/// The largest unary request: ids are at most 64 bytes, names 200
/// characters (800 bytes), template versions 128 characters (512 bytes).
pub const MAX_UNARY_REQUEST: usize = 4 * 1024;
/// A heartbeat carries only a template version.
pub const MAX_HEARTBEAT_REQUEST: usize = 1024;
/// One gateway message (an acknowledgement with its failure text).
pub const MAX_GATEWAY_MESSAGE: usize = 16 * 1024;
/// One reflection or health request.
pub const MAX_OPEN_MESSAGE: usize = 16 * 1024;

const LIFECYCLE: &str = "/missioncontrol.lifecycle.v1.AgentLifecycle/";
const GATEWAYS: &str = "/missioncontrol.lifecycle.v1.Gateways/";
const ROLLOUTS: &str = "/missioncontrol.lifecycle.v1.Rollouts/";
const OUR_PACKAGE: &str = "/missioncontrol.";

const fn unary(access: Access, max: usize) -> Method {
    Method {
        access,
        max_request_bytes: Some(max),
        health_watch: false,
        plain_http: false,
    }
}

const fn stream(access: Access) -> Method {
    Method {
        access,
        max_request_bytes: None,
        health_watch: false,
        plain_http: false,
    }
}

const VIEWER: Access = Access::Operator(Role::Viewer);
const ADMIN: Access = Access::Operator(Role::Admin);

/// The method at this request path.
pub fn method(path: &str) -> Method {
    if let Some(name) = path.strip_prefix(LIFECYCLE) {
        return match name {
            "Heartbeat" => unary(Access::Agent, MAX_HEARTBEAT_REQUEST),
            "GetAgent" | "ListAgents" | "WatchAgent" | "GetAgentHistory" => {
                unary(VIEWER, MAX_UNARY_REQUEST)
            }
            _ => unary(ADMIN, MAX_UNARY_REQUEST),
        };
    }
    if let Some(name) = path.strip_prefix(GATEWAYS) {
        return match name {
            "ConnectGateway" => stream(Access::Gateway),
            "ListGateways" | "GetGatewayHistory" => unary(VIEWER, MAX_UNARY_REQUEST),
            _ => unary(ADMIN, MAX_UNARY_REQUEST),
        };
    }
    if let Some(name) = path.strip_prefix(ROLLOUTS) {
        return match name {
            "GetDrift" | "GetRollout" | "ListRollouts" | "WatchRollout" => {
                unary(VIEWER, MAX_UNARY_REQUEST)
            }
            _ => unary(ADMIN, MAX_UNARY_REQUEST),
        };
    }
    if path.starts_with(OUR_PACKAGE) {
        return unary(ADMIN, MAX_UNARY_REQUEST);
    }
    match path {
        // Metrics are a viewer's, as reads are. (The dashboard's page and
        // assets carry no data: open, like any other path left to the router.)
        crate::web::METRICS_PATH => Method {
            plain_http: true,
            ..unary(VIEWER, MAX_OPEN_MESSAGE)
        },
        "/grpc.health.v1.Health/Check" => unary(Access::Open, MAX_OPEN_MESSAGE),
        "/grpc.health.v1.Health/Watch" => Method {
            health_watch: true,
            ..unary(Access::Open, MAX_OPEN_MESSAGE)
        },
        _ => stream(Access::Open),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rpc_has_its_access() {
        let cases = [
            ("AgentLifecycle/Provision", ADMIN),
            ("AgentLifecycle/Heartbeat", Access::Agent),
            ("AgentLifecycle/WakeAgent", ADMIN),
            ("AgentLifecycle/GetAgent", VIEWER),
            ("AgentLifecycle/ListAgents", VIEWER),
            ("AgentLifecycle/DeleteAgent", ADMIN),
            ("AgentLifecycle/WatchAgent", VIEWER),
            ("AgentLifecycle/GetAgentHistory", VIEWER),
            ("AgentLifecycle/SomethingNew", ADMIN),
            ("Gateways/RegisterGateway", ADMIN),
            ("Gateways/ListGateways", VIEWER),
            ("Gateways/GetGatewayHistory", VIEWER),
            ("Gateways/ConnectGateway", Access::Gateway),
            ("Gateways/SyncGatewayTemplates", ADMIN),
            ("Rollouts/GetDrift", VIEWER),
            ("Rollouts/GetRollout", VIEWER),
            ("Rollouts/ListRollouts", VIEWER),
            ("Rollouts/WatchRollout", VIEWER),
            ("Rollouts/StartRollout", ADMIN),
            ("Rollouts/PauseRollout", ADMIN),
            ("Rollouts/ResumeRollout", ADMIN),
            ("Rollouts/CancelRollout", ADMIN),
            ("Rollouts/SomethingNew", ADMIN),
            ("Other/Thing", ADMIN),
        ];
        for (name, access) in cases {
            let path = format!("/missioncontrol.lifecycle.v1.{name}");
            assert_eq!(method(&path).access, access, "{path}");
        }
        assert_eq!(method("/grpc.health.v1.Health/Check").access, Access::Open);
        assert!(method("/grpc.health.v1.Health/Watch").health_watch);
        let reflection = method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
        assert_eq!(reflection.access, Access::Open);
        assert_eq!(reflection.max_request_bytes, None);
        let metrics = method("/metrics");
        assert!(metrics.plain_http && metrics.access == VIEWER);
        assert_eq!(method("/").access, Access::Open);
        assert_eq!(method("/assets/app.js").access, Access::Open);
        assert_eq!(
            method("/missioncontrol.lifecycle.v1.AgentLifecycle/Heartbeat").max_request_bytes,
            Some(MAX_HEARTBEAT_REQUEST)
        );
    }
}
