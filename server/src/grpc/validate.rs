//! Request validation: protocol messages in, domain values out, and an
//! INVALID_ARGUMENT naming the field for anything else.

use std::time::Duration;

use mission_control_proto::prost_types;
use mission_control_proto::v1 as pb;

use super::{convert, page_token};
use crate::engine::{
    AgentFilter, AgentId, BoardId, GatewayId, GatewaySpec, ProvisionSpec, Role, Status,
};
use crate::runtime::{LifecycleError, WatchRequest};

const MAX_NAME: usize = 200;
const MAX_TEMPLATE_VERSION: usize = 128;
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

type Result<T> = std::result::Result<T, LifecycleError>;

pub fn agent_id(field: &'static str, value: &str) -> Result<AgentId> {
    AgentId::parse(value).map_err(|e| LifecycleError::invalid(field, e.to_string()))
}

pub fn gateway_id(field: &'static str, value: &str) -> Result<GatewayId> {
    GatewayId::parse(value).map_err(|e| LifecycleError::invalid(field, e.to_string()))
}

pub fn optional<T>(value: &str, parse: impl FnOnce(&str) -> Result<T>) -> Result<Option<T>> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

pub fn board_id(value: &str) -> Result<Option<BoardId>> {
    optional(value, |v| {
        BoardId::parse(v).map_err(|e| LifecycleError::invalid("board_id", e.to_string()))
    })
}

fn text(field: &'static str, value: &str, max: usize) -> Result<String> {
    if value.chars().count() > max {
        return Err(LifecycleError::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(LifecycleError::invalid(
            field,
            "may not contain control characters",
        ));
    }
    if let Some(c) = value.chars().find(|&c| is_format(c)) {
        return Err(LifecycleError::invalid(
            field,
            format!(
                "may not contain invisible formatting characters such as bidirectional \
                 overrides or zero-width spaces (found U+{:04X})",
                c as u32
            ),
        ));
    }
    Ok(value.to_owned())
}

/// Unicode's format characters (general category Cf): bidirectional
/// embeddings, overrides and isolates (U+202A-202E, U+2066-2069), zero-width
/// spaces and joiners (U+200B-200F), the byte-order mark (U+FEFF) and the
/// rest. They render as nothing, or reorder what follows, so one name can
/// pass for another in a terminal or a web page.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// A gateway's failure text, kept short and printable: it ends up in
/// `last_provision_error`, in events and in logs.
pub fn ack_error(value: &str) -> String {
    const MAX_ACK_ERROR: usize = 512;
    let clean: String = value
        .chars()
        .map(|c| {
            if c.is_control() || is_format(c) {
                ' '
            } else {
                c
            }
        })
        .take(MAX_ACK_ERROR)
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        "no reason given".to_owned()
    } else if value.chars().count() > MAX_ACK_ERROR {
        format!("{clean}…")
    } else {
        clean.to_owned()
    }
}

pub fn template_version(value: &str) -> Result<String> {
    text("template_version", value, MAX_TEMPLATE_VERSION)
}

fn role(value: i32) -> Result<Role> {
    pb::AgentRole::try_from(value)
        .ok()
        .and_then(convert::role_from)
        .ok_or_else(|| {
            const ROLES: &str =
                "AGENT_ROLE_GATEWAY_MAIN, AGENT_ROLE_BOARD_LEAD or AGENT_ROLE_BOARD_WORKER";
            let problem = match value {
                0 => format!("is required: {ROLES}"),
                other => format!("{other} is not a known role: {ROLES}"),
            };
            LifecycleError::invalid("role", problem)
        })
}

fn statuses(values: &[i32]) -> Result<Vec<Status>> {
    values
        .iter()
        .map(|&v| {
            pb::AgentStatus::try_from(v)
                .ok()
                .and_then(convert::status_from)
                .ok_or_else(|| LifecycleError::invalid("statuses", format!("{v} is not a status")))
        })
        .collect()
}

pub fn provision(request: &pb::ProvisionRequest) -> Result<ProvisionSpec> {
    let agent_id = agent_id("agent_id", &request.agent_id)?;
    let gateway_id = gateway_id("gateway_id", &request.gateway_id)?;
    let role = role(request.role)?;
    let board_id = board_id(&request.board_id)?;
    match (role.needs_board(), &board_id) {
        (true, None) => {
            return Err(LifecycleError::invalid(
                "board_id",
                "is required for board roles",
            ));
        }
        (false, Some(_)) => {
            return Err(LifecycleError::invalid(
                "board_id",
                "must be empty for the gateway-main role",
            ));
        }
        _ => {}
    }
    let name = match text("name", request.name.trim(), MAX_NAME)? {
        name if name.is_empty() => agent_id.to_string(),
        name => name,
    };
    Ok(ProvisionSpec {
        agent_id,
        name,
        gateway_id,
        board_id,
        role,
        template_version: template_version(&request.template_version)?,
        rotate_token: request.rotate_token,
    })
}

pub fn register_gateway(request: &pb::RegisterGatewayRequest) -> Result<GatewaySpec> {
    let gateway_id = gateway_id("gateway_id", &request.gateway_id)?;
    let name = Some(text("name", request.name.trim(), MAX_NAME)?).filter(|n| !n.is_empty());
    Ok(GatewaySpec {
        gateway_id,
        name,
        rotate_token: request.rotate_token,
    })
}

/// `0` means the default; anything above the maximum is the maximum.
pub fn page_size(value: u32) -> usize {
    match value as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

pub fn list(request: &pb::ListAgentsRequest) -> Result<(AgentFilter, Option<AgentId>, usize)> {
    let filter = AgentFilter {
        agent_id: None,
        gateway_id: optional(&request.gateway_id, |v| gateway_id("gateway_id", v))?,
        board_id: board_id(&request.board_id)?,
        statuses: statuses(&request.statuses)?,
        drifted: request.drifted,
    };
    let after = optional(&request.page_token, |v| page_token::decode(v, &filter))?;
    Ok((filter, after, page_size(request.page_size)))
}

pub fn gateway_history(request: &pb::GetGatewayHistoryRequest) -> Result<(GatewayId, usize)> {
    let gateway = gateway_id("gateway_id", &request.gateway_id)?;
    Ok((gateway, page_size(request.page_size)))
}

/// The gateway and the (required) version to sync its templates to.
pub fn sync_gateway_templates(
    request: &pb::SyncGatewayTemplatesRequest,
) -> Result<(GatewayId, String)> {
    let gateway = gateway_id("gateway_id", &request.gateway_id)?;
    let version = template_version(&request.template_version)?;
    if version.trim().is_empty() {
        return Err(LifecycleError::invalid("template_version", "is required"));
    }
    Ok((gateway, version))
}

pub fn history(request: &pb::GetAgentHistoryRequest) -> Result<(AgentId, Option<u64>, usize)> {
    let agent = agent_id("agent_id", &request.agent_id)?;
    // Revisions are stored as Postgres bigint: above i64::MAX is no revision.
    let before = optional(&request.page_token, |v| {
        v.parse::<u64>()
            .ok()
            .filter(|&revision| i64::try_from(revision).is_ok())
            .ok_or_else(|| {
                LifecycleError::invalid("page_token", "is not a token from a previous page")
            })
    })?;
    Ok((agent, before, page_size(request.page_size)))
}

pub fn watch(request: &pb::WatchAgentRequest) -> Result<WatchRequest> {
    Ok(WatchRequest {
        filter: AgentFilter {
            agent_id: optional(&request.agent_id, |v| agent_id("agent_id", v))?,
            gateway_id: optional(&request.gateway_id, |v| gateway_id("gateway_id", v))?,
            board_id: board_id(&request.board_id)?,
            statuses: statuses(&request.statuses)?,
            drifted: request.drifted,
        },
        start_revision: request.start_revision,
        include_heartbeats: request.include_heartbeats,
        bookmark_interval: request
            .bookmark_interval
            .as_ref()
            .map(bookmark_interval)
            .transpose()?,
    })
}

/// Often enough to notice a dead connection within seconds; no more often,
/// so a client cannot make the server spin.
const BOOKMARK_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

fn bookmark_interval(value: &prost_types::Duration) -> Result<Duration> {
    let wanted = (value.seconds >= 0 && (0..1_000_000_000).contains(&value.nanos))
        .then(|| Duration::new(value.seconds as u64, value.nanos as u32))
        .filter(|d| BOOKMARK_INTERVALS.contains(d));
    wanted.ok_or_else(|| LifecycleError::invalid("bookmark_interval", "must be from 1s to 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::ProvisionRequest {
        pb::ProvisionRequest {
            agent_id: "agent-1".into(),
            name: String::new(),
            gateway_id: "gw-1".into(),
            board_id: "board-1".into(),
            role: pb::AgentRole::BoardWorker.into(),
            template_version: "v1".into(),
            rotate_token: false,
        }
    }

    fn field_of(result: Result<ProvisionSpec>) -> &'static str {
        match result {
            Err(LifecycleError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_watch_may_ask_for_bookmarks_from_every_second_to_every_hour() {
        let asking = |seconds, nanos| {
            watch(&pb::WatchAgentRequest {
                bookmark_interval: Some(prost_types::Duration { seconds, nanos }),
                ..Default::default()
            })
        };
        let unset = watch(&pb::WatchAgentRequest::default()).unwrap();
        assert_eq!(unset.bookmark_interval, None, "the service's setting");
        for (seconds, nanos, wanted) in [(1, 0, 1000), (2, 500_000_000, 2500), (3600, 0, 3_600_000)]
        {
            let parsed = asking(seconds, nanos).unwrap().bookmark_interval;
            assert_eq!(parsed, Some(Duration::from_millis(wanted)));
        }
        for (seconds, nanos) in [
            (0, 0),
            (0, 999_999_999),
            (3600, 1),
            (-1, 0),
            (1, -1),
            (1, 1_000_000_000),
        ] {
            match asking(seconds, nanos) {
                Err(LifecycleError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "bookmark_interval", "{seconds}s {nanos}ns")
                }
                other => panic!("{seconds}s {nanos}ns: {other:?}"),
            }
        }
    }

    #[test]
    fn a_valid_request_parses_and_the_name_defaults_to_the_id() {
        let spec = provision(&request()).unwrap();
        assert_eq!(spec.name, "agent-1");
        assert_eq!(spec.role, Role::BoardWorker);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Spoil = fn(&mut pb::ProvisionRequest);
        let cases: [(Spoil, &str); 8] = [
            (|r| r.agent_id.clear(), "agent_id"),
            (|r| r.agent_id = "has space".into(), "agent_id"),
            (|r| r.agent_id = "x".repeat(65), "agent_id"),
            (|r| r.gateway_id.clear(), "gateway_id"),
            (|r| r.role = 0, "role"),
            (|r| r.role = 99, "role"),
            (|r| r.board_id.clear(), "board_id"),
            (|r| r.name = "bad\u{7}name".into(), "name"),
        ];
        for (spoil, field) in cases {
            let mut r = request();
            spoil(&mut r);
            assert_eq!(field_of(provision(&r)), field);
        }
        let mut main = request();
        main.role = pb::AgentRole::GatewayMain.into();
        assert_eq!(field_of(provision(&main)), "board_id");
    }

    #[test]
    fn invisible_formatting_characters_are_refused_by_field() {
        for c in [
            '\u{202E}',
            '\u{202A}',
            '\u{2066}',
            '\u{2069}',
            '\u{200B}',
            '\u{200F}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{E0041}',
        ] {
            let mut r = request();
            r.name = format!("pay{c}roll");
            assert_eq!(field_of(provision(&r)), "name", "U+{:04X}", c as u32);
            let mut r = request();
            r.template_version = format!("v1{c}");
            assert_eq!(field_of(provision(&r)), "template_version");
            let gateway = pb::RegisterGatewayRequest {
                gateway_id: "gw".into(),
                name: format!("edge{c}"),
                rotate_token: false,
            };
            assert!(matches!(
                register_gateway(&gateway),
                Err(LifecycleError::InvalidArgument { field: "name", .. })
            ));
        }
        let mut fine = request();
        fine.name = "Ágent — ünïcode 名前 🚀".into();
        assert!(provision(&fine).is_ok());
    }

    #[test]
    fn history_tokens_beyond_a_bigint_are_refused() {
        let history_with = |token: String| {
            history(&pb::GetAgentHistoryRequest {
                agent_id: "a".into(),
                page_token: token,
                page_size: 0,
            })
        };
        assert_eq!(
            history_with(i64::MAX.to_string()).unwrap().1,
            Some(i64::MAX as u64)
        );
        for bad in [
            (1u64 << 63).to_string(),
            u64::MAX.to_string(),
            "-1".into(),
            "x".into(),
        ] {
            assert!(matches!(
                history_with(bad),
                Err(LifecycleError::InvalidArgument {
                    field: "page_token",
                    ..
                })
            ));
        }
    }

    #[test]
    fn gateway_failure_texts_are_bounded_and_printable() {
        assert_eq!(ack_error(""), "no reason given");
        assert_eq!(ack_error("image\nmissing\u{1b}[31m"), "image missing [31m");
        let long = ack_error(&"x".repeat(100_000));
        assert_eq!(long.chars().count(), 513);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(1_000_000), MAX_PAGE_SIZE);
    }

    #[test]
    fn a_template_sync_needs_a_gateway_and_a_clean_version() {
        let request = |gateway_id: &str, template_version: &str| pb::SyncGatewayTemplatesRequest {
            gateway_id: gateway_id.into(),
            template_version: template_version.into(),
        };
        let (gateway, version) = sync_gateway_templates(&request("gw-1", "v2")).unwrap();
        assert_eq!((gateway.as_str(), version.as_str()), ("gw-1", "v2"));
        let cases = [
            (request("", "v2"), "gateway_id"),
            (request("gw-1", ""), "template_version"),
            (request("gw-1", "  "), "template_version"),
            (request("gw-1", "v2\n"), "template_version"),
            (
                request("gw-1", &"v".repeat(MAX_TEMPLATE_VERSION + 1)),
                "template_version",
            ),
        ];
        for (bad, field) in cases {
            assert!(
                matches!(
                    sync_gateway_templates(&bad),
                    Err(LifecycleError::InvalidArgument { field: f, .. }) if f == field
                ),
                "{bad:?}"
            );
        }
    }
}
