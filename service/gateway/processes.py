"""Child processes of the launcher and of ``make cluster``: how one is stopped."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``process``, SIGKILL it if it is still there after ``timeout`` seconds, reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
