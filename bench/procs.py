"""What the benchmarks and the tests know of a running service's processes, read from ``/proc``.

The launcher's children are its kernels (each in a session of its own, so no process group holds
them) and its training worker. Shared by ``bench/*.py`` and ``tests/`` (whose ``conftest`` puts
this folder on ``sys.path``). Linux only, like the service's own supervision.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc's CPU times


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:  # the task or the process ended meanwhile
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children first."""
    found = []
    for child in child_pids(pid):
        found += [child, *descendants(child)]
    return found


def kernel_pids(pid: int) -> list[int]:
    """The kernels among the children of ``pid``."""
    return [child for child in child_pids(pid) if b"ipykernel" in cmdline(child)]


def trainer_pids(pid: int) -> list[int]:
    """The training worker among the children of ``pid`` (one, unless it is being replaced)."""
    return [child for child in child_pids(pid) if b"gradbook_service.app.trainer" in cmdline(child)]


def cmdline(pid: int) -> bytes:
    """The command line of ``pid``, its arguments separated by NUL bytes (empty once gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def started(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (field 22 of ``/proc/<pid>/stat``); 0 if
    it is gone. With the pid it names a process even once the pid is reused."""
    fields = _stat(pid)
    return int(fields[19]) if len(fields) > 19 else 0


def cpu_seconds(pid: int) -> float:
    """CPU time ``pid`` has used so far, user and system (fields 14 and 15 of its stat); 0 once
    it is gone."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICKS if len(fields) > 12 else 0.0


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def listening_pid(port: int) -> int:
    """The PID of the process listening on TCP ``port`` (IPv4), from ``/proc/net/tcp``'s inode
    and the processes' open sockets."""
    wanted = f":{port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(wanted) and fields[3] == "0A":  # LISTEN
            inode = fields[9]
            break
    if inode is None:
        raise RuntimeError(f"nothing listens on {port}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(proc.name)
        except OSError:
            continue
    raise RuntimeError(f"no process owns the socket on {port}")
