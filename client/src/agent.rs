//! The agent side: check in after a wake, then keep the lease alive.
//!
//! ```no_run
//! # async fn example() -> Result<(), mission_control_client::Error> {
//! use mission_control_client::agent::AgentClient;
//!
//! let agent = AgentClient::connect("http://127.0.0.1:50051", "mca_…")?;
//! // Heartbeats until Ctrl-C, paced by the server, retrying through outages.
//! agent.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::agent_lifecycle_client::AgentLifecycleClient;
use crate::{AGENT_TOKEN_HEADER, Backoff, Error, HeartbeatRequest, HeartbeatResponse};

/// Used when a reply carries no pacing (it always does from this service).
const FALLBACK_INTERVAL: Duration = Duration::from_secs(10);

/// What the heartbeat loop did, for callers that want to watch it.
#[derive(Debug)]
pub enum LoopEvent<'a> {
    /// A heartbeat was accepted.
    Beat(&'a HeartbeatResponse),
    /// The service could not be reached; trying again after the delay.
    Retrying { error: &'a Error, delay: Duration },
}

#[derive(Clone)]
pub struct AgentClient {
    client: AgentLifecycleClient<Channel>,
    token: AsciiMetadataValue,
    template_version: String,
    backoff: Backoff,
}

impl AgentClient {
    pub fn new(channel: Channel, token: &str) -> Result<Self, Error> {
        let token = crate::token_metadata("", token)?;
        Ok(Self {
            client: AgentLifecycleClient::new(channel),
            token,
            template_version: String::new(),
            backoff: Backoff::default(),
        })
    }

    /// A client for the service at `endpoint`; connects on first use.
    pub fn connect(endpoint: &str, token: &str) -> Result<Self, Error> {
        Self::new(crate::channel(endpoint)?, token)
    }

    /// Reports this template version with every heartbeat.
    pub fn with_template_version(mut self, version: impl Into<String>) -> Self {
        self.template_version = version.into();
        self
    }

    /// How long to wait between retries when the service is unavailable.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// One heartbeat: a check-in if the agent was waiting to be seen.
    pub async fn heartbeat(&mut self) -> Result<HeartbeatResponse, Error> {
        let mut request = tonic::Request::new(HeartbeatRequest {
            template_version: self.template_version.clone(),
        });
        request
            .metadata_mut()
            .insert(AGENT_TOKEN_HEADER, self.token.clone());
        match self.client.heartbeat(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(Error::from_status(status)),
        }
    }

    /// Heartbeats until `stop` completes. See [`AgentClient::run_with`].
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        self.run_with(stop, |_| {}).await
    }

    /// Heartbeats until `stop` completes, at the pace each reply asks for.
    /// While the service is unavailable it retries with capped exponential
    /// backoff and jitter. A rejected token ends the loop with
    /// [`Error::TokenRejected`]: retrying cannot fix it.
    pub async fn run_with(
        mut self,
        stop: impl Future<Output = ()>,
        mut observe: impl FnMut(LoopEvent<'_>),
    ) -> Result<(), Error> {
        tokio::pin!(stop);
        loop {
            let delay = match self.heartbeat().await {
                Ok(reply) => {
                    self.backoff.reset();
                    observe(LoopEvent::Beat(&reply));
                    reply
                        .next_heartbeat_in
                        .as_ref()
                        .map_or(FALLBACK_INTERVAL, crate::to_duration)
                }
                Err(error) if error.is_retryable() => {
                    let delay = self.backoff.next_delay();
                    observe(LoopEvent::Retrying {
                        error: &error,
                        delay,
                    });
                    delay
                }
                Err(error) => return Err(error),
            };
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}
