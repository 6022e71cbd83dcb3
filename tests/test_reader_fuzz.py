"""Fuzzing the answer reader: random and mutated answers, cut into random pieces.

Whatever the bytes, ``read_answer`` returns or raises BadAnswer (never anything else, never a
hang: the feed ends, and every call must make progress), and it never calls a connection
reusable after an answer that was odd: bytes left after the body, a malformed or conflicting
length, a chunk size that is not plain hex.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdp_batcher.destinations import _reader
from cdp_batcher.destinations._reader import read_answer
from cdp_batcher.destinations._transport import BadAnswer

pytestmark = pytest.mark.timeout(120)

SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 207 Multi\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab\r\n\r\n3;x=1\r\ncde\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nfail",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nConnection: close\r\n\r\nbusy",
    b"HTTP/1.1 204 No Content\r\n\r\n",
]
PIECES = [b"\r\n", b"\r\n\r\n", b"Content-Length: ", b"5, 7", b"-2", b"0x5", b"+1", b" ", b";", b"0\r\n\r\n",
          b"Transfer-Encoding: chunked\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b"xx", b"\x00", b"\t"]  # fmt: skip


class Feed:
    """``recv`` over fixed pieces; then EOF. Counts calls (each must return data or end)."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self.pieces: list[bytes] = []
        pos = 0
        for cut in sorted(set(c % (len(data) + 1) for c in cuts)):
            self.pieces.append(data[pos:cut])
            pos = cut
        self.pieces.append(data[pos:])
        self.pieces = [p for p in self.pieces if p]
        self.calls = 0

    def recv(self, n: int) -> bytes:
        self.calls += 1
        assert self.calls < 100_000, "the reader keeps asking after EOF"
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > n:
            self.pieces.insert(0, piece[n:])
            piece = piece[:n]
        return piece


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "flip", "piece", "tail"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == "piece":
            data[pos:pos] = draw(st.sampled_from(PIECES))
        else:
            data += draw(st.sampled_from(PIECES))
    return bytes(data)


def _heads(data: bytes) -> bytes:
    """The heads of an accepted answer: informational ones, then the answer's own, without what
    follows (a body, chunks or trailers may hold "Content-Length:" too: that is no framing)."""
    pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0 or not re.match(rb"HTTP/1\.[01] 1[0-9][0-9]", data[pos:end]):
            return data[: end + 2] if end >= 0 else data
        pos = end + 4


def _check(data: bytes, cuts: list[int], head_only: bool) -> None:
    feed = Feed(data, cuts)
    try:
        status, retry_after, content, reusable = read_answer(feed.recv, head_only)
    except BadAnswer:
        return
    assert 200 <= status <= 999  # informational answers are never the answer
    assert retry_after is None or isinstance(retry_after, str)
    assert head_only is False or content == b""
    if reusable:
        # Bytes after the answer in the same read: never reusable. (Bytes that arrive later
        # are the pool's check before reuse; the reader cannot see them.) And the framing must
        # have been plain.
        if not feed.pieces:
            more = Feed(data + b"X", [])
            try:
                again = read_answer(more.recv, head_only)
            except BadAnswer:
                again = None
            assert again is None or again[3] is False, "reusable with a byte after the answer"
        heads = _heads(data).lower()
        lengths = re.findall(rb"\r\ncontent-length:([^\r]*)", heads)
        if lengths:
            values = {v.strip(b" \t") for field in lengths for v in field.split(b",")}
            assert len(values) == 1 and next(iter(values)).isdigit()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.lists(st.integers(0, 400), max_size=6), st.booleans())
@example(  # "Content-Length: " after the head (here a HEAD answer's unread rest): not its framing
    b"HTTP/1.1 207 \x00ulti\r\nTransfer-Encoding: chunked\r\n\r\n\x004\r\nab\r\n\r\n3;x=1\r\ncde\r\n0\r\nT: 1\r\n\r\nContent-Length: ",
    [50],
    True,
)
def test_mutated_answers(data: bytes, cuts: list[int], head_only: bool) -> None:
    """Mutated real answers: BadAnswer or a plain, fully consumed answer."""
    _check(data, cuts, head_only)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=4))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    """Random bytes (after a real status line, or not): never anything but BadAnswer."""
    _check(data, cuts, False)
    _check(b"HTTP/1.1 200 OK\r\n" + data, cuts, False)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([b"-2", b"0x5", b"+1", b" 5", b"5_0", b"\xd9\xa1", b"", b"g"]), st.booleans())
def test_odd_chunk_sizes_are_refused(size: bytes, with_ext: bool) -> None:
    """A chunk size that is not plain hex digits is refused, never reused."""
    line = size + (b";x=1" if with_ext else b"")
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"\r\nhello\r\n0\r\n\r\n"
    with pytest.raises(BadAnswer):
        read_answer(Feed(raw, []).recv, False)


def _outcome(data: bytes, cuts: list[int], head_only: bool) -> object:
    try:
        return read_answer(Feed(data, cuts).recv, head_only)
    except BadAnswer as exc:
        return f"BadAnswer: {exc}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answers(),
    st.lists(st.integers(0, 400), max_size=6),
    st.lists(st.integers(0, 400), max_size=6),
    st.booleans(),
)
def test_a_head_read_before_reads_the_same(
    data: bytes, cuts: list[int], later: list[int], head_only: bool
) -> None:
    """The second reading of an answer (its head known from the first) gives what reading it
    afresh gives, however the bytes come."""
    _reader._known.clear()
    _outcome(data, cuts, head_only)
    again = _outcome(data, later, head_only)
    _reader._known.clear()
    assert again == _outcome(data, later, head_only)


class _Unparsable:
    def fullmatch(self, *args: object) -> None:
        raise AssertionError("a known head was parsed again")


def test_known_heads_are_reused_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A head read once is not parsed again (the same bytes, another body); a head that differs
    in one byte is read afresh; informational answers and HEAD answers are never remembered;
    the cache holds at most MAX_KNOWN heads."""
    _reader._known.clear()
    head = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nX-A: 1"
    assert read_answer(Feed(head + b"\r\n\r\n{}", []).recv, False) == (202, None, b"{}", True)
    assert list(_reader._known) == [head]
    with monkeypatch.context() as patched:
        patched.setattr(_reader, "_STATUS_LINE", _Unparsable())
        assert read_answer(Feed(head + b"\r\n\r\n[]", []).recv, False) == (202, None, b"[]", True)
    # Known: a body that comes later, and a byte too many, still read as the general path would.
    assert read_answer(Feed(head + b"\r\n\r\nab", [len(head) + 5]).recv, False) == (202, None, b"ab", True)
    assert read_answer(Feed(head + b"\r\n\r\nabX", []).recv, False) == (202, None, b"ab", False)
    other = head.replace(b"202 Accepted", b"503 Accepted").replace(b"X-A: 1", b"Retry-After: 3")
    assert read_answer(Feed(other + b"\r\n\r\nno", []).recv, False) == (503, "3", b"no", True)
    assert len(_reader._known) == 2
    _reader._known.clear()
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    assert read_answer(Feed(hints + head + b"\r\n\r\n{}", []).recv, False)[0] == 202
    assert read_answer(Feed(head + b"\r\n\r\n", []).recv, True) == (202, None, b"", True)
    assert not _reader._known
    for i in range(_reader.MAX_KNOWN + 5):
        read_answer(Feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-N: %d\r\n\r\n" % i, []).recv, False)
        assert 1 <= len(_reader._known) <= _reader.MAX_KNOWN
