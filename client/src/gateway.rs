//! The gateway side: one long-lived stream of wake and retire commands.
//!
//! ```no_run
//! # async fn example() -> Result<(), mission_control_client::Error> {
//! use futures_util::StreamExt;
//! use mission_control_client::gateway::{GatewayClient, GatewayEvent};
//!
//! let mut events = GatewayClient::connect("http://127.0.0.1:50051", "mcg_…")?.events();
//! while let Some(event) = events.next().await {
//!     match event {
//!         GatewayEvent::Wake { command, ack } => {
//!             println!("starting agent {} (attempt {})", command.agent_id, command.attempt);
//!             ack.delivered().await;
//!         }
//!         GatewayEvent::Retire { command, ack } => {
//!             println!("stopping agent {}", command.agent_id);
//!             ack.delivered().await;
//!         }
//!         GatewayEvent::Connected { .. } | GatewayEvent::Disconnected { .. } => {}
//!         GatewayEvent::Rejected(error) => return Err(error),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::gateway_command::Command;
use crate::gateways_client::GatewaysClient;
use crate::{
    AckOutcome, Backoff, CommandAck, Error, GATEWAY_TOKEN_HEADER, GatewayMessage, RetireCommand,
    WakeCommand, gateway_message,
};

/// What the command stream yields.
#[derive(Debug)]
pub enum GatewayEvent {
    /// The stream is (re)established, as the gateway the token belongs to.
    Connected { gateway_id: String },
    /// Start the agent; then acknowledge.
    Wake { command: WakeCommand, ack: Ack },
    /// Stop and forget the agent; then acknowledge.
    Retire { command: RetireCommand, ack: Ack },
    /// The stream broke; it reconnects by itself after `retry_in`.
    Disconnected { error: Error, retry_in: Duration },
    /// The token was refused; the stream ends.
    Rejected(Error),
}

/// The acknowledgement of one command, sent on the connection it came on.
#[derive(Debug)]
pub struct Ack {
    command_id: String,
    replies: mpsc::Sender<GatewayMessage>,
}

impl Ack {
    pub async fn delivered(self) {
        self.send(AckOutcome::Delivered, String::new()).await;
    }

    pub async fn failed(self, error: impl Into<String>) {
        self.send(AckOutcome::Failed, error.into()).await;
    }

    async fn send(self, outcome: AckOutcome, error: String) {
        let message = GatewayMessage {
            message: Some(gateway_message::Message::Ack(CommandAck {
                command_id: self.command_id,
                outcome: outcome.into(),
                error,
            })),
        };
        // If the connection is gone, so is the command: the service's
        // deadlines cover it.
        let _ = self.replies.send(message).await;
    }
}

#[derive(Clone)]
pub struct GatewayClient {
    client: GatewaysClient<Channel>,
    token: AsciiMetadataValue,
    backoff: Backoff,
    reconnect_spread: Duration,
}

impl GatewayClient {
    pub fn new(channel: Channel, token: &str) -> Result<Self, Error> {
        let token = crate::token_metadata("", token)?;
        Ok(Self {
            client: GatewaysClient::new(channel),
            token,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            reconnect_spread: Duration::from_secs(5),
        })
    }

    pub fn connect(endpoint: &str, token: &str) -> Result<Self, Error> {
        Self::new(crate::channel(endpoint)?, token)
    }

    /// Retry waits after repeated failures.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// After losing an established stream, the first reconnect waits a
    /// random time up to this, so a fleet of gateways does not reconnect
    /// in the same second when the service restarts.
    pub fn with_reconnect_spread(mut self, spread: Duration) -> Self {
        self.reconnect_spread = spread;
        self
    }

    /// The command stream. It runs until dropped, reconnecting as needed,
    /// or until the token is rejected.
    pub fn events(self) -> impl Stream<Item = GatewayEvent> + Send + Unpin + 'static {
        let (events, receiver) = mpsc::channel(64);
        tokio::spawn(self.run(events));
        ReceiverStream::new(receiver)
    }

    async fn run(mut self, events: mpsc::Sender<GatewayEvent>) {
        loop {
            let (error, was_connected) = match self.session(&events).await {
                Ok(()) => return, // the consumer went away
                Err(failure) => failure,
            };
            if matches!(error, Error::TokenRejected(_)) {
                let _ = events.send(GatewayEvent::Rejected(error)).await;
                return;
            }
            let retry_in = if was_connected {
                self.backoff.reset();
                self.reconnect_spread.mul_f64(fastrand::f64())
            } else {
                self.backoff.next_delay()
            };
            if events
                .send(GatewayEvent::Disconnected { error, retry_in })
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(retry_in).await;
        }
    }

    /// One connection. `Ok` when the consumer has gone; otherwise why it
    /// ended and whether it had been established.
    async fn session(&mut self, events: &mpsc::Sender<GatewayEvent>) -> Result<(), (Error, bool)> {
        let (replies, outbound) = mpsc::channel(64);
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        request
            .metadata_mut()
            .insert(GATEWAY_TOKEN_HEADER, self.token.clone());
        let mut inbound = match self.client.connect_gateway(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err((Error::from_status(status), false)),
        };
        let mut connected = false;
        loop {
            let message = match inbound.next().await {
                Some(Ok(message)) => message,
                Some(Err(status)) => return Err((Error::from_status(status), connected)),
                None => {
                    let closed = tonic::Status::unavailable("the service closed the stream");
                    return Err((Error::Status(closed), connected));
                }
            };
            let ack = Ack {
                command_id: message.command_id,
                replies: replies.clone(),
            };
            let event = match message.command {
                Some(Command::Connected(hello)) => {
                    connected = true;
                    GatewayEvent::Connected {
                        gateway_id: hello.gateway_id,
                    }
                }
                Some(Command::Wake(command)) => GatewayEvent::Wake { command, ack },
                Some(Command::Retire(command)) => GatewayEvent::Retire { command, ack },
                None => continue,
            };
            if events.send(event).await.is_err() {
                return Ok(());
            }
        }
    }
}
