//! Rollout requests in, domain values out; INVALID_ARGUMENT naming the field
//! for anything else.

use mission_control_proto::v1 as pb;

use super::super::validate::{agent_id, board_id, gateway_id, optional, template_version};
use crate::engine::RolloutId;
use crate::engine::rollout::{Limit, RolloutSpec, Selection};
use crate::runtime::LifecycleError;

type Result<T> = std::result::Result<T, LifecycleError>;

/// At most this many agents named in one request (a 4 KiB request holds
/// far fewer anyway).
const MAX_AGENT_IDS: usize = 1000;

pub fn rollout_id(value: &str) -> Result<RolloutId> {
    RolloutId::parse(value).map_err(|e| LifecycleError::invalid("rollout_id", e.to_string()))
}

/// A number of agents ("10") or a share of the selection ("25%").
pub fn limit(field: &'static str, value: &str, allow_zero: bool) -> Result<Limit> {
    let invalid = |why: &str| LifecycleError::invalid(field, format!("{value:?} {why}"));
    let (digits, percent) = match value.trim().strip_suffix('%') {
        Some(digits) => (digits.trim(), true),
        None => (value.trim(), false),
    };
    let n: u32 = digits
        .parse()
        .map_err(|_| invalid("is not a number of agents (\"10\") or a share (\"25%\")"))?;
    if percent && n > 100 {
        return Err(invalid("is more than 100%"));
    }
    if n == 0 && !allow_zero {
        return Err(invalid("must be at least 1 (or 1%)"));
    }
    Ok(if percent {
        Limit::Percent(n)
    } else {
        Limit::Count(n)
    })
}

pub fn start(request: &pb::StartRolloutRequest) -> Result<RolloutSpec> {
    let version = template_version(&request.template_version)?;
    if version.trim().is_empty() {
        return Err(LifecycleError::invalid("template_version", "is required"));
    }
    let fleet = !request.gateway_id.is_empty() || !request.board_id.is_empty();
    let selection = match (fleet, request.agent_ids.is_empty()) {
        (false, true) => {
            return Err(LifecycleError::invalid(
                "selection",
                "give a gateway_id, a board_id (or both), or agent_ids",
            ));
        }
        (true, false) => {
            return Err(LifecycleError::invalid(
                "agent_ids",
                "name agents, or a gateway and board, not both",
            ));
        }
        (true, true) => Selection::Fleet {
            gateway_id: optional(&request.gateway_id, |v| gateway_id("gateway_id", v))?,
            board_id: board_id(&request.board_id)?,
        },
        (false, false) => {
            if request.agent_ids.len() > MAX_AGENT_IDS {
                return Err(LifecycleError::invalid(
                    "agent_ids",
                    format!("at most {MAX_AGENT_IDS} agents per rollout"),
                ));
            }
            Selection::Agents(
                request
                    .agent_ids
                    .iter()
                    .map(|id| agent_id("agent_ids", id))
                    .collect::<Result<_>>()?,
            )
        }
    };
    let max_in_flight = match request.max_in_flight.as_str() {
        "" => Limit::Percent(25),
        value => limit("max_in_flight", value, false)?,
    };
    let failure_budget = match request.failure_budget.as_str() {
        "" => Limit::Count(0),
        value => limit("failure_budget", value, true)?,
    };
    Ok(RolloutSpec {
        template_version: version,
        selection,
        max_in_flight,
        failure_budget,
    })
}

pub fn resume(request: &pb::ResumeRolloutRequest) -> Result<(RolloutId, Option<Limit>)> {
    let id = rollout_id(&request.rollout_id)?;
    let budget = optional(&request.failure_budget, |v| {
        limit("failure_budget", v, true)
    })?;
    Ok((id, budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<RolloutSpec>) -> &'static str {
        match result {
            Err(LifecycleError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    fn request() -> pb::StartRolloutRequest {
        pb::StartRolloutRequest {
            template_version: "2026.12".into(),
            gateway_id: "gw-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn limits_are_numbers_or_shares_and_default_sensibly() {
        assert_eq!(limit("f", "10", false).unwrap(), Limit::Count(10));
        assert_eq!(limit("f", "25%", false).unwrap(), Limit::Percent(25));
        assert_eq!(limit("f", "0", true).unwrap(), Limit::Count(0));
        for bad in ["0", "0%", "101%", "ten", "-1", "1.5", "%"] {
            assert!(limit("f", bad, false).is_err(), "{bad}");
        }
        let spec = start(&request()).unwrap();
        assert_eq!(spec.max_in_flight, Limit::Percent(25));
        assert_eq!(spec.failure_budget, Limit::Count(0));
    }

    #[test]
    fn each_bad_field_is_named() {
        let with = |change: fn(&mut pb::StartRolloutRequest)| {
            let mut request = request();
            change(&mut request);
            start(&request)
        };
        assert_eq!(
            field_of(with(|r| r.template_version.clear())),
            "template_version"
        );
        assert_eq!(
            field_of(with(|r| r.template_version = "v2\u{202e}".into())),
            "template_version"
        );
        assert_eq!(
            field_of(with(|r| r.template_version = "v".repeat(129))),
            "template_version"
        );
        assert_eq!(field_of(with(|r| r.gateway_id.clear())), "selection");
        assert_eq!(
            field_of(with(|r| r.agent_ids = vec!["a".into()])),
            "agent_ids"
        );
        assert_eq!(
            field_of(with(|r| r.gateway_id = "no spaces".into())),
            "gateway_id"
        );
        assert_eq!(
            field_of(with(|r| r.max_in_flight = "0".into())),
            "max_in_flight"
        );
        assert_eq!(
            field_of(with(|r| r.failure_budget = "lots".into())),
            "failure_budget"
        );
        let agents = with(|r| {
            r.gateway_id.clear();
            r.agent_ids = vec!["a".into(), "b/".into()];
        });
        assert_eq!(field_of(agents), "agent_ids");
    }
}
