// The fleet as the page knows it: every agent by id, kept current from the
// watch stream. Changes are queued as they arrive and applied once per
// animation frame; the views hear each applied batch as a list of
// (before, after) rows, so they update what changed instead of going over
// 100,000 agents each time.

import type { Agent, AgentEvent, HeartbeatSeen } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import { EventType, TransitionReason } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import { ms } from "./format";

/// One agent as the table shows it (plain fields: cheap to sort). Never
/// changed once made: a change makes a new row, so a view can still find
/// the old one where it put it.
export interface Row {
  readonly agent: Agent;
  readonly lastSeen?: number;
  readonly leaseExpires?: number;
}

/// One agent's change in a batch: added (no before), removed (no after),
/// or changed.
export interface RowChange {
  before?: Row;
  after?: Row;
}

/// A check-in seen live: how long after its wake the agent came back.
export interface CheckIn {
  at: number;
  latencyMs: number;
}

export interface FleetListener {
  /// Everything was replaced (a snapshot): rebuild from `fleet.agents`.
  reset(): void;
  /// These changes were applied, in order.
  changed(changes: RowChange[]): void;
}

type Change =
  | { kind: "event"; event: AgentEvent }
  | { kind: "heartbeat"; seen: HeartbeatSeen };

/// A hidden tab gets no animation frames: its changes are applied this
/// often instead, so the queue cannot grow without bound.
const FLUSH_AT_LEAST_EVERY_MS = 500;

export class Fleet {
  readonly agents = new Map<string, Row>();
  private queue: Change[] = [];
  private scheduled = false;
  private listeners: FleetListener[] = [];
  private eventListeners: ((event: AgentEvent) => void)[] = [];
  private checkIns: ((checkIn: CheckIn) => void)[] = [];

  listen(listener: FleetListener): void {
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
    for (const listener of this.listeners) listener.reset();
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
      setTimeout(() => this.flush(), FLUSH_AT_LEAST_EVERY_MS);
    }
  }

  /// Applies every queued change, then tells the views once.
  flush(): void {
    this.scheduled = false;
    const queue = this.queue;
    if (queue.length === 0) return;
    this.queue = [];
    const changes: RowChange[] = [];
    const applied: AgentEvent[] = [];
    for (const change of queue) {
      if (change.kind === "heartbeat") {
        const before = this.agents.get(change.seen.agentId);
        if (!before) continue;
        const after: Row = {
          agent: before.agent,
          lastSeen: ms(change.seen.lastSeenAt) ?? before.lastSeen,
          leaseExpires: ms(change.seen.leaseExpiresAt) ?? before.leaseExpires,
        };
        this.agents.set(after.agent.id, after);
        changes.push({ before, after });
        continue;
      }
      const { event } = change;
      const agent = event.agent;
      if (!agent) continue;
      const before = this.agents.get(agent.id);
      // A late event for an older revision changes nothing.
      if (before && before.agent.revision > event.revision) continue;
      if (event.type === EventType.DELETED) {
        if (!before) continue;
        this.agents.delete(agent.id);
        changes.push({ before });
      } else {
        const after = row(agent);
        this.agents.set(agent.id, after);
        changes.push({ before, after });
      }
      applied.push(event);
    }
    if (changes.length > 0) for (const listener of this.listeners) listener.changed(changes);
    for (const event of applied) {
      for (const listener of this.eventListeners) listener(event);
      const checkIn = checkInOf(event);
      if (checkIn) for (const listener of this.checkIns) listener(checkIn);
    }
  }
}

function row(agent: Agent): Row {
  return { agent, lastSeen: ms(agent.lastSeenAt), leaseExpires: ms(agent.leaseExpiresAt) };
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
