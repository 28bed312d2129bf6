// The table's incremental order (src/order.ts) against the plain answer:
// after every batch of random changes, the rows are exactly those a full
// filter and sort of the fleet gives, for several orders and filters.
// Run by scripts/build-dashboard (bundled by esbuild, run by `node --test`).

import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { AgentSchema, AgentStatus } from "../src/gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import type { Row, RowChange } from "../src/fleet";
import { SortedRows, type Compare } from "../src/order";

const text = (x: string, y: string) => (x < y ? -1 : x > y ? 1 : 0);
const thenById =
  (compare: Compare, sign = 1): Compare =>
  (a, b) =>
    sign * compare(a, b) || text(a.agent.id, b.agent.id);

const ORDERS: [string, Compare][] = [
  ["id", thenById(() => 0)],
  ["status", thenById((a, b) => a.agent.status - b.agent.status)],
  ["board, descending", thenById((a, b) => text(a.agent.boardId, b.agent.boardId), -1)],
  ["last seen", thenById((a, b) => (a.lastSeen ?? 0) - (b.lastSeen ?? 0))],
];
const FILTERS: [string, (row: Row) => boolean][] = [
  ["none", () => true],
  ["online", (r) => r.agent.status === AgentStatus.ONLINE],
  ["board b1", (r) => r.agent.boardId === "b1"],
  ["id contains 7", (r) => r.agent.id.includes("7")],
];

/// A small deterministic generator, so a failure can be replayed.
function random(seed: number): (n: number) => number {
  let state = seed;
  return (n) => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state % n;
  };
}

function agentRow(id: string, pick: (n: number) => number): Row {
  const agent = create(AgentSchema, {
    id,
    status: 1 + pick(4),
    boardId: `b${pick(3)}`,
    gatewayId: "gw",
  });
  return { agent, lastSeen: pick(5) === 0 ? undefined : pick(1000) };
}

for (const [orderName, compare] of ORDERS) {
  for (const [filterName, matches] of FILTERS) {
    test(`order by ${orderName}, filter ${filterName}`, () => {
      for (const seed of [1, 2, 3]) {
        const pick = random(seed);
        const fleet = new Map<string, Row>();
        for (let i = 0; i < 50; i++) fleet.set(`a${i}`, agentRow(`a${i}`, pick));
        const sorted = new SortedRows(compare, matches);
        sorted.rebuild(fleet.values());
        for (let step = 0; step < 200; step++) {
          // Batches of 1 to 40 changes; the same agent may change twice.
          const changes: RowChange[] = [];
          const size = 1 + pick(40);
          for (let c = 0; c < size; c++) {
            const id = `a${pick(70)}`;
            const before = fleet.get(id);
            const roll = pick(10);
            if (before && roll === 0) {
              fleet.delete(id);
              changes.push({ before });
            } else if (before && roll < 4) {
              // A lease renewal: the same agent, another time.
              const after = { agent: before.agent, lastSeen: pick(1000) };
              fleet.set(id, after);
              changes.push({ before, after });
            } else {
              const after = agentRow(id, pick);
              fleet.set(id, after);
              changes.push({ before, after });
            }
          }
          sorted.apply(changes, () => fleet.values());
          const expected = [...fleet.values()].filter(matches).sort(compare);
          assert.deepEqual(
            sorted.rows.map((r) => r.agent.id),
            expected.map((r) => r.agent.id),
            `seed ${seed}, step ${step}`,
          );
          assert.ok(
            sorted.rows.every((r, i) => r === expected[i]),
            `seed ${seed}, step ${step}: each row is the agent's current one`,
          );
        }
      }
    });
  }
}

test("a batch larger than the rebuild threshold gives the same rows", () => {
  const pick = random(9);
  const fleet = new Map<string, Row>();
  for (let i = 0; i < 3000; i++) fleet.set(`a${i}`, agentRow(`a${i}`, pick));
  const [, compare] = ORDERS[1];
  const sorted = new SortedRows(compare, () => true);
  sorted.rebuild(fleet.values());
  const changes: RowChange[] = [];
  for (let i = 0; i < 2000; i++) {
    const id = `a${pick(3000)}`;
    const after = agentRow(id, pick);
    changes.push({ before: fleet.get(id), after });
    fleet.set(id, after);
  }
  sorted.apply(changes, () => fleet.values());
  assert.deepEqual(
    sorted.rows.map((r) => r.agent.id),
    [...fleet.values()].sort(compare).map((r) => r.agent.id),
  );
});
