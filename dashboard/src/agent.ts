// One agent in the side panel: its state, its story from GetAgentHistory
// (each wake, check-in and why it went offline, with times), and for an
// admin the wake and delete actions (delete asks first).

import type { Access } from "./api";
import { describe, lifecycle } from "./api";
import type { Fleet } from "./fleet";
import { drift } from "./fleet";
import { byId, clear, el, setText } from "./dom";
import { dateTime, duration, ms, reasonName, roleName, statusName } from "./format";
import type { AgentEvent } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";

const HISTORY_PAGE = 200;

export class AgentPanel {
  private selected = "";
  private refreshTimer?: number;

  constructor(
    private readonly fleet: Fleet,
    private readonly access: () => Access,
  ) {
    byId("agent-close").addEventListener("click", () => this.select(""));
    fleet.listen({
      reset: () => this.renderState(),
      changed: (changes) => {
        if (changes.some(({ before, after }) => (after ?? before)?.agent.id === this.selected)) this.renderState();
      },
    });
    // A new event for the agent on show: its story has a new line.
    fleet.onEvent((event) => {
      if (event.agent?.id === this.selected) this.refreshSoon();
    });
  }

  select(id: string): void {
    this.selected = id;
    byId("agent").hidden = id === "";
    if (!id) return;
    setText(byId("agent-notice"), "");
    this.renderState();
    this.renderActions();
    void this.loadHistory();
  }

  renderActions(): void {
    const actions = byId("agent-actions");
    clear(actions);
    if (this.access() !== "admin" || !this.selected) return;
    const id = this.selected;
    const wake = el("button", { type: "button", id: "action-wake" }, "Wake");
    wake.addEventListener("click", async () => {
      try {
        await lifecycle.wakeAgent({ agentId: id });
        this.notice(`Woke ${id}: a fresh cycle of wakes started.`);
      } catch (error) {
        this.notice(`Wake failed: ${describe(error)}`);
      }
    });
    const remove = el("button", { type: "button", id: "action-delete", class: "danger" }, "Delete…");
    remove.addEventListener("click", () => this.confirmDelete(id));
    actions.append(wake, remove);
  }

  private confirmDelete(id: string): void {
    const actions = byId("agent-actions");
    clear(actions);
    const yes = el("button", { type: "button", id: "action-delete-confirm", class: "danger" }, `Yes, delete ${id}`);
    const no = el("button", { type: "button", id: "action-delete-cancel" }, "Cancel");
    yes.addEventListener("click", async () => {
      try {
        await lifecycle.deleteAgent({ agentId: id });
        this.notice(`Deleted ${id}; its gateway was told to retire it.`);
        clear(actions);
      } catch (error) {
        this.notice(`Delete failed: ${describe(error)}`);
        this.renderActions();
      }
    });
    no.addEventListener("click", () => this.renderActions());
    actions.append(el("span", {}, `Delete ${id}? Its token is revoked and its gateway retires it.`), yes, no);
  }

  private notice(text: string): void {
    setText(byId("agent-notice"), text);
  }

  private renderState(): void {
    if (!this.selected) return;
    const row = this.fleet.agents.get(this.selected);
    const fields = byId("agent-fields");
    clear(fields);
    setText(byId("agent-title"), this.selected);
    if (!row) {
      fields.append(el("dd", {}, "not in the fleet (deleted, or not yet seen)"));
      return;
    }
    const a = row.agent;
    const now = Date.now();
    const pairs: [string, string][] = [
      ["name", a.name],
      ["status", statusName(a.status)],
      ["gateway", a.gatewayId],
      ["board", a.boardId],
      ["role", roleName(a.role)],
      ["generation", String(a.generation)],
      ["wake attempts", String(a.wakeAttempts)],
      ["last wake sent", dateTime(ms(a.lastWakeSentAt))],
      ["check in by", dateTime(ms(a.checkinDeadlineAt))],
      ["last seen", dateTime(row.lastSeen)],
      ["lease left", row.leaseExpires !== undefined ? duration(row.leaseExpires - now) : ""],
      ["last error", a.lastProvisionError],
      ["offline because", a.offlineReason],
      ["template", a.desiredTemplateVersion + (drift(a) ? ` (runs ${a.reportedTemplateVersion})` : "")],
      ["revision", String(a.revision)],
    ];
    for (const [name, value] of pairs) {
      if (value) fields.append(el("dt", {}, name), el("dd", { "data-field": name }, value));
    }
  }

  private refreshSoon(): void {
    if (this.refreshTimer !== undefined) return;
    this.refreshTimer = window.setTimeout(() => {
      this.refreshTimer = undefined;
      void this.loadHistory();
    }, 200);
  }

  private async loadHistory(): Promise<void> {
    const id = this.selected;
    const list = byId("agent-history");
    try {
      const response = await lifecycle.getAgentHistory({ agentId: id, pageSize: HISTORY_PAGE });
      if (id !== this.selected) return;
      clear(list);
      for (const event of response.events) list.append(historyLine(event));
      if (response.events.length === 0) list.append(el("li", {}, "no events"));
    } catch (error) {
      if (id !== this.selected) return;
      clear(list);
      list.append(el("li", { class: "error" }, `history: ${describe(error)}`));
    }
  }
}

function historyLine(event: AgentEvent): HTMLElement {
  const from = statusName(event.previousStatus);
  const to = event.agent ? statusName(event.agent.status) : "";
  const change = from && to && from !== to && from !== "UNSPECIFIED" ? `${from} → ${to}` : to;
  const parts = [
    el("time", {}, dateTime(ms(event.at))),
    el("span", { class: "reason" }, reasonName(event.reason)),
    el("span", { class: "change" }, change),
  ];
  if (event.attempt) parts.push(el("span", { class: "attempt" }, `attempt ${event.attempt}`));
  if (event.description) parts.push(el("span", { class: "description" }, event.description));
  if (event.error) parts.push(el("span", { class: "error" }, event.error));
  return el("li", { "data-reason": reasonName(event.reason) }, ...parts);
}
