//! The commands one gateway has been given and has not acknowledged.
//!
//! The outbox belongs to the gateway, not to one of its connections: a
//! command sent on a stream that is then replaced, or that is never answered,
//! goes out again with the same command id, on the next stream or after the
//! acknowledgement timeout. The gateway's client drops what it has already
//! seen by that id, so a command is carried out once however often it is sent.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::gateways::GatewayCommand;

#[derive(Debug)]
struct Pending {
    command: GatewayCommand,
    /// When it last went out on a stream; `None`: not yet (no stream).
    sent_at: Option<Instant>,
    sends: u32,
}

/// A command going out (again) on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub command_id: u64,
    pub command: GatewayCommand,
    /// How many times it has gone out, this time included.
    pub sends: u32,
}

/// Commands by id.
pub type Commands = Vec<(u64, GatewayCommand)>;

#[derive(Debug, Default)]
pub struct Outbox {
    /// By command id, which is the order the commands were given in.
    pending: BTreeMap<u64, Pending>,
}

impl Outbox {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Keeps a new command, not yet sent. A newer wake of an agent makes
    /// that agent's older pending wakes pointless, and a newer template sync
    /// the gateway's older pending syncs: they are dropped.
    pub fn add(&mut self, command_id: u64, command: GatewayCommand) {
        match &command {
            GatewayCommand::Wake(order) => self.pending.retain(|_, p| {
                !matches!(&p.command, GatewayCommand::Wake(old) if old.agent_id == order.agent_id)
            }),
            GatewayCommand::TemplateSync(_) => self
                .pending
                .retain(|_, p| !matches!(p.command, GatewayCommand::TemplateSync(_))),
            GatewayCommand::Retire(_) => {}
        }
        self.pending.insert(
            command_id,
            Pending {
                command,
                sent_at: None,
                sends: 0,
            },
        );
    }

    /// The id of an equal command already pending, if any.
    pub fn find(&self, command: &GatewayCommand) -> Option<u64> {
        self.pending
            .iter()
            .find(|(_, p)| p.command == *command)
            .map(|(id, _)| *id)
    }

    /// Whether the command with this id has gone out; `None`: not pending.
    pub fn was_sent(&self, command_id: u64) -> Option<bool> {
        self.pending
            .get(&command_id)
            .map(|pending| pending.sent_at.is_some())
    }

    /// Records that the command went out at `now`.
    pub fn mark_sent(&mut self, command_id: u64, now: Instant) -> Option<u32> {
        let pending = self.pending.get_mut(&command_id)?;
        pending.sent_at = Some(now);
        pending.sends += 1;
        Some(pending.sends)
    }

    /// Removes the command: acknowledged, given up, or no longer wanted.
    pub fn remove(&mut self, command_id: u64) -> Option<GatewayCommand> {
        self.pending.remove(&command_id).map(|p| p.command)
    }

    /// Commands due to go out again, in the order they were given: those
    /// never sent, and those sent at or before `sent_before` (all, if
    /// `None`: a new stream gets everything pending). Commands `wanted`
    /// refuses (the agent checked in, the retire was done) are dropped and
    /// returned apart.
    pub fn due(
        &mut self,
        sent_before: Option<Instant>,
        wanted: impl Fn(&GatewayCommand) -> bool,
    ) -> (Commands, Commands) {
        let (mut due, mut dropped) = (Vec::new(), Vec::new());
        for (id, pending) in &self.pending {
            let is_due = match (pending.sent_at, sent_before) {
                (None, _) | (_, None) => true,
                (Some(sent), Some(before)) => sent <= before,
            };
            if !is_due {
                continue;
            }
            if wanted(&pending.command) {
                due.push((*id, pending.command.clone()));
            } else {
                dropped.push((*id, pending.command.clone()));
            }
        }
        for (id, _) in &dropped {
            self.pending.remove(id);
        }
        (due, dropped)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::{AgentId, GatewayId, PendingRetire, Role, Timestamp, WakeOrder};

    fn wake(agent: &str, attempt: u32) -> GatewayCommand {
        GatewayCommand::Wake(WakeOrder {
            gateway_id: GatewayId::parse("gw").unwrap(),
            agent_id: AgentId::parse(agent).unwrap(),
            agent_name: agent.into(),
            board_id: None,
            role: Role::GatewayMain,
            generation: 1,
            attempt,
            template_version: String::new(),
            checkin_deadline_at: Timestamp::from_micros(0),
        })
    }

    fn retire(agent: &str) -> GatewayCommand {
        GatewayCommand::Retire(PendingRetire {
            gateway_id: GatewayId::parse("gw").unwrap(),
            agent_id: AgentId::parse(agent).unwrap(),
            generation: 1,
        })
    }

    fn ids(commands: &[(u64, GatewayCommand)]) -> Vec<u64> {
        commands.iter().map(|(id, _)| *id).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_commands_are_due_again_in_order_after_the_timeout() {
        let mut outbox = Outbox::default();
        outbox.add(7, wake("a", 1));
        outbox.add(9, retire("b"));
        let start = Instant::now();
        assert_eq!(outbox.mark_sent(7, start), Some(1));

        // A new stream gets everything; an open one only what is overdue.
        assert_eq!(ids(&outbox.due(None, |_| true).0), [7, 9]);
        let cutoff = start - Duration::from_secs(1);
        assert_eq!(ids(&outbox.due(Some(cutoff), |_| true).0), [9]);
        outbox.mark_sent(9, start);
        assert!(outbox.due(Some(cutoff), |_| true).0.is_empty());
        assert_eq!(ids(&outbox.due(Some(start), |_| true).0), [7, 9]);
        assert_eq!(outbox.mark_sent(7, start), Some(2));

        assert_eq!(outbox.remove(7), Some(wake("a", 1)));
        assert_eq!(outbox.remove(7), None, "acknowledged once");
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn a_newer_wake_replaces_the_agents_older_one_and_unwanted_commands_go() {
        let mut outbox = Outbox::default();
        outbox.add(1, wake("a", 1));
        outbox.add(2, wake("b", 1));
        outbox.add(3, wake("a", 2));
        assert_eq!(outbox.find(&wake("a", 1)), None);
        assert_eq!(outbox.find(&wake("a", 2)), Some(3));

        let (due, dropped) = outbox.due(None, |c| *c != wake("b", 1));
        assert_eq!(ids(&due), [3]);
        assert_eq!(ids(&dropped), [2]);
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn a_newer_template_sync_replaces_the_older_unacknowledged_one() {
        let sync = |command_id: u64, v: &str| {
            GatewayCommand::TemplateSync(crate::engine::PendingSync {
                gateway_id: GatewayId::parse("gw").unwrap(),
                command_id,
                template_version: v.into(),
                requested_at: Timestamp::from_micros(1),
            })
        };
        let mut outbox = Outbox::default();
        outbox.add(1, sync(1, "v1"));
        outbox.add(2, retire("a"));
        outbox.add(3, sync(3, "v2"));
        assert_eq!(outbox.was_sent(3), Some(false));
        assert_eq!(outbox.was_sent(1), None);
        assert_eq!(ids(&outbox.due(None, |_| true).0), [2, 3]);
        assert_eq!(
            outbox.remove(1),
            None,
            "superseded: its ack matches nothing"
        );
    }
}
