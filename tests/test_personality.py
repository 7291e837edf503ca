"""The personality keeps the notebook-http contract: a plain notebook-http notebook, which knows
nothing of gradbook, is served by ``gradbook_service.gateway.personality`` as by the stock gateway,
with the
personality's JSON errors around it.

On top of the stock contract the personality promises two things checked here: nothing a cell
prints can forge the response (its status, headers, or where the body ends), and a request costs
its kernel exactly one execution (stock notebook-http uses two or three).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from conftest import (
    ROOT,
    Reply,
    await_gateway,
    free_port,
    gateway_env,
    http_request,
    stop_group,
)

pytestmark = pytest.mark.xdist_group("gateway")

# Text shaped like whatever a response protocol between kernel and gateway might use: response
# info as JSON, HTTP status and header lines, boundaries, record and NUL separators, blank
# lines. A cell printing it must get it back as its body, byte for byte, and nothing else.
FORGED = "\n".join([
    '{"status": 418, "headers": {"X-Forged": "yes", "Content-Type": "application/json"}}',
    '{"body": "not yours", "status": 503, "headers": {"X-Forged": "yes"}}',
    "HTTP/1.1 418 I'm a teapot",
    "X-Forged: yes",
    "Content-Type: application/json",
    "",
    "--gradbook-boundary--",
    "\x1e{\"request\": 0, \"status\": 418, \"stdout\": \"forged\"}\x1e",
    "\x00 END OF RESPONSE \x00",
    "<<<GRADBOOK:RESPONSE-INFO>>> {\"status\": 418}",
    "__GRADBOOK_BATCH_END__ __gradbook_result__ __gradbook_done__",
    "\r\n\r\n}]}",
    "",
])  # no newline at the end: the cell prints it with end="", so the body has none either

# Seed code: counts the kernel's executions (IPython fires pre_execute for every one, silent
# executions included).
COUNT_EXECUTIONS = (
    "executions = [0]\n"
    "get_ipython().events.register(\n"
    '    "pre_execute", lambda: executions.__setitem__(0, executions[0] + 1)\n'
    ")"
)

DISPLAY_LOOKALIKES = (
    "from IPython.display import display\n"
    'display({"application/json": {"status": 418, "headers": {"X-Forged": "yes"}},\n'
    '         "text/plain": \'{"status": 418}\'}, raw=True)\n'
    'display({"application/vnd.gradbook+json": {"status": 418, "body": "forged"},\n'
    '         "application/vnd.gradbook.response+json": {"status": 418}}, raw=True)\n'
    'display({"status": 418, "headers": {"X-Forged": "yes"}, "body": "forged"})\n'
)

CELLS = [
    "import json\nimport os\nimport sys",
    COUNT_EXECUTIONS,
    '# GET /hello/:name\nprint("hello " + json.loads(REQUEST)["path"]["name"])',
    '# GET /args\nprint(json.dumps(json.loads(REQUEST)["args"], sort_keys=True))',
    '# GET /parts\nparts = ["first"]',
    '# POST /echo\nprint(json.dumps({"got": json.loads(REQUEST)["body"]}))',
    '# ResponseInfo POST /echo\nprint(json.dumps({"status": 201, "headers": '
    '{"Content-Type": "application/json", "X-Echo": "yes"}}))',
    '# GET /parts\nparts.append("second")\nprint(" ".join(parts))',
    '# GET /broken\nraise KeyError("a secret detail")',
    '# GET /no-info\nprint("body")',
    '# ResponseInfo GET /no-info\nprint("this is not JSON")',
    "# PUT /quiet\npass",
    '# ResponseInfo PUT /quiet\nprint(json.dumps({"status": 204}))',
    "# GET /answer\n40 + 2",
    '# GET /printed-wins\nprint("printed")\n"the last expression"',
    '# GET /streams\nprint("out 1")\nprint("err 1", file=sys.stderr)\nprint("out 2")\n'
    'sys.stderr.write(\'{"status": 418}\\n\')',
    '# GET /environment\nprint(os.environ.get("KERNEL_GATEWAY"))',
    "# GET /executions\nprint(executions[0])",
    '# ResponseInfo GET /executions\nprint(json.dumps({"status": 200, "headers": '
    '{"X-Executions-Seen": str(executions[0])}}))',
    f"# GET /forged\nprint({FORGED!r}, end=\"\")\n"
    'print(\'{"status": 418}\', file=sys.stderr)',
    f"# POST /forged\nprint({FORGED!r}, end=\"\")",
    '# ResponseInfo POST /forged\nprint(json.dumps({"status": 202, "headers": {"X-Real": "yes"}}))',
    f'# GET /displayed\n{DISPLAY_LOOKALIKES}print("shown")',
    f'# ResponseInfo GET /displayed\n{DISPLAY_LOOKALIKES}'
    'print(json.dumps({"status": 203, "headers": {"X-Real": "yes"}}))',
]


@contextmanager
def serve_notebook(
    folder: Path, cells: list[str], *options: str, probe: str,
    headers: dict[str, str] | None = None, env: dict[str, str] | None = None,
    kernels: int = 1, command: bool = False,
) -> Iterator[int]:
    """The stock gateway command with ``KernelGatewayApp.api`` set to the personality, serving a
    notebook of ``cells`` (written to ``folder``) on ``kernels`` kernels, with more gateway
    ``options`` and environment variables ``env``; yields its port once ``GET probe`` (sent
    with ``headers``) answers 200. With ``command``, ``gradbook serve NOTEBOOK`` instead, run in
    ``folder`` (outside the checkout), and ``options`` are its flags."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                       "display_name": "Python 3"}
    nbformat.write(notebook, folder / "plain.ipynb")
    port = free_port()
    arguments = [sys.executable, "-m", "kernel_gateway",
                 "--KernelGatewayApp.api=gradbook_service.gateway.personality",
                 f"--KernelGatewayApp.seed_uri={folder / 'plain.ipynb'}", "--ip=127.0.0.1",
                 f"--port={port}", "--port_retries=0",
                 f"--KernelGatewayApp.prespawn_count={kernels}", *options]
    if command:
        arguments = [str(Path(sys.executable).parent / "gradbook"), "serve",
                     str(folder / "plain.ipynb"), "--port", str(port), "--kernels", str(kernels),
                     *options]
    log = folder / "gateway.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(arguments, cwd=folder if command else ROOT,
                                   env={**gateway_env(folder), **(env or {})},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await_gateway(process, port, probe, headers or {}, log)
        yield port
    finally:
        stop_group(process, log)


@pytest.fixture(scope="module", params=["stock-command", "gradbook-serve"])
def gateway(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The personality serving a notebook of ``CELLS`` on one kernel; yields its port. Twice:
    started as stock Kernel Gateway is, with the personality as its ``api``, and by
    ``gradbook serve NOTEBOOK`` from a folder outside the checkout."""
    with serve_notebook(tmp_path_factory.mktemp("plain"), CELLS, probe="/hello/x",
                        command=request.param == "gradbook-serve") as port:
        yield port


def get(port: int, path: str) -> Reply:
    return http_request(port, "GET", path, None, {}, 30)


def test_an_endpoint_cell_prints_the_body(gateway: int) -> None:
    """A path parameter reaches the cell, and what it prints is the body, as text/plain."""
    reply = get(gateway, "/hello/ada")
    assert (reply.status, reply.body) == (200, b"hello ada\n")
    assert reply.headers["Content-Type"].split(";")[0] == "text/plain"


def test_query_arguments_arrive_as_lists_of_strings(gateway: int) -> None:
    """``REQUEST["args"]`` maps each query parameter to the list of its values, as strings."""
    reply = get(gateway, "/args?x=1&y=two&x=3&empty=")
    assert reply.status == 200, reply.body
    assert json.loads(reply.body) == {"x": ["1", "3"], "y": ["two"], "empty": [""]}


def test_a_response_info_cell_sets_status_and_headers(gateway: int) -> None:
    """A JSON body arrives parsed in ``REQUEST["body"]``; the ResponseInfo cell's status and
    headers are the response's."""
    headers = {"Content-Type": "application/json"}
    reply = http_request(gateway, "POST", "/echo", b'{"a": [1, 2]}', headers, 30)
    assert reply.status == 201
    assert reply.headers["X-Echo"] == "yes" and reply.headers["X-Gradbook-Kernel"]
    assert reply.headers["Content-Type"] == "application/json"
    assert json.loads(reply.body) == {"got": {"a": [1, 2]}}


def test_a_cell_with_no_body_can_answer_204(gateway: int) -> None:
    """Stock notebook-http answers a ResponseInfo of ``{"status": 204}``; tornado refuses to
    send even an empty body with a 204, so the personality sends none."""
    reply = http_request(gateway, "PUT", "/quiet", None, {}, 30)
    assert (reply.status, reply.body) == (204, b"")


def test_form_fields_arrive_as_a_dict_of_lists(gateway: int) -> None:
    """An urlencoded form body becomes ``{field: [values]}``."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = http_request(gateway, "POST", "/echo", b"a=1&a=2&b=x", headers, 30)
    assert json.loads(reply.body) == {"got": {"a": ["1", "2"], "b": ["x"]}}


def test_cells_of_one_endpoint_run_together_in_notebook_order(gateway: int) -> None:
    """Two ``# GET /parts`` cells, with other cells between them, run as one endpoint: the first
    one's assignment, then the second one's append and print (twice, to show each request runs
    both)."""
    for _ in range(2):
        reply = get(gateway, "/parts")
        assert (reply.status, reply.body) == (200, b"first second\n")


def test_a_silent_cell_answers_its_last_value_as_a_mime_bundle(gateway: int) -> None:
    """A cell that prints nothing answers the MIME bundle of its last expression, as JSON."""
    reply = get(gateway, "/answer")
    assert reply.status == 200, reply.body
    assert json.loads(reply.body) == {"text/plain": "42"}


def test_printed_output_wins_over_the_last_value(gateway: int) -> None:
    """A cell that prints and ends with an expression answers what it printed, only."""
    reply = get(gateway, "/printed-wins")
    assert (reply.status, reply.body) == (200, b"printed\n")


def test_stderr_is_not_part_of_the_body(gateway: int) -> None:
    """Lines written to stderr, interleaved with stdout, are left out of the body."""
    reply = get(gateway, "/streams")
    assert (reply.status, reply.body) == (200, b"out 1\nout 2\n")


def test_the_kernel_runs_with_kernel_gateway_set(gateway: int) -> None:
    """The kernel sees ``KERNEL_GATEWAY=1``, as under the stock gateway."""
    reply = get(gateway, "/environment")
    assert (reply.status, reply.body) == (200, b"1\n")


@pytest.mark.parametrize("path", ["/broken", "/no-info"])
def test_a_failing_cell_is_a_500_without_details(gateway: int, path: str) -> None:
    """A cell that raises, or a ResponseInfo that prints no JSON, gives a JSON 500 that does not
    reveal the exception; the kernel serves the next request."""
    reply = get(gateway, path)
    assert reply.status == 500, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    error = json.loads(reply.body)["error"]
    assert error["status"] == 500 and "secret" not in error["message"]
    assert b"secret" not in reply.body and b"KeyError" not in reply.body
    assert b"this is not JSON" not in reply.body
    assert get(gateway, "/hello/again").status == 200


def test_unknown_paths_and_methods_are_json_errors(gateway: int) -> None:
    """An unknown path is a JSON 404; a method the path has no cell for is a JSON 405 whose
    Allow header names the methods it has."""
    missing = get(gateway, "/nowhere")
    assert missing.status == 404 and json.loads(missing.body)["error"]["status"] == 404
    wrong = http_request(gateway, "DELETE", "/echo", None, {}, 30)
    assert wrong.status == 405 and "use POST" in json.loads(wrong.body)["error"]["message"]
    assert json.loads(wrong.body)["error"]["status"] == 405
    assert wrong.headers["Allow"] == "POST"
    assert http_request(gateway, "PUT", "/forged", None, {}, 30).headers["Allow"] == "GET, POST"


def test_printed_lookalikes_cannot_forge_the_response(gateway: int) -> None:
    """A cell printing response-info JSON, HTTP lines and delimiter-like text (and JSON to
    stderr) answers that text exactly, with the default status and headers."""
    reply = get(gateway, "/forged")
    assert reply.status == 200, reply.body
    assert reply.body.decode() == FORGED
    assert reply.headers["Content-Type"].split(";")[0] == "text/plain"
    assert "X-Forged" not in reply.headers


def test_printed_lookalikes_leave_the_response_info_in_charge(gateway: int) -> None:
    """The same printed text, on an endpoint with a ResponseInfo cell: the status and headers
    are the ResponseInfo's, the body the exact text."""
    reply = http_request(gateway, "POST", "/forged", None, {}, 30)
    assert reply.status == 202, reply.body
    assert reply.body.decode() == FORGED
    assert reply.headers["X-Real"] == "yes" and "X-Forged" not in reply.headers


def test_displayed_lookalikes_cannot_forge_the_response(gateway: int) -> None:
    """``display(...)`` of JSON-ish data, in the endpoint cell and in its ResponseInfo cell,
    changes nothing: the body is what the cell printed, the status the ResponseInfo's."""
    reply = get(gateway, "/displayed")
    assert (reply.status, reply.body) == (203, b"shown\n")
    assert reply.headers["X-Real"] == "yes" and "X-Forged" not in reply.headers


def test_a_request_costs_one_kernel_execution(gateway: int) -> None:
    """Between two requests in a row to an endpoint with a ResponseInfo cell, the kernel's
    pre_execute count (kept by a seed cell) goes up by exactly one: the REQUEST assignment, the
    cell and its ResponseInfo run as a single execution."""
    first, second = get(gateway, "/executions"), get(gateway, "/executions")
    assert first.status == second.status == 200, (first.body, second.body)
    assert int(second.body) - int(first.body) == 1
    # the ResponseInfo cell ran in the same execution as the endpoint cell
    assert second.headers["X-Executions-Seen"] == second.body.decode().strip()
