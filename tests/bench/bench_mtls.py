"""What mTLS between nodes costs: the same gRPC service served in plaintext and under the cluster CA.

    make bench-mtls        (add --quick for a short run)

Both servers run in this process on loopback, built by `RpcServer` exactly as a worker's is (the
plaintext one with no credentials, the other with `PeerAuth.server_credentials()`); clients use a
plain `grpc.aio` channel and a `PeerAuth` channel. Printed, in interleaved rounds so background load
hits both alike:
- a call on a held channel (what every Admit/Predict/Complete between nodes pays), p50/p99, at
  concurrency 1 and 16, and calls/s at 16;
- a call on a new channel (TCP + TLS 1.3 handshake with client certificates + the call), p50/p99.
Bar: held-channel p50 and calls/s with mTLS within 10% of plaintext.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cynode.peer_auth import PeerAuth
from cynode.rpc import worker_pb2, worker_pb2_grpc
from cynode.rpc.local import LocalServices
from cynode.rpc.server import RpcServer
from daemon_harness import free_port


class Health(worker_pb2_grpc.WorkerServicer):
    async def Health(self, request, context):
        return worker_pb2.HealthReply(ready=True)


async def serve(credentials) -> tuple[RpcServer, str]:
    address = f"127.0.0.1:{free_port()}"
    server = RpcServer("worker", address, local=LocalServices(), addresses=(address,), credentials=credentials)
    server.add(worker_pb2_grpc.add_WorkerServicer_to_server, Health())
    await server.start()
    return server, address


async def timed_calls(stub, n: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []

    async def one_client(count: int) -> None:
        for _ in range(count):
            t = time.perf_counter()
            await stub.Health(worker_pb2.HealthRequest(), timeout=10)
            latencies.append((time.perf_counter() - t) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one_client(n // concurrency) for _ in range(concurrency)))
    return latencies, len(latencies) / (time.perf_counter() - started)


async def new_channel_call(make_channel) -> float:
    t = time.perf_counter()
    channel = make_channel()
    try:
        await worker_pb2_grpc.WorkerStub(channel).Health(worker_pb2.HealthRequest(), timeout=10)
    finally:
        await channel.close()
    return (time.perf_counter() - t) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(quick: bool) -> int:
    rounds, calls, fresh = (2, 600, 10) if quick else (6, 2000, 30)
    cluster_key = secrets.token_bytes(32)
    auth = PeerAuth((cluster_key,), "bench-server", addresses=("127.0.0.1",))
    client_auth = PeerAuth((cluster_key,), "bench-client")
    plain_server, plain_address = await serve(None)
    tls_server, tls_address = await serve(auth.server_credentials())
    plain_channel = grpc.aio.insecure_channel(plain_address)
    tls_channel = client_auth.channel(tls_address)
    systems = {"plaintext": (worker_pb2_grpc.WorkerStub(plain_channel), lambda: grpc.aio.insecure_channel(plain_address)),
               "mTLS": (worker_pb2_grpc.WorkerStub(tls_channel), lambda: client_auth.channel(tls_address))}
    results = {name: {"c1": [], "c16": [], "rps": [], "fresh": []} for name in systems}
    for stub, _ in systems.values():  # warm both (the first TLS handshake is not the steady state)
        await timed_calls(stub, 100, 1)
    for r in range(rounds):
        order = list(systems) if r % 2 == 0 else list(reversed(systems))
        for name in order:
            stub, make = systems[name]
            lat, _ = await timed_calls(stub, calls // 4, 1)
            results[name]["c1"] += lat
            lat, rps = await timed_calls(stub, calls, 16)
            results[name]["c16"] += lat
            results[name]["rps"].append(rps)
            for _ in range(fresh // rounds + 1):
                results[name]["fresh"].append(await new_channel_call(make))
    await plain_channel.close()
    await tls_channel.close()
    await plain_server.stop(None)
    await tls_server.stop(None)

    print(f"bench-mtls: one gRPC unary call (worker Health) on loopback, plaintext vs mTLS under the cluster CA, "
          f"{rounds} interleaved rounds")
    print(f"{'':34}{'plaintext p50':>14}{'p99':>8}{'mTLS p50':>10}{'p99':>8}{'ratio p50':>11}   ms")
    for label, key in (("held channel, c=1", "c1"), ("held channel, c=16", "c16"), ("new channel + handshake + call", "fresh")):
        p, t = results["plaintext"][key], results["mTLS"][key]
        print(f"{label:34}{pct(p, .5):14.3f}{pct(p, .99):8.3f}{pct(t, .5):10.3f}{pct(t, .99):8.3f}{pct(t, .5) / pct(p, .5):11.2f}")
    prps, trps = statistics.median(results["plaintext"]["rps"]), statistics.median(results["mTLS"]["rps"])
    print(f"calls/s at c=16, held channel: plaintext {prps:.0f}, mTLS {trps:.0f} (ratio {trps / prps:.2f})")
    handshake = pct(results["mTLS"]["fresh"], .5) - pct(results["plaintext"]["fresh"], .5)
    print(f"handshake cost of a new mTLS channel over a new plaintext one: {handshake:.2f} ms p50 (channels are held, so "
          "this is paid once per peer and after a key rotation)")
    p50_ok = pct(results["mTLS"]["c1"], .5) <= 1.10 * pct(results["plaintext"]["c1"], .5)
    rps_ok = trps >= 0.90 * prps
    print(f"bar: held-channel p50 at c=1 within 10% ({'met' if p50_ok else 'NOT met'}); "
          f"calls/s at c=16 within 10% ({'met' if rps_ok else 'NOT met'})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
