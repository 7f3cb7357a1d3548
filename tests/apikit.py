"""Starting ``archive serve`` for real (its own process, uvicorn) for the API, console and schema tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(env: dict, log_path: Path, launcher: tuple[str, ...] = ("-m", "archive")):
    """Run ``archive serve`` with ``env`` until the block ends; yields the server's base URL. ``launcher``:
    the interpreter's arguments before ``serve`` (``("-c", code)`` runs the CLI from a test's own code)."""
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, *launcher, "serve", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/v1/openapi.json", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"archive serve did not start: {log_path.read_text()}") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with ``files`` as the form's ``files`` field, and its Content-Type."""
    boundary = "archive-test-boundary-7d1e"
    out = b""
    for name, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(server: str, token: str, files: list[tuple[str, bytes]], timeout: float = 120) -> tuple[int, dict]:
    """POST ``files`` to ``server``'s /api/v1/ingest as ``token``: (status, JSON answer)."""
    body, kind = multipart(files)
    req = urllib.request.Request(server + "/api/v1/ingest", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": kind})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
