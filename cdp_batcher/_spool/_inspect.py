"""A read-only look at a spool directory: what is on disk, per destination and per owner.

Used by ``cdp-batcher spool inspect DIR``. It writes nothing. To tell a live owner from a dead
one it tries each owner's lock for an instant (and lets go at once): an adopter that tries
at that very moment fails once and adopts on its next pass.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Optional

from . import _format as fmt
from ._files import FileOps
from ._log import logical_end, read_acks, read_frames

__all__ = ["DestinationOnDisk", "OwnerOnDisk", "SpoolOnDisk", "inspect_spool"]


@dataclasses.dataclass(frozen=True)
class DestinationOnDisk:
    """One destination's records on disk (not yet resolved), in files of one owner or in all."""

    files: int
    records: int
    bytes: int
    oldest_ns: Optional[int]  # wall clock of the oldest segment's creation (None: no records)
    corrupt_bytes: int = 0
    newer_files: int = 0  # written by a newer format version (left alone)

    def oldest_age(self, now_ns: Optional[int] = None) -> Optional[float]:
        """Seconds since the oldest segment holding records was created."""
        if self.oldest_ns is None:
            return None
        return max(0.0, ((time.time_ns() if now_ns is None else now_ns) - self.oldest_ns) / 1e9)

    def __add__(self, other: DestinationOnDisk) -> DestinationOnDisk:
        oldest = [t for t in (self.oldest_ns, other.oldest_ns) if t is not None]
        return DestinationOnDisk(
            self.files + other.files,
            self.records + other.records,
            self.bytes + other.bytes,
            min(oldest) if oldest else None,
            self.corrupt_bytes + other.corrupt_bytes,
            self.newer_files + other.newer_files,
        )


_EMPTY = DestinationOnDisk(0, 0, 0, None)


@dataclasses.dataclass(frozen=True)
class OwnerOnDisk:
    name: str
    pid: Optional[int]
    alive: bool
    destinations: Mapping[str, DestinationOnDisk]


@dataclasses.dataclass(frozen=True)
class SpoolOnDisk:
    path: str
    owners: tuple[OwnerOnDisk, ...]

    @property
    def destinations(self) -> dict[str, DestinationOnDisk]:
        out: dict[str, DestinationOnDisk] = {}
        for owner in self.owners:
            for dest, info in owner.destinations.items():
                out[dest] = out.get(dest, _EMPTY) + info
        return out

    @property
    def records(self) -> int:
        return sum(d.records for d in self.destinations.values())


def inspect_spool(path: str, ops: Optional[FileOps] = None) -> SpoolOnDisk:
    """What ``path`` holds. Raises ``OSError`` when it cannot be listed."""
    ops = ops if ops is not None else FileOps()
    owners = []
    for name in sorted(ops.listdir(path)):
        if not name.startswith("o-"):
            continue
        owner_dir = os.path.join(path, name)
        try:
            names = ops.listdir(owner_dir)
        except OSError:
            continue
        dests = sorted(
            {n.split(".")[0] for n in names if n.endswith(".lock")}
            | {n.rsplit("-", 1)[0] for n in names if n.endswith(".seg")}
        )
        alive = False
        found: dict[str, DestinationOnDisk] = {}
        for dest in dests:
            alive = _alive(ops, os.path.join(owner_dir, f"{dest}.lock")) or alive
            found[dest] = _destination(ops, owner_dir, dest, names)
        try:
            pid: Optional[int] = int(name.split("-")[1])
        except (IndexError, ValueError):
            pid = None
        owners.append(OwnerOnDisk(name, pid, alive, found))
    return SpoolOnDisk(os.path.abspath(path), tuple(owners))


def _alive(ops: FileOps, lock_path: str) -> bool:
    try:
        fd = ops.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not ops.lock(fd)
    finally:
        ops.close(fd)


def _destination(ops: FileOps, owner_dir: str, dest: str, names: list[str]) -> DestinationOnDisk:
    try:
        acks = read_acks(ops, os.path.join(owner_dir, f"{dest}.ack"))
    except fmt.NewerVersion:
        acks = {}
    total = _EMPTY
    for name in sorted(names):
        if not (name.startswith(dest + "-") and name.endswith(".seg")):
            continue
        try:
            seq = int(name[len(dest) + 1 : -4])
            fd = ops.open(os.path.join(owner_dir, name), os.O_RDONLY)
        except (ValueError, OSError):
            continue
        try:
            size = ops.fstat(fd).st_size
            try:
                header = fmt.read_header(ops.pread(fd, fmt.HEADER_SIZE, 0), fmt.SEGMENT_MAGIC)
            except fmt.NewerVersion:
                total = total + DestinationOnDisk(1, 0, size, None, 0, 1)
                continue
            except fmt.HeaderError:
                total = total + DestinationOnDisk(1, 0, size, None, size)
                continue
            end = logical_end(ops, fd, size)
            acked = sorted(acks.get(seq, ()))
            records = corrupt = used = 0
            pos = fmt.HEADER_SIZE
            while pos < end:
                frames, bad, pos = read_frames(ops, fd, pos, end)
                for f in frames:
                    if not any(s <= f.start < e for s, e in acked):
                        records += 1
                        used += f.end - f.start
                corrupt += sum(e - s for s, e in bad)
            total = total + DestinationOnDisk(
                1, records, used, header.created_ns if records else None, corrupt
            )
        finally:
            ops.close(fd)
    return total
