"""What the PostgreSQL store and the load balancer cost, and how fast a cluster gets over a death.

Everything runs on this machine, on free loopback ports, started as ``make cluster`` starts it
(``gradbook_service.app.postgres.PostgresServer``, ``python -m gradbook_service.app.launch``,
``gradbook_service.app.cluster.Balancer``):

1. **store**: one replica over a folder store and one over a PostgreSQL store (2 kernels each,
   running side by side), loaded in turn by wrk with ``POST /models/xor/predict`` at c=1 and
   c=4: rps, p50, p99, and the PostgreSQL/folder ratios (issue 13's goal: p50 ratio ≤ 1.1);
2. **balancer**: HAProxy in front of one replica, then in front of two (the folder replica is
   stopped first, so the two PostgreSQL replicas have the machine), wrk at c=4 and c=8 through
   it, and straight to one replica for comparison;
3. **takeover**: clients predicting through the two-replica balancer while one replica is
   SIGKILLed: the time until HAProxy marks it down (it stops routing to it), and how many
   requests failed meanwhile;
4. **lease**: a job running on the killed replica's worker: the time from the kill until it is
   ended (failed, or taken over and finished) by another replica's worker, started at the kill,
   with ``GRADBOOK_JOB_LEASE`` = ``--lease``;
5. **writes and freshness**, on the stores themselves: commits per second of one writer
   (``update`` with no change, so the commit is all there is) to a folder store and to the
   PostgreSQL store, for the xor and digits models; and, for the PostgreSQL store, how long
   after a commit returned a reader in another process (another replica's kernel) first
   answers with the new version (it polls ``get``, which asks the database nothing).

wrk shares the 2 cores with the servers, so the absolute figures depend on the machine; the
ratios of one run are the point. Nothing is asserted. Every process is stopped on the way out.

    .venv/bin/python bench/bench_cluster.py [--seconds 5] [--lease 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

from bench_gateway import (
    Load,
    free_port,
    ratio,
    request,
    run_wrk,
    server,
    settle,
    start,
    versions,
    wrk_script,
)
from gradbook_service.app.cluster import Balancer, find_haproxy
from gradbook_service.app.postgres import PostgresServer
from procs import alive, descendants, listening_pid

from gradbook import MLP
from gradbook.store import Store, open_store

ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"x": [1, 0, 1]}).encode()
LONG = {"data": "digits", "epochs": 5000, "batch_size": 32, "wait": False}
WARM_UP_SECONDS = 1.0


def replica(tmp: Path, name: str, url: str, **settings: str) -> AbstractContextManager[int]:
    """``python -m gradbook_service.app.launch`` over the PostgreSQL store ``url``, on a free
    port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADBOOK_")}
    env.update(GRADBOOK_STORE=url, GRADBOOK_PORT=str(port), GRADBOOK_KERNELS="2",
               JUPYTER_RUNTIME_DIR=str(tmp / f"runtime-{name}"), **settings,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return server("gradbook", [sys.executable, "-m", "gradbook_service.app.launch"], env, port,
                  "/readyz",
                  tmp / f"{name}.log")


def load(port: int, script: Path, connections: int, seconds: float) -> Load:
    run_wrk(port, "xor", script, connections, WARM_UP_SECONDS)
    settle(port, "xor", BODY)
    result = run_wrk(port, "xor", script, connections, seconds)
    settle(port, "xor", BODY)
    return result


def row(label: str, figures: Load) -> str:
    return (f"  {label:<28} {figures.rps:>8.0f} {figures.p50_ms:>8.2f} {figures.p99_ms:>8.2f}"
            f" {figures.non_2xx + figures.socket_errors:>7}")


HEADER = f"  {'':<28} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"


def kill_group(pid: int) -> None:
    """SIGKILL a replica's process group and whatever ran below it (kernels have sessions of
    their own), as a machine losing the replica would."""
    below = descendants(pid)
    os.killpg(pid, signal.SIGKILL)
    for child in below:
        if alive(child):
            os.kill(child, signal.SIGKILL)


READER = """
import json, sys, time
from gradbook.store import open_store
store, seen, last = open_store(sys.argv[1]), {}, 0
store.get("fresh")
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    version = store.get("fresh").metadata["version"]
    if version != last:
        seen[version], last = time.monotonic(), version
print(json.dumps(seen))
"""


def commits_per_second(store: Store, name: str, seconds: float = 2.0) -> float:
    """Commits of one writer changing nothing, per second, for ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        store.update(name, lambda net: None)
        done += 1
    return done / (time.perf_counter() - start)


def writes_and_freshness(url: str, tmp: Path) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Commits per second by store and model; the lags, in ms, from a commit's return here to
    a reader process's first answer with that version (PostgreSQL)."""
    folder, database = open_store(tmp / "writes"), open_store(url)
    database.migrate()
    rates: dict[str, dict[str, float]] = {}
    for model, sizes in (("xor", [3, 4, 1]), ("digits", [64, 32, 10])):
        for kind, store in (("folder", folder), ("postgresql", database)):
            store.create(f"w-{model}", MLP(sizes))
            rates.setdefault(model, {})[kind] = commits_per_second(store, f"w-{model}")
    database.create("fresh", MLP([3, 4, 1]))
    commits, gap = 200, 0.01  # commits spaced as requests come, not back to back
    reader = subprocess.Popen([sys.executable, "-c", READER, url, str(commits * gap + 5)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
    returned = {}
    for _ in range(commits):
        net = database.update("fresh", lambda net: None)
        returned[net.metadata["version"]] = time.monotonic()  # one clock for both processes
        time.sleep(gap)
    seen = {int(version): at for version, at in json.loads(reader.communicate()[0]).items()}
    database.close()
    # a version the reader skipped (two commits between its polls) counts as seen with the next
    lags = [1000 * (min(at for v, at in seen.items() if v >= version) - done)
            for version, done in returned.items() if any(v >= version for v in seen)]
    return rates, lags


def measure(args: argparse.Namespace, tmp: Path) -> None:
    script = wrk_script(tmp, "xor", BODY)
    with ExitStack() as stack:
        postgres = PostgresServer(tmp / "pg" / "data", free_port())
        stack.callback(postgres.stop)
        postgres.start()
        url = postgres.create_database("gradbook")
        print(f"PostgreSQL {postgres.url()} ({postgres.bin})", flush=True)
        print("store writes and freshness...", flush=True)
        rates, lags = writes_and_freshness(postgres.create_database("writes"), tmp)

        # 1. folder vs PostgreSQL, one replica each
        folder_stack = stack.enter_context(ExitStack())
        folder = folder_stack.enter_context(start("gradbook", tmp / "folder"))
        lease = {"GRADBOOK_JOB_LEASE": f"{args.lease:g}"}
        first = stack.enter_context(replica(tmp, "pg1", url, GRADBOOK_TRAINING_WORKER="0",
                                            **lease))
        store: dict[tuple[str, int], Load] = {}
        for c in (1, 4):
            for name, port in (("folder", folder), ("postgresql", first)):
                print(f"wrk: store {name}, c={c}...", flush=True)
                store[name, c] = load(port, script, c, args.seconds)
        folder_stack.close()

        # 2. through the balancer, one replica then two
        second = stack.enter_context(replica(tmp, "pg2", url, **lease))
        one = Balancer(free_port(), [("127.0.0.1", first)], tmp / "lb1")
        two = Balancer(free_port(), [("127.0.0.1", first), ("127.0.0.1", second)], tmp / "lb2")
        for balancer in (one, two):
            stack.enter_context(balancer)
        two.wait_for_states({"replica1": "UP", "replica2": "UP"})
        through: dict[tuple[str, int], Load] = {}
        for c in (4, 8):
            for name, port in (("direct", first), ("balancer, 1", one.port),
                               ("balancer, 2", two.port)):
                print(f"wrk: {name}, c={c}...", flush=True)
                through[name, c] = load(port, script, c, args.seconds)
        one.stop()

        # 3 and 4. kill the second replica while its worker runs a job
        status, answer = request(first, "POST", "/models/digits/train", json.dumps(LONG).encode())
        if status != 202:
            raise RuntimeError(f"the job was refused: {status} {answer[:300]!r}")
        job_id = json.loads(answer)["id"]
        deadline = time.monotonic() + 60
        while json.loads(request(first, "GET", f"/jobs/{job_id}")[1])["state"] != "running":
            if time.monotonic() > deadline:
                raise RuntimeError("the job did not start on the second replica's worker")
            time.sleep(0.05)
        stop = threading.Event()
        outcomes: list[tuple[float, int]] = []

        def client() -> None:
            while not stop.is_set():
                try:
                    status = request(two.port, "POST", "/models/xor/predict", BODY, timeout=10)[0]
                except OSError:
                    status = 0
                outcomes.append((time.monotonic(), status))

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(1.0)
        victim = listening_pid(second)
        killed = time.monotonic()
        kill_group(victim)
        two.wait_for_states({"replica2": "DOWN"}, timeout=30)
        takeover = time.monotonic() - killed
        time.sleep(1.0)
        stop.set()
        for thread in clients:
            thread.join()
        after = [status for at, status in outcomes if at >= killed]
        failed = [status for status in after if status != 200]
        # a worker of another replica ends the job once its lease has run out
        stack.enter_context(replica(tmp, "pg3", url, **lease))
        started = time.monotonic() - killed
        while (job := json.loads(request(first, "GET", f"/jobs/{job_id}")[1]))["state"] in (
                "running", "queued"):
            if time.monotonic() - killed > args.lease + 120:
                raise RuntimeError(f"the dead replica's job was never ended: {job}")
            time.sleep(0.05)
        ended = time.monotonic() - killed

    print(f"\n{versions()}; PostgreSQL {postgres.bin}; HAProxy {find_haproxy()}")
    print(f"\n1. one replica (2 kernels), POST /models/xor/predict, {args.seconds:g} s per point")
    print(HEADER)
    for c in (1, 4):
        for name in ("folder", "postgresql"):
            print(row(f"{name} store, c={c}", store[name, c]))
        pg, fs = store["postgresql", c], store["folder", c]
        print(f"  postgresql/folder, c={c}: p50 {ratio(pg.p50_ms, fs.p50_ms)}, "
              f"p99 {ratio(pg.p99_ms, fs.p99_ms)}, rps {ratio(pg.rps, fs.rps)} "
              "(goal: p50 ≤ 1.10x)")
    print("\n2. through HAProxy (PostgreSQL store)")
    print(HEADER)
    for c in (4, 8):
        for name in ("direct", "balancer, 1", "balancer, 2"):
            label = "one replica, no balancer" if name == "direct" else \
                f"balancer, {name[-1]} replica{'s' if name[-1] == '2' else ''}"
            print(row(f"{label}, c={c}", through[name, c]))
        print(f"  2 replicas / 1 through the balancer, c={c}: rps "
              f"{ratio(through['balancer, 2', c].rps, through['balancer, 1', c].rps)}")
    print("\n3. a replica SIGKILLed under 4 clients through the balancer")
    print(f"  marked down (no longer routed to) {takeover:.2f} s after the kill; "
          f"{len(failed)} of {len(after)} requests since the kill failed {sorted(set(failed))}")
    print(f"\n4. its running job (GRADBOOK_JOB_LEASE={args.lease:g} s): ended as "
          f"{job['state']!r} {ended:.1f} s after the kill (the replica whose worker ended it "
          f"was ready {started:.1f} s after the kill)")
    if job.get("error"):
        print(f"  error: {job['error']}")
    print("\n5. the stores themselves: commits per second of one writer")
    for model, by_kind in rates.items():
        folder, database = by_kind["folder"], by_kind["postgresql"]
        print(f"  {model:<7} folder {folder:6.0f}/s   postgresql {database:6.0f}/s   "
              f"({ratio(database, folder)})")
    lags.sort()
    print(f"  a reader process saw each of {len(lags)} PostgreSQL commits "
          f"{lags[len(lags) // 2]:.2f} ms (median), {lags[int(len(lags) * 0.99)]:.2f} ms (p99), "
          f"{lags[-1]:.2f} ms (worst) after the commit returned (negative: before; goal: "
          "≤ 100 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk's duration per point")
    parser.add_argument("--lease", type=float, default=10.0, help="GRADBOOK_JOB_LEASE, s")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: install it with `sudo apt-get install wrk`")
    tmp = Path(tempfile.mkdtemp(prefix="gradbook-bench-cluster-"))
    tmp.chmod(0o711)  # PostgreSQL runs as `postgres` when we are root, and must pass
    (tmp / "folder").mkdir()
    try:
        measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
