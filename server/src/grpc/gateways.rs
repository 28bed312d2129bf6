//! The `Gateways` service, including each gateway's command stream.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use mission_control_proto::v1 as pb;
use mission_control_proto::v1::gateways_server::Gateways;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::lifecycle::token;
use mission_control_proto::metadata::GATEWAY_TOKEN_NAME;

use super::{convert, validate};
use crate::runtime::{CloseReason, GatewaySession, Lifecycle, Outbound};

pub struct GatewayService {
    lifecycle: Lifecycle,
}

impl GatewayService {
    pub fn new(lifecycle: Lifecycle) -> Self {
        Self { lifecycle }
    }
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::GatewayCommand, Status>> + Send>>;

/// Reads the gateway's acknowledgements until it hangs up.
async fn read_acks(
    session: Arc<GatewaySession>,
    mut inbound: Streaming<pb::GatewayMessage>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = inbound.message() => message,
        };
        let ack = match message {
            Ok(Some(pb::GatewayMessage {
                message: Some(pb::gateway_message::Message::Ack(ack)),
            })) => ack,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        };
        let outcome = match pb::AckOutcome::try_from(ack.outcome) {
            Ok(pb::AckOutcome::Delivered) => Ok(()),
            Ok(pb::AckOutcome::Failed) => Err(validate::ack_error(&ack.error)),
            _ => {
                tracing::warn!(gateway_id = %session.gateway_id(), command_id = %ack.command_id, "acknowledgement without an outcome ignored");
                continue;
            }
        };
        let acknowledged = ack
            .command_id
            .parse::<u64>()
            .map_err(|_| "not a command id".to_owned())
            .and_then(|id| session.acknowledge(id, outcome).map_err(|e| e.to_string()));
        if let Err(error) = acknowledged {
            tracing::warn!(gateway_id = %session.gateway_id(), command_id = %ack.command_id, %error, "acknowledgement ignored");
        }
    }
}

/// Connected first, then commands until shutdown, supersession or hang-up.
fn command_stream(
    session: Arc<GatewaySession>,
    commands: mpsc::Receiver<Outbound>,
    stop: CancellationToken,
) -> CommandStream {
    let connected = pb::GatewayCommand {
        command_id: String::new(),
        command: Some(pb::gateway_command::Command::Connected(pb::Connected {
            gateway_id: session.gateway_id().to_string(),
        })),
    };
    let first = futures_util::stream::once(async move { Ok(connected) });
    let rest = futures_util::stream::unfold(Some((session, commands, stop)), |state| async move {
        let (session, mut commands, stop) = state?;
        // Commands already queued go out before a drain ends the stream.
        let outbound = tokio::select! {
            biased;
            outbound = commands.recv() => outbound?,
            _ = stop.cancelled() => return Some((Err(Status::unavailable("the server is shutting down")), None)),
        };
        match outbound {
            Outbound::Command {
                command_id,
                command,
            } => {
                let message = convert::gateway_command(command_id, &command);
                Some((Ok(message), Some((session, commands, stop))))
            }
            Outbound::Closed(CloseReason::Superseded) => Some((
                Err(Status::aborted(
                    "a newer connection of this gateway replaced this one",
                )),
                None,
            )),
            Outbound::Closed(CloseReason::NotLeader) => Some((
                Err(Status::unavailable(
                    "this replica stopped leading; connect again",
                )),
                None,
            )),
            Outbound::Closed(CloseReason::TokenRotated) => Some((
                Err(Status::unauthenticated(
                    "the gateway token was rotated; connect with the new token",
                )),
                None,
            )),
        }
    });
    Box::pin(futures_util::StreamExt::chain(first, rest))
}

#[tonic::async_trait]
impl Gateways for GatewayService {
    async fn register_gateway(
        &self,
        request: Request<pb::RegisterGatewayRequest>,
    ) -> Result<Response<pb::RegisterGatewayResponse>, Status> {
        let spec = validate::register_gateway(request.get_ref())?;
        let outcome = self.lifecycle.register_gateway(spec).await?;
        Ok(Response::new(pb::RegisterGatewayResponse {
            gateway: Some(convert::gateway(&outcome.gateway)),
            gateway_token: outcome.token.unwrap_or_default(),
            created: outcome.created,
        }))
    }

    async fn list_gateways(
        &self,
        _request: Request<pb::ListGatewaysRequest>,
    ) -> Result<Response<pb::ListGatewaysResponse>, Status> {
        let gateways = self.lifecycle.list_gateways();
        Ok(Response::new(pb::ListGatewaysResponse {
            gateways: gateways.iter().map(convert::gateway).collect(),
        }))
    }

    async fn sync_gateway_templates(
        &self,
        request: Request<pb::SyncGatewayTemplatesRequest>,
    ) -> Result<Response<pb::SyncGatewayTemplatesResponse>, Status> {
        let (gateway, version) = validate::sync_gateway_templates(request.get_ref())?;
        let requested = self
            .lifecycle
            .sync_gateway_templates(&gateway, version)
            .await?;
        Ok(Response::new(pb::SyncGatewayTemplatesResponse {
            command_id: requested.command_id.to_string(),
            sent: requested.sent,
        }))
    }

    async fn get_gateway_history(
        &self,
        request: Request<pb::GetGatewayHistoryRequest>,
    ) -> Result<Response<pb::GetGatewayHistoryResponse>, Status> {
        let (gateway, limit) = validate::gateway_history(request.get_ref())?;
        let transitions = self.lifecycle.gateway_history(&gateway, limit).await?;
        Ok(Response::new(pb::GetGatewayHistoryResponse {
            transitions: transitions
                .iter()
                .map(convert::gateway_transition)
                .collect(),
        }))
    }

    type ConnectGatewayStream = CommandStream;

    async fn connect_gateway(
        &self,
        request: Request<Streaming<pb::GatewayMessage>>,
    ) -> Result<Response<Self::ConnectGatewayStream>, Status> {
        let token = token(&request, &GATEWAY_TOKEN_NAME)?;
        let (session, commands) = self.lifecycle.connect_gateway(token)?;
        let session = Arc::new(session);
        let stop = self.lifecycle.streams_stopped();
        tokio::spawn(read_acks(
            session.clone(),
            request.into_inner(),
            stop.clone(),
        ));
        Ok(Response::new(command_stream(session, commands, stop)))
    }
}
