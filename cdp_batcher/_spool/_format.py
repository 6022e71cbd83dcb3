"""The spool's bytes on disk: file headers, record frames, acknowledgement entries. Pure functions.

Every file starts with a 32-byte header::

    magic 8s | version u16 | header size u16 | flags u32 | created ns u64 | crc32 u32 | 4 zero bytes

``magic`` says what the file is (a segment of records, or an acknowledgement log); ``version`` is
:data:`FORMAT_VERSION` (a reader leaves a file with a newer version untouched); the CRC covers
the 24 bytes before it. Frames follow the header back to back::

    mark u8 (0xC5) | kind u8 | length u32 | crc32(body, seed=kind) u32 | body (length bytes)

10 bytes per record on top of the encoded event. The CRC covers the kind and the body, and a
corrupt length makes it fail too (the body span is wrong), so a reader can resynchronise after
garbage: it looks for the next mark byte whose frame checks out.
"""

from __future__ import annotations

import struct
import time
import zlib
from typing import NamedTuple, Optional

__all__ = [
    "ACK_KIND",
    "ACK_MAGIC",
    "FORMAT_VERSION",
    "FRAME",
    "HEADER_SIZE",
    "MARK",
    "MAX_BODY",
    "SEGMENT_MAGIC",
    "Frame",
    "Header",
    "HeaderError",
    "NewerVersion",
    "ack_entry",
    "file_header",
    "frame",
    "parse_acks",
    "parse_frames",
    "read_header",
]

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"CDPSPSEG"
ACK_MAGIC = b"CDPSPACK"
MARK = 0xC5
_MARK_BYTE = bytes([MARK])
#: The kind byte of an acknowledgement entry (events use 0..2, see ``_event``).
ACK_KIND = 0xAC
#: Larger lengths are corruption (an event is far smaller: max_queue_bytes caps it).
MAX_BODY = 16 * 1024 * 1024

_HEADER = struct.Struct("<8sHHIQ")
HEADER_SIZE = 32
FRAME = struct.Struct("<BBII")
_ACK = struct.Struct("<III")
_crc32 = zlib.crc32
_pack_frame = FRAME.pack
_unpack_frame = FRAME.unpack_from
_FRAME_SIZE = FRAME.size


class HeaderError(ValueError):
    """A file header that is missing, torn or not ours."""


class NewerVersion(HeaderError):
    """A file written by a newer format version: leave it for a newer cdp_batcher."""

    def __init__(self, version: int) -> None:
        super().__init__(f"format version {version} (this cdp_batcher reads up to {FORMAT_VERSION})")
        self.version = version


class Header(NamedTuple):
    magic: bytes
    version: int
    created_ns: int


def file_header(magic: bytes, created_ns: Optional[int] = None) -> bytes:
    """The 32 header bytes of a new file."""
    fields = _HEADER.pack(
        magic, FORMAT_VERSION, HEADER_SIZE, 0, time.time_ns() if created_ns is None else created_ns
    )
    return fields + struct.pack("<I4x", _crc32(fields))


def read_header(data: bytes, magic: bytes) -> Header:
    """Check a file's first bytes; raise :class:`HeaderError` or :class:`NewerVersion`."""
    if len(data) < HEADER_SIZE:
        raise HeaderError(f"header torn ({len(data)} of {HEADER_SIZE} bytes)")
    fields = data[: _HEADER.size]
    got_magic, version, size, _flags, created = _HEADER.unpack(fields)
    if got_magic != magic:
        raise HeaderError(f"not a spool file (magic {got_magic!r})")
    (crc,) = struct.unpack_from("<I", data, _HEADER.size)
    if crc != _crc32(fields):
        raise HeaderError("header checksum mismatch")
    if version > FORMAT_VERSION:
        raise NewerVersion(version)
    if version < 1 or size != HEADER_SIZE:
        raise HeaderError(f"bad header (version {version}, size {size})")
    return Header(got_magic, version, created)


def frame(kind: int, body: bytes) -> bytes:
    """One record, framed (what a single ``os.write`` appends)."""
    return _pack_frame(MARK, kind, len(body), _crc32(body, kind)) + body


def ack_entry(seq: int, start: int, end: int) -> bytes:
    """An acknowledgement: the records of segment ``seq`` in ``[start, end)`` are resolved."""
    return frame(ACK_KIND, _ACK.pack(seq, start, end))


class Frame(NamedTuple):
    start: int  # offset of the frame in the file
    end: int  # offset just past it
    kind: int
    body: bytes


def parse_frames(
    data: bytes, offset: int, *, eof: bool, kinds: frozenset[int] = frozenset((0, 1, 2))
) -> tuple[list[Frame], list[tuple[int, int]], int]:
    """Frames in ``data`` (which starts at file offset ``offset``).

    Returns ``(frames, bad_spans, consumed)``: the valid frames in order, the byte spans
    (file offsets) that are not part of any valid frame, and the file offset up to which
    ``data`` was used. Without ``eof`` a frame cut by the end of ``data`` is left for the next
    read (``consumed`` stops before it); with ``eof`` it is a torn tail and becomes a bad span.
    """
    frames: list[Frame] = []
    bad: list[tuple[int, int]] = []
    n = len(data)
    pos = 0
    bad_from = -1
    while pos < n:
        ok = False
        short = False
        if data[pos] == MARK and pos + _FRAME_SIZE <= n:
            _, kind, length, crc = _unpack_frame(data, pos)
            end = pos + _FRAME_SIZE + length
            if kind in kinds and length <= MAX_BODY:
                if end <= n:
                    body = data[pos + _FRAME_SIZE : end]
                    ok = _crc32(body, kind) == crc
                else:
                    short = True
        elif data[pos] == MARK:
            short = True
        if ok:
            if bad_from >= 0:
                bad.append((offset + bad_from, offset + pos))
                bad_from = -1
            frames.append(Frame(offset + pos, offset + end, kind, body))
            pos = end
            continue
        if short and not eof and bad_from < 0:
            # A frame that may be complete once more is read: stop here.
            return frames, bad, offset + pos
        if short and not eof:
            # Inside a bad span, a candidate cut by the end of data: decide on the next read.
            bad.append((offset + bad_from, offset + pos))
            return frames, bad, offset + pos
        if bad_from < 0:
            bad_from = pos
        nxt = data.find(_MARK_BYTE, pos + 1)
        pos = n if nxt < 0 else nxt
    if bad_from >= 0:  # no mark byte up to the end: nothing there can start a frame
        bad.append((offset + bad_from, offset + n))
    return frames, bad, offset + n


def parse_acks(data: bytes, offset: int) -> list[tuple[int, int, int]]:
    """The (seq, start, end) entries of an acknowledgement log's body (a torn tail is ignored)."""
    frames, _, _ = parse_frames(data, offset, eof=True, kinds=frozenset((ACK_KIND,)))
    out = []
    for f in frames:
        if len(f.body) == _ACK.size:
            out.append(_ACK.unpack(f.body))
    return out
