// Counts by status at the top: the whole fleet, then per gateway and per
// board. Kept as running tallies (each change moves one agent from one
// count to another; only a snapshot counts everything), shown at once in
// the totals and at most twice a second in the table per gateway and board.

import type { Agent } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import type { Fleet } from "./fleet";
import { clear, el, setText } from "./dom";
import { STATUSES, statusName } from "./format";

const TABLE_EVERY_MS = 500;

/// Agents per status, in the order of STATUSES.
export type Tally = number[];

export class Tallies {
  readonly all: Tally = STATUSES.map(() => 0);
  /// By `gateway \0` and `gateway \0 \1 board`: sorted as text, a
  /// gateway's line comes first, then its boards.
  readonly groups = new Map<string, Tally>();

  add(agent: Agent, sign: 1 | -1): void {
    const at = STATUSES.indexOf(agent.status as (typeof STATUSES)[number]);
    if (at < 0) return;
    this.all[at] += sign;
    this.bump(`${agent.gatewayId}\u0000`, at, sign);
    if (agent.boardId) this.bump(`${agent.gatewayId}\u0000\u0001${agent.boardId}`, at, sign);
  }

  clear(): void {
    this.all.fill(0);
    this.groups.clear();
  }

  private bump(key: string, at: number, sign: 1 | -1): void {
    let tally = this.groups.get(key);
    if (!tally) this.groups.set(key, (tally = STATUSES.map(() => 0)));
    tally[at] += sign;
    // A group with nobody left (moved or deleted) leaves the table.
    if (tally.every((n) => n === 0)) this.groups.delete(key);
  }
}

export class Counts {
  readonly tallies = new Tallies();
  private tableShown = 0;
  private tableTimer?: number;
  private readonly totalCells: HTMLElement[] = [];

  constructor(
    fleet: Fleet,
    totals: HTMLElement,
    private readonly table: HTMLElement,
  ) {
    for (const status of STATUSES) {
      const name = statusName(status);
      const count = el("b", {}, "0");
      this.totalCells.push(count);
      totals.append(el("span", { class: `total s-${name}`, "data-status": name }, count, ` ${name.toLowerCase()}`));
    }
    fleet.listen({
      reset: () => {
        this.tallies.clear();
        for (const { agent } of fleet.agents.values()) this.tallies.add(agent, 1);
        this.render();
      },
      changed: (changes) => {
        for (const { before, after } of changes) {
          // A lease renewal keeps the same agent: no count moves.
          if (before?.agent === after?.agent) continue;
          if (before) this.tallies.add(before.agent, -1);
          if (after) this.tallies.add(after.agent, 1);
        }
        this.render();
      },
    });
  }

  private render(): void {
    this.tallies.all.forEach((n, i) => setText(this.totalCells[i], String(n)));
    const wait = this.tableShown + TABLE_EVERY_MS - Date.now();
    if (wait <= 0) this.renderTable();
    else
      this.tableTimer ??= window.setTimeout(() => {
        this.tableTimer = undefined;
        this.renderTable();
      }, wait);
  }

  private renderTable(): void {
    this.tableShown = Date.now();
    const head = el("tr", {}, el("th", {}, "gateway"), el("th", {}, "board"));
    for (const status of STATUSES) head.append(el("th", { class: `s-${statusName(status)}` }, statusName(status).toLowerCase()));
    const rows = [...this.tallies.groups.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const body = rows.map(([key, tally]) => {
      const [gateway, board] = key.split("\u0000");
      const line = board
        ? el("tr", { class: "board" }, el("td", {}, ""), el("td", {}, board.slice(1)))
        : el("tr", { class: "gateway" }, el("td", {}, gateway), el("td", {}, "(all boards)"));
      for (const n of tally) line.append(el("td", {}, n ? String(n) : ""));
      return line;
    });
    clear(this.table);
    this.table.append(el("thead", {}, head), el("tbody", {}, ...body));
  }
}
