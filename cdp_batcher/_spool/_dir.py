"""A spool directory shared by many processes: owners, locks, adoption, the byte budget, fsync.

Layout::

    spool_dir/
      o-<pid>-<random>/              one directory per writing process (an "owner")
        <dest>.lock                  flock(LOCK_EX) held by the owner while it lives
        <dest>.ack                   append-only acknowledgements of the owner's <dest> segments
        <dest>-<seq:08d>.seg         segments: a header, then framed records (see _format)

Each process writes only its own files. A process whose ``<dest>.lock`` can be locked is dead
(the kernel drops a flock with its last descriptor): another process's spool takes the lock and
so adopts that owner's ``<dest>`` files; as the lock stays taken, two processes never deliver the
same file. When the adopted files are all resolved the adopter removes them, then the ack log,
then the lock file (an adopter that locks a lock file checks it is still linked). A forked child
closes the descriptors it inherited, which leaves the parent's locks held by the parent, and
starts its own owner directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Callable, Optional

from . import _format as fmt
from ._files import FileOps
from ._log import AckLog, Segment, Stream, logical_end, read_acks, read_frames

__all__ = ["Spool", "SpoolUnavailable"]

_live: weakref.WeakSet[Spool] = weakref.WeakSet()
_log = logging.getLogger("cdp_batcher")


class SpoolUnavailable(OSError):
    """The spool directory cannot be created or written (the message names the path and the error)."""


def _default_warn(key: str, message: str, *, level: str = "warning") -> None:
    getattr(_log, level)("%s", message)


Warn = Callable[..., None]


class Spool:
    """This process's view of one spool directory: its own files and the dead owners' it adopted."""

    #: Seconds between two maintenance passes of the background thread.
    TICK = 0.25
    #: Seconds between two looks for dead owners' files.
    ADOPT_EVERY = 1.0
    #: A ``t-`` directory (an owner directory being built) older than this, with no lock held,
    #: was left by a process that died while opening its spool: it is removed.
    STALE_TMP = 60.0

    def __init__(
        self,
        path: str,
        dests: Sequence[str],
        *,
        max_bytes: int,
        fsync: Optional[float] = None,
        max_memory_records: int = 10_000,
        max_memory_bytes: int = 32 * 1024 * 1024,
        segment_bytes: Optional[int] = None,
        ops: Optional[FileOps] = None,
        warn: Optional[Warn] = None,
        background: bool = True,
    ) -> None:
        self.path = os.path.abspath(path)
        self.ops = ops if ops is not None else FileOps()
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.warn: Warn = warn if warn is not None else _default_warn
        self.background = background
        self.dirty_dir = False
        if segment_bytes is None:
            segment_bytes = max(64 * 1024, min(8 * 1024 * 1024, max_bytes // 32))
        self.segment_bytes = segment_bytes
        self.streams = {
            d: Stream(
                self,
                d,
                max_memory_records=max_memory_records,
                max_memory_bytes=max_memory_bytes,
                segment_bytes=segment_bytes,
            )
            for d in dests
        }
        self._closed = False
        self._reset_owner()
        try:
            self._makedirs(self.path)
            why = self.ops.access(self.path)
            if why is not None:
                raise PermissionError(13, why, self.path)
            self._create_owner()
        except OSError as exc:
            self._close_locks()
            raise SpoolUnavailable(f"spool_dir {self.path!r} cannot be used: {exc}") from exc
        self._refresh_budget()
        _live.add(self)
        if background:
            self._start_thread()

    # ------------------------------------------------------------------------------ owners
    def _reset_owner(self) -> None:
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()  # one adoption pass at a time (see scan)
        self.pid = os.getpid()
        self.owner = f"o-{self.pid}-{secrets.token_hex(4)}"
        self.owner_dir = os.path.join(self.path, self.owner)
        self._locks: dict[str, int] = {}  # own dest -> lock fd
        self._held: dict[
            tuple[str, str], tuple[int, AckLog]
        ] = {}  # adopted (owner dir, dest) -> lock fd, log
        self._skipped: set[tuple[str, str]] = set()  # owner-dests left alone (newer version)
        self._foreign = 0
        self._last_adopt = 0.0
        self._last_sync = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _makedirs(self, path: str) -> None:
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent and parent != path:
            self._makedirs(parent)
        with contextlib.suppress(FileExistsError):
            self.ops.mkdir(path)

    def _create_owner(self) -> None:
        """This process's directory and a held lock per destination; streams write there.

        Built as ``t-<owner>`` and renamed into place, so that no reader ever sees an owner
        directory without its locks (and takes it for a dead owner's, or removes it as empty)."""
        ops = self.ops
        tmp = os.path.join(self.path, "t-" + self.owner[2:])
        with contextlib.suppress(FileExistsError):
            ops.mkdir(tmp)
        for dest in self.streams:
            fd = ops.open(os.path.join(tmp, f"{dest}.lock"), os.O_RDWR | os.O_CREAT)
            old = self._locks.pop(dest, None)
            if old is not None:
                self._quiet_close(old)
            self._locks[dest] = fd
            if not ops.lock(fd):
                raise OSError(f"cannot lock {tmp}/{dest}.lock")
            ops.write(fd, f"{self.pid}\n".encode())
        ops.rename(tmp, self.owner_dir)
        for stream in self.streams.values():
            with stream.lock:
                stream.start_locked(self.owner_dir)

    def _quiet_close(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            self.ops.close(fd)

    def _close_locks(self) -> None:
        for fd in self._locks.values():
            self._quiet_close(fd)
        self._locks.clear()

    # ---------------------------------------------------------------------------- adoption
    def scan(self) -> int:
        """Adopt the files of dead owners for this spool's destinations; returns records adopted.

        One pass at a time: called while a pass is under way (the maintenance thread's), it
        waits for that one first, so on return every dead owner's records this process could
        lock are in its streams (counted in ``stats().spooled``)."""
        with self._scan_lock:
            return self._scan()

    def _scan(self) -> int:
        ops = self.ops
        try:
            listing = ops.listdir(self.path)
        except OSError:
            return 0
        names = sorted(n for n in listing if n.startswith("o-") and n != self.owner)
        for name in listing:
            if name.startswith("t-"):
                self._remove_stale_tmp(os.path.join(self.path, name))
        total = 0
        for name in names:
            owner_dir = os.path.join(self.path, name)
            try:
                files = ops.listdir(owner_dir)
            except OSError:
                continue
            for dest, stream in self.streams.items():
                key = (owner_dir, dest)
                if key in self._held or key in self._skipped:
                    continue
                if not any(f.startswith(dest + "-") or f.startswith(dest + ".") for f in files):
                    continue
                total += self._adopt(owner_dir, dest, stream, files)
            if not files:
                self._remove_dir(owner_dir)
        self._last_adopt = time.monotonic()
        return total

    def _remove_stale_tmp(self, tmp: str) -> None:
        ops = self.ops
        try:
            if time.time() - ops.stat(tmp).st_mtime < self.STALE_TMP:
                return
            names = ops.listdir(tmp)
        except OSError:
            return
        fds = []
        try:
            for name in names:
                fd = ops.open(os.path.join(tmp, name), os.O_RDWR)
                fds.append(fd)
                if not ops.lock(fd):
                    return  # its process is alive
            for name in names:
                ops.unlink(os.path.join(tmp, name))
            ops.rmdir(tmp)
        except OSError:
            return
        finally:
            for fd in fds:
                self._quiet_close(fd)

    def _adopt(self, owner_dir: str, dest: str, stream: Stream, files: list[str]) -> int:
        ops = self.ops
        lock_path = os.path.join(owner_dir, f"{dest}.lock")
        try:
            fd = ops.open(lock_path, os.O_RDWR | os.O_CREAT)
        except OSError:
            return 0
        try:
            if not ops.lock(fd) or ops.stat(lock_path).st_ino != ops.fstat(fd).st_ino:
                self._quiet_close(fd)  # alive, or just cleaned up by another adopter
                return 0
        except OSError:
            self._quiet_close(fd)
            return 0
        key = (owner_dir, dest)
        log = AckLog(ops, os.path.join(owner_dir, f"{dest}.ack"))
        try:
            segments = self._load_owner(owner_dir, dest, files, log, stream)
        except fmt.NewerVersion as exc:
            self._skipped.add(key)
            self._quiet_close(fd)
            stream.spool_errors += 1
            self.warn(
                f"spool:{dest}:newer",
                f"spool {owner_dir}: {dest} files written by a newer cdp_batcher ({exc}); left as they are",
                level="error",
            )
            return 0
        except OSError as exc:
            self._quiet_close(fd)
            stream.spool_errors += 1
            self.warn(f"spool:{dest}:adopt", f"spool {owner_dir}: cannot adopt {dest}: {exc}", level="error")
            return 0
        with self._lock:
            self._held[key] = (fd, log)
        live = [s for s in segments if not s.is_done()]
        count = sum(s.records for s in live)
        for seg in segments:
            if seg.is_done():  # resolved before the crash (its acks were written, the unlink was not)
                with contextlib.suppress(OSError):
                    ops.unlink(seg.path)
        with stream.lock:
            stream.adopt_locked(log, live)
        if not live:
            self.release_adopted(dest, log)
        if count:
            self.warn(
                f"spool:{dest}:adopted", f"spool {owner_dir}: adopted {count} {dest} record(s)", level="info"
            )
            stream.on_available()
        return count

    def _load_owner(
        self, owner_dir: str, dest: str, files: list[str], log: AckLog, stream: Stream
    ) -> list[Segment]:
        """The segments of a dead owner's destination, counted, with their acknowledgements applied."""
        ops = self.ops
        tmp = os.path.join(owner_dir, f"{dest}.ack.tmp")
        if f"{dest}.ack.tmp" in files:
            # A compaction that did not reach its rename.
            with contextlib.suppress(FileNotFoundError):
                ops.unlink(tmp)
        acks = read_acks(ops, log.path)
        segments = []
        for name in sorted(files):
            if not (name.startswith(dest + "-") and name.endswith(".seg")):
                continue
            try:
                seq = int(name[len(dest) + 1 : -4])
            except ValueError:
                continue
            seg = self._count_segment(os.path.join(owner_dir, name), seq, log, acks.get(seq, ()), stream)
            if seg is not None:
                segments.append(seg)
        return segments

    def _count_segment(
        self, path: str, seq: int, log: AckLog, acked: Sequence[tuple[int, int]], stream: Stream
    ) -> Optional[Segment]:
        ops = self.ops
        try:
            fd = ops.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = ops.fstat(fd).st_size
            head = ops.pread(fd, fmt.HEADER_SIZE, 0)
            try:
                header = fmt.read_header(head, fmt.SEGMENT_MAGIC)
            except fmt.NewerVersion:
                raise
            except fmt.HeaderError as exc:
                if size >= fmt.HEADER_SIZE:
                    stream.spool_corrupt += 1
                    self.warn(
                        f"spool:{stream.dest}:corrupt", f"spool {path}: {exc}; file skipped", level="error"
                    )
                seg = Segment(path, seq, -1, max(size, fmt.HEADER_SIZE), 0, log, own=False)
                seg.done = seg.size - fmt.HEADER_SIZE
                return seg  # done: deleted by the caller
            size = logical_end(ops, fd, size)
            seg = Segment(path, seq, fd, size, header.created_ns, log, own=False)
            for s, e in sorted(acked):
                seg.add_range(s, e)
            pos = fmt.HEADER_SIZE
            done = 0
            records = 0
            while pos < size:
                frames, _bad, pos = read_frames(ops, fd, pos, size)
                for f in frames:
                    if seg.is_acked(f.start):
                        done += f.end - f.start
                    else:
                        records += 1
                # Bad spans are counted (and skipped) once, when the stream reads the segment.
            seg.fd = -1
            seg.done = done
            seg.records = records
            return seg
        finally:
            self._quiet_close(fd)

    def release_adopted(self, dest: str, log: AckLog) -> None:
        """An adopted owner's destination is fully resolved: remove its ack log and lock file."""
        owner_dir = os.path.dirname(log.path)
        with self._lock:
            held = self._held.pop((owner_dir, dest), None)
        log.close()
        ops = self.ops
        for name in (f"{dest}.ack", f"{dest}.lock"):
            with contextlib.suppress(OSError):
                ops.unlink(os.path.join(owner_dir, name))
        if held is not None:
            self._quiet_close(held[0])
        self._remove_dir(owner_dir)

    def _remove_dir(self, owner_dir: str) -> None:
        # Fails while another destination's files are still there.
        with contextlib.suppress(OSError):
            self.ops.rmdir(owner_dir)

    # ------------------------------------------------------------------------- maintenance
    def tick(self) -> None:
        """One maintenance pass: repair a vanished directory, notice files replaced underneath,
        refresh the byte budget, adopt dead owners' files, fsync when due."""
        if self._closed or self.pid != os.getpid():
            return
        try:
            self.ops.stat(self.owner_dir)
        except OSError:
            self._repair()
        for stream in self.streams.values():
            stream.check()
        self._refresh_budget()
        now = time.monotonic()
        if now - self._last_adopt >= self.ADOPT_EVERY:
            self.scan()
        if self.fsync is not None and now - self._last_sync >= self.fsync:
            self.sync()

    def _repair(self) -> None:
        for stream in self.streams.values():
            stream.spool_errors += 1
        try:
            self._makedirs(self.path)
            self._create_owner()
        except OSError as exc:
            self.warn(
                "spool:dir", f"spool {self.path}: directory vanished, cannot recreate: {exc}", level="error"
            )
            return
        self.warn("spool:dir", f"spool {self.path}: directory vanished; recreated", level="error")

    def _refresh_budget(self) -> None:
        """Bytes of other processes' segment files (not adopted here), and each stream's allowance."""
        ops = self.ops
        foreign = 0
        with self._lock:
            held = set(self._held)
        try:
            names = ops.listdir(self.path)
        except OSError:
            names = []
        for name in names:
            if not name.startswith("o-") or name == self.owner:
                continue
            owner_dir = os.path.join(self.path, name)
            try:
                files = ops.listdir(owner_dir)
            except OSError:
                continue
            for f in files:
                if f.endswith(".seg") and (owner_dir, f.rsplit("-", 1)[0]) not in held:
                    with contextlib.suppress(OSError):
                        st = ops.stat(os.path.join(owner_dir, f))
                        foreign += min(st.st_size, st.st_blocks * 512)  # sparse: what is taken
        self._foreign = foreign
        mine = sum(s.bytes for s in self.streams.values())
        for s in self.streams.values():
            s.allowance = self.max_bytes - foreign - (mine - s.bytes)

    def sync(self) -> None:
        """fsync every file written since the last call (spool_fsync), and the directory."""
        self._last_sync = time.monotonic()
        fds: list[int] = []
        for stream in self.streams.values():
            with stream.lock:
                fds.extend(stream.fds_locked())
        with self._lock:
            fds.extend(log.fd for _, log in self._held.values() if log.fd >= 0)
        for fd in fds:
            with contextlib.suppress(OSError):
                self.ops.fsync(fd)
        if self.dirty_dir:
            self.dirty_dir = False
            try:
                fd = self.ops.open(self.owner_dir, os.O_RDONLY)
                try:
                    self.ops.fsync(fd)
                finally:
                    self.ops.close(fd)
            except OSError:
                pass

    def _start_thread(self) -> None:
        ref = weakref.ref(self)
        stop = self._stop
        thread = threading.Thread(
            target=_maintain, args=(ref, stop, self.TICK), name="cdp_batcher-spool", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down
            return
        self._thread = thread

    # ----------------------------------------------------------------------------- closing
    @property
    def spooled(self) -> int:
        return sum(s.spooled for s in self.streams.values())

    def close(self, timeout: float = 1.0) -> None:
        """Stop maintenance and close every file; records not resolved stay on disk for the next
        reader. This process's directory is removed when it holds nothing."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self.pid != os.getpid():
            return
        if self.fsync is not None:
            self.sync()
        empty = True
        for stream in self.streams.values():
            with stream.lock:
                empty = stream.close_locked(remove_empty=True) and empty
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        for fd, log in held:
            log.close()
            self._quiet_close(fd)
        if empty:
            for dest in self._locks:
                with contextlib.suppress(OSError):
                    self.ops.unlink(os.path.join(self.owner_dir, f"{dest}.lock"))
        self._close_locks()
        if empty:
            self._remove_dir(self.owner_dir)
        _live.discard(self)

    def after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's descriptors and state; write a new owner directory."""
        if self.pid == os.getpid():
            return
        for fd in list(self._locks.values()) + [fd for fd, _ in self._held.values()]:
            # Not LOCK_UN: the lock is the parent's and stays held by it.
            with contextlib.suppress(OSError):
                os.close(fd)
        for stream in self.streams.values():
            stream.forget_after_fork()
        self._reset_owner()
        if self._closed:
            return
        try:
            self._makedirs(self.path)
            self._create_owner()
        except OSError as exc:
            for stream in self.streams.values():
                stream.spool_errors += 1
            self.warn(
                "spool:dir",
                f"spool {self.path}: {exc}; the forked child keeps events in memory",
                level="error",
            )
        _live.add(self)
        if self.background:
            self._start_thread()


def _maintain(ref: weakref.ReferenceType[Spool], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        spool = ref()
        if spool is None:
            return
        try:
            spool.tick()
        except Exception:  # never let the maintenance thread die of a disk problem
            _log.exception("cdp_batcher: spool maintenance failed")
        del spool


def _after_fork_in_child() -> None:
    for spool in list(_live):
        spool.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
