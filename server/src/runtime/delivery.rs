//! Delivery to gateways that survives reconnects: a gateway's stream opens
//! with every command it has not acknowledged, an open stream gets a command
//! again after the acknowledgement timeout, and acknowledgements turn into
//! engine commands. Commands keep their id however often they go out.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::actor::Command;
use super::gateways::{GatewayCommand, Outbound, Redelivered};
use super::metrics::Metrics;
use super::shared::Shared;
use super::{Lifecycle, LifecycleError, tokens};
use crate::engine::{Engine, GatewayId};

/// An authenticated gateway's connection. Dropping it disconnects.
pub struct GatewaySession {
    gateway_id: GatewayId,
    session: u64,
    shared: Arc<Shared>,
}

impl GatewaySession {
    pub fn gateway_id(&self) -> &GatewayId {
        &self.gateway_id
    }

    /// Handles the gateway's acknowledgement of a command. A command
    /// acknowledged already (it went out twice and both copies were
    /// answered), or superseded, is refused and changes nothing.
    pub fn acknowledge(
        &self,
        command_id: u64,
        outcome: Result<(), String>,
    ) -> Result<(), LifecycleError> {
        let command = self
            .shared
            .hub
            .acknowledge(&self.gateway_id, self.session, command_id)
            .ok_or_else(|| {
                LifecycleError::invalid(
                    "command_id",
                    format!("no unacknowledged command {command_id}"),
                )
            })?;
        let gateway_id = &self.gateway_id;
        let followup = match (command, outcome) {
            (GatewayCommand::Wake(order), Err(error)) => {
                Metrics::add(&self.shared.metrics.wakes_failed);
                let (agent_id, generation, attempt) =
                    (order.agent_id, order.generation, order.attempt);
                tracing::warn!(%gateway_id, command_id, %agent_id, generation, attempt, %error, "lifecycle.wake.failed");
                // Fenced by generation and attempt: a late failure of an
                // older wake changes nothing (see `Engine::wake_failed`).
                Some(Command::WakeFailed {
                    agent_id,
                    generation,
                    attempt,
                    error: format!("gateway {gateway_id} reported: {error}"),
                })
            }
            (GatewayCommand::Wake(order), Ok(())) => {
                let (agent_id, generation, attempt) =
                    (order.agent_id, order.generation, order.attempt);
                tracing::info!(%gateway_id, command_id, %agent_id, generation, attempt, "lifecycle.wake.delivered");
                None
            }
            (GatewayCommand::Retire(retire), Ok(())) => Some(Command::RetireDelivered(retire)),
            (GatewayCommand::Retire(retire), Err(error)) => {
                tracing::warn!(%gateway_id, command_id, agent_id = %retire.agent_id, %error, "retire failed; resent on the next connection");
                None
            }
            (GatewayCommand::TemplateSync(sync), outcome) => {
                let version = &sync.template_version;
                match &outcome {
                    Ok(()) => {
                        tracing::info!(%gateway_id, command_id, template_version = %version, "gateway.template_sync.done")
                    }
                    Err(error) => {
                        tracing::warn!(%gateway_id, command_id, template_version = %version, %error, "gateway.template_sync.failed")
                    }
                }
                Some(Command::TemplateSyncAcknowledged { sync, outcome })
            }
        };
        if let Some(command) = followup
            && self.shared.commands.try_send(command).is_err()
        {
            // The deadline timers still cover the wake; the retire and the
            // sync (still pending in the store) are resent on the next
            // connection, and the gateway answers a copy again.
            tracing::warn!(%gateway_id, "writer queue full; acknowledgement dropped");
        }
        Ok(())
    }
}

impl Drop for GatewaySession {
    fn drop(&mut self) {
        let gateway_id = &self.gateway_id;
        if self.shared.hub.disconnect(gateway_id, self.session) {
            tracing::info!(%gateway_id, session = self.session, "gateway disconnected");
            let gone = Command::GatewayDisconnected(gateway_id.clone());
            if self.shared.commands.try_send(gone).is_err() {
                // Its wakes find no stream and are held from then on.
                tracing::warn!(%gateway_id, "writer queue full; disconnection noted late");
            }
        } else {
            // A newer stream took over; "gateway connection replaced" said so.
            tracing::debug!(%gateway_id, session = self.session, "replaced gateway stream ended");
        }
    }
}

impl Lifecycle {
    /// Authenticates a gateway and opens its command stream, replacing any
    /// older stream of the same gateway. The stream starts with every
    /// command the gateway has not acknowledged (same ids), and retires and
    /// the template sync it owes from before this leader started.
    pub fn connect_gateway(
        &self,
        token: &str,
    ) -> Result<(GatewaySession, mpsc::Receiver<Outbound>), LifecycleError> {
        self.ensure_leader()?;
        let shared = &self.shared;
        let hash = tokens::hash(token);
        // The engine lock is taken before the hub's, everywhere.
        let engine = shared.engine.lock();
        let gateway_id = engine
            .authenticate_gateway(&hash)
            .cloned()
            .ok_or_else(|| LifecycleError::Unauthenticated("invalid gateway token".into()))?;
        let connection = shared.hub.connect(&gateway_id, shared.clock.now());
        for retire in engine.pending_retires(&gateway_id) {
            shared.hub.hold(&gateway_id, GatewayCommand::Retire(retire));
        }
        if let Some(sync) = engine.pending_sync(&gateway_id) {
            let command = GatewayCommand::TemplateSync(sync.clone());
            shared.hub.hold_as(&gateway_id, sync.command_id, command);
        }
        let now = tokio::time::Instant::now();
        let redelivered = shared
            .hub
            .redeliver(&gateway_id, None, now, |c| still_wanted(&engine, c));
        drop(engine);
        let session = connection.session;
        match connection.replaced {
            Some(replaced) => {
                tracing::info!(%gateway_id, session, replaced, "gateway connection replaced")
            }
            None => tracing::info!(%gateway_id, session, "gateway connected"),
        }
        log_redelivered(shared, &gateway_id, &redelivered, "reconnected");
        // The writer releases the gateway's held wakes onto this stream.
        let connected = Command::GatewayConnected(gateway_id.clone());
        if shared.commands.try_send(connected).is_err() {
            tracing::warn!(%gateway_id, "writer queue full; held wakes wait for the next connection");
        }
        let session = GatewaySession {
            gateway_id,
            session,
            shared: shared.clone(),
        };
        Ok((session, connection.commands))
    }
}

/// Whether a pending command still has a purpose: a wake whose agent still
/// awaits the check-in of that very attempt, a retire not yet done, a
/// template sync not yet acknowledged.
pub(super) fn still_wanted(engine: &Engine, command: &GatewayCommand) -> bool {
    match command {
        GatewayCommand::Wake(order) => engine.agent(&order.agent_id).is_some_and(|agent| {
            agent.generation == order.generation
                && agent.wake_attempts == order.attempt
                && agent.awaiting_checkin()
        }),
        GatewayCommand::Retire(retire) => engine.retire_pending(retire),
        // Until acknowledged or replaced by a newer one.
        GatewayCommand::TemplateSync(sync) => engine
            .pending_sync(&sync.gateway_id)
            .is_some_and(|pending| pending.command_id == sync.command_id),
    }
}

fn log_redelivered(shared: &Shared, gateway_id: &GatewayId, done: &Redelivered, why: &str) {
    for outgoing in &done.resent {
        Metrics::add(&shared.metrics.commands_resent);
        let (command_id, sends) = (outgoing.command_id, outgoing.sends);
        let kind = outgoing.command.kind();
        match &outgoing.command {
            GatewayCommand::Wake(order) => tracing::info!(
                %gateway_id, command_id, kind, sends, why,
                agent_id = %order.agent_id, generation = order.generation, attempt = order.attempt,
                "gateway.command.resent"
            ),
            GatewayCommand::Retire(retire) => tracing::info!(
                %gateway_id, command_id, kind, sends, why,
                agent_id = %retire.agent_id, generation = retire.generation,
                "gateway.command.resent"
            ),
            GatewayCommand::TemplateSync(sync) => tracing::info!(
                %gateway_id, command_id, kind, sends, why,
                template_version = %sync.template_version,
                "gateway.command.resent"
            ),
        }
    }
    for (command_id, command) in &done.dropped {
        tracing::debug!(%gateway_id, command_id, kind = command.kind(), "pending command no longer wanted; dropped");
    }
}

/// Sends commands again on open streams when no acknowledgement came within
/// the acknowledgement timeout.
pub(super) async fn resend_unacknowledged(shared: Arc<Shared>, stop: CancellationToken) {
    let timeout = shared.settings.gateway_ack_timeout;
    // Checked four times per timeout: a command waits at most a quarter of
    // the timeout longer than the timeout itself.
    let mut interval = super::tasks::every((timeout / 4).max(std::time::Duration::from_millis(10)));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        resend_overdue(&shared);
    }
}

/// One round of [`resend_unacknowledged`].
pub(super) fn resend_overdue(shared: &Shared) {
    if !shared.leadership.may_act() {
        return;
    }
    let now = tokio::time::Instant::now();
    let Some(sent_before) = now.checked_sub(shared.settings.gateway_ack_timeout) else {
        return;
    };
    for gateway_id in shared.hub.gateways_with_pending() {
        let redelivered = {
            let engine = shared.engine.lock();
            shared
                .hub
                .redeliver(&gateway_id, Some(sent_before), now, |c| {
                    still_wanted(&engine, c)
                })
        };
        log_redelivered(shared, &gateway_id, &redelivered, "ack timeout");
    }
}
