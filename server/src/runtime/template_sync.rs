//! Template syncs asked of gateways: committed (request, command id and
//! history entry) before they go out, so that whatever the store holds a
//! restart or a new leader sends again under the same id until the gateway
//! answers (see `engine::template_sync`).

use super::actor::Command;
use super::gateways::{Delivery, GatewayCommand};
use super::{Lifecycle, LifecycleError};
use crate::engine::GatewayId;

/// A template sync given to a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncRequested {
    pub command_id: u64,
    /// Out on an open stream now; false: kept for the gateway's next one.
    pub sent: bool,
}

impl Lifecycle {
    /// Asks the gateway to sync its templates to `template_version`. A
    /// gateway not keeping up with its commands is refused, and nothing is
    /// recorded. Otherwise the request is committed (and written in its
    /// history), then sent if the gateway is connected, else on its next
    /// stream, and resent until acknowledged. A newer request replaces an
    /// unacknowledged older one.
    pub async fn sync_gateway_templates(
        &self,
        gateway_id: &GatewayId,
        template_version: String,
    ) -> Result<SyncRequested, LifecycleError> {
        self.ensure_leader()?;
        let shared = &self.shared;
        if shared.engine.lock().gateway(gateway_id).is_none() {
            return Err(LifecycleError::NotFound(format!(
                "gateway {gateway_id} is not registered"
            )));
        }
        if let Err(backlogged) = shared.hub.admits(gateway_id) {
            tracing::warn!(%gateway_id, template_version, "gateway.template_sync.refused");
            return Err(LifecycleError::Throttled {
                message: format!(
                    "{backlogged}: template sync to {template_version} not requested; \
                     ask again once it has caught up"
                ),
                retry_after: shared.settings.gateway_ack_timeout,
            });
        }
        let command_id = shared.hub.next_command_id();
        let sync = self
            .call(|reply| Command::RequestTemplateSync {
                gateway_id: gateway_id.clone(),
                command_id,
                template_version,
                reply,
            })
            .await?;
        let now = tokio::time::Instant::now();
        // Under the engine lock (taken before the hub's, everywhere), so a
        // sync replaced or answered meanwhile is not given out again.
        let delivery = {
            let engine = shared.engine.lock();
            let current = engine
                .pending_sync(gateway_id)
                .is_some_and(|pending| pending.command_id == command_id);
            current.then(|| {
                let command = GatewayCommand::TemplateSync(sync);
                shared.hub.send_as(gateway_id, command_id, command, now)
            })
        };
        let sent = matches!(delivery, Some(Delivery::Sent(_)));
        tracing::info!(%gateway_id, command_id, sent, "gateway.template_sync.requested");
        Ok(SyncRequested { command_id, sent })
    }
}
