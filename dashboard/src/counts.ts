// Counts by status at the top: the whole fleet, then per gateway and per
// board. Recounted from the fleet at most twice a second.

import type { Fleet } from "./fleet";
import { clear, el } from "./dom";
import { STATUSES, statusName } from "./format";

/// Recounting happens at most this often, and takes at most a tenth of the
/// time however large the fleet.
const RECOUNT_EVERY_MS = 500;

type Tally = Map<number, number>;

export class Counts {
  private version = -1;
  private last = 0;
  private timer?: number;
  private cost = 0;

  constructor(
    private readonly fleet: Fleet,
    private readonly totals: HTMLElement,
    private readonly table: HTMLElement,
  ) {}

  render(): void {
    if (this.version === this.fleet.version) return;
    const now = Date.now();
    const every = Math.max(RECOUNT_EVERY_MS, 10 * this.cost);
    if (now - this.last < every) {
      this.timer ??= window.setTimeout(() => {
        this.timer = undefined;
        this.render();
      }, every - (now - this.last));
      return;
    }
    this.last = now;
    this.version = this.fleet.version;
    const all: Tally = new Map();
    const groups = new Map<string, Tally>();
    for (const { agent } of this.fleet.agents.values()) {
      bump(all, agent.status);
      // Sorted as text, a gateway's line comes first, then its boards.
      bump(group(groups, `${agent.gatewayId}\u0000`), agent.status);
      if (agent.boardId) bump(group(groups, `${agent.gatewayId}\u0000\u0001${agent.boardId}`), agent.status);
    }
    clear(this.totals);
    for (const status of STATUSES) {
      const name = statusName(status);
      this.totals.append(
        el("span", { class: `total s-${name}`, "data-status": name }, el("b", {}, String(all.get(status) ?? 0)), ` ${name.toLowerCase()}`),
      );
    }
    const head = el("tr", {}, el("th", {}, "gateway"), el("th", {}, "board"));
    for (const status of STATUSES) head.append(el("th", { class: `s-${statusName(status)}` }, statusName(status).toLowerCase()));
    const rows = [...groups.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const body = rows.map(([key, tally]) => {
      const [gateway, board] = key.split("\u0000");
      const line = board
        ? el("tr", { class: "board" }, el("td", {}, ""), el("td", {}, board.slice(1)))
        : el("tr", { class: "gateway" }, el("td", {}, gateway), el("td", {}, "(all boards)"));
      for (const status of STATUSES) line.append(el("td", {}, String(tally.get(status) ?? "")));
      return line;
    });
    clear(this.table);
    this.table.append(el("thead", {}, head), el("tbody", {}, ...body));
    this.cost = Date.now() - now;
  }
}

function bump(tally: Tally, status: number): void {
  tally.set(status, (tally.get(status) ?? 0) + 1);
}

function group(groups: Map<string, Tally>, key: string): Tally {
  let tally = groups.get(key);
  if (!tally) groups.set(key, (tally = new Map()));
  return tally;
}
