"""Latency and throughput of ``POST /models/xor/predict``, as ratios to baselines of the same run.

Starts the service the way ``make serve`` does (``gradbook serve``) on a free loopback
port with a temporary store and 2 kernels, then times a bounded number of requests:

* the same endpoint called in-process (``serve(api.predict, REQUEST)``: JSON, store, forward
  pass; no HTTP, no gateway, no kernel) and the bare forward pass ``net.forward``;
* ``GET /diagnostics``, a near no-op that still crosses HTTP, the gateway and a kernel;
* predictions from one client (latency) and from several threads (throughput);
* the kernels' resident memory after many large batch predictions, against after the first few
  (1.0 means flat: a kernel keeps nothing of the requests it served).

Absolute times depend on the machine; the ratios say where the time goes. No assertions.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQUENTIAL = 300
THREADS, PER_THREAD = 4, 100
BODY = json.dumps({"x": [1, 0, 1]}).encode()
BIG_BODY = json.dumps({"X": [[1, 0, 1]] * 200_000}).encode()  # 1.8 MB, under the body limit
WARM, MORE = 10, 40  # large predictions before the first and the second memory reading


def start(workdir: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADBOOK_")}
    env.update(GRADBOOK_PORT=str(port), GRADBOOK_STORE=str(workdir / "store"),
               GRADBOOK_KERNELS="2", JUPYTER_RUNTIME_DIR=str(workdir / "runtime"))
    process = subprocess.Popen([sys.executable, "-m", "gradbook_service.app.launch"], cwd=ROOT,
                               env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if request(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "GET", "/readyz"):
                return process, port
        except OSError:
            time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("the service did not start")


def request(connection: http.client.HTTPConnection, method: str, path: str,
            body: bytes | None = None) -> bool:
    headers = {"Content-Type": "application/json"} if body else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status == 200


def timings(call: Callable[[], object], n: int) -> list[float]:
    """Seconds per call, after a few warm-up calls."""
    for _ in range(5):
        call()
    result = []
    for _ in range(n):
        start_time = time.perf_counter()
        if call() is False:
            raise RuntimeError("a request failed; the figures would be meaningless")
        result.append(time.perf_counter() - start_time)
    return result


def in_process(store: Path) -> tuple[list[float], list[float]]:
    """The predict endpoint and the forward pass alone, in this process."""
    from gradbook_service.app.api import ModelAPI
    from gradbook_service.app.http import serve
    from gradbook_service.app.settings import Settings

    from gradbook.store import ModelStore

    api = ModelAPI(ModelStore(store), Settings())
    REQUEST = json.dumps({"body": {"x": [1, 0, 1]}, "path": {"name": "xor"},
                          "headers": {"Content-Type": "application/json"}})
    net = api.store.get("xor")
    return timings(lambda: serve(api.predict, REQUEST), 2000), timings(
        lambda: net.forward([[1, 0, 1]]), 2000)


def throughput(port: int) -> float:
    """Requests per second with ``THREADS`` clients, each on its own keep-alive connection."""
    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(PER_THREAD):
            request(connection, "POST", "/models/xor/predict", BODY)

    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    start_time = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return THREADS * PER_THREAD / (time.perf_counter() - start_time)


def kernels_rss(launcher: int) -> int:
    """Resident memory (kB) of the largest kernel: the launcher's child processes."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    sizes = []
    for pid in children:
        status = Path(f"/proc/{pid}/status").read_text()
        sizes.append(int(status.split("VmRSS:")[1].split()[0]))
    return max(sizes)


def memory_growth(port: int, launcher: int) -> tuple[int, int]:
    """Kernel memory after ``WARM`` and after ``WARM + MORE`` large batch predictions."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    readings = []
    for count in (WARM, MORE):
        for _ in range(count):
            if not request(connection, "POST", "/models/xor/predict", BIG_BODY):
                raise RuntimeError("a large prediction failed")
        readings.append(kernels_rss(launcher))
    return readings[0], readings[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start(Path(tmp))
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            health = statistics.median(timings(
                lambda: request(connection, "GET", "/diagnostics"), SEQUENTIAL))
            predict = statistics.median(timings(
                lambda: request(connection, "POST", "/models/xor/predict", BODY), SEQUENTIAL))
            rate = throughput(port)
            warm_rss, later_rss = memory_growth(port, process.pid)
            endpoint, forward = (statistics.median(t) for t in in_process(Path(tmp) / "store"))
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    print(f"POST /models/xor/predict, one client, median of {SEQUENTIAL} (2 kernels):")
    print(f"  {predict / endpoint:8.1f} x the same endpoint in-process, without HTTP and kernel")
    print(f"  {predict / forward:8.1f} x the bare forward pass net.forward")
    print(f"  {predict / health:8.2f} x GET /diagnostics (HTTP, gateway and kernel, little work)")
    print(f"{THREADS} clients x {PER_THREAD} predictions: throughput "
          f"{rate * predict:.2f} x that of one client")
    print(f"(for scale on this machine: one predict over HTTP took {predict * 1e3:.1f} ms)")
    print(f"largest kernel after {WARM + MORE} vs after {WARM} predictions of 200,000 rows: "
          f"{later_rss / warm_rss:.2f} x ({later_rss // 1024} MB vs {warm_rss // 1024} MB)")


if __name__ == "__main__":
    main()
