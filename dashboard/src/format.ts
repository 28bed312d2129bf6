// How times, durations and enums read on the page.

import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { AgentRole, AgentStatus, TransitionReason } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";

export function ms(ts: Timestamp | undefined): number | undefined {
  return ts ? timestampMs(ts) : undefined;
}

export function clock(at: number | undefined): string {
  if (at === undefined) return "";
  const d = new Date(at);
  const pad = (n: number, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function dateTime(at: number | undefined): string {
  if (at === undefined) return "";
  return `${new Date(at).toISOString().slice(0, 10)} ${clock(at)}`;
}

/// "3.2s", "4m 10s", "2h 5m"; negative durations as "-" + that.
export function duration(millis: number): string {
  const sign = millis < 0 ? "-" : "";
  let s = Math.abs(millis) / 1000;
  if (s < 10) return `${sign}${s.toFixed(1)}s`;
  if (s < 60) return `${sign}${Math.round(s)}s`;
  const m = Math.floor(s / 60);
  s = Math.round(s % 60);
  if (m < 60) return `${sign}${m}m ${s}s`;
  return `${sign}${Math.floor(m / 60)}h ${m % 60}m`;
}

export function ago(at: number | undefined, now: number): string {
  return at === undefined ? "never" : `${duration(now - at)} ago`;
}

export const STATUSES = [
  AgentStatus.PROVISIONING,
  AgentStatus.UPDATING,
  AgentStatus.ONLINE,
  AgentStatus.OFFLINE,
] as const;

export function statusName(status: AgentStatus): string {
  return (AgentStatus[status] ?? "UNSPECIFIED").toString();
}

export function roleName(role: AgentRole): string {
  switch (role) {
    case AgentRole.GATEWAY_MAIN:
      return "gateway-main";
    case AgentRole.BOARD_LEAD:
      return "board lead";
    case AgentRole.BOARD_WORKER:
      return "board worker";
    default:
      return "";
  }
}

export function reasonName(reason: TransitionReason): string {
  return (TransitionReason[reason] ?? "UNSPECIFIED").toString().toLowerCase().replace(/_/g, " ");
}
