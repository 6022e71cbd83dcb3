"""``make bench``: cdp_batcher against segment-analytics-python, posthog and a raw http.client loop.

Every figure comes from one run on one loopback sink (``bench/sink.py``, started here), so the
ratios are comparable even when the machine is noisy. Each measurement runs in its own
subprocess (no threads or CPU time mixed between libraries); the parent starts the sink,
measures its ceiling, runs the children one after the other and prints one table.

    python bench/bench.py            # the full run (a few minutes)
    python bench/bench.py --quick    # smaller counts, for a smoke test
    python bench/bench.py --json out.json
    python bench/bench.py --spool-only [--quick | --drain-events N]   # the durable spool's rows alone

The spool rows (issue 14) run cdp_batcher with and without ``spool_dir`` in the same run: track()
cost, delivery on both routes, draining a backlog (peak RSS), bytes on disk per event. Their
spool directories live under ``.bench/spool`` in the repository and are removed afterwards.

A child is ``python bench/bench.py child '<json spec>'``; it prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

from sink import MARKER, Sink, blast  # noqa: E402

EVENT = MARKER.decode()
API_KEY = "bench-key"
#: Users the events are spread over (ids built before any timing).
USERS = [f"user-{i:05d}" for i in range(1000)]
CHUNK = 1_000
LATENCY = 0.050
#: Runs are repeated (interleaved) and the best kept: the machine may be shared.
REPEATS = 3
CALLER_REPEATS = 3
#: Where the spool rows' directories are made (inside the repository, removed after each run).
SPOOL_ROOT = ROOT / ".bench" / "spool"

Track = Callable[[str, str, dict[str, Any]], object]


# ====================================================================================== child side
def _rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _get(url: str, path: str, timeout: float = 120.0) -> dict[str, Any]:
    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        result: dict[str, Any] = json.loads(conn.getresponse().read())
        return result
    finally:
        conn.close()


def _sink_events(url: str) -> int:
    return int(_get(url, "/__count")["events"])


def _wait_events(url: str, events: int, timeout: float = 120.0) -> int:
    return int(_get(url, f"/__wait?events={events}&timeout={timeout}", timeout + 10)["events"])


class Lib:
    """One library behind three callables: track, flush, and how many events it holds queued."""

    name = ""
    #: Requests in flight at most, and events per request (for the latency bound).
    concurrency = 1
    per_request = 1

    def __init__(
        self, url: str, *, send: bool = True, queue_size: int = 300_000, spool: Optional[str] = None
    ) -> None:
        self.url = url

    track: Track

    def flush(self) -> None:
        raise NotImplementedError

    def queued(self) -> int:
        raise NotImplementedError


def _spool_settings(spool: Optional[str]) -> dict[str, Any]:
    """cdp_batcher's spool arguments for a child (none: the memory queue)."""
    if spool is None:
        return {}
    return {"spool_dir": spool, "max_spool_bytes": 4 * 1024**3}


class CdpLib(Lib):
    name = "cdp_batcher"
    concurrency = 10

    def __init__(
        self,
        url: str,
        *,
        send: bool = True,
        queue_size: int = 300_000,
        spool: Optional[str] = None,
        **options: Any,
    ) -> None:
        from cdp_batcher import CDPClient

        self.client = CDPClient(
            cdp_api_key=API_KEY,
            cdp_endpoint=url,
            cdp_fallback_endpoints=[],
            max_queue_size=queue_size,
            max_queue_bytes=512 * 1024 * 1024,
            max_concurrent_requests=self.concurrency,
            send=send,
            **_spool_settings(spool),
            **options,
        )
        self.track = self.client.track

    def flush(self) -> None:
        self.client.flush(timeout=120)

    def queued(self) -> int:
        return self.client.stats().destinations["opencdp"].queued


class CdpDualLib(CdpLib):
    """Dual-write: OpenCDP and Customer.io (batch route) both on the sink."""

    name = "cdp_batcher (dual-write)"

    def __init__(
        self, url: str, *, send: bool = True, queue_size: int = 300_000, spool: Optional[str] = None
    ) -> None:
        from cdp_batcher import CustomerIoConfig

        cio = CustomerIoConfig(site_id="bench-site", api_key=API_KEY, url=url)
        super().__init__(
            url, send=send, queue_size=queue_size, spool=spool, send_to_customer_io=True, customer_io=cio
        )


class CdpCioLib(CdpLib):
    """The Customer.io batch route alone: the OpenCDP destination is a no-op in this process."""

    name = "cdp_batcher (Customer.io)"

    def __init__(
        self, url: str, *, send: bool = True, queue_size: int = 300_000, spool: Optional[str] = None
    ) -> None:
        import cdp_batcher._client as client_module
        from cdp_batcher import CDPClient, CustomerIoConfig
        from cdp_batcher.destinations._base import Destination

        class NoopOpenCdp(Destination):
            name = "opencdp"
            max_unit_events = 1_000_000

            def __init__(self, **kwargs: Any) -> None:
                pass

            def encode_identify(self, *args: Any) -> bytes:
                return b"{}"

            encode_track = encode_device = encode_identify

            def send(self, items: Any, ctl: Any) -> None:
                ctl.delivered(items)

            def describe(self, item: Any) -> Any:
                return None, None, {}

        client_module.OpenCdpDestination = NoopOpenCdp  # type: ignore[misc,assignment]
        self.client = CDPClient(
            cdp_api_key=API_KEY,
            cdp_endpoint=url,
            cdp_fallback_endpoints=[],
            max_queue_size=queue_size,
            max_queue_bytes=512 * 1024 * 1024,
            send=send,
            send_to_customer_io=True,
            customer_io=CustomerIoConfig(site_id="bench-site", api_key=API_KEY, url=url),
            **_spool_settings(spool),
        )
        self.track = self.client.track

    def queued(self) -> int:
        return self.client.stats().destinations["customerio"].queued


class SegmentLib(Lib):
    name = "segment"
    per_request = 100

    def __init__(
        self, url: str, *, send: bool = True, queue_size: int = 300_000, spool: Optional[str] = None
    ) -> None:
        from segment.analytics import Client

        self.client = Client(write_key=API_KEY, host=url, max_queue_size=queue_size, send=send)
        self.concurrency = len(self.client.consumers or ()) or 1
        self.per_request = self.client.consumers[0].upload_size if self.client.consumers else 100
        self.track = self.client.track

    def flush(self) -> None:
        self.client.flush()

    def queued(self) -> int:
        return int(self.client.queue.qsize())


class PosthogLib(Lib):
    name = "posthog"
    per_request = 100

    def __init__(
        self, url: str, *, send: bool = True, queue_size: int = 300_000, spool: Optional[str] = None
    ) -> None:
        from posthog import Posthog

        self.client = Posthog(API_KEY, host=url, max_queue_size=queue_size, send=send)
        capture = self.client.capture

        def track(user: str, event: str, properties: dict[str, Any]) -> None:
            capture(event, distinct_id=user, properties=properties)

        self.track = track

    def flush(self) -> None:
        self.client.flush()

    def queued(self) -> int:
        lanes = getattr(self.client, "_lanes", None)
        queues = [lane.queue for lane in lanes] if lanes else [self.client.queue]
        return sum(q.qsize() for q in queues if hasattr(q, "qsize"))


LIBS: dict[str, type[Lib]] = {
    "cdp": CdpLib,
    "cdp_cio": CdpCioLib,
    "cdp_dual": CdpDualLib,
    "segment": SegmentLib,
    "posthog": PosthogLib,
}


def child_caller(spec: dict[str, Any]) -> dict[str, Any]:
    """ns per track() call: median and p99 over chunks of 1,000 calls, the dispatcher delivering."""
    lib = LIBS[spec["lib"]](spec["url"], send=spec.get("send", True), spool=spec.get("spool"))
    track = lib.track
    users = USERS
    for i in range(CHUNK):  # warm-up (not timed)
        track(users[i % 1000], EVENT, {"plan": "pro", "amount": i})
    gc.collect()  # as in a running app: the first full collection after the imports is behind us
    per_call: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(spec["n"] // CHUNK):
        t0 = clock()
        for i in range(CHUNK):
            track(users[i], EVENT, {"plan": "pro", "amount": i})
        per_call.append((clock() - t0) / CHUNK)
    # the harness alone (a no-op call with the same arguments), to read the figures against
    noop: Track = lambda user, event, properties: None  # noqa: E731
    t0 = clock()
    for i in range(CHUNK * 10):
        noop(users[i % 1000], EVENT, {"plan": "pro", "amount": i})
    harness = (clock() - t0) / (CHUNK * 10)
    per_call.sort()
    return {
        "median_ns": statistics.median(per_call),
        "p99_ns": per_call[max(0, int(len(per_call) * 0.99) - 1)],
        "max_ns": per_call[-1],
        "harness_ns": harness,
        **(_fork_check_ns() if spec["lib"] == "cdp" else {}),
    }


def _fork_check_ns() -> dict[str, float]:
    """What track()'s fork check costs (issue 13): reading the fork-guard byte (a MADV_WIPEONFORK
    page), next to the os.getpid() comparison it replaces; timeit's best of 7, "pass" subtracted."""
    import timeit

    try:
        from cdp_batcher import _concurrency
    except ImportError:
        return {}
    guard, getpid, n = _concurrency.fork_guard(), os.getpid, 1_000_000
    base = min(timeit.repeat("pass", number=n, repeat=7)) / n * 1e9
    read = min(timeit.repeat("not guard[0]", globals={"guard": guard}, number=n, repeat=7)) / n * 1e9
    pid = min(timeit.repeat("getpid() != p", globals={"getpid": getpid, "p": getpid()}, number=n, repeat=7))
    return {"fork_guard_ns": max(0.0, read - base), "getpid_ns": max(0.0, pid / n * 1e9 - base)}


def child_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    """events/s from the first track() until the sink has every event; CPU per event."""
    url, n = spec["url"], spec["n"]
    lib = LIBS[spec["lib"]](url, spool=spec.get("spool"))
    base = _sink_events(url)
    track = lib.track
    users = USERS
    gc.collect()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(n):
        track(users[i % 1000], EVENT, {"plan": "pro", "amount": i})
    lib.flush()
    got = _wait_events(url, base + n) - base
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {"events_s": got / elapsed, "cpu_us": cpu / max(got, 1) * 1e6, "events": got, "expected": n}


def child_raw(spec: dict[str, Any]) -> dict[str, Any]:
    """One keep-alive http.client connection posting pre-encoded bodies: the ceiling."""
    url, n, batch = spec["url"], spec["n"], spec.get("batch", 1)
    host, port = url.split("//", 1)[1].split(":")
    if batch == 1:
        path = "/v1/persons/track"
        bodies = [
            json.dumps(
                {
                    "identifier": USERS[i % 1000],
                    "eventName": EVENT,
                    "properties": {"plan": "pro", "amount": i},
                },
                separators=(",", ":"),
            ).encode()
            for i in range(n)
        ]
    else:
        path = "/api/v2/batch"
        entries = [
            json.dumps(
                {
                    "type": "person",
                    "identifiers": {"id": USERS[i % 1000]},
                    "action": "event",
                    "name": EVENT,
                    "id": "01HZX0000000000000000000AA",
                    "timestamp": 1_700_000_000,
                    "attributes": {"plan": "pro", "amount": i},
                },
                separators=(",", ":"),
            ).encode()
            for i in range(n)
        ]
        bodies = [b'{"batch":[' + b",".join(entries[i : i + batch]) + b"]}" for i in range(0, n, batch)]
    headers = {"Authorization": API_KEY, "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(host, int(port))
    base = _sink_events(url)
    gc.collect()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for body in bodies:
        conn.request("POST", path, body, headers)
        conn.getresponse().read()
    got = _wait_events(url, base + n) - base
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    conn.close()
    return {"events_s": got / elapsed, "cpu_us": cpu / max(got, 1) * 1e6, "events": got, "expected": n}


def child_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Bytes per queued event: RSS growth with ``n`` events queued while the sink is unreachable."""
    n = spec["n"]
    lib = LIBS[spec["lib"]](spec["url"], queue_size=n + 10_000)
    track = lib.track
    users = USERS
    track(users[0], EVENT, {"plan": "pro", "amount": 0})  # start the threads first
    time.sleep(0.2)
    gc.collect()
    before = _rss_bytes()
    for i in range(n):
        track(users[i % 1000], EVENT, {"plan": "pro", "amount": i})
    gc.collect()
    after = _rss_bytes()
    queued = lib.queued()
    return {"bytes_per_event": (after - before) / max(queued, 1), "queued": queued, "n": n}


def child_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """events/s with the sink answering after ``LATENCY``, against concurrency / RTT."""
    url, n = spec["url"], spec["n"]
    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port))
    rtts = []
    for _ in range(10):
        t0 = time.perf_counter()
        conn.request("POST", "/rtt", b"{}", {"Content-Type": "application/json"})
        conn.getresponse().read()
        rtts.append(time.perf_counter() - t0)
    conn.close()
    rtt = statistics.median(rtts)
    lib = LIBS[spec["lib"]](url)
    base = _sink_events(url)
    track = lib.track
    t0 = time.perf_counter()
    for i in range(n):
        track(USERS[i % 1000], EVENT, {"plan": "pro", "amount": i})
    lib.flush()
    got = _wait_events(url, base + n) - base
    elapsed = time.perf_counter() - t0
    requests = got / lib.per_request
    bound = lib.concurrency / rtt
    return {
        "events_s": got / elapsed,
        "rtt_ms": rtt * 1000,
        "concurrency": lib.concurrency,
        "per_request": lib.per_request,
        "bound_req_s": bound,
        "share": (requests / elapsed) / bound,
    }


def child_load(spec: dict[str, Any]) -> dict[str, Any]:
    """The host-app load generator when wrk is missing: ``connections`` threads, each a closed
    loop of GETs on its own connection (reopened when the server closes it), for ``seconds``."""
    host, port = spec["url"].split("//", 1)[1].split(":")
    path, seconds, connections = spec["path"], spec["seconds"], spec["connections"]
    pause = spec.get("pause", 0.0)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    deadline = time.perf_counter() + seconds

    def run(k: int) -> None:
        conn: Optional[http.client.HTTPConnection] = None
        out = latencies[k]
        clock = time.perf_counter
        while clock() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=30)
                t0 = clock()
                conn.request("GET", path)
                answer = conn.getresponse()
                answer.read()
                out.append(clock() - t0)
                if answer.will_close:
                    conn.close()
                    conn = None
                if pause:
                    time.sleep(pause)
            except (OSError, http.client.HTTPException):
                errors[k] += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = sorted(x for out in latencies for x in out)
    if not every:
        return {"error": "no answer from the host app"}
    return {
        "requests": len(every),
        "rps": len(every) / elapsed,
        "p50_us": every[len(every) // 2] * 1e6,
        "p99_us": every[max(0, int(len(every) * 0.99) - 1)] * 1e6,
        "errors": sum(errors),
    }


#: The HTTP clients the request-cost row compares (issue 12: the fast path's CPU per request).
REQUEST_CLIENTS = ("fast", "urlopen", "http.client", "requests")


def child_request(spec: dict[str, Any]) -> dict[str, Any]:
    """CPU (this thread's time) per single-event POST over one keep-alive connection, through
    the transport's fast path, urllib3's public ``urlopen``, ``http.client`` or ``requests``."""
    url, n, client = spec["url"], spec["n"], spec["lib"]
    target = url + "/v1/persons/track"
    body = json.dumps(
        {"identifier": USERS[1], "eventName": EVENT, "properties": {"plan": "pro", "amount": 1}},
        separators=(",", ":"),
    ).encode()
    headers = {"Authorization": API_KEY, "Content-Type": "application/json"}
    send: Callable[[], object]
    close: Callable[[], object]
    if client == "fast":
        from cdp_batcher.destinations._http import HttpTransport

        transport = HttpTransport(None, pool_size=1)

        def send() -> object:
            return transport.request("POST", target, body=body, headers=headers, timeout=5.0)

        close = transport.close
    elif client == "urlopen":
        import urllib3

        pool = urllib3.HTTPConnectionPool(*url.split("//", 1)[1].split(":"), maxsize=1)

        def send() -> object:
            return pool.urlopen("POST", "/v1/persons/track", body=body, headers=headers, retries=False).data

        close = pool.close
    elif client == "http.client":
        host, port = url.split("//", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port))

        def send() -> object:
            conn.request("POST", "/v1/persons/track", body, headers)
            return conn.getresponse().read()

        close = conn.close
    else:
        import requests

        session = requests.Session()

        def send() -> object:
            return session.post(target, data=body, headers=headers, timeout=5.0).content

        close = session.close
    for _ in range(200):
        send()
    per: list[float] = []
    rounds = 7
    for _ in range(rounds):
        gc.collect()
        cpu = time.thread_time()
        for _ in range(max(1, n // rounds)):
            send()
        per.append((time.thread_time() - cpu) / max(1, n // rounds) * 1e6)
    close()
    return {"cpu_us": statistics.median(per), "min_cpu_us": min(per)}


def _spool_disk(path: str, dest: str) -> tuple[int, int]:
    """(bytes ``dest``'s segment files take on disk, their logical size) under a spool directory."""
    taken = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            if name.startswith(dest + "-") and name.endswith(".seg"):
                st = os.stat(os.path.join(root, name))
                taken += min(st.st_size, st.st_blocks * 512)
                size += st.st_size
    return taken, size


def child_spool_fill(spec: dict[str, Any]) -> dict[str, Any]:
    """``n`` calls into a spool while the gateway is unreachable; then shutdown (they stay on disk).
    Bytes on disk per event against the encoded event (the bodies the route would send)."""
    n, spool = spec["n"], spec["spool"]
    lib = LIBS[spec["lib"]](spec["url"], queue_size=n + 10_000, spool=spool)
    client: Any = lib.client  # type: ignore[attr-defined]
    route = next(r for r in client._routes if r.name == spec["dest"])
    track = lib.track
    t0 = time.perf_counter()
    for i in range(n):
        track(USERS[i % 1000], EVENT, {"plan": "pro", "amount": i})
    seconds = time.perf_counter() - t0
    stream = route.queue.stream
    with stream.lock:
        framed = sum(seg.size - 32 for seg in stream._own)  # 32: the file header
        records = stream.spooled
    report = client.shutdown(timeout=1.0)
    taken, size = _spool_disk(spool, spec["dest"])
    per = max(records, 1)
    return {
        "events": records,
        "expected": n,
        "us_per_call": seconds / n * 1e6,
        "spooled": report.spooled,
        "disk_bytes_per_event": taken / per,
        "file_bytes_per_event": size / per,
        "encoded_bytes_per_event": (framed - 10 * records) / per,  # 10: a record's frame
    }


def child_spool_drain(spec: dict[str, Any]) -> dict[str, Any]:
    """A new client on a spool holding a backlog delivers it: events/s, RSS before and at peak."""
    url, n, spool = spec["url"], spec["n"], spec["spool"]
    base = _sink_events(url)
    gc.collect()
    rss0 = _rss_bytes()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    lib = LIBS[spec["lib"]](url, spool=spool)
    got = _wait_events(url, base + n, timeout=600) - base
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    client: Any = lib.client  # type: ignore[attr-defined]
    stats = client.stats()
    return {
        "events_s": got / elapsed,
        "cpu_us": cpu / max(got, 1) * 1e6,
        "events": got,
        "expected": n,
        "rss_start_mb": rss0 / 2**20,
        "rss_peak_mb": peak / 2**20,
        "recovered": stats.recovered,
    }


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "caller": child_caller,
    "throughput": child_throughput,
    "raw": child_raw,
    "memory": child_memory,
    "latency": child_latency,
    "load": child_load,
    "spool_fill": child_spool_fill,
    "spool_drain": child_spool_drain,
    "request": child_request,
}


def child_main(spec_text: str) -> None:
    spec = json.loads(spec_text)
    try:
        result = CHILDREN[spec["test"]](spec)
    except ImportError as exc:
        result = {"error": f"not installed: {exc.name}"}
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip the libraries' exit hooks (they would flush or retry for a long time)


# ===================================================================================== parent side
class Runner:
    def __init__(self, sink: Sink, quick: bool, verbose: bool) -> None:
        self.sink = sink
        self.quick = quick
        self.verbose = verbose
        self.env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), self.env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )

    def n(self, full: int) -> int:
        return max(1_000, full // 10) if self.quick else full

    def run(self, test: str, lib: str, n: int, *, url: Optional[str] = None, **extra: Any) -> dict[str, Any]:
        spec = {"test": test, "lib": lib, "n": n, "url": url or self.sink.url, **extra}
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "child", json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=240,
                env=self.env,
            )
        except subprocess.TimeoutExpired:
            return {"error": "timed out"}
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": proc.stderr.strip()[-300:]}
        if self.verbose:
            print(f"  {test:<10} {lib:<8} {time.monotonic() - started:5.1f}s  {result}", file=sys.stderr)
        return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ceilings(sink: Sink, quick: bool) -> dict[str, float]:
    from cdp_batcher.testing import Collector

    body = json.dumps(
        {"identifier": "user-00001", "eventName": EVENT, "properties": {"plan": "pro", "amount": 1}},
        separators=(",", ":"),
    ).encode()
    request = (
        b"POST /v1/persons/track HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: bench-key\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    out = {"sink": blast(sink.port, request, 5_000 if quick else 50_000)}
    with Collector() as collector:
        out["collector"] = blast(collector.port, request, 2_000 if quick else 5_000)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"load": {"start": _load()}}
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if args.verbose else (lambda m: None)
    with Sink(procs=args.sink_procs) as sink:
        runner = Runner(sink, args.quick, args.verbose)
        if args.spool_only:
            measure_spool(runner, args, results)
            results["load"]["end"] = _load()
            return results
        if not args.host_app_only:
            measure_library(args, sink, runner, say, results)
            measure_spool(runner, args, results)
        if not args.no_host_app:
            results.update(measure_host(args, sink, runner, say))
    results["load"]["end"] = _load()
    return results


def measure_library(
    args: argparse.Namespace, sink: Sink, runner: Runner, say: Callable[[str], None], results: dict[str, Any]
) -> None:
    """The library rows: caller cost, delivery throughput, memory, latency-bound delivery."""
    say("ceilings")
    results["ceiling"] = _ceilings(sink, args.quick)
    requests0, _ = sink.totals()
    cpu0 = sink.cpu_seconds()

    say(f"caller cost (best of {CALLER_REPEATS} runs per figure, alternating)")
    calls = [("caller", lib, {}) for lib in ("cdp", "cdp_dual", "segment", "posthog")]
    calls += [("caller_nosend", lib, {"send": False}) for lib in ("cdp", "segment")]
    for _ in range(CALLER_REPEATS):
        for key, lib, extra in calls:
            got = runner.run("caller", lib, runner.n(100_000), **extra)
            best = results.setdefault(f"{key}/{lib}", got)
            for field in ("median_ns", "p99_ns", "max_ns", "harness_ns"):
                if field in got and field in best:
                    best[field] = min(best[field], got[field])

    say(f"HTTP request CPU (median of 7 rounds, best of {REPEATS} runs, alternating)")
    for _ in range(REPEATS):
        for client in REQUEST_CLIENTS:
            got = runner.run("request", client, runner.n(14_000))
            best = results.setdefault(f"request/{client}", got)
            if "cpu_us" in got and "cpu_us" in best:
                best["cpu_us"] = min(best["cpu_us"], got["cpu_us"])

    say(f"throughput (best of {REPEATS}, alternating)")
    per_event, batched = runner.n(20_000), runner.n(200_000)
    plan = [
        ("throughput/raw", "raw", "raw", per_event, {}),
        ("throughput/cdp", "throughput", "cdp", per_event, {}),
        ("batch/raw", "raw", "raw", batched, {"batch": 100}),
        ("batch/cdp_cio", "throughput", "cdp_cio", batched, {}),
    ]
    for _ in range(REPEATS):
        for key, test, lib, n, extra in plan:
            got = runner.run(test, lib, n, **extra)
            if got.get("events_s", 0) >= results.get(key, {}).get("events_s", 0):
                results[key] = got
    results["batch/segment"] = runner.run("throughput", "segment", runner.n(50_000))
    results["batch/posthog"] = runner.run("throughput", "posthog", runner.n(50_000))
    requests1, _ = sink.totals()
    cpu1 = sink.cpu_seconds()
    results["sink_cpu_us_per_request"] = (cpu1 - cpu0) / max(1, requests1 - requests0) * 1e6

    say("memory (sink unreachable)")
    dead = f"http://127.0.0.1:{_free_port()}"
    for lib in ("cdp", "cdp_dual", "segment", "posthog"):
        results[f"memory/{lib}"] = runner.run("memory", lib, runner.n(100_000), url=dead)

    say(f"latency ({LATENCY * 1000:.0f} ms per request at the sink)")
    sink.set_delay(LATENCY)
    results["latency/cdp"] = runner.run("latency", "cdp", 600 if not args.quick else 200)
    results["latency/segment"] = runner.run("latency", "segment", 3_000 if not args.quick else 1_000)
    results["latency/posthog"] = runner.run("latency", "posthog", 3_000 if not args.quick else 1_000)
    sink.set_delay(0.0)


# ------------------------------------------------------------------------------------- host app
#: The host-app rows: bench/host_app.py (the Flask recipe's shape) under gunicorn, loaded by wrk.
HOST_TRACKERS = ("cdp", "cdp_dual", "posthog", "segment")
#: gunicorn arguments and the load generator's connections (one per worker thread: no queueing
#: in front of the app, so latency is the request's own time and what tracking adds to it).
HOST_SERVERS: dict[str, tuple[list[str], int]] = {
    "sync": (["-k", "sync", "-w", "2"], 2),
    "gthread": (["-k", "gthread", "-w", "2", "--threads", "4"], 8),
}
HOST_CALLS = (1, 10)
#: The bounded load: each connection waits so that all together offer at most this many
#: requests/s (wrk's delay() hook; the Python generator sleeps likewise), well under what the
#: app serves without tracking, so that what tracking costs shows as latency and CPU time.
HOST_RATE = 400
#: Each load lasts this long (about 1,000 requests), and each configuration is measured in this
#: many rounds (its figures are the medians): one short run's p99 is its ~6th-worst request,
#: and on a loaded 2-core machine runs of one configuration differ by 2x in p99.
HOST_SECONDS = 3
HOST_REPEATS = 3
_WRK_SCRIPT = """
local pause = tonumber(os.getenv("BENCH_PAUSE_MS") or "0")
delay = function()
  return pause
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _stat(path: str) -> Optional[list[str]]:
    """The fields of a /proc ``stat`` file after the command name (which may hold spaces and
    parentheses): [0] is the state, [3] the session id, [11] and [12] user and system ticks;
    None when the process or thread is gone."""
    try:
        with open(path) as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _ticks_seconds(fields: list[str]) -> float:
    """User + system CPU seconds from a ``_stat`` row."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (int(fields[11]) + int(fields[12])) / tick


def _session(sid: int) -> list[tuple[str, list[str]]]:
    """(pid, stat fields) of every process in session ``sid`` (gunicorn's arbiter and workers,
    started in a session of their own); Linux /proc, else empty."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            fields = _stat(f"/proc/{entry}/stat")
            if fields is not None and int(fields[3]) == sid:
                found.append((entry, fields))
    return found


def _session_cpu(sid: int) -> float:
    """CPU seconds (user + system) of every process in session ``sid``; 0.0 without /proc."""
    return sum(_ticks_seconds(fields) for _, fields in _session(sid))


def _thread_cpu(sid: int, names_dir: str) -> dict[str, float]:
    """CPU seconds per thread name over every process in session ``sid``: /proc/<pid>/task/<tid>,
    named by the ``<pid>.json`` files the host app keeps in ``names_dir`` (threads of the same
    name summed; a thread not named there, gunicorn's arbiter's included, is ``other``); Linux
    /proc, else empty."""
    total: dict[str, float] = {}
    for pid, _ in _session(sid):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        try:
            with open(os.path.join(names_dir, f"{pid}.json")) as f:
                names: dict[str, str] = json.load(f)
        except (OSError, ValueError):
            names = {}
        for tid in tids:
            fields = _stat(f"/proc/{pid}/task/{tid}/stat")
            if fields is not None:
                name = names.get(tid, "other")
                total[name] = total.get(name, 0.0) + _ticks_seconds(fields)
    return total


class HostApp:
    """Start the host app under gunicorn per (server, tracker), load it, read requests/s and latency."""

    #: A directory for the app's thread names (``BENCH_THREADS``): set, each load's figures
    #: carry ``threads_us``, CPU µs per request by thread name (bench/ab_host.py --threads).
    threads_dir: Optional[str] = None

    def __init__(
        self, sink: Sink, runner: Runner, seconds: int, repeats: int, say: Callable[[str], None]
    ) -> None:
        self.sink = sink
        self.runner = runner
        self.seconds = seconds
        self.repeats = repeats
        self.say = say
        # BENCH_LOADGEN=python: the Python load generator even where wrk is installed
        self.wrk = None if os.environ.get("BENCH_LOADGEN") == "python" else shutil.which("wrk")
        fd, self._script = tempfile.mkstemp(suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(_WRK_SCRIPT)

    @property
    def generator(self) -> str:
        return "wrk (1 thread)" if self.wrk else "Python load generator (bench.py child_load, threads)"

    def close(self) -> None:
        os.unlink(self._script)

    def start(self, server: str, tracker: str) -> tuple[subprocess.Popen[bytes], str]:
        port = _free_port()
        env = dict(self.runner.env, BENCH_TRACKER=tracker, BENCH_SINK=self.sink.url)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = [sys.executable, "-m", "gunicorn", "--chdir", str(HERE), "-b", f"127.0.0.1:{port}"]
        cmd += [*HOST_SERVERS[server][0], "--graceful-timeout", "3", "--log-level", "warning", "host_app:app"]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                for _ in range(4):  # reach both workers, most likely
                    _get(url, "/track/0", timeout=2)
                return proc, url
            except (OSError, ValueError, http.client.HTTPException):
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop(proc)
        raise RuntimeError(f"the host app ({server}, {tracker}) did not start")

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(4)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the arbiter's session: its workers too
        proc.wait()

    def load(self, url: str, path: str, connections: int, seconds: int) -> dict[str, Any]:
        pause_ms = connections * 1000 // HOST_RATE
        if self.wrk:
            cmd = [self.wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
            cmd += ["-s", self._script, url + path]
            env = dict(os.environ, BENCH_PAUSE_MS=str(pause_ms))
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, env=env).stdout
            line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
            if line is None:
                return {"error": f"wrk printed no result: {out.strip()[-200:]}"}
            got: dict[str, Any] = json.loads(line[4:])
            got["rps"] = got["requests"] / (got["duration_us"] / 1e6)
            return got
        spec = {"path": path, "seconds": seconds, "connections": connections, "pause": pause_ms / 1000}
        return self.runner.run("load", "none", 0, url=url, **spec)

    def quiesce(self, limit: float = 2.0) -> None:
        """Wait (at most ``limit``) until the sink's event count stops moving: the previous
        run's backlog should not be delivered during the next run."""
        deadline = time.monotonic() + limit
        last = _sink_events(self.sink.url)
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = _sink_events(self.sink.url)
            if now == last:
                return
            last = now

    def measure(self) -> dict[str, Any]:
        """``repeats`` rounds; in each, every (server, tracker) is started afresh and loaded
        through its plan, the trackers in an order that turns by one each round (a slow phase
        of the machine falls on different trackers). Each figure is the median over the rounds
        that answered (``p99_samples``: every such round's p99); a key no round answered keeps
        its first error."""
        samples: dict[str, list[dict[str, Any]]] = {}
        results: dict[str, Any] = {}
        trackers = ("none", *HOST_TRACKERS)
        for round_ in range(self.repeats):
            turn = round_ % len(trackers)
            for server, (_, connections) in HOST_SERVERS.items():
                for tracker in trackers[turn:] + trackers[:turn]:
                    for key, got in self.measure_one(server, tracker, connections).items():
                        if "error" in got:
                            results.setdefault(key, got)
                        else:
                            samples.setdefault(key, []).append(got)
        for key, runs in samples.items():
            results[key] = _median_run(runs)
        return results

    def measure_one(
        self,
        server: str,
        tracker: str,
        connections: int,
        plan: Optional[list[tuple[float, int]]] = None,
    ) -> dict[str, dict[str, Any]]:
        """Start one (server, tracker), load it through its plan (``(sink delay, calls)`` pairs;
        default: no tracking's one load, or every delay and call count), stop it: a figure (or
        an error) per key. ``sink_us``: the sink's CPU time per request during the load."""
        self.sink.set_delay(0.0)
        try:
            proc, url = self.start(server, tracker)
        except RuntimeError as exc:
            return {f"host/{server}/{tracker}": {"error": str(exc)}}
        figures: dict[str, dict[str, Any]] = {}
        try:
            for _ in range(50):  # warm: first requests, the library's threads and connections
                _get(url, "/track/1" if tracker != "none" else "/track/0", timeout=10)
            if plan is None:
                plan = (
                    [(0.0, 0)] if tracker == "none" else [(d, n) for d in (0.0, LATENCY) for n in HOST_CALLS]
                )
            for delay, calls in plan:
                self.sink.set_delay(delay)
                self.quiesce()
                threads0 = _thread_cpu(proc.pid, self.threads_dir) if self.threads_dir else {}
                cpu0, sink0 = _session_cpu(proc.pid), self.sink.cpu_seconds()
                got = self.load(url, f"/track/{calls}", connections, self.seconds)
                key = f"host/{server}/{tracker}" + (f"/{calls}/{delay * 1000:.0f}" if calls else "")
                if got.get("requests"):
                    got["cpu_us"] = (_session_cpu(proc.pid) - cpu0) / got["requests"] * 1e6
                    got["sink_us"] = (self.sink.cpu_seconds() - sink0) / got["requests"] * 1e6
                    if self.threads_dir:
                        threads = _thread_cpu(proc.pid, self.threads_dir)
                        got["threads_us"] = {
                            name: (cpu - threads0.get(name, 0.0)) / got["requests"] * 1e6
                            for name, cpu in threads.items()
                        }
                elif "error" not in got:
                    got = {"error": "no requests answered"}
                figures[key] = got
                self.say(f"  {key:<28} {got}")
        finally:
            self.sink.set_delay(0.0)
            self.stop(proc)
        return figures


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure per field: the median over the rounds (each field on its own)."""
    got: dict[str, Any] = {"runs": len(runs), "p99_samples": [r["p99_us"] for r in runs]}
    for field in ("rps", "p50_us", "p99_us", "cpu_us", "sink_us", "requests", "errors"):
        values = [r[field] for r in runs if field in r]
        if values:
            got[field] = statistics.median(values)
    return got


def measure_host(
    args: argparse.Namespace, sink: Sink, runner: Runner, say: Callable[[str], None]
) -> dict[str, Any]:
    host = HostApp(sink, runner, 1 if args.quick else HOST_SECONDS, 1 if args.quick else HOST_REPEATS, say)
    try:
        say(f"host app: gunicorn + Flask, {host.generator}")
        results = host.measure()
        results["host/generator"] = host.generator
        results["host/rounds"] = host.repeats
        return results
    finally:
        host.close()


def measure_spool(runner: Runner, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The durable spool's rows: the same figures with and without spool_dir, in this run."""
    import shutil
    import tempfile

    say = (lambda m: print(m, file=sys.stderr)) if args.verbose else (lambda m: None)
    SPOOL_ROOT.mkdir(parents=True, exist_ok=True)

    def in_spool(test: str, lib: str, n: int, *, spool: Optional[str] = None, **extra: Any) -> dict[str, Any]:
        if spool is not None:
            return runner.run(test, lib, n, spool=spool, **extra)
        d = tempfile.mkdtemp(dir=SPOOL_ROOT)
        try:
            return runner.run(test, lib, n, spool=d, **extra)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    say(f"spool: track() cost, off vs on (best of {CALLER_REPEATS}, alternating)")
    for _ in range(CALLER_REPEATS):
        for key, on in (("spool/caller_off", False), ("spool/caller_on", True)):
            n = runner.n(100_000)
            got = in_spool("caller", "cdp", n) if on else runner.run("caller", "cdp", n)
            best = results.setdefault(key, got)
            for field in ("median_ns", "p99_ns", "max_ns", "harness_ns"):
                if field in got and field in best:
                    best[field] = min(best[field], got[field])

    say(f"spool: delivery, off vs on (best of {REPEATS}, alternating)")
    per_event, batched = runner.n(20_000), runner.n(200_000)
    plan = [
        ("spool/throughput_off", "cdp", per_event, False),
        ("spool/throughput_on", "cdp", per_event, True),
        ("spool/batch_off", "cdp_cio", batched, False),
        ("spool/batch_on", "cdp_cio", batched, True),
    ]
    for _ in range(REPEATS):
        for key, lib, n, on in plan:
            got = in_spool("throughput", lib, n) if on else runner.run("throughput", lib, n)
            if got.get("events_s", 0) >= results.get(key, {}).get("events_s", 0):
                results[key] = got

    dead = f"http://127.0.0.1:{_free_port()}"
    say("spool: bytes on disk per event (per-event route)")
    results["spool/disk_opencdp"] = in_spool("spool_fill", "cdp", runner.n(50_000), url=dead, dest="opencdp")
    backlog = args.drain_events or (50_000 if args.quick else 1_000_000)
    say(f"spool: a {backlog:,}-event backlog written with the gateway down, then drained")
    d = tempfile.mkdtemp(dir=SPOOL_ROOT)
    try:
        results["spool/fill"] = runner.run(
            "spool_fill", "cdp_cio", backlog, url=dead, spool=d, dest="customerio"
        )
        results["spool/drain"] = runner.run("spool_drain", "cdp_cio", backlog, spool=d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def spool_table(results: dict[str, Any]) -> list[str]:
    """The spool rows: off, on, on/off, the target."""
    lines = []
    head = f"{'spool figure':<40}{'off':>12}{'on':>12}{'on/off':>9}  {'target':<22}{'met':<4}"
    lines += [head, "-" * len(head)]

    def row(
        label: str, off: Optional[float], on: Optional[float], target: str = "", ok: Optional[bool] = None
    ) -> None:
        mark = "" if ok is None else ("yes" if ok else "NO")
        lines.append(
            f"{label:<40}{_fmt(off):>12}{_fmt(on):>12}{_ratio(on, off):>9}  {target:<22}{mark:<4}".rstrip()
        )

    us = 1e-3
    off, on = (
        _val(results, "spool/caller_off", "median_ns", us),
        _val(results, "spool/caller_on", "median_ns", us),
    )
    row("track() µs/call, median", off, on, "on ≤ 2x off", None if not (off and on) else on <= 2 * off)
    row(
        "track() µs/call, p99 chunk",
        _val(results, "spool/caller_off", "p99_ns", us),
        _val(results, "spool/caller_on", "p99_ns", us),
    )
    for label, key in (("per-event route events/s", "throughput"), ("batch route events/s", "batch")):
        off, on = _val(results, f"spool/{key}_off", "events_s"), _val(results, f"spool/{key}_on", "events_s")
        row(label, off, on, "on ≥ 0.80 off", None if not (off and on) else on >= 0.8 * off)
        row(
            "  CPU µs/event",
            _val(results, f"spool/{key}_off", "cpu_us"),
            _val(results, f"spool/{key}_on", "cpu_us"),
        )
    drain = results.get("spool/drain") or {}
    fill = results.get("spool/fill") or {}
    off = _val(results, "spool/batch_off", "events_s")
    on = _val(results, "spool/drain", "events_s")
    n = fill.get("expected")
    label = f"drain {n:,} backlog events/s" if isinstance(n, int) else "drain backlog events/s"
    row(label, off, on, "≈ batch route rate")
    rss0, peak = drain.get("rss_start_mb"), drain.get("rss_peak_mb")
    row("  drain RSS MB: start → peak", rss0, peak, "flat")
    row("  fill: µs per call, gateway down", None, _val(results, "spool/fill", "us_per_call"))
    for dest, key in (("OpenCDP", "spool/disk_opencdp"), ("Customer.io", "spool/fill")):
        enc = _val(results, key, "encoded_bytes_per_event")
        disk = _val(results, key, "disk_bytes_per_event")
        row(
            f"bytes/event {dest}: encoded → on disk",
            enc,
            disk,
            "on ≤ 1.3x encoded",
            None if not (enc and disk) else disk <= 1.3 * enc,
        )
    return lines


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------- table
def _fmt(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "—"
    if value >= 100:
        text = f"{value:,.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return text + unit


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or b == 0:
        return "—"
    r = a / b
    if r < 0.1:
        return f"1/{1 / r:.0f}"
    return f"{r:.2f}"


def _val(results: dict[str, Any], key: str, field: str, scale: float = 1.0) -> Optional[float]:
    entry = results.get(key) or {}
    value = entry.get(field)
    return None if value is None else float(value) * scale


def table(results: dict[str, Any]) -> list[str]:
    """One row per figure: cdp_batcher, segment, posthog, raw, the ratios, the target."""
    rows: list[
        tuple[str, Optional[float], Optional[float], Optional[float], Optional[float], str, Optional[bool]]
    ] = []

    def row(
        label: str,
        cdp: Optional[float],
        seg: Optional[float],
        ph: Optional[float],
        raw: Optional[float],
        target: str = "",
        ok: Optional[bool] = None,
    ) -> None:
        rows.append((label, cdp, seg, ph, raw, target, ok))

    us = 1e-3
    cm, sm, pm = (_val(results, f"caller/{k}", "median_ns", us) for k in ("cdp", "segment", "posthog"))
    row(
        "track() µs/call, median",
        cm,
        sm,
        pm,
        None,
        "≤ 1/15 segment",
        None if not (cm and sm) else cm * 15 <= sm,
    )
    guard_ns = _val(results, "caller/cdp", "fork_guard_ns", 1.0)
    if guard_ns is not None and cm:
        row(
            "fork check ns/call (guard byte)",
            guard_ns,
            None,
            None,
            _val(results, "caller/cdp", "getpid_ns", 1.0),
            "≤ 2% of track()",
            guard_ns <= 0.02 * cm * 1000,
        )
    cp, sp, pp = (_val(results, f"caller/{k}", "p99_ns", us) for k in ("cdp", "segment", "posthog"))
    row(
        "track() µs/call, p99 chunk",
        cp,
        sp,
        pp,
        None,
        "≤ 1/5 segment",
        None if not (cp and sp) else cp * 5 <= sp,
    )
    row(
        "track() send=False µs, median",
        _val(results, "caller_nosend/cdp", "median_ns", us),
        _val(results, "caller_nosend/segment", "median_ns", us),
        None,
        None,
    )
    fast, raw_request = (
        _val(results, "request/fast", "cpu_us"),
        _val(results, "request/http.client", "cpu_us"),
    )
    row(
        "HTTP request CPU µs, fast path",
        fast,
        None,
        None,
        raw_request,
        "≤ 0.5x http.client",
        None if not (fast and raw_request) else fast <= 0.5 * raw_request,
    )
    for client in ("urlopen", "requests"):
        row(f"  through {client}", _val(results, f"request/{client}", "cpu_us"), None, None, raw_request)
    ce, re_ = _val(results, "throughput/cdp", "events_s"), _val(results, "throughput/raw", "events_s")
    row(
        "per-event route events/s",
        ce,
        None,
        None,
        re_,
        "≥ 0.60 raw",
        None if not (ce and re_) else ce >= 0.6 * re_,
    )
    cc, rc = _val(results, "throughput/cdp", "cpu_us"), _val(results, "throughput/raw", "cpu_us")
    row("per-event CPU µs/event", cc, None, None, rc, "≤ 2x raw", None if not (cc and rc) else cc <= 2 * rc)
    be = _val(results, "batch/cdp_cio", "events_s")
    row(
        "batch route events/s",
        be,
        _val(results, "batch/segment", "events_s"),
        _val(results, "batch/posthog", "events_s"),
        _val(results, "batch/raw", "events_s"),
        "≥ 100,000",
        None if be is None else be >= 100_000,
    )
    row(
        "batch route CPU µs/event",
        _val(results, "batch/cdp_cio", "cpu_us"),
        _val(results, "batch/segment", "cpu_us"),
        _val(results, "batch/posthog", "cpu_us"),
        _val(results, "batch/raw", "cpu_us"),
    )
    mc, ms, mp = (_val(results, f"memory/{k}", "bytes_per_event") for k in ("cdp", "segment", "posthog"))
    row(
        "bytes per queued event (RSS)",
        mc,
        ms,
        mp,
        None,
        "≤ 300, ≤ 1/4 seg",
        None if not (mc and ms) else mc <= 300 and mc * 4 <= ms,
    )
    lc, ls, lp = (_val(results, f"latency/{k}", "events_s") for k in ("cdp", "segment", "posthog"))
    row("latency-bound events/s", lc, ls, lp, None)
    sc, ss, sp2 = (_val(results, f"latency/{k}", "share", 100) for k in ("cdp", "segment", "posthog"))
    row("  % of in-flight/RTT bound", sc, ss, sp2, None, "≥ 90 %", None if sc is None else sc >= 90)

    head = (
        f"{'figure':<31}{'cdp_batcher':>12}{'segment':>10}{'posthog':>10}{'raw':>10}"
        f"{'cdp/seg':>9}{'cdp/ph':>9}{'cdp/raw':>9}  {'target':<18}{'met':<4}"
    )
    head = head.rstrip()
    lines = [head, "-" * len(head)]
    for label, cdp, seg, ph, raw, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        lines.append(
            f"{label:<31}{_fmt(cdp):>12}{_fmt(seg):>10}{_fmt(ph):>10}{_fmt(raw):>10}"
            f"{_ratio(cdp, seg):>9}{_ratio(cdp, ph):>9}{_ratio(cdp, raw):>9}  {target:<18}{mark:<4}".rstrip()
        )
    return lines


def dual_table(results: dict[str, Any]) -> list[str]:
    """Dual-write (OpenCDP + Customer.io) against OpenCDP alone, from the same run."""
    us = 1e-3
    rows = [
        ("track() µs/call, median", "caller", "median_ns", us, 1.6),
        ("track() µs/call, p99 chunk", "caller", "p99_ns", us, 1.6),
        ("bytes per queued event (RSS)", "memory", "bytes_per_event", 1.0, 1.8),
    ]
    head = f"{'dual-write figure':<31}{'single':>12}{'dual-write':>12}{'dual/single':>13}  {'target':<18}{'met':<4}"
    lines = [head, "-" * len(head)]
    for label, test, field, scale, limit in rows:
        single = _val(results, f"{test}/cdp", field, scale)
        dual = _val(results, f"{test}/cdp_dual", field, scale)
        ratio = None if not (single and dual) else dual / single
        mark = "" if ratio is None else ("yes" if ratio <= limit else "NO")
        lines.append(
            f"{label:<31}{_fmt(single):>12}{_fmt(dual):>12}{_fmt(ratio):>13}  {f'≤ {limit}x single':<18}{mark:<4}".rstrip()
        )
    return lines


HOST_LIBS = (
    ("cdp", "cdp_batcher"),
    ("cdp_dual", "cdp_batcher dual"),
    ("posthog", "posthog"),
    ("segment", "segment"),
)


def host_table(results: dict[str, Any]) -> list[str]:
    """One row per (server, gateway, calls per request, library): requests/s, p50, p99 and the
    app's CPU per request, each with its ratio to the same server without tracking."""
    head = (
        f"{'server':<8}{'gateway':<9}{'calls':>5}  {'library':<18}{'req/s':>7}{'x':>6}"
        f"{'p50 µs':>9}{'x':>6}{'p99 µs':>9}{'x':>6}{'CPU µs/req':>12}{'x':>6}  {'p99 per round':<15}"
    )
    lines = [head, "-" * len(head)]
    fields = (("rps", 7), ("p50_us", 9), ("p99_us", 9), ("cpu_us", 12))

    def line(
        server: str, gateway: str, calls: str, name: str, got: dict[str, Any], base: dict[str, Any]
    ) -> str:
        text = f"{server:<8}{gateway:<9}{calls:>5}  {name:<18}"
        for field, width in fields:
            value, ref = got.get(field), base.get(field)
            text += f"{_fmt(value):>{width}}"
            text += (
                f"{_fmt(value / ref) if value is not None and ref else '—':>6}"
                if got is not base
                else f"{'':>6}"
            )
        rounds = got.get("p99_samples") or []
        if len(rounds) > 1:
            text += f"  {_fmt(min(rounds))}-{_fmt(max(rounds))}"
        return text.rstrip()

    for server in HOST_SERVERS:
        base = results.get(f"host/{server}/none") or {}
        if "error" in base:
            lines.append(f"{server:<8}no tracking: {base['error']}")
        lines.append(line(server, "—", "0", "no tracking", base, base))
        for delay in (0, int(LATENCY * 1000)):
            gateway = "loopback" if delay == 0 else f"+{delay} ms"
            for calls in HOST_CALLS:
                for key, name in HOST_LIBS:
                    got = results.get(f"host/{server}/{key}/{calls}/{delay}") or {}
                    if "error" in got:
                        lines.append(f"{server:<8}{gateway:<9}{calls:>5}  {name:<18}{got['error']}")
                    else:
                        lines.append(line(server, gateway, str(calls), name, got, base))
    return lines


def host_targets(results: dict[str, Any]) -> list[str]:
    """The host-app targets: p99 added at ten calls per request, requests/s at one."""
    head = f"{'host-app target':<66}{'figure':>26}  {'met':<4}"
    lines = [head, "-" * len(head)]
    for server in HOST_SERVERS:
        base = results.get(f"host/{server}/none") or {}
        for delay in (0, int(LATENCY * 1000)):
            gateway = "loopback" if delay == 0 else f"+{delay} ms"
            for key, name in HOST_LIBS[:2]:
                got = results.get(f"host/{server}/{key}/10/{delay}") or {}
                peers = [
                    (results.get(f"host/{server}/{p}/10/{delay}") or {}).get("p99_us")
                    for p in ("posthog", "segment")
                ]
                peers_added = [p - base["p99_us"] for p in peers if p is not None and "p99_us" in base]
                if "p99_us" in got and "p99_us" in base and peers_added:
                    added, best = got["p99_us"] - base["p99_us"], min(peers_added)
                    ok = added <= 0 or (best > 0 and added * 5 <= best)
                    figure = f"{added:+,.0f} vs {best:+,.0f} µs"
                    mark = "yes" if ok else "NO"
                else:
                    figure, mark = "—", ""
                label = f"{name} p99 added, 10 calls, {server} {gateway}: ≤ 1/5 peer"
                lines.append(f"{label:<66}{figure:>26}  {mark:<4}".rstrip())
            for key, name in HOST_LIBS[:2]:
                got = results.get(f"host/{server}/{key}/1/{delay}") or {}
                if "rps" in got and base.get("rps"):
                    ratio = got["rps"] / base["rps"]
                    figure, mark = f"{ratio:.3f} of no tracking", "yes" if ratio >= 0.95 else "NO"
                else:
                    figure, mark = "—", ""
                label = f"{name} req/s, 1 call, {server} {gateway}: ≥ 0.95"
                lines.append(f"{label:<66}{figure:>26}  {mark:<4}".rstrip())
    return lines


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _versions() -> str:
    from importlib import metadata

    found = []
    for dist in ("cdp-batcher", "segment-analytics-python", "posthog", "requests", "urllib3", "msgspec"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


def _command(argv: list[str]) -> str:
    """The make command that runs bench.py with ``argv`` (bench-host is --host-app-only)."""
    extra = [a for a in argv if a != "--host-app-only"]
    base = "make bench-host" if "--host-app-only" in argv else "make bench"
    return base + (f" BENCH_ARGS='{' '.join(extra)}'" if extra else "")


def report(results: dict[str, Any], elapsed: float, command: str) -> list[str]:
    ceiling = results.get("ceiling", {})
    load = results.get("load", {})
    lines = [
        f"cdp_batcher benchmark, {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, `{command}` ({elapsed:.0f} s)",
        f"machine: {_machine()}; load average {load.get('start', '?')} at start, {load.get('end', '?')} at end",
        f"versions: {_versions()}",
        f"sink: bench/sink.py, asyncio, 1 process on 127.0.0.1; ceiling {_fmt(ceiling.get('sink'))} req/s "
        f"(pipelined single-event POSTs; the package's Collector: {_fmt(ceiling.get('collector'))} req/s); "
        f"{_fmt(results.get('sink_cpu_us_per_request'))} µs sink CPU per request during the runs",
        "",
        *([] if "spool/caller_on" not in results else [*spool_table(results), ""]),
    ]
    if "caller/cdp" in results:
        lines += [*table(results), "", *dual_table(results), ""]
    if any(k.startswith("host/") for k in results):
        rounds = results.get("host/rounds", 1)
        lines += [
            f"host app: bench/host_app.py (Flask) under gunicorn (sync: -w 2, 2 connections; gthread: -w 2 "
            f"--threads 4, 8 connections), {results.get('host/generator', '?')}, at most {HOST_RATE} req/s "
            "offered; x = ratio to the same server without tracking; CPU = the app's processes (workers "
            "and their tracking threads), not the sink's; each figure the median of "
            f"{rounds} round{'s' if rounds != 1 else ''} (every configuration started afresh in each, "
            "the order turned by one each round)",
            "",
            *host_table(results),
            "",
            *host_targets(results),
            "",
        ]
    notes = []
    harness = _val(results, "caller/cdp", "harness_ns", 1e-3)
    if harness is not None:
        notes.append(
            f"track() figures include the loop and a fresh properties dict per call ({harness:.2f} µs, "
            "measured with a no-op call); 100 chunks of 1,000 calls after 1,000 warm-up calls and a "
            f"gc.collect(); each figure the best of {CALLER_REPEATS} runs; throughput the best of {REPEATS}."
        )
    if "request/fast" in results:
        notes.append(
            "HTTP request CPU: one single-event POST at a time over one keep-alive connection, this thread's "
            "CPU time per request (median of 7 rounds, best of 3 runs): the transport's fast path against "
            "urllib3's public urlopen, http.client (the raw column) and requests.Session.post."
        )
    if "throughput/cdp" in results:
        notes.append(
            "per-event: OpenCDP route (up to 10 requests in flight, adaptive) vs raw = one keep-alive http.client "
            "connection posting pre-encoded bodies; batch: Customer.io route (OpenCDP replaced by a no-op) vs "
            "segment/posthog batches vs raw 100-entry bodies; CPU = process CPU time / events delivered."
        )
    if "memory/cdp" in results:
        mem = [
            f"{k}: {results.get(f'memory/{k}', {}).get('queued', '?')}"
            for k in ("cdp", "cdp_dual", "segment", "posthog")
        ]
        notes.append(
            "memory: 100,000 calls while the sink port is closed; events still queued: " + ", ".join(mem)
        )
    if "spool/drain" in results:
        notes.append(
            "spool: the same children with spool_dir (a fresh directory under .bench/spool), max_spool_bytes "
            "4 GiB, no fsync; drain: a client on a directory holding the backlog (written with the gateway "
            "down by the fill child) delivers it on the Customer.io batch route, compared with that route's "
            "spool-off rate; RSS of the drain child at start and its peak (ru_maxrss); bytes on disk = "
            "blocks taken by the segment files / records, encoded = the body the route sends."
        )
    lat = results.get("latency/cdp", {})
    if "rtt_ms" in lat:
        parts = []
        for k in ("cdp", "segment", "posthog"):
            r = results.get(f"latency/{k}", {})
            if "bound_req_s" in r:
                parts.append(f"{k} {r['concurrency']}x{r['per_request']} events/request")
        notes.append(
            f"latency: sink adds {LATENCY * 1000:.0f} ms, measured RTT {lat['rtt_ms']:.1f} ms; bound = requests "
            f"in flight / RTT ({', '.join(parts)})"
        )
    for key, value in results.items():
        if isinstance(value, dict) and "error" in value:
            notes.append(f"{key}: {value['error']}")
        elif isinstance(value, dict) and value.get("events") not in (None, value.get("expected")):
            notes.append(f"{key}: the sink counted {value['events']} of {value['expected']} events")
    return lines + [f"- {note}" for note in notes]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "child":
        child_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description="cdp_batcher benchmark (see bench/bench.py)")
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--sink-procs", type=int, default=1, help="sink worker processes (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each child's result")
    parser.add_argument(
        "--host-app-only", action="store_true", help="only the host-app rows (gunicorn + wrk)"
    )
    parser.add_argument("--no-host-app", action="store_true", help="skip the host-app rows")
    parser.add_argument("--spool-only", action="store_true", help="only the durable spool's rows")
    parser.add_argument(
        "--drain-events",
        type=int,
        default=0,
        help="the spool backlog drained (default 1,000,000; 50,000 with --quick)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    results = measure(args)
    lines = report(results, time.monotonic() - started, _command(sys.argv[1:]))
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
