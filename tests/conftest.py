"""Shared fixtures: a leak check on every test, a started collector, and a client factory.

``no_thread_leak`` (autouse) fails a test that leaves a ``cdp_batcher*`` thread or a collector
thread running: it compares :func:`threading.enumerate` before and after, joining newcomers
for a bounded time first (a sender may still be returning from its last request).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

from cdp_batcher import CDPClient, Stats
from cdp_batcher.testing import Collector

API_KEY = "test-key"


class RecordingControl:
    """A SendControl that records each outcome call (what the route's UnitControl receives).
    ``unhurried``: whether nobody waits for the unit (a destination may then pace its work)."""

    def __init__(self, unhurried: bool = False) -> None:
        self.delivered_calls: list[list[Any]] = []
        self.failed_calls: list[tuple[list[Any], str]] = []
        self._unhurried = unhurried

    def remaining(self) -> None:
        return None

    def sleep(self, delay: float) -> bool:
        return False

    def delivered(self, items: Sequence[Any]) -> None:
        self.delivered_calls.append(list(items))

    def failed(self, items: Sequence[Any], reason: str, error: BaseException) -> None:
        self.failed_calls.append((list(items), reason))

    dropped = failed

    def retried(self, n: int = 1) -> None:
        pass

    def warn(self, key: str, message: str) -> None:
        pass

    def unhurried(self) -> bool:
        return self._unhurried


class Paces:
    """Counts the pauses a destination module makes (its ``_pace``), without pausing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> None:
        self.count = 0
        self._lock = threading.Lock()
        monkeypatch.setattr(module, "_pace", self._pace)

    def _pace(self) -> None:
        with self._lock:
            self.count += 1


#: How long a test's leftover threads may take to end after the test returned.
THREAD_JOIN_GRACE = 3.0
_WATCHED_PREFIXES = ("cdp_batcher", "cdp-collector")

#: Settings that keep tests fast: quick flushes, few and short retries, no real fallback hosts.
FAST: dict[str, Any] = {
    "flush_interval": 0.05,
    "max_retries": 2,
    "retry_max_time": 2.0,
    "timeout_ms": 2_000,
    "shutdown_timeout": 3.0,
    "cdp_fallback_endpoints": [],
}


def _watched() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(_WATCHED_PREFIXES)}


@pytest.fixture(autouse=True)
def no_thread_leak(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test when a library or collector thread it started is still alive after it."""
    before = _watched()
    yield
    deadline = time.monotonic() + THREAD_JOIN_GRACE
    leaked = _watched() - before
    for thread in leaked:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sorted(t.name for t in leaked if t.is_alive())
    if alive:
        pytest.fail(f"{request.node.nodeid} leaked thread(s): {alive}", pytrace=False)


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A started local collector expecting ``Authorization: test-key``; stopped after the test."""
    c = Collector(api_key=API_KEY).start()
    try:
        yield c
    finally:
        c.stop()


MakeClient = Callable[..., CDPClient]


def _module_key(request: pytest.FixtureRequest) -> str:
    """The API key a test module expects (its ``KEY``), else :data:`API_KEY`."""
    return str(getattr(request.module, "KEY", API_KEY))


@pytest.fixture
def primary(request: pytest.FixtureRequest) -> Iterator[Collector]:
    """A started collector expecting the module's key (the primary of a failover pair)."""
    with Collector(api_key=_module_key(request)) as c:
        yield c


@pytest.fixture
def fallback(request: pytest.FixtureRequest) -> Iterator[Collector]:
    """A second started collector expecting the module's key (a fallback host)."""
    with Collector(api_key=_module_key(request)) as c:
        yield c


@pytest.fixture
def make_failover_client(
    request: pytest.FixtureRequest, primary: Collector, fallback: Collector
) -> Iterator[MakeClient]:
    """Clients pointed at ``primary`` then ``fallback`` (keywords override); all shut down after."""
    made: list[CDPClient] = []

    def make(**overrides: Any) -> CDPClient:
        settings: dict[str, Any] = {
            "cdp_api_key": _module_key(request),
            "cdp_endpoint": primary.url,
            "cdp_fallback_endpoints": [fallback.url],
            "timeout_ms": 2000,
            "retry_max_time": 2.0,
            "flush_interval": 0.05,
        }
        settings.update(overrides)
        client = CDPClient(**settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown(timeout=2.0)


@pytest.fixture
def make_client(collector: Collector) -> Iterator[MakeClient]:
    """A factory of clients pointed at ``collector`` with :data:`FAST` settings (any keyword
    overrides them); every client made is shut down after the test."""
    made: list[CDPClient] = []

    def make(**overrides: Any) -> CDPClient:
        settings: dict[str, Any] = {"cdp_api_key": API_KEY, "cdp_endpoint": collector.url, **FAST}
        settings.update(overrides)
        client = CDPClient(**settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown(timeout=2.0)


# ------------------------------------------------------------------------------ shared helpers
def assert_accounted(stats: Stats) -> None:
    """Every call a destination was offered sits in exactly one bucket (or is still queued/in flight)."""
    for name, d in stats.destinations.items():
        resolved = d.delivered + d.failed_total + d.dropped_total
        assert d.enqueued + d.recovered == resolved + d.queued + d.in_flight, (name, d.as_dict())


def unused_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_python(
    code: str, *args: str, timeout: float = 30.0, env: Any = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``code`` (dedented) in a fresh interpreter; (the finished process, seconds it took)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return proc, time.monotonic() - start


def sockets_connected_to(port: int) -> int:
    """How many of this process's sockets are connected to ``port`` on loopback (Linux /proc)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            dup = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with dup:
            try:
                peer = dup.getpeername()
            except OSError:
                continue
        if isinstance(peer, tuple) and len(peer) >= 2 and peer[1] == port:
            count += 1
    return count


#: The environment variables ``CDPClient.from_env`` and the CLI read (the issue's contract).
ENV_VARS = (
    "CDP_API_KEY",
    "CDP_ENDPOINT",
    "CDP_FALLBACK_ENDPOINTS",
    "CUSTOMERIO_SITE_ID",
    "CUSTOMERIO_API_KEY",
    "CUSTOMERIO_REGION",
    "CUSTOMERIO_URL",
    "CDP_SPOOL_DIR",
)


@pytest.fixture
def fast_sink() -> Iterator[str]:
    """tests/fastsink.py in its own process: a counting keep-alive sink far faster than the
    collector, whose CPU would otherwise share this process's GIL with the senders."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fastsink.py"))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.kill()
        proc.wait(10)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The server matrix (tests/test_servers.py): one row per cell that ran."""
    servers = sys.modules.get("servers")
    results = getattr(servers, "RESULTS", None)
    if results:
        terminalreporter.section("server matrix")
        for line in servers.format_table(results):  # type: ignore[union-attr]
            terminalreporter.write_line(line)
