"""The personality keeps the notebook-http contract: a plain notebook-http notebook, which knows
nothing of gradbook, is served by ``service.personality`` as by the stock gateway, with the
personality's JSON errors around it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest
from conftest import ROOT, free_port, gateway_env, http_request

pytestmark = pytest.mark.xdist_group("gateway")

CELLS = [
    "import json",
    '# GET /hello/:name\nprint("hello " + json.loads(REQUEST)["path"]["name"])',
    '# POST /echo\nprint(json.dumps({"got": json.loads(REQUEST)["body"]}))',
    '# ResponseInfo POST /echo\nprint(json.dumps({"status": 201, "headers": '
    '{"Content-Type": "application/json", "X-Echo": "yes"}}))',
    '# GET /broken\nraise KeyError("a secret detail")',
    '# GET /no-info\nprint("body")',
    '# ResponseInfo GET /no-info\nprint("this is not JSON")',
    "# PUT /quiet\npass",
    '# ResponseInfo PUT /quiet\nprint(json.dumps({"status": 204}))',
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    """The stock gateway command with ``KernelGatewayApp.api`` set to the personality, serving a
    notebook of ``CELLS`` on one kernel; yields its port."""
    folder = tmp_path_factory.mktemp("plain")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                       "display_name": "Python 3"}
    nbformat.write(notebook, folder / "plain.ipynb")
    port = free_port()
    command = [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.api=service.personality",
               f"--KernelGatewayApp.seed_uri={folder / 'plain.ipynb'}", "--ip=127.0.0.1",
               f"--port={port}", "--port_retries=0", "--KernelGatewayApp.prespawn_count=1"]
    log = folder / "gateway.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=gateway_env(folder), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the gateway did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _answers(port: int) -> bool:
    try:
        return http_request(port, "GET", "/hello/x", None, {}, 10).status == 200
    except OSError:
        return False


def test_an_endpoint_cell_prints_the_body(gateway) -> None:
    reply = http_request(gateway, "GET", "/hello/ada", None, {}, 30)
    assert (reply.status, reply.body) == (200, b"hello ada\n")


def test_a_response_info_cell_sets_status_and_headers(gateway) -> None:
    headers = {"Content-Type": "application/json"}
    reply = http_request(gateway, "POST", "/echo", b'{"a": [1, 2]}', headers, 30)
    assert reply.status == 201
    assert reply.headers["X-Echo"] == "yes" and reply.headers["X-Gradbook-Kernel"]
    assert json.loads(reply.body) == {"got": {"a": [1, 2]}}


def test_a_cell_with_no_body_can_answer_204(gateway) -> None:
    """Stock notebook-http answers a ResponseInfo of ``{"status": 204}``; tornado refuses to
    send even an empty body with a 204, so the personality sends none."""
    reply = http_request(gateway, "PUT", "/quiet", None, {}, 30)
    assert (reply.status, reply.body) == (204, b"")


def test_form_fields_arrive_as_a_dict_of_lists(gateway) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = http_request(gateway, "POST", "/echo", b"a=1&a=2&b=x", headers, 30)
    assert json.loads(reply.body) == {"got": {"a": ["1", "2"], "b": ["x"]}}


@pytest.mark.parametrize("path", ["/broken", "/no-info"])
def test_a_failing_cell_is_a_500_without_details(gateway, path) -> None:
    reply = http_request(gateway, "GET", path, None, {}, 30)
    assert reply.status == 500, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    error = json.loads(reply.body)["error"]
    assert error["status"] == 500 and "secret" not in error["message"]
    assert http_request(gateway, "GET", "/hello/again", None, {}, 30).status == 200


def test_unknown_paths_and_methods_are_json_errors(gateway) -> None:
    missing = http_request(gateway, "GET", "/nowhere", None, {}, 30)
    assert missing.status == 404 and json.loads(missing.body)["error"]["status"] == 404
    wrong = http_request(gateway, "DELETE", "/echo", None, {}, 30)
    assert wrong.status == 405 and "use POST" in json.loads(wrong.body)["error"]["message"]
