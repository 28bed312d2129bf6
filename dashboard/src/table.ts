// The fleet table: sortable, filterable, and virtualized. Only the rows in
// view exist in the DOM (a fixed pool, re-filled on scroll and on change),
// so 100,000 agents cost what 40 do. The filtered and sorted order is
// recomputed when a filter or the sort changes, and at most a few times a
// second when agents come, go or change a sortable field.

import type { Fleet, Row } from "./fleet";
import { drift } from "./fleet";
import { clear, el, setText } from "./dom";
import { ago, duration, roleName, statusName } from "./format";
import { AgentStatus } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";

export const ROW_HEIGHT = 26;
const OVERSCAN = 8;
/// Re-sorting on changes happens at most this often, and never takes more
/// than a tenth of the time: with a large fleet, at most every ten sorts' worth.
const RESORT_EVERY_MS = 300;

interface Column {
  key: string;
  title: string;
  text(row: Row, now: number): string;
  compare?(a: Row, b: Row): number;
}

// Code-unit order, not localeCompare: ids are ASCII, and a locale-aware
// compare makes sorting 100,000 rows many times slower.
const order = (x: string, y: string) => (x < y ? -1 : x > y ? 1 : 0);
const byText = (f: (r: Row) => string) => (a: Row, b: Row) => order(f(a), f(b));
const byNumber = (f: (r: Row) => number) => (a: Row, b: Row) => f(a) - f(b);

const COLUMNS: Column[] = [
  { key: "id", title: "id", text: (r) => r.agent.id, compare: byText((r) => r.agent.id) },
  { key: "name", title: "name", text: (r) => r.agent.name, compare: byText((r) => r.agent.name) },
  { key: "gateway", title: "gateway", text: (r) => r.agent.gatewayId, compare: byText((r) => r.agent.gatewayId) },
  { key: "board", title: "board", text: (r) => r.agent.boardId, compare: byText((r) => r.agent.boardId) },
  { key: "role", title: "role", text: (r) => roleName(r.agent.role), compare: byNumber((r) => r.agent.role) },
  { key: "status", title: "status", text: (r) => statusName(r.agent.status), compare: byNumber((r) => r.agent.status) },
  { key: "attempts", title: "attempts", text: (r) => String(r.agent.wakeAttempts), compare: byNumber((r) => r.agent.wakeAttempts) },
  { key: "seen", title: "last seen", text: (r, now) => ago(r.lastSeen, now), compare: byNumber((r) => r.lastSeen ?? 0) },
  {
    key: "lease",
    title: "lease left",
    text: (r, now) =>
      r.agent.status === AgentStatus.ONLINE && r.leaseExpires !== undefined ? duration(r.leaseExpires - now) : "",
    compare: byNumber((r) => r.leaseExpires ?? 0),
  },
  {
    key: "error",
    title: "last error",
    text: (r) => r.agent.lastProvisionError || r.agent.offlineReason,
    compare: byText((r) => r.agent.lastProvisionError || r.agent.offlineReason),
  },
  { key: "drift", title: "template drift", text: (r) => drift(r.agent), compare: byText((r) => drift(r.agent)) },
];

export interface Filter {
  gateway: string;
  board: string;
  status: AgentStatus | 0;
  id: string;
}

export class FleetTable {
  private order: Row[] = [];
  private orderVersion = -1;
  private filterKey = "";
  private sortKey = "id";
  private descending = false;
  private lastSort = 0;
  private sortCost = 0;
  private catchUp?: number;
  private pool: HTMLElement[] = [];
  private readonly spacer: HTMLElement;
  private readonly body: HTMLElement;
  private readonly header: HTMLElement;
  private readonly shown: HTMLElement;
  filter: Filter = { gateway: "", board: "", status: 0, id: "" };

  constructor(
    private readonly fleet: Fleet,
    private readonly viewport: HTMLElement,
    shown: HTMLElement,
    private readonly onSelect: (id: string) => void,
  ) {
    this.shown = shown;
    this.header = el("div", { class: "row head" });
    for (const column of COLUMNS) {
      const cell = el("button", { class: `cell c-${column.key}`, type: "button", "data-sort": column.key }, column.title);
      cell.addEventListener("click", () => this.sortBy(column.key));
      this.header.append(cell);
    }
    this.spacer = el("div", { class: "spacer" });
    this.body = el("div", { class: "rows" });
    this.spacer.append(this.body);
    viewport.before(this.header);
    viewport.append(this.spacer);
    viewport.addEventListener("scroll", () => this.render(), { passive: true });
    window.addEventListener("resize", () => this.render());
  }

  sortBy(key: string): void {
    if (this.sortKey === key) this.descending = !this.descending;
    else {
      this.sortKey = key;
      this.descending = false;
    }
    for (const cell of this.header.children) {
      const sorted = (cell as HTMLElement).dataset.sort === key;
      cell.setAttribute("aria-sort", sorted ? (this.descending ? "descending" : "ascending") : "none");
    }
    this.orderVersion = -1;
    this.render();
  }

  setFilter(filter: Filter): void {
    this.filter = filter;
    this.orderVersion = -1;
    this.render();
  }

  /// The rows in order, recomputed when needed (and not too often).
  private rows(now: number): Row[] {
    const key = JSON.stringify(this.filter);
    const stale = this.orderVersion !== this.fleet.orderVersion || key !== this.filterKey;
    const every = Math.max(RESORT_EVERY_MS, 10 * this.sortCost);
    if (stale && (key !== this.filterKey || this.orderVersion === -1 || now - this.lastSort >= every)) {
      const { gateway, board, status, id } = this.filter;
      const needle = id.trim().toLowerCase();
      const rows: Row[] = [];
      for (const row of this.fleet.agents.values()) {
        const a = row.agent;
        if (gateway && a.gatewayId !== gateway) continue;
        if (board && a.boardId !== board) continue;
        if (status && a.status !== status) continue;
        if (needle && !a.id.toLowerCase().includes(needle)) continue;
        rows.push(row);
      }
      const column = COLUMNS.find((c) => c.key === this.sortKey) ?? COLUMNS[0];
      const compare = column.compare ?? (() => 0);
      const sign = this.descending ? -1 : 1;
      rows.sort((a, b) => sign * compare(a, b) || order(a.agent.id, b.agent.id));
      this.order = rows;
      this.orderVersion = this.fleet.orderVersion;
      this.filterKey = key;
      this.lastSort = now;
      this.sortCost = Date.now() - now;
    } else if (stale && !this.catchUp) {
      // Not yet: the order catches up when the interval is over.
      this.catchUp = window.setTimeout(() => {
        this.catchUp = undefined;
        this.render();
      }, every - (now - this.lastSort));
    }
    return this.order;
  }

  /// Fills the visible rows from the current state.
  render(): void {
    const now = Date.now();
    const rows = this.rows(now);
    this.spacer.style.height = `${rows.length * ROW_HEIGHT}px`;
    setText(this.shown, `${rows.length} of ${this.fleet.agents.size} agents`);
    const first = Math.max(0, Math.floor(this.viewport.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const count = Math.ceil(this.viewport.clientHeight / ROW_HEIGHT) + 2 * OVERSCAN;
    const last = Math.min(rows.length, first + count);
    while (this.pool.length < last - first) {
      const line = el("div", { class: "row" });
      for (const column of COLUMNS) line.append(el("span", { class: `cell c-${column.key}` }));
      line.addEventListener("click", () => {
        if (line.dataset.id) this.onSelect(line.dataset.id);
      });
      this.pool.push(line);
    }
    this.body.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    const wanted = this.pool.slice(0, last - first);
    if (this.body.childElementCount !== wanted.length) {
      clear(this.body);
      this.body.append(...wanted);
    }
    for (let i = first; i < last; i++) {
      // The order may lag a moment; the cells show the agent as it is now.
      const row = this.fleet.agents.get(rows[i].agent.id) ?? rows[i];
      const line = wanted[i - first];
      line.dataset.id = row.agent.id;
      line.dataset.status = statusName(row.agent.status);
      COLUMNS.forEach((column, c) => setText(line.children[c], column.text(row, now)));
    }
  }
}
