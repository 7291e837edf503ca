"""The ``gradbook`` command as a user meets it: help, version, flags over variables, one line
and exit status 2 for every value it cannot use (a port that is taken too), and a wheel that
serves from any folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port, free_run, gateway_env, http_request, kernel_pids
from gradbook_service.app.settings import Settings
from gradbook_service.cli import CLUSTER_FLAGS, flag

import gradbook

GRADBOOK = Path(sys.executable).with_name("gradbook")  # the console script of this install
SETTINGS = Settings.class_trait_names(config=True)


def run(*arguments: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        command: Path = GRADBOOK) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(command), *arguments], env={**gateway_env(ROOT), **(env or {})},
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def test_help_names_every_setting_with_its_flag_and_variable() -> None:
    top = run("--help")
    assert top.returncode == 0 and "serve" in top.stdout and "cluster" in top.stdout
    for command in ("serve", "cluster"):
        shown = run(command, "--help")
        assert shown.returncode == 0, shown.stderr
        text = " ".join(shown.stdout.split())  # argparse wraps lines
        for name in SETTINGS:
            assert flag(name) in text and Settings.env(name) in text, name
    cluster = " ".join(run("cluster", "--help").stdout.split())
    for name, (env, _, _) in CLUSTER_FLAGS.items():
        assert flag(name) in cluster and env in cluster


def test_version_is_the_package_version() -> None:
    shown = run("--version")
    assert shown.returncode == 0
    assert shown.stdout.split() == ["gradbook", gradbook.__version__]
    assert gradbook.__version__[0].isdigit()


def test_no_command_shows_the_commands_and_fails() -> None:
    shown = run()
    assert shown.returncode == 2 and "serve" in shown.stderr and "cluster" in shown.stderr


BAD = [  # (arguments, environment, what the one line must name)
    (["serve", "--port", "abc"], {}, "--port must be an integer from 1 to 65535; got 'abc'"),
    (["serve"], {"GRADBOOK_PORT": "abc"}, "GRADBOOK_PORT must be an integer from 1 to 65535"),
    (["serve", "--port", "70000"], {}, "--port must be an integer from 1 to 65535"),
    (["serve", "--port", "0"], {}, "--port must be an integer from 1 to 65535"),
    (["serve"], {"GRADBOOK_KERNELS": "0"}, "GRADBOOK_KERNELS must be an integer of at least 1"),
    (["serve", "--kernels", "two"], {}, "--kernels must be an integer of at least 1"),
    (["serve", "--max-batch", "-3"], {}, "--max-batch must be an integer of at least 1"),
    (["serve", "--request-timeout", "nan"], {}, "--request-timeout must be a number"),
    (["serve", "--body-timeout", "0"], {}, "--body-timeout must be a number of at least"),
    (["serve"], {"GRADBOOK_ALLOW_OPEN": "yes"}, "GRADBOOK_ALLOW_OPEN must be 0 or 1"),
    (["serve"], {"GRADBOOK_MAX_RESPONSE_RATIO": "0.5"}, "GRADBOOK_MAX_RESPONSE_RATIO must be"),
    (["serve", "--host", ""], {}, "--host must be a value"),
    (["serve", "--token-file", "/nonexistent/token"], {}, "--token-file must be a readable file"),
    (["serve", "--bogus"], {}, "unrecognized arguments: --bogus"),
    (["serve", "--host", "0.0.0.0"], {}, "refusing to listen on 0.0.0.0 without a token"),
    (["cluster", "--replicas", "0"], {}, "--replicas must be an integer of at least 1"),
    (["cluster"], {"GRADBOOK_REPLICAS": "x"}, "GRADBOOK_REPLICAS must be an integer"),
    (["cluster", "--pg-port", "99999"], {}, "--pg-port must be an integer from 1 to 65535"),
    (["cluster", "--kernels", "0"], {}, "--kernels must be an integer of at least 1"),
]


@pytest.mark.parametrize(("arguments", "env", "named"), BAD,
                         ids=[" ".join(a) + "".join(e) for a, e, _ in BAD])
def test_a_bad_value_is_one_line_and_exit_status_2(arguments: list[str], env: dict[str, str],
                                                   named: str, tmp_path: Path) -> None:
    shown = run(*arguments, env=env, cwd=tmp_path)
    assert shown.returncode == 2, shown
    assert named in shown.stderr and len(shown.stderr.strip().splitlines()) == 1, shown.stderr
    assert not list(tmp_path.iterdir())  # nothing was started or written


@pytest.mark.parametrize("arguments", [["serve", "--port"], ["cluster", "--port"],
                                       ["cluster", "--port", "1", "--pg-port"]])
def test_a_port_in_use_is_one_line_and_exit_status_2(arguments: list[str],
                                                     tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        if arguments[-1] == "--pg-port":  # the balancer and replicas on free ports, PG's taken
            arguments = [*arguments[:2], str(free_run(2)), "--replicas", "1", "--pg-port"]
        shown = run(*arguments, port, cwd=tmp_path)
    assert shown.returncode == 2, shown
    line = shown.stderr.strip()
    assert len(line.splitlines()) == 1 and f"port {port} on 127.0.0.1 is already in use" in line
    assert ("--pg-port" if "--pg-port" in arguments else "--port") in line


def serve_until_ready(command: list[str], env: dict[str, str], cwd: Path,
                      port: int) -> subprocess.Popen[bytes]:
    with open(cwd / "service.log", "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if http_request(port, "GET", "/readyz", None, {}, 5).status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    stop(process)
    raise AssertionError((cwd / "service.log").read_text()[-3000:])


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def test_flags_win_over_their_variables(tmp_path: Path) -> None:
    """The variables name another port, store and kernel count; the flags' values are served,
    and the kernels see the flags' store, as the variables would have told them."""
    port, store = free_port(), tmp_path / "flag-store"
    env = {**gateway_env(tmp_path), "GRADBOOK_PORT": str(free_port()),
           "GRADBOOK_STORE": str(tmp_path / "variable-store"), "GRADBOOK_KERNELS": "3",
           "GRADBOOK_MAX_EPOCHS": "5"}
    process = serve_until_ready(
        [str(GRADBOOK), "serve", "--port", str(port), "--store", str(store), "--kernels", "1",
         "--max-epochs", "7"], env, tmp_path, port)
    try:
        diagnostics = http_request(port, "GET", "/diagnostics", None, {}, 30).json()
        assert diagnostics["store"]["path"] == str(store.resolve())
        assert diagnostics["limits"]["max_epochs"] == 7  # as the kernels read it
        assert len(kernel_pids(process.pid)) == 1
    finally:
        stop(process)
    assert store.is_dir() and not (tmp_path / "variable-store").exists()


def test_the_wheel_installs_and_serves_from_any_folder(tmp_path: Path) -> None:
    """``pip wheel .``, installed with ``--no-deps`` into a fresh venv whose dependencies come
    from this one (a ``.pth`` line to its site-packages: the same versions, no downloads, and no
    way to reach this clone's sources), then ``gradbook serve`` in an empty folder."""
    source = tmp_path / "source"
    for part in ("pyproject.toml", "README.md", "gradbook", "service", "notebooks/api.ipynb"):
        target = source / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, target, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / part, target)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("gradbook-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], check=True, capture_output=True,
                               text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = [p.name for p in site.iterdir()]
    assert "gradbook_service" in installed and "service" not in installed

    folder = tmp_path / "anywhere"
    folder.mkdir()
    where = run("--version", command=venv / "bin" / "gradbook", cwd=folder)
    assert where.stdout.split() == ["gradbook", gradbook.__version__], where
    origin = subprocess.run([str(python), "-c", "import gradbook_service; print("
                             "gradbook_service.__file__)"], cwd=folder, capture_output=True,
                            text=True, check=True).stdout
    assert origin.startswith(str(site))  # the installed copy, not this clone
    port = free_port()
    env = {**gateway_env(folder), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    process = serve_until_ready([str(venv / "bin" / "gradbook"), "serve", "--port", str(port),
                                 "--kernels", "1"], env, folder, port)
    try:
        models = http_request(port, "GET", "/models", None, {}, 30).json()["models"]
        assert {"xor", "digits"} <= {model["name"] for model in models}
        reply = http_request(port, "POST", "/models/xor/predict", b'{"X": [[0, 1, 1]]}',
                             {"Content-Type": "application/json"}, 30)
        assert reply.status == 200 and len(reply.json()["outputs"]) == 1
        page = http_request(port, "GET", "/", None, {}, 30)
        assert page.status == 200 and b"<html" in page.body.lower()
    finally:
        stop(process)
    assert (folder / ".gradbook" / "models" / "xor.npz").is_file()  # the store where it ran
