"""The ``cdp-batcher`` command line: ``collector``, ``import`` and ``ping``.

Configuration comes from flags or from the environment variables that
:meth:`CDPClient.from_env` reads (``CDP_API_KEY``, ``CDP_ENDPOINT``, ``CDP_FALLBACK_ENDPOINTS``,
``CUSTOMERIO_SITE_ID``, ``CUSTOMERIO_API_KEY``, ``CUSTOMERIO_REGION``, ``CUSTOMERIO_URL``); a flag
wins over its variable. Keys are never printed.

Exit status: 0 when everything was delivered (or, for ``--dry-run``, every row is valid), 1 when
anything failed (a bad row, an event not delivered, a ping that no host answered), 2 for a usage
or configuration error, 130 when interrupted.

The import streams its file: JSON Lines line by line, a JSON array through a small incremental
splitter, CSV through :mod:`csv`; the client's queue is bounded and the importer waits for room
(backpressure), so memory stays flat whatever the file's size and no event is dropped.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import logging
import os
import stat
import sys
import time
from collections.abc import Mapping
from typing import Any, BinaryIO, Callable, Optional, TextIO

from ._client import CDPClient, wait_for_room
from ._config import MAX_CONCURRENT_REQUESTS_CAP, ClientConfig
from ._errors import ConfigError, DeliveryError, ValidationError
from ._import import CHUNK, CountingReader, FileFormatError, RowError, format_of, iter_rows, row_call
from ._progress import Progress, format_duration
from ._spool import inspect_spool
from ._stats import DestinationStats
from ._version import __version__

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: The flags that stand for environment variables (flag destination -> variable).
ENV_FLAGS = {
    "api_key": "CDP_API_KEY",
    "endpoint": "CDP_ENDPOINT",
    "fallback_endpoints": "CDP_FALLBACK_ENDPOINTS",
    "cio_site_id": "CUSTOMERIO_SITE_ID",
    "cio_api_key": "CUSTOMERIO_API_KEY",
    "cio_region": "CUSTOMERIO_REGION",
    "cio_url": "CUSTOMERIO_URL",
    "spool_dir": "CDP_SPOOL_DIR",
}

#: When a queue reaches the high fraction of its bounds, the importer waits until it is down to the low one.
QUEUE_HIGH_WATER, QUEUE_LOW_WATER = 0.5, 0.25
#: Rows between two checks of the failure count (--max-failures).
FAILURE_CHECK_EVERY = 256


# ----------------------------------------------------------------------------- configuration
def _environment(args: argparse.Namespace) -> dict[str, str]:
    """The process environment with the connection flags laid over it."""
    env = dict(os.environ)
    for dest, variable in ENV_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            env[variable] = value
    return env


def _make_client(args: argparse.Namespace, **overrides: Any) -> CDPClient:
    for name in ("max_spool_bytes", "spool_fsync"):
        value = getattr(args, name, None)
        if value is not None:
            overrides.setdefault(name, value)
    return CDPClient.from_env(environ=_environment(args), **overrides)


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "connection (each flag overrides its environment variable; prefer the environment for keys)"
    )
    group.add_argument("--api-key", metavar="KEY", help="OpenCDP API key (CDP_API_KEY)")
    group.add_argument("--endpoint", metavar="URL", help="gateway base URL (CDP_ENDPOINT)")
    group.add_argument(
        "--fallback-endpoints",
        metavar="URLS",
        help='comma-separated failover hosts; "" disables failover (CDP_FALLBACK_ENDPOINTS)',
    )
    group.add_argument("--cio-site-id", metavar="ID", help="Customer.io site id (CUSTOMERIO_SITE_ID)")
    group.add_argument("--cio-api-key", metavar="KEY", help="Customer.io API key (CUSTOMERIO_API_KEY)")
    group.add_argument("--cio-region", choices=("us", "eu"), help="Customer.io region (CUSTOMERIO_REGION)")
    group.add_argument("--cio-url", metavar="URL", help="Customer.io Track API host (CUSTOMERIO_URL)")
    _add_spool_flags(group, with_dir=True)


def _add_spool_flags(group: Any, *, with_dir: bool) -> None:
    if with_dir:
        group.add_argument(
            "--spool-dir",
            metavar="DIR",
            help="durable spool directory: events survive a crash (CDP_SPOOL_DIR)",
        )
    group.add_argument(
        "--max-spool-bytes",
        type=int,
        metavar="N",
        help=f"disk the spool may take, all processes together (default {ClientConfig.max_spool_bytes})",
    )
    group.add_argument(
        "--spool-fsync",
        type=float,
        metavar="S",
        help="fsync the spool at most S seconds apart (default: never)",
    )


# ----------------------------------------------------------------------------- output
class _Console:
    """stdout for results, stderr for progress and messages (through the progress bar)."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.progress: Optional[Progress] = None

    def result(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.write_line(text)
        else:
            self.err.write(text + "\n")
            self.err.flush()


class _ConsoleLogHandler(logging.Handler):
    def __init__(self, console: _Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console
        self.setFormatter(logging.Formatter("cdp-batcher: %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.message(self.format(record))
        except Exception:
            self.handleError(record)


# ----------------------------------------------------------------------------- import
class _Tally:
    def __init__(self, show_bad: int) -> None:
        self.rows = 0
        self.sent = 0
        self.bad = 0
        self.first_bad: Optional[int] = None
        self.show_bad = show_bad
        self.fatal: Optional[str] = None

    def bad_row(self, console: _Console, line: int, problem: str) -> None:
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = line
        if self.bad <= self.show_bad:
            console.message(f"line {line}: {problem}")
        elif self.bad == self.show_bad + 1:
            console.message(f"(more bad rows: only the first {self.show_bad} are shown; all are counted)")


def _delivered_text(client: CDPClient) -> Callable[[], str]:
    def text() -> str:
        dests = client.stats().destinations
        return "  ".join(f"{name} {d.delivered:,} delivered" for name, d in dests.items())

    return text


def _run_import(args: argparse.Namespace, console: _Console) -> int:
    try:
        fmt = format_of(args.file, args.format)
    except ConfigError as exc:
        console.message(f"import: {exc}")
        return EXIT_USAGE
    dry = bool(args.dry_run)
    overrides: dict[str, Any] = {
        "max_concurrent_requests": args.concurrency,
        "max_queue_size": args.queue_size,
    }
    if dry:
        overrides["send"] = False
        if not (args.api_key or os.environ.get("CDP_API_KEY", "").strip()):
            overrides["cdp_api_key"] = "dry-run"
    try:
        client = _make_client(args, **overrides)
    except ConfigError as exc:
        console.message(f"import: configuration: {exc}")
        return EXIT_USAGE
    try:
        if args.file == "-":
            raw: Any = getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
            total = None
        else:
            raw = open(args.file, "rb", buffering=0)  # noqa: SIM115 (closed below)
            info = os.fstat(raw.fileno())
            total = info.st_size if stat.S_ISREG(info.st_mode) else None
    except OSError as exc:
        client.shutdown(timeout=0)
        console.message(f"import: cannot open {args.file}: {exc.strerror or exc}")
        return EXIT_USAGE
    counter = CountingReader(raw)
    stream = io.BufferedReader(counter, CHUNK)
    label = "dry run" if dry else "import"
    mode = args.progress
    progress = None
    if mode != "off":
        tty = {"bar": True, "plain": False}.get(mode)
        progress = Progress(total, console.err, tty=tty, label=label, interval=args.progress_interval)
    console.progress = progress
    tally = _Tally(args.show_bad)
    extra: Callable[[], str] = (lambda: "") if dry else _delivered_text(client)
    started = time.monotonic()
    interrupted = False
    try:
        interrupted = _import_rows(
            client, stream, fmt, console, tally, counter, extra, wait=not dry, max_failures=args.max_failures
        )
    finally:
        stream.close()
    if interrupted:
        console.message("import: interrupted; delivering what was already queued (5 s at most)")
    stats = _finish(client, console, extra, tally, counter, 5.0 if interrupted else args.timeout, dry)
    if progress is not None:
        if progress.tty:
            progress.update(tally.rows, counter.count, extra(), force=True)
        progress.finish()
    console.progress = None
    ok = _report(console, args.file, fmt, tally, stats, time.monotonic() - started, dry)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if ok else EXIT_FAILED


def _import_rows(
    client: CDPClient,
    stream: BinaryIO,
    fmt: str,
    console: _Console,
    tally: _Tally,
    counter: CountingReader,
    extra: Callable[[], str],
    *,
    wait: bool,
    max_failures: int = 0,
) -> bool:
    """Send every row; True when interrupted (Ctrl-C). Stops early (``tally.fatal``) on a broken
    file or when more than ``max_failures`` events failed (0: never)."""
    calls: dict[str, Callable[..., None]] = {
        "track": client.track,
        "identify": client.identify,
        "register_device": client.register_device,
    }
    progress = console.progress
    room = functools.partial(wait_for_room, client)
    try:
        for line, row in iter_rows(stream, fmt):
            tally.rows += 1
            try:
                if isinstance(row, RowError):
                    raise row
                method, call_args, kwargs = row_call(row)
                calls[method](*call_args, **kwargs)
            except (RowError, ValidationError, TypeError, ValueError) as exc:
                tally.bad_row(console, line, str(exc))
            else:
                tally.sent += 1
                if wait:
                    room(QUEUE_HIGH_WATER, QUEUE_LOW_WATER)
                    if max_failures and not tally.sent % FAILURE_CHECK_EVERY:
                        failed = _failed_counts(client)
                        if sum(failed.values()) > max_failures:
                            tally.fatal = (
                                f"more than {max_failures:,} events failed ("
                                + ", ".join(f"{k}: {v:,}" for k, v in sorted(failed.items()))
                                + f"); "
                                f"rows after line {line} were not read (resume from there)"
                            )
                            console.message(f"import: stopped: {tally.fatal}")
                            break
            if progress is not None and progress.due():
                progress.update(tally.rows, counter.count, extra(), force=True)
    except FileFormatError as exc:
        tally.fatal = str(exc)
        console.message(f"{'dry run' if not wait else 'import'}: stopped: {exc}")
    except UnicodeDecodeError as exc:
        tally.fatal = f"the file is not UTF-8 ({exc.reason} at byte {exc.start} of a chunk)"
        console.message(f"import: stopped: {tally.fatal}")
    except csv.Error as exc:
        tally.fatal = f"CSV: {exc}"
        console.message(f"import: stopped: {tally.fatal}")
    except OSError as exc:
        tally.fatal = f"cannot read the file: {exc.strerror or exc}"
        console.message(f"import: stopped: {tally.fatal}")
    except KeyboardInterrupt:
        return True
    return False


def _failed_counts(client: CDPClient) -> dict[str, int]:
    """Failed and dropped events by reason, over every destination."""
    counts: dict[str, int] = {}
    for dest in client.stats().destinations.values():
        for reason, n in (*dest.failed.items(), *dest.dropped.items()):
            counts[reason] = counts.get(reason, 0) + n
    return counts


def _finish(
    client: CDPClient,
    console: _Console,
    extra: Callable[[], str],
    tally: _Tally,
    counter: CountingReader,
    timeout: float,
    dry: bool,
) -> Mapping[str, DestinationStats]:
    """Wait for delivery (showing progress), then shut the client down; the final counters."""
    deadline = time.monotonic() + timeout
    progress = console.progress
    try:
        while not dry:
            left = deadline - time.monotonic()
            report = client.flush(timeout=max(0.0, min(0.25, left)))
            if progress is not None and progress.due():
                progress.update(tally.rows, counter.count, extra(), force=True)
            if report.pending == 0 or left <= 0:
                break
        client.shutdown(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        client.shutdown(timeout=0)
    return client.stats().destinations


def _counts(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "0"
    return f"{total:,} (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())) + ")"


def _report(
    console: _Console,
    path: str,
    fmt: str,
    tally: _Tally,
    stats: Mapping[str, DestinationStats],
    elapsed: float,
    dry: bool,
) -> bool:
    rate = tally.rows / elapsed if elapsed > 0 else 0.0
    name = "stdin" if path == "-" else path
    if dry:
        console.result(
            f"dry run: {tally.rows:,} rows checked in {name} ({fmt}) in {format_duration(elapsed)} "
            f"({rate:,.0f} rows/s): {tally.sent:,} valid, {tally.bad:,} bad"
            + (f" (first at line {tally.first_bad})" if tally.first_bad is not None else "")
        )
        ok = tally.bad == 0 and tally.fatal is None
        if tally.fatal:
            console.result(f"dry run: stopped early: {tally.fatal}")
        console.result("dry run: OK, nothing was sent" if ok else "dry run: FAILED, nothing was sent")
        return ok
    console.result(
        f"import: {tally.rows:,} rows read from {name} ({fmt}) in {format_duration(elapsed)} "
        f"({rate:,.0f} rows/s): {tally.sent:,} sent, {tally.bad:,} bad rows skipped"
        + (f" (first at line {tally.first_bad})" if tally.first_bad is not None else "")
    )
    ok = tally.bad == 0 and tally.fatal is None
    for dest, s in stats.items():
        pending = s.queued + s.in_flight
        console.result(
            f"  {dest}: {s.delivered:,} delivered, failed {_counts(s.failed)}, "
            f"dropped {_counts(s.dropped)}, pending {pending:,}, retried {s.retried:,}"
        )
        ok = ok and s.delivered == tally.sent and not s.failed_total and not s.dropped_total and not pending
    if tally.fatal:
        console.result(f"import: stopped early: {tally.fatal}")
    console.result("import: OK" if ok else "import: FAILED (see above)")
    return ok


# ----------------------------------------------------------------------------- ping
def _run_ping(args: argparse.Namespace, console: _Console) -> int:
    try:
        client = _make_client(args, shutdown_timeout=0.0)
    except ConfigError as exc:
        console.message(f"ping: configuration: {exc}")
        return EXIT_USAGE
    hosts = client.config.endpoints
    try:
        result = client.ping(timeout=args.timeout)
    except DeliveryError as exc:
        console.message(f"ping: FAILED: {exc}")
        if exc.status_code in (401, 403):
            console.message("ping: the gateway rejected the API key: check CDP_API_KEY")
        else:
            console.message(f"ping: tried {len(hosts)} host(s): {', '.join(hosts)}")
        return EXIT_FAILED
    finally:
        client.shutdown(timeout=0)
    console.result(f"ping: OK: {result.host} answered HTTP {result.status} in {result.elapsed * 1000:.1f} ms")
    return EXIT_OK


# ----------------------------------------------------------------------------- collector
def _run_collector(args: argparse.Namespace, console: _Console) -> int:
    from . import testing

    return testing.serve(
        port=args.port,
        host=args.host,
        api_key=args.require_api_key,
        cio_site_id=args.require_cio_site_id,
        cio_api_key=args.require_cio_api_key,
    )


# ----------------------------------------------------------------------------- spool
def _run_spool_inspect(args: argparse.Namespace, console: _Console) -> int:
    try:
        info = inspect_spool(args.dir)
    except OSError as exc:
        console.message(f"spool inspect: cannot read {args.dir}: {exc.strerror or exc}")
        return EXIT_USAGE
    console.result(f"spool {info.path}: {info.records:,} record(s) not yet delivered")
    for dest, d in sorted(info.destinations.items()):
        age = d.oldest_age()
        oldest = "-" if age is None else format_duration(age)
        extra = ""
        if d.corrupt_bytes:
            extra += f", {d.corrupt_bytes:,} unreadable bytes"
        if d.newer_files:
            extra += f", {d.newer_files} file(s) of a newer format (left alone)"
        console.result(
            f"  {dest}: {d.records:,} record(s), {d.bytes:,} bytes in {d.files} file(s), oldest {oldest}{extra}"
        )
    for owner in info.owners:
        state = "alive" if owner.alive else "dead (adoptable)"
        held = sum(d.records for d in owner.destinations.values())
        console.result(f"  owner {owner.name} (pid {owner.pid}): {state}, {held:,} record(s)")
    return EXIT_OK


def _dead_records(path: str) -> int:
    try:
        info = inspect_spool(path)
    except OSError:
        return 0
    return sum(d.records for o in info.owners if not o.alive for d in o.destinations.values())


def _run_spool_drain(args: argparse.Namespace, console: _Console) -> int:
    try:
        before = inspect_spool(args.dir)
    except OSError as exc:
        console.message(f"spool drain: cannot read {args.dir}: {exc.strerror or exc}")
        return EXIT_USAGE
    try:
        client = _make_client(args, spool_dir=args.dir)
    except ConfigError as exc:
        console.message(f"spool drain: configuration: {exc}")
        return EXIT_USAGE
    total = sum(d.records for o in before.owners if not o.alive for d in o.destinations.values())
    progress = None
    if args.progress != "off":
        tty = {"bar": True, "plain": False}.get(args.progress)
        progress = Progress(
            total or None, console.err, tty=tty, label="drain", interval=args.progress_interval
        )
    console.progress = progress
    deadline = time.monotonic() + args.timeout
    done = 0
    spool = client._spool
    try:
        while time.monotonic() < deadline:
            report = client.flush(timeout=min(2.0, max(0.0, deadline - time.monotonic())))
            stats = client.stats()
            done = sum(d.delivered + d.failed_total for d in stats.destinations.values())
            if progress is not None:
                progress.update(done, done, _delivered_text(client)(), force=True)
            # Done when nothing is on disk here and no dead owner is left to adopt. The client's
            # spool adopts in the background; a pass under way has locked an owner (inspect sees
            # it alive) before its records count in stats, so finish a pass here before deciding.
            if report and stats.spooled == 0:
                if spool is not None and spool.scan():
                    continue  # adopted here: deliver those first
                if client.stats().spooled == 0 and not _dead_records(args.dir):
                    break
    finally:
        final = client.shutdown(timeout=2.0)
        if progress is not None:
            progress.finish()
        console.progress = None
    stats = client.stats()
    for name, d in stats.destinations.items():
        console.result(
            f"{name}: {d.recovered:,} recovered, {d.delivered:,} delivered, {d.failed_total:,} failed, "
            f"{d.dropped_total:,} dropped, {d.spooled:,} still on disk"
        )
    left = inspect_spool(args.dir).records
    if left or final.spooled:
        console.message(
            f"spool drain: {left:,} record(s) still in {args.dir} (gateway down, or owners alive)"
        )
        return EXIT_FAILED
    console.result(f"spool drain: {args.dir} is empty")
    return EXIT_OK


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``cdp-batcher`` argument parser (sub-commands ``collector``, ``import``, ``ping``).

    >>> build_parser().parse_args(["ping"]).command
    'ping'
    """
    parser = argparse.ArgumentParser(
        prog="cdp-batcher",
        description="OpenCDP batching client: bulk import, connectivity check, local collector.",
        epilog="Configuration: CDP_API_KEY, CDP_ENDPOINT, CDP_FALLBACK_ENDPOINTS, CUSTOMERIO_SITE_ID, "
        "CUSTOMERIO_API_KEY, CUSTOMERIO_REGION, CUSTOMERIO_URL (flags override). "
        "Exit status: 0 ok, 1 something failed, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"cdp-batcher {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    collector = sub.add_parser(
        "collector",
        help="run the local OpenCDP + Customer.io collector and print each arrival",
        description="Run the local collector (loopback only) in the foreground until Ctrl-C or SIGTERM; "
        "point CDP_ENDPOINT (and CUSTOMERIO_URL) at the URL it prints.",
    )
    collector.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port)")
    collector.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    collector.add_argument("--require-api-key", metavar="KEY", help="accept only this OpenCDP key")
    collector.add_argument("--require-cio-site-id", metavar="ID", help="accept only this Customer.io site id")
    collector.add_argument("--require-cio-api-key", metavar="KEY", help="accept only this Customer.io key")
    collector.set_defaults(run=_run_collector)

    imp = sub.add_parser(
        "import",
        help="bulk identify/track/register_device rows from a .jsonl, .json or .csv file",
        description="Send every row of FILE through the batching client. JSON rows: "
        '{"type": "track"|"identify"|"register_device", "identifier": ..., "event_name": ..., '
        '"properties": {...}} (device rows carry register_device\'s keyword arguments); type '
        "defaults to track when event_name is present, else identify. CSV: columns type, "
        "identifier, event_name; every other column is a property (JSON numbers and booleans "
        "typed, empty cells left out). Bad rows are reported by line number and skipped.",
    )
    imp.add_argument("file", metavar="FILE", help="the file to import ('-' for stdin, with --format)")
    imp.add_argument("--format", choices=("jsonl", "json", "csv"), help="default: from the file's extension")
    imp.add_argument("--dry-run", action="store_true", help="validate every row; send nothing")
    imp.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the last events' delivery at the end (default 120)",
    )
    imp.add_argument(
        "--concurrency",
        type=int,
        default=ClientConfig.max_concurrent_requests,
        help=f"OpenCDP requests in flight (default {ClientConfig.max_concurrent_requests}, "
        f"at most {MAX_CONCURRENT_REQUESTS_CAP})",
    )
    imp.add_argument(
        "--queue-size",
        type=int,
        default=ClientConfig.max_queue_size,
        metavar="N",
        help=f"events held in memory per destination (default {ClientConfig.max_queue_size}); "
        "the import waits for room",
    )
    imp.add_argument(
        "--max-failures",
        type=int,
        default=1000,
        metavar="N",
        help="stop reading when more than N events failed, e.g. a wrong key or every host down "
        "(default 1000; 0: never); the report gives the line to resume from",
    )
    imp.add_argument(
        "--show-bad", type=int, default=100, metavar="N", help="print at most N bad rows (default 100)"
    )
    imp.add_argument(
        "--progress",
        choices=("auto", "bar", "plain", "off"),
        default="auto",
        help="auto: a bar on a terminal, a line every few seconds otherwise",
    )
    imp.add_argument("--progress-interval", type=float, default=None, help=argparse.SUPPRESS)
    _add_connection_flags(imp)
    imp.set_defaults(run=_run_import)

    ping = sub.add_parser(
        "ping",
        help="check credentials and connectivity; say which gateway host answered and how fast",
    )
    ping.add_argument("--timeout", type=float, default=10.0, help="seconds per host (default 10)")
    _add_connection_flags(ping)
    ping.set_defaults(run=_run_ping)

    spool = sub.add_parser("spool", help="look into or deliver a spool directory (spool_dir)")
    spool_sub = spool.add_subparsers(dest="spool_command", metavar="ACTION")
    spool_sub.required = True
    inspect = spool_sub.add_parser(
        "inspect", help="files, records and bytes per destination, oldest record's age, owners alive or dead"
    )
    inspect.add_argument("dir", metavar="DIR")
    inspect.set_defaults(run=_run_spool_inspect)
    drain = spool_sub.add_parser(
        "drain",
        help="deliver what dead processes left in DIR; exit 0 only when DIR is empty",
        description="Adopt the files of processes that are gone and deliver them (from a cron job, "
        "or a container sharing the spool's volume). Exit 0 only when DIR holds nothing.",
    )
    drain.add_argument("dir", metavar="DIR")
    drain.add_argument("--timeout", type=float, default=600.0, help="seconds to keep trying (default 600)")
    drain.add_argument("--progress", choices=("auto", "bar", "plain", "off"), default="auto")
    drain.add_argument("--progress-interval", type=float, default=None, help=argparse.SUPPRESS)
    _add_connection_flags(drain)
    drain.set_defaults(run=_run_spool_drain)
    return parser


def main(
    argv: Optional[list[str]] = None, *, out: Optional[TextIO] = None, err: Optional[TextIO] = None
) -> int:
    """Run ``cdp-batcher`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    >>> main(["ping", "--endpoint", "http://127.0.0.1:9", "--fallback-endpoints", ""])  # doctest: +SKIP
    1
    """
    console = _Console(out or sys.stdout, err or sys.stderr)
    args = build_parser().parse_args(argv)
    library_log = logging.getLogger("cdp_batcher")
    handler = _ConsoleLogHandler(console)
    library_log.addHandler(handler)
    propagate = library_log.propagate
    library_log.propagate = False
    try:
        code: int = args.run(args, console)
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        library_log.removeHandler(handler)
        library_log.propagate = propagate
