"""The spool's storage engine alone (no routes): real files, real processes, injected crashes."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from cdp_batcher._spool import DISK, FULL, MEMORY, Crash, FileOps, Spool
from cdp_batcher._spool import _format as fmt
from cdp_batcher._spool import _log
from cdp_batcher._spool._log import Entry, Stream

pytestmark = pytest.mark.timeout(120)

DEST = "opencdp"


def open_spool(path: Path, **kw: Any) -> Spool:
    kw.setdefault("max_bytes", 1 << 30)
    kw.setdefault("background", False)
    return Spool(str(path), [DEST], **kw)


def body(n: int) -> bytes:
    return b'{"identifier":"u","eventName":"e","properties":{"n":%d}}' % n


def number(b: bytes) -> int:
    return int(b.rsplit(b":", 1)[1].rstrip(b"}"))


def take(stream: Stream, n: int = 1_000_000) -> list[Entry]:
    with stream.lock:
        return stream.take_locked(n)


def drain(spool: Spool) -> list[int]:
    """Adopt what is there, take everything, acknowledge it; the numbers in order."""
    spool.scan()
    stream = spool.streams[DEST]
    out: list[int] = []
    while True:
        entries = take(stream, 100)
        if not entries:
            return out
        out.extend(number(e.body) for e in entries)
        stream.ack([e.token for e in entries])


def abandon(spool: Spool) -> None:
    """What the death of the process does: descriptors closed (locks dropped), nothing written."""
    fds = list(spool._locks.values()) + [fd for fd, _ in spool._held.values()]
    for stream in spool.streams.values():
        for seg in [*stream._own, *stream._adopted_all]:
            fds.append(seg.fd)
        if stream._log is not None:
            fds.append(stream._log.fd)
        for seg in stream._own:
            fds.append(seg.log.fd)
    for fd in set(fds):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    spool._closed = True


def files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------- basics
def test_append_take_ack_in_order_and_files_removed(tmp_path: Path) -> None:
    """Records come back in order; acknowledged segments are unlinked; close leaves an empty dir."""
    spool = open_spool(tmp_path, segment_bytes=2048)
    stream = spool.streams[DEST]
    assert [stream.append(1, body(i)) for i in range(200)] == [DISK] * 200
    segs = [f for f in files(tmp_path) if f.endswith(".seg")]
    assert len(segs) > 3  # rolled
    assert stream.spooled == 200 and len(stream) == 200
    assert drain(spool) == list(range(200))
    assert stream.spooled == 0
    # Only the active segment (smaller than segment_bytes, all of it acknowledged) is left.
    left = [f for f in files(tmp_path) if f.endswith(".seg")]
    assert len(left) == 1 and (tmp_path / left[0]).stat().st_size <= 2048 + 200
    spool.close()
    assert files(tmp_path) == []


def test_memory_bound_spills_to_disk_and_reads_back_in_order(tmp_path: Path) -> None:
    """Past the read-ahead bound records are on disk only and are read back in order."""
    spool = open_spool(tmp_path, max_memory_records=10, segment_bytes=4096)
    stream = spool.streams[DEST]
    for i in range(500):
        assert stream.append(1, body(i)) == DISK
    assert len(stream._mem) == 10 and len(stream) == 500
    got = []
    for _ in range(20):  # interleave writes and reads
        entries = take(stream, 37)
        got.extend(number(e.body) for e in entries)
        stream.ack([e.token for e in entries])
    for i in range(500, 600):
        stream.append(1, body(i))
    got.extend(drain(spool))
    assert got == list(range(600))
    spool.close()
    assert files(tmp_path) == []


def test_bytes_on_disk_per_event(tmp_path: Path) -> None:
    """A record costs its body plus a 10-byte frame (and one 32-byte header per segment)."""
    spool = open_spool(tmp_path)
    stream = spool.streams[DEST]
    b = body(12345)
    for _ in range(1000):
        stream.append(1, b)
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*.seg"))
    assert on_disk == 1000 * (len(b) + 10) + 32
    abandon(spool)


def test_frame_parser_resyncs_after_garbage() -> None:
    """A corrupt record is skipped as a bad span; the frames after it are found again."""
    a, b, c = fmt.frame(1, b"aaaa"), fmt.frame(1, b"bbbb"), fmt.frame(0, b"cccc")
    bad = bytearray(b)
    bad[-1] ^= 0xFF
    data = a + bytes(bad) + b"\xc5\x01garbage" + c
    frames, spans, consumed = fmt.parse_frames(data, 100, eof=True)
    assert [f.body for f in frames] == [b"aaaa", b"cccc"]
    assert spans == [(100 + len(a), 100 + len(data) - len(c))]
    assert consumed == 100 + len(data)
    # Without eof a frame cut at the end is left for the next read.
    frames, spans, consumed = fmt.parse_frames(a + c[:5], 0, eof=False)
    assert [f.body for f in frames] == [b"aaaa"] and spans == [] and consumed == len(a)


# ---------------------------------------------------------------------------------- recovery
def test_dead_owner_adopted_acked_records_not_redelivered(tmp_path: Path) -> None:
    """A crashed writer's records are adopted; what it acknowledged is not delivered again."""
    spool = open_spool(tmp_path, segment_bytes=1024)
    stream = spool.streams[DEST]
    for i in range(100):
        stream.append(1, body(i))
    entries = take(stream, 60)
    stream.ack([e.token for e in entries if number(e.body) % 3 == 0])  # out of order, gaps
    acked = {number(e.body) for e in entries if number(e.body) % 3 == 0}
    abandon(spool)
    again = open_spool(tmp_path)
    assert again.scan() == 100 - len(acked)
    assert again.streams[DEST].recovered == 100 - len(acked)
    assert drain(again) == [i for i in range(100) if i not in acked]
    again.close()
    assert files(tmp_path) == []


def test_live_owner_not_adopted(tmp_path: Path) -> None:
    """Files whose owner holds its lock are left alone."""
    a = open_spool(tmp_path)
    for i in range(10):
        a.streams[DEST].append(1, body(i))
    b = open_spool(tmp_path)
    assert b.scan() == 0
    a.close()  # a clean close with records left releases them to others
    assert drain(b) == list(range(10))
    b.close()
    assert files(tmp_path) == []


def test_torn_last_record_and_corrupt_record(tmp_path: Path) -> None:
    """A torn tail and a flipped byte each lose only their record, counted in spool_corrupt."""
    spool = open_spool(tmp_path)
    stream = spool.streams[DEST]
    for i in range(50):
        stream.append(1, body(i))
    seg_path = Path(stream._own[0].path)
    abandon(spool)
    data = bytearray(seg_path.read_bytes())
    rec = len(body(0)) + 10
    data[32 + 10 * rec + 15] ^= 0x55  # inside record 10's body
    seg_path.write_bytes(bytes(data[:-7]))  # and record 49 torn
    again = open_spool(tmp_path)
    assert drain(again) == [i for i in range(49) if i != 10]
    assert again.streams[DEST].spool_corrupt == 2
    again.close()
    assert files(tmp_path) == []


def test_newer_format_version_left_alone(tmp_path: Path) -> None:
    """A segment written by a newer format version is neither read nor deleted."""
    spool = open_spool(tmp_path)
    stream = spool.streams[DEST]
    for i in range(5):
        stream.append(1, body(i))
    seg_path = Path(stream._own[0].path)
    abandon(spool)
    data = bytearray(seg_path.read_bytes())
    fields = bytearray(data[:24])
    fields[8:10] = (fmt.FORMAT_VERSION + 1).to_bytes(2, "little")
    import zlib

    data[:28] = bytes(fields) + zlib.crc32(bytes(fields)).to_bytes(4, "little")
    seg_path.write_bytes(bytes(data))
    again = open_spool(tmp_path)
    assert drain(again) == []
    assert again.streams[DEST].spool_errors == 1
    assert seg_path.exists()
    again.close()
    assert seg_path.exists()


# --------------------------------------------------------------------------- crash injection
class CrashAt(FileOps):
    """Raises Crash at the n-th file operation (and every one after: the process is dead)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0
        self.steps: list[str] = []
        self.fds: set[int] = set()  # opened through this object and not closed

    def die(self) -> None:
        """Close what the dead process held (the kernel would)."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def _step(self, name: str) -> None:
        self.calls += 1
        self.steps.append(name)
        if self.calls >= self.n:
            raise Crash(name)

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name in (
            "open",
            "close",
            "write",
            "pread",
            "fsync",
            "ftruncate",
            "rename",
            "unlink",
            "mkdir",
            "rmdir",
            "lock",
        ):
            step = object.__getattribute__(self, "_step")

            fds = object.__getattribute__(self, "fds")

            def wrapped(*a: Any, **k: Any) -> Any:
                step(name)
                result = attr(*a, **k)
                if name == "open":
                    fds.add(result)
                elif name == "close":
                    fds.discard(a[0])
                return result

            return wrapped
        return attr


class Run:
    """What one generation did, as far as its calls returned."""

    def __init__(self) -> None:
        self.attempted: set[int] = set()  # append() called
        self.appended: set[int] = set()  # append() returned DISK
        self.acking: set[int] = set()  # ack() called
        self.acked: set[int] = set()  # ack() returned
        self.spools: list[Spool] = []


def _scenario(path: Path, ops: FileOps, run: Run, n: int) -> None:
    """Write, take, acknowledge out of order, delete segments, compact the ack log, adopt a dead owner."""
    spool = Spool(str(path), [DEST], max_bytes=1 << 30, background=False, ops=ops, segment_bytes=600)
    run.spools.append(spool)
    stream = spool.streams[DEST]

    def append(i: int) -> None:
        run.attempted.add(i)
        if stream.append(1, body(i)) == DISK:
            run.appended.add(i)

    def ack(e: Entry) -> None:
        run.acking.add(number(e.body))
        stream.ack([e.token])
        run.acked.add(number(e.body))

    for i in range(n, n + 40):
        append(i)
    for rounds in range(4):
        entries = take(stream, 9)
        for e in sorted(entries, key=lambda e: (number(e.body) * 7) % 5):
            ack(e)
        if rounds == 1:
            for i in range(n + 40, n + 50):
                append(i)
    spool.scan()
    for e in take(stream, 5):
        ack(e)


def _run(path: Path, ops: FileOps, gen: int) -> Run:
    run = Run()
    try:
        _scenario(path, ops, run, gen * 1000)
    except Crash:
        assert isinstance(ops, CrashAt)
        ops.die()
    else:
        for spool in run.spools:
            abandon(spool)
    return run


def test_crash_between_every_pair_of_steps_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash at each file operation of write/ack/delete/compact/adopt: the next spool opens,
    delivers every record written and not acknowledged, never one whose acknowledgement returned,
    and ends with an empty directory."""
    monkeypatch.setattr(_log, "ACK_COMPACT_BYTES", 200)
    monkeypatch.setattr(Spool, "STALE_TMP", -1.0)
    probe = CrashAt(1 << 30)
    base = tmp_path / "probe"
    _run(base, FileOps(), 1)
    _run(base, probe, 2)  # the second generation adopts the first's files
    probe.die()
    total = probe.calls
    assert {"write", "unlink", "rename", "lock", "open", "close"} <= set(probe.steps)
    for k in range(1, total + 1):
        d = tmp_path / f"k{k}"
        first = _run(d, FileOps(), 1)
        ops = CrashAt(k)
        second = _run(d, ops, 2)
        assert ops.calls >= k  # it crashed
        recover = open_spool(d)
        delivered = drain(recover)
        counts = Counter(delivered)
        assert all(c == 1 for c in counts.values()), (k, counts.most_common(3))
        written = first.appended | second.appended
        resolved = first.acked | second.acked
        cut_short = second.acking - second.acked  # may or may not have reached the disk
        missing = written - resolved - cut_short - set(delivered)
        assert not missing, (k, ops.steps[-3:], sorted(missing)[:10])
        again = set(delivered) & resolved
        assert not again, (k, ops.steps[-3:], "acknowledged, delivered again", sorted(again)[:10])
        assert set(delivered) <= first.attempted | second.attempted
        recover.close()
        assert files(d) == [], (k, ops.steps[-3:], files(d))
