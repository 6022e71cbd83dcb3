"""The spool's only door to the file system: one small object, so tests can fail or "crash" any call.

Every file operation of the spool goes through a :class:`FileOps`. Tests subclass it to raise an
``OSError`` (a bad disk) or a :class:`Crash` (the process dies between two steps: nothing after
it runs) at the n-th call; the spool never catches :class:`Crash`, which is why it is not an
``Exception``.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Callable, Optional

__all__ = ["Appender", "Crash", "FileOps", "PortableFileOps"]


class Crash(BaseException):
    """Raised by a test's :class:`FileOps` to stop the spool dead between two steps."""


def _gil_holding_write() -> Optional[Callable[[int, bytes], int]]:
    """libc ``write(2)`` through ``ctypes.PyDLL``, which keeps the GIL during the call.

    ``os.write`` releases the GIL around the system call; in a process whose other threads are
    busy (the route's dispatcher and senders, a web server's workers) getting it back afterwards
    costs far more than the write: measured 1.0 µs alone, 3.5 µs with two busy threads, ~18 µs
    per ``track()`` with a route delivering. Holding the GIL for a page-cache write (~1 µs)
    costs the other threads nothing noticeable. The price: a write that blocks for long (a hung
    network file system) stalls every thread of the process, not just the caller. None where
    ctypes or libc's ``write`` is not available: :class:`FileOps` then uses ``os.write``."""
    try:
        import ctypes

        libc = ctypes.PyDLL(None, use_errno=True)
        c_write = libc.write
        c_write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
        c_write.restype = ctypes.c_ssize_t
    except (ImportError, OSError, AttributeError):
        return None
    get_errno = ctypes.get_errno

    def write(fd: int, data: bytes) -> int:
        while True:
            n: int = c_write(fd, data, len(data))
            if n >= 0:
                return n
            err = get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))

    return write


_WRITE: Callable[[int, bytes], int] = _gil_holding_write() or os.write

#: ``append(fd, data, len(data)) -> int`` for the hot path (see :meth:`FileOps.appender`).
Appender = Callable[[int, bytes, int], int]

#: Where libffi passes a Python int (a C ``int``) sign-extended in a 64-bit register, so that
#: libc's ``size_t`` parameter reads it whole: the raw call below needs no argtypes.
_RAW_MACHINES = frozenset({"x86_64", "amd64", "aarch64", "arm64"})


def _raw_write() -> Optional[Appender]:
    """libc ``write(2)`` through ``ctypes.PyDLL`` (the GIL kept, as :func:`_gil_holding_write`)
    with no argtypes and no errno capture: ctypes' argument conversion and errno swapping cost
    more than the system call (measured 1.37 µs a call with them, 0.62 µs without; ``os.write``
    0.40 µs but it releases the GIL). Returns the count written, or -1 on an error: the caller
    then calls :meth:`FileOps.write`, which retries and raises the ``OSError``. A record is at
    most ``MAX_BODY`` bytes, far inside a C ``int``."""
    import platform

    if platform.machine().lower() not in _RAW_MACHINES:
        return None
    try:
        import ctypes

        if ctypes.sizeof(ctypes.c_int) != 4 or ctypes.sizeof(ctypes.c_size_t) != 8:
            return None
        c_write = ctypes.PyDLL(None).write
        c_write.restype = ctypes.c_ssize_t
    except (ImportError, OSError, AttributeError):
        return None
    # A look before use: one byte written to a pipe must come back as a count of 1.
    try:
        r, w = os.pipe()
        try:
            ok = c_write(w, b"x", 1) == 1
        finally:
            os.close(r)
            os.close(w)
    except OSError:
        return None
    return c_write if ok else None


_RAW: Optional[Appender] = _raw_write() if _WRITE is not os.write else None


class FileOps:
    """Thin wrappers over ``os``; each method is one system call (the unit of crash injection)."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    #: The hot path's write: libc's ``write`` called without releasing the GIL when ctypes
    #: allows (see :func:`_gil_holding_write`), else ``os.write``.
    write = staticmethod(_WRITE)
    pread = staticmethod(os.pread)

    def appender(self) -> Appender:
        """The record writer of the hot path: ``append(fd, data, len(data))`` returns the count
        written (``len(data)`` when all is well); anything else sends the caller to
        :meth:`write` (-1: an error to raise from there). libc's ``write`` called raw when this
        object's ``write`` is the default one; else a wrapper of ``write`` (tests that fail or
        "crash" writes, :class:`PortableFileOps`)."""
        write = self.write
        if write is _WRITE and _RAW is not None:
            return _RAW

        def append(fd: int, data: bytes, n: int) -> int:
            return write(fd, data)

        return append

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def lock(self, fd: int) -> bool:
        """Take an exclusive ``flock`` without waiting; False when another holder has it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def access(self, path: str) -> Optional[str]:
        """None when ``path`` is a directory this process can write, else why not."""
        if not os.path.isdir(path):
            return "not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return "not writable"
        return None


class PortableFileOps(FileOps):
    """:class:`FileOps` with ``os.write`` (the fallback path, tested like the other)."""

    write = staticmethod(os.write)
