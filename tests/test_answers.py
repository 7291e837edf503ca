"""What a cell can answer, against real gateways: what it displays, in the type ``Accept`` asks
for; what it prints, as Server-Sent Events while it runs; and errors that say why.

One gateway serves ``shown.ipynb`` (written here) and ``examples/answers.ipynb``; a second runs
with ``--debug`` and a short deadline; a stock Kernel Gateway (its own notebook-http) serves
``shown.ipynb`` too, so that a request that asks for no type is compared with what stock answers.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from conftest import (
    ROOT,
    Reply,
    await_queue,
    http_request,
    running_gateway,
    write_notebook,
)
from gradbook_service.gateway import accept
from gradbook_service.gateway.runner import choose
from nbclient import NotebookClient
from openapi_spec_validator import validate
from PIL import Image

pytestmark = pytest.mark.xdist_group("answers")

BIN = Path(sys.executable).parent
MAX_RESPONSE_BYTES = 200_000
SEED = ("import io, json, pathlib, time\n"
        "import matplotlib.pyplot as plt\n"
        "from IPython.display import HTML, JSON, SVG, Image, Markdown, display\n"
        "COUNT = -1")
FIGURE = ("args = json.loads(REQUEST)['args']\n"
          "w, h = float(args.get('w', ['4'])[0]), float(args.get('h', ['3'])[0])\n"
          "fig, ax = plt.subplots(figsize=(w, h))\n"
          "ax.plot([0, 1, 4, 9]);")
SVG_TEXT = ('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            '<rect width="10" height="10"/></svg>')
SHOWN = [
    SEED,
    ("markdown", "## A figure\n\nAnswers: `image/png`, `text/plain`"),
    "# GET /figure\n" + FIGURE,
    '# GET /table\ndisplay(HTML("<table><tr><td>1</td></tr></table>"))',
    '# GET /markdown\ndisplay(Markdown("**bold**"))',
    f"# GET /svg\ndisplay(SVG({SVG_TEXT!r}))",
    "# GET /jpeg\nfrom PIL import Image as Picture\nbuffer = io.BytesIO()\n"
    "Picture.new('RGB', (7, 5), 'red').save(buffer, 'JPEG')\n"
    "display(Image(data=buffer.getvalue(), format='jpeg'))",
    '# GET /json\ndisplay(JSON({"a": [1, 2]}))',
    "# GET /value\n6 * 7",
    # a display, the value, then the figure: the order Jupyter shows them in
    '# GET /mixed\ndisplay(Markdown("# first"))\nplt.plot([1, 2])\nHTML("<b>the value</b>")',
    '# GET /printed\nplt.plot([1, 2])\nprint("printed wins")',
    "# GET /nothing\nx = 1",
    '# GET /typed\ndisplay(HTML("<p>not this</p>"))\nplt.plot([3, 1])',
    '# ResponseInfo GET /typed\nprint(json.dumps({"headers": {"Content-Type": "image/png"}}))',
    "# GET /stream\nfor i in range(4):\n    print(f'line {i}', flush=True)\n    time.sleep(0.5)",
    '# ResponseInfo GET /stream\nprint(json.dumps({"status": 201, "headers": {"X-Lines": "4"}}))',
    "# GET /endless\nfor i in range(600):\n    COUNT = i\n    print(i, flush=True)\n"
    "    time.sleep(0.05)",
    "# GET /count\nprint(COUNT)",
    "# GET /carriage\nprint('a\\rb\\r\\nc')",
    '# GET /fails\nraise ValueError("the secret is " + "s3cr3t")',
    '# GET /stream-fails\nprint("before", flush=True)\nraise KeyError("x")',
    '# GET /big-html\ndisplay(HTML("<p>" + "x" * 300_000 + "</p>"))',
    "# GET /big-stream\nfor i in range(3000):\n    print('y' * 100)\ntime.sleep(30)",
    "# GET /hold\npathlib.Path('holding').write_text('')\n"
    "while not pathlib.Path('release').exists():\n    time.sleep(0.01)\nprint('released')",
]
DEBUGGED = ["import time",
            '# GET /fails\nsecret = "s3cr3t"\nraise ValueError("the secret is " + secret)',
            "# GET /forever\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.2)"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("answers")
    write_notebook(folder / "shown.ipynb", SHOWN)
    shutil.copy(ROOT / "examples" / "answers.ipynb", folder / "answers.ipynb")
    return folder


@pytest.fixture(scope="module")
def gateway(folder: Path) -> Iterator[tuple[int, Path]]:
    """shown.ipynb under /shown and the example under /answers, a kernel each."""
    command = [str(BIN / "gradbook"), "serve", "shown.ipynb", "answers.ipynb", "--kernels", "1",
               "--max-response-bytes", str(MAX_RESPONSE_BYTES), "--request-timeout", "40"]
    with running_gateway(command, folder) as (port, _, log):
        yield port, log


@pytest.fixture(scope="module")
def debugged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    folder = tmp_path_factory.mktemp("debugged")
    write_notebook(folder / "debugged.ipynb", DEBUGGED)
    command = [str(BIN / "gradbook"), "serve", "debugged.ipynb", "--kernels", "1", "--debug",
               "--request-timeout", "2"]
    with running_gateway(command, folder) as (port, _, log):
        yield port, log


@pytest.fixture(scope="module")
def stock(folder: Path) -> Iterator[int]:
    """Kernel Gateway's own notebook-http on shown.ipynb."""
    command = [str(BIN / "jupyter-kernelgateway"), "--KernelGatewayApp.api="
               "kernel_gateway.notebook_http", "--KernelGatewayApp.seed_uri=shown.ipynb",
               "--KernelGatewayApp.prespawn_count=1", "--KernelGatewayApp.ip=127.0.0.1"]
    with running_gateway(command, folder, probe="/value") as (port, _, _):
        yield port


def get(port: int, path: str, accept_header: str | None = None) -> Reply:
    headers = {} if accept_header is None else {"Accept": accept_header}
    return http_request(port, "GET", path, None, headers, 60)


def media(reply: Reply) -> str:
    return reply.headers.get("Content-Type", "").split(";")[0].strip()


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:40]
    with Image.open(io.BytesIO(data)) as picture:
        return picture.size


class Events:
    """A Server-Sent Events stream read as it arrives: (seconds since the request, kind, data)
    for each event."""

    def __init__(self, port: int, path: str, accept_header: str = accept.STREAM) -> None:
        self.started = time.monotonic()
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.connection.request("GET", path, headers={"Accept": accept_header})
        self.response = self.connection.getresponse()

    def __iter__(self) -> Iterator[tuple[float, str, str]]:
        kind, data = "message", []
        while line := self.response.readline():
            text = line.decode().rstrip("\n")
            if text == "":
                if data:
                    yield time.monotonic() - self.started, kind, "\n".join(data)
                kind, data = "message", []
            elif text.startswith("event: "):
                kind = text[len("event: "):]
            elif text.startswith("data: "):
                data.append(text[len("data: "):])

    def close(self) -> None:
        self.connection.close()


def read_all(port: int, path: str) -> list[tuple[float, str, str]]:
    stream = Events(port, path)
    try:
        assert stream.response.status == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        return list(stream)
    finally:
        stream.close()


# -- Accept, read --------------------------------------------------------------------------------

def test_accept_headers_are_read_leniently_and_only_a_type_counts_as_asking() -> None:
    assert accept.ranges(None) is None and accept.ranges("") is None
    assert accept.ranges("*/*") is None and accept.ranges("*/*;q=0.5") is None
    assert accept.ranges("json, nonsense") is None  # nothing readable: stock's answer
    assert accept.ranges("Image/PNG;q=0.5, text/*;level=1, */*;q=0.1") == [
        ["image/png", 0.5], ["text/*", 1.0], ["*/*", 0.1]]
    assert accept.ranges("image/png;q=2, text/html;q=0.x, */png") is None  # all malformed
    assert len(accept.ranges(",".join(["text/html"] * 1000))) == accept.MAX_RANGES
    assert accept.streams(accept.ranges("text/event-stream"))
    assert not accept.streams(accept.ranges("text/*"))
    assert not accept.streams(accept.ranges("text/event-stream;q=0.5, text/html"))


def test_the_best_type_is_the_highest_quality_then_the_most_specific_then_the_first() -> None:
    figure = {"text/plain": "<Figure>", "image/png": "iVBOR"}
    table = {"text/plain": "table", "text/html": "<table>", "text/markdown": "|a|"}
    outputs = [table, figure]
    assert choose(outputs, [["image/*", 1.0]]) == (1, "image/png")
    assert choose(outputs, [["text/*", 1.0]]) == (0, "text/html")  # the richer text
    assert choose(outputs, [["text/markdown", 1.0], ["image/png", 0.9]]) == (0, "text/markdown")
    assert choose(outputs, [["text/markdown", 0.5], ["image/png", 1.0]]) == (1, "image/png")
    assert choose(outputs, [["text/html", 1.0], ["*/*", 1.0]]) == (0, "text/html")
    assert choose(outputs, [["*/*", 1.0], ["text/html", 0]]) == (0, "text/markdown")
    assert choose([{"text/plain": "42"}], [["*/*", 1.0], ["text/plain", 0]]) is None
    assert choose(outputs, [["application/pdf", 1.0]]) is None


# -- displayed outputs, by Accept ----------------------------------------------------------------

@pytest.mark.parametrize(("path", "accept_header", "expected"), [
    ("/shown/table", "text/html", "text/html"),
    ("/shown/markdown", "text/markdown", "text/markdown"),
    ("/shown/svg", "image/svg+xml", "image/svg+xml"),
    ("/shown/jpeg", "image/jpeg", "image/jpeg"),
    ("/shown/json", "application/json", "application/json"),
    ("/shown/value", "text/plain", "text/plain"),
    ("/shown/figure", "image/png", "image/png"),
])
def test_each_type_a_cell_displays_is_answered_as_itself(gateway: tuple[int, Path], path: str,
                                                         accept_header: str,
                                                         expected: str) -> None:
    reply = get(gateway[0], path, accept_header)
    assert reply.status == 200, reply.body[:300]
    assert media(reply) == expected
    assert "Accept" in reply.headers.get("Vary", "")
    body = reply.body
    if expected == "text/html":
        assert body == b"<table><tr><td>1</td></tr></table>"
        assert "sandbox" in reply.headers["Content-Security-Policy"]
    elif expected == "text/markdown":
        assert body == b"**bold**"
    elif expected == "image/svg+xml":
        assert b"<rect" in body and body.rstrip().endswith(b"</svg>")
    elif expected == "image/jpeg":
        with Image.open(io.BytesIO(body)) as picture:
            assert picture.format == "JPEG" and picture.size == (7, 5)
    elif expected == "application/json":
        assert json.loads(body) == {"a": [1, 2]}
    elif expected == "text/plain":
        assert body == b"42"
    else:
        assert png_size(body)[0] > 100


def test_a_drawn_figure_is_the_png_jupyter_shows(gateway: tuple[int, Path],
                                                 tmp_path: Path) -> None:
    """No plt.show(): the figure a cell draws is its answer, the size Jupyter's inline display
    gives the same code (run here by nbclient, as a notebook)."""
    request = json.dumps({"args": {"w": ["5"], "h": ["2"]}})
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(SEED), nbformat.v4.new_code_cell(f"REQUEST = {request!r}"),
        nbformat.v4.new_code_cell(FIGURE)])
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [output for output in notebook.cells[2].outputs
             if output.get("output_type") == "display_data"]
    assert len(shown) == 1
    expected = png_size(base64.b64decode(shown[0]["data"]["image/png"]))
    reply = get(gateway[0], "/shown/figure?w=5&h=2", "image/png")
    assert reply.status == 200 and media(reply) == "image/png"
    assert png_size(reply.body) == expected
    wider = get(gateway[0], "/shown/figure?w=8&h=2", "image/*")
    assert png_size(wider.body)[0] > expected[0]  # the figure of this request, not the last


@pytest.mark.parametrize(("accept_header", "expected", "words"), [
    ("text/html", "text/html", b"the value"),  # the value's HTML
    ("image/*", "image/png", b"PNG"),  # the figure, drawn after the cell
    ("text/*", "text/markdown", b"# first"),  # equal: the first output, its richer text
    ("text/markdown;q=0.2, image/png", "image/png", b"PNG"),
    ("image/png;q=0.5, text/html", "text/html", b"the value"),
    ("text/html, */*;q=0.1", "text/html", b"the value"),
    ("application/pdf, image/gif;q=0.5, */*;q=0.01", "text/markdown", b"# first"),
])
def test_quality_values_and_wildcards_choose_among_outputs(gateway: tuple[int, Path],
                                                           accept_header: str, expected: str,
                                                           words: bytes) -> None:
    reply = get(gateway[0], "/shown/mixed", accept_header)
    assert reply.status == 200 and media(reply) == expected
    assert words in reply.body


def test_a_type_the_cell_cannot_give_is_406_naming_those_it_can(
        gateway: tuple[int, Path]) -> None:
    reply = get(gateway[0], "/shown/figure", "application/pdf, text/html")
    assert reply.status == 406 and media(reply) == "application/json"
    error = reply.json()["error"]
    assert error["status"] == 406 and error["available"] == ["text/plain", "image/png"]
    assert "image/png" in error["message"]
    assert get(gateway[0], "/shown/value", "image/png;q=1, text/plain;q=0").status == 406


def test_printed_output_and_no_output_are_answered_whatever_the_accept(
        gateway: tuple[int, Path]) -> None:
    for accept_header in ("image/png", "application/json", "text/html"):
        printed = get(gateway[0], "/shown/printed", accept_header)
        assert (printed.status, printed.body) == (200, b"printed wins\n")
        nothing = get(gateway[0], "/shown/nothing", accept_header)
        assert (nothing.status, nothing.body) == (200, b"")


def test_the_type_response_info_sets_wins(gateway: tuple[int, Path]) -> None:
    for accept_header in (None, "*/*", "text/html"):
        reply = get(gateway[0], "/shown/typed", accept_header)
        assert reply.status == 200 and reply.headers["Content-Type"] == "image/png"
        png_size(reply.body)


def test_what_is_displayed_is_bounded_like_any_answer(gateway: tuple[int, Path]) -> None:
    reply = get(gateway[0], "/shown/big-html", "text/html")
    assert reply.status == 500 and len(reply.body) < 1000
    assert re.fullmatch(r"[0-9a-f]{8}", reply.json()["error"]["id"])
    log = gateway[1].read_text()
    assert f"(error {reply.json()['error']['id']})" in log and "GRADBOOK_MAX_RESPONSE_BYTES" in log


@pytest.mark.parametrize("path", ["/value", "/figure", "/table", "/mixed", "/nothing",
                                  "/printed", "/json"])
@pytest.mark.parametrize("accept_header", [None, "*/*"])
def test_a_request_asking_for_no_type_gets_what_stock_answers(gateway: tuple[int, Path],
                                                              stock: int, path: str,
                                                              accept_header: str | None) -> None:
    ours, theirs = get(gateway[0], "/shown" + path, accept_header), get(stock, path,
                                                                        accept_header)
    assert (ours.status, media(ours)) == (theirs.status, media(theirs)) == (200, "text/plain")
    if theirs.body.startswith(b"{"):  # a value's bundle: the same, up to its object's address
        def same(body: bytes) -> object:
            return re.sub(r" at 0x[0-9a-f]+", "", body.decode())
        assert json.loads(same(ours.body)) == json.loads(same(theirs.body))
    else:
        assert ours.body == theirs.body


# -- streams -----------------------------------------------------------------------------------

def test_a_stream_sends_each_line_as_it_is_printed_then_the_status(
        gateway: tuple[int, Path]) -> None:
    events = read_all(gateway[0], "/shown/stream")
    assert [data for _, kind, data in events if kind == "message"] == [
        "line 0", "line 1", "line 2", "line 3"]
    first, end = events[0][0], events[-1][0]
    # the cell sleeps 2 s after its first line: that line came long before the end
    assert end - first > 1.5, events
    assert events[-1][1] == "end"
    assert json.loads(events[-1][2]) == {"status": 201, "headers": {"X-Lines": "4"}}


def test_a_carriage_return_cuts_a_line_into_events(gateway: tuple[int, Path]) -> None:
    events = read_all(gateway[0], "/shown/carriage")
    assert [data for _, kind, data in events if kind == "message"] == ["a", "b", "c"]


def test_a_cell_that_raises_ends_its_stream_with_an_error_event(
        gateway: tuple[int, Path]) -> None:
    events = read_all(gateway[0], "/shown/stream-fails")
    assert events[0][1:] == ("message", "before")
    assert events[-1][1] == "error"
    error = json.loads(events[-1][2])["error"]
    assert error["status"] == 500 and re.fullmatch(r"[0-9a-f]{8}", error["id"])
    assert "exception" not in error


def test_a_client_that_closes_its_stream_interrupts_the_cell(gateway: tuple[int, Path]) -> None:
    stream = Events(gateway[0], "/shown/endless")
    for _, kind, data in stream:
        if kind == "message" and int(data) >= 3:
            break
    stream.close()
    # the notebook's only kernel: /count runs once /endless has stopped, which takes 30 s
    # unless the close interrupted it
    first = int(get(gateway[0], "/shown/count").body)
    time.sleep(0.5)
    assert int(get(gateway[0], "/shown/count").body) == first < 599
    assert "left; interrupting it" in gateway[1].read_text()


def test_a_stream_is_bounded_like_any_answer(gateway: tuple[int, Path]) -> None:
    started = time.monotonic()
    events = read_all(gateway[0], "/shown/big-stream")
    assert events[-1][1] == "error" and json.loads(events[-1][2])["error"]["status"] == 500
    sent = sum(len(data) + 8 for _, kind, data in events if kind == "message")
    assert sent <= MAX_RESPONSE_BYTES
    assert time.monotonic() - started < 25  # interrupted, not waited out (the cell sleeps 30 s)


def test_a_stream_past_its_deadline_ends_with_504(debugged: tuple[int, Path]) -> None:
    events = read_all(debugged[0], "/forever")
    assert events[0][1:] == ("message", "tick")
    assert events[-1][1] == "error"
    assert json.loads(events[-1][2])["error"]["status"] == 504


def test_a_batch_mixing_streamed_negotiated_and_plain_requests_answers_each(
        gateway: tuple[int, Path], folder: Path) -> None:
    """While the notebook's only kernel holds /hold, four requests queue; they run in one
    batch, and each gets its own kind of answer."""
    port, log = gateway
    for name in ("holding", "release"):
        (folder / name).unlink(missing_ok=True)
    held = threading.Thread(target=get, args=(port, "/shown/hold"))
    held.start()
    deadline = time.monotonic() + 30
    while not (folder / "holding").exists():
        assert time.monotonic() < deadline, "/hold did not start"
        time.sleep(0.02)
    results: dict[str, object] = {}

    def run(name: str, call: object) -> None:
        results[name] = call()  # type: ignore[operator]

    calls = {"stream": lambda: read_all(port, "/shown/stream"),
             "png": lambda: get(port, "/shown/figure", "image/png"),
             "html": lambda: get(port, "/shown/table", "text/html"),
             "plain": lambda: get(port, "/shown/value")}
    threads = []
    for name, call in calls.items():
        threads.append(threading.Thread(target=run, args=(name, call)))
        threads[-1].start()
        time.sleep(0.3)  # queued in this order
    await_queue(port, "shown", 4)
    (folder / "release").write_text("")
    for thread in [held, *threads]:
        thread.join(60)
    events = results["stream"]
    assert [data for _, kind, data in events if kind == "message"] == [  # type: ignore[union-attr]
        "line 0", "line 1", "line 2", "line 3"]
    png, html, plain = results["png"], results["html"], results["plain"]
    assert media(png) == "image/png" and png_size(png.body)  # type: ignore[union-attr,arg-type]
    assert html.body == b"<table><tr><td>1</td></tr></table>"  # type: ignore[union-attr]
    assert plain.body == b'{"text/plain": "42"}'  # type: ignore[union-attr]

    def batched() -> list[tuple[str, str]]:  # the access log is written once the answer is
        return re.findall(r"GET /shown/(figure|table|value) 200 .* batch=(\d+)", log.read_text())

    deadline = time.monotonic() + 30
    while not {("value", "4"), ("table", "4"), ("figure", "4")} <= set(batched()):
        assert time.monotonic() < deadline, batched()
        time.sleep(0.05)


# -- errors --------------------------------------------------------------------------------------

def test_a_failing_cell_answers_an_error_id_that_the_log_names(
        gateway: tuple[int, Path]) -> None:
    reply = get(gateway[0], "/shown/fails")
    assert reply.status == 500
    error = reply.json()["error"]
    assert re.fullmatch(r"[0-9a-f]{8}", error["id"]) and error["id"] in error["message"]
    assert "exception" not in error and b"s3cr3t" not in reply.body
    line = next(line for line in gateway[1].read_text().split("\n[")
                if f"(error {error['id']})" in line)
    assert "ValueError: the secret is s3cr3t" in line and '"<GET /fails>", line 2' in line


def test_with_debug_a_failing_cell_answers_its_exception_and_traceback(
        debugged: tuple[int, Path]) -> None:
    reply = get(debugged[0], "/fails")
    assert reply.status == 500
    error = reply.json()["error"]
    assert error["exception"]["name"] == "ValueError"
    assert error["exception"]["message"] == "the secret is s3cr3t"
    traceback = error["exception"]["traceback"]
    assert traceback.startswith("Traceback") and 'File "<GET /fails>", line 3' in traceback
    assert 'raise ValueError("the secret is " + secret)' in traceback
    assert "runner" not in traceback  # the cell's frames only
    assert error["id"] in debugged[1].read_text()


# -- the example and the description -------------------------------------------------------------

def test_the_example_answers_a_figure_a_table_and_a_stream(gateway: tuple[int, Path]) -> None:
    port = gateway[0]
    wave = get(port, "/answers/wave?cycles=3", "image/*")
    assert wave.status == 200 and png_size(wave.body)[0] > 300
    table = get(port, "/answers/squares?n=3", "text/html")
    assert media(table) == "text/html" and b"<td>3</td><td>9</td>" in table.body
    markdown = get(port, "/answers/squares?n=3", "text/markdown")
    assert b"| 3 | 9 |" in markdown.body
    assert get(port, "/answers/squares?n=2", "text/plain").body == b"1 1\n2 4"
    events = read_all(port, "/answers/countdown?from=2")
    assert [data for _, kind, data in events if kind == "message"] == ["2…", "1…", "lift-off"]
    assert events[-1][1] == "end"


def test_the_description_lists_the_types_a_notebook_states(gateway: tuple[int, Path]) -> None:
    spec = get(gateway[0], "/openapi.json").json()
    validate(spec)
    responses = spec["paths"]["/answers/wave"]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["image/png", "text/plain"]
    assert "406" in responses
    assert list(spec["paths"]["/answers/countdown"]["get"]["responses"]["200"]["content"]) == [
        "text/event-stream", "text/plain"]
    assert list(spec["paths"]["/shown/figure"]["get"]["responses"]["200"]["content"]) == [
        "image/png", "text/plain"]
    assert list(spec["paths"]["/shown/value"]["get"]["responses"]["200"]["content"]) == ["*/*"]
