// Gateways and whether each holds its stream now (polled: gateways are
// few and change rarely), and the provision form for an admin.

import type { Access } from "./api";
import { describe, gateways, lifecycle } from "./api";
import { byId, clear, el, setText } from "./dom";
import { dateTime, ms } from "./format";
import { AgentRole } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import { type Gateway, GatewayState } from "./gen/missioncontrol/lifecycle/v1/gateways_pb";

const POLL_EVERY_MS = 3_000;
/// A poll that hangs (a dead connection) is given up, not waited on.
const POLL_TIMEOUT_MS = 10_000;
/// The service's reason for a gateway registered and never seen since.
const NEVER_CONNECTED = "never connected";

export class GatewayList {
  ids: string[] = [];

  constructor(private readonly onIds: (ids: string[]) => void) {}

  start(): void {
    void this.refresh();
    setInterval(() => void this.refresh(), POLL_EVERY_MS);
  }

  async refresh(): Promise<void> {
    const list = byId("gateways");
    try {
      const response = await gateways.listGateways({}, { timeoutMs: POLL_TIMEOUT_MS });
      clear(list);
      for (const gateway of response.gateways) {
        const [kind, state] = linkOf(gateway);
        list.append(
          el(
            "li",
            { class: kind, "data-gateway": gateway.id },
            el("b", {}, gateway.id),
            gateway.name && gateway.name !== gateway.id ? ` ${gateway.name}` : "",
            el("span", { class: "state" }, state),
          ),
        );
      }
      if (response.gateways.length === 0) list.append(el("li", {}, "no gateway registered"));
      this.ids = response.gateways.map((g) => g.id);
      this.onIds(this.ids);
    } catch (error) {
      clear(list);
      list.append(el("li", { class: "error" }, describe(error)));
    }
  }
}

/// How a gateway's stream stands, as a class and a line: connected,
/// disconnected (since when, and why), or never connected since it was
/// registered (its agents' wakes are held for it all the same).
export function linkOf(gateway: Gateway): [string, string] {
  const pending = gateway.commandsPending ? `; ${gateway.commandsPending} commands waiting` : "";
  // The mass-failure brake, when engaged, is shown over the stream.
  if (gateway.state === GatewayState.SUSPECTED || gateway.state === GatewayState.DRAINING) {
    const word = gateway.state === GatewayState.DRAINING ? "draining" : "suspected";
    const stream = gateway.connected ? "stream open" : "stream closed";
    const since = dateTime(ms(gateway.stateSince));
    return [word, `${word} since ${since}: ${gateway.stateReason} (${stream})${pending}`];
  }
  if (gateway.connected) return ["connected", `connected since ${dateTime(ms(gateway.connectedSince))}${pending}`];
  if (gateway.stateReason === NEVER_CONNECTED)
    return ["never-connected", `never connected (registered ${dateTime(ms(gateway.createdAt))})${pending}`];
  const why = gateway.stateReason ? ` (${gateway.stateReason})` : "";
  return ["disconnected", `disconnected since ${dateTime(ms(gateway.stateSince))}${why}${pending}`];
}

/// The provision form: shown to an admin only. A minted token is shown
/// once, as the service returns it once.
export function provisionForm(access: Access): void {
  const form = byId<HTMLFormElement>("provision");
  form.hidden = access !== "admin";
  if (form.dataset.wired) return;
  form.dataset.wired = "yes";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const text = (name: string) => String(data.get(name) ?? "").trim();
    const result = byId("provision-result");
    try {
      const response = await lifecycle.provision({
        agentId: text("agent_id"),
        name: text("name"),
        gatewayId: text("gateway_id"),
        boardId: text("board_id"),
        role: Number(text("role")) as AgentRole,
        templateVersion: text("template_version"),
      });
      const verb = response.created ? "Created" : "Updated";
      setText(
        result,
        response.agentToken
          ? `${verb} ${response.agent?.id}. Its token, shown only now: ${response.agentToken}`
          : `${verb} ${response.agent?.id}; a fresh wake cycle started.`,
      );
    } catch (error) {
      setText(result, `Provision failed: ${describe(error)}`);
    }
  });
}

export function gatewayChoices(ids: string[]): void {
  const list = byId<HTMLDataListElement>("gateway-ids");
  clear(list);
  for (const id of ids) list.append(el("option", { value: id }));
}
