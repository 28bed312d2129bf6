// The fleet table: sortable, filterable, and virtualized. Only the rows in
// view exist in the DOM (a fixed pool, re-filled on scroll and on change),
// so 100,000 agents cost what 40 do. The filtered and sorted order is built
// when a filter or the sort changes, and each change to an agent then moves
// only its row (order.ts).

import type { Fleet, Row } from "./fleet";
import { drift } from "./fleet";
import { SortedRows, type Compare } from "./order";
import { clear, el, setText } from "./dom";
import { ago, duration, roleName, statusName } from "./format";
import { AgentStatus } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";

export const ROW_HEIGHT = 26;
const OVERSCAN = 8;

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
  private readonly sorted: SortedRows;
  private sortKey = "id";
  private descending = false;
  private pool: HTMLElement[] = [];
  private shownText = "";
  private height = -1;
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
    this.sorted = new SortedRows(this.compare(), this.matcher());
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
    fleet.listen({
      reset: () => {
        this.sorted.rebuild(fleet.agents.values());
        this.render();
      },
      changed: (changes) => {
        this.sorted.apply(changes, () => fleet.agents.values());
        this.render();
      },
    });
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
    this.reorder();
  }

  setFilter(filter: Filter): void {
    this.filter = filter;
    this.reorder();
  }

  private reorder(): void {
    this.sorted.reset(this.compare(), this.matcher(), this.fleet.agents.values());
    this.render();
  }

  private compare(): Compare {
    const column = COLUMNS.find((c) => c.key === this.sortKey) ?? COLUMNS[0];
    const compare = column.compare ?? (() => 0);
    const sign = this.descending ? -1 : 1;
    return (a, b) => sign * compare(a, b) || order(a.agent.id, b.agent.id);
  }

  private matcher(): (row: Row) => boolean {
    const { gateway, board, status, id } = this.filter;
    const needle = id.trim().toLowerCase();
    return ({ agent: a }) =>
      (!gateway || a.gatewayId === gateway) &&
      (!board || a.boardId === board) &&
      (!status || a.status === status) &&
      (!needle || a.id.toLowerCase().includes(needle));
  }

  /// Fills the visible rows from the current state.
  render(): void {
    const now = Date.now();
    const rows = this.sorted.rows;
    if (this.height !== rows.length) {
      this.height = rows.length;
      this.spacer.style.height = `${rows.length * ROW_HEIGHT}px`;
    }
    const shown = `${rows.length} of ${this.fleet.agents.size} agents`;
    if (shown !== this.shownText) setText(this.shown, (this.shownText = shown));
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
    const shift = `translateY(${first * ROW_HEIGHT}px)`;
    if (this.body.style.transform !== shift) this.body.style.transform = shift;
    const wanted = this.pool.slice(0, last - first);
    if (this.body.childElementCount !== wanted.length) {
      clear(this.body);
      this.body.append(...wanted);
    }
    for (let i = first; i < last; i++) {
      const row = rows[i];
      const line = wanted[i - first];
      // (Attributes set only when they change: each write restyles the row.)
      if (line.dataset.id !== row.agent.id) line.dataset.id = row.agent.id;
      const status = statusName(row.agent.status);
      if (line.dataset.status !== status) line.dataset.status = status;
      COLUMNS.forEach((column, c) => setText(line.children[c], column.text(row, now)));
    }
  }
}
