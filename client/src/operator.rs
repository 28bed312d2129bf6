//! The operator side: provision, wake, delete, list, history and watch.

use tonic::Streaming;
use tonic::transport::Channel;

use crate::agent_lifecycle_client::AgentLifecycleClient;
use crate::gateways_client::GatewaysClient;
use crate::{
    Agent, AgentEvent, DeleteAgentRequest, Error, Gateway, GetAgentHistoryRequest, GetAgentRequest,
    ListAgentsRequest, ListGatewaysRequest, ProvisionRequest, ProvisionResponse,
    RegisterGatewayRequest, RegisterGatewayResponse, WakeAgentRequest, WatchAgentRequest,
    WatchAgentResponse,
};

#[derive(Clone)]
pub struct OperatorClient {
    lifecycle: AgentLifecycleClient<Channel>,
    gateways: GatewaysClient<Channel>,
}

impl OperatorClient {
    pub fn new(channel: Channel) -> Self {
        Self {
            lifecycle: AgentLifecycleClient::new(channel.clone()),
            gateways: GatewaysClient::new(channel),
        }
    }

    pub fn connect(endpoint: &str) -> Result<Self, Error> {
        Ok(Self::new(crate::channel(endpoint)?))
    }

    /// The generated client, for calls the helpers do not cover.
    pub fn lifecycle(&self) -> AgentLifecycleClient<Channel> {
        self.lifecycle.clone()
    }

    pub async fn register_gateway(
        &self,
        gateway_id: &str,
        name: &str,
    ) -> Result<RegisterGatewayResponse, Error> {
        let request = RegisterGatewayRequest {
            gateway_id: gateway_id.into(),
            name: name.into(),
            rotate_token: false,
        };
        Ok(self
            .gateways
            .clone()
            .register_gateway(request)
            .await?
            .into_inner())
    }

    pub async fn list_gateways(&self) -> Result<Vec<Gateway>, Error> {
        let reply = self
            .gateways
            .clone()
            .list_gateways(ListGatewaysRequest {})
            .await?;
        Ok(reply.into_inner().gateways)
    }

    pub async fn provision(&self, request: ProvisionRequest) -> Result<ProvisionResponse, Error> {
        Ok(self
            .lifecycle
            .clone()
            .provision(request)
            .await?
            .into_inner())
    }

    pub async fn wake(&self, agent_id: &str) -> Result<Agent, Error> {
        let request = WakeAgentRequest {
            agent_id: agent_id.into(),
        };
        let reply = self
            .lifecycle
            .clone()
            .wake_agent(request)
            .await?
            .into_inner();
        Ok(reply.agent.unwrap_or_default())
    }

    pub async fn delete(&self, agent_id: &str) -> Result<Agent, Error> {
        let request = DeleteAgentRequest {
            agent_id: agent_id.into(),
        };
        let reply = self
            .lifecycle
            .clone()
            .delete_agent(request)
            .await?
            .into_inner();
        Ok(reply.agent.unwrap_or_default())
    }

    pub async fn get(&self, agent_id: &str) -> Result<Agent, Error> {
        let request = GetAgentRequest {
            agent_id: agent_id.into(),
        };
        Ok(self
            .lifecycle
            .clone()
            .get_agent(request)
            .await?
            .into_inner())
    }

    /// Every agent matching `filter` (its page fields are ignored), all pages.
    pub async fn list(&self, filter: ListAgentsRequest) -> Result<Vec<Agent>, Error> {
        let mut agents = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListAgentsRequest {
                page_size: 1000,
                page_token,
                ..filter.clone()
            };
            let page = self
                .lifecycle
                .clone()
                .list_agents(request)
                .await?
                .into_inner();
            agents.extend(page.agents);
            if page.next_page_token.is_empty() {
                return Ok(agents);
            }
            page_token = page.next_page_token;
        }
    }

    /// Up to `limit` of the agent's most recent transitions, newest first.
    pub async fn history(&self, agent_id: &str, limit: usize) -> Result<Vec<AgentEvent>, Error> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        while events.len() < limit {
            let request = GetAgentHistoryRequest {
                agent_id: agent_id.into(),
                page_size: (limit - events.len()).min(1000) as u32,
                page_token,
            };
            let page = self
                .lifecycle
                .clone()
                .get_agent_history(request)
                .await?
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
    pub async fn watch(
        &self,
        request: WatchAgentRequest,
    ) -> Result<Streaming<WatchAgentResponse>, Error> {
        Ok(self
            .lifecycle
            .clone()
            .watch_agent(request)
            .await?
            .into_inner())
    }
}
