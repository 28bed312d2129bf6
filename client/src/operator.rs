//! The operator side: provision, wake, delete, list, history and watch.

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Streaming};

use crate::agent_lifecycle_client::AgentLifecycleClient;
use crate::gateways_client::GatewaysClient;
use crate::{
    Agent, AgentEvent, DeleteAgentRequest, Error, Gateway, GetAgentHistoryRequest, GetAgentRequest,
    ListAgentsRequest, ListGatewaysRequest, ProvisionRequest, ProvisionResponse,
    RegisterGatewayRequest, RegisterGatewayResponse, WakeAgentRequest, WatchAgentRequest,
    WatchAgentResponse,
};

/// Operator calls. When the service runs with `--operator-token`, attach it
/// with [`OperatorClient::with_operator_token`]; a refused token surfaces as
/// [`Error::TokenRejected`]. Cheap to clone: clones share the channel.
#[derive(Clone)]
pub struct OperatorClient {
    lifecycle: AgentLifecycleClient<Channel>,
    gateways: GatewaysClient<Channel>,
    /// `Bearer <token>`, sent as `authorization` on every call.
    authorization: Option<AsciiMetadataValue>,
}

impl OperatorClient {
    /// A client on an existing channel, without an operator token.
    pub fn new(channel: Channel) -> Self {
        Self {
            lifecycle: AgentLifecycleClient::new(channel.clone()),
            gateways: GatewaysClient::new(channel),
            authorization: None,
        }
    }

    /// Sends `authorization: Bearer <token>` on every call.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] if the token (trimmed) is empty or not
    /// printable ASCII.
    pub fn with_operator_token(mut self, token: &str) -> Result<Self, Error> {
        self.authorization = Some(crate::token_metadata("Bearer ", token.trim())?);
        Ok(self)
    }

    /// A request carrying the operator token, if one is set.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert(crate::OPERATOR_TOKEN_HEADER, value.clone());
        }
        request
    }

    /// A client for the service at `endpoint`; connects on first use (see
    /// [`crate::channel`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpoint`] if `endpoint` is not a valid URI.
    pub fn connect(endpoint: &str) -> Result<Self, Error> {
        Ok(Self::new(crate::channel(endpoint)?))
    }

    /// The generated lifecycle client, for calls the helpers do not cover
    /// (it does not add the operator token by itself).
    pub fn lifecycle(&self) -> AgentLifecycleClient<Channel> {
        self.lifecycle.clone()
    }

    /// The generated gateways client (it does not add the operator token).
    pub fn gateways(&self) -> GatewaysClient<Channel> {
        self.gateways.clone()
    }

    /// Registers gateway `gateway_id`, or renames it (an empty `name` keeps
    /// the current one). The reply carries a token when one was minted: on
    /// creation, or with `rotate_token` (the old token stops working).
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal, e.g. `INVALID_ARGUMENT` for a malformed id.
    pub async fn register_gateway(
        &self,
        gateway_id: &str,
        name: &str,
        rotate_token: bool,
    ) -> Result<RegisterGatewayResponse, Error> {
        let request = self.request(RegisterGatewayRequest {
            gateway_id: gateway_id.into(),
            name: name.into(),
            rotate_token,
        });
        Ok(self
            .gateways
            .clone()
            .register_gateway(request)
            .await
            .map_err(Error::from_status)?
            .into_inner())
    }

    /// Every registered gateway, and whether each is connected.
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal (`UNAVAILABLE` when the service cannot be
    /// reached).
    pub async fn list_gateways(&self) -> Result<Vec<Gateway>, Error> {
        let reply = self
            .gateways
            .clone()
            .list_gateways(self.request(ListGatewaysRequest {}))
            .await
            .map_err(Error::from_status)?;
        Ok(reply.into_inner().gateways)
    }

    /// Creates or updates an agent and wakes it. The reply carries the
    /// agent's token when one was minted (on creation, or when the request
    /// asks for a rotation).
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal, e.g. `INVALID_ARGUMENT` for bad input or
    /// `FAILED_PRECONDITION` for an unknown gateway.
    pub async fn provision(&self, request: ProvisionRequest) -> Result<ProvisionResponse, Error> {
        Ok(self
            .lifecycle
            .clone()
            .provision(self.request(request))
            .await
            .map_err(Error::from_status)?
            .into_inner())
    }

    /// Operator recovery: starts a fresh cycle of wakes (attempt 1) and
    /// returns the agent as it is after the call.
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal, e.g. `NOT_FOUND` for an unknown agent;
    /// [`Error::MalformedReply`] if the reply carries no agent.
    pub async fn wake(&self, agent_id: &str) -> Result<Agent, Error> {
        let request = self.request(WakeAgentRequest {
            agent_id: agent_id.into(),
        });
        let reply = self
            .lifecycle
            .clone()
            .wake_agent(request)
            .await
            .map_err(Error::from_status)?
            .into_inner();
        reply
            .agent
            .ok_or(Error::MalformedReply("WakeAgent reply without an agent"))
    }

    /// Deletes the agent: its token stops working and its gateway is told
    /// to retire it. Returns the agent as it was when deleted.
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal, e.g. `NOT_FOUND` for an unknown agent;
    /// [`Error::MalformedReply`] if the reply carries no agent.
    pub async fn delete(&self, agent_id: &str) -> Result<Agent, Error> {
        let request = self.request(DeleteAgentRequest {
            agent_id: agent_id.into(),
        });
        let reply = self
            .lifecycle
            .clone()
            .delete_agent(request)
            .await
            .map_err(Error::from_status)?
            .into_inner();
        reply
            .agent
            .ok_or(Error::MalformedReply("DeleteAgent reply without an agent"))
    }

    /// Every field of one agent.
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal, e.g. `NOT_FOUND` for an unknown agent.
    pub async fn get(&self, agent_id: &str) -> Result<Agent, Error> {
        let request = self.request(GetAgentRequest {
            agent_id: agent_id.into(),
        });
        Ok(self
            .lifecycle
            .clone()
            .get_agent(request)
            .await
            .map_err(Error::from_status)?
            .into_inner())
    }

    /// Every agent matching `filter` (its page fields are ignored), all pages.
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal, e.g. `INVALID_ARGUMENT` for a bad filter.
    /// Agents from pages already read are dropped.
    pub async fn list(&self, filter: ListAgentsRequest) -> Result<Vec<Agent>, Error> {
        let mut agents = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = self.request(ListAgentsRequest {
                page_size: 1000,
                page_token,
                ..filter.clone()
            });
            let page = self
                .lifecycle
                .clone()
                .list_agents(request)
                .await
                .map_err(Error::from_status)?
                .into_inner();
            agents.extend(page.agents);
            if page.next_page_token.is_empty() {
                return Ok(agents);
            }
            page_token = page.next_page_token;
        }
    }

    /// Up to `limit` of the agent's most recent transitions, newest first.
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal, e.g. `NOT_FOUND` for an unknown agent.
    pub async fn history(&self, agent_id: &str, limit: usize) -> Result<Vec<AgentEvent>, Error> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        while events.len() < limit {
            let request = self.request(GetAgentHistoryRequest {
                agent_id: agent_id.into(),
                page_size: (limit - events.len()).min(1000) as u32,
                page_token,
            });
            let page = self
                .lifecycle
                .clone()
                .get_agent_history(request)
                .await
                .map_err(Error::from_status)?
                .into_inner();
            events.extend(page.events);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        Ok(events)
    }

    /// A watch stream: snapshot, marker, then changes (see `WatchAgentRequest`).
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal, e.g. `OUT_OF_RANGE` when `since_revision` is
    /// older than the retained history, or `RESOURCE_EXHAUSTED` when the
    /// service's cap on open watches is reached. Errors after the stream
    /// opened arrive as items of the stream.
    pub async fn watch(
        &self,
        request: WatchAgentRequest,
    ) -> Result<Streaming<WatchAgentResponse>, Error> {
        Ok(self
            .lifecycle
            .clone()
            .watch_agent(self.request(request))
            .await
            .map_err(Error::from_status)?
            .into_inner())
    }
}
