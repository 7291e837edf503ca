"""The book ``make docs`` builds: a page per notebook in reading order, previous/next links,
search, folded solutions, and nothing fetched from another host, checked in the built files and
then in headless chromium with the network off.

The book is built once for the module by ``tools/build_book.py``, the code ``make docs`` runs,
with each notebook's ``ci_parameters`` (about a minute here; the browser checks take about
half a minute more). Notebooks are discovered, so a new one is checked as soon as it exists.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
import snowballstemmer
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import build_book

pytestmark = pytest.mark.xdist_group("book")

NOTEBOOKS = build_book.notebooks()
STEMS = [path.stem for path in NOTEBOOKS]
PAGES = sorted(path.stem for path in (ROOT / "book").glob("*.md"))  # the playground
ORDER = ["index", *STEMS, *PAGES]  # the reading order previous/next follow
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REMOTE = re.compile(r"^\s*(https?:)?//", re.I)  # http://, https:// and protocol-relative //


class Tags(HTMLParser):
    """Every start tag of a page, as (name, attributes)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def find(self, tag: str, css_class: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.tags
                if name == tag and css_class in attrs.get("class", "").split()]


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build = tmp_path_factory.mktemp("book")
    warnings = build_book.build(build, ci=True)
    assert not warnings, "Sphinx warned while building the book:\n" + "\n".join(warnings)
    return build / "html"


def page(html: Path, name: str) -> str:
    return (html / f"{name}.html").read_text(encoding="utf-8")


def markdown_of(path: Path) -> str:
    """A notebook's Markdown prose: without math, code spans and links' targets."""
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                     if c.cell_type == "markdown")
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`|\]\([^)]*\)", " ", text, flags=re.S)
    return text


def test_every_notebook_has_a_page_and_a_line_in_the_index(html: Path) -> None:
    index = page(html, "index")
    lines = re.findall(r"<li><p>(.*?)</p>\s*</li>", index, flags=re.S)
    assert len(lines) == len(NOTEBOOKS), lines
    for stem, line in zip(STEMS, lines, strict=True):
        assert (html / f"{stem}.html").is_file(), f"no page for {stem}"
        title, sentence = build_book.summary(nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", 4))
        assert f'href="{stem}.html"' in line, (stem, line)
        link_text = re.sub(r"<[^>]+>", "", line.split("</a>")[0])
        assert link_text.strip() == title, (stem, link_text)
        assert sentence and len(re.sub(r"<[^>]+>", "", line)) > len(title) + 10, (stem, line)
    assert 'href="playground.html"' in index


def test_every_page_links_the_previous_and_the_next(html: Path) -> None:
    for i, name in enumerate(ORDER):
        tags = Tags(page(html, name))
        previous = [a["href"] for a in tags.find("a", "left-prev")]
        following = [a["href"] for a in tags.find("a", "right-next")]
        assert previous == ([f"{ORDER[i - 1]}.html"] if i > 0 else []), (name, previous)
        assert following == ([f"{ORDER[i + 1]}.html"] if i < len(ORDER) - 1 else []), name


def test_every_page_has_the_search_box(html: Path) -> None:
    for name in ORDER:
        tags = Tags(page(html, name))
        forms = [attrs for tag, attrs in tags.tags
                 if tag == "form" and attrs.get("action") == "search.html"]
        fields = [attrs for tag, attrs in tags.tags if tag == "input" and attrs.get("name") == "q"]
        assert forms and fields, f"{name}.html has no search box"


def test_the_search_index_holds_the_notebooks_words(html: Path) -> None:
    text = (html / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(text[text.index("(") + 1:text.rindex(")")])
    stem = snowballstemmer.stemmer("english").stemWord  # the stemmer Sphinx's English search uses

    def pages_with(word: str) -> set[str]:
        pages = set()
        for kind in ("terms", "titleterms"):
            found = index[kind].get(stem(word.lower()), [])
            pages |= {index["docnames"][i] for i in ([found] if isinstance(found, int) else found)}
        return pages

    assert "01_sigmoid" in pages_with("sigmoid")
    assert "08_any_depth" in pages_with("backpropagation")
    words = {path.stem: set(re.findall(r"\b[a-z]{7,}\b", markdown_of(path))) for path in NOTEBOOKS}
    for name, own in words.items():  # a word only this notebook's prose has leads to its page
        others = set().union(*(w for n, w in words.items() if n != name))
        only = sorted(own - others, key=lambda w: (-len(w), w))
        assert only, f"{name}: no word of its own to look for"
        assert name in pages_with(only[0]), (name, only[0])


def test_nothing_is_loaded_from_another_host(html: Path) -> None:
    """No script, style sheet, font or image from the network; links to other sites are fine."""
    for path in html.rglob("*.html"):
        for tag, attrs in Tags(path.read_text(encoding="utf-8")).tags:
            for name in ("src", "data-src", "srcset", "poster"):
                assert not REMOTE.match(attrs.get(name, "")), (path.name, tag, attrs)
            if tag == "link" and attrs.get("rel") not in ("canonical",):
                assert not REMOTE.match(attrs.get("href", "")), (path.name, attrs)
    styles = [p.read_text(encoding="utf-8", errors="replace") for p in html.rglob("*.css")]
    styles += re.findall(r"<style[^>]*>(.*?)</style>", page(html, STEMS[0]), flags=re.S)
    for style in styles:
        assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//|@import\s+['\"](https?:)?//", style)


def test_solutions_are_folded(html: Path) -> None:
    """Each cell tagged ``solution`` is inside a closed ``<details>`` on its page."""
    solutions = 0
    for path in NOTEBOOKS:
        count = sum("solution" in c.metadata.get("tags", [])
                    for c in nbformat.read(path, as_version=4).cells)
        folds = re.findall(r'<div class="cell [^"]*\btag_solution\b[^"]*">\s*<details([^>]*)>',
                           page(html, path.stem))
        assert len(folds) == count, f"{path.stem}: {count} solutions, {len(folds)} folded"
        assert not [f for f in folds if re.search(r"\bopen\b", f)], f"{path.stem}: open"
        solutions += count
    if not solutions:
        pytest.skip("no notebook has a solution cell yet")


def test_no_papermill_parameters_nor_machine_paths(html: Path) -> None:
    for name in STEMS:
        text = page(html, name)
        assert "tag_injected-parameters" not in text and "># Parameters<" not in text, name
        assert str(ROOT) not in text and str(html.parent) not in text, name


# -- in chromium, with the network off ------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(html: Path) -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (tools/system-packages.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900",
                     # no name resolves: a request to any host fails, and shows in the log
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(str(CHROMEDRIVER)))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def requested(driver: object) -> tuple[list[str], list[str]]:
    """The URLs the browser asked for since the last call, and those it failed to load
    (Chrome's performance log)."""
    urls, failed = {}, []
    for entry in driver.get_log("performance"):  # type: ignore[attr-defined]
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls[message["params"]["requestId"]] = message["params"]["request"]["url"]
        elif message["method"] == "Network.loadingFailed":
            failed.append(message["params"]["requestId"])
    return list(urls.values()), [urls.get(r, r) for r in failed]


def elsewhere(urls: list[str]) -> list[str]:
    """The URLs that are not this computer's files (``about:`` is MathJax's blank test font)."""
    return [url for url in urls if not url.startswith(("file:", "data:", "about:"))]


TYPESET = """
const done = arguments[arguments.length - 1];
const wait = () => (window.MathJax && MathJax.Hub && MathJax.isReady)
  ? MathJax.Hub.Queue(() => done(true)) : setTimeout(wait, 50);
if (!document.querySelector('.math.notranslate')) done(false); else wait();
"""

MATH = """
const article = document.querySelector('article');
const math = [...document.querySelectorAll('.math.notranslate')];  // Sphinx's, not MathJax's
return {
  elements: math.length,
  untypeset: math.filter(m => !m.querySelector('.MathJax, .MathJax_Display')).length,
  errors: document.querySelectorAll('.merror, .MathJax_Error, .noError').length,
  text: article.innerText,
  displayed: [...document.querySelectorAll('.MathJax_Display')].map(m => m.innerText).join(' '),
};
"""


@pytest.mark.parametrize("name", ["index", *STEMS, *PAGES])
def test_pages_read_offline_with_their_equations(browser: object, html: Path, name: str) -> None:
    requested(browser)
    browser.get((html / f"{name}.html").as_uri())  # type: ignore[attr-defined]
    has_math = browser.execute_async_script(TYPESET)  # type: ignore[attr-defined]
    found = browser.execute_script(MATH)  # type: ignore[attr-defined]
    urls, failed = requested(browser)
    assert not elsewhere(urls), f"{name}.html asked the network for {elsewhere(urls)}"
    assert not [url for url in failed if url.startswith("file:")], f"{name}: missing {failed}"
    if not has_math:
        return
    assert found["elements"] and not found["untypeset"], (name, found["untypeset"])
    assert not found["errors"], f"{name}: {found['errors']} TeX errors"
    assert "$$" not in found["text"] and "\\tag{" not in found["text"], name
    tags = re.findall(r"\\tag\{([^}]*)\}", "\n".join(
        c.source for c in nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", 4).cells
        if c.cell_type == "markdown")) if name in STEMS else []
    shown = found["displayed"].replace(" ", "")
    missing = [tag for tag in tags if f"({tag.replace(' ', '')})" not in shown]
    assert not missing, f"{name}: equation numbers not shown: {missing}"


def test_search_works_offline(browser: object, html: Path) -> None:
    from selenium.webdriver.common.by import By

    requested(browser)
    browser.get((html / "search.html").as_uri() + "?q=sigmoid")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    links: list[str] = []
    while time.monotonic() < deadline and "01_sigmoid.html" not in " ".join(links):
        time.sleep(0.2)
        links = [a.get_attribute("href") or "" for a in browser.find_elements(  # type: ignore
            By.CSS_SELECTOR, "#search-results a")]
    assert any(link.endswith("01_sigmoid.html") for link in links), links
    assert not elsewhere(requested(browser)[0])
