//! The gateway side: one long-lived stream of wake, retire and template sync
//! commands.
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
//!             // An error means the stream ended: the next connection
//!             // gets the command again if it is still due.
//!             ack.delivered().await.ok();
//!         }
//!         GatewayEvent::Retire { command, ack } => {
//!             println!("stopping agent {}", command.agent_id);
//!             ack.delivered().await.ok();
//!         }
//!         GatewayEvent::TemplateSync { command, ack } => {
//!             println!("syncing templates to {}", command.template_version);
//!             ack.delivered().await.ok(); // or ack.failed("why")
//!         }
//!         GatewayEvent::Connected { .. } | GatewayEvent::Disconnected { .. } => {}
//!         GatewayEvent::Rejected(error) => return Err(error),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The service sends a command again, with the same command id, when it was
//! not acknowledged: on the next stream after a reconnect, or on the same
//! stream after its acknowledgement timeout. The stream shows each command
//! id once; a copy of a command already acknowledged is answered again with
//! the same outcome by this library, and a copy of one still being handled
//! is dropped. Acknowledge every command (an [`Ack`] dropped unanswered
//! leaves later copies dropped until the service gives up on it).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::Endpoints;

use crate::gateway_command::Command;
use crate::gateways_client::GatewaysClient;
use crate::{
    AckOutcome, Backoff, CommandAck, Error, GATEWAY_TOKEN_HEADER, GatewayMessage, RetireCommand,
    TemplateSyncCommand, WakeCommand, gateway_message,
};

/// What the command stream yields.
#[derive(Debug)]
pub enum GatewayEvent {
    /// The stream is (re)established, as the gateway the token belongs to.
    Connected {
        /// The id of the gateway the token belongs to.
        gateway_id: String,
    },
    /// Start the agent; then acknowledge.
    Wake {
        /// Which agent to start, with its attempt number and deadline.
        command: WakeCommand,
        /// Send the outcome back with this.
        ack: Ack,
    },
    /// Stop and forget the agent; then acknowledge.
    Retire {
        /// Which agent to stop.
        command: RetireCommand,
        /// Send the outcome back with this.
        ack: Ack,
    },
    /// Sync the gateway's agent templates to a version; then acknowledge
    /// (delivered once synced, failed with the reason otherwise).
    TemplateSync {
        /// The version to sync to.
        command: TemplateSyncCommand,
        /// Send the outcome back with this.
        ack: Ack,
    },
    /// The stream broke; it reconnects by itself after `retry_in`.
    Disconnected {
        /// Why the stream ended or could not be opened.
        error: Error,
        /// How long until the next connection attempt.
        retry_in: Duration,
    },
    /// The token was refused ([`Error::TokenRejected`]); the stream ends.
    Rejected(Error),
}

/// The acknowledgement of one command, sent on the connection it came on.
#[derive(Debug)]
pub struct Ack {
    command_id: String,
    replies: mpsc::Sender<GatewayMessage>,
    /// Set when the session the command came on has ended, before the
    /// stream reports it, so an ack after `Disconnected` always fails.
    session_ended: Arc<AtomicBool>,
    /// Where the outcome is remembered, to answer copies of the command.
    seen: Arc<Mutex<Seen>>,
}

impl Ack {
    /// The id of the command this answers: the same on every copy of the
    /// command, across reconnects and service restarts.
    pub fn command_id(&self) -> &str {
        &self.command_id
    }

    /// The command was carried out: the agent was started (a wake), or
    /// stopped and forgotten (a retire).
    ///
    /// # Errors
    ///
    /// [`Error::AckNotSent`] if the connection the command came on has
    /// ended. Nothing is lost: the service's deadlines cover the command.
    pub async fn delivered(self) -> Result<(), Error> {
        self.send(AckOutcome::Delivered, String::new()).await
    }

    /// The command could not be carried out, for `error` (shown to
    /// operators as the agent's last error). A failed wake counts as an
    /// attempt; the next one follows the service's policy.
    ///
    /// # Errors
    ///
    /// [`Error::AckNotSent`] if the connection the command came on has
    /// ended.
    pub async fn failed(self, error: impl Into<String>) -> Result<(), Error> {
        self.send(AckOutcome::Failed, error.into()).await
    }

    async fn send(self, outcome: AckOutcome, error: String) -> Result<(), Error> {
        // Remembered even if this stream is gone: the copy the service
        // sends on the next one is answered with it.
        self.seen
            .lock()
            .expect("seen commands lock")
            .answered(&self.command_id, outcome, &error);
        if self.session_ended.load(Ordering::Acquire) {
            return Err(Error::AckNotSent);
        }
        let message = ack_message(self.command_id, outcome, error);
        // If the connection is gone, so is the command: the service's
        // deadlines cover it, but the caller may want to know.
        self.replies
            .send(message)
            .await
            .map_err(|_| Error::AckNotSent)
    }
}

fn ack_message(command_id: String, outcome: AckOutcome, error: String) -> GatewayMessage {
    GatewayMessage {
        message: Some(gateway_message::Message::Ack(CommandAck {
            command_id,
            outcome: outcome.into(),
            error,
        })),
    }
}

/// Command ids this many commands back are forgotten: twice as many as the
/// service keeps unacknowledged for one gateway (8192), so any copy it can
/// still send is recognised.
const REMEMBERED_COMMANDS: usize = 16_384;

/// Command ids seen lately, across reconnects, with the outcome sent for
/// each (`None`: the application is still handling it).
#[derive(Debug, Default)]
struct Seen {
    outcomes: HashMap<String, Option<(AckOutcome, String)>>,
    order: VecDeque<String>,
}

/// What to do with a command that arrived.
enum Arrival {
    New,
    /// A copy of one already answered: answer it again.
    Answered(AckOutcome, String),
    /// A copy of one the application is still handling.
    InHand,
}

impl Seen {
    fn arrived(&mut self, command_id: &str) -> Arrival {
        match self.outcomes.get(command_id) {
            Some(Some((outcome, error))) => Arrival::Answered(*outcome, error.clone()),
            Some(None) => Arrival::InHand,
            None => {
                if self.order.len() >= REMEMBERED_COMMANDS
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.outcomes.remove(&oldest);
                }
                self.order.push_back(command_id.to_owned());
                self.outcomes.insert(command_id.to_owned(), None);
                Arrival::New
            }
        }
    }

    fn answered(&mut self, command_id: &str, outcome: AckOutcome, error: &str) {
        if let Some(slot) = self.outcomes.get_mut(command_id) {
            *slot = Some((outcome, error.to_owned()));
        }
    }
}

/// A gateway's connection to the service, authenticated by the gateway's
/// token (minted by `RegisterGateway`). Cheap to clone.
///
/// Defaults: retries after failed connection attempts wait per
/// `Backoff::new(1 s, 30 s)` (full jitter, doubling); after losing an
/// established stream, the first reconnect waits a random time up to 5 s.
#[derive(Clone)]
pub struct GatewayClient {
    endpoints: Endpoints,
    token: AsciiMetadataValue,
    backoff: Backoff,
    reconnect_spread: Duration,
}

impl GatewayClient {
    /// A client on an existing channel, sending `token` on the stream.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] if the token is empty or not printable ASCII.
    pub fn new(channel: Channel, token: &str) -> Result<Self, Error> {
        Self::with_endpoints(Endpoints::from_channel(channel), token)
    }

    /// A client for a service with several endpoints (replicas): when a
    /// connection attempt or an open stream fails because its endpoint
    /// cannot serve, the reconnect (after the usual backoff or spread) goes
    /// to the next one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] if the token is empty or not printable ASCII.
    pub fn with_endpoints(endpoints: Endpoints, token: &str) -> Result<Self, Error> {
        let token = crate::token_metadata("", token)?;
        Ok(Self {
            endpoints,
            token,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            reconnect_spread: Duration::from_secs(5),
        })
    }

    /// A client for the service at `endpoint`, or at each of a
    /// comma-separated list of endpoints (see [`Endpoints::parse`]);
    /// connects when the stream is first polled.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpoint`] if `endpoint` is not a valid URI,
    /// [`Error::InvalidToken`] if the token is empty or not printable ASCII.
    pub fn connect(endpoint: &str, token: &str) -> Result<Self, Error> {
        Self::with_endpoints(Endpoints::parse(endpoint, None)?, token)
    }

    /// Retry waits after failed connection attempts (default: 1 s first
    /// window, doubling up to 30 s, full jitter).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// After losing an established stream, the first reconnect waits a
    /// random time up to this, so a fleet of gateways does not reconnect
    /// in the same second when the service restarts. Default 5 s.
    pub fn with_reconnect_spread(mut self, spread: Duration) -> Self {
        self.reconnect_spread = spread;
        self
    }

    /// The command stream. It runs until dropped, reconnecting as needed,
    /// or until the token is rejected.
    ///
    /// Every failure other than a rejected token, retryable or not (e.g.
    /// `PERMISSION_DENIED`), is reported as [`GatewayEvent::Disconnected`]
    /// and followed by a reconnect, with the backoff and spread described
    /// on [`GatewayClient`]; a rejected token yields
    /// [`GatewayEvent::Rejected`] and ends the stream.
    ///
    /// # Panics
    ///
    /// Must be called from within a Tokio runtime (with the time driver):
    /// the connection runs on a task spawned with `tokio::spawn`.
    pub fn events(self) -> impl Stream<Item = GatewayEvent> + Send + Unpin + 'static {
        let (events, receiver) = mpsc::channel(64);
        tokio::spawn(self.run(events));
        ReceiverStream::new(receiver)
    }

    async fn run(mut self, events: mpsc::Sender<GatewayEvent>) {
        // One memory of command ids per stream of events, kept across its
        // reconnects.
        let seen = Arc::new(Mutex::new(Seen::default()));
        loop {
            let (error, was_connected) = match self.session(&events, &seen).await {
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
    async fn session(
        &mut self,
        events: &mpsc::Sender<GatewayEvent>,
        seen: &Arc<Mutex<Seen>>,
    ) -> Result<(), (Error, bool)> {
        let (index, channel) = self.endpoints.pick();
        let result = self.session_on(channel, events, seen).await;
        if let Err((Error::Status(status), _)) = &result {
            self.endpoints.report(index, status);
        }
        result
    }

    async fn session_on(
        &mut self,
        channel: Channel,
        events: &mpsc::Sender<GatewayEvent>,
        seen: &Arc<Mutex<Seen>>,
    ) -> Result<(), (Error, bool)> {
        let ended = SessionEnded::default();
        let (replies, outbound) = mpsc::channel(64);
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        request
            .metadata_mut()
            .insert(GATEWAY_TOKEN_HEADER, self.token.clone());
        let mut inbound = match GatewaysClient::new(channel).connect_gateway(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err((Error::from_status(status), false)),
        };
        let mut connected = false;
        loop {
            // A consumer that drops its events ends the session now, not
            // when the next command finds nobody to take it.
            let next = tokio::select! {
                next = inbound.next() => next,
                () = events.closed() => return Ok(()),
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(status)) => return Err((Error::from_status(status), connected)),
                None => {
                    let closed = tonic::Status::unavailable("the service closed the stream");
                    return Err((Error::Status(closed), connected));
                }
            };
            if matches!(
                message.command,
                Some(Command::Wake(_) | Command::Retire(_) | Command::TemplateSync(_))
            ) {
                let arrival = seen
                    .lock()
                    .expect("seen commands lock")
                    .arrived(&message.command_id);
                match arrival {
                    Arrival::New => {}
                    Arrival::InHand => continue,
                    Arrival::Answered(outcome, error) => {
                        let again = ack_message(message.command_id, outcome, error);
                        // If the stream is gone, the next one gets a copy.
                        let _ = replies.send(again).await;
                        continue;
                    }
                }
            }
            let ack = Ack {
                command_id: message.command_id,
                replies: replies.clone(),
                session_ended: ended.0.clone(),
                seen: seen.clone(),
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
                Some(Command::TemplateSync(command)) => GatewayEvent::TemplateSync { command, ack },
                None => continue,
            };
            if events.send(event).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Marks the session ended when it returns, whichever way.
#[derive(Default)]
struct SessionEnded(Arc<AtomicBool>);

impl Drop for SessionEnded {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}
