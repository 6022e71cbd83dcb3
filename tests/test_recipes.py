"""The framework recipes in examples/frameworks/, each run against the local collector.

Every recipe's self-test runs as a subprocess (as ``make demo`` runs it); Flask, FastAPI, the
serverless handler and Celery's signal wiring are also checked in-process, and gunicorn runs for
real with ``--preload`` and three workers. Framework packages come from the ``frameworks`` extra.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cdp_batcher.testing import Collector

from conftest import API_KEY, ENV_VARS, MakeClient

pytestmark = pytest.mark.timeout(60)

FRAMEWORKS = Path(__file__).resolve().parent.parent / "examples" / "frameworks"


def recipe_env(collector: Collector) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(CDP_API_KEY=API_KEY, CDP_ENDPOINT=collector.url, CDP_FALLBACK_ENDPOINTS="")
    return env


@pytest.fixture
def cdp_env(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> Collector:
    """The process environment pointed at the collector (for recipes that call from_env())."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in recipe_env(collector).items():
        if name.startswith("CDP_"):
            monkeypatch.setenv(name, value)
    return collector


def load(name: str, relative: str) -> ModuleType:
    """Import an example file as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, FRAMEWORKS / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def frameworks_path() -> Iterator[None]:
    sys.path.insert(0, str(FRAMEWORKS))
    try:
        yield
    finally:
        sys.path.remove(str(FRAMEWORKS))


# ------------------------------------------------------------------------- every self-test
SELFTESTS = {
    "flask": (["flask_app.py", "--selftest"], "flask", 12),
    "fastapi": (["fastapi_app.py", "--selftest"], "fastapi", 10),
    "django": (["django_app/manage.py", "selftest"], "django", 12),
    "serverless": (["serverless.py", "--selftest"], None, 3),
    "celery": (["celery_app.py", "--selftest"], "celery", 6),
}


@pytest.mark.parametrize("recipe", sorted(SELFTESTS))
def test_recipe_self_test_delivers_to_the_collector(collector: Collector, recipe: str) -> None:
    """Each recipe, run as ``make demo`` runs it, exits 0 and its events reach the collector."""
    argv, package, events = SELFTESTS[recipe]
    if package is not None:
        pytest.importorskip(package)
    done = subprocess.run(
        [sys.executable, str(FRAMEWORKS / argv[0]), *argv[1:]],
        env=recipe_env(collector),
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert collector.count() == events
    assert API_KEY not in done.stdout + done.stderr


# ------------------------------------------------------------------------- in-process checks
def test_flask_tracks_inside_requests(make_client: MakeClient, collector: Collector) -> None:
    """The after_request hook and the view track with the request's data; nothing waits on I/O."""
    pytest.importorskip("flask")
    flask_app = load("flask_app_recipe", "flask_app.py")
    client = make_client()
    app = flask_app.create_app(client)
    with app.test_client() as http_client:
        assert http_client.get("/products/3", headers={"X-User-Id": "ada"}).status_code == 200
        assert http_client.post("/checkout", json={"amount": 5}, headers={"X-User-Id": "ada"}).json == {
            "ok": True
        }
    assert client.flush(timeout=5.0)
    calls = sorted(
        (e["body"]["eventName"], e["body"]["properties"].get("path", "")) for e in collector.events()
    )
    assert calls == [("purchase_completed", ""), ("request", "/checkout"), ("request", "/products/3")]


def test_fastapi_lifespan_flushes_and_shuts_down(cdp_env: Collector) -> None:
    """The lifespan creates the client at start-up and awaits aflush/ashutdown at the end."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    fastapi_app = load("fastapi_app_recipe", "fastapi_app.py")
    with TestClient(fastapi_app.app) as http_client:
        assert http_client.get("/products/7", headers={"X-User-Id": "bo"}).json() == {"product": 7}
        client = fastapi_app.app.state.cdp
        assert client.stats().destinations["opencdp"].delivered in (0, 1)  # not waited for in the request
    assert fastapi_app.app.state.cdp_report
    assert "closed" in repr(client)
    assert [e["body"]["properties"] for e in cdp_env.events()] == [{"product": 7}]


def test_aflush_never_blocks_the_event_loop(make_client: MakeClient, collector: Collector) -> None:
    """While aflush waits on a slow gateway (0.3 s), other coroutines keep running."""
    collector.set_latency(0.3)
    client = make_client()

    async def run() -> tuple[Any, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        client.track("u", "slow")
        report = await client.aflush(timeout=5.0)
        stop.set()
        await task
        return report, ticks

    report, ticks = asyncio.run(run())
    assert report and report.delivered == 1
    assert ticks >= 10  # a blocking flush would have allowed none


def test_serverless_handler_flushes_before_returning(cdp_env: Collector) -> None:
    """When the handler returns, its event has already arrived (the platform may freeze us next)."""
    serverless = load("serverless_recipe", "serverless.py")
    try:
        result = serverless.handler({"user_id": "fn-user", "event": "invoked"}, serverless._FakeContext(2.0))
        assert result == {"statusCode": 200, "delivered": 1, "ok": True}
        assert cdp_env.count() == 1  # no waiting: delivered before the return
    finally:
        serverless.client.shutdown(timeout=2.0)


def test_celery_signals_create_and_shut_down_the_client(cdp_env: Collector, frameworks_path: None) -> None:
    """worker_process_init gives the process a fresh client; worker_process_shutdown delivers and
    closes it; worker_shutdown is wired too (solo/threads pools)."""
    pytest.importorskip("celery")
    from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

    celery_app = load("celery_app", "celery_app.py")
    for sig, handler in (
        (worker_process_init, celery_app.start_client),
        (worker_process_shutdown, celery_app.stop_client),
        (worker_shutdown, celery_app.stop_client),
    ):
        live = [ref() if isinstance(ref, weakref.ref) else ref for _, ref in sig.receivers]
        assert handler in live, sig.name
    try:
        celery_app.app.conf.task_always_eager = True
        worker_process_init.send(sender=None)
        first = celery_app.cdp()
        worker_process_init.send(sender=None)
        client = celery_app.cdp()
        assert client is not first
        first.shutdown(timeout=1.0)
        celery_app.welcome.delay("celery-user", "pro")
        worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        assert "closed" in repr(client)
        assert cdp_env.count() == 2  # delivered by the shutdown handler, before it returned
        worker_shutdown.send(sender=None)  # idempotent
    finally:
        for sig, handler in (
            (worker_process_init, celery_app.start_client),
            (worker_process_shutdown, celery_app.stop_client),
            (worker_shutdown, celery_app.stop_client),
        ):
            sig.disconnect(handler)
        if celery_app._client is not None:
            celery_app._client.shutdown(timeout=1.0)
        sys.modules.pop("celery_app", None)


# ------------------------------------------------------------------------- gunicorn, for real
@pytest.mark.timeout(90)
def test_gunicorn_preload_every_worker_delivers(collector: Collector) -> None:
    """gunicorn --preload -w 3: the client made in the arbiter before fork works in every worker,
    and worker_exit delivers each worker's events when SIGTERM stops the arbiter."""
    pytest.importorskip("gunicorn")
    workers = 3
    cmd = [sys.executable, "-m", "gunicorn", "--preload", "-w", str(workers), "-b", "127.0.0.1:0"]
    cmd += ["-c", str(FRAMEWORKS / "gunicorn_conf.py"), "--chdir", str(FRAMEWORKS), "gunicorn_app:app"]
    proc = subprocess.Popen(
        cmd, env=recipe_env(collector), stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    log: list[str] = []
    listening = threading.Event()
    port: list[int] = []

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if found:
                port.append(int(found.group(1)))
                listening.set()

    reader = threading.Thread(target=read_log, name="gunicorn-log", daemon=True)
    reader.start()
    pids: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    try:
        assert listening.wait(30), "".join(log)

        def get(n: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port[0], timeout=10)
            conn.request("GET", f"/page/{n}", headers={"X-User-Id": f"user-{n % 5}"})
            pid = int(conn.getresponse().read().decode().strip().split("=")[1])
            conn.close()
            with lock:
                pids[pid] += 1

        deadline = time.monotonic() + 30
        sent = 0
        while (len(pids) < workers or sent < 30) and time.monotonic() < deadline:
            batch = [threading.Thread(target=get, args=(sent + i,), name="gunicorn-client") for i in range(6)]
            for t in batch:
                t.start()
            for t in batch:
                t.join(15)
            sent += len(batch)
        assert len(pids) == workers, pids
        assert sum(pids.values()) == sent
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(10)
    assert proc.returncode == 0, "".join(log)
    arrived = collections.Counter(e["body"]["properties"]["worker_pid"] for e in collector.events())
    assert arrived == pids  # every worker's events, each exactly once
    stops = [re.search(r"cdp_batcher: worker (\d+) stopped: delivered=(\d+) ok=True", line) for line in log]
    by_worker = {int(m.group(1)): int(m.group(2)) for m in stops if m}
    assert by_worker == dict(pids)
