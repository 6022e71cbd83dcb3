"""The spool's storage engine alone (no routes): real files, real processes, injected crashes."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from cdp_batcher._spool import DISK, FULL, MEMORY, Crash, FileOps, Spool, _log
from cdp_batcher._spool import _format as fmt
from cdp_batcher._spool._files import PortableFileOps
from cdp_batcher._spool._log import Record, Stream

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


def take(stream: Stream, n: int = 1_000_000) -> list[Record]:
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
        out.extend(number(e[1]) for e in entries)
        stream.ack(entries)


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
    forget(spool)


def forget(spool: Spool) -> None:
    """Drop a dead spool's descriptor numbers (closed already), so that nothing closes them again
    (an at-fork hook would close whatever reused the numbers)."""
    from cdp_batcher._spool import _dir

    for stream in spool.streams.values():
        for seg in [*stream._own, *stream._adopted_all]:
            seg.fd = -1
            seg.log.fd = -1
        if stream._log is not None:
            stream._log.fd = -1
    spool._locks.clear()
    spool._held.clear()
    spool._closed = True
    _dir._live.discard(spool)


def files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------- basics
WRITE_PATHS = pytest.mark.parametrize("ops", [FileOps(), PortableFileOps()], ids=["libc-write", "os-write"])


@WRITE_PATHS
def test_append_take_ack_in_order_and_files_removed(tmp_path: Path, ops: FileOps) -> None:
    """Records come back in order; acknowledged segments are unlinked; close leaves an empty dir
    (both write paths: libc's write holding the GIL, and os.write)."""
    spool = open_spool(tmp_path, segment_bytes=2048, ops=ops)
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


def test_spooled_read_while_segments_come_and_go(tmp_path: Path) -> None:
    """``spooled`` is read without the stream's lock (flush() reports, stats()) while another
    thread rolls and deletes segments: it must never see the segment table change under it
    (it raised RuntimeError out of flush(): "dictionary changed size during iteration")."""
    spool = open_spool(tmp_path, segment_bytes=300)
    stream = spool.streams[DEST]
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                assert stream.spooled >= 0
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    reader.start()
    try:
        for i in range(3000):
            stream.append(1, body(i))
            if i % 4 == 3:
                stream.ack(take(stream, 4))
            if errors:
                break
    finally:
        stop.set()
        reader.join(10)
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert stream.spooled == 0
    spool.close()


def test_hot_path_appender_and_its_error_path(tmp_path: Path) -> None:
    """The record writer returns the count written; on an error it returns -1 (the raw libc call)
    or raises (a wrapped write), and FileOps.write then raises the OSError with its errno. A
    FileOps whose write is replaced (a test's, PortableFileOps) is used by the appender."""
    path = tmp_path / "f"
    path.write_bytes(b"")
    ops = FileOps()
    append = ops.appender()
    fd = os.open(path, os.O_WRONLY)
    try:
        assert append(fd, b"abc", 3) == 3
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abc"
    fd = os.open(path, os.O_RDONLY)  # writing to it fails with EBADF
    try:
        try:
            got = append(fd, b"abc", 3)
        except OSError as exc:  # os.write fallback (no raw libc call on this machine)
            assert exc.errno == errno.EBADF
        else:
            assert got == -1
        with pytest.raises(OSError) as info:
            ops.write(fd, b"abc")
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)

    calls: list[bytes] = []

    class Recording(FileOps):
        def write(self, fd: int, data: bytes) -> int:  # type: ignore[override]
            calls.append(data)
            return len(data)

    assert Recording().appender()(-1, b"xy", 2) == 2 and calls == [b"xy"]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        assert PortableFileOps().appender()(null, b"z", 1) == 1
    finally:
        os.close(null)


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
        got.extend(number(e[1]) for e in entries)
        stream.ack(entries)
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
    # Open: the segment is sized ahead but sparse; blocks taken follow the records.
    taken = sum(p.stat().st_blocks * 512 for p in tmp_path.rglob("*.seg"))
    assert taken <= 1000 * (len(b) + 10) + 32 + 8192
    spool.close()  # records left: the segment is cut to its last record and stays
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*.seg"))
    assert on_disk == 1000 * (len(b) + 10) + 32


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
    stream.ack([e for e in entries if number(e[1]) % 3 == 0])  # out of order, gaps
    acked = {number(e[1]) for e in entries if number(e[1]) % 3 == 0}
    abandon(spool)
    again = open_spool(tmp_path)
    assert again.scan() == 100 - len(acked)
    assert again.streams[DEST].recovered == 100 - len(acked)
    assert drain(again) == [i for i in range(100) if i not in acked]
    again.close()
    assert files(tmp_path) == []


def test_scan_waits_for_a_pass_under_way(tmp_path: Path) -> None:
    """A background pass has locked a dead owner but not yet put its records in the stream
    (inspect already sees that owner alive): a scan() called then returns only after that pass, with
    the records counted. spool drain decides it is done on this, so it never exits with records
    half-adopted (seen in CI: 'drain exit 1', 50 records recovered right after it gave up)."""
    spool = open_spool(tmp_path)
    for i in range(20):
        spool.streams[DEST].append(1, body(i))
    abandon(spool)
    again = open_spool(tmp_path)
    stream = again.streams[DEST]
    locked, release = threading.Event(), threading.Event()
    real = stream.adopt_locked

    def slow_adopt(log: Any, live: Any) -> None:
        locked.set()
        release.wait(10)
        real(log, live)

    stream.adopt_locked = slow_adopt  # type: ignore[method-assign]
    background = threading.Thread(target=again.scan)
    background.start()
    assert locked.wait(10)
    result: list[int] = []
    caller = threading.Thread(target=lambda: result.append(again.scan()))
    caller.start()
    caller.join(0.3)
    assert caller.is_alive()  # waits for the pass under way, rather than returning 0 at once
    release.set()
    caller.join(10)
    background.join(10)
    assert result == [0] and len(stream) == 20  # the background pass adopted them all
    assert drain(again) == list(range(20))
    again.close()


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
    end = len(bytes(data).rstrip(b"\0"))
    assert len(data) > end  # the segment was sized ahead (sparse)
    seg_path.write_bytes(bytes(data[: end - 7]))  # and record 49 torn
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

    def ack(e: Record) -> None:
        run.acking.add(number(e[1]))
        stream.ack([e])
        run.acked.add(number(e[1]))

    for i in range(n, n + 40):
        append(i)
    for rounds in range(4):
        entries = take(stream, 9)
        for e in sorted(entries, key=lambda e: (number(e[1]) * 7) % 5):
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
        for spool in run.spools:
            forget(spool)
    else:
        for spool in run.spools:
            abandon(spool)
    return run


@pytest.mark.slow
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


# ------------------------------------------------------------------------------- bad disks
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` mounted on ``path`` (root); yields False where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        yield False
        return
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def _fill_and_recover(spool: Spool, filler: Optional[Path]) -> None:
    """Write until the disk refuses, check the fallback, free the disk, check the way back."""
    stream = spool.streams[DEST]
    outcomes = [stream.append(1, body(i) + b" " * 300) for i in range(400)]
    assert MEMORY in outcomes, "the disk never filled"
    first_memory = outcomes.index(MEMORY)
    assert all(o == DISK for o in outcomes[:first_memory])
    assert stream.spool_errors >= 1 and stream.disk_error is not None
    assert stream.fallback == outcomes.count(MEMORY)
    # Nothing is lost: what went to memory and what is on disk all come out, in order.
    got = []
    for e in take(stream, 10_000):
        got.append(number(e[1].rstrip()))
        stream.ack([e])
    assert got == list(range(400))
    if filler is not None:
        filler.unlink()
    spool_retry = _log.RETRY_AFTER
    assert spool_retry == 0.0
    assert stream.append(1, body(1000)) == DISK  # back on disk
    assert stream.disk_error is None


@WRITE_PATHS
def test_disk_full_falls_back_to_memory_and_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ops: FileOps
) -> None:
    """ENOSPC on a small tmpfs (or EFBIG under RLIMIT_FSIZE): appends go to memory, counted, and
    return to disk once there is room (both write paths)."""
    monkeypatch.setattr(_log, "RETRY_AFTER", 0.0)
    mnt = tmp_path / "small"
    with small_tmpfs(mnt, "96k") as mounted:
        if mounted:
            spool = open_spool(mnt, segment_bytes=16 * 1024, ops=ops)
            _fill_and_recover(spool, None)  # acked segments are deleted: that frees the room
            spool.close()
            return
    # No mount here: a child process with a file size limit gets EFBIG on its segment.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
            spool = open_spool(tmp_path / "limited", segment_bytes=4096, ops=ops)
            _fill_and_recover(spool, None)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _mount(*args: str) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_read_only_directory_refused_at_open_and_at_run_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only spool directory: opening raises SpoolUnavailable naming the path; a directory
    turned read-only while writing sends appends to memory, and back to disk once writable."""
    from cdp_batcher._spool import SpoolUnavailable

    monkeypatch.setattr(_log, "RETRY_AFTER", 0.0)
    root = tmp_path / "spool"
    spool = open_spool(root, segment_bytes=2048)
    stream = spool.streams[DEST]
    assert stream.append(1, body(0)) == DISK
    # A read-only bind mount over the directory: open descriptors keep working, new files fail.
    if not (_mount("--bind", str(root), str(root)) and _mount("-o", "remount,bind,ro", str(root))):
        subprocess.run(["umount", str(root)], capture_output=True)
        spool.close()
        pytest.skip("needs mount --bind (root) for a read-only directory (root ignores chmod)")
    try:
        outcomes = [stream.append(1, body(i)) for i in range(1, 200)]
        assert MEMORY in outcomes and stream.spool_errors >= 1
        assert "Read-only" in str(stream.disk_error)
        with pytest.raises(SpoolUnavailable, match=str(root)):
            open_spool(root)
    finally:
        subprocess.run(["umount", str(root)], capture_output=True, timeout=10)
    assert stream.append(1, body(200)) == DISK
    assert [number(e[1]) for e in take(stream)] == list(range(201))
    spool.close()


def test_directory_deleted_while_writing(tmp_path: Path) -> None:
    """The spool directory removed underneath: the next maintenance pass notices, recreates it,
    and writing goes on to disk; records already written are still delivered."""
    root = tmp_path / "spool"
    spool = open_spool(root, segment_bytes=4096)
    stream = spool.streams[DEST]
    for i in range(50):
        stream.append(1, body(i))
    shutil.rmtree(root)
    spool.tick()
    assert root.is_dir() and stream.spool_errors >= 1
    for i in range(50, 100):
        assert stream.append(1, body(i)) == DISK or _log.RETRY_AFTER > 0
    assert [number(e[1]) for e in take(stream)] == list(range(100))
    abandon(spool)
    # The records written after the repair are on disk for the next process.
    again = open_spool(root)
    assert drain(again)[-1] == 99
    again.close()


def test_active_segment_deleted_underneath(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment unlinked by someone else: noticed, counted, a new segment takes the writes."""
    monkeypatch.setattr(_log, "RETRY_AFTER", 0.0)
    spool = open_spool(tmp_path)
    stream = spool.streams[DEST]
    for i in range(10):
        stream.append(1, body(i))
    os.unlink(stream._own[0].path)
    spool.tick()
    assert stream.spool_errors == 1
    for i in range(10, 20):
        assert stream.append(1, body(i)) == DISK
    assert [number(e[1]) for e in take(stream)] == list(range(20))
    abandon(spool)
    again = open_spool(tmp_path)
    assert drain(again) == list(range(10, 20))  # the unlinked file's records went with it
    again.close()


def test_max_bytes_reached_counts_spool_full(tmp_path: Path) -> None:
    """Past max_bytes appends are refused (FULL, counted); disk use stays within the bound."""
    limit = 64 * 1024
    spool = open_spool(tmp_path, max_bytes=limit, segment_bytes=8 * 1024)
    stream = spool.streams[DEST]
    outcomes = [stream.append(1, body(i)) for i in range(2000)]
    assert FULL in outcomes and stream.spool_full == outcomes.count(FULL)
    # Disk taken (segments are sized ahead, sparse: count blocks, at most the size).
    on_disk = sum(min(p.stat().st_size, p.stat().st_blocks * 512) for p in tmp_path.rglob("*.seg"))
    assert limit * 0.9 < on_disk <= limit * 1.1
    # Another process on the same directory sees the first one's bytes in its budget.
    other = open_spool(tmp_path, max_bytes=limit)
    assert other.streams[DEST].append(1, body(0)) == FULL
    other.close()
    spool.close()


# ------------------------------------------------------------------------------ processes
CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_spool_engine import open_spool, body, DEST
from pathlib import Path
spool = open_spool(Path({path!r}))
for i in range({n}):
    spool.streams[DEST].append(1, body(i))
print("ready", flush=True)
sys.stdin.read()
"""


def _spawn_writer(path: Path, n: int) -> subprocess.Popen[str]:
    code = CHILD.format(tests=str(Path(__file__).parent), path=str(path), n=n)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_flock_adoption_between_real_processes(tmp_path: Path) -> None:
    """A live writer's files are not adopted; once it is SIGKILLed they are, by one reader only."""
    proc = _spawn_writer(tmp_path, 200)
    try:
        a = open_spool(tmp_path)
        b = open_spool(tmp_path)
        assert a.scan() == 0
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()
    got_a = drain(a)
    got_b = drain(b)
    assert sorted(got_a + got_b) == list(range(200))
    assert not (set(got_a) & set(got_b))
    a.close()
    b.close()
    assert files(tmp_path) == []


READER = """
import sys
sys.path.insert(0, {tests!r})
from test_spool_engine import open_spool, drain
from pathlib import Path
spool = open_spool(Path({path!r}))
print("ready", flush=True)
sys.stdin.readline()
got = drain(spool)
spool.close()
print(" ".join(map(str, got)), flush=True)
"""


def test_two_reader_processes_race_for_a_dead_owner(tmp_path: Path) -> None:
    """Two reader processes adopt at the same moment: each record is delivered by exactly one."""
    writer = _spawn_writer(tmp_path, 500)
    writer.kill()
    writer.wait(10)
    for pipe in (writer.stdin, writer.stdout):
        assert pipe is not None
        pipe.close()
    code = READER.format(tests=str(Path(__file__).parent), path=str(tmp_path))
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        for r in readers:
            assert r.stdout is not None and r.stdout.readline().strip() == "ready"
        for r in readers:  # go together
            assert r.stdin is not None
            r.stdin.write("go\n")
            r.stdin.flush()
        outs = [r.communicate(timeout=30)[0] for r in readers]
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.wait(10)
    got = [[int(x) for x in out.split()] for out in outs]
    assert sorted(got[0] + got[1]) == list(range(500))
    assert files(tmp_path) == []


def test_fork_child_writes_its_own_files(tmp_path: Path) -> None:
    """After os.fork() the child has a new owner directory; the parent's records stay the parent's."""
    spool = open_spool(tmp_path)
    stream = spool.streams[DEST]
    for i in range(10):
        stream.append(1, body(i))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            assert spool.owner_dir != ""
            for i in range(100, 105):
                spool.streams[DEST].append(1, body(i))
            adopted = spool.scan()  # the parent is alive: nothing to adopt
            got = [number(e[1]) for e in take(spool.streams[DEST])]
            os.write(w, f"{spool.owner} {adopted} {got}".encode())
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    owner, adopted, got = data.decode().split(" ", 2)
    assert owner != spool.owner and adopted == "0"
    assert got == str(list(range(100, 105)))
    # The child died without closing: its 5 records are adoptable; the parent's 10 are not.
    other = open_spool(tmp_path)
    assert sorted(drain(other)) == list(range(100, 105))
    assert [number(e[1]) for e in take(stream)] == list(range(10))
    other.close()
    spool.close()


@pytest.mark.slow
def test_sigkill_torture(tmp_path: Path) -> None:
    """150 forked children each adopt what the dead ones left, deliver some (report, then ack)
    and write numbered records (reported once append returned); each is SIGKILLed at a random
    moment. At the end a reader drains the directory: every reported number is delivered, and a
    number is delivered twice only when a kill fell between its report and its acknowledgement
    (at most one batch of 10 per kill)."""
    rng = random.Random(1234)
    kills = 150
    written: set[int] = set()
    delivered: Counter[int] = Counter()
    next_n = 0
    deadline = time.monotonic() + 90
    for _ in range(kills):
        assert time.monotonic() < deadline
        rw, ww = os.pipe()  # numbers written
        rd, wd = os.pipe()  # numbers delivered
        start = next_n
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(rw)
                os.close(rd)
                spool = open_spool(tmp_path, segment_bytes=16 * 1024)
                spool.scan()
                stream = spool.streams[DEST]
                os.write(ww, b"go\n")
                i = start
                while True:
                    for _ in range(20):
                        if stream.append(1, body(i)) == DISK:
                            os.write(ww, b"%d\n" % i)
                        i += 1
                    entries = take(stream, 10)
                    if entries:
                        os.write(wd, b"".join(b"%d\n" % number(e[1]) for e in entries))
                        stream.ack(entries)
            finally:
                os._exit(1)
        os.close(ww)
        os.close(wd)
        # Wait until it started, then kill it at a random moment.
        ready = select.select([rw], [], [], 20)[0]
        assert ready, "child did not start"
        time.sleep(rng.uniform(0.0, 0.03))  # the random kill moment (not a wait for a thread)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        out_w = _read_all(rw)
        out_d = _read_all(rd)
        nums_w = [int(x) for x in out_w.split()[1:]] if out_w.startswith(b"go") else []
        written.update(nums_w)
        delivered.update(int(x) for x in out_d.split())
        next_n = start + 100_000
    final = open_spool(tmp_path)
    rest = drain(final)
    final.close()
    delivered.update(rest)
    missing = written - set(delivered)
    assert not missing, sorted(missing)[:20]
    dups = sum(c - 1 for c in delivered.values() if c > 1)
    assert dups <= 10 * kills
    assert files(tmp_path) == []
    print(
        f"torture: {kills} kills, {len(written)} reported, {sum(delivered.values())} delivered, {dups} duplicates"
    )


def _read_all(fd: int) -> bytes:
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data


# ------------------------------------------------------------------------------ the queue
def test_spool_queue_put_drain_resolve_give_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The durable queue: resolved items leave the disk, given-back ones stay, keep their base
    and come first after the pause; a delivery resets the pause."""
    from cdp_batcher._spool._queue import SpoolQueue, is_transient

    spool = open_spool(tmp_path)
    q = SpoolQueue(spool.streams[DEST], batch_size=10)
    for i in range(30):
        assert q.put((1, body(i)))
    assert len(q) == 30 and q.accepted == 30 and q.offered == 30
    with q.lock:
        base_a, a = q.drained, q.drain_locked(10)
        b = q.drain_locked(10)
        q.resolved_locked(b, delivered=True)
        q.give_back_locked(base_a, a)
    assert spool.streams[DEST].spooled == 20
    assert q.paused and len(q) == 0 and q.queued == 20
    with q.lock:
        assert q.take_returned_locked(100) is None  # paused
        q.resume_locked()
        again = q.take_returned_locked(100)
    assert again is not None and again[0] == base_a and [number(x[1]) for x in again[1]] == list(range(10))
    with q.lock:
        q.resolved_locked(again[1], delivered=True)
        rest = q.drain_locked(100)
        q.resolved_locked(rest, delivered=False)  # failed for good: also leaves the disk
    assert [number(x[1]) for x in rest] == list(range(20, 30))
    assert spool.streams[DEST].spooled == 0 and q.queued == 0
    assert is_transient("http_503") and is_transient("connection_error") and not is_transient("http_400")
    spool.close()


def test_inspect_reports_records_owners_and_age(tmp_path: Path) -> None:
    """spool inspect: records and bytes per destination, live and dead owners, oldest age."""
    from cdp_batcher._spool._inspect import inspect_spool

    dead = open_spool(tmp_path)
    for i in range(30):
        dead.streams[DEST].append(1, body(i))
    dead.streams[DEST].ack(take(dead.streams[DEST], 10))
    abandon(dead)
    live = open_spool(tmp_path)
    for i in range(5):
        live.streams[DEST].append(1, body(i))
    info = inspect_spool(str(tmp_path))
    assert info.records == 25
    by_alive = {o.alive: o.destinations[DEST].records for o in info.owners}
    assert by_alive == {False: 20, True: 5}
    total = info.destinations[DEST]
    assert total.files == 2 and total.bytes == sum(len(body(i)) + 10 for i in range(10, 30)) + sum(
        len(body(i)) + 10 for i in range(5)
    )
    age = total.oldest_age()
    assert age is not None and 0 <= age < 60
    live.close()  # its 5 records stay on disk for the next reader
    reader = open_spool(tmp_path)
    assert sorted(drain(reader)) == sorted([*range(10, 30), *range(5)])
    reader.close()
    assert files(tmp_path) == []
