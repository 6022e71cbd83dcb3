"""The spool's only door to the file system: one small object, so tests can fail or "crash" any call.

Every file operation of the spool goes through a :class:`FileOps`. Tests subclass it to raise an
``OSError`` (a bad disk) or a :class:`Crash` (the process dies between two steps: nothing after
it runs) at the n-th call; the spool never catches :class:`Crash`, which is why it is not an
``Exception``.
"""

from __future__ import annotations

import fcntl
import os
from typing import Optional

__all__ = ["Crash", "FileOps"]


class Crash(BaseException):
    """Raised by a test's :class:`FileOps` to stop the spool dead between two steps."""


class FileOps:
    """Thin wrappers over ``os``; each method is one system call (the unit of crash injection)."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    #: The builtins themselves (no Python frame): ``write`` is on the hot path.
    write = staticmethod(os.write)
    pread = staticmethod(os.pread)

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
