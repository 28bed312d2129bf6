"""Drives mission-control from Python, with grpcio stubs generated from proto/
at run time: an agent checks in and a watcher sees it. Proves the protocol is
usable outside Rust.

    python3 tests/python/interop.py --endpoint 127.0.0.1:50051
    python3 tests/python/interop.py --endpoint localhost:50051 --cacert ca.pem \
        [--cert client.pem --key client.key]

Needs: pip install grpcio grpcio-tools. Exits non-zero on any failure.
"""

import argparse
import importlib
import importlib.resources
import pathlib
import queue
import sys
import tempfile
import threading

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"
PROTOS = [
    "missioncontrol/lifecycle/v1/lifecycle.proto",
    "missioncontrol/lifecycle/v1/gateways.proto",
]


def generate_stubs(out_dir):
    """Compiles the .proto files with grpc_tools; returns the modules."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *PROTOS]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    sys.path.insert(0, str(out_dir))
    names = ["lifecycle_pb2", "lifecycle_pb2_grpc", "gateways_pb2", "gateways_pb2_grpc"]
    return [importlib.import_module(f"missioncontrol.lifecycle.v1.{n}") for n in names]


def check(condition, message):
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", default="127.0.0.1:50051")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--cacert", help="use TLS, trusting this CA (PEM)")
    parser.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--key", help="client key (PEM), for mutual TLS")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out_dir:
        lc, lc_grpc, gw, gw_grpc = generate_stubs(out_dir)
        if args.cacert:
            read = lambda path: pathlib.Path(path).read_bytes() if path else None
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read(args.cacert),
                private_key=read(args.key),
                certificate_chain=read(args.cert),
            )
            channel = grpc.secure_channel(args.endpoint, credentials)
        else:
            channel = grpc.insecure_channel(args.endpoint)
        grpc.channel_ready_future(channel).result(timeout=args.timeout)
        lifecycle = lc_grpc.AgentLifecycleStub(channel)
        gateways = gw_grpc.GatewaysStub(channel)

        gateways.RegisterGateway(gw.RegisterGatewayRequest(gateway_id="py-gw"), timeout=args.timeout)
        provisioned = lifecycle.Provision(
            lc.ProvisionRequest(agent_id="py-agent", gateway_id="py-gw", board_id="py-board",
                                role=lc.AGENT_ROLE_BOARD_WORKER, template_version="py-1"),
            timeout=args.timeout,
        )
        check(provisioned.created, "the agent was created")
        check(provisioned.agent.status == lc.AGENT_STATUS_PROVISIONING, "provisioning before check-in")
        token = provisioned.agent_token
        check(token.startswith("mca_"), "a token was minted")

        # The watcher: snapshot, marker, then the check-in.
        events = queue.Queue()
        watch = lifecycle.WatchAgent(lc.WatchAgentRequest(agent_id="py-agent"), timeout=args.timeout)

        def read_watch():
            try:
                for item in watch:
                    events.put(item)
            except grpc.RpcError as error:
                events.put(error)

        threading.Thread(target=read_watch, daemon=True).start()
        snapshot = events.get(timeout=args.timeout)
        check(snapshot.WhichOneof("kind") == "event", "a snapshot event first")
        check(snapshot.event.reason == lc.TRANSITION_REASON_SNAPSHOT, "marked as snapshot")
        marker = events.get(timeout=args.timeout)
        check(marker.WhichOneof("kind") == "snapshot_complete", "then the snapshot marker")

        try:
            lifecycle.Heartbeat(lc.HeartbeatRequest(), metadata=[("x-agent-token", "mca_wrong")],
                                timeout=args.timeout)
            raise SystemExit("FAILED: a wrong token was accepted")
        except grpc.RpcError as error:
            check(error.code() == grpc.StatusCode.UNAUTHENTICATED, f"wrong token: {error.code()}")

        beat = lifecycle.Heartbeat(lc.HeartbeatRequest(template_version="py-1"),
                                   metadata=[("x-agent-token", token)], timeout=args.timeout)
        check(beat.status == lc.AGENT_STATUS_ONLINE, "the check-in made it online")
        check(beat.next_heartbeat_in.ToTimedelta().total_seconds() > 0, "told when to heartbeat next")

        while True:
            item = events.get(timeout=args.timeout)
            check(not isinstance(item, grpc.RpcError), f"watch failed: {item}")
            if item.WhichOneof("kind") != "event":
                continue
            event = item.event
            check(event.revision > marker.snapshot_complete.revision, "revisions increase")
            if event.reason == lc.TRANSITION_REASON_CHECKED_IN:
                check(event.agent.status == lc.AGENT_STATUS_ONLINE, "the watcher sees it online")
                check(event.previous_status == lc.AGENT_STATUS_PROVISIONING, "from provisioning")
                break
        watch.cancel()
        print(f"ok: python agent checked in at revision {event.revision}; the watcher saw it")


if __name__ == "__main__":
    main()
