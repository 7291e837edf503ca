"""An eavesdropper on kernels' channels, as another local user would run it: the standard library
only (it runs under the system's ``python3`` as ``nobody``), no key, no ZeroMQ library.

    python3 zmtp_subscriber.py MARKER SECONDS TARGET...

Each TARGET is ``tcp:HOST:PORT`` or ``unix:PATH``. For each, it connects, greets the peer as a
ZeroMQ SUB socket (ZMTP 3.0, NULL security: what a kernel's IOPub PUB socket accepts from
anyone who can connect), subscribes to every topic and listens for SECONDS. It prints one JSON
line: for each target whether it connected (or the error that stopped it) and whether MARKER
appeared in what it heard. Sockets of other types (shell, control, heartbeat) refuse a SUB
peer and close: that shows as connected, heard nothing.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

GREETING = (b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00")
            + b"\x00" + b"\x00" * 31)


def frame(body: bytes, command: bool = False) -> bytes:
    flags = 0x04 if command else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def ready() -> bytes:
    name, key, value = b"READY", b"Socket-Type", b"SUB"
    body = bytes([len(name)]) + name + bytes([len(key)]) + key + len(value).to_bytes(4, "big")
    return frame(body + value, command=True)


def listen(target: str, marker: bytes, seconds: float, results: dict) -> None:
    kind, _, address = target.partition(":")
    result = results[target] = {"connected": False, "heard": False, "error": None}
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(2)
            sock.connect(address)
        else:
            host, port = address.rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=2)
    except OSError as err:
        result["error"] = f"{type(err).__name__}: {err}"
        return
    result["connected"] = True
    heard = bytearray()
    deadline = time.monotonic() + seconds
    try:
        sock.sendall(GREETING + ready() + frame(b"\x01"))  # greeting, READY, subscribe to all
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            heard += chunk
            if marker in heard:
                result["heard"] = True
                break
    except OSError as err:
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        sock.close()


def main() -> None:
    marker, seconds, targets = sys.argv[1].encode(), float(sys.argv[2]), sys.argv[3:]
    results: dict = {}
    threads = [threading.Thread(target=listen, args=(t, marker, seconds, results))
               for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
