"""The README and the pages of ``docs/`` stay true to the code and to each other: every setting
documented once, in the one table, and nothing documented that does not exist; every link to a
file of the project, and every anchor, leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT
from gradbook_service.app.cluster import CLUSTER_VARIABLES
from gradbook_service.app.settings import Settings

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SETTING_ROW = re.compile(r"^\| `(GRADBOOK_[A-Z_]+)` \|", flags=re.M)


def prose(page: Path) -> str:
    """The page without its fenced code blocks (a ``#`` there is a comment, not a heading)."""
    return re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in re.findall(r"^#{1,6} (.+)$", prose(page), flags=re.M)}


def test_every_setting_is_in_the_one_table_once() -> None:
    documented = SETTING_ROW.findall((ROOT / "docs" / "settings.md").read_text())
    existing = {Settings.env(name) for name in Settings.class_trait_names(config=True)}
    real = existing | set(CLUSTER_VARIABLES)
    assert len(documented) == len(set(documented)), "a setting documented twice"
    assert not set(documented) - real, f"documented, but no such setting: {set(documented) - real}"
    assert not real - set(documented), f"settings left out: {real - set(documented)}"
    for page in PAGES:  # and in no other table
        if page.name != "settings.md":
            assert not SETTING_ROW.findall(page.read_text()), f"{page.name} has a settings table"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_and_anchor_leads_somewhere(page: Path) -> None:
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):  # http:, mailto: … : not the project's
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if fragment:
            assert linked.suffix == ".md", f"{page.name}: an anchor into {path}"
            assert fragment in anchors(linked), f"{page.name} links to {target}: no such heading"


def test_the_readme_is_a_landing_page() -> None:
    """What a newcomer reads in five minutes; the rest is in docs/, linked from it."""
    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") <= 250
    for page in PAGES[1:]:
        if page.suffix == ".md":
            assert f"docs/{page.name}" in readme, f"the README does not link to {page.name}"
