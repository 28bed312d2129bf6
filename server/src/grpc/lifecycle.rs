//! The `AgentLifecycle` service: validate, call the runtime, convert.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use http::HeaderName;
use mission_control_proto::v1 as pb;
use mission_control_proto::v1::agent_lifecycle_server::AgentLifecycle;
use tonic::{Request, Response, Status};

use mission_control_proto::metadata::AGENT_TOKEN_NAME;

use super::{convert, page_token, validate};
use crate::runtime::{Lifecycle, LifecycleError, WatchItem};

pub struct LifecycleService {
    lifecycle: Lifecycle,
}

impl LifecycleService {
    pub fn new(lifecycle: Lifecycle) -> Self {
        Self { lifecycle }
    }
}

/// The bearer token in `header`, or UNAUTHENTICATED.
pub fn token<'a, T>(request: &'a Request<T>, header: &HeaderName) -> Result<&'a str, Status> {
    let value = request
        .metadata()
        .as_ref()
        .get(header)
        .ok_or_else(|| Status::unauthenticated(format!("missing {header} metadata")))?;
    value
        .to_str()
        .map_err(|_| Status::unauthenticated(format!("invalid {header} metadata")))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAgentResponse, Status>> + Send>>;

pub(super) fn watch_response(item: WatchItem) -> pb::WatchAgentResponse {
    use pb::watch_agent_response::Kind;
    let kind = match item {
        WatchItem::Snapshot(agent) => Kind::Event(convert::snapshot_event(&agent)),
        WatchItem::Event(event) => Kind::Event(convert::event(&event)),
        WatchItem::SnapshotComplete { revision } => {
            Kind::SnapshotComplete(pb::SnapshotComplete { revision })
        }
        WatchItem::Bookmark { revision } => Kind::Bookmark(pb::Bookmark { revision }),
        WatchItem::Heartbeat(seen) => Kind::Heartbeat(pb::HeartbeatSeen {
            agent_id: seen.agent_id.to_string(),
            last_seen_at: Some(convert::timestamp(seen.last_seen_at)),
            lease_expires_at: seen.lease_expires_at.map(convert::timestamp),
        }),
    };
    pb::WatchAgentResponse { kind: Some(kind) }
}

#[tonic::async_trait]
impl AgentLifecycle for LifecycleService {
    async fn provision(
        &self,
        request: Request<pb::ProvisionRequest>,
    ) -> Result<Response<pb::ProvisionResponse>, Status> {
        let spec = validate::provision(request.get_ref())?;
        let outcome = self.lifecycle.provision(spec).await?;
        Ok(Response::new(pb::ProvisionResponse {
            agent: Some(convert::agent(&outcome.agent)),
            agent_token: outcome.token.unwrap_or_default(),
            created: outcome.created,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let token = token(&request, &AGENT_TOKEN_NAME)?;
        let reported = match request.get_ref().template_version.as_str() {
            "" => None,
            version => Some(validate::template_version(version)?),
        };
        let ack = self.lifecycle.heartbeat(token, reported).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            agent_id: ack.agent_id.into(),
            status: convert::status(ack.status).into(),
            generation: ack.generation,
            next_heartbeat_at: Some(convert::timestamp(ack.next_heartbeat_at)),
            next_heartbeat_in: Some(convert::duration(ack.next_heartbeat_in)),
            lease_expires_at: ack.lease_expires_at.map(convert::timestamp),
        }))
    }

    async fn wake_agent(
        &self,
        request: Request<pb::WakeAgentRequest>,
    ) -> Result<Response<pb::WakeAgentResponse>, Status> {
        let agent_id = validate::agent_id("agent_id", &request.get_ref().agent_id)?;
        let agent = self.lifecycle.wake(agent_id).await?;
        Ok(Response::new(pb::WakeAgentResponse {
            agent: Some(convert::agent(&agent)),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let agent_id = validate::agent_id("agent_id", &request.get_ref().agent_id)?;
        let agent = self.lifecycle.get(&agent_id)?;
        Ok(Response::new(convert::agent(&agent)))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let (filter, after, limit) = validate::list(request.get_ref())?;
        let (agents, next) = self.lifecycle.list(&filter, after.as_ref(), limit);
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(convert::agent).collect(),
            next_page_token: next
                .map(|last| page_token::encode(&last, &filter))
                .unwrap_or_default(),
        }))
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let agent_id = validate::agent_id("agent_id", &request.get_ref().agent_id)?;
        let agent = self.lifecycle.delete(agent_id).await?;
        Ok(Response::new(pb::DeleteAgentResponse {
            agent: Some(convert::agent(&agent)),
        }))
    }

    type WatchAgentStream = WatchStream;

    async fn watch_agent(
        &self,
        request: Request<pb::WatchAgentRequest>,
    ) -> Result<Response<Self::WatchAgentStream>, Status> {
        let watch = validate::watch(request.get_ref())?;
        let stream = self.lifecycle.watch(watch).await?;
        let stream = stream.map(|item: Result<WatchItem, LifecycleError>| {
            item.map(watch_response).map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_agent_history(
        &self,
        request: Request<pb::GetAgentHistoryRequest>,
    ) -> Result<Response<pb::GetAgentHistoryResponse>, Status> {
        let (agent_id, before, limit) = validate::history(request.get_ref())?;
        let events = self.lifecycle.history(&agent_id, before, limit).await?;
        let next_page_token = match events.last() {
            Some(oldest) if events.len() == limit => oldest.revision.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::GetAgentHistoryResponse {
            events: events.iter().map(convert::event).collect(),
            next_page_token,
        }))
    }
}
