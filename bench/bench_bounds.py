"""What the gateway's memory bounds hold to, measured: queued large requests, stalled uploads and
many connections, each against the body size and the worst case docs/security.md states.

A fresh gradbook service for each load (``python -m gradbook_service.app.launch`` with one kernel
and
``GRADBOOK_MAX_PENDING_BYTES``, 128 MiB by default, over a fresh store: memory a process once
took is not given back, so one load would hide the next). Its gateway process's resident memory
(``VmRSS``) is read from ``/proc`` before and during the load:

1. **queued**: while the only kernel trains synchronously, ``--queued`` predicts of almost
   4 MiB each are sent at once; those the pending bound admits wait (and are answered once the
   kernel is free), the others get 503. The probe that led to the bound saw 38 MiB per queued
   request;
2. **stalled**: ``--stalled`` uploads declare 4 MiB, send 1 MiB and stop; then a small predict
   is sent: 503 while the declared bytes fill the bound;
3. **connections**: ``--connections`` connections each send 15 KiB of a request head and stop.

It prints each growth, per request or connection, and as a share of the worst case that
docs/security.md states (``gradbook_service.gateway.capacity``: twice the pending bytes, 80 KiB per
connection, twelve times the body being decoded). Nothing is asserted;
``tests/test_neighbours.py`` checks the bounds.

    .venv/bin/python bench/bench_bounds.py [--queued 40] [--stalled 60] [--connections 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench_gateway import free_port, request, server
from procs import listening_pid

MiB = 2**20
CONNECTION_BYTES = 80 * 1024  # docs/security.md's allowance per connection
BODY = 4 * MiB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def big_predict() -> bytes:
    row = "[0.123456789, 0.987654321, 1.0]"
    return ('{"X": [' + ", ".join([row] * ((BODY - 100) // (len(row) + 2))) + "]}").encode()


def sample_peak(pid: int, seconds: float) -> int:
    peak, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss(pid))
        time.sleep(0.05)
    return peak


def queued(port: int, pid: int, count: int) -> tuple[int, Counter[int]]:
    """The gateway's growth while ``count`` large predicts wait behind a training, and their
    statuses."""
    body = json.dumps({"data": "digits", "epochs": 1500, "batch_size": 32}).encode()
    created = json.dumps({"name": "bench-busy", "sizes": [64, 64, 10],
                          "loss": "cross_entropy"}).encode()
    request(port, "POST", "/models", created)
    trainer = threading.Thread(target=request, args=(port, "POST", "/models/bench-busy/train",
                                                     body, 300))
    trainer.start()
    time.sleep(0.5)
    before = rss(pid)
    statuses: Counter[int] = Counter()
    payload = big_predict()

    def send() -> None:
        statuses[request(port, "POST", "/models/xor/predict", payload, 300)[0]] += 1

    senders = [threading.Thread(target=send) for _ in range(count)]
    for sender in senders:
        sender.start()
    peak = sample_peak(pid, 4.0)
    for sender in senders:
        sender.join()
    trainer.join()
    request(port, "DELETE", "/models/bench-busy")
    return peak - before, statuses


def stalled(port: int, pid: int, count: int) -> tuple[int, int]:
    """The growth while ``count`` uploads stall a quarter in, and a small predict's status."""
    head = (f"POST /models/xor/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n").encode()
    before = rss(pid)
    clients = []
    try:
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(head + b" " * (BODY // 4))
            clients.append(client)
        peak = sample_peak(pid, 2.0)
        status = request(port, "POST", "/models/xor/predict", b'{"x": [1, 0, 1]}')[0]
    finally:
        for client in clients:
            client.close()
    return peak - before, status


def connections(port: int, pid: int, count: int) -> int:
    before = rss(pid)
    clients = []
    try:
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 15360)
            clients.append(client)
        return sample_peak(pid, 2.0) - before
    finally:
        for client in clients:
            client.close()


@contextmanager
def gateway(tmp: Path, pending: int, max_connections: int) -> Iterator[tuple[int, int]]:
    """A fresh service over a fresh store; its port and its gateway's pid."""
    tmp.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADBOOK_")}
    env.update(GRADBOOK_STORE=str(tmp / "store"), GRADBOOK_PORT=str(port),
               GRADBOOK_KERNELS="1", GRADBOOK_MAX_PENDING_BYTES=str(pending),
               GRADBOOK_MAX_CONNECTIONS=str(max_connections))
    launch = [sys.executable, "-m", "gradbook_service.app.launch"]
    with server("gradbook", launch, env, port, "/readyz", tmp / "gradbook.log"):
        yield port, listening_pid(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=40)
    parser.add_argument("--stalled", type=int, default=60)
    parser.add_argument("--connections", type=int, default=4000)
    args = parser.parse_args()
    pending, cap = 128 * MiB, args.connections + 100
    worst = 2 * pending + 12 * BODY
    print(f"GRADBOOK_MAX_PENDING_BYTES {pending // MiB} MiB; the worst case without "
          f"connections: {worst / MiB:.0f} MiB", flush=True)
    with tempfile.TemporaryDirectory(prefix="gradbook-bench-bounds-") as folder:
        with gateway(Path(folder) / "1", pending, cap) as (port, pid):
            idle = rss(pid)
            grown, statuses = queued(port, pid, args.queued)
        admitted = statuses.get(200, 0)
        print(f"\n1. {args.queued} predicts of 4 MiB behind a training (gateway {idle / MiB:.0f} "
              f"MiB idle): {dict(sorted(statuses.items()))}")
        print(f"   the gateway grew by {grown / MiB:.0f} MiB: "
              f"{grown / max(admitted, 1) / MiB:.1f} MiB per admitted request "
              f"({grown / max(admitted, 1) / BODY:.2f}x its body; the probe: 38 MiB, 9.5x), "
              f"{grown / worst:.2f}x the worst case", flush=True)
        with gateway(Path(folder) / "2", pending, cap) as (port, pid):
            grown, status = stalled(port, pid, args.stalled)
        print(f"\n2. {args.stalled} uploads declaring 4 MiB ({args.stalled * BODY / MiB:.0f} MiB), "
              f"stalled after 1 MiB: a small predict got {status}")
        print(f"   the gateway grew by {grown / MiB:.0f} MiB, {grown / worst:.2f}x the "
              f"worst case (the probe: 60 of them held 233 MiB)", flush=True)
        with gateway(Path(folder) / "3", pending, cap) as (port, pid):
            grown = connections(port, pid, args.connections)
        allowance = args.connections * CONNECTION_BYTES
        print(f"\n3. {args.connections} connections with 15 KiB of request head each: "
              f"grew by {grown / MiB:.0f} MiB, {grown / args.connections / 1024:.1f} KiB "
              f"each, {grown / allowance:.2f}x the stated 80 KiB per connection")


if __name__ == "__main__":
    main()
