//! Connected gateways: one command stream each, and the commands each has
//! been sent but not yet acknowledged.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::engine::{AgentId, GatewayId, PendingRetire, Timestamp, WakeOrder};

/// Commands queued for one gateway beyond this are refused: the gateway is
/// not keeping up, and the wake counts as failed.
const QUEUE: usize = 1024;
/// Unacknowledged commands beyond this are refused likewise.
const MAX_UNACKED: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayCommand {
    Wake(WakeOrder),
    Retire(PendingRetire),
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

/// What a sent command was, for matching its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Wake {
        agent_id: AgentId,
        generation: u64,
        attempt: u32,
    },
    Retire(PendingRetire),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("gateway {0} is not connected")]
    NotConnected(GatewayId),
    #[error("gateway {0} is not keeping up with its commands")]
    Backlogged(GatewayId),
}

struct Session {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    connected_since: Timestamp,
    unacked: HashMap<u64, Sent>,
}

#[derive(Default)]
pub struct GatewayHub {
    sessions: Mutex<HashMap<GatewayId, Session>>,
    next_id: Mutex<u64>,
}

impl GatewayHub {
    fn next_id(&self) -> u64 {
        let mut next = self.next_id.lock().expect("gateway hub lock");
        *next += 1;
        *next
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<GatewayId, Session>> {
        self.sessions.lock().expect("gateway hub lock")
    }

    /// Opens a session, replacing (and ending) any older one.
    pub fn connect(&self, gateway: &GatewayId, now: Timestamp) -> (u64, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id();
        let session = Session {
            id,
            tx,
            connected_since: now,
            unacked: HashMap::new(),
        };
        if let Some(old) = self.sessions().insert(gateway.clone(), session) {
            // Best effort: if its queue is full, dropping the sender ends it.
            let _ = old.tx.try_send(Outbound::Closed(CloseReason::Superseded));
        }
        (id, rx)
    }

    /// Ends the gateway's session, whatever it is.
    pub fn evict(&self, gateway: &GatewayId, reason: CloseReason) {
        if let Some(old) = self.sessions().remove(gateway) {
            // Best effort: if its queue is full, dropping the sender ends it.
            let _ = old.tx.try_send(Outbound::Closed(reason));
        }
    }

    /// Closes a session, unless a newer one has replaced it.
    /// Ends every session, telling each gateway why.
    pub fn evict_all(&self, reason: CloseReason) {
        for (_, old) in std::mem::take(&mut *self.sessions()) {
            let _ = old.tx.try_send(Outbound::Closed(reason));
        }
    }

    pub fn disconnect(&self, gateway: &GatewayId, session: u64) {
        let mut sessions = self.sessions();
        if sessions.get(gateway).is_some_and(|s| s.id == session) {
            sessions.remove(gateway);
        }
    }

    pub fn send(&self, gateway: &GatewayId, command: GatewayCommand) -> Result<(), SendError> {
        let command_id = self.next_id();
        let mut sessions = self.sessions();
        let session = sessions
            .get_mut(gateway)
            .ok_or_else(|| SendError::NotConnected(gateway.clone()))?;
        if session.unacked.len() >= MAX_UNACKED {
            return Err(SendError::Backlogged(gateway.clone()));
        }
        let sent = match &command {
            GatewayCommand::Wake(order) => Sent::Wake {
                agent_id: order.agent_id.clone(),
                generation: order.generation,
                attempt: order.attempt,
            },
            GatewayCommand::Retire(retire) => Sent::Retire(retire.clone()),
        };
        match session.tx.try_send(Outbound::Command {
            command_id,
            command,
        }) {
            Ok(()) => {
                session.unacked.insert(command_id, sent);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(SendError::Backlogged(gateway.clone())),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                sessions.remove(gateway);
                Err(SendError::NotConnected(gateway.clone()))
            }
        }
    }

    /// Matches an acknowledgement to the command it answers, once.
    pub fn acknowledge(&self, gateway: &GatewayId, session: u64, command_id: u64) -> Option<Sent> {
        let mut sessions = self.sessions();
        let current = sessions.get_mut(gateway).filter(|s| s.id == session)?;
        current.unacked.remove(&command_id)
    }

    pub fn connected_count(&self) -> usize {
        self.sessions().len()
    }

    pub fn connected_since(&self, gateway: &GatewayId) -> Option<Timestamp> {
        self.sessions().get(gateway).map(|s| s.connected_since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn commands_reach_the_current_session_and_acks_match_once() {
        let hub = GatewayHub::default();
        assert_eq!(
            hub.send(&gw(), retire(1)),
            Err(SendError::NotConnected(gw()))
        );

        let (session, mut rx) = hub.connect(&gw(), Timestamp::from_micros(5));
        hub.send(&gw(), retire(1)).unwrap();
        let Some(Outbound::Command { command_id, .. }) = rx.try_recv().ok() else {
            panic!("expected a command");
        };
        assert!(matches!(
            hub.acknowledge(&gw(), session, command_id),
            Some(Sent::Retire(_))
        ));
        assert_eq!(hub.acknowledge(&gw(), session, command_id), None);
    }

    #[test]
    fn a_new_connection_supersedes_the_old_one() {
        let hub = GatewayHub::default();
        let (old, mut old_rx) = hub.connect(&gw(), Timestamp::from_micros(1));
        let (new, _new_rx) = hub.connect(&gw(), Timestamp::from_micros(2));
        assert!(matches!(
            old_rx.try_recv(),
            Ok(Outbound::Closed(CloseReason::Superseded))
        ));
        hub.disconnect(&gw(), old);
        assert_eq!(hub.connected_since(&gw()), Some(Timestamp::from_micros(2)));
        hub.disconnect(&gw(), new);
        assert_eq!(hub.connected_since(&gw()), None);
    }

    #[test]
    fn a_gateway_that_stops_reading_is_backlogged() {
        let hub = GatewayHub::default();
        let (_session, _rx) = hub.connect(&gw(), Timestamp::from_micros(1));
        for n in 0..QUEUE as u64 {
            hub.send(&gw(), retire(n)).unwrap();
        }
        assert_eq!(hub.send(&gw(), retire(0)), Err(SendError::Backlogged(gw())));
    }
}
