//! The operator side: provision, wake, delete, list, history and watch.

use std::future::Future;
use tonic::metadata::AsciiMetadataValue;

use tonic::transport::Channel;
use tonic::{Request, Streaming};

use crate::Endpoints;
use crate::agent_lifecycle_client::AgentLifecycleClient;
use crate::gateways_client::GatewaysClient;
use crate::{
    Agent, AgentEvent, DeleteAgentRequest, Error, Gateway, GatewayTransition,
    GetAgentHistoryRequest, GetAgentRequest, GetGatewayHistoryRequest, ListAgentsRequest,
    ListGatewaysRequest, ProvisionRequest, ProvisionResponse, RegisterGatewayRequest,
    RegisterGatewayResponse, SyncGatewayTemplatesRequest, SyncGatewayTemplatesResponse,
    WakeAgentRequest, WatchAgentRequest, WatchAgentResponse,
};

/// Operator calls. When the service runs with `--operator-token`, attach it
/// with [`OperatorClient::with_operator_token`]; a refused token surfaces as
/// [`Error::TokenRejected`]. Cheap to clone: clones share the channel.
#[derive(Clone)]
pub struct OperatorClient {
    endpoints: Endpoints,
    /// `Bearer <token>`, sent as `authorization` on every call.
    authorization: Option<AsciiMetadataValue>,
}

impl OperatorClient {
    /// A client on an existing channel, without an operator token.
    pub fn new(channel: Channel) -> Self {
        Self::with_endpoints(Endpoints::from_channel(channel))
    }

    /// A client for a service with several endpoints (replicas): a call
    /// that finds its endpoint unavailable fails as before, and the next
    /// call goes to the next endpoint.
    pub fn with_endpoints(endpoints: Endpoints) -> Self {
        Self {
            endpoints,
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
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert(crate::OPERATOR_TOKEN_HEADER, value.clone());
        }
        request
    }

    /// A client for the service at `endpoint`, or at each of a
    /// comma-separated list of endpoints (see [`Endpoints::parse`]);
    /// connects on first use.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpoint`] if `endpoint` is not a valid URI.
    pub fn connect(endpoint: &str) -> Result<Self, Error> {
        Ok(Self::with_endpoints(Endpoints::parse(endpoint, None)?))
    }

    /// The endpoints calls go to.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// One call with the lifecycle client on the current endpoint; a
    /// failure that says the endpoint cannot serve moves the next call on.
    async fn on_lifecycle<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(AgentLifecycleClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (index, channel) = self.endpoints.pick();
        self.finish(index, call(AgentLifecycleClient::new(channel)).await)
    }

    /// As [`OperatorClient::on_lifecycle`], with the gateways client.
    async fn on_gateways<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(GatewaysClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (index, channel) = self.endpoints.pick();
        self.finish(index, call(GatewaysClient::new(channel)).await)
    }

    pub(crate) fn finish<T>(
        &self,
        index: usize,
        result: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, Error> {
        result.map(tonic::Response::into_inner).map_err(|status| {
            self.endpoints.report(index, &status);
            Error::from_status(status)
        })
    }

    /// The generated lifecycle client, for calls the helpers do not cover
    /// (it does not add the operator token by itself).
    pub fn lifecycle(&self) -> AgentLifecycleClient<Channel> {
        AgentLifecycleClient::new(self.endpoints.pick().1)
    }

    /// The generated gateways client (it does not add the operator token).
    pub fn gateways(&self) -> GatewaysClient<Channel> {
        GatewaysClient::new(self.endpoints.pick().1)
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
        self.on_gateways(|mut client| async move { client.register_gateway(request).await })
            .await
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
            .on_gateways(|mut client| async move {
                client
                    .list_gateways(self.request(ListGatewaysRequest {}))
                    .await
            })
            .await?;
        Ok(reply.gateways)
    }

    /// Tells a gateway to sync its templates to `template_version`. The
    /// command is kept until the gateway connects and resent until it
    /// acknowledges; the request and the outcome show in its history. A
    /// newer request replaces an unacknowledged older one.
    ///
    /// # Errors
    ///
    /// As [`OperatorClient::list_gateways`]; `NOT_FOUND` for an unknown
    /// gateway, `INVALID_ARGUMENT` for a missing or malformed version.
    pub async fn sync_gateway_templates(
        &self,
        gateway_id: &str,
        template_version: &str,
    ) -> Result<SyncGatewayTemplatesResponse, Error> {
        let request = SyncGatewayTemplatesRequest {
            gateway_id: gateway_id.to_owned(),
            template_version: template_version.to_owned(),
        };
        self.on_gateways(|mut client| async move {
            client.sync_gateway_templates(self.request(request)).await
        })
        .await
    }

    /// A gateway's state transitions (connected, disconnected), newest
    /// first, up to 100.
    ///
    /// # Errors
    ///
    /// As [`OperatorClient::list_gateways`]; `NOT_FOUND` for an unknown
    /// gateway.
    pub async fn gateway_history(&self, gateway_id: &str) -> Result<Vec<GatewayTransition>, Error> {
        let request = GetGatewayHistoryRequest {
            gateway_id: gateway_id.to_owned(),
            page_size: 0,
        };
        let reply = self
            .on_gateways(|mut client| async move {
                client.get_gateway_history(self.request(request)).await
            })
            .await?;
        Ok(reply.transitions)
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
        self.on_lifecycle(|mut client| async move { client.provision(self.request(request)).await })
            .await
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
            .on_lifecycle(|mut client| async move { client.wake_agent(request).await })
            .await?;
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
            .on_lifecycle(|mut client| async move { client.delete_agent(request).await })
            .await?;
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
        self.on_lifecycle(|mut client| async move { client.get_agent(request).await })
            .await
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
                .on_lifecycle(|mut client| async move { client.list_agents(request).await })
                .await?;
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
                .on_lifecycle(|mut client| async move { client.get_agent_history(request).await })
                .await?;
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
        self.on_lifecycle(
            |mut client| async move { client.watch_agent(self.request(request)).await },
        )
        .await
    }
}
