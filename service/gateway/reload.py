"""Watching served notebooks for changes (``GRADBOOK_RELOAD``), with ``watchfiles``.

Each served file's folder is watched, not the file itself: editors and Jupyter often save by
writing a new file and renaming it over the old one, which a watch on the file would lose. A
served folder's notebooks are watched the same way, so that one saved into it is seen, and one
deleted. Events that come together (a save writes and renames; Jupyter writes a backup first)
are reported once, after 50 ms without another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from gradbook_service.gateway.notebooks import is_served_name
from watchfiles import Change, awatch

QUIET_MS = 50  # report changes once none has come for this long
MOST_MS = 1600  # or once they have come for this long


async def watch(paths: Sequence[Path], changed: Callable[[Path, bool], None]) -> None:
    """Call ``changed(file, exists)`` for each served notebook file, or notebook of a served
    folder, that is written, created or deleted; until cancelled."""
    files = {path.resolve() for path in paths if not path.is_dir()}
    folders = {path.resolve() for path in paths if path.is_dir()}

    def wanted(change: Change, name: str) -> bool:
        path = Path(name)
        return path in files or (path.parent in folders and is_served_name(path.name))

    watched = sorted(folders | {file.parent for file in files})
    async for changes in awatch(*watched, watch_filter=wanted, recursive=False, step=QUIET_MS,
                                debounce=MOST_MS):
        for file in sorted({Path(name) for _, name in changes}):
            changed(file, file.is_file())
