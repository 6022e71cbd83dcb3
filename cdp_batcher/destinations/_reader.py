"""A small strict HTTP/1.1 answer reader (RFC 9112) over any ``recv(n) -> bytes``.

It reads one answer: status line, head, and the body framed by Transfer-Encoding: chunked,
Content-Length, or the end of the connection; informational answers (1xx but 101) are skipped.
Anything odd raises :class:`~._transport.BadAnswer`, and the caller closes the connection:

- a status line that is not ``HTTP/1.x SP 3DIGIT``; a folded header line; a head over 64 KiB;
- Content-Length that is not digits only, or several Content-Length values that differ;
- a chunk size that is not hex digits (no sign, no ``0x``, no spaces but before a chunk-ext);
- a body or chunk line cut short by the end of the connection.

An answer is reusable (keep-alive) only when nothing in it was doubtful: HTTP/1.1 without
``Connection: close`` (or 1.0 with keep-alive), a known length, no bytes after the body, and not
both Transfer-Encoding and Content-Length. ``recv`` enforces the deadline (the fast path) or is
a plain buffered read (the fuzz test and the public path's 1xx handling).
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from ._transport import BadAnswer

__all__ = ["MAX_CONTENT", "MAX_HEAD", "read_answer"]

#: The most the reader accepts for an answer's head (all 1xx heads included) and for its body.
MAX_HEAD = 64 * 1024
MAX_CONTENT = 16 * 1024 * 1024
RECV = 65536

Recv = Callable[[int], bytes]

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;.*)?")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
_FOLDED = re.compile(rb"\r\n[ \t]")


#: Heads read before, exactly as they came (status line and fields, without the blank line), with
#: what reading them gave: (status, Retry-After text, Content-Length, HTTP keep-alive). A gateway
#: answers each event with the same head, or one that changes once a second (its Date), and the
#: same bytes always read the same: parsing them again would cost the sender most of its
#: reading (``make bench``: per-event route CPU). Only heads of final answers framed by one
#: Content-Length, up to ``KNOWN_HEAD`` bytes, for bodies (not HEAD); at most ``MAX_KNOWN``,
#: then the cache starts again.
_known: dict[bytes, tuple[int, Optional[str], int, bool]] = {}
KNOWN_HEAD = 1024
MAX_KNOWN = 32


def read_answer(recv: Recv, head_only: bool, first: bytes = b"") -> tuple[int, Optional[str], bytes, bool]:
    """Read one answer: (status, Retry-After text, body, whether the connection can be reused).
    ``first``: bytes of it the caller already received (else the reading starts with ``recv``)."""
    buf = first or recv(RECV)
    end = buf.find(b"\r\n\r\n")
    if 0 < end <= KNOWN_HEAD and not head_only:
        known = _known.get(buf[:end])
        if known is not None:  # read before: the same bytes read the same
            status, retry_after, length, keep_alive = known
            rest = buf[end + 4 :]
            if len(rest) < length:
                rest = _read_more(recv, rest, length)
            return status, retry_after, rest[:length], keep_alive and len(rest) == length
    heads = 0
    rest = b""
    while True:  # ``end``: where buf's first head ends (found above, then after each 1xx)
        while end < 0:
            if len(buf) + heads > MAX_HEAD:
                raise BadAnswer("head too long")
            more = recv(RECV)
            if not more:
                raise BadAnswer("closed before an answer" if not buf else "closed mid-answer")
            buf += more
            end = buf.find(b"\r\n\r\n")
        heads += end
        if heads > MAX_HEAD:
            raise BadAnswer("head too long")
        eol = buf.find(b"\r\n")
        found = _STATUS_LINE.fullmatch(buf, 0, eol)
        if found is None:
            raise BadAnswer("not an HTTP/1.x status line")
        minor, code = found.groups()
        status = int(code)
        rest = buf[end + 4 :]
        if 100 <= status < 200:  # informational (100 Continue, 103 Early Hints): the answer follows
            if status == 101:
                raise BadAnswer("101 Switching Protocols was not asked for")
            buf = rest or recv(RECV)
            if not buf:
                raise BadAnswer("closed after an informational answer")
            end = buf.find(b"\r\n\r\n")
            continue
        break
    head = buf[eol : end + 2]
    lower = head.lower()
    if _FOLDED.search(head) is not None:
        raise BadAnswer("folded header line")
    keep_alive = minor == b"1"  # HTTP/1.1 keeps the connection unless told otherwise
    connection = _header(lower, lower, b"\r\nconnection:")
    if connection is not None:
        keep_alive = b"close" not in connection if keep_alive else b"keep-alive" in connection
    retry = _header(head, lower, b"\r\nretry-after:")
    retry_after = retry.decode("latin-1").strip() if retry is not None else None
    encoding = _header(lower, lower, b"\r\ntransfer-encoding:")
    lengths = lower.count(b"\r\ncontent-length:")
    if head_only or status in (204, 304):
        if lengths:  # no body follows, but the framing must still be plain to keep the connection
            _content_length(lower, lengths)
        return status, retry_after, b"", keep_alive and not rest and not (encoding and lengths)
    if encoding is not None:
        if minor == b"0":
            keep_alive = False  # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing
        if lengths:
            keep_alive = False  # both: Transfer-Encoding wins, the connection is not trusted again
        if encoding.rsplit(b",", 1)[-1].strip() == b"chunked":
            content, rest = _read_chunked(recv, rest)
            return status, retry_after, content, keep_alive and not rest
        return status, retry_after, _read_to_close(recv, rest), False
    if not lengths:  # delimited by the end of the connection
        return status, retry_after, _read_to_close(recv, rest), False
    length = _content_length(lower, lengths)
    if heads == end and end <= KNOWN_HEAD:  # no informational answer before: the head is buf[:end]
        if len(_known) >= MAX_KNOWN:
            _known.clear()
        _known[buf[:end]] = (status, retry_after, length, keep_alive)
    if len(rest) < length:
        rest = _read_more(recv, rest, length)
    return status, retry_after, rest[:length], keep_alive and len(rest) == length


def _content_length(lower: bytes, count: int) -> int:
    """The one Content-Length value (all fields and list members equal, digits only)."""
    if count == 1:  # the usual answer: one field, one value
        pos = lower.find(b"\r\ncontent-length:") + 17
        text = lower[pos : lower.find(b"\r\n", pos)].strip(b" \t")
        if text.isdigit() and len(text) <= 15:
            length = int(text)
            if length > MAX_CONTENT:
                raise BadAnswer("answer too large")
            return length
    values: set[bytes] = set()
    pos = 0
    for _ in range(count):
        pos = lower.find(b"\r\ncontent-length:", pos) + 17
        value = lower[pos : lower.find(b"\r\n", pos)]
        values.update(part.strip(b" \t") for part in value.split(b","))
    if len(values) != 1:
        raise BadAnswer("differing Content-Length values")
    (text,) = values
    if not text.isdigit() or len(text) > 15:
        raise BadAnswer("bad Content-Length")
    length = int(text)
    if length > MAX_CONTENT:
        raise BadAnswer("answer too large")
    return length


def _header(source: bytes, lower: bytes, field: bytes) -> Optional[bytes]:
    """The value of a header in a head that starts with CRLF, or None; ``field`` is CRLF, the
    name in lower case and the colon."""
    start = lower.find(field)
    if start < 0:
        return None
    start += len(field)
    end = lower.find(b"\r\n", start)
    return source[start:end].strip()


def _read_to_close(recv: Recv, rest: bytes) -> bytes:
    parts = [rest]
    size = len(rest)
    while True:
        more = recv(RECV)
        if not more:
            return b"".join(parts)
        size += len(more)
        if size > MAX_CONTENT:
            raise BadAnswer("answer too large")
        parts.append(more)


def _read_more(recv: Recv, have: bytes, length: int) -> bytes:
    parts = [have]
    size = len(have)
    while size < length:
        more = recv(min(RECV, max(length - size, 4096)))
        if not more:
            raise BadAnswer("closed mid-answer")
        parts.append(more)
        size += len(more)
    return b"".join(parts)


def _line_end(recv: Recv, buf: bytes, pos: int) -> tuple[bytes, int, int]:
    """Receive until a CRLF follows ``pos``; returns (buffer, line start, CRLF index)."""
    eol = buf.find(b"\r\n", pos)
    while eol < 0:
        if len(buf) - pos > MAX_HEAD:
            raise BadAnswer("chunk line too long")
        more = recv(RECV)
        if not more:
            raise BadAnswer("closed mid-answer")
        buf = buf[pos:] + more
        pos = 0
        eol = buf.find(b"\r\n")
    return buf, pos, eol


def _read_chunked(recv: Recv, buf: bytes) -> tuple[bytes, bytes]:
    """Decode a chunked body; returns (body, bytes left over after it)."""
    parts: list[bytes] = []
    size = 0
    pos = 0
    trailers = 0
    while True:
        buf, pos, eol = _line_end(recv, buf, pos)
        found = _CHUNK_SIZE.fullmatch(buf, pos, eol)
        if found is None:
            raise BadAnswer("bad chunk size")
        chunk = int(found.group(1), 16)
        pos = eol + 2
        if chunk == 0:  # trailers (usually none), then an empty line
            while True:
                buf, pos, eol = _line_end(recv, buf, pos)
                if eol == pos:
                    return b"".join(parts), buf[eol + 2 :]
                trailers += eol - pos
                if trailers > MAX_HEAD:
                    raise BadAnswer("trailers too long")
                pos = eol + 2
        size += chunk
        if size > MAX_CONTENT:
            raise BadAnswer("answer too large")
        if len(buf) - pos < chunk + 2:
            buf = _read_more(recv, buf[pos:], chunk + 2)
            pos = 0
        parts.append(buf[pos : pos + chunk])
        if buf[pos + chunk : pos + chunk + 2] != b"\r\n":
            raise BadAnswer("bad chunk")
        pos += chunk + 2
