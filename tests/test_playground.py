"""The playground page (``GET /``, ``service/app/playground/``) in a real browser.

Selenium drives Debian's headless chromium through ``/usr/bin/chromedriver`` (no driver
download) against a live service started with a token, so every request the page makes must
carry it. The page is found through its ``data-testid`` hooks. Without the two Debian packages
``chromium`` and ``chromium-driver`` the module is skipped; ``.ci/run`` installs them.

Covered: the page loads with no errors in the browser's console; pointer strokes (mouse, touch,
pen) on the canvas give an 8×8 input and a prediction; 20 held-out digits of the data set, drawn
onto the canvas at canvas scale, are classified as labelled (at least 18: the page's
preprocessing must match the data set's); models are created, reset and deleted from the page;
training from the page grows the loss curve while it runs and shows the committed version, and
Cancel stops a running job (``POST /jobs/{id}/cancel``) with nothing committed; a form's bad
value (Train with lr = -1 or a data set the model does not take, Create with sizes "3, x", a
small model's input "zero") shows the service's own message beside the field it names, in the
same form and on the screen where the user is, the field marked (aria-invalid, aria-describedby
naming the message), not in the banner at the top; editing the field, or the next request that
works, takes mark and message away; the token bar shows when a token is kept or the service
answers 401, and stays hidden for a service without a token; without the token the page says
so, and with it everything works; labels and keyboard; at 1400, 1024 and 390 px wide no sideways
scrolling, the prediction and "100.0 %" on one line, and no empty stretch beside or under a card
(Digits and Small models stacked or of even height); links to the API's page ``docs`` (Swagger
UI, relative) and ``openapi.json``, and a pointer to the notebooks. Screenshots go to
``build/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, Service

pytestmark = pytest.mark.xdist_group("gateway")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not all(os.access(path, os.X_OK) for path in (CHROMIUM, CHROMEDRIVER)):
    pytest.skip(
        "the playground's browser tests need Debian's packages chromium and chromium-driver "
        f"({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 (only once chromium is known to be there)
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from gradbook.datasets import load  # noqa: E402

TOKEN = "playground-secret"
TOKEN_KEY = "gradbook-token"  # the page's sessionStorage key
WAIT = 20.0  # seconds for anything the page does after one request or two
ENDED = ("succeeded", "failed", "cancelled")  # a training job's last states
SCREENSHOTS = ROOT / "build"
HELD_OUT = 20  # digits drawn onto the canvas ...
AT_LEAST = 18  # ... how many of them must be classified as labelled ...
EXACTLY = 12  # ... and how many must come back as the very same 8×8 input (15 do)

# A test's drawing: each held-out image as 8×8 blocks of canvas/8 pixels, ink alpha = value/16,
# then the 'input' event that the page's own pointer handling sends after each change.
DRAW_DIGIT = """
const [values] = arguments;
const canvas = document.querySelector('[data-testid="digit-canvas"]');
const ctx = canvas.getContext('2d');
const cell = canvas.width / 8;
ctx.clearRect(0, 0, canvas.width, canvas.height);
values.forEach((value, k) => {
  ctx.fillStyle = `rgba(0, 0, 0, ${value / 16})`;
  ctx.fillRect((k % 8) * cell, Math.floor(k / 8) * cell, cell, cell);
});
canvas.dispatchEvent(new Event('input'));
"""

# The prediction shown is for the drawing as it is now (the page numbers the drawing's changes).
PREDICTION_CURRENT = """
const canvas = document.querySelector('[data-testid="digit-canvas"]');
const prediction = document.querySelector('[data-testid="prediction"]');
return canvas.dataset.revision === prediction.dataset.revision;
"""

# Every (state, number of points) the loss chart goes through, recorded as it changes.
WATCH_CHART = """
const chart = document.querySelector('[data-testid="loss-chart"]');
window.chartSeen = [];
const record = () => window.chartSeen.push([chart.dataset.state, Number(chart.dataset.points)]);
new MutationObserver(record).observe(chart, {attributeFilter: ['data-state', 'data-points']});
"""

# Strokes as offsets in CSS pixels from the canvas's centre (it is 280 px wide on a desktop).
SEVEN = [[(-60, -100), (60, -100), (-10, 100)]]
ONE = [[(0, -100), (0, 100)]]
FOUR = [[(-20, -100), (-60, 30), (60, 30)], [(30, -40), (30, 100)]]


# -- the browser and the page ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(start_service: Callable[..., Service]) -> Service:
    """The service under test, with a token."""
    return start_service(token=TOKEN)


@pytest.fixture(scope="module")
def browser(app: Service) -> Iterator[WebDriver]:
    """Headless chromium, the token already in this tab's sessionStorage."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1000", "--lang=en"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(str(CHROMEDRIVER)))
    try:
        driver.get(url(app))
        driver.execute_script("sessionStorage.setItem(arguments[0], arguments[1])",
                              TOKEN_KEY, TOKEN)
        wait(driver, lambda d: "401" in error_text(d), "the first load (no token yet) to settle")
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver, app: Service) -> Iterator[WebDriver]:
    """The page freshly loaded with the token, its models listed; afterwards, no script errors."""
    browser.set_window_size(1280, 1000)
    browser.get_log("browser")  # what earlier tests logged
    browser.get(url(app))
    wait_for_models(browser, {"xor", "digits"})
    yield browser
    errors = [e for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and e.get("source") == "javascript"]
    assert not errors, f"script errors in the browser: {errors}"


def url(app: Service) -> str:
    return f"http://127.0.0.1:{app.port}/"


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str,
         timeout: float = WAIT, details: Callable[[], str] | None = None) -> Any:
    """``condition``'s first truthy value; fails naming ``what``, the page's error box and
    ``details()``."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        shown = error_text(driver) if error_box(driver).is_displayed() else "(no error shown)"
        more = f"; {details()}" if details else ""
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                             f"the page's error box: {shown}{more}") from None


def by_testid(driver: WebDriver, name: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{name}"]')


def error_box(driver: WebDriver) -> WebElement:
    return by_testid(driver, "error")


def error_text(driver: WebDriver) -> str:
    return error_box(driver).get_attribute("textContent").strip()


LISTED = """
const rows = document.querySelectorAll('[data-testid="model-list"] tr[data-model]');
return Object.fromEntries([...rows].map((row) =>
  [row.dataset.model, Number(row.querySelector('td.version').textContent)]));
"""


def listed(driver: WebDriver) -> dict[str, int]:
    """The model list as shown: name → version (read at once: the list is redrawn often)."""
    return driver.execute_script(LISTED)


def wait_for_models(driver: WebDriver, names: set[str]) -> dict[str, int]:
    return wait(driver, lambda d: (models := listed(d)).keys() >= names and models,
                f"the model list to show {sorted(names)}")


def service_error(app: Service, method: str, path: str, body: Any) -> str:
    """What the service itself answers to a bad request: its error message."""
    reply = app.request(method, path, body)
    assert reply.status >= 400, f"{method} {path} {body} succeeded: {reply.body!r:.200}"
    return reply.json()["error"]["message"]


def fill(driver: WebDriver, css: str, text: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, css)
    field.clear()
    field.send_keys(text)


# -- a form's error beside its field -------------------------------------------------------------

FIELD_ERRORS = '[data-testid="field-error"]'

# The message a field's aria-describedby names, with where it and the field are on the screen
# (CSS pixels, relative to the viewport), or null when the field is not marked.
FIELD_ERROR = """
const field = document.querySelector(arguments[0]);
const ids = (field.getAttribute('aria-describedby') || '').split(/\\s+/).filter(Boolean);
const message = ids.map((id) => document.getElementById(id))
  .find((el) => el && el.dataset.testid === 'field-error');
if (!message) return null;
const box = (el) => { const r = el.getBoundingClientRect();
                      return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
return {text: message.textContent, invalid: field.getAttribute('aria-invalid'),
        sameForm: Boolean(field.form) && field.form.contains(message),
        field: box(field), message: box(message), visible: message.checkVisibility(),
        viewport: innerHeight, scrolled: scrollY};
"""


def field_error(driver: WebDriver, css: str) -> dict[str, Any] | None:
    """The message beside the field ``css`` (see FIELD_ERROR), or None."""
    return driver.execute_script(FIELD_ERROR, css)


def wait_for_field_error(driver: WebDriver, css: str, said: str) -> dict[str, Any]:
    """Once the service's message ``said`` is shown beside the field ``css``: that message.
    The field is marked invalid and described by it, and the message is in the same form,
    close under or beside the field, and on the screen as it is (not scrolled to the top)."""
    def messages() -> str:
        shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, FIELD_ERRORS)]
        return f"messages shown: {shown}"

    shown = wait(driver, lambda d: (e := field_error(d, css)) and said in e["text"] and e,
                 f"the service's message {said!r} beside {css}", details=messages)
    assert shown["invalid"] == "true", shown
    assert shown["sameForm"] and shown["visible"], shown
    field, message = shown["field"], shown["message"]
    height = field["bottom"] - field["top"]
    # Under the field's row of the form (or beside it): no further than about two fields away.
    assert -height <= message["top"] - field["bottom"] <= 2.5 * height, shown
    assert 0 <= message["top"] and message["bottom"] <= shown["viewport"], (
        f"the message is off the screen: {shown}")
    assert not error_box(driver).is_displayed(), (
        f"a form's error went to the banner at the top: {error_text(driver)}")
    return shown


# -- the digits canvas ----------------------------------------------------------------------------


def stroke(driver: WebDriver, canvas: WebElement, strokes: list[list[tuple[int, int]]],
           kind: str) -> None:
    """Draw ``strokes`` with a pointer of ``kind`` (mouse, touch or pen)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    for points in strokes:
        builder = ActionBuilder(driver, mouse=PointerInput(kind, kind), duration=10)
        builder.pointer_action.move_to(canvas, *points[0]).pointer_down()
        for point in points[1:]:
            builder.pointer_action.move_to(canvas, *point)
        builder.pointer_action.pointer_up()
        builder.perform()


def current_prediction(driver: WebDriver) -> tuple[int | None, list[int], list[float]]:
    """Once the page has classified the drawing as it is now: the class shown (None when the
    canvas is blank), the 8×8 input shown and the ten probabilities of the bar chart."""
    wait(driver, lambda d: d.execute_script(PREDICTION_CURRENT), "the drawing's prediction")
    shown = by_testid(driver, "prediction").get_attribute("data-class")
    values = by_testid(driver, "digit-input").get_attribute("data-values")
    bars = by_testid(driver, "probabilities").find_elements(By.CSS_SELECTOR, "li")
    return (int(shown) if shown else None,
            [int(v) for v in values.split(",")] if values else [],
            [float(bar.get_attribute("data-probability")) for bar in bars])


def test_page_loads_without_console_errors(page: WebDriver, app: Service) -> None:
    reply = app.request("GET", "/", token="")  # the page itself needs no token
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
    assert len(reply.body) < 300_000, f"the page is {len(reply.body)} bytes"
    wait(page, lambda d: d.execute_script("return document.readyState") == "complete", "load")
    logged = [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not logged, f"the browser's console has errors: {logged}"
    assert not error_box(page).is_displayed(), error_text(page)
    models = {m["name"]: m["version"] for m in app.get("/models").json()["models"]}
    assert listed(page) == models


def test_strokes_give_an_input_and_a_prediction(page: WebDriver) -> None:
    canvas = by_testid(page, "digit-canvas")
    for kind, strokes in (("mouse", SEVEN), ("touch", ONE), ("pen", FOUR)):
        page.find_element(By.ID, "digit-clear").click()
        stroke(page, canvas, strokes, kind)
        shown, values, probabilities = current_prediction(page)
        assert len(values) == 64 and all(0 <= v <= 16 for v in values), values
        assert sum(values) >= 32, f"{kind}: the 8×8 input shows no stroke: {values}"
        assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-6, probabilities
        assert shown == int(np.argmax(probabilities)), (shown, probabilities)
        assert by_testid(page, "prediction").text == str(shown)
    page.find_element(By.ID, "digit-clear").click()
    shown, values, _ = current_prediction(page)
    assert shown is None and values == [], "'Clear' left a drawing behind"


def test_held_out_digits_are_classified_as_labelled(page: WebDriver) -> None:
    """Each held-out image drawn as blocks of canvas/8 pixels, ink value/16: the page's
    preprocessing (bounding box, scaled and centred, 4×4-block coverage) gives back the input,
    exactly when the image's bounding box is centred to the block (the data set centres its
    32×32 bitmaps to the pixel, which blocks of grey no longer show), else shifted by half a
    block; and the classes follow."""
    data = load("digits")
    wrong, reproduced = [], 0
    for k in range(HELD_OUT):
        image = np.rint(data.X_test[k] * 16).astype(int).tolist()
        label = int(data.Y_test[k])
        page.execute_script(DRAW_DIGIT, image)
        shown, values, _ = current_prediction(page)
        reproduced += values == image
        if shown != label:
            wrong.append(f"held-out digit {k}: label {label}, page says {shown}")
    summary = (f"{HELD_OUT - len(wrong)} of {HELD_OUT} classified as labelled, {reproduced} "
               "8×8 inputs reproduced exactly; " + "; ".join(wrong))
    assert HELD_OUT - len(wrong) >= AT_LEAST, summary
    assert reproduced >= EXACTLY, summary


# -- models, training, errors ---------------------------------------------------------------------


def confirm(driver: WebDriver, answer: bool) -> None:
    dialog = wait(driver, lambda d: (box := d.find_element(By.ID, "confirm")).is_displayed()
                  and box, "the confirmation dialog")
    dialog.find_element(By.ID, "confirm-ok" if answer else "confirm-cancel").click()
    wait(driver, lambda d: not dialog.is_displayed(), "the dialog to close")


def row_button(driver: WebDriver, name: str, label: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'button[aria-label="{label} model {name}"]')


def test_models_are_created_reset_and_deleted(page: WebDriver, app: Service) -> None:
    page.find_element(By.CSS_SELECTOR, "#create summary").click()
    fill(page, "#create-form [name=name]", "made-here")
    fill(page, "#create-form [name=sizes]", "3, four, 1")
    page.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    said = service_error(app, "POST", "/models", {"name": "made-here", "sizes": [3, "four", 1],
                         "activation": "sigmoid", "loss": "half_sse", "bias": False, "seed": 0})
    wait_for_field_error(page, "#create-form [name=sizes]", said)

    fill(page, "#create-form [name=sizes]", "3, 5, 1")  # the page keeps working
    page.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    wait(page, lambda d: "made-here" in listed(d), "the new model in the list")
    made = app.get("/models/made-here").json()
    wait(page, lambda d: listed(d).get("made-here") == made["version"], "its version listed")
    assert not error_box(page).is_displayed(), "the error outlived a request that worked"
    assert not page.find_elements(By.CSS_SELECTOR, FIELD_ERRORS), "a message outlived its cause"
    assert made["sizes"] == [3, 5, 1]

    row_button(page, "made-here", "Reset").click()
    confirm(page, True)
    after = made["version"] + 1
    wait(page, lambda d: listed(d).get("made-here") == after, "the next version after the reset")
    assert app.get("/models/made-here").json()["version"] == after

    row_button(page, "made-here", "Delete").click()
    confirm(page, False)  # cancelled: nothing happens
    assert "made-here" in listed(page) and app.get("/models/made-here").status == 200
    row_button(page, "made-here", "Delete").click()
    confirm(page, True)
    wait(page, lambda d: "made-here" not in listed(d), "the model to leave the list")
    assert app.get("/models/made-here", check=False).status == 404


def test_training_from_the_page(page: WebDriver, app: Service) -> None:
    epochs = 60
    first = app.post("/models", {"name": "trainee", "sizes": [64, 24, 10], "activation": "tanh",
                                 "loss": "cross_entropy", "bias": True}).json()["version"]
    page.refresh()
    wait_for_models(page, {"trainee"})
    Select(page.find_element(By.ID, "train-model")).select_by_value("trainee")
    wait(page, lambda d: by_testid(d, "version").text == str(first), "its version shown")
    Select(page.find_element(By.ID, "train-data")).select_by_value("digits")

    fill(page, "#train-epochs", "20000")  # a bad value: the service's own words are shown
    by_testid(page, "train-button").click()
    said = service_error(app, "POST", "/models/trainee/train",
                         {"data": "digits", "epochs": 20000, "wait": False})
    wait_for_field_error(page, "#train-epochs", said)

    fill(page, "#train-epochs", str(epochs))
    fill(page, "#train-lr", "0.01")
    fill(page, "#train-batch", "1")  # a few seconds of epochs, reported every quarter second
    page.execute_script(WATCH_CHART)
    by_testid(page, "train-button").click()
    chart = by_testid(page, "loss-chart")

    def progress() -> str:
        jobs = app.get("/jobs").json()["jobs"]
        return (f"the chart went through {page.execute_script('return window.chartSeen')}; the "
                f"page says {page.find_element(By.ID, 'train-status').text!r}; the service's "
                f"jobs: {jobs}")

    wait(page, lambda d: chart.get_attribute("data-state") in ENDED, "the job to end",
         timeout=120, details=progress)
    assert chart.get_attribute("data-state") == "succeeded", f"{error_text(page)}; {progress()}"
    assert int(chart.get_attribute("data-points")) == epochs, progress()
    seen = page.execute_script("return window.chartSeen")
    # The curve grew while the job ran: points were drawn before the last epoch.
    assert any(state == "running" and 0 < points < epochs for state, points in seen), progress()
    wait(page, lambda d: by_testid(d, "version").text == str(first + 1), "the next version shown")
    assert not error_box(page).is_displayed(), error_text(page)
    details = app.get("/models/trainee").json()
    assert details["version"] == first + 1 and details["training"]["epochs"] == epochs
    wait(page, lambda d: listed(d).get("trainee") == first + 1, "the list to show it")
    showcase(page)


def test_training_is_cancelled_from_the_page(page: WebDriver, app: Service) -> None:
    version = app.post("/models", {"name": "long", "sizes": [64, 32, 10], "activation": "tanh",
                                   "loss": "cross_entropy"}).json()["version"]
    page.refresh()
    wait_for_models(page, {"long"})
    Select(page.find_element(By.ID, "train-model")).select_by_value("long")
    Select(page.find_element(By.ID, "train-data")).select_by_value("digits")
    # About half a minute of epochs: far longer than the test waits, and below the minute above
    # which the service refuses a run.
    fill(page, "#train-epochs", "600")
    fill(page, "#train-lr", "0.01")
    fill(page, "#train-batch", "1")
    by_testid(page, "train-button").click()
    chart = by_testid(page, "loss-chart")

    def said() -> str:
        messages = [e.text for e in page.find_elements(By.CSS_SELECTOR, FIELD_ERRORS)]
        return f"{page.find_element(By.ID, 'train-status').text!r}; messages {messages}"

    wait(page, lambda d: chart.get_attribute("data-state") == "running"
         and int(chart.get_attribute("data-points")) >= 1, "the job to run its first epoch",
         timeout=60, details=said)
    job = chart.get_attribute("data-job")
    try:
        page.find_element(By.ID, "train-cancel").click()
        wait(page, lambda d: chart.get_attribute("data-state") in ENDED, "the job to end",
             timeout=60, details=said)
        assert chart.get_attribute("data-state") == "cancelled"
        status = page.find_element(By.ID, "train-status").text
        assert "cancelled" in status and "nothing committed" in status, status
        assert not page.find_elements(By.CSS_SELECTOR, FIELD_ERRORS)
        assert not error_box(page).is_displayed(), error_text(page)
        assert app.get(f"/jobs/{job}").json()["state"] == "cancelled"
        assert app.get("/models/long").json()["version"] == version, "a cancelled job committed"
        wait(page, lambda d: not by_testid(d, "train-button").get_attribute("disabled"),
             "training to be possible again")
    finally:  # never leave the kernel busy with it, whichever way cancelling works
        if app.get(f"/jobs/{job}").json()["state"] in ("queued", "running"):
            app.post(f"/jobs/{job}/cancel", check=False)
            app.delete(f"/jobs/{job}", check=False)


def showcase(driver: WebDriver) -> None:
    """Save ``build/playground.png``: a trained curve, a drawn digit and xor's gradients."""
    digit = np.rint(load("digits").X_test[0] * 16).astype(int).tolist()
    driver.execute_script(DRAW_DIGIT, digit)
    current_prediction(driver)
    driver.find_element(By.CSS_SELECTOR, "#gradients-form button[type=submit]").click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#gradients-maps figure"),
         "the gradients")
    screenshot(driver, 1400, "playground.png")


def screenshot(driver: WebDriver, width: int, name: str) -> None:
    """The whole page at ``width`` CSS pixels, in ``build/name``."""
    driver.set_window_size(width, 1000)
    height, chrome = driver.execute_script("return [document.documentElement.scrollHeight, "
                                           "outerHeight - innerHeight]")
    driver.set_window_size(width, height + chrome)
    driver.execute_script("window.scrollTo(0, 0)")
    SCREENSHOTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / name))


def test_small_model_and_its_gradients(page: WebDriver, app: Service) -> None:
    outputs = {}
    for x in ([1, 0, 1], [1, 1, 1]):
        for k, value in enumerate(x, 1):
            fill(page, f"#small-inputs [name=x{k}]", str(value))
        page.find_element(By.CSS_SELECTOR, "#small-form button[type=submit]").click()
        expected = app.post("/models/xor/predict", {"x": x}).json()["output"][0]
        shown = wait(page, lambda d: (text := d.find_element(By.ID, "small-output").text)
                     not in ("–", "…") and text, f"the output for {x}")
        outputs[tuple(x)] = float(shown.strip("[]"))
        assert outputs[tuple(x)] == pytest.approx(expected, rel=1e-3), (shown, expected)
    assert outputs[1, 0, 1] > 0.5 > outputs[1, 1, 1]

    fill(page, "#small-inputs [name=x2]", "zero")  # a bad value, in the service's words
    page.find_element(By.CSS_SELECTOR, "#small-form button[type=submit]").click()
    said = service_error(app, "POST", "/models/xor/predict", {"x": [1, "zero", 1]})
    wait_for_field_error(page, "#small-inputs [name=x2]", said)  # the input holding "zero"
    assert page.find_element(By.CSS_SELECTOR, "#small-inputs [name=x1]").get_attribute(
        "aria-invalid") is None, "a good input marked"
    fill(page, "#small-inputs [name=x2]", "0")  # editing it takes the mark away
    wait(page, lambda d: field_error(d, "#small-inputs [name=x2]") is None, "the mark to go")

    Select(page.find_element(By.ID, "gradients-model")).select_by_value("xor")
    page.find_element(By.CSS_SELECTOR, "#gradients-form button[type=submit]").click()
    figures = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#gradients-maps figure"),
                   "the gradient heatmaps")
    expected = app.post("/models/xor/gradients", {"X": [[1, 0, 1]], "Y": [[1]]}).json()
    assert [f.get_attribute("data-name") for f in figures] == list(expected["gradients"])
    assert [f.get_attribute("data-name") for f in figures] == ["W1", "W2"]  # the notebooks'
    for figure, matrix in zip(figures, expected["gradients"].values(), strict=True):
        rows, cols = len(matrix), len(matrix[0])
        assert f"{rows} × {cols}" in figure.text, figure.text
        canvas = figure.find_element(By.TAG_NAME, "canvas")
        width, height = (int(canvas.get_attribute(a)) for a in ("width", "height"))
        assert width * rows == height * cols, (width, height, rows, cols)
    assert not error_box(page).is_displayed(), error_text(page)


# -- a form's errors beside their fields -----------------------------------------------------------


def submit(driver: WebDriver, button: WebElement) -> None:
    """Click ``button`` scrolled to the middle of the window, as a user at the form would."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()


def test_form_errors_are_shown_beside_their_fields(page: WebDriver, app: Service) -> None:
    app.post("/models", {"name": "wide-in", "sizes": [64, 10], "activation": "tanh",
                         "loss": "cross_entropy"})
    page.set_window_size(1280, 700)  # the forms are well below the top of the page
    page.refresh()
    wait_for_models(page, {"xor", "wide-in"})
    train = page.find_element(By.ID, "train-form")
    Select(page.find_element(By.ID, "train-model")).select_by_value("xor")
    Select(page.find_element(By.ID, "train-data")).select_by_value("xor")

    fill(page, "#train-lr", "-1")
    submit(page, by_testid(page, "train-button"))
    said = service_error(app, "POST", "/models/xor/train", {"data": "xor", "lr": -1, "wait": False})
    assert said.startswith("lr "), said
    shown = wait_for_field_error(page, "#train-lr", said)
    assert shown["scrolled"] > 0, f"the page went back to its top: {shown}"
    assert len(train.find_elements(By.CSS_SELECTOR, FIELD_ERRORS)) == 1

    lr = page.find_element(By.ID, "train-lr")  # editing the field takes mark and message away
    lr.send_keys(Keys.BACK_SPACE, Keys.BACK_SPACE)
    wait(page, lambda d: field_error(d, "#train-lr") is None, "the mark on lr to go")
    assert lr.get_attribute("aria-invalid") is None and not lr.get_attribute("aria-describedby")
    assert not train.find_elements(By.CSS_SELECTOR, FIELD_ERRORS), "the message stayed"

    # A message about the data set goes beside the data set, and the next request that works
    # (another model, the data set untouched) takes it away.
    Select(page.find_element(By.ID, "train-data")).select_by_value("digits")
    submit(page, by_testid(page, "train-button"))
    said = service_error(app, "POST", "/models/xor/train", {"data": "digits", "wait": False})
    wait_for_field_error(page, "#train-data", said)
    Select(page.find_element(By.ID, "train-model")).select_by_value("wide-in")
    wait(page, lambda d: d.find_element(By.ID, "train-data").get_attribute("value") == "digits",
         "the data set for wide-in")
    fill(page, "#train-epochs", "1")
    submit(page, by_testid(page, "train-button"))
    chart = by_testid(page, "loss-chart")
    wait(page, lambda d: chart.get_attribute("data-state") == "succeeded", "the job to succeed",
         timeout=60)
    assert field_error(page, "#train-data") is None, "the mark outlived a request that worked"
    assert page.find_element(By.ID, "train-data").get_attribute("aria-invalid") is None
    assert not train.find_elements(By.CSS_SELECTOR, FIELD_ERRORS), "the message stayed"

    page.find_element(By.CSS_SELECTOR, "#create summary").click()
    fill(page, "#create-form [name=name]", "bad-sizes")
    fill(page, "#create-form [name=sizes]", "3, x")
    submit(page, page.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]"))
    said = service_error(app, "POST", "/models", {"name": "bad-sizes", "sizes": [3, "x"],
                         "activation": "sigmoid", "loss": "half_sse", "bias": False, "seed": 0})
    assert said.startswith("sizes "), said
    wait_for_field_error(page, "#create-form [name=sizes]", said)
    sizes = page.find_element(By.CSS_SELECTOR, "#create-form [name=sizes]")
    assert "sizes-hint" in sizes.get_attribute("aria-describedby").split(), "the hint was lost"
    assert page.find_element(By.CSS_SELECTOR, "#create-form [name=name]").get_attribute(
        "aria-invalid") is None, "a good field marked"
    sizes.send_keys(Keys.BACK_SPACE)
    wait(page, lambda d: field_error(d, "#create-form [name=sizes]") is None, "the mark to go")
    assert sizes.get_attribute("aria-describedby") == "sizes-hint"
    assert not page.find_elements(By.CSS_SELECTOR, FIELD_ERRORS), "a message stayed"
    assert app.get("/models/bad-sizes", check=False).status == 404


# -- the token ------------------------------------------------------------------------------------


def test_without_the_token_the_page_says_so(browser: WebDriver, app: Service) -> None:
    browser.execute_script("sessionStorage.removeItem(arguments[0])", TOKEN_KEY)
    try:
        browser.get(url(app))
        wait(browser, lambda d: error_box(d).is_displayed(), "a message about the token")
        assert "token" in error_text(browser) and "401" in error_text(browser), error_text(browser)
        assert token_bar(browser).is_displayed(), "the service asked for a token: no bar for it"
        assert listed(browser) == {}

        fill(browser, "#token", "not-the-token")
        browser.find_element(By.ID, "token").send_keys(Keys.ENTER)
        wait(browser, lambda d: "refused" in error_text(d), "a message about a wrong token")

        fill(browser, "#token", TOKEN)
        browser.find_element(By.ID, "token").send_keys(Keys.ENTER)
        wait_for_models(browser, {"xor", "digits"})
        assert not error_box(browser).is_displayed(), error_text(browser)
        assert browser.execute_script("return sessionStorage.getItem(arguments[0])",
                                      TOKEN_KEY) == TOKEN
        browser.execute_script(DRAW_DIGIT, [16] * 64)  # with it, requests work
        shown, _, _ = current_prediction(browser)
        assert shown is not None
    finally:
        browser.execute_script("sessionStorage.setItem(arguments[0], arguments[1])",
                               TOKEN_KEY, TOKEN)


@pytest.fixture(scope="module")
def open_app(start_service: Callable[..., Service]) -> Service:
    """Another service, without a token."""
    return start_service()


def token_bar(driver: WebDriver) -> WebElement:
    return by_testid(driver, "token-bar")


def test_the_token_bar_is_shown_when_a_token_is_kept(page: WebDriver) -> None:
    assert token_bar(page).is_displayed(), "a token is kept, yet its bar is hidden"
    assert page.find_element(By.ID, "token").get_attribute("value") == TOKEN


def test_the_token_bar_is_hidden_when_no_token_is_asked(browser: WebDriver,
                                                        open_app: Service) -> None:
    browser.get(url(open_app))  # another origin (port): nothing in its sessionStorage ...
    browser.execute_script("sessionStorage.clear()")  # ... and surely nothing
    browser.refresh()
    wait_for_models(browser, {"xor", "digits"})
    assert not token_bar(browser).is_displayed(), "the token bar shows, and no token is asked"
    assert token_bar(browser).get_attribute("hidden") is not None
    assert not error_box(browser).is_displayed(), error_text(browser)
    assert browser.execute_script("return sessionStorage.length") == 0


# -- usable: labels, keyboard, layout at three widths ---------------------------------------------

UNLABELLED = """
return [...document.querySelectorAll('input, select, button, textarea')].filter((el) =>
  !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
  && !el.getAttribute('aria-labelledby') && !el.textContent.trim()).map((el) => el.outerHTML);
"""

FOCUSED = """
const el = document.activeElement;
return el && el !== document.body ? (el.dataset.testid || el.id || el.name
  || el.getAttribute('aria-label') || el.textContent.trim()) : null;
"""


def test_usable_with_keyboard_and_at_phone_width(page: WebDriver) -> None:
    assert page.execute_script(UNLABELLED) == [], "controls without a label"

    page.execute_script("document.activeElement.blur()")
    reached = []
    for _ in range(80):
        ActionChains(page).send_keys(Keys.TAB).perform()
        reached.append(page.execute_script(FOCUSED))
    for control in ("token", "Delete model digits", "digit-model", "digit-clear", "small-model",
                    "train-model", "train-epochs", "train-button", "gradients-model"):
        assert control in reached, f"{control} is not reached with the Tab key: {reached}"

    page.set_window_size(390, 844)  # a phone
    wait(page, lambda d: d.execute_script("return innerWidth") <= 400, "the narrow window")
    overflow = page.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
    canvas = by_testid(page, "digit-canvas")
    assert canvas.size["width"] <= 390 and canvas.size["width"] >= 200, canvas.size
    stroke(page, canvas, [[(0, -80), (0, 80)]], "touch")  # drawing still maps onto the canvas
    shown, values, _ = current_prediction(page)
    assert shown is not None and sum(values) >= 32, values
    screenshot(page, 390, "playground-phone.png")


# Where the cards are (page coordinates), and whether the prediction and the probabilities'
# values keep to one line, also with the widest value there is ("100.0 %", bold).
LAYOUT = """
const box = (el) => { const r = el.getBoundingClientRect();
  return {top: r.top + scrollY, bottom: r.bottom + scrollY, left: r.left, right: r.right}; };
const lines = (el) => {  // how many lines the element's text takes
  const range = document.createRange();
  range.selectNodeContents(el);
  return new Set([...range.getClientRects()].filter((r) => r.width > 0)
    .map((r) => Math.round(r.top))).size;
};
const oneLine = (el) => lines(el) <= 1 && el.scrollWidth <= el.clientWidth;
const prediction = document.querySelector('[data-testid="prediction"]');
const values = [...document.querySelectorAll('[data-testid="probabilities"] .value')];
const widest = document.querySelector('[data-testid="probabilities"] li.best .value');
const before = widest.textContent;
widest.textContent = '100.0 %';
const widestOneLine = oneLine(widest);
widest.textContent = before;
const lineHeight = parseFloat(getComputedStyle(prediction).lineHeight);
return {
  cards: Object.fromEntries([...document.querySelectorAll('main section')]
    .map((section) => [section.id, box(section)])),
  overflow: document.documentElement.scrollWidth - innerWidth,
  width: innerWidth,
  prediction: {text: prediction.textContent, lines: lines(prediction),
               height: prediction.offsetHeight, lineHeight},
  valuesOneLine: values.every(oneLine), values: values.map((v) => v.textContent),
  widestOneLine,
};
"""
GAP = 40  # CSS px: cards one under the other are at most this far apart (the grid's gap is 16)
UNEVEN = 0.25  # side by side, two cards' (or columns') bottoms differ by less than this share


def holes(cards: dict[str, dict[str, float]]) -> list[str]:
    """The empty stretches under a card: from its bottom to the next card below it that shares
    some of its width, more than GAP."""
    found = []
    for name, card in cards.items():
        below = [other["top"] for other in cards.values()
                 if other["top"] >= card["bottom"] - 1
                 and other["left"] < card["right"] and card["left"] < other["right"]]
        if below and min(below) - card["bottom"] > GAP:
            found.append(f"{min(below) - card['bottom']:.0f} px empty under {name}")
    return found


def side_by_side(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["top"] < b["bottom"] and b["top"] < a["bottom"] and (
        a["right"] <= b["left"] or b["right"] <= a["left"])


def test_layout_at_desktop_laptop_and_phone_widths(page: WebDriver) -> None:
    page.find_element(By.CSS_SELECTOR, "#create summary").click()  # the longest form open
    page.execute_script(DRAW_DIGIT, np.rint(load("digits").X_test[0] * 16).astype(int).tolist())
    current_prediction(page)
    for width in (1400, 1024, 390):
        page.set_window_size(width, 900)
        wait(page, lambda d, width=width: d.execute_script("return innerWidth") == width,
             f"a window {width} px wide")
        layout = page.execute_script(LAYOUT)
        where = f"at {layout['width']} px: {layout}"
        assert layout["overflow"] <= 0, f"the page scrolls sideways by {layout['overflow']} {where}"
        prediction = layout["prediction"]
        assert prediction["lines"] == 1, f"the prediction wraps {where}"
        assert prediction["height"] <= 1.5 * prediction["lineHeight"], where
        assert layout["valuesOneLine"], f"a probability wraps or spills {where}"
        assert layout["widestOneLine"], f"'100.0 %' wraps or spills {where}"
        cards = layout["cards"]
        assert not holes(cards), f"{holes(cards)} {where}"
        digits, small = cards["digits"], cards["small"]
        if side_by_side(digits, small):  # else stacked: holes() saw no gap between them
            taller = max(c["bottom"] - c["top"] for c in (digits, small))
            assert abs(digits["bottom"] - small["bottom"]) < UNEVEN * taller, (
                f"Small models and Digits side by side leave an empty column {where}")
        columns: dict[float, float] = {}  # each column's left edge: its lowest bottom
        for name, card in cards.items():
            if name != "models":
                columns[card["left"]] = max(columns.get(card["left"], 0), card["bottom"])
        if len(columns) > 1:
            top = min(c["top"] for name, c in cards.items() if name != "models")
            ends = sorted(columns.values())
            assert ends[-1] - ends[0] < UNEVEN * (ends[-1] - top), (
                f"one column ends far above the other {where}")


# -- links: the API's description and the derivations ----------------------------------------------


def test_links_to_the_api_description(page: WebDriver, app: Service) -> None:
    docs, description = by_testid(page, "docs-link"), by_testid(page, "openapi-link")
    # relative links: the page works under a base URL (a proxy's /gradbook/, say)
    assert page.execute_script(
        "return [arguments[0].getAttribute('href'), arguments[1].getAttribute('href')]",
        docs, description) == ["docs", "openapi.json"]
    assert docs.get_property("href") == url(app) + "docs"
    assert description.get_property("href") == url(app) + "openapi.json"
    assert app.get("/openapi.json").json()["info"]["title"]
    nav = page.find_element(By.CSS_SELECTOR, "nav.links").text
    assert "notebooks/" in nav and "make docs" in nav, nav

    docs.click()  # Swagger UI, which finds the token this tab keeps
    wait(page, lambda d: "gradbook API" in d.title, "the API's page")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"), "its operations",
         details=lambda: page.find_element(By.TAG_NAME, "body").text[:500])


def test_the_api_page_asks_for_the_token_then_renders_and_tries_the_api(
        browser: WebDriver, app: Service) -> None:
    """/docs without a token in the tab: /openapi.json answers 401, so the page asks for the
    token instead of failing; given it, Swagger UI renders every tagged group, and "Try it
    out" sends the token with the request."""
    browser.get(url(app) + "docs")
    browser.execute_script("sessionStorage.removeItem(arguments[0])", TOKEN_KEY)
    browser.refresh()
    form = wait(browser, lambda d: d.find_element(By.ID, "token-form").is_displayed()
                and d.find_element(By.ID, "token-form"), "the token form")
    assert not browser.find_elements(By.CSS_SELECTOR, ".opblock")
    form.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"), "its operations")
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    tags = {element.text.split("\n")[0] for element in
            browser.find_elements(By.CSS_SELECTOR, ".opblock-tag")}
    assert {"models", "jobs", "service"} <= tags, tags
    # Try GET /models from the page: the answer is the service's list, not a 401
    listing = next(block for block in browser.find_elements(By.CSS_SELECTOR, ".opblock-get")
                   if block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text
                   == "/models")
    listing.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait(browser, lambda d: listing.find_elements(By.CSS_SELECTOR, ".try-out__btn"), "Try it out")
    listing.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    listing.find_element(By.CSS_SELECTOR, ".execute").click()
    wait(browser, lambda d: "Server response" in listing.text, "the answer")
    answer = " ".join(listing.text.split())
    assert "Authorization: Bearer " + TOKEN in answer, answer[:1000]
    assert "Server response Code Details 200" in answer and '"models"' in answer, answer[:1000]
    browser.execute_script("sessionStorage.setItem(arguments[0], arguments[1])", TOKEN_KEY, TOKEN)
