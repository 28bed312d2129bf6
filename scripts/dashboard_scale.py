#!/usr/bin/env python3
"""How the dashboard holds up with a large fleet (not run in CI).

Against a running server (for example
`mission-control --dev --checkin-deadline 1h --lease-ttl 1h --listen 127.0.0.1:50051`),
provisions --agents agents, opens the dashboard in headless Chromium
(Selenium), then checks in --rate agents a second for --seconds (each check-in
is a PROVISIONING -> ONLINE transition the page receives) while the page
records the gap between its animation frames. Prints what it measured:
time to the first live snapshot, frame gaps during the changes, one sort
and one filter of the whole fleet, and whether the page's count of online
agents matches the server's at the end. With --profile, also records the
page's CPU profile (Chrome DevTools Protocol) during the changes and prints
where the time went, by function. The load average is printed beside the
figures: they mean little without it on a shared machine.
"""
import argparse
import asyncio
import collections
import os
import pathlib
import sys
import tempfile
import time

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "python"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "browser"))
from interop import generate_stubs  # noqa: E402
from driver import browser  # noqa: E402

FRAME_MONITOR = """
window.__gaps = [];
let last = performance.now();
const tick = (now) => { window.__gaps.push(now - last); last = now; requestAnimationFrame(tick); };
requestAnimationFrame(tick);
"""


async def provision(lc, lc_grpc, gw, gw_grpc, channel, agents):
    gateways = gw_grpc.GatewaysStub(channel)
    await gateways.RegisterGateway(gw.RegisterGatewayRequest(gateway_id="scale-gw"))
    stub = lc_grpc.AgentLifecycleStub(channel)
    tokens = [None] * agents
    sem = asyncio.Semaphore(64)

    async def one(i):
        async with sem:
            reply = await stub.Provision(lc.ProvisionRequest(
                agent_id=f"scale-{i:06d}", gateway_id="scale-gw", board_id=f"board-{i % 50}",
                role=lc.AGENT_ROLE_BOARD_WORKER))
            tokens[i] = reply.agent_token

    await asyncio.gather(*(one(i) for i in range(agents)))
    return stub, tokens


async def check_in(lc, stub, tokens, rate, seconds):
    sent = 0
    start = time.monotonic()
    pending = set()
    while time.monotonic() - start < seconds and sent < len(tokens):
        due = int((time.monotonic() - start) * rate)
        while sent < due and sent < len(tokens):
            pending.add(asyncio.ensure_future(stub.Heartbeat(
                lc.HeartbeatRequest(), metadata=(("x-agent-token", tokens[sent]),))))
            sent += 1
        await asyncio.sleep(0.01)
    await asyncio.gather(*pending)
    return sent, time.monotonic() - start


def hot_functions(profile, top=15):
    """Self and total time per function of a CDP CPU profile, largest first."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    parent = {}
    for n in profile["nodes"]:
        for child in n.get("children", []):
            parent[child] = n["id"]
    self_ms = collections.Counter()
    total_ms = collections.Counter()
    deltas = profile["timeDeltas"]
    for i, sample in enumerate(profile["samples"]):
        took = (deltas[i + 1] if i + 1 < len(deltas) else 0) / 1000
        names = []
        node = sample
        while node is not None:
            frame = nodes[node]["callFrame"]
            names.append(f"{frame['functionName'] or '(anonymous)'}"
                         f"{'@' + str(frame['columnNumber']) if frame['url'] else ''}")
            node = parent.get(node)
        self_ms[names[0]] += took
        for name in set(names):
            total_ms[name] += took
    wall = sum(deltas) / 1000
    lines = [f"cpu profile over {wall:.0f}ms (name@column in the minified app.js)"]
    for name, took in self_ms.most_common(top):
        lines.append(f"  self {took:7.0f}ms  total {total_ms[name]:7.0f}ms  {name}")
    busy = [(n, t) for n, t in total_ms.most_common(top * 2)
            if "@" in n and n not in dict(self_ms.most_common(top))]
    for name, took in busy[:top]:
        lines.append(f"  total {took:7.0f}ms  {name}")
    return "\n".join(lines)


def load():
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", default="127.0.0.1:50051")
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=500, help="check-ins a second")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--profile", action="store_true",
                        help="record and summarize the page's CPU profile during the changes")
    args = parser.parse_args()
    print(load())

    with tempfile.TemporaryDirectory() as out_dir:
        lc, lc_grpc, gw, gw_grpc = generate_stubs(out_dir)
        async with grpc.aio.insecure_channel(args.endpoint) as channel:
            t = time.monotonic()
            stub, tokens = await provision(lc, lc_grpc, gw, gw_grpc, channel, args.agents)
            print(f"provisioned {args.agents} agents in {time.monotonic() - t:.1f}s")

            driver = browser()
            try:
                t = time.monotonic()
                driver.get(f"http://{args.endpoint}/")
                want = f"{args.agents} of {args.agents} agents"
                while driver.execute_script(
                        "return document.getElementById('feed').dataset.state + '|' + "
                        "document.getElementById('shown').textContent") != f"live|{want}":
                    time.sleep(0.05)
                print(f"page live with the snapshot of {args.agents} agents after {time.monotonic() - t:.1f}s")

                driver.execute_script(FRAME_MONITOR)
                if args.profile:
                    driver.execute_cdp_cmd("Profiler.enable", {})
                    driver.execute_cdp_cmd("Profiler.setSamplingInterval", {"interval": 1000})
                    driver.execute_cdp_cmd("Profiler.start", {})
                sent, took = await check_in(lc, stub, tokens, args.rate, args.seconds)
                print(f"{sent} check-ins in {took:.1f}s ({sent / took:.0f}/s); {load()}")
                time.sleep(1.5)
                if args.profile:
                    print(hot_functions(driver.execute_cdp_cmd("Profiler.stop", {})["profile"]))
                gaps = driver.execute_script("return window.__gaps")
                print(f"frames: {len(gaps)} in {took + 1.5:.1f}s; gap p50 {percentile(gaps, .5):.0f}ms, "
                      f"p99 {percentile(gaps, .99):.0f}ms, max {max(gaps):.0f}ms, "
                      f"over 100ms: {sum(g > 100 for g in gaps)}")

                sort_ms = driver.execute_script(
                    "const t = performance.now(); document.querySelector('[data-sort=status]').click(); "
                    "return performance.now() - t")
                filter_ms = driver.execute_script(
                    "const input = document.getElementById('filter-id'); input.value = '4242'; "
                    "const t = performance.now(); input.dispatchEvent(new Event('input')); "
                    "return performance.now() - t")
                shown = driver.execute_script("return document.getElementById('shown').textContent")
                print(f"sort by status: {sort_ms:.0f}ms; filter by id: {filter_ms:.0f}ms ({shown})")

                online_server = 0
                listed = await stub.ListAgents(lc.ListAgentsRequest(
                    statuses=[lc.AGENT_STATUS_ONLINE], page_size=1000))
                while True:
                    online_server += len(listed.agents)
                    if not listed.next_page_token:
                        break
                    listed = await stub.ListAgents(lc.ListAgentsRequest(
                        statuses=[lc.AGENT_STATUS_ONLINE], page_size=1000,
                        page_token=listed.next_page_token))
                time.sleep(1)
                page = driver.execute_script(
                    "return document.querySelector('#totals [data-status=ONLINE] b').textContent")
                print(f"online: {online_server} on the server, {page} on the page")
                driver.save_screenshot("target/dashboard-screenshots/scale.png")
            finally:
                driver.quit()


if __name__ == "__main__":
    asyncio.run(main())
