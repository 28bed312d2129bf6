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

use crate::Endpoints;

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
    Retrying {
        /// Why the heartbeat failed (a retryable error).
        error: &'a Error,
        /// How long the loop waits before the next try.
        delay: Duration,
    },
}

/// An agent's connection to the service, authenticated by the agent's token
/// (minted by `Provision`). Cheap to clone: clones share the channel.
///
/// Retries start with [`Backoff::default`] (500 ms, doubling up to 30 s,
/// full jitter); change them with [`AgentClient::with_backoff`].
#[derive(Clone)]
pub struct AgentClient {
    endpoints: Endpoints,
    token: AsciiMetadataValue,
    template_version: String,
    backoff: Backoff,
}

impl AgentClient {
    /// A client on an existing channel, sending `token` with every call.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] if the token is empty or not printable ASCII.
    pub fn new(channel: Channel, token: &str) -> Result<Self, Error> {
        Self::with_endpoints(Endpoints::from_channel(channel), token)
    }

    /// A client for a service with several endpoints (replicas): a
    /// heartbeat that finds one unavailable moves the next try to the next
    /// one, after the usual backoff.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] if the token is empty or not printable ASCII.
    pub fn with_endpoints(endpoints: Endpoints, token: &str) -> Result<Self, Error> {
        let token = crate::token_metadata("", token)?;
        Ok(Self {
            endpoints,
            token,
            template_version: String::new(),
            backoff: Backoff::default(),
        })
    }

    /// A client for the service at `endpoint`, or at each of a
    /// comma-separated list of endpoints (see [`Endpoints::parse`]; plaintext
    /// or `https` with the system's trust store); connects on first use, so
    /// this does not fail when the service is down.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpoint`] if `endpoint` is not a valid URI,
    /// [`Error::InvalidToken`] if the token is empty or not printable ASCII.
    pub fn connect(endpoint: &str, token: &str) -> Result<Self, Error> {
        Self::with_endpoints(Endpoints::parse(endpoint, None)?, token)
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
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the service does not know the token (a
    /// deleted agent, or a rotated token); [`Error::Status`] for any other
    /// failure, e.g. `UNAVAILABLE` when the service cannot be reached
    /// ([`Error::is_retryable`] tells which are worth retrying).
    pub async fn heartbeat(&mut self) -> Result<HeartbeatResponse, Error> {
        let mut request = tonic::Request::new(HeartbeatRequest {
            template_version: self.template_version.clone(),
        });
        request
            .metadata_mut()
            .insert(AGENT_TOKEN_HEADER, self.token.clone());
        let (index, channel) = self.endpoints.pick();
        match AgentLifecycleClient::new(channel).heartbeat(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                self.endpoints.report(index, &status);
                Err(Error::from_status(status))
            }
        }
    }

    /// Heartbeats until `stop` completes. See [`AgentClient::run_with`].
    ///
    /// # Errors
    ///
    /// As [`AgentClient::run_with`].
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        self.run_with(stop, |_| {}).await
    }

    /// Heartbeats until `stop` completes, at the pace each reply asks for.
    /// While the service is unavailable it retries with capped exponential
    /// backoff and jitter. `observe` sees every beat and every retry.
    ///
    /// Needs a Tokio runtime with the time driver (it sleeps between beats).
    ///
    /// # Errors
    ///
    /// The loop ends at the first error that is not retryable (see
    /// [`Error::is_retryable`]), not only a rejected token: for example
    /// [`Error::TokenRejected`] when the agent was deleted or its token
    /// rotated, or [`Error::Status`] with `INVALID_ARGUMENT` or
    /// `PERMISSION_DENIED`. Retrying those cannot help.
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
                    // The service's RetryInfo (overload, a spent budget) is
                    // a floor: never sooner than it asked.
                    let delay = self
                        .backoff
                        .next_delay()
                        .max(error.retry_after().unwrap_or_default());
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
