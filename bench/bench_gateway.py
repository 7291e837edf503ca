"""Throughput and latency of ``POST /models/:name/predict`` under load, against two baselines.

gradbook serves predictions through the Jupyter Kernel Gateway and a pool of kernels. This
benchmark says what that costs, by loading three servers of the same endpoint, started side by
side on free loopback ports over one temporary model store (filled with the default models
``xor`` and ``digits`` by gradbook's first start), each with two workers:

* **gradbook**, started as ``make serve`` starts it (``gradbook serve``, 2 kernels);
* **stock KG**: the unmodified Kernel Gateway 3.0.1 in notebook-http mode with a pool of 2
  kernels, serving ``bench/stock_predict.ipynb``, whose predict cell runs the same
  ``ModelAPI.predict`` through ``respond``: what gradbook's personality costs or saves;
* **falcon**: ``bench/falcon_app.py`` under gunicorn with 2 workers, the same decoding and
  ``ModelAPI.predict`` in-process, no kernel at all: the floor a kernel-based server can approach.

Each server first answers one request per model by plain HTTP: it must be 200, with the same
prediction from all three. Then ``wrk`` loads it for a few seconds per model and number of
connections (1, 4, 64; threads min(c, 2)) and reports requests per second and the median and 99th
percentile latency, with the non-2xx responses and socket errors beside them, so that a server
that answers errors fast cannot look good, and where the CPU went: milliseconds of CPU per
request of the gateway process (for Falcon, of its workers) and of the kernels together, read
from ``/proc`` before and after each point, and gradbook's mean batch size (its
``gradbook_batch_size`` metric). For scale, the run also times the bare round trip of
one Jupyter kernel (``execute_request`` of ``print(1)`` until the kernel reports idle), with no
gateway and no HTTP: stock notebook-http needs three of them per request (assign ``REQUEST``, the
endpoint cell, its ``ResponseInfo`` cell).

wrk runs on the same machine as the servers and competes with them for its cores, so the
absolute figures depend on the machine; the ratios of the same run say where the time goes.
Nothing is asserted about time. Every process the run starts, kernels included, is stopped on
the way out, also on Ctrl-C or an error.

    .venv/bin/python bench/bench_gateway.py [--seconds 5] [--connections 1,4,64]
        [--models xor,digits] [--only gradbook,stock,falcon]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from gradbook_service.app.training import create_default_models
from jupyter_client import KernelManager
from procs import alive, child_pids, cpu_seconds, descendants, kernel_pids

from gradbook.datasets import load
from gradbook.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SERVERS = ("falcon", "stock", "gradbook")  # the order of the table's rows
LABELS = {"falcon": "falcon", "stock": "stock KG", "gradbook": "gradbook"}
MODELS = ("xor", "digits")
KERNEL_ROUND_TRIPS, KERNEL_WARM_UP = 300, 30
START_SECONDS = 180  # gradbook's first start trains the default models
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # wrk's time units, in ms


@dataclass(frozen=True)
class Load:
    """What wrk measured at one point."""

    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    requests: int = 0
    server_cpu_ms: float = float("nan")  # per request: the gateway, or Falcon's workers
    kernels_cpu_ms: float = float("nan")  # per request: the kernels together
    batch: float = float("nan")  # gradbook's mean batch size (requests per kernel execution)


@dataclass(frozen=True)
class Running:
    """A server the run started: its port, and the PID of the process it started."""

    port: int
    pid: int


WARM_UP_SECONDS = 1.0  # of load on each server and model before its figures are taken


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 20 s; then SIGKILL what is left below it."""
    below = descendants(process.pid)
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:  # it had already exited
        process.wait()
    deadline = time.monotonic() + 5
    while any(map(alive, below)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in filter(alive, below):
        os.kill(pid, signal.SIGKILL)


def request(port: int, method: str, path: str, body: bytes | None = None,
            timeout: float = 60) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body,
                           headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextmanager
def server(name: str, command: list[str], env: dict[str, str], port: int, ready: str,
           log: Path) -> Iterator[Running]:
    """Run ``command`` in a session of its own until the block ends, once ``GET ready`` is 200;
    its output goes to ``log``, whose end is shown if it does not start."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if request(port, "GET", ready, timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{LABELS[name]} did not start; the end of its log:\n{tail}")
        yield Running(port, process.pid)
    finally:
        stop(process)


def start(name: str, tmp: Path) -> AbstractContextManager[Running]:
    """The context manager running server ``name`` on a free port over ``tmp/store``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADBOOK_")}
    env.update(GRADBOOK_STORE=str(tmp / "store"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    if name == "gradbook":
        env.update(GRADBOOK_PORT=str(port), GRADBOOK_KERNELS="2")
        command, ready = [sys.executable, "-m", "gradbook_service.app.launch"], "/readyz"
    elif name == "stock":
        command = [sys.executable, "-m", "kernel_gateway",
                   "--KernelGatewayApp.api=kernel_gateway.notebook_http",
                   f"--KernelGatewayApp.seed_uri={BENCH / 'stock_predict.ipynb'}",
                   "--ip=127.0.0.1", f"--port={port}", "--port_retries=0",
                   "--KernelGatewayApp.prespawn_count=2"]
        ready = "/_api/spec/swagger.json"
    else:
        command = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
                   "--chdir", str(BENCH), "falcon_app:app"]
        ready = "/healthz"
    return server(name, command, env, port, ready, tmp / f"{name}.log")


def example(model: str) -> dict[str, list[float]]:
    """The body of one prediction: xor's ``[1, 0, 1]``, or the first held-out digit."""
    if model == "xor":
        return {"x": [1, 0, 1]}
    return {"x": load("digits").X_test[0].tolist()}


def check_answers(ports: dict[str, int], bodies: dict[str, bytes]) -> list[str]:
    """One plain request per server and model: what is wrong (not 200, or predictions that
    differ between servers), or nothing."""
    problems = []
    for model, body in bodies.items():
        path = f"/models/{model}/predict"
        predictions = {}
        for name, port in ports.items():
            status, answer = request(port, "POST", path, body)
            if status != 200:
                problems.append(f"{LABELS[name]} answered {status} to POST {path}: "
                                f"{answer[:300].decode(errors='replace')}")
                continue
            decoded = json.loads(answer)
            predictions[name] = {k: decoded.get(k) for k in ("version", "output", "class")}
        if len({json.dumps(p, sort_keys=True) for p in predictions.values()}) > 1:
            problems.append(f"the servers predict differently for POST {path}: " + "; ".join(
                f"{LABELS[name]} {p}" for name, p in predictions.items()))
    return problems


def settle(port: int, model: str, body: bytes) -> None:
    """Wait until the server has worked off what wrk left queued when it stopped.

    wrk closes its connections when its time is up, but a server may still hold the requests
    those connections had sent (stock notebook-http queues them for a kernel and runs them
    anyway, about 0.4 s of work at c=64). Left alone, that backlog would burn CPU during the
    next server's measurement. One more request, queued behind the backlog, returns when it is
    gone."""
    status, answer = request(port, "POST", f"/models/{model}/predict", body)
    if status != 200:
        raise RuntimeError(f"after a wrk run, 127.0.0.1:{port} answered {status}: {answer[:300]!r}")


def kernel_round_trips(runtime: Path) -> list[float]:
    """Milliseconds from sending ``execute_request`` of ``print(1)`` to one bare ipykernel until
    it reports idle on IOPub, ``KERNEL_ROUND_TRIPS`` times after ``KERNEL_WARM_UP``."""
    runtime.mkdir(parents=True, exist_ok=True)
    manager = KernelManager(kernel_name="python3", connection_file=str(runtime / "bare.json"))
    manager.start_kernel(stderr=subprocess.DEVNULL)  # its warning about plain TCP on loopback
    try:
        client = manager.blocking_client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            times = []
            for _ in range(KERNEL_WARM_UP + KERNEL_ROUND_TRIPS):
                began = time.perf_counter()
                msg_id = client.execute("print(1)")
                while True:
                    message = client.get_iopub_msg(timeout=30)
                    if (message["parent_header"].get("msg_id") == msg_id
                            and message["msg_type"] == "status"
                            and message["content"]["execution_state"] == "idle"):
                        break
                times.append((time.perf_counter() - began) * 1e3)
                client.get_shell_msg(timeout=30)  # the execute_reply, outside the timing
            return times[KERNEL_WARM_UP:]
        finally:
            client.stop_channels()
    finally:
        manager.shutdown_kernel(now=True)


def cpu_split(name: str, pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server started as ``pid``: ``server`` is the gateway
    process itself (gradbook, stock KG) or gunicorn's workers (Falcon: its master only
    supervises them); ``kernels`` the kernels below the gateway."""
    if name == "falcon":
        return {"server": sum(map(cpu_seconds, child_pids(pid))), "kernels": 0.0}
    return {"server": cpu_seconds(pid), "kernels": sum(map(cpu_seconds, kernel_pids(pid)))}


def batches(port: int) -> tuple[float, float]:
    """gradbook's ``gradbook_batch_size`` histogram: (sum, count) over every notebook."""
    status, text = request(port, "GET", "/metrics")
    if status != 200:
        return float("nan"), float("nan")
    total = {"sum": 0.0, "count": 0.0}
    for line in text.decode().splitlines():
        found = re.match(r"gradbook_batch_size_(sum|count)\{[^}]*\} ([\d.e+-]+)$", line)
        if found:
            total[found.group(1)] += float(found.group(2))
    return total["sum"], total["count"]


def measured(name: str, running: Running, load: Callable[[], Load]) -> Load:
    """``load()``'s figures with what the server's processes spent per request meanwhile (CPU
    from ``/proc``, kernels started or replaced during the run not counted) and, for gradbook,
    the mean batch size."""
    before = cpu_split(name, running.pid)
    batch_before = batches(running.port) if name == "gradbook" else (0.0, 0.0)
    result = load()
    after = cpu_split(name, running.pid)
    n = max(result.requests, 1)
    batch = float("nan")
    if name == "gradbook":
        batch_after = batches(running.port)
        executions = batch_after[1] - batch_before[1]
        batch = (batch_after[0] - batch_before[0]) / executions if executions else float("nan")
    return dataclasses.replace(
        result, server_cpu_ms=(after["server"] - before["server"]) * 1e3 / n,
        kernels_cpu_ms=(after["kernels"] - before["kernels"]) * 1e3 / n if name != "falcon"
        else float("nan"), batch=batch)


def parse_wrk(output: str) -> Load:
    def milliseconds(percent: str) -> float:
        value, unit = re.search(rf"^\s*{percent}%\s+([\d.]+)(\w+)", output, re.M).groups()
        return float(value) * UNITS[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    return Load(rps=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
                p50_ms=milliseconds("50"), p99_ms=milliseconds("99"),
                non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
                socket_errors=sum(map(int, errors.groups())) if errors else 0,
                requests=int(re.search(r"(\d+) requests in", output).group(1)))


def run_wrk(port: int, model: str, script: Path, connections: int, seconds: float) -> Load:
    command = ["wrk", f"--threads={min(connections, 2)}", f"--connections={connections}",
               f"--duration={seconds:g}s", "--timeout=30s", "--latency", f"--script={script}",
               f"http://127.0.0.1:{port}/models/{model}/predict"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or "Requests/sec" not in done.stdout:
        raise RuntimeError(f"wrk failed ({' '.join(command)}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def wrk_script(folder: Path, model: str, body: bytes) -> Path:
    """A wrk script that POSTs ``body`` as JSON; a Lua long string holds the JSON verbatim."""
    script = folder / f"post_{model}.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [==[{body.decode()}]==]\n")
    return script


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(results: dict[tuple[str, int, str], Load], models: list[str],
           connections: list[int], names: list[str], kernel: list[float]) -> None:
    print(f"\n{'model':<7} {'c':>3}  {'server':<9} {'rps':>9} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'non-2xx':>8} {'sock err':>8} {'cpu/req':>8} {'kern/req':>8} {'batch':>6}")
    for model in models:
        for c in connections:
            for name in names:
                r = results[model, c, name]
                print(f"{model:<7} {c:>3}  {LABELS[name]:<9} {r.rps:>9.1f} {r.p50_ms:>9.2f} "
                      f"{r.p99_ms:>9.2f} {r.non_2xx:>8} {r.socket_errors:>8} "
                      f"{r.server_cpu_ms:>8.3f} {r.kernels_cpu_ms:>8.3f} {r.batch:>6.1f}")
    print("cpu/req: CPU ms per request of the gateway process (Falcon: its workers); kern/req: "
          "of the kernels together; batch: requests per kernel execution")
    kernel_p50 = statistics.median(kernel)
    print(f"\nbare kernel round trip (print(1) to idle, {len(kernel)} times): "
          f"p50 {kernel_p50:.2f} ms, p99 {statistics.quantiles(kernel, n=100)[98]:.2f} ms")
    if "gradbook" not in names:
        return
    few, many = min(connections), max(connections)
    for model in models:
        gradbook = {c: results[model, c, "gradbook"] for c in connections}
        print(f"\n{model}:")
        for name in ("stock", "falcon"):
            if name in names:
                print(f"  gradbook rps / {LABELS[name]} rps: " + ", ".join(
                    f"c={c} {ratio(gradbook[c].rps, results[model, c, name].rps)}"
                    for c in connections))
        if "falcon" in names:
            print(f"  gradbook p99 / falcon p99 at c={many}: "
                  f"{ratio(gradbook[many].p99_ms, results[model, many, 'falcon'].p99_ms)}")
        print(f"  gradbook p50 at c={few} / bare kernel round trip p50: "
              f"{ratio(gradbook[few].p50_ms, kernel_p50)}")


def versions() -> str:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    words = (wrk.stdout + wrk.stderr).split()
    return (f"kernel_gateway {version('jupyter_kernel_gateway')}, "
            f"falcon {version('falcon')}, gunicorn {version('gunicorn')}, "
            f"wrk {words[1] if len(words) > 1 else 'unknown'}")


def listed(text: str, known: tuple[str, ...] | None = None) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if known is not None and item not in known]
    if not items or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list{f' of {known}' if known else ''}; got {text!r}")
    return items


def measure(args: argparse.Namespace, tmp: Path) -> None:
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure
    names = [name for name in SERVERS if name in args.only]
    bodies = {model: json.dumps(example(model)).encode() for model in args.models}
    with ExitStack() as running:
        # gradbook's first start fills the store the others read; without gradbook, fill it here.
        if "gradbook" not in names:
            create_default_models(ModelStore(tmp / "store"))
        servers: dict[str, Running] = {}
        for name in sorted(names, key=lambda n: n != "gradbook"):
            servers[name] = running.enter_context(start(name, tmp))
            print(f"{LABELS[name]} listening on 127.0.0.1:{servers[name].port}", flush=True)
        ports = {name: server.port for name, server in servers.items()}
        if problems := check_answers(ports, bodies):
            sys.exit("bench_gateway: the servers do not answer alike, so their figures would "
                     "not compare:\n  " + "\n  ".join(problems))
        print("bare kernel round trips...", flush=True)
        kernel = kernel_round_trips(tmp / "runtime")
        results = {}
        for model in args.models:
            script = wrk_script(tmp, model, bodies[model])
            for name in names:  # a warm-up, not measured: first requests load the model, etc.
                run_wrk(ports[name], model, script, max(args.connections), WARM_UP_SECONDS)
                settle(ports[name], model, bodies[model])
            for c in args.connections:
                for name in names:
                    print(f"wrk: {model}, c={c}, {LABELS[name]}...", flush=True)
                    results[model, c, name] = measured(
                        name, servers[name],
                        functools.partial(run_wrk, ports[name], model, script, c, args.seconds))
                    settle(ports[name], model, bodies[model])
    print(f"\nPOST /models/:name/predict, {args.seconds:g} s per point, {os.cpu_count()} cores, "
          f"load average {load_before:.2f} before the run; {versions()}")
    report(results, args.models, args.connections, names, kernel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk's duration per point")
    parser.add_argument("--connections", type=lambda t: [int(c) for c in listed(t)],
                        default=[1, 4, 64], help="connection counts (default 1,4,64)")
    parser.add_argument("--models", type=lambda t: listed(t, MODELS), default=list(MODELS),
                        help="models to load (default xor,digits)")
    parser.add_argument("--only", type=lambda t: listed(t, SERVERS), default=list(SERVERS),
                        help="servers to run (default gradbook,stock,falcon)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: install it with `sudo apt-get install wrk`", file=sys.stderr)
        sys.exit(2)
    # SIGTERM unwinds like Ctrl-C, so every server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
            measure(args, Path(tmp))
    except KeyboardInterrupt:  # the servers are stopped by now
        print("bench_gateway: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
