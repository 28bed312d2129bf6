"""Idle-connection flood against a running server (used by scripts/idle-flood).

Opens CONNECTIONS TCP connections that never send a byte (from several
worker processes, each under its own open-file limit), and meanwhile checks
health on a NEW connection every 200 ms with grpcio, timing each check. Then
waits until the server has closed every idle connection. Prints the figures,
beside the same checks made just before the flood (the baseline: on a shared
machine the ratio says more than the milliseconds).

Before each check a raw probe times, on another new connection, the TCP
connect and the server's first bytes (its HTTP/2 SETTINGS, written as soon
as the connection's task first runs) after the client's preface: where a
slow check waited, server side or client side.
"""

import argparse
import multiprocessing
import os
import selectors
import socket
import statistics
import sys
import time

import grpc

HEALTH = "/grpc.health.v1.Health/Check"


def hold(addr, count, opened, result):
    """Opens `count` silent connections; reports when each is closed."""
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(addr, timeout=10))
        except OSError:
            break
    opened.put(len(sockets))
    start = time.monotonic()
    selector = selectors.DefaultSelector()
    for s in sockets:
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
    open_count = len(sockets)
    last_close = None
    deadline = start + 120
    while open_count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                key.fileobj.close()
                open_count -= 1
                last_close = time.monotonic()
    result.put((len(sockets), open_count, last_close))


def flood(addr, workers, per, opened, result):
    """Runs the `hold` workers in a session of their own: with the kernel's
    autogroup scheduling, processes share CPU by session, so the flood takes
    its share from itself, not from the health checks (which stand for
    another client), as when it comes from other hosts."""
    os.setsid()
    processes = [multiprocessing.Process(target=hold, args=(addr, per, opened, result))
                 for _ in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def probe_once(addr):
    """(connect ms, first server byte ms after the preface), or None."""
    started = time.monotonic()
    try:
        with socket.create_connection(addr, timeout=5) as s:
            connected = time.monotonic()
            s.sendall(PREFACE)
            if not s.recv(64):
                return None
            answered = time.monotonic()
    except OSError:
        return None
    return (connected - started) * 1000, (answered - connected) * 1000


def health_once(target):
    started = time.monotonic()
    channel = grpc.insecure_channel(target)
    try:
        call = channel.unary_unary(HEALTH, request_serializer=lambda _: b"",
                                   response_deserializer=lambda b: b)
        reply = call(None, timeout=5)
        ok = reply == b"\x08\x01"  # status: SERVING
    except grpc.RpcError:
        ok = False
    finally:
        channel.close()
    return ok, (time.monotonic() - started) * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--checks", type=int, default=50)
    parser.add_argument("--baseline-checks", type=int, default=20)
    args = parser.parse_args()
    addr = ("127.0.0.1", args.port)
    target = f"127.0.0.1:{args.port}"

    baseline, baseline_failures = [], 0
    for _ in range(args.baseline_checks):
        probe_once(addr)
        ok, ms = health_once(target)
        baseline.append(ms)
        baseline_failures += not ok
        time.sleep(0.2)

    opened, results = multiprocessing.Queue(), multiprocessing.Queue()
    per = args.connections // args.workers
    started = time.monotonic()
    flooder = multiprocessing.Process(
        target=flood, args=(addr, args.workers, per, opened, results))
    flooder.start()
    latencies, failures = [], 0
    connects, first_bytes, probe_failures = [], [], 0
    total_opened = 0
    reported = 0
    checks = 0
    while checks < args.checks:
        probed = probe_once(addr)
        if probed:
            connects.append(probed[0])
            first_bytes.append(probed[1])
        else:
            probe_failures += 1
        ok, ms = health_once(target)
        checks += 1
        latencies.append(ms)
        failures += not ok
        while not opened.empty():
            total_opened += opened.get()
            reported += 1
        time.sleep(0.2)
    while reported < args.workers:
        total_opened += opened.get()
        reported += 1
    opened_in = time.monotonic() - started
    closed_all, still_open, last = True, 0, started
    for _ in range(args.workers):
        count, left, last_close = results.get()
        still_open += left
        if last_close:
            last = max(last, last_close)
    flooder.join()
    def quantile(values, f):
        values = sorted(values) or [float("nan")]
        return values[min(len(values) - 1, int(f * len(values)))]

    def summary(values):
        return (f"p50 {quantile(values, 0.5):.1f} p99 {quantile(values, 0.99):.1f} "
                f"max {quantile(values, 1.0):.1f}")

    print(f"health checks before the flood (baseline): {len(baseline)}, failed: "
          f"{baseline_failures}, latency ms {summary(baseline)}")
    print(f"idle connections opened: {total_opened} (in {opened_in:.1f} s, while checking health)")
    print(f"health checks on new connections meanwhile: {checks}, failed: {failures}, "
          f"latency ms {summary(latencies)}")
    print(f"  all latencies ms, in order: {' '.join(f'{ms:.0f}' for ms in latencies)}")
    print("  during / baseline: " + ", ".join(
        f"{name} {quantile(latencies, f) / quantile(baseline, f):.2f}"
        for name, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))))
    print(f"  checks over 100 ms: {sum(ms > 100 for ms in latencies)} during, "
          f"{sum(ms > 100 for ms in baseline)} before")
    print(f"raw probes on new connections: {len(connects)}, failed: {probe_failures}; "
          f"TCP connect ms {summary(connects)}; server's first bytes after the preface ms "
          f"{summary(first_bytes)}")
    print(f"idle connections still open at the end: {still_open}; "
          f"the last one closed {last - started:.1f} s after the flood began")
    sys.exit(1 if failures or still_open else 0)


if __name__ == "__main__":
    main()
