"""The ``cdp-batcher`` command line (import, ping, collector) and ``CDPClient.from_env``.

Imports run in-process through ``cdp_batcher._cli.main`` against the ``collector`` fixture;
the console script, ``python -m cdp_batcher`` and the collector command run as subprocesses
with timeouts.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

import pytest

from cdp_batcher import CDPClient, ConfigError
from cdp_batcher._cli import main
from cdp_batcher._import import FileFormatError, RowError, iter_json_array, iter_rows, row_call
from cdp_batcher._progress import Progress, format_duration
from cdp_batcher.testing import Collector

from conftest import API_KEY, ENV_VARS

pytestmark = pytest.mark.timeout(30)

SECRET = "sk-very-secret-4242"
CIO_SECRET = "cio-very-secret-9191"

ROWS: list[dict[str, Any]] = [
    {"type": "identify", "identifier": "u1", "properties": {"plan": "pro", "age": 41}},
    {"identifier": "u1", "event_name": "signup", "properties": {"amount": 9.5, "vip": True}},
    {"identifier": "u2", "properties": {"name": "Bo"}},
    {
        "type": "register_device",
        "identifier": "u1",
        "device_id": "d1",
        "platform": "ios",
        "apn_token": "tok",
        "os_version": "17.1",
    },
]
CSV_TEXT = (
    "type,identifier,event_name,plan,age,amount,vip,name,device_id,platform,apn_token,os_version\n"
    "identify,u1,,pro,41,,,,,,,\n"
    "track,u1,signup,,,9.5,true,,,,,\n"
    ",u2,,,,,,Bo,,,,\n"
    "register_device,u1,,,,,,,d1,ios,tok,17.1\n"
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def conn(collector: Collector, key: str = API_KEY) -> list[str]:
    return ["--api-key", key, "--endpoint", collector.url, "--fallback-endpoints", ""]


def write(path: Path, fmt: str, rows: list[dict[str, Any]]) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=2))
    else:
        path.write_text(CSV_TEXT)
    return path


def bodies(collector: Collector) -> list[str]:
    return sorted(json.dumps(e["body"], sort_keys=True) for e in collector.events())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ------------------------------------------------------------------------------------ import
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_import_delivers_every_row_of_each_format(collector: Collector, tmp_path: Path, fmt: str) -> None:
    """The three formats become the same identify/track/register_device calls, all delivered."""
    path = write(tmp_path / f"rows.{fmt}", fmt, ROWS)
    code, out, _ = run_cli("import", str(path), *conn(collector))
    assert code == 0, out
    assert "import: OK" in out and "4 sent, 0 bad" in out
    assert "opencdp: 4 delivered" in out
    assert bodies(collector) == sorted(
        json.dumps(b, sort_keys=True)
        for b in (
            {"identifier": "u1", "properties": {"plan": "pro", "age": 41}},
            {"identifier": "u1", "eventName": "signup", "properties": {"amount": 9.5, "vip": True}},
            {"identifier": "u2", "properties": {"name": "Bo"}},
            {"identifier": "u1", "deviceId": "d1", "platform": "ios", "apnToken": "tok", "osVersion": "17.1"},
        )
    )


JSONL_BAD = [
    '{"identifier": "u", "event_name": "ok"}',
    "",
    '{"identifier": "", "event_name": "x"}',
    "not json",
    '{"identifier": "u", "event": "x"}',
    '{"type": "register_device", "identifier": "u", "device_id": "d", "platform": "nokia", "apn_token": "t"}',
    '{"identifier": "u", "event_name": "e", "properties": [1]}',
    '{"identifier": "u", "event_name": "ok"}',
]
JSON_BAD = """[
  {"identifier": "u", "event_name": "ok"},
  {"identifier": "", "event_name": "x"},
  {"identifier": "u",
   "event": "x"},
  42,
  {"identifier": "u", "event_name": "ok"}
]"""
CSV_BAD = (
    "type,identifier,event_name,n\n"
    "track,u,ok,1\n"
    "track,,x,1\n"
    "bogus,u,x,1\n"
    'track,u,"two\nlines",1\n'
    "track,u,ok\n"
    "identify,u,x,1\n"
)
BAD_CASES = {
    "jsonl": (
        "\n".join(JSONL_BAD) + "\n",
        {
            3: "Identifier cannot be empty",
            4: "invalid JSON",
            5: "unknown field(s) for identify rows: 'event'",
            6: "platform must be one of",
            7: "properties must be a mapping",
        },
        2,
    ),
    "json": (
        JSON_BAD,
        {
            3: "Identifier cannot be empty",
            4: "unknown field(s)",
            6: "a row must be a JSON object, got a number",
        },
        2,
    ),
    "csv": (
        CSV_BAD,
        {
            3: "Identifier cannot be empty",
            4: "type must be one of",
            7: "row has 3 values, the header has 4 columns",
            8: "unknown field(s) for identify rows: 'event_name'",
        },
        2,
    ),
}


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_dry_run_reports_bad_rows_by_line_and_sends_nothing(
    collector: Collector, tmp_path: Path, fmt: str
) -> None:
    """--dry-run validates every row, names each bad one by its line, exits 1 and sends nothing."""
    text, problems, good = BAD_CASES[fmt]
    path = tmp_path / f"bad.{fmt}"
    path.write_text(text)
    code, out, err = run_cli("import", str(path), "--dry-run", *conn(collector))
    assert code == 1
    for line, message in problems.items():
        assert f"line {line}: {message}" in err, err
    assert err.count("line ") == len(problems)
    assert f"{good} valid, {len(problems)} bad (first at line {min(problems)})" in out
    assert "FAILED, nothing was sent" in out
    assert collector.requests == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_real_run_skips_bad_rows_and_delivers_the_rest(
    collector: Collector, tmp_path: Path, fmt: str
) -> None:
    """A bad row never poisons the others: it is reported and skipped, the rest arrive, exit 1."""
    text, problems, good = BAD_CASES[fmt]
    path = tmp_path / f"bad.{fmt}"
    path.write_text(text)
    code, out, err = run_cli("import", str(path), *conn(collector))
    assert code == 1
    assert f"{good} sent, {len(problems)} bad rows skipped" in out
    assert f"opencdp: {good} delivered" in out
    assert collector.count() == good
    assert all(f"line {line}:" in err for line in problems)


def test_show_bad_limits_the_lines_printed_but_counts_all(collector: Collector, tmp_path: Path) -> None:
    """--show-bad N prints N bad rows and a note; the report still counts every one."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"identifier": ""}\n' * 5)
    code, out, err = run_cli("import", str(path), "--dry-run", "--show-bad", "2", *conn(collector))
    assert code == 1
    assert err.count("Identifier cannot be empty") == 2
    assert "only the first 2 are shown" in err
    assert "0 valid, 5 bad" in out


def test_delivery_failure_exits_1_with_the_reason(collector: Collector, tmp_path: Path) -> None:
    """Rows the gateway rejects (a wrong key: HTTP 401) make the report fail and the exit 1."""
    path = write(tmp_path / "rows.jsonl", "jsonl", ROWS)
    code, out, _ = run_cli("import", str(path), *conn(collector, key="wrong-key"))
    assert code == 1
    assert "opencdp: 0 delivered, failed 4 (http_401: 4)" in out
    assert "import: FAILED" in out


def test_import_stops_early_when_everything_fails(collector: Collector, tmp_path: Path) -> None:
    """A wrong key fails every event: past --max-failures the import stops reading and names the
    line to resume from, instead of pushing a whole file into rejections."""
    rows = [{"identifier": "u", "event_name": "e", "properties": {"seq": i}} for i in range(3000)]
    path = write(tmp_path / "many.jsonl", "jsonl", rows)
    argv = ["--max-failures", "50", "--queue-size", "100", *conn(collector, key="wrong-key")]
    code, out, err = run_cli("import", str(path), *argv)
    assert code == 1
    assert "import: stopped: more than 50 events failed (http_401: " in err
    assert "rows after line 256 were not read (resume from there)" in err
    assert "256 rows read" in out and "stopped early" in out
    assert len(collector.requests) == 256


def test_usage_and_configuration_errors_exit_2(collector: Collector, tmp_path: Path) -> None:
    """No key, an unknown extension or a missing file: exit 2 with a message naming the problem."""
    rows = write(tmp_path / "rows.jsonl", "jsonl", ROWS)
    code, _, err = run_cli("import", str(rows), "--endpoint", collector.url)
    assert code == 2 and "CDP_API_KEY is not set" in err
    other = tmp_path / "rows.txt"
    other.write_text("{}")
    code, _, err = run_cli("import", str(other), *conn(collector))
    assert code == 2 and "use .jsonl, .json or .csv, or --format" in err
    code, _, err = run_cli("import", str(tmp_path / "missing.jsonl"), *conn(collector))
    assert code == 2 and "cannot open" in err
    code, _, err = run_cli("import", str(rows), "--cio-site-id", "site", *conn(collector))
    assert code == 2 and "CUSTOMERIO_SITE_ID is set but CUSTOMERIO_API_KEY is not" in err
    assert collector.requests == []


def test_a_json_file_that_is_not_an_array_fails(collector: Collector, tmp_path: Path) -> None:
    """A .json file must hold one array: anything else stops the import with a clear message."""
    path = tmp_path / "obj.json"
    path.write_text('{"identifier": "u"}')
    code, out, err = run_cli("import", str(path), "--dry-run", *conn(collector))
    assert code == 1
    assert "line 1: a .json file must hold one array of row objects" in err
    assert "stopped early" in out


def test_import_waits_for_room_and_never_drops(collector: Collector, tmp_path: Path) -> None:
    """With a queue far smaller than the file, backpressure holds the reader: nothing is dropped."""
    rows = [{"identifier": f"u{i % 7}", "event_name": "e", "properties": {"seq": i}} for i in range(1500)]
    path = write(tmp_path / "many.jsonl", "jsonl", rows)
    code, out, _ = run_cli("import", str(path), "--queue-size", "40", "--concurrency", "4", *conn(collector))
    assert code == 0, out
    assert "opencdp: 1,500 delivered, failed 0, dropped 0, pending 0" in out
    seqs = sorted(e["body"]["properties"]["seq"] for e in collector.events())
    assert seqs == list(range(1500))


def _big_file(path: Path, fmt: str, n: int) -> int:
    pad = "x" * 1000
    rows = (
        {"identifier": f"user-{i}", "event_name": "viewed", "properties": {"i": i, "pad": pad}}
        for i in range(n)
    )
    with open(path, "w", newline="") as f:
        if fmt == "jsonl":
            for r in rows:
                f.write(json.dumps(r) + "\n")
        elif fmt == "json":
            f.write("[\n")
            for i, r in enumerate(rows):
                f.write(("," if i else "") + json.dumps(r) + "\n")
            f.write("]\n")
        else:
            w = csv.writer(f)
            w.writerow(["identifier", "event_name", "i", "pad"])
            for r in rows:
                w.writerow([r["identifier"], r["event_name"], r["properties"]["i"], pad])
    return path.stat().st_size


def peak_rss(argv: list[str], env: dict[str, str], timeout: float = 60.0) -> tuple[int, int, str]:
    """Run ``python -m cdp_batcher ARGV``: (exit status, peak RSS in bytes, output)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdp_batcher", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, usage.ru_maxrss * 1024, out.read()


@pytest.mark.slow  # make test runs it; the matrix cells skip it (CI time)
@pytest.mark.timeout(90)
def test_peak_memory_stays_flat_on_20000_row_files(collector: Collector, tmp_path: Path) -> None:
    """Streamed reading and a bounded queue: on 20,000-row files (~20 MB) the importer's peak RSS
    grows by a small fraction of the file over a 20-row baseline, in dry runs of every format and
    in a real run (where the queue, not the file, bounds what is held)."""
    env = _env(collector)
    for fmt in ("jsonl", "json", "csv"):
        small, big = tmp_path / f"small.{fmt}", tmp_path / f"big.{fmt}"
        _big_file(small, fmt, 20)
        size = _big_file(big, fmt, 20_000)
        base = peak_rss(["import", str(small), "--dry-run", "--progress", "off"], env)
        code, rss, out = peak_rss(["import", str(big), "--dry-run", "--progress", "off"], env)
        assert base[0] == 0 and code == 0, out
        assert "20,000 valid, 0 bad" in out
        assert rss - base[1] < size / 5, f"{fmt}: grew {rss - base[1]:,} bytes for a {size:,}-byte file"
    real = ["--queue-size", "2000", "--concurrency", "10", "--progress", "off"]
    base = peak_rss(["import", str(tmp_path / "small.jsonl"), *real], env)
    code, rss, out = peak_rss(["import", str(tmp_path / "big.jsonl"), *real], env)
    size = (tmp_path / "big.jsonl").stat().st_size
    assert base[0] == 0 and code == 0, out
    assert "opencdp: 20,000 delivered, failed 0, dropped 0, pending 0" in out
    assert rss - base[1] < size / 5, f"real run: grew {rss - base[1]:,} bytes for a {size:,}-byte file"
    assert collector.count() == 20_020


def test_progress_lines_when_not_a_terminal(collector: Collector, tmp_path: Path) -> None:
    """Off a terminal, progress is plain periodic lines on stderr (rows, rate, percentage)."""
    path = write(tmp_path / "rows.jsonl", "jsonl", ROWS * 50)
    code, _, err = run_cli(
        "import", str(path), "--progress", "plain", "--progress-interval", "0", *conn(collector)
    )
    assert code == 0
    lines = [x for x in err.splitlines() if x.startswith("import: ")]
    assert lines and "rows/s" in lines[-1] and "%" in lines[-1]
    assert "\r" not in err


# ------------------------------------------------------------------------------------ ping
def test_ping_names_the_host_that_answered_and_how_fast(collector: Collector) -> None:
    """ping prints the gateway host that answered, the status and the time; exit 0."""
    code, out, _ = run_cli("ping", *conn(collector))
    assert code == 0
    assert f"ping: OK: {collector.url} answered HTTP 200 in " in out and " ms" in out


def test_ping_fails_over_and_reports_which_host_answered(collector: Collector) -> None:
    """A dead primary is skipped: the fallback that answered is the one named."""
    dead = f"http://127.0.0.1:{closed_port()}"
    code, out, _ = run_cli(
        "ping", "--api-key", API_KEY, "--endpoint", dead, "--fallback-endpoints", collector.url
    )
    assert code == 0
    assert f"{collector.url} answered" in out


def test_ping_with_every_host_down_exits_1_naming_them() -> None:
    """No host answers: exit 1, and the message names every host tried."""
    a, b = f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"
    code, out, err = run_cli(
        "ping", "--api-key", SECRET, "--endpoint", a, "--fallback-endpoints", b, "--timeout", "2"
    )
    assert code == 1 and out == ""
    assert "ping: FAILED" in err and a in err and b in err


# ------------------------------------------------------------------------------------ secrets
def test_keys_never_appear_in_any_output(collector: Collector, tmp_path: Path) -> None:
    """Whatever happens (success, rejection, hosts down, config errors), no key is printed."""
    path = write(tmp_path / "rows.jsonl", "jsonl", ROWS)
    cio = ["--cio-site-id", "site", "--cio-api-key", CIO_SECRET, "--cio-url", collector.url]
    dead = f"http://127.0.0.1:{closed_port()}"
    runs = [
        ("ping", *conn(collector, key=SECRET)),
        ("ping", "--api-key", SECRET, "--endpoint", dead, "--fallback-endpoints", "", "--timeout", "2"),
        ("import", str(path), *conn(collector, key=SECRET), *cio),
        ("import", str(path), "--dry-run", *conn(collector, key=SECRET)),
        ("import", str(path), "--cio-api-key", CIO_SECRET, *conn(collector, key=SECRET)),
        ("import", str(path), "--cio-region", "eu", *cio, *conn(collector, key=SECRET)),
    ]
    for argv in runs:
        _, out, err = run_cli(*argv)
        assert SECRET not in out + err and CIO_SECRET not in out + err, argv


# ------------------------------------------------------------------------------------ parsing units
def test_json_array_splitter_survives_any_chunk_boundary() -> None:
    """Strings holding brackets, commas, quotes and escapes split right at every chunk size."""
    rows = [
        {"identifier": "a,b", "event_name": 'q"[{', "properties": {"s": "]},\\", "n": [1, [2, {"x": "}"}]]}},
        {"identifier": "é ünï", "properties": {"t": '\\\\"', "u": "\u2028"}},
        [1, 2],
        "text",
        3.5,
    ]
    data = json.dumps(rows, ensure_ascii=False, indent=1).encode()
    for chunk in (1, 2, 3, 5, 7, 64, 1 << 16):
        elements = list(iter_json_array(io.BytesIO(data), chunk_size=chunk))
        assert [json.loads(e) for _, e in elements] == rows, chunk
    assert next(line for line, _ in iter_json_array(io.BytesIO(data), chunk_size=3)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "the file is empty"),
        (b"  {}", "line 1: a .json file must hold one array"),
        (b'\n[{"a": 1}, {"b": ', "line 2: the file ends inside the array"),
        (b'[{"a": 1]]', "line 1: mismatched"),
        (b'x [{"a": 1}]', "a .json file must hold one array"),
    ],
)
def test_json_array_splitter_rejects_broken_files(text: bytes, message: str) -> None:
    """Structural damage is a FileFormatError with the line, never a silent partial read."""
    with pytest.raises(FileFormatError, match=message.replace("(", r"\(").replace(".", r"\.")):
        list(iter_json_array(io.BytesIO(text), chunk_size=4))


def test_json_array_empty_and_trailing_comma() -> None:
    """An empty array yields nothing; a trailing comma is tolerated; ``,,`` is an empty element."""
    assert list(iter_json_array(io.BytesIO(b"[ ]"))) == []
    assert [e for _, e in iter_json_array(io.BytesIO(b"[1,2,]"))] == [b"1", b"2"]
    assert [e for _, e in iter_json_array(io.BytesIO(b"[1,,2]"))] == [b"1", b"", b"2"]
    rows = list(iter_rows(io.BytesIO(b"[1,,2]"), "json"))
    assert isinstance(rows[1][1], RowError)


def test_csv_cells_are_typed_like_json() -> None:
    """JSON numbers and booleans are typed; leading zeros, text and 'null' stay strings; empty cells go."""
    text = b"identifier,a,b,c,d,e,f,g\nu,42,-1.5e3,true,false,007,null,\n"
    ((line, row),) = list(iter_rows(io.BytesIO(text), "csv"))
    assert line == 2
    assert row == {
        "identifier": "u",
        "properties": {"a": 42, "b": -1500.0, "c": True, "d": False, "e": "007", "f": "null"},
    }


def test_row_type_defaults_and_device_arguments() -> None:
    """type defaults to track with an event_name, identify without; device rows pass keywords."""
    assert row_call({"identifier": "u", "event_name": "e"})[0] == "track"
    assert row_call({"identifier": "u", "properties": {"a": 1}}) == ("identify", ("u", {"a": 1}), {})
    method, args, kwargs = row_call(
        {"type": "register_device", "identifier": "u", "device_id": "d", "platform": "web", "fcm_token": "t"}
    )
    assert (method, args) == ("register_device", ("u",))
    assert kwargs == {"device_id": "d", "platform": "web", "fcm_token": "t"}
    with pytest.raises(RowError, match="a row must be a JSON object, got an array"):
        row_call([1])
    with pytest.raises(RowError, match="type must be one of"):
        row_call({"type": "alias", "identifier": "u"})


def test_progress_bar_on_a_terminal_redraws_one_line() -> None:
    """On a terminal the bar redraws in place with percentage, rate and ETA; messages clear it."""
    now = [100.0]
    stream = io.StringIO()
    bar = Progress(1000, stream, tty=True, label="import", clock=lambda: now[0])
    now[0] += 2.0
    bar.update(rows=50, bytes_read=250)
    bar.write_line("line 7: bad row")
    now[0] += 2.0
    bar.update(rows=100, bytes_read=500, extra="opencdp 90 delivered")
    bar.finish()
    text = stream.getvalue()
    assert text.startswith("\rimport: [")
    assert " 25%  50 rows  25 rows/s  ETA 0:06" in text
    assert "\r\x1b[Kline 7: bad row\n" in text
    assert " 50%  100 rows" in text and "opencdp 90 delivered" in text and text.endswith("\n")
    assert format_duration(3725) == "1:02:05"


# ------------------------------------------------------------------------------------ from_env
def test_from_env_reads_every_variable_and_overrides_win() -> None:
    """from_env maps each variable to its argument; keyword overrides take precedence."""
    env = {
        "CDP_API_KEY": "k",
        "CDP_ENDPOINT": "http://127.0.0.1:1/gw/",
        "CDP_FALLBACK_ENDPOINTS": " http://127.0.0.1:2 , ,http://127.0.0.1:3",
        "CUSTOMERIO_SITE_ID": "site",
        "CUSTOMERIO_API_KEY": "cio",
        "CUSTOMERIO_REGION": "EU",
        "CUSTOMERIO_URL": "http://127.0.0.1:4",
    }
    client = CDPClient.from_env(environ=env, flush_interval=0.2)
    try:
        cfg = client.config
        assert cfg.endpoints == ("http://127.0.0.1:1/gw", "http://127.0.0.1:2", "http://127.0.0.1:3")
        assert cfg.flush_interval == 0.2
        assert cfg.send_to_customer_io and cfg.customer_io is not None
        assert (cfg.customer_io.site_id, cfg.customer_io.region, cfg.customer_io.base_url) == (
            "site",
            "eu",
            "http://127.0.0.1:4",
        )
    finally:
        client.shutdown(timeout=0)
    client = CDPClient.from_env(
        environ={**env, "CDP_FALLBACK_ENDPOINTS": ""}, cdp_api_key="other", send_to_customer_io=False
    )
    try:
        assert client.config.cdp_api_key == "other"
        assert client.config.endpoints == ("http://127.0.0.1:1/gw",)
        assert client.config.customer_io is None
    finally:
        client.shutdown(timeout=0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "CDP_API_KEY is not set"),
        ({"CDP_API_KEY": " "}, "CDP_API_KEY is empty"),
        (
            {"CDP_API_KEY": "k", "CUSTOMERIO_API_KEY": "c"},
            "CUSTOMERIO_API_KEY is set but CUSTOMERIO_SITE_ID is not",
        ),
        (
            {
                "CDP_API_KEY": "k",
                "CUSTOMERIO_SITE_ID": "s",
                "CUSTOMERIO_API_KEY": "c",
                "CUSTOMERIO_REGION": "ap",
            },
            "CUSTOMERIO_REGION",
        ),
    ],
)
def test_from_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    """A missing or inconsistent variable is a ConfigError that names it."""
    with pytest.raises(ConfigError, match=message):
        CDPClient.from_env(environ=env)


def test_from_env_defaults_to_os_environ_and_dual_writes(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With both Customer.io variables set, every call also reaches Customer.io."""
    for name, value in {
        "CDP_API_KEY": API_KEY,
        "CDP_ENDPOINT": collector.url,
        "CDP_FALLBACK_ENDPOINTS": "",
        "CUSTOMERIO_SITE_ID": "site",
        "CUSTOMERIO_API_KEY": "cio-key",
        "CUSTOMERIO_URL": collector.url,
    }.items():
        monkeypatch.setenv(name, value)
    with CDPClient.from_env(flush_interval=0.05) as client:
        client.track("u1", "e", {"a": 1})
        assert client.flush(timeout=5.0)
    assert collector.count("opencdp") == 1 and collector.count("customerio") == 1


def test_async_flush_and_shutdown_return_reports(collector: Collector) -> None:
    """aflush/ashutdown give the same reports as flush/shutdown, from a coroutine."""
    client = CDPClient(cdp_api_key=API_KEY, cdp_endpoint=collector.url, cdp_fallback_endpoints=[])

    async def run() -> tuple[Any, Any]:
        client.track("u", "e")
        flushed = await client.aflush(timeout=5.0)
        client.track("u", "e2")
        return flushed, await client.ashutdown(timeout=5.0)

    flushed, closed = asyncio.run(run())
    assert flushed and flushed.delivered == 1
    assert closed and closed.delivered == 1
    assert collector.count() == 2


# ------------------------------------------------------------------------------------ subprocesses
def _env(collector: Optional[Collector] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    if collector is not None:
        env.update(CDP_API_KEY=API_KEY, CDP_ENDPOINT=collector.url, CDP_FALLBACK_ENDPOINTS="")
    return env


def test_console_script_and_module_entry_points(collector: Collector) -> None:
    """``python -m cdp_batcher`` and the ``cdp-batcher`` script run the same CLI; stdin works."""
    done = subprocess.run(
        [sys.executable, "-m", "cdp_batcher", "import", "-", "--format", "jsonl"],
        input='{"identifier": "u", "event_name": "from_stdin"}\n',
        env=_env(collector),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "import: OK" in done.stdout and collector.count() == 1
    script = Path(sys.executable).parent / "cdp-batcher"
    if not script.exists():
        pytest.skip("console script not installed (pip install -e .)")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("cdp-batcher ")


def test_collector_command_prints_each_arrival_with_a_count() -> None:
    """``cdp-batcher collector`` prints its URL, one line per arrival with #n, stops on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdp_batcher", "collector", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("collector listening on http://127.0.0.1:"), first
        url = first.split()[-1]
        client = CDPClient(cdp_api_key="any", cdp_endpoint=url, cdp_fallback_endpoints=[])
        client.track("user-7", "purchase", {"amount": 5})
        client.track("user-8", "purchase", {"amount": 6})
        assert client.shutdown(timeout=5.0)
        lines = sorted([proc.stdout.readline().strip(), proc.stdout.readline().strip()])
        assert lines[0].startswith('[opencdp] track user-7 purchase {"amount": 5}')
        assert sorted(x[-4:] for x in lines) == ["(#1)", "(#2)"]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert "collector stopped (2 opencdp events" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
