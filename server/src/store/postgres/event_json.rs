//! An event's agent as it goes into `agent_events.agent` (jsonb), written
//! for Postgres to parse cheaply: the keys in the order jsonb keeps them
//! (shorter first, then bytewise), so that its sort of each object finds
//! them sorted, and no key for a field that is unset. Read back with
//! `Agent`'s own `Deserialize` (an absent optional field is `None`).
//! Converting the derived form (struct order, every null) was about 5 us of
//! Postgres CPU per event; this form about half that.

use std::error::Error;
use std::io::Write;

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use tokio_postgres::types::{IsNull, ToSql, Type, accepts, to_sql_checked};

use crate::engine::Agent;

#[derive(Debug)]
pub(super) struct StoredAgent<'a>(pub &'a Agent);

impl StoredAgent<'_> {
    /// The object, each key written as it is (serde's map machinery was
    /// most of the 5,000 instructions an event's agent cost the server).
    fn write(&self, out: &mut impl Write) -> serde_json::Result<()> {
        fn entry(
            out: &mut impl Write,
            key: &[u8],
            value: &(impl Serialize + ?Sized),
        ) -> serde_json::Result<()> {
            out.write_all(key).map_err(serde_json::Error::io)?;
            serde_json::to_writer(&mut *out, value)
        }
        let a = self.0;
        // Keys in jsonb's order: by length, then bytewise.
        entry(out, b"{\"id\":", a.id.as_str())?;
        entry(out, b",\"name\":", &*a.name)?;
        entry(out, b",\"role\":", a.role.as_str())?;
        entry(out, b",\"status\":", a.status.as_str())?;
        if let Some(board) = &a.board_id {
            entry(out, b",\"board_id\":", board.as_str())?;
        }
        entry(out, b",\"revision\":", &a.revision)?;
        entry(out, b",\"wake_held\":", &a.wake_held)?;
        entry(out, b",\"created_at\":", &a.created_at)?;
        entry(out, b",\"gateway_id\":", a.gateway_id.as_str())?;
        entry(out, b",\"generation\":", &a.generation)?;
        entry(out, b",\"updated_at\":", &a.updated_at)?;
        if let Some(seen) = &a.last_seen_at {
            entry(out, b",\"last_seen_at\":", seen)?;
        }
        entry(out, b",\"wake_attempts\":", &a.wake_attempts)?;
        if let Some(reason) = &a.offline_reason {
            entry(out, b",\"offline_reason\":", &**reason)?;
        }
        if let Some(expires) = &a.lease_expires_at {
            entry(out, b",\"lease_expires_at\":", expires)?;
        }
        if let Some(woken) = &a.last_wake_sent_at {
            entry(out, b",\"last_wake_sent_at\":", woken)?;
        }
        if let Some(deadline) = &a.checkin_deadline_at {
            entry(out, b",\"checkin_deadline_at\":", deadline)?;
        }
        if let Some(error) = &a.last_provision_error {
            entry(out, b",\"last_provision_error\":", &**error)?;
        }
        entry(
            out,
            b",\"desired_template_version\":",
            &*a.desired_template_version,
        )?;
        entry(
            out,
            b",\"reported_template_version\":",
            &*a.reported_template_version,
        )?;
        out.write_all(b"}").map_err(serde_json::Error::io)
    }
}

impl ToSql for StoredAgent<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // jsonb's binary form: a version byte, then the text.
        out.put_u8(1);
        self.write(&mut out.writer())?;
        Ok(IsNull::No)
    }

    accepts!(JSONB);
    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::*;
    use crate::engine::{AgentId, BoardId, GatewayId, Role, SharedStr, Status, Timestamp};

    fn agent(set: bool) -> Agent {
        let at = |micros| set.then(|| Timestamp::from_micros(micros));
        Agent {
            id: AgentId::parse("agent-1").unwrap(),
            name: SharedStr::from("a \"quoted\" name"),
            gateway_id: GatewayId::parse("gw-1").unwrap(),
            board_id: set.then(|| BoardId::parse("board-1").unwrap()),
            role: Role::BoardWorker,
            status: Status::Offline,
            generation: 7,
            wake_attempts: 3,
            last_wake_sent_at: at(1_000),
            checkin_deadline_at: at(2_000),
            last_seen_at: at(3_000),
            lease_expires_at: at(4_000),
            last_provision_error: set.then(|| SharedStr::from("no check-in")),
            offline_reason: set.then(|| SharedStr::from("lease expired")),
            desired_template_version: SharedStr::from("v2"),
            reported_template_version: SharedStr::from("v1"),
            created_at: Timestamp::from_micros(5_000),
            updated_at: Timestamp::from_micros(6_000),
            revision: 42,
            wake_held: set,
            token_hash: Default::default(),
        }
    }

    fn stored(agent: &Agent) -> String {
        let mut json = Vec::new();
        StoredAgent(agent).write(&mut json).unwrap();
        String::from_utf8(json).unwrap()
    }

    #[test]
    fn reads_back_as_the_same_agent() {
        for set in [true, false] {
            let agent = agent(set);
            let read: Agent = serde_json::from_str(&stored(&agent)).unwrap();
            assert_eq!(read, agent);
        }
    }

    #[test]
    fn holds_what_the_derived_form_holds_but_its_nulls() {
        for set in [true, false] {
            let agent = agent(set);
            let Value::Object(derived) = serde_json::to_value(&agent).unwrap() else {
                panic!("an object");
            };
            let derived: Map<String, Value> =
                derived.into_iter().filter(|(_, v)| !v.is_null()).collect();
            let ours: Value = serde_json::from_str(&stored(&agent)).unwrap();
            assert_eq!(ours, Value::Object(derived));
        }
    }

    #[test]
    fn keys_come_in_jsonb_order() {
        let json = stored(&agent(true));
        // serde_json's own map keeps insertion order only with a feature
        // this crate does not enable: read the keys off the text.
        let keys: Vec<&str> = json
            .split('"')
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[1].starts_with(':'))
            .map(|w| w[0])
            .collect();
        assert_eq!(keys.len(), 20, "{json}");
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
        assert_eq!(keys, sorted);
    }
}
