"""The server matrix, for real: each cell starts a real server with a recipe's app on a free
loopback port, drives a bounded load, stops it the way production does and counts every event
at the local collector. Expected everywhere: every event exactly once, the stop within the
recipe's shutdown timeout plus the server's own teardown, no worker timeout or SIGKILL.

The table of every cell (delivered/expected, stop time) is printed at the end of the session.
Run alone with ``.venv/bin/python -m pytest -m servers -s``.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import pytest

from cdp_batcher.testing import Collector

from conftest import API_KEY, ENV_VARS
from servers import (
    FRAMEWORKS,
    RESULTS,
    STOP_BOUND,
    Outcome,
    ServerProcess,
    count_events,
    free_port,
    run_http_cell,
)

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]


def server_env(collector: Collector) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(CDP_API_KEY=API_KEY, CDP_ENDPOINT=collector.url, CDP_FALLBACK_ENDPOINTS="")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: make venv installs it (the servers extra)")


# ------------------------------------------------------------------------------------ gunicorn
GUNICORN_WORKERS = 2
GRACEFUL = 8


def gunicorn_argv(worker_class: str, preload: bool, port: int, tmp: str) -> list[str]:
    import gunicorn.config

    argv = [sys.executable, "-m", "gunicorn", "-k", worker_class, "-w", str(GUNICORN_WORKERS)]
    argv += ["-b", f"127.0.0.1:{port}", "-c", str(FRAMEWORKS / "gunicorn_conf.py"), "--timeout", "10"]
    # Above the recipe's shutdown(timeout=5.0), below its 30 s: gunicorn's gevent worker sometimes
    # lets an old worker sit out the whole graceful timeout after SIGHUP (with a plain app too).
    argv += ["--graceful-timeout", str(GRACEFUL)]
    if worker_class == "gthread":
        argv += ["--threads", "4"]
    if preload:
        argv.append("--preload")
    if "control_socket" in gunicorn.config.Config().settings:  # gunicorn >= 24: one per test
        argv += ["--control-socket", f"{tmp}/gunicorn.ctl"]
    return [*argv, "gunicorn_app:app"]


def gunicorn_reload(server: ServerProcess) -> Optional[str]:
    """SIGHUP: new workers boot, the old ones stop gracefully (their worker_exit runs)."""
    mark = server.mark
    server.proc.send_signal(signal.SIGHUP)
    if not server.wait_for(r"Booting worker with pid", GUNICORN_WORKERS, timeout=20, since=mark):
        return "SIGHUP: no new workers"
    if not server.wait_for(
        r"cdp_batcher: worker \d+ stopped", GUNICORN_WORKERS, timeout=GRACEFUL + 7, since=mark
    ):
        return "SIGHUP: the old workers did not stop cleanly"
    return None


@pytest.mark.parametrize("preload", [False, True], ids=["plain", "preload"])
@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent"])
def test_gunicorn(collector: Collector, worker_class: str, preload: bool, tmp_path: object) -> None:
    """gunicorn -k <class> [--preload] -w 2, a SIGHUP reload half-way, SIGTERM at the end."""
    need("gunicorn")
    if worker_class == "gevent":
        need("gevent")
    port = free_port()
    name = f"gunicorn {worker_class}{' --preload' if preload else ''} + SIGHUP, SIGTERM"
    outcome = run_http_cell(
        name,
        gunicorn_argv(worker_class, preload, port, str(tmp_path)),
        server_env(collector),
        collector,
        port=port,
        ready=r"Booting worker with pid",
        workers=GUNICORN_WORKERS,
        stop_signal=signal.SIGTERM,
        reload=gunicorn_reload,
    )
    assert not outcome.problems(), (outcome.problems(), outcome.log[-4000:])
    assert outcome.returncode == 0, outcome.log[-4000:]


# --------------------------------------------------------------------------------------- uWSGI
UWSGI_WORKERS = 2
UWSGI_MODES = {
    "default": [],
    "enable-threads": ["--enable-threads"],
    "lazy-apps": ["--lazy-apps"],
    "py-call-osafterfork": ["--py-call-osafterfork"],
}
UWSGI_STOPS = {"SIGINT": ([], signal.SIGINT), "die-on-term+SIGTERM": (["--die-on-term"], signal.SIGTERM)}


def uwsgi_binary() -> str:
    path = Path(sys.executable).with_name("uwsgi")
    if not path.exists():
        found = shutil.which("uwsgi")
        if found is None:
            pytest.fail("uwsgi is not installed: make venv builds it (the servers extra)")
        return found
    return str(path)


def recipe_hooks() -> list[str]:
    """The recipe's ``hook-master-start`` lines (uwsgi.ini) as arguments: they make SIGTERM and
    SIGINT a graceful stop, so a worker busy with a request still runs ``uwsgi.atexit``."""
    hooks = re.findall(r"^hook-master-start\s*=\s*(.+?)\s*$", (FRAMEWORKS / "uwsgi.ini").read_text(), re.M)
    assert hooks, "examples/frameworks/uwsgi.ini lost its graceful-stop hooks"
    return [arg for hook in hooks for arg in ("--hook-master-start", hook)]


def uwsgi_argv(port: int, module: str, mode: str, extra: list[str], pythonpath: list[Path]) -> list[str]:
    argv = [
        uwsgi_binary(),
        "--master",
        "--processes",
        str(UWSGI_WORKERS),
        "--http-socket",
        f"127.0.0.1:{port}",
    ]
    argv += ["--module", module, "--need-app", "--worker-reload-mercy", "15"]
    for folder in pythonpath:
        argv += ["--pythonpath", str(folder)]
    return argv + UWSGI_MODES[mode] + extra + recipe_hooks()


@pytest.mark.parametrize("stop", sorted(UWSGI_STOPS))
@pytest.mark.parametrize("mode", list(UWSGI_MODES))
def test_uwsgi(collector: Collector, mode: str, stop: str) -> None:
    """uWSGI --master --processes 2 with uwsgi_app.py (uwsgi.atexit shuts the client down), in
    each fork mode, stopped with SIGINT or with --die-on-term and SIGTERM (the recipe's
    graceful-stop hooks)."""
    port = free_port()
    extra, sig = UWSGI_STOPS[stop]
    argv = uwsgi_argv(port, "uwsgi_app:app", mode, extra, [FRAMEWORKS])
    outcome = run_http_cell(
        f"uWSGI {mode}, {stop}",
        argv,
        server_env(collector),
        collector,
        port=port,
        # lazy-apps: each worker imports the app after it was spawned; wait for every import
        ready=r"WSGI app \d+ .*ready" if mode == "lazy-apps" else r"spawned uWSGI worker \d+",
        workers=UWSGI_WORKERS,
        stop_signal=sig,
    )
    assert not outcome.problems(), (outcome.problems(), outcome.log[-4000:])
    stopped = outcome.log.count("cdp_batcher: worker ")
    assert stopped >= 1, outcome.log[-4000:]  # uwsgi.atexit ran (a worker that served nothing logs too)


BUSY_REQUESTS = 100


@pytest.mark.parametrize("stop", sorted(UWSGI_STOPS))
@pytest.mark.parametrize("mode", ["default", "enable-threads"])
def test_uwsgi_busy_worker_at_stop(collector: Collector, mode: str, stop: str) -> None:
    """The stop signal arrives while a worker is inside a (2 s) request. uWSGI's own stop is
    brutal and skips ``uwsgi.atexit`` in a busy worker (without the recipe's hooks this cell
    delivered 38-87 of 100 and lost the slow request); with the recipe's graceful hooks the
    request is answered and every event of both workers arrives once."""
    port = free_port()
    extra, sig = UWSGI_STOPS[stop]
    argv = uwsgi_argv(port, "uwsgi_busy_app:app", mode, extra, [FRAMEWORKS, Path(__file__).parent])
    slow: dict[str, object] = {}
    slow_number = BUSY_REQUESTS

    def ask_slow() -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=STOP_BOUND)
            conn.request("GET", f"/slow/{slow_number}", headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            slow["status"] = response.status
            conn.close()
        except OSError as exc:
            slow["status"] = repr(exc)

    asker = threading.Thread(target=ask_slow, name="slow-request")

    def start_slow_request(server: ServerProcess) -> None:
        mark = server.mark
        asker.start()
        assert server.wait_for(r"slow request started in worker", since=mark, timeout=30), server.text()[
            -4000:
        ]

    try:
        outcome = run_http_cell(
            f"uWSGI {mode}, {stop}, worker busy at stop",
            argv,
            server_env(collector),
            collector,
            port=port,
            ready=r"spawned uWSGI worker \d+",
            workers=UWSGI_WORKERS,
            stop_signal=sig,
            requests=BUSY_REQUESTS,
            settle=start_slow_request,
        )
    finally:
        if asker.ident is not None:
            asker.join(STOP_BOUND + 5)
    assert not outcome.problems(), (outcome.problems(), outcome.log[-4000:])
    assert slow.get("status") == 200, (slow, outcome.log[-4000:])
    paths = [e["body"].get("properties", {}).get("path") for e in collector.events()]
    assert paths.count(f"/slow/{slow_number}") == 1, outcome.log[-4000:]


# ------------------------------------------------------------------------------------- uvicorn
def product_number(body: dict[str, object]) -> Optional[int]:
    props = body.get("properties")
    value = props.get("product") if isinstance(props, dict) else None
    return value if isinstance(value, int) else None


def test_uvicorn_workers(collector: Collector) -> None:
    """uvicorn --workers 2 with fastapi_app.py (its lifespan awaits aflush/ashutdown), SIGTERM."""
    need("uvicorn")
    need("fastapi")
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "fastapi_app:app",
        "--app-dir",
        str(FRAMEWORKS),
        "--workers",
        "2",
    ]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "8"]
    outcome = run_http_cell(
        "uvicorn --workers 2, SIGTERM",
        argv,
        server_env(collector),
        collector,
        port=port,
        ready=r"Application startup complete",
        workers=2,
        stop_signal=signal.SIGTERM,
        path=lambda n: f"/products/{n}",
        number=product_number,
    )
    assert not outcome.problems(), (outcome.problems(), outcome.log[-4000:])
    assert outcome.returncode == 0, outcome.log[-4000:]


# -------------------------------------------------------------------------------------- Celery
CELERY_TASKS = 150
CELERY_CELL = """
import os
from celery_app import app  # the recipe, unchanged: its signals create and shut down the client

folder = os.environ["CELERY_FS_FOLDER"]
app.conf.broker_transport_options = {
    "data_folder_in": folder + "/queue", "data_folder_out": folder + "/queue",
    "processed_folder": folder + "/done", "store_processed": False, "polling_interval": 0.1,
}
app.conf.result_backend = "file://" + folder + "/results"
app.conf.broker_connection_retry_on_startup = True
"""


def welcome_number(body: dict[str, object]) -> Optional[int]:
    ident = body.get("identifier")
    if body.get("eventName") != "welcome_email_queued" or not isinstance(ident, str):
        return None
    found = re.fullmatch(r"celery-(\d+)", ident)
    return int(found.group(1)) if found else None


@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_celery(collector: Collector, pool: str, tmp_path: Path) -> None:
    """celery worker -P <pool> on kombu's filesystem transport (no broker server): 150 tasks of
    celery_app.welcome (identify + track each), every result awaited, then SIGTERM (warm shutdown)."""
    need("celery")
    if pool == "gevent":
        need("gevent")
    for sub in ("queue", "staging", "done", "results"):
        (tmp_path / sub).mkdir()
    (tmp_path / "celery_cell.py").write_text(CELERY_CELL)
    env = server_env(collector)
    env.update(
        CELERY_BROKER_URL="filesystem://",
        CELERY_FS_FOLDER=str(tmp_path),
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(FRAMEWORKS)]),
    )
    concurrency = "2" if pool == "prefork" else "20"
    argv = [sys.executable, "-m", "celery", "-A", "celery_cell", "worker", "-P", pool, "-c", concurrency]
    argv += ["--loglevel", "INFO", "--without-heartbeat", "--without-mingle", "--without-gossip"]
    server = ServerProcess(argv, env, tmp_path)
    stop_seconds = float("nan")
    unanswered = CELERY_TASKS
    try:
        assert server.wait_for(r"celery@\S+ ready", timeout=60), server.text()[-4000:]
        from celery import Celery

        producer = Celery("producer", broker="filesystem://", backend=f"file://{tmp_path}/results")
        # kombu's filesystem transport creates a message file, then locks and writes it; a worker
        # listing the folder in between reads it empty and dies (JSONDecodeError, seen in CI). The
        # producer writes to a staging folder and each finished file is renamed into the queue.
        producer.conf.broker_transport_options = {
            "data_folder_in": str(tmp_path / "queue"),
            "data_folder_out": str(tmp_path / "staging"),
        }
        results = [
            producer.send_task("celery_app.welcome", args=(f"celery-{n}", "pro")) for n in range(CELERY_TASKS)
        ]
        for name in sorted(os.listdir(tmp_path / "staging")):
            os.rename(tmp_path / "staging" / name, tmp_path / "queue" / name)
        done = 0
        for result in results:
            try:
                result.get(timeout=60, interval=0.05)
                done += 1
            except Exception:
                break
        unanswered = CELERY_TASKS - done
        stop_seconds = server.stop(signal.SIGTERM, timeout=STOP_BOUND + 20)
    finally:
        server.kill()
    delivered, duplicates = count_events(collector, welcome_number, CELERY_TASKS)
    outcome = Outcome(
        f"Celery -P {pool}, SIGTERM",
        CELERY_TASKS,
        delivered,
        duplicates,
        unanswered,
        stop_seconds,
        server.proc.returncode,
        server.text(),
    )
    RESULTS.append(outcome)
    assert not outcome.problems(), (outcome.problems(), outcome.log[-4000:])
    assert collector.count() == 2 * CELERY_TASKS  # the identify of every task too
