// The fleet dashboard: wires the feed, the table, the counts, the charts,
// the agent panel and the gateways together, and asks for an operator
// token when the service wants one.

import type { Access } from "./api";
import { describe, probeAccess, setToken, token } from "./api";
import { AgentPanel } from "./agent";
import { Charts } from "./chart";
import { Counts } from "./counts";
import { byId, setText } from "./dom";
import { Fleet } from "./fleet";
import { GatewayList, gatewayChoices, provisionForm } from "./gateways";
import { FleetTable } from "./table";
import { Feed, type FeedState } from "./watch";
import { clock } from "./format";
import type { AgentStatus } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";

let access: Access = "none";
const fleet = new Fleet();
const panel = new AgentPanel(fleet, () => access);
const table = new FleetTable(fleet, byId("fleet"), byId("shown"), (id) => panel.select(id));
const counts = new Counts(fleet, byId("totals"), byId("counts"));
const charts = new Charts(
  fleet,
  () => counts.tallies.all,
  byId<HTMLCanvasElement>("chart-status"),
  byId<HTMLCanvasElement>("chart-latency"),
);
const gatewayList = new GatewayList(gatewayChoices);

// Times move on without events: "last seen" and "lease left" tick.
setInterval(() => table.render(), 1_000);

const feed = new Feed(fleet, {
  state(state: FeedState, detail: string) {
    const node = byId("feed");
    node.dataset.state = state;
    setText(node, `${state}${detail ? ` (${detail})` : ""}`);
    if (state === "denied") showLogin(`The service refused the watch: ${detail}`);
  },
  notice(text: string) {
    setText(byId("notice"), `${clock(Date.now())} ${text}`);
  },
});

function wireFilters(): void {
  const ids = ["filter-gateway", "filter-board", "filter-status", "filter-id"];
  const apply = () => {
    const value = (id: string) => (byId<HTMLInputElement>(id).value ?? "").trim();
    table.setFilter({
      gateway: value("filter-gateway"),
      board: value("filter-board"),
      status: Number(value("filter-status") || 0) as AgentStatus | 0,
      id: value("filter-id"),
    });
  };
  for (const id of ids) byId(id).addEventListener("input", apply);
  // A choice in a <select> is always a "change"; not every way of making
  // one (WebDriver's, some browsers') also sends "input".
  byId("filter-status").addEventListener("change", apply);
}

function showLogin(reason: string): void {
  byId("login").hidden = false;
  setText(byId("login-reason"), reason);
}

function wireLogin(): void {
  const form = byId<HTMLFormElement>("login");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = byId<HTMLInputElement>("login-token");
    setToken(input.value.trim());
    input.value = "";
    location.reload();
  });
  byId("logout").addEventListener("click", () => {
    setToken("");
    location.reload();
  });
}

async function start(): Promise<void> {
  try {
    access = await probeAccess();
  } catch (error) {
    setText(byId("notice"), `The service did not answer: ${describe(error)}; retrying.`);
    setTimeout(() => void start(), 2_000);
    return;
  }
  byId("access").dataset.access = access;
  setText(byId("access"), access === "none" ? "not signed in" : `signed in as ${access}${token() ? "" : " (no token needed here)"}`);
  byId("logout").hidden = !token();
  if (access === "none") {
    showLogin(token() ? "That token was refused." : "This service needs an operator token (viewer or admin).");
    return;
  }
  provisionForm(access);
  panel.renderActions();
  gatewayList.start();
  charts.draw();
  void feed.run();
}

wireFilters();
wireLogin();
void start();
