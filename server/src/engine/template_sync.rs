//! Template syncs asked of gateways and not yet acknowledged.
//!
//! A sync is committed before it goes out, with the command id it is sent
//! under, so a restart or a new leader sends the same command again (same
//! id, which the gateway uses to drop copies) until the gateway answers. A
//! gateway has at most one: a newer request replaces an unanswered older
//! one. The request and the answer are both written in the gateway's history.

use super::batch::GatewayTransition;
use super::model::{GatewayId, Timestamp};
use super::{Batch, Engine, EngineError};

/// A template sync a gateway was asked for and has not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PendingSync {
    pub gateway_id: GatewayId,
    /// The id the command goes out under, every time it goes out.
    pub command_id: u64,
    pub template_version: String,
    pub requested_at: Timestamp,
}

impl Engine {
    /// The gateway's unacknowledged template sync, if any.
    pub fn pending_sync(&self, gateway_id: &GatewayId) -> Option<&PendingSync> {
        self.template_syncs.get(gateway_id)
    }

    /// Every unacknowledged template sync, by gateway.
    pub fn pending_syncs(&self) -> impl Iterator<Item = &PendingSync> {
        self.template_syncs.values()
    }

    /// Asks the gateway to sync its templates to `template_version` under
    /// `command_id`, replacing any sync it has not acknowledged, and writes
    /// the request in its history.
    pub fn request_template_sync(
        &mut self,
        batch: &mut Batch,
        gateway_id: &GatewayId,
        command_id: u64,
        template_version: String,
    ) -> Result<PendingSync, EngineError> {
        let note = format!("template sync to {template_version} (command {command_id}) requested");
        self.note_gateway(batch, gateway_id, note)?;
        let sync = PendingSync {
            gateway_id: gateway_id.clone(),
            command_id,
            template_version,
            requested_at: batch.now,
        };
        batch
            .template_syncs
            .insert(gateway_id.clone(), Some(sync.clone()));
        Ok(sync)
    }

    /// The gateway answered the sync sent under `command_id`: its outcome
    /// goes in the history, and the sync is done with, unless a newer one
    /// has replaced it since.
    pub fn template_sync_acknowledged(
        &mut self,
        batch: &mut Batch,
        gateway_id: &GatewayId,
        command_id: u64,
        template_version: &str,
        outcome: &Result<(), String>,
    ) -> Result<(), EngineError> {
        let what = match outcome {
            Ok(()) => "synced".to_owned(),
            Err(error) => format!("failed: {error}"),
        };
        let note = format!("template sync to {template_version} (command {command_id}) {what}");
        self.note_gateway(batch, gateway_id, note)?;
        let current = match batch.template_syncs.get(gateway_id) {
            Some(staged) => staged.as_ref(),
            None => self.template_syncs.get(gateway_id),
        };
        if current.is_some_and(|sync| sync.command_id == command_id) {
            batch.template_syncs.insert(gateway_id.clone(), None);
        }
        Ok(())
    }

    /// Writes something done with the gateway that leaves its link as it
    /// is (a template sync asked for, or answered) in its history.
    pub fn note_gateway(
        &mut self,
        batch: &mut Batch,
        gateway_id: &GatewayId,
        reason: String,
    ) -> Result<(), EngineError> {
        let gateway = self
            .gateway_in(batch, gateway_id)
            .ok_or_else(|| EngineError::GatewayNotFound(gateway_id.clone()))?;
        batch.gateway_events.push(GatewayTransition {
            gateway_id: gateway.id.clone(),
            at: batch.now,
            from: gateway.state(),
            to: gateway.state(),
            reason,
            wakes_released: 0,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{GatewaySpec, Policy, TokenHash};

    fn gw() -> GatewayId {
        GatewayId::parse("gw-1").unwrap()
    }

    fn engine() -> Engine {
        let mut engine = Engine::new(Policy::default());
        let mut batch = engine.begin(Timestamp::from_micros(1));
        let spec = GatewaySpec {
            gateway_id: gw(),
            name: None,
            rotate_token: false,
        };
        engine.register_gateway(&mut batch, spec, TokenHash([1; 32]));
        engine.commit(batch);
        engine
    }

    fn reasons(batch: &Batch) -> Vec<&str> {
        batch
            .gateway_events()
            .iter()
            .map(|t| t.reason.as_str())
            .collect()
    }

    #[test]
    fn a_request_is_pending_once_committed_and_an_acknowledgement_ends_it() {
        let mut engine = engine();
        let mut batch = engine.begin(Timestamp::from_micros(2));
        let sync = engine
            .request_template_sync(&mut batch, &gw(), 17, "v2".into())
            .unwrap();
        assert_eq!(engine.pending_sync(&gw()), None, "staged only");
        assert_eq!(
            reasons(&batch),
            ["template sync to v2 (command 17) requested"]
        );
        engine.commit(batch);
        assert_eq!(engine.pending_sync(&gw()), Some(&sync));
        assert_eq!(sync.requested_at, Timestamp::from_micros(2));

        let mut batch = engine.begin(Timestamp::from_micros(3));
        let failed = Err("registry unreachable".to_owned());
        engine
            .template_sync_acknowledged(&mut batch, &gw(), 17, "v2", &failed)
            .unwrap();
        assert_eq!(
            reasons(&batch),
            ["template sync to v2 (command 17) failed: registry unreachable"]
        );
        engine.commit(batch);
        assert_eq!(engine.pending_sync(&gw()), None);
    }

    #[test]
    fn a_newer_request_replaces_the_older_and_a_late_answer_to_the_older_keeps_it() {
        let mut engine = engine();
        for (id, version) in [(17, "v2"), (18, "v3")] {
            let mut batch = engine.begin(Timestamp::from_micros(2));
            engine
                .request_template_sync(&mut batch, &gw(), id, version.into())
                .unwrap();
            engine.commit(batch);
        }
        let mut batch = engine.begin(Timestamp::from_micros(3));
        engine
            .template_sync_acknowledged(&mut batch, &gw(), 17, "v2", &Ok(()))
            .unwrap();
        engine.commit(batch);
        let pending = engine.pending_sync(&gw()).unwrap();
        assert_eq!(
            (pending.command_id, pending.template_version.as_str()),
            (18, "v3")
        );
    }

    #[test]
    fn a_request_and_its_answer_in_one_batch_leave_nothing_pending() {
        let mut engine = engine();
        let mut batch = engine.begin(Timestamp::from_micros(2));
        engine
            .request_template_sync(&mut batch, &gw(), 17, "v2".into())
            .unwrap();
        engine
            .template_sync_acknowledged(&mut batch, &gw(), 17, "v2", &Ok(()))
            .unwrap();
        engine.commit(batch);
        assert_eq!(engine.pending_sync(&gw()), None);
    }

    #[test]
    fn an_unknown_gateway_is_refused_and_nothing_is_staged() {
        let mut engine = engine();
        let unknown = GatewayId::parse("gw-nope").unwrap();
        let mut batch = engine.begin(Timestamp::from_micros(2));
        let refused = engine.request_template_sync(&mut batch, &unknown, 17, "v2".into());
        assert_eq!(refused, Err(EngineError::GatewayNotFound(unknown)));
        assert!(!batch.has_writes());
    }
}
