// The fleet as the page knows it: every agent by id, kept current from the
// watch stream. Changes are queued as they arrive and applied once per
// animation frame, so hundreds of changes a second cost one render.

import type { Agent, AgentEvent, HeartbeatSeen } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import { AgentStatus, EventType, TransitionReason } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import { ms } from "./format";

/// One agent as the table shows it (plain fields: cheap to sort).
export interface Row {
  agent: Agent;
  lastSeen?: number;
  leaseExpires?: number;
}

/// A check-in seen live: how long after its wake the agent came back.
export interface CheckIn {
  at: number;
  latencyMs: number;
}

type Change =
  | { kind: "event"; event: AgentEvent }
  | { kind: "heartbeat"; seen: HeartbeatSeen };

export class Fleet {
  readonly agents = new Map<string, Row>();
  /// Bumped whenever the set of agents or any field changed.
  version = 0;
  /// Bumped when membership or a sortable field changed (re-sort needed).
  orderVersion = 0;
  private queue: Change[] = [];
  private scheduled = false;
  private listeners: (() => void)[] = [];
  private eventListeners: ((event: AgentEvent) => void)[] = [];
  private checkIns: ((checkIn: CheckIn) => void)[] = [];

  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  /// Live (not snapshot) events, after they are applied.
  onEvent(listener: (event: AgentEvent) => void): void {
    this.eventListeners.push(listener);
  }

  onCheckIn(listener: (checkIn: CheckIn) => void): void {
    this.checkIns.push(listener);
  }

  /// Replaces everything with a snapshot (after a reload, nothing stale).
  replace(snapshot: Agent[]): void {
    this.queue = [];
    this.agents.clear();
    for (const agent of snapshot) this.agents.set(agent.id, row(agent));
    this.version++;
    this.orderVersion++;
    this.notify();
  }

  push(event: AgentEvent): void {
    this.enqueue({ kind: "event", event });
  }

  heartbeat(seen: HeartbeatSeen): void {
    this.enqueue({ kind: "heartbeat", seen });
  }

  private enqueue(change: Change): void {
    this.queue.push(change);
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  /// Applies every queued change, then tells the views once.
  flush(): void {
    this.scheduled = false;
    const queue = this.queue;
    if (queue.length === 0) return;
    this.queue = [];
    const applied: AgentEvent[] = [];
    for (const change of queue) {
      if (change.kind === "heartbeat") {
        const current = this.agents.get(change.seen.agentId);
        if (current) {
          current.lastSeen = ms(change.seen.lastSeenAt) ?? current.lastSeen;
          current.leaseExpires = ms(change.seen.leaseExpiresAt) ?? current.leaseExpires;
        }
        continue;
      }
      const { event } = change;
      const agent = event.agent;
      if (!agent) continue;
      const before = this.agents.get(agent.id);
      // A late event for an older revision changes nothing.
      if (before && before.agent.revision > event.revision) continue;
      if (event.type === EventType.DELETED) {
        this.agents.delete(agent.id);
        this.orderVersion++;
      } else {
        const next = row(agent);
        if (!before || sortKeyChanged(before.agent, agent)) this.orderVersion++;
        this.agents.set(agent.id, next);
      }
      applied.push(event);
    }
    this.version++;
    this.notify();
    for (const event of applied) {
      for (const listener of this.eventListeners) listener(event);
      const checkIn = checkInOf(event);
      if (checkIn) for (const listener of this.checkIns) listener(checkIn);
    }
  }

  private notify(): void {
    for (const listener of this.listeners) listener();
  }
}

function row(agent: Agent): Row {
  return { agent, lastSeen: ms(agent.lastSeenAt), leaseExpires: ms(agent.leaseExpiresAt) };
}

function sortKeyChanged(a: Agent, b: Agent): boolean {
  return (
    a.status !== b.status ||
    a.wakeAttempts !== b.wakeAttempts ||
    a.name !== b.name ||
    a.boardId !== b.boardId ||
    a.lastProvisionError !== b.lastProvisionError
  );
}

function checkInOf(event: AgentEvent): CheckIn | undefined {
  if (event.reason !== TransitionReason.CHECKED_IN || !event.agent) return undefined;
  const at = ms(event.at);
  const woken = ms(event.agent.lastWakeSentAt);
  if (at === undefined || woken === undefined || at < woken) return undefined;
  return { at, latencyMs: at - woken };
}

export function drift(agent: Agent): string {
  const { desiredTemplateVersion: want, reportedTemplateVersion: has } = agent;
  if (!want || !has || want === has) return "";
  return `${has} → ${want}`;
}

export function isOnline(agent: Agent): boolean {
  return agent.status === AgentStatus.ONLINE;
}
