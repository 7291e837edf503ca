"""Mutation testing of the engine (service/gateway/engine.py, service/gateway/runner.py): plausible
bugs planted by
hand, one at a time, each in a copy of the tree, and the engine's tests run against each.

mutmut cannot do this: the engine runs in the gateway, a subprocess the tests start, and the
runner inside its kernels (as source the engine sends them), while mutmut 3 switches its mutants
on inside the pytest process only, picks the tests of a mutant by the calls it saw in that process
(none: every engine mutant would be "no tests"), and names mutants by file path (``service.engine``)
where the gateway imports ``gradbook_service.gateway.engine``; and the runner runs as source under
another name again (``gradbook_runner``).

Two bugs are left out as equivalent in practice: taking the next batch before a deadline's
interrupt has taken (``Execution.on_message``'s ``self.interrupted is None``: the interrupt lands
before the timed-out request's result can arrive, unless that request ended on its own at the
deadline, a race no test can stage), and letting jupyter_client restart a dead kernel in place
(``_prepare``'s ``stop_restarter``: the engine's check, every second, replaces the kernel before
the restarter's, every three, notices it).

So each mutant here is a change of a few lines, with the promise it breaks; it is applied to a
copy of ``service/``, ``gradbook/``, ``tests/`` and ``bench/`` in a temporary folder, where
``gb/gradbook_service`` links to the copy's ``service/``, and ``gb/`` comes first on
``PYTHONPATH``: the tests, the gateways they start and (through the engine) the kernels all run
the copy, not the editable install. The unchanged copy must pass first. A mutant is killed when
the tests fail (or run out of time).

    python tests/mutation/engine_mutants.py [-j 2] [--all-failures] [--only NAME …]
                                             [--tests tests/test_engine_promises.py …] [--list]

Prints one line per mutant (killed or SURVIVED, and the first failing test), then the score per
file; each run's pytest output is kept in build/engine-mutants/. Exits 1 if a mutant survived,
2 if the unchanged copy fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("service", "gradbook", "tests", "bench", "pyproject.toml")
TESTS = ["tests/test_engine_promises.py", "tests/test_deadlines.py"]  # in this order: -x
LOGS = ROOT / "build" / "engine-mutants"  # each run's pytest output, <mutant>.log
RUN_TIMEOUT = 900  # seconds for one mutant's tests; past it the mutant counts as killed
TEST_TIMEOUT = 180  # seconds for one test (pytest-timeout)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # the file changed, relative to the root
    old: str  # text that occurs exactly once in the file
    new: str
    breaks: str  # the promise it breaks
    more: tuple[tuple[str, str], ...] = ()  # more (old, new) changes of the same file


ENGINE, RUNNER = "service/gateway/engine.py", "service/gateway/runner.py"
SHARE = "share = min(self.max_batch, -(-len(self.queue) // len(self.kernel_clients)))"
IDLE_CHECK = """                try:
                    if not await self.is_running(kernel_id):
                        kernel_id = await self.replace(kernel_id)
                except Exception as err:  # tried again at the next check"""
BEFORE_CHECK = """            try:
                if not await self.is_running(kernel_id):
                    kernel_id = await self.replace(kernel_id)
                when = "while running\""""
ANSWER = """job.future.set_result(Result(self.kernel_id, **fields, batch=self.size,
                                             timing=timing))"""

MUTANTS = [
    # -- the queue and its batches
    Mutant("no-batch-cap", ENGINE, SHARE,
           "share = -(-len(self.queue) // len(self.kernel_clients))",
           "a batch holds at most max_batch requests"),
    Mutant("one-request-per-batch", ENGINE, SHARE, "share = 1",
           "a free kernel takes every waiting request, up to max_batch"),
    Mutant("no-sharing-between-kernels", ENGINE, SHARE,
           "share = min(self.max_batch, len(self.queue))",
           "kernels free at the same time share the queue"),
    Mutant("lifo-queue", ENGINE, "job = self.queue.popleft()", "job = self.queue.pop()",
           "one FIFO queue: oldest first"),
    Mutant("cancelled-requests-run", ENGINE, "if not job.future.done():  # not cancelled",
           "if True:  # not cancelled",
           "a request whose client went away while queued never runs"),
    Mutant("batch-size-not-observed", ENGINE, "self.on_batch(len(jobs))", "self.on_batch(1)",
           "gradbook_batch_size: requests per kernel execution"),
    Mutant("max-queue-off-by-one", ENGINE,
           "return len(self.queue) >= self.free + self.max_queue",
           "return len(self.queue) > self.free + self.max_queue",
           "max_queue requests wait at most; one more gets 503"),
    # -- deadlines
    Mutant("requeue-at-the-end", ENGINE, "self.queue.extendleft(reversed(unrun))",
           "self.queue.extend(unrun)",
           "the unrun requests of an interrupted batch go back at the head of the queue"),
    Mutant("requeue-reversed", ENGINE, "self.queue.extendleft(reversed(unrun))",
           "self.queue.extendleft(unrun)",
           "the unrun requests of an interrupted batch keep their order"),
    Mutant("interrupted-batch-fails-the-rest", ENGINE,
           "self._requeue(execution)\n                        jobs = []",
           "pass",
           "the requests an interrupt kept from running are served afterwards"),
    Mutant("deadline-from-the-batch-start", ENGINE,
           "self.since = asyncio.get_running_loop().time()  # the next request starts now",
           "pass",
           "each request of a batch has its own deadline"),
    Mutant("deadline-hits-the-last-request", ENGINE,
           "job = self.waiting.pop(min(self.waiting))", "job = self.waiting.pop(max(self.waiting))",
           "the request running past its deadline gets 504"),
    Mutant("stray-interrupt-is-a-500", ENGINE,
           'elif (content.get("error") or {}).get("ename") == "KeyboardInterrupt":',
           "elif False:",
           "an interrupt meant for an earlier request answers 503 (retry), not 500"),
    Mutant("stubborn-kernel-kept", ENGINE,
           "and now - execution.interrupted > INTERRUPT_GRACE_SECONDS):",
           "and False):",
           "a kernel that runs on after an interrupt is replaced (tests/test_deadlines.py)"),
    # -- answers, kernels' deaths, journals
    Mutant("answers-wait-for-the-batch", ENGINE, ANSWER,
           "self.later.append((job, Result(self.kernel_id, **fields, batch=self.size,\n"
           "                                                   timing=timing)))",
           "results reach their requests as each finishes, not with the batch",
           more=(("self.idle = True", "self.idle = True\n"
                  "            for job, result in self.later:\n"
                  "                if not job.future.done():\n"
                  "                    job.future.set_result(result)"),
                 ("self.batch = bool(jobs)", "self.batch = bool(jobs)\n        self.later = []"))),
    Mutant("no-journal-recovery", ENGINE, "self._recover(execution, batch_id)", "pass",
           "a kernel's death keeps the answers it finished (the journal)"),
    Mutant("journal-of-any-batch", ENGINE,
           'if not lines or lines[0] != json.dumps({"batch": batch_id}):', "if not lines:",
           "the journal answers only for its own batch"),
    Mutant("no-idle-kernel-check", ENGINE, IDLE_CHECK,
           IDLE_CHECK.replace("if not await self.is_running(kernel_id):", "if False:"),
           "an idle kernel that stopped is replaced"),
    Mutant("no-check-before-running", ENGINE, BEFORE_CHECK,
           BEFORE_CHECK.replace("if not await self.is_running(kernel_id):", "if False:"),
           "a batch taken for a kernel that stopped runs on its replacement"),
    Mutant("signature-unchecked", ENGINE, "if session.auth is not None and not hmac",
           "if False and not hmac",
           "an IOPub message with a wrong signature is dropped"),
    Mutant("history-kept", ENGINE, "store_history: bool = False", "store_history: bool = True",
           "executions stay outside IPython's history"),
    # -- the runner, in the kernel
    Mutant("system-exit-escapes", RUNNER, "except BaseException as err:",
           "except Exception as err:", "SystemExit fails its own request, not the kernel"),
    Mutant("batch-runs-on-after-an-interrupt", RUNNER,
           "if interrupted:  # the gateway interrupted the kernel: the rest of the batch waits\n"
           "                    raise KeyboardInterrupt",
           "pass", "an interrupt ends the batch; the rest waits"),
    Mutant("semicolon-ignored", RUNNER, "return None if self.quiet else value", "return value",
           "a cell ending in ';' shows no value"),
    Mutant("none-shown", RUNNER, "return {} if value is None else {\"body\": json.dumps(value)}",
           "return {\"body\": json.dumps(value)}", "a value of None is no body"),
    Mutant("no-ipython-syntax", RUNNER, "code = shell.transform_cell(source)", "code = source",
           "IPython syntax (magics) is allowed"),
    Mutant("results-not-journaled", RUNNER,
           'journal.write(json.dumps(content) + "\\n")', "pass",
           "each result is written to the journal before it is published"),
    Mutant("journal-not-flushed", RUNNER,
           "journal.flush()  # in the operating system's hands: it outlives this process",
           "pass", "a journaled result outlives the kernel's death"),
    Mutant("journal-not-named", RUNNER,
           'journal.write(json.dumps({"batch": batch["batch"]}) + "\\n")', "pass",
           "the journal's first line names its batch"),
    Mutant("every-result-for-the-first", RUNNER, 'content = {"index": index, **result,',
           'content = {"index": 0, **result,', "each result goes to its own request"),
]


def make_copy(mutant: Mutant | None) -> Path:
    """A copy of the tree with ``mutant`` applied (none: unchanged), importable as installed."""
    folder = Path(tempfile.mkdtemp(prefix="gradbook-mutant-"))
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name,
                            ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        else:
            shutil.copy2(source, folder / name)
    (folder / "gb").mkdir()
    (folder / "gb" / "gradbook_service").symlink_to(folder / "service")
    (folder / "gb" / "gradbook").symlink_to(folder / "gradbook")
    if mutant is not None:
        path = folder / mutant.path
        text = path.read_text(encoding="utf-8")
        for old, new in ((mutant.old, mutant.new), *mutant.more):
            if (count := text.count(old)) != 1:
                raise SystemExit(f"{mutant.name}: {old!r} occurs {count} times in {mutant.path}")
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
    return folder


def environment(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder / "gb"),
                                                      env.get("PYTHONPATH")]))
    env.pop("MUTANT_UNDER_TEST", None)
    return env


def check_imports(folder: Path) -> None:
    """The copy's engine is the one a process started as the tests start gateways imports."""
    found = subprocess.run(
        [sys.executable, "-c", "import gradbook_service.gateway.engine as e, gradbook as g; "
         "print(e.__file__); print(g.__file__)"],
        cwd=folder, env=environment(folder), capture_output=True, text=True, check=True,
    ).stdout.split()
    for path in found:
        if not Path(path).resolve().is_relative_to(folder.resolve()):
            raise SystemExit(f"the copy in {folder} imports {path}, not its own code")


@dataclass
class Outcome:
    mutant: Mutant | None
    killed: bool
    detail: str  # the failing tests, or why it counts as killed
    seconds: float


def run(mutant: Mutant | None, tests: list[str], exitfirst: bool) -> Outcome:
    folder = make_copy(mutant)
    began = time.monotonic()
    try:
        check_imports(folder)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   f"--timeout={TEST_TIMEOUT}", "-rfE", *(["-x"] if exitfirst else []), *tests]
        try:
            done = subprocess.run(command, cwd=folder, env=environment(folder),
                                  capture_output=True, text=True, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            return Outcome(mutant, True, f"timeout after {RUN_TIMEOUT} s",
                           time.monotonic() - began)
        LOGS.mkdir(parents=True, exist_ok=True)
        name = "unchanged" if mutant is None else mutant.name
        (LOGS / f"{name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        failed = re.findall(r"^(?:FAILED|ERROR) \S+::(\S+)", done.stdout, re.MULTILINE)
        detail = ", ".join(dict.fromkeys(failed)) or done.stdout.strip().splitlines()[-1:][0]
        return Outcome(mutant, done.returncode != 0, detail, time.monotonic() - began)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutants run at once")
    parser.add_argument("--tests", nargs="+", default=TESTS, help="test files to run")
    parser.add_argument("--only", nargs="+", default=[], help="these mutants only")
    parser.add_argument("--all-failures", action="store_true",
                        help="run every test against each mutant (not -x): all that fail")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if unknown := set(args.only) - {m.name for m in MUTANTS}:
        parser.error(f"no such mutant: {', '.join(sorted(unknown))}")
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:40} {mutant.path:18} {mutant.breaks}")
        return 0

    print(f"Engine mutants: {len(mutants)}, against {' '.join(args.tests)}", flush=True)
    baseline = run(None, args.tests, exitfirst=True)
    if baseline.killed:
        print(f"the unchanged copy fails ({baseline.detail}): fix that first")
        return 2
    print(f"unchanged copy: passes ({baseline.seconds:.0f} s)", flush=True)

    outcomes = []
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = [pool.submit(run, m, args.tests, not args.all_failures) for m in mutants]
        for future in futures:
            outcome = future.result()
            outcomes.append(outcome)
            assert outcome.mutant is not None
            state = "killed  " if outcome.killed else "SURVIVED"
            print(f"{state} {outcome.mutant.name:38} {outcome.seconds:5.0f} s  {outcome.detail}",
                  flush=True)

    print()
    for path in (ENGINE, RUNNER):
        mine = [o for o in outcomes if o.mutant is not None and o.mutant.path == path]
        if mine:
            killed = sum(o.killed for o in mine)
            print(f"{path}: {killed} of {len(mine)} mutants killed "
                  f"({100 * killed / len(mine):.1f} %)")
    killed = sum(o.killed for o in outcomes)
    print(f"engine and runner: {killed} of {len(outcomes)} killed "
          f"({100 * killed / max(len(outcomes), 1):.1f} %)")
    survivors = [o.mutant for o in outcomes if not o.killed and o.mutant is not None]
    for mutant in survivors:
        print(f"    survived: {mutant.name} ({mutant.path}): {mutant.breaks}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
