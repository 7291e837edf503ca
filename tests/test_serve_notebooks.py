"""``gradbook serve NOTEBOOK …``: notebooks of a user's own, served by the gateway with nothing
of gradbook's API, alone, several at once, from a folder, and reloaded when their files change.

Every gateway here is the ``gradbook`` command run from a folder outside the checkout, on
notebooks that import only the standard library.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from conftest import (
    ROOT,
    Reply,
    answers,
    free_port,
    gateway_env,
    http_request,
    running_gateway,
    stop_group,
    write_notebook,
)
from openapi_spec_validator import validate
from procs import alive

pytestmark = pytest.mark.xdist_group("notebooks")

GRADBOOK = Path(sys.executable).parent / "gradbook"
TOKEN = "a-token-for-notebooks"
RELOAD_SECONDS = 2.0  # the new version answers within this long of the write


HELLO = ["import json",
         ("markdown", "## Greets whoever is named"),
         '# GET /greet/:name\nprint("hello " + json.loads(REQUEST)["path"]["name"])',
         "# GET /pid\nimport os\nprint(os.getpid())"]
# /hold/:id waits until its file exists in the folder the notebook is in (the kernel's cwd)
SLOW = ["import json, pathlib, time",
        '# GET /hold/:id\nname = json.loads(REQUEST)["path"]["id"]\n'
        "deadline = time.monotonic() + 60\n"
        "while not pathlib.Path(name).exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\nprint('released ' + name)",
        "# GET /ping\nprint('pong')"]


def version_cells(answer: str) -> list[str]:
    return ["import time", f"# GET /answer\nprint({answer!r})",
            f"# GET /only-{answer}\nprint('mine')"]


@contextmanager
def serve(paths: list[Path], *flags: str, cwd: Path, probe: str = "/readyz",
          headers: dict[str, str] | None = None) -> Iterator[tuple[int, subprocess.Popen, Path]]:
    """``gradbook serve PATHS FLAGS`` run in ``cwd``; yields (port, process, log) once ``probe``
    answers 200."""
    command = [str(GRADBOOK), "serve", *map(str, paths), "--kernels", "1", *flags]
    with running_gateway(command, cwd, probe=probe, headers=headers) as running:
        yield running


def get(port: int, path: str, headers: dict[str, str] | None = None) -> Reply:
    return http_request(port, "GET", path, None, headers or {}, 60)


def wait_for(condition: object, what: str, seconds: float = 60) -> float:
    """Poll ``condition()`` until true; the seconds it took."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < seconds, f"waited {seconds} s for {what}"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the checkout, where the command runs."""
    folder = tmp_path_factory.mktemp("mine")
    assert ROOT not in folder.parents
    return folder


@pytest.fixture(scope="module")
def two(outside: Path) -> Iterator[int]:
    """hello.ipynb and slow.ipynb served together, with a token."""
    folder = outside / "two"
    folder.mkdir()
    token_file = folder / "token"
    token_file.write_text(TOKEN)
    notebooks = [write_notebook(folder / "hello.ipynb", HELLO),  # saved on another machine:
                 write_notebook(folder / "slow.ipynb", SLOW, "conda-env-elsewhere-py")]
    with serve(notebooks, "--token-file", str(token_file), "--max-body-bytes", "100",
               cwd=outside) as (port, _, _):
        yield port


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_several_notebooks_each_under_its_name_on_pools_of_their_own(two: int,
                                                                     outside: Path) -> None:
    """Each notebook's endpoints are under /<its stem>; while slow's only kernel holds a
    request, hello answers. (slow names a kernel this machine does not have: it runs on
    Python's own.)"""
    held = []
    release = outside / "two" / "release-1"
    holder = threading.Thread(target=lambda: held.append(get(two, "/slow/hold/release-1", AUTH)))
    holder.start()
    try:
        wait_for(lambda: _queue(two, "slow") == 0 and _busy(two), "slow's kernel to hold")
        reply = get(two, "/hello/greet/ada", AUTH)
        assert (reply.status, reply.body) == (200, b"hello ada\n")
        assert not held  # still held: hello did not wait for it
    finally:
        release.touch()
        holder.join(timeout=60)
    assert held[0].status == 200 and held[0].body == b"released release-1\n"
    assert get(two, "/greet/ada", AUTH).status == 404  # nothing at the root
    assert get(two, "/slow/greet/ada", AUTH).status == 404
    health = get(two, "/healthz").json()
    assert set(health["notebooks"]) == {"hello", "slow"}
    assert {entry["path"] for entry in health["notebooks"].values()} == {"/hello", "/slow"}
    pids = {get(two, "/hello/pid", AUTH).body}
    assert len(pids) == 1 and health["kernels"] == 2


def _metrics(port: int) -> str:
    return get(port, "/metrics", AUTH).body.decode()


def _queue(port: int, notebook: str) -> float:
    for line in _metrics(port).splitlines():
        if line.startswith(f'gradbook_queue_depth{{notebook="{notebook}"}}'):
            return float(line.split()[-1])
    return -1


def _busy(port: int) -> bool:
    """slow's kernel has taken a batch (a request runs on it)."""
    return any(line.startswith('gradbook_batch_size_count{notebook="slow"}')
               and float(line.split()[-1]) >= 1 for line in _metrics(port).splitlines())


def test_metrics_label_each_notebook(two: int) -> None:
    get(two, "/hello/greet/x", AUTH)
    text = _metrics(two)
    assert 'gradbook_requests_total{endpoint="/greet/:name",method="GET",notebook="hello",' \
           'status="200"}' in text
    assert 'gradbook_queue_depth{notebook="hello"}' in text
    assert 'gradbook_queue_depth{notebook="slow"}' in text


def test_a_users_notebook_has_the_services_guarantees(two: int) -> None:
    """The token, body limits and JSON errors hold for a user's notebook as for gradbook's."""
    refused = get(two, "/hello/greet/x")
    assert refused.status == 401 and refused.json()["error"]["status"] == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = http_request(two, "POST", "/hello/greet/x", b"x", AUTH, 30)
    assert wrong.status == 405 and wrong.headers["Allow"] == "GET"
    body_on_get = http_request(two, "GET", "/hello/greet/x", b"{}",
                               {**AUTH, "Content-Type": "application/json"}, 30)
    assert body_on_get.status == 413, body_on_get.body
    unknown = get(two, "/nowhere", AUTH)
    assert unknown.status == 404 and "no endpoint" in unknown.json()["error"]["message"]


def test_each_answer_names_the_version_of_its_notebook(two: int) -> None:
    hello = get(two, "/hello/greet/x", AUTH).headers["X-Gradbook-Notebook-Version"]
    slow = get(two, "/slow/ping", AUTH).headers["X-Gradbook-Notebook-Version"]
    health = get(two, "/healthz").json()["notebooks"]
    assert (hello, slow) == (health["hello"]["version"], health["slow"]["version"])
    assert hello != slow


def test_the_notebooks_are_described(two: int) -> None:
    """/openapi.json: every notebook's paths under its prefix, path parameters, the summary
    from the Markdown cell above, the token; valid OpenAPI. /docs shows it; the stock path of
    the description leads to it."""
    description = get(two, "/openapi.json", AUTH).json()
    validate(description)
    greet = description["paths"]["/hello/greet/{name}"]["get"]
    assert greet["summary"] == "Greets whoever is named"
    assert greet["parameters"][0]["name"] == "name"
    assert {"/hello/pid", "/slow/hold/{id}", "/slow/ping"} <= set(description["paths"])
    assert {"200", "401", "413", "500", "503", "504"} <= set(greet["responses"])
    assert description["security"] == [{"token": []}]
    assert get(two, "/docs").status == 200
    stock = get(two, "/_api/spec/swagger.json", AUTH)
    assert stock.status == 301 and stock.headers["Location"] == "/openapi.json"


def test_a_dead_kernel_is_replaced_and_seeded_again(outside: Path) -> None:
    folder = outside / "dead"
    folder.mkdir()
    notebook = write_notebook(folder / "state.ipynb", [
        "import os\nseeded = 'yes'", "# GET /seeded\nprint(seeded, os.getpid())"])
    with serve([notebook], cwd=outside) as (port, _, _):
        before = get(port, "/seeded").body.split()
        assert before[0] == b"yes"
        os.kill(int(before[1]), signal.SIGKILL)
        wait_for(lambda: not alive(int(before[1])), "the kernel to die")
        replies = []  # one may find the dead kernel before its loop does: 503, "retry"
        wait_for(lambda: replies.append(get(port, "/seeded")) or replies[-1].status == 200,
                 "the new kernel to answer")
        assert all(reply.status == 503 and "kernel stopped" in reply.json()["error"]["message"]
                   for reply in replies[:-1]), replies
        after = replies[-1].body.split()
        assert after[0] == b"yes" and after[1] != before[1]  # seeded again, another process
        assert get(port, "/healthz").status == 200


@pytest.mark.parametrize("make, message", [
    (lambda folder: folder / "missing.ipynb", "no such file"),
    (lambda folder: _text(folder / "notes.txt", "hello"), "not a notebook"),
    (lambda folder: _text(folder / "broken.ipynb", '{"cells": ['), "not valid JSON"),
    (lambda folder: write_notebook(folder / "quiet.ipynb", ["x = 1"]), "no endpoint"),
    (lambda folder: write_notebook(folder / "twice.ipynb", [
        "# GET /item/:a\nprint(1)", "# GET /item/:b\nprint(2)"]), "two cells claim one endpoint"),
    (lambda folder: write_notebook(folder / "mine.ipynb", ["# GET /healthz\nprint(1)"]),
     "the gateway's own"),
], ids=["missing", "not-a-notebook", "not-json", "no-endpoint", "two-cells", "gateway-path"])
def test_a_notebook_that_cannot_be_served_is_one_line_and_status_2(
        outside: Path, make: object, message: str, tmp_path: Path) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    done = subprocess.run([str(GRADBOOK), "serve", str(path), "--port", str(free_port())],
                          cwd=outside, env=gateway_env(outside), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert path.name in done.stderr


def test_two_notebooks_of_one_name_are_refused(outside: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = write_notebook(tmp_path / "a" / "same.ipynb", HELLO)
    other = write_notebook(tmp_path / "b" / "same.ipynb", HELLO)
    done = subprocess.run([str(GRADBOOK), "serve", str(one), str(other), "--port",
                           str(free_port())], cwd=outside, env=gateway_env(outside),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "/same/" in done.stderr, done.stderr


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_seed_cell_that_raises_stops_the_start_naming_file_cell_and_error(
        outside: Path, tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "fails.ipynb", [
        "import json", "ratio = 1 / 0", "# GET /x\nprint(ratio)"])
    port = free_port()
    done = subprocess.run([str(GRADBOOK), "serve", str(notebook), "--port", str(port)],
                          cwd=outside, env=gateway_env(outside), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "fails.ipynb: cell 2 (ratio = 1 / 0) raised ZeroDivisionError" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_folder_serves_its_notebooks_and_follows_added_and_deleted_ones(
        outside: Path, tmp_path: Path) -> None:
    folder = tmp_path / "book"
    folder.mkdir()
    write_notebook(folder / "first.ipynb", HELLO)
    write_notebook(folder / ".hidden.ipynb", HELLO)  # Jupyter's own files stay out
    with serve([folder], "--reload", cwd=outside) as (port, _, _):
        assert get(port, "/first/greet/x").body == b"hello x\n"
        assert get(port, "/.hidden/greet/x").status == 404
        write_notebook(folder / "second.ipynb", SLOW)
        wait_for(lambda: get(port, "/second/ping").status == 200, "second to be served")
        assert set(get(port, "/healthz").json()["notebooks"]) == {"first", "second"}
        (folder / "first.ipynb").unlink()
        wait_for(lambda: get(port, "/first/greet/x").status == 404, "first to stop")
        assert get(port, "/second/ping").body == b"pong\n"
        assert set(get(port, "/healthz").json()["notebooks"]) == {"second"}


def test_a_reload_under_load_loses_nothing_and_mixes_no_versions(
        outside: Path, tmp_path: Path) -> None:
    """16 clients send requests all along while the file is rewritten five times, alternating
    two versions: no request fails, each answer is wholly one version's (its body is the one
    its version header names), and the new version answers within 2 s of each write. Then a
    save whose seed cell raises keeps the old version serving, with the reload status saying
    why, and the next good save is served."""
    notebook = write_notebook(tmp_path / "flip.ipynb", version_cells("A"))
    with serve([notebook], "--reload", "--kernels", "2", cwd=outside) as (port, _, log):
        bodies: dict[str, set[bytes]] = {}  # version header → bodies seen with it
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    reply = get(port, "/answer")
                except OSError as err:
                    failures.append(repr(err))
                    continue
                if reply.status != 200:
                    failures.append(f"{reply.status} {reply.body[:200]!r}")
                bodies.setdefault(reply.headers["X-Gradbook-Notebook-Version"],
                                  set()).add(reply.body)

        clients = [threading.Thread(target=client) for _ in range(16)]
        for thread in clients:
            thread.start()
        waits = []
        try:
            for answer in ["B", "A", "B", "A", "B"]:
                write_notebook(notebook, version_cells(answer))
                waits.append(wait_for(lambda a=answer: get(port, "/answer").body ==
                                      f"{a}\n".encode(), f"version {answer}"))
                assert get(port, f"/only-{answer}").status == 200  # endpoints follow the file
                other = "A" if answer == "B" else "B"
                assert get(port, f"/only-{other}").status == 404
                time.sleep(0.3)  # requests keep coming meanwhile
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=60)
        assert not failures, failures[:5]
        assert all(len(seen) == 1 for seen in bodies.values()), bodies
        assert {next(iter(seen)) for seen in bodies.values()} == {b"A\n", b"B\n"}
        print("seconds from each write to its version's first answer:", waits)
        assert max(waits) < RELOAD_SECONDS, waits

        broken = ["import time", "raise RuntimeError('not today')", "# GET /answer\nprint('C')"]
        write_notebook(notebook, broken)
        wait_for(lambda: get(port, "/healthz").json()["notebooks"]["flip"]["reload"]["result"]
                 == "failed", "the failed reload to show")
        status = get(port, "/healthz").json()["notebooks"]["flip"]["reload"]
        assert "cell 2" in status["error"] and "RuntimeError: not today" in status["error"]
        assert get(port, "/answer").body == b"B\n"  # the old version still serves
        assert 'gradbook_reloads_total{notebook="flip",result="failed"} 1.0' in _text_of(port)
        assert "cannot reload" in log.read_text()
        write_notebook(notebook, version_cells("D"))
        wait_for(lambda: get(port, "/answer").body == b"D\n", "the next good save")
        assert get(port, "/healthz").json()["notebooks"]["flip"]["reload"]["result"] == "ok"


def _text_of(port: int) -> str:
    return get(port, "/metrics").body.decode()


def test_the_examples_are_served_together(outside: Path) -> None:
    """examples/: the folder a newcomer serves first."""
    with serve([ROOT / "examples"], cwd=outside) as (port, _, _):
        hello = get(port, "/greet/hello/Ada?lang=fr&times=2")
        assert (hello.status, hello.body) == (200, b"Bonjour, Ada!\nBonjour, Ada!\n")
        assert get(port, "/greet/hello/Ada?lang=xx").status == 400
        summary = http_request(port, "POST", "/stats/summary", json.dumps(
            {"values": [2, 4, 4, 4, 5, 5, 7, 9]}).encode(),
            {"Content-Type": "application/json"}, 30)
        assert summary.status == 200 and summary.json()["stdev"] == 2.0
        created = http_request(port, "POST", "/notes/notes", b'{"text": "milk"}',
                               {"Content-Type": "application/json"}, 30)
        assert created.status == 201, created.body
        assert get(port, "/notes/notes").json()["notes"] == [created.json()]
        gone = http_request(port, "DELETE", f"/notes/notes/{created.json()['id']}", None, {}, 30)
        assert gone.status == 200 and get(port, "/notes/notes").json()["notes"] == []


def test_make_serve_reloads_the_api_notebook_saved_from_jupyter(tmp_path: Path) -> None:
    """``make serve`` reloads: a copy of the API notebook (``GRADBOOK_API_NOTEBOOK``) saved
    as Jupyter saves it (its contents manager) with one more endpoint serves it, and the API
    goes on answering."""
    from jupyter_server.services.contents.filemanager import FileContentsManager

    notebook = tmp_path / "api.ipynb"
    notebook.write_bytes((ROOT / "notebooks" / "api.ipynb").read_bytes())
    port = free_port()
    log = tmp_path / "serve.log"
    args = f"--port {port} --store {tmp_path / 'store'} --kernels 1 --no-training-worker"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(ROOT), "serve", f"ARGS={args}"],
            env={**gateway_env(tmp_path), "GRADBOOK_API_NOTEBOOK": str(notebook)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: answers(port, "/readyz", {}), "make serve to start", 180)
        assert get(port, "/edited").status == 404
        contents = FileContentsManager(root_dir=str(tmp_path))
        model = contents.get("api.ipynb")
        model["content"].cells.append(nbformat.v4.new_code_cell('# GET /edited\nprint("edited")'))
        contents.save({"type": "notebook", "format": "json", "content": model["content"]},
                      "api.ipynb")
        wait_for(lambda: get(port, "/edited").status == 200, "the saved notebook", 60)
        assert get(port, "/edited").body == b"edited\n"
        assert get(port, "/models").status == 200
        assert get(port, "/healthz").json()["notebooks"]["api"]["reload"]["result"] == "ok"
    finally:
        stop_group(process, log)
    assert "reloaded" in log.read_text()
