"""One destination's durable FIFO: segment files, acknowledgements, a bounded read-ahead in memory.

A :class:`Stream` appends each record with one ``os.write`` of a pre-framed record to this
process's active segment (no fsync on this path: the record is in the page cache, so it
survives the death of the process, when the call returns). Records also stay in memory while
the read-ahead has room, so delivery does not read back what was just written; past that bound
they are on disk only (a *gap*) and the reader reloads them from the segment files in order.

A record leaves the spool only when it is acknowledged (its destination resolved it). An
acknowledgement appends ``(segment, start, end)`` to the owner's append-only ack log, one
``os.write`` for all the ranges of one call; a segment whose records are all acknowledged (or
unreadable) is unlinked after that write returned. Because each destination has its own
segments and ack log, a destination that is down keeps only its own records on disk. Crash
between any two steps and the next reader finds: a record without an ack (delivered again:
the only duplicates), an ack without its segment deletion (the segment is deleted on adoption),
an ack for a segment already deleted (ignored), a compacted ack log half written (a ``.tmp``
file, ignored and removed; the rename is atomic).

Every method named ``*_locked`` expects the caller to hold :attr:`Stream.lock`.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from .. import _concurrency
from . import _format as fmt
from ._files import FileOps

if TYPE_CHECKING:
    from ._dir import Spool

__all__ = ["DISK", "DROPPED", "FULL", "MEMORY", "NO_POS", "AckLog", "Record", "Segment", "Stream"]

#: append() outcomes.
DISK, MEMORY, FULL, DROPPED = 0, 1, 2, 3

#: How much of a segment file one read takes (the reader's memory per segment).
READ_CHUNK = 256 * 1024
#: An ack log larger than this is rewritten with only the live segments' ranges.
ACK_COMPACT_BYTES = 64 * 1024
#: The active segment is replaced (and deleted) once this much of it is written and acknowledged.
ROLL_WHEN_DONE = 64 * 1024
#: After a disk error, the writer tries the disk again after this many seconds.
RETRY_AFTER = 1.0

_monotonic = time.monotonic
_pack = fmt.FRAME.pack
_crc32 = zlib.crc32
_MARK = fmt.MARK
_FRAME_HEAD = fmt.FRAME.size

#: A record handed out: ``(kind, body, pos)``; ``pos`` is ``segment id << 32 | offset``, or
#: :data:`NO_POS` for a record kept in memory only (the disk had failed). Plain tuples of atomic
#: values: the garbage collector stops tracking them, which keeps a long read-ahead cheap.
Record = tuple[int, bytes, int]
NO_POS = -1
_SHIFT = 32
_LOW = (1 << _SHIFT) - 1


class Segment:
    """A segment file in memory: where its records are, which ranges are acknowledged."""

    __slots__ = (
        "acked",
        "created_ns",
        "done",
        "fd",
        "log",
        "own",
        "path",
        "read_pos",
        "records",
        "sealed",
        "seq",
        "sid",
        "size",
        "unread",
    )

    def __init__(
        self, path: str, seq: int, fd: int, size: int, created_ns: int, log: AckLog, own: bool
    ) -> None:
        self.path = path
        self.seq = seq
        self.fd = fd  # -1: closed
        self.size = size  # end of the records (own: the write offset)
        self.created_ns = created_ns
        self.log = log
        self.own = own  # written by this process (else adopted from a dead owner)
        self.sealed = not own
        self.read_pos = fmt.HEADER_SIZE  # next offset the reader loads from disk
        self.acked: list[list[int]] = []  # merged [start, end) ranges, sorted
        self.done = 0  # bytes acknowledged or unreadable
        self.records = 0  # records on disk not yet resolved
        self.unread = 0  # adopted: records counted at adoption, not yet loaded
        self.sid = 0  # the stream's id for it (in every record position)

    def is_done(self) -> bool:
        return self.sealed and fmt.HEADER_SIZE + self.done >= self.size

    def add_range(self, start: int, end: int) -> None:
        """Record ``[start, end)`` as resolved (ranges never overlap: each record is acked once)."""
        acked = self.acked
        i = bisect.bisect_left(acked, [start, end])
        if i > 0 and acked[i - 1][1] == start:
            acked[i - 1][1] = end
            if i < len(acked) and acked[i][0] == end:
                acked[i - 1][1] = acked[i][1]
                del acked[i]
        elif i < len(acked) and acked[i][0] == end:
            acked[i][0] = start
        else:
            acked.insert(i, [start, end])

    def is_acked(self, start: int) -> bool:
        acked = self.acked
        i = bisect.bisect_right(acked, [start, 1 << 62]) - 1
        return i >= 0 and acked[i][0] <= start < acked[i][1]


class AckLog:
    """The append-only acknowledgement log of one (owner, destination)."""

    __slots__ = ("fd", "ops", "path", "segments", "size")

    def __init__(self, ops: FileOps, path: str) -> None:
        self.ops = ops
        self.path = path
        self.fd = -1
        self.size = 0
        self.segments: dict[int, Segment] = {}  # by seq: the live segments it covers

    def open(self) -> None:
        """Open (creating with a header when missing) for appending."""
        ops = self.ops
        fd = ops.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        try:
            size = ops.fstat(fd).st_size
            if size < fmt.HEADER_SIZE:
                if size:
                    ops.ftruncate(fd, 0)
                ops.write(fd, fmt.file_header(fmt.ACK_MAGIC))
                size = fmt.HEADER_SIZE
        except BaseException:
            ops.close(fd)
            raise
        self.fd, self.size = fd, size

    def append(self, data: bytes) -> None:
        if self.fd < 0:
            self.open()
        n = self.ops.write(self.fd, data)
        self.size += n
        if n != len(data):
            raise OSError(f"short write to {self.path}")
        if self.size > ACK_COMPACT_BYTES:
            self.compact()

    def compact(self) -> None:
        """Rewrite the log with the live segments' ranges only: temp file, then an atomic rename."""
        ops = self.ops
        parts = [fmt.file_header(fmt.ACK_MAGIC)]
        for seg in self.segments.values():
            parts.extend(fmt.ack_entry(seg.seq, s, e) for s, e in seg.acked)
        data = b"".join(parts)
        tmp = self.path + ".tmp"
        fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            if ops.write(fd, data) != len(data):
                raise OSError(f"short write to {tmp}")
        finally:
            ops.close(fd)
        ops.rename(tmp, self.path)
        old, self.fd = self.fd, -1
        if old >= 0:
            ops.close(old)
        self.open()

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with contextlib.suppress(OSError):
                self.ops.close(fd)


def read_acks(ops: FileOps, path: str) -> dict[int, list[tuple[int, int]]]:
    """The ranges of an ack log by segment seq ({} when it is missing). Raises NewerVersion."""
    try:
        fd = ops.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    try:
        chunks = []
        offset = 0
        while True:
            data = ops.pread(fd, 1 << 20, offset)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
    finally:
        ops.close(fd)
    data = b"".join(chunks)
    try:
        fmt.read_header(data, fmt.ACK_MAGIC)
    except fmt.NewerVersion:
        raise
    except fmt.HeaderError:
        return {}  # torn at creation: nothing was acknowledged through it
    out: dict[int, list[tuple[int, int]]] = {}
    for seq, start, end in fmt.parse_acks(data[fmt.HEADER_SIZE :], fmt.HEADER_SIZE):
        out.setdefault(seq, []).append((start, end))
    return out


def read_frames(
    ops: FileOps, fd: int, start: int, end: int
) -> tuple[list[fmt.Frame], list[tuple[int, int]], int]:
    """The frames of a file from ``start`` (at most to ``end``), a chunk at a time:
    ``(frames, bad spans, offset reached)``. Bytes the file no longer has count as a bad span."""
    size = READ_CHUNK
    while True:
        want = min(size, end - start)
        data = ops.pread(fd, want, start)
        eof = start + len(data) >= end or len(data) < want
        frames, bad, consumed = fmt.parse_frames(data, start, eof=eof)
        if eof and consumed < end:  # the file is shorter than what was written to it
            bad.append((consumed, end))
            consumed = end
        if consumed > start or eof:
            return frames, bad, consumed
        size *= 4  # a frame larger than the chunk


def logical_end(ops: FileOps, fd: int, size: int) -> int:
    """The offset just past the last non-zero byte (a segment's unused tail is zeros: records
    never end with a zero byte, their body being JSON)."""
    end = size
    while end > fmt.HEADER_SIZE:
        start = max(fmt.HEADER_SIZE, end - READ_CHUNK)
        data = ops.pread(fd, end - start, start).rstrip(b"\0")
        if data:
            return start + len(data)
        end = start
    return fmt.HEADER_SIZE


class Stream:
    """One destination's records in one spool directory, for one process."""

    def __init__(
        self,
        spool: Spool,
        dest: str,
        *,
        max_memory_records: int,
        max_memory_bytes: int,
        segment_bytes: int,
    ) -> None:
        self.spool = spool
        self.dest = dest
        self.ops = spool.ops
        self._write = spool.ops.write
        self._append = spool.ops.appender()
        self.max_memory_records = max_memory_records
        self.max_memory_bytes = max_memory_bytes
        self.segment_bytes = segment_bytes
        self.on_available: Callable[[], None] = _nothing
        self._reset()

    def new_lock(self) -> Any:
        """A new lock for the stream, of the ``threading`` in force (``lock_token`` says which).
        The route on this stream guards its queue with this very lock (see Route._make_sync):
        the spool's maintenance thread (adoption, checks) and the route's producers and
        dispatcher must never touch the stream under two different locks."""
        self.lock: Any = _concurrency.lock()
        self.lock_token: object = _concurrency.token()
        return self.lock

    def _reset(self) -> None:
        self.new_lock()
        self._active: Optional[Segment] = None
        self._own: list[Segment] = []  # this process's segments, oldest first (the active one last)
        self._adopted: deque[Segment] = deque()  # dead owners' segments with records to read, oldest first
        self._adopted_all: list[Segment] = []  # every adopted segment not yet deleted
        self._ahead: deque[Record] = deque()  # adopted records read, not yet taken
        self._mem: deque[Record] = deque()
        self._segs: dict[int, Segment] = {}  # by sid: every segment a position may name
        self._next_sid = 1
        self._mem_bytes = 0
        self._gap: Optional[tuple[Segment, int]] = None  # the first own record on disk only
        self._gap_records = 0
        self._adopted_unread = 0
        self._down_until = 0.0  # monotonic: no disk writes before then (0.0: disk up)
        self._disk_error: Optional[str] = None
        self._next_seq = 1
        self._log: Optional[AckLog] = None
        self.bytes = 0  # bytes of the segment files this stream holds (own and adopted)
        self.allowance = 1 << 62  # bytes this stream may hold (the spool's budget, refreshed)
        # Counters.
        self.recovered = 0  # records adopted from dead owners
        self.spool_errors = 0
        self.spool_corrupt = 0
        self.spool_full = 0
        self.fallback = 0  # records kept in memory only because the disk failed
        self.lost = 0  # own records found unreadable on disk, not yet collected by pop_lost()

    # ------------------------------------------------------------------------------ set-up
    def start_locked(self, owner_dir: str) -> None:
        """Begin writing into ``owner_dir`` (this process's directory; its lock is held)."""
        self._owner_dir = owner_dir
        self._log = AckLog(self.ops, os.path.join(owner_dir, f"{self.dest}.ack"))
        if self._active is not None:  # a directory recreated: its records stay readable, writes move
            self._seal(self._active)
        self._down_until = 0.0

    # ----------------------------------------------------------------------------- writing
    def append(self, kind: int, body: bytes) -> int:
        with self.lock:
            return self.append_locked(kind, body)

    def append_locked(self, kind: int, body: bytes) -> int:
        """Write one record (one ``os.write``); DISK, MEMORY (disk failed: memory only), FULL
        (``max_spool_bytes`` reached: dropped) or DROPPED (disk failed and memory full)."""
        seg = self._active
        if seg is None:
            seg = self._open_segment()
            if seg is None:
                return self._fallback(kind, body)
        size = len(body)
        n = size + _FRAME_HEAD
        if self.bytes + n > self.allowance:
            self.spool_full += 1
            return FULL
        data = _pack(_MARK, kind, size, _crc32(body, kind)) + body
        try:
            written = self._append(seg.fd, data, n)
            if written < 0:  # the raw libc call failed: write() again, which raises the error
                written = self._write(seg.fd, data)
        except OSError as exc:
            self._disk_failed(seg, exc)
            return self._fallback(kind, body)
        if written != n:  # a partial record: _disk_failed cuts it off
            self._disk_failed(seg, OSError(f"short write ({written} of {n} bytes)"))
            return self._fallback(kind, body)
        start = seg.size
        seg.size = end = start + n
        self.bytes += n
        seg.records += 1
        if self._gap is None:
            mem = self._mem
            if len(mem) < self.max_memory_records and self._mem_bytes + n <= self.max_memory_bytes:
                mem.append((kind, body, seg.sid << _SHIFT | start))
                self._mem_bytes += n
            else:
                self._gap = (seg, start)
                self._gap_records = 1
        else:
            self._gap_records += 1
        if end >= self.segment_bytes:
            self._seal(seg)
        return DISK

    def _fallback(self, kind: int, body: bytes) -> int:
        n = len(body) + _FRAME_HEAD
        if len(self._mem) < self.max_memory_records and self._mem_bytes + n <= self.max_memory_bytes:
            self._mem.append((kind, body, NO_POS))
            self._mem_bytes += n
            self.fallback += 1
            return MEMORY
        return DROPPED

    def _open_segment(self) -> Optional[Segment]:
        """A new active segment, or None while the disk is down (retried every RETRY_AFTER)."""
        if self._log is None or (self._down_until and _monotonic() < self._down_until):
            return None
        ops = self.ops
        seq = self._next_seq
        path = os.path.join(self._owner_dir, f"{self.dest}-{seq:08d}.seg")
        try:
            fd = ops.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except OSError as exc:
            self._disk_failed(None, exc)
            return None
        self._next_seq = seq + 1
        header = fmt.file_header(fmt.SEGMENT_MAGIC)
        seg = Segment(path, seq, fd, 0, time.time_ns(), self._log, own=True)
        self._register(seg)
        self._own.append(seg)
        self._log.segments[seq] = seg
        try:
            written = ops.write(fd, header)
        except OSError as exc:
            self._disk_failed(seg, exc)
            return None
        seg.size = written
        self.bytes += written
        if written != len(header):
            self._disk_failed(seg, OSError("short write of a segment header"))
            return None
        try:
            # Sized up front (sparse: no blocks taken yet): an append inside the file's size does
            # not update the inode's size, which makes os.write about 0.4 us cheaper (ext4).
            # A reader finds the end of a dead owner's segment at its last non-zero byte.
            ops.ftruncate(fd, self.segment_bytes)
        except OSError as exc:
            self._disk_failed(seg, exc)
            return None
        self.spool.dirty_dir = True
        if self._down_until:
            self._down_until = 0.0
            self.spool.warn(
                f"spool:{self.dest}:back", f"spool {self.spool.path}: {self.dest} writes to disk again"
            )
        self._active = seg
        return seg

    def _register(self, seg: Segment) -> None:
        seg.sid = self._next_sid
        self._next_sid += 1
        self._segs[seg.sid] = seg

    def _disk_failed(self, seg: Optional[Segment], exc: OSError) -> None:
        self.spool_errors += 1
        self._down_until = _monotonic() + RETRY_AFTER
        self._disk_error = str(exc)
        self.spool.warn(
            f"spool:{self.dest}:error",
            f"spool {self.spool.path}: {self.dest}: {exc}; new events stay in memory until the disk works",
            level="error",
        )
        if seg is not None:
            if seg.fd >= 0:
                # Cut a partial record off, so that the file ends on a frame boundary.
                with contextlib.suppress(OSError):
                    self.ops.ftruncate(seg.fd, seg.size)
            self._seal(seg)

    def _seal(self, seg: Segment) -> None:
        seg.sealed = True
        if self._active is seg:
            self._active = None
        if seg.is_done():
            self._delete(seg)
        elif seg.own and seg.fd >= 0:
            # Drop the unused preallocated tail: a sealed file ends with its last record.
            with contextlib.suppress(OSError):
                self.ops.ftruncate(seg.fd, seg.size)

    # ----------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        """Records waiting to be taken (in memory, on disk only, adopted)."""
        return len(self._ahead) + self._adopted_unread + len(self._mem) + self._gap_records

    @property
    def memory_bytes(self) -> int:
        return self._mem_bytes

    @property
    def spooled(self) -> int:
        """Records on disk not yet resolved (own and adopted): the sum over the segments, so that
        appending and acknowledging keep one counter per segment, not two."""
        segments = list(self._segs.values())  # one step: read without the lock, see Stream.lock
        return sum(seg.records for seg in segments)

    def take_locked(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` records, oldest first: adopted ones, then this process's."""
        out: list[Record] = []
        while len(out) < max_records:
            if self._ahead:
                need = max_records - len(out)
                ahead = self._ahead
                while ahead and need:
                    out.append(ahead.popleft())
                    need -= 1
                continue
            if self._adopted:
                self._load_adopted()
                continue
            break
        if len(out) < max_records:
            mem = self._mem
            need = max_records - len(out)
            if need >= len(mem) and self._gap is None:
                out.extend(mem)
                mem.clear()
                self._mem_bytes = 0
            else:
                while need and (mem or self._gap is not None):
                    if not mem:
                        self._refill()
                        if not mem:
                            break
                    entry = mem.popleft()
                    self._mem_bytes -= len(entry[1]) + _FRAME_HEAD
                    out.append(entry)
                    need -= 1
        return out

    def _read(self, seg: Segment, start: int, end: int) -> tuple[list[fmt.Frame], list[tuple[int, int]], int]:
        try:
            return read_frames(self.ops, seg.fd, start, end)
        except OSError as exc:
            self.spool_errors += 1
            self.spool.warn(f"spool:{self.dest}:read", f"spool {seg.path}: read failed: {exc}", level="error")
            return [], [(start, end)], end

    def _bad(self, seg: Segment, spans: Iterable[tuple[int, int]]) -> None:
        for s, e in spans:
            if e > s:
                seg.done += e - s
                if not seg.own:
                    self.spool_corrupt += 1
                self.spool.warn(
                    f"spool:{self.dest}:corrupt",
                    f"spool {seg.path}: {e - s} unreadable byte(s) at offset {s} skipped",
                )
        if seg.is_done():
            self._delete(seg)

    def _next_own(self, seg: Segment) -> Optional[Segment]:
        for s in self._own:
            if s.seq > seg.seq:
                return s
        return None

    def _refill(self) -> None:
        """Load own records that are on disk only into memory from the gap (a chunk at a time)."""
        gap = self._gap
        if gap is None:
            return
        seg, pos = gap
        while True:
            if pos < seg.size:
                frames, bad, pos = self._read(seg, pos, seg.size)
                sid = seg.sid << _SHIFT
                for f in frames:
                    self._mem.append((f.kind, f.body, sid | f.start))
                    self._mem_bytes += f.end - f.start
                self._gap_records -= len(frames)
                self._bad(seg, bad)
                if frames:
                    break
                continue
            nxt = self._next_own(seg)
            if nxt is None:
                self._gap = None
                if self._gap_records:
                    # Written, but not there to read (the file was cut underneath): lost.
                    self.lost += self._gap_records
                    self.spool_corrupt += self._gap_records
                    self._gap_records = 0
                return
            seg, pos = nxt, fmt.HEADER_SIZE
        self._gap = (seg, pos)

    def pop_lost(self) -> int:
        """Records counted as waiting that turned out unreadable (once each; the caller reports them)."""
        n, self.lost = self.lost, 0
        return n

    def take_memory_only_locked(self) -> list[tuple[int, bytes]]:
        """Remove and return the records kept in memory only (the disk had failed)."""
        out = [(k, b) for k, b, pos in self._mem if pos == NO_POS]
        if out:
            kept = deque(r for r in self._mem if r[2] != NO_POS)
            self._mem = kept
            self._mem_bytes = sum(len(r[1]) + _FRAME_HEAD for r in kept)
        return out

    def _load_adopted(self) -> None:
        """Read the next chunk of the oldest adopted segment into the read-ahead."""
        seg = self._adopted[0]
        if seg.fd < 0:
            try:
                seg.fd = self.ops.open(seg.path, os.O_RDONLY)
            except OSError as exc:
                self.spool_errors += 1
                self.spool.warn(f"spool:{self.dest}:read", f"spool {seg.path}: {exc}", level="error")
                self._end_adopted(seg)
                self._bad(seg, [(seg.read_pos, seg.size)])
                return
        frames, bad, consumed = self._read(seg, seg.read_pos, seg.size)
        seg.read_pos = consumed
        for f in frames:
            if not seg.is_acked(f.start) and seg.unread:
                self._ahead.append((f.kind, f.body, seg.sid << _SHIFT | f.start))
                seg.unread -= 1
                self._adopted_unread -= 1
        if consumed >= seg.size:
            self._end_adopted(seg)
        self._bad(seg, bad)

    def _end_adopted(self, seg: Segment) -> None:
        """An adopted segment is read to its end; records counted at adoption but not found are lost."""
        self._adopted.popleft()
        if seg.unread:
            self._adopted_unread -= seg.unread
            self.spool_corrupt += seg.unread
            self.lost += seg.unread
            seg.records -= seg.unread
            seg.unread = 0

    # ------------------------------------------------------------------------ acknowledging
    def ack(self, records: Iterable[Record]) -> None:
        with self.lock:
            self.ack_locked(records)

    def ack_locked(self, records: Iterable[Record]) -> None:
        """Mark records resolved: one ack-log write per segment, then delete finished segments."""
        if self._log is None:
            return  # closed (or never started): the records stay on disk for the next reader
        by_seg: dict[Segment, list[tuple[int, int]]] = {}
        segs = self._segs
        for _, body, pos in records:
            if pos >= 0:
                seg = segs.get(pos >> _SHIFT)
                if seg is None:
                    continue  # its segment is gone (deleted underneath and given up)
                start = pos & _LOW
                by_seg.setdefault(seg, []).append((start, start + _FRAME_HEAD + len(body)))
        for seg, spans in by_seg.items():
            spans.sort()
            merged: list[list[int]] = []
            for s, e in spans:
                if merged and merged[-1][1] == s:
                    merged[-1][1] = e
                else:
                    merged.append([s, e])
            for s, e in merged:
                seg.add_range(s, e)  # first: a compaction inside append() writes these ranges too
                seg.done += e - s
            try:
                seg.log.append(b"".join(fmt.ack_entry(seg.seq, s, e) for s, e in merged))
            except OSError as exc:
                # Not durable: after a crash these records are delivered again (duplicates, not losses).
                self.spool_errors += 1
                self.spool.warn(f"spool:{self.dest}:ack", f"spool {seg.log.path}: {exc}", level="error")
            n = len(spans)
            seg.records -= n
            if seg.is_done():
                self._delete(seg)
            elif (
                seg is self._active
                and seg.size >= ROLL_WHEN_DONE
                and fmt.HEADER_SIZE + seg.done >= seg.size
                and self._gap is None
            ):
                self._seal(seg)  # all written is resolved: start afresh, delete this one now

    def _delete(self, seg: Segment) -> None:
        """Unlink a segment whose records are all resolved (after their acks were written)."""
        ops = self.ops
        if seg.fd >= 0:
            fd, seg.fd = seg.fd, -1
            with contextlib.suppress(OSError):
                ops.close(fd)
        try:
            ops.unlink(seg.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.spool_errors += 1
            self.spool.warn(f"spool:{self.dest}:unlink", f"spool {seg.path}: {exc}", level="error")
        self.bytes -= seg.size
        seg.log.segments.pop(seg.seq, None)
        self._segs.pop(seg.sid, None)
        seg.records = 0
        if seg.own:
            if seg in self._own:
                self._own.remove(seg)
        else:
            if seg in self._adopted_all:
                self._adopted_all.remove(seg)
            if not seg.log.segments:
                self.spool.release_adopted(self.dest, seg.log)

    # -------------------------------------------------------------------------- adoption
    def adopt_locked(self, log: AckLog, segments: Sequence[Segment]) -> None:
        """Take over a dead owner's segments (their lock is held by the spool now)."""
        for seg in segments:
            log.segments[seg.seq] = seg
            self._register(seg)
            self._adopted_all.append(seg)
            self.bytes += seg.size
            seg.unread = seg.records
            self.recovered += seg.records
            self._adopted_unread += seg.records
        items = sorted([*self._adopted, *segments], key=lambda s: (s.created_ns, s.seq))
        self._adopted = deque(items)

    # ------------------------------------------------------------------------- maintenance
    def check(self) -> None:
        """Notice an active segment deleted or replaced underneath (writes would go nowhere).
        The system calls run outside the lock (producers never wait for them)."""
        seg = self._active
        if seg is None or seg.fd < 0:
            return
        try:
            same = self.ops.stat(seg.path).st_ino == self.ops.fstat(seg.fd).st_ino
        except OSError:
            same = False
        if not same:
            with self.lock:
                if self._active is seg:
                    self._disk_failed(seg, OSError(f"{seg.path} was deleted or replaced"))

    def fds_locked(self) -> list[int]:
        fds = [s.fd for s in self._own if s.fd >= 0 and not (s.sealed and s.is_done())]
        if self._log is not None and self._log.fd >= 0:
            fds.append(self._log.fd)
        return fds

    @property
    def disk_error(self) -> Optional[str]:
        """The last disk error while the stream is writing to memory; None when it writes to disk."""
        return self._disk_error if self._down_until else None

    def close_locked(self, *, remove_empty: bool) -> bool:
        """Close every file; True when this process's files held nothing and were removed."""
        ops = self.ops
        empty = all(s.records == 0 for s in self._own)
        if self._active is not None and not empty:
            self._seal(self._active)  # cut the preallocated tail
        for seg in [*self._own, *self._adopted_all]:
            if seg.fd >= 0:
                fd, seg.fd = seg.fd, -1
                with contextlib.suppress(OSError):
                    ops.close(fd)
            if remove_empty and empty and seg.own:
                with contextlib.suppress(OSError):
                    ops.unlink(seg.path)
        if self._log is not None:
            self._log.close()
            if remove_empty and empty:
                with contextlib.suppress(OSError):
                    ops.unlink(self._log.path)
        self._active = None
        self._log = None
        return empty

    def forget_after_fork(self) -> None:
        """In a forked child: close the parent's descriptors (its locks stay the parent's) and start empty."""
        for seg in [*self._own, *self._adopted_all]:
            if seg.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)
        if self._log is not None and self._log.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._log.fd)
        self._reset()


def _nothing() -> None:
    return None
