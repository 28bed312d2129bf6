//! Connected gateways: one command stream each, and each gateway's outbox
//! of commands given and not yet acknowledged (see the `outbox` module).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::outbox::{Commands, Outbox, Outgoing};
use crate::engine::{GatewayId, PendingRetire, PendingSync, Timestamp, WakeOrder};

/// Commands queued for one stream beyond this are refused: the gateway is
/// not keeping up, and the wake counts as failed.
const QUEUE: usize = 1024;
/// Unacknowledged commands per gateway beyond this are refused likewise.
const MAX_UNACKED: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayCommand {
    Wake(WakeOrder),
    Retire(PendingRetire),
    /// Sync the gateway's templates to a version; committed (with its
    /// command id) before it goes out.
    TemplateSync(PendingSync),
}

impl GatewayCommand {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayCommand::Wake(_) => "wake",
            GatewayCommand::Retire(_) => "retire",
            GatewayCommand::TemplateSync(_) => "template_sync",
        }
    }
}

#[derive(Debug)]
pub enum Outbound {
    Command {
        command_id: u64,
        command: GatewayCommand,
    },
    /// The session is over; the stream ends with this reason.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection of the same gateway took over.
    Superseded,
    /// The gateway's token was rotated: whoever holds the old one is out.
    TokenRotated,
    /// This replica stopped leading: the gateway reconnects, to the leader.
    NotLeader,
}

/// Where a command given to a gateway went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Out on the gateway's stream, awaiting its acknowledgement.
    Sent(u64),
    /// The gateway is not connected: kept, and sent when it connects.
    Held(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("gateway {0} is not keeping up with its commands")]
    Backlogged(GatewayId),
}

/// A newly opened stream.
pub struct Connection {
    pub session: u64,
    pub commands: mpsc::Receiver<Outbound>,
    /// The session this one replaced, if the gateway was still connected.
    pub replaced: Option<u64>,
}

struct Session {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    connected_since: Timestamp,
}

struct State {
    sessions: HashMap<GatewayId, Session>,
    outboxes: HashMap<GatewayId, Outbox>,
    /// Command and session ids; see [`GatewayHub::new`].
    next_id: u64,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

pub struct GatewayHub {
    state: Mutex<State>,
}

impl Default for GatewayHub {
    fn default() -> Self {
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        Self::new(now.as_micros().max(0) as u64)
    }
}

impl GatewayHub {
    /// Ids count up from `first_id`. The default starts at the wall clock's
    /// microseconds, so a restarted or new leader never reuses a command id
    /// a gateway has seen (gateways drop commands whose id they know).
    pub fn new(first_id: u64) -> Self {
        Self {
            state: Mutex::new(State {
                sessions: HashMap::new(),
                outboxes: HashMap::new(),
                next_id: first_id,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("gateway hub lock")
    }

    /// Opens a session, replacing (and ending) any older one. Pending
    /// commands are not sent here: see [`GatewayHub::redeliver`].
    pub fn connect(&self, gateway: &GatewayId, now: Timestamp) -> Connection {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut state = self.state();
        let id = state.next_id();
        let session = Session {
            id,
            tx,
            connected_since: now,
        };
        let replaced = state.sessions.insert(gateway.clone(), session).map(|old| {
            // Best effort: if its queue is full, dropping the sender ends it.
            let _ = old.tx.try_send(Outbound::Closed(CloseReason::Superseded));
            old.id
        });
        Connection {
            session: id,
            commands: rx,
            replaced,
        }
    }

    /// Ends the gateway's session, whatever it is.
    pub fn evict(&self, gateway: &GatewayId, reason: CloseReason) {
        if let Some(old) = self.state().sessions.remove(gateway) {
            // Best effort: if its queue is full, dropping the sender ends it.
            let _ = old.tx.try_send(Outbound::Closed(reason));
        }
    }

    /// Ends every session, telling each gateway why. The outboxes go too:
    /// this replica no longer leads, and the next leader derives them anew.
    pub fn evict_all(&self, reason: CloseReason) {
        let mut state = self.state();
        state.outboxes.clear();
        for (_, old) in std::mem::take(&mut state.sessions) {
            let _ = old.tx.try_send(Outbound::Closed(reason));
        }
    }

    /// Closes a session, unless a newer one has replaced it. Whether it was
    /// the gateway's current session.
    pub fn disconnect(&self, gateway: &GatewayId, session: u64) -> bool {
        let mut state = self.state();
        let current = state.sessions.get(gateway).is_some_and(|s| s.id == session);
        if current {
            state.sessions.remove(gateway);
        }
        current
    }

    /// Gives the gateway a command: kept in its outbox until acknowledged,
    /// and sent at once if it is connected.
    pub fn send(
        &self,
        gateway: &GatewayId,
        command: GatewayCommand,
        now: Instant,
    ) -> Result<Delivery, SendError> {
        let mut state = self.state();
        let command_id = state.next_id();
        let State {
            sessions, outboxes, ..
        } = &mut *state;
        let outbox = outboxes.entry(gateway.clone()).or_default();
        if outbox.len() >= MAX_UNACKED {
            return Err(SendError::Backlogged(gateway.clone()));
        }
        outbox.add(command_id, command.clone());
        let Some(session) = sessions.get(gateway) else {
            return Ok(Delivery::Held(command_id));
        };
        match session.tx.try_send(Outbound::Command {
            command_id,
            command,
        }) {
            Ok(()) => {
                outbox.mark_sent(command_id, now);
                Ok(Delivery::Sent(command_id))
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                outbox.remove(command_id);
                Err(SendError::Backlogged(gateway.clone()))
            }
            // The stream is ending; its session's drop reports the
            // disconnection. The command waits for the next stream.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(Delivery::Held(command_id)),
        }
    }

    /// A command id for a command to be given later with
    /// [`GatewayHub::send_as`] (one committed before it goes out).
    pub fn next_command_id(&self) -> u64 {
        self.state().next_id()
    }

    /// Whether a command given now would be taken, not refused as backlogged
    /// (see [`GatewayHub::send`]).
    pub fn admits(&self, gateway: &GatewayId) -> Result<(), SendError> {
        let state = self.state();
        let outbox_full = state
            .outboxes
            .get(gateway)
            .is_some_and(|outbox| outbox.len() >= MAX_UNACKED);
        let stream_full = state
            .sessions
            .get(gateway)
            .is_some_and(|session| session.tx.capacity() == 0);
        if outbox_full || stream_full {
            return Err(SendError::Backlogged(gateway.clone()));
        }
        Ok(())
    }

    /// Gives the gateway a command under `command_id` (from
    /// [`GatewayHub::next_command_id`], or stored): kept until acknowledged,
    /// and sent at once if its stream has room, otherwise with the next
    /// redelivery. Never refused: the caller has committed to it. A command
    /// already pending under that id is left as it is.
    pub fn send_as(
        &self,
        gateway: &GatewayId,
        command_id: u64,
        command: GatewayCommand,
        now: Instant,
    ) -> Delivery {
        let mut state = self.state();
        state.next_id = state.next_id.max(command_id);
        let State {
            sessions, outboxes, ..
        } = &mut *state;
        let outbox = outboxes.entry(gateway.clone()).or_default();
        if let Some(sent) = outbox.was_sent(command_id) {
            return match sent {
                true => Delivery::Sent(command_id),
                false => Delivery::Held(command_id),
            };
        }
        outbox.add(command_id, command.clone());
        let Some(session) = sessions.get(gateway) else {
            return Delivery::Held(command_id);
        };
        let outbound = Outbound::Command {
            command_id,
            command,
        };
        match session.tx.try_send(outbound) {
            Ok(()) => {
                outbox.mark_sent(command_id, now);
                Delivery::Sent(command_id)
            }
            Err(_) => Delivery::Held(command_id),
        }
    }

    /// Keeps a command under a stored `command_id` for the gateway's next
    /// stream, without sending it, unless it is pending already.
    pub fn hold_as(&self, gateway: &GatewayId, command_id: u64, command: GatewayCommand) {
        let mut state = self.state();
        state.next_id = state.next_id.max(command_id);
        let outbox = state.outboxes.entry(gateway.clone()).or_default();
        if outbox.was_sent(command_id).is_none() {
            outbox.add(command_id, command);
        }
    }

    /// Keeps a command for the gateway's next stream (unless an equal one
    /// is already pending) without sending it.
    pub fn hold(&self, gateway: &GatewayId, command: GatewayCommand) -> u64 {
        let mut state = self.state();
        let command_id = state.next_id();
        let outbox = state.outboxes.entry(gateway.clone()).or_default();
        if let Some(existing) = outbox.find(&command) {
            return existing;
        }
        outbox.add(command_id, command);
        command_id
    }

    /// Drops a pending command (a wake given up on).
    pub fn forget(&self, gateway: &GatewayId, command_id: u64) {
        if let Some(outbox) = self.state().outboxes.get_mut(gateway) {
            outbox.remove(command_id);
        }
    }

    /// Sends the gateway's pending commands again, same ids, in the order
    /// they were given: all of them (`sent_before` is `None`: a new stream),
    /// or those sent at or before `sent_before` (no acknowledgement in
    /// time). Commands `wanted` refuses are dropped; returned apart.
    pub fn redeliver(
        &self,
        gateway: &GatewayId,
        sent_before: Option<Instant>,
        now: Instant,
        wanted: impl Fn(&GatewayCommand) -> bool,
    ) -> Redelivered {
        let mut redelivered = Redelivered::default();
        let mut state = self.state();
        let State {
            sessions, outboxes, ..
        } = &mut *state;
        let (Some(session), Some(outbox)) = (sessions.get(gateway), outboxes.get_mut(gateway))
        else {
            return redelivered;
        };
        let (due, dropped) = outbox.due(sent_before, wanted);
        redelivered.dropped = dropped;
        for (command_id, command) in due {
            let outbound = Outbound::Command {
                command_id,
                command: command.clone(),
            };
            match session.tx.try_send(outbound) {
                Ok(()) => {
                    let sends = outbox.mark_sent(command_id, now).unwrap_or(1);
                    redelivered.resent.push(Outgoing {
                        command_id,
                        command,
                        sends,
                    });
                }
                // The rest waits for the next round (or the next stream).
                Err(mpsc::error::TrySendError::Full(_)) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        redelivered
    }

    /// Gateways with commands waiting for an acknowledgement.
    pub fn gateways_with_pending(&self) -> Vec<GatewayId> {
        let state = self.state();
        state
            .outboxes
            .iter()
            .filter(|(_, outbox)| !outbox.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Commands given to the gateway and not acknowledged yet.
    pub fn pending_count(&self, gateway: &GatewayId) -> usize {
        self.state().outboxes.get(gateway).map_or(0, Outbox::len)
    }

    /// Matches an acknowledgement to the command it answers, once. Only the
    /// gateway's current stream counts: a replaced one (or one opened with
    /// a rotated token) changes nothing, and what it did not acknowledge in
    /// time went out again on the current one.
    pub fn acknowledge(
        &self,
        gateway: &GatewayId,
        session: u64,
        command_id: u64,
    ) -> Option<GatewayCommand> {
        let mut state = self.state();
        if state.sessions.get(gateway).is_none_or(|s| s.id != session) {
            return None;
        }
        state.outboxes.get_mut(gateway)?.remove(command_id)
    }

    /// Commands given to gateways and not acknowledged yet, all together.
    pub fn pending_total(&self) -> usize {
        self.state().outboxes.values().map(Outbox::len).sum()
    }

    pub fn connected_count(&self) -> usize {
        self.state().sessions.len()
    }

    pub fn connected_since(&self, gateway: &GatewayId) -> Option<Timestamp> {
        self.state()
            .sessions
            .get(gateway)
            .map(|s| s.connected_since)
    }
}

/// What [`GatewayHub::redeliver`] did.
#[derive(Debug, Default)]
pub struct Redelivered {
    pub resent: Vec<Outgoing>,
    /// No longer wanted: removed unsent.
    pub dropped: Commands,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::AgentId;

    fn gw() -> GatewayId {
        GatewayId::parse("gw").unwrap()
    }

    fn retire(n: u64) -> GatewayCommand {
        GatewayCommand::Retire(PendingRetire {
            gateway_id: gw(),
            agent_id: AgentId::parse("a").unwrap(),
            generation: n,
        })
    }

    fn sent_id(rx: &mut mpsc::Receiver<Outbound>) -> u64 {
        match rx.try_recv() {
            Ok(Outbound::Command { command_id, .. }) => command_id,
            other => panic!("expected a command, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn commands_reach_the_current_session_and_acks_match_once() {
        let hub = GatewayHub::new(100);
        let now = Instant::now();
        assert_eq!(hub.send(&gw(), retire(1), now), Ok(Delivery::Held(101)));

        let mut conn = hub.connect(&gw(), Timestamp::from_micros(5));
        assert_eq!(conn.replaced, None);
        // The held command goes out on the new stream, same id.
        let again = hub.redeliver(&gw(), None, now, |_| true);
        assert_eq!(again.resent.len(), 1);
        assert_eq!(sent_id(&mut conn.commands), 101);

        let Delivery::Sent(id) = hub.send(&gw(), retire(2), now).unwrap() else {
            panic!("connected: sent at once");
        };
        assert_eq!(sent_id(&mut conn.commands), id);
        assert_eq!(hub.acknowledge(&gw(), conn.session + 1, id), None);
        assert_eq!(hub.acknowledge(&gw(), conn.session, id), Some(retire(2)));
        assert_eq!(hub.acknowledge(&gw(), conn.session, id), None);
        assert_eq!(hub.pending_count(&gw()), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_supersedes_the_old_one_and_gets_its_unacknowledged_commands() {
        let hub = GatewayHub::new(0);
        let now = Instant::now();
        let mut old = hub.connect(&gw(), Timestamp::from_micros(1));
        let Delivery::Sent(id) = hub.send(&gw(), retire(1), now).unwrap() else {
            panic!("sent");
        };
        assert_eq!(sent_id(&mut old.commands), id);

        let mut new = hub.connect(&gw(), Timestamp::from_micros(2));
        assert_eq!(new.replaced, Some(old.session));
        assert!(matches!(
            old.commands.try_recv(),
            Ok(Outbound::Closed(CloseReason::Superseded))
        ));
        let again = hub.redeliver(&gw(), None, now, |_| true);
        assert_eq!(again.resent[0].command_id, id);
        assert_eq!(again.resent[0].sends, 2);
        assert_eq!(sent_id(&mut new.commands), id);

        assert_eq!(hub.acknowledge(&gw(), old.session, id), None, "replaced");
        assert!(!hub.disconnect(&gw(), old.session), "already replaced");
        assert_eq!(hub.connected_since(&gw()), Some(Timestamp::from_micros(2)));
        assert!(hub.disconnect(&gw(), new.session));
        assert_eq!(hub.connected_since(&gw()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_given_under_a_stored_id_keeps_it_and_later_ids_count_past_it() {
        let hub = GatewayHub::new(100);
        let now = Instant::now();
        hub.hold_as(&gw(), 5_000, retire(1));
        hub.hold_as(&gw(), 5_000, retire(1));
        assert_eq!(hub.pending_count(&gw()), 1, "held once");
        assert_eq!(hub.next_command_id(), 5_001, "never reused");

        let mut conn = hub.connect(&gw(), Timestamp::from_micros(1));
        assert_eq!(
            hub.send_as(&gw(), 7_000, retire(2), now),
            Delivery::Sent(7_000)
        );
        assert_eq!(sent_id(&mut conn.commands), 7_000);
        assert_eq!(
            hub.send_as(&gw(), 7_000, retire(2), now),
            Delivery::Sent(7_000),
            "already pending: not sent twice"
        );
        assert!(conn.commands.try_recv().is_err());
        assert_eq!(
            hub.send_as(&gw(), 5_000, retire(1), now),
            Delivery::Held(5_000)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_that_stops_reading_is_not_admitted_and_a_committed_command_waits() {
        let hub = GatewayHub::default();
        let mut conn = hub.connect(&gw(), Timestamp::from_micros(1));
        for n in 0..QUEUE as u64 {
            assert_eq!(hub.admits(&gw()), Ok(()));
            hub.send(&gw(), retire(n), Instant::now()).unwrap();
        }
        assert_eq!(hub.admits(&gw()), Err(SendError::Backlogged(gw())));
        let id = hub.next_command_id();
        let kept = hub.send_as(&gw(), id, retire(9_999), Instant::now());
        assert_eq!(kept, Delivery::Held(id), "kept for the next redelivery");
        assert_eq!(hub.pending_count(&gw()), QUEUE + 1);
        // Once it reads and answers, the kept command goes out with the
        // next round.
        while let Ok(Outbound::Command { command_id, .. }) = conn.commands.try_recv() {
            hub.acknowledge(&gw(), conn.session, command_id).unwrap();
        }
        let round = hub.redeliver(&gw(), Some(Instant::now()), Instant::now(), |_| true);
        assert_eq!(round.resent.len(), 1);
        assert_eq!(round.resent[0].command_id, id);
        assert_eq!(sent_id(&mut conn.commands), id);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_that_stops_reading_is_backlogged() {
        let hub = GatewayHub::default();
        let _conn = hub.connect(&gw(), Timestamp::from_micros(1));
        for n in 0..QUEUE as u64 {
            hub.send(&gw(), retire(n), Instant::now()).unwrap();
        }
        assert_eq!(
            hub.send(&gw(), retire(0), Instant::now()),
            Err(SendError::Backlogged(gw()))
        );
        assert_eq!(hub.pending_count(&gw()), QUEUE);
    }
}
