"""Reading import files: rows from JSON Lines, a JSON array or CSV, and the call each row makes.

JSON Lines are read line by line, a JSON array through a small incremental splitter
(:func:`iter_json_array`), CSV through :mod:`csv`: memory holds one chunk and one row, never the
file. A row that cannot be parsed is yielded as a :class:`RowError` beside its line number, so
one bad line never stops the rest. No client here: :func:`row_call` says which call a row makes.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from typing import Any, BinaryIO, Optional, Union

from ._errors import ConfigError
from ._event import DECODE_ERRORS, DEVICE_FIELDS, decode

__all__ = [
    "CHUNK",
    "ROW_TYPES",
    "CountingReader",
    "FileFormatError",
    "RowError",
    "format_of",
    "iter_json_array",
    "iter_rows",
    "row_call",
]

ROW_TYPES = ("track", "identify", "register_device")
_ALLOWED = {
    "track": frozenset(("type", "identifier", "event_name", "properties")),
    "identify": frozenset(("type", "identifier", "properties")),
    "register_device": frozenset(("type", "identifier", *DEVICE_FIELDS)),
}
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")

CHUNK = 1 << 16


class RowError(ValueError):
    """A row that cannot become a call; the message says why (the line is reported beside it)."""


class FileFormatError(ValueError):
    """The file's structure is broken beyond one row (e.g. a JSON file that is not an array)."""


# ----------------------------------------------------------------------------- reading rows
class CountingReader(io.RawIOBase):
    """Counts the bytes read from a raw stream (the progress bar's position)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.count += n
        return int(n or 0)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


# Runs of bytes the splitter never needs to look at: anything but brackets and quotes (and, between
# elements, commas), or a whole string. An unterminated string stops the run at its quote.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_SKIP_BETWEEN = re.compile(rb'(?:[^"\[\]{},]+|' + _STRING + rb")*", re.DOTALL)
_SKIP_INSIDE = re.compile(rb'(?:[^"\[\]{}]+|' + _STRING + rb")*", re.DOTALL)
_OPEN_FOR = {ord("]"): ord("["), ord("}"): ord("{")}


def iter_json_array(stream: BinaryIO, chunk_size: int = CHUNK) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line, element bytes)`` for each element of a top-level JSON array, reading
    ``chunk_size`` bytes at a time: memory holds one chunk and one element, never the file.

    ``line`` is where the element starts (1-based). An empty element (``[1,,2]``) is yielded as
    ``b""``; a trailing comma before ``]`` is tolerated. Raises :class:`FileFormatError` when the
    file is not an array or ends inside it. Elements are not validated here (the decoder does).

    >>> import io
    >>> list(iter_json_array(io.BytesIO(b'[{"a": 1},\\n {"b": "]"}]')))
    [(1, b'{"a": 1}'), (2, b'{"b": "]"}')]
    """
    buf = b""
    pos = 0  # where scanning resumes
    start = -1  # where the current element's text starts (after '[' or ','); -1 before the array
    counted, line = 0, 1  # `line` is the line number at offset `counted` of buf
    stack: list[int] = []  # brackets open inside the current element
    eof = False

    def line_at(offset: int) -> int:
        nonlocal counted, line
        line += buf.count(b"\n", counted, offset)
        counted = offset
        return line

    while True:
        if start < 0:  # before the array: white space, then '['
            stripped = buf.lstrip()
            if stripped[:3] == b"\xef\xbb\xbf" and not counted:
                stripped = stripped[3:].lstrip()
            if stripped:
                at = len(buf) - len(stripped)
                if stripped[:1] != b"[":
                    raise FileFormatError(
                        f"line {line_at(at)}: a .json file must hold one array of row objects"
                    )
                line_at(at)
                start = pos = at + 1
                continue
        else:
            pos = (_SKIP_INSIDE if stack else _SKIP_BETWEEN).match(buf, pos).end()  # type: ignore[union-attr]
            if pos < len(buf) and buf[pos] != 0x22:  # a bracket or a top-level comma
                char = buf[pos]
                pos += 1
                if char in b"[{":
                    stack.append(char)
                elif char == 0x2C:  # ','
                    text = buf[start : pos - 1]
                    yield line_at(start + len(text) - len(text.lstrip())), text.strip()
                    start = pos
                elif stack:
                    if stack.pop() != _OPEN_FOR[char]:
                        raise FileFormatError(f"line {line_at(pos - 1)}: mismatched {chr(char)!r}")
                elif char == 0x5D:  # ']' closes the array
                    text = buf[start : pos - 1]
                    if text.strip():
                        yield line_at(start + len(text) - len(text.lstrip())), text.strip()
                    return
                else:
                    raise FileFormatError(f"line {line_at(pos - 1)}: unexpected '}}' in the top-level array")
                continue
        # the buffer ends (or a string is cut by it): read on, keeping only the current element
        if eof:
            if start < 0:
                raise FileFormatError("the file is empty: a .json file must hold one array of row objects")
            text = buf[start:]
            where = line_at(start + len(text) - len(text.lstrip()))
            raise FileFormatError(f"line {where}: the file ends inside the array (an element is incomplete)")
        keep = max(0, start) if start >= 0 else len(buf)
        line_at(keep)
        buf, pos, counted = buf[keep:], pos - keep, 0
        if start >= 0:
            start = 0
        data = stream.read(chunk_size)
        eof = not data
        buf += data


def _typed(value: str) -> Any:
    """A CSV cell: JSON numbers and booleans typed, anything else a string."""
    if value == "true":
        return True
    if value == "false":
        return False
    if _JSON_NUMBER.match(value):
        try:
            return decode(value)
        except ValueError:  # out of range
            return value
    return value


def _csv_rows(stream: BinaryIO) -> Iterator[tuple[int, Union[dict[str, Any], RowError]]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        raise FileFormatError("the CSV file is empty (a header row is required)") from None
    header = [h.strip() for h in header]
    if "identifier" not in header:
        raise FileFormatError("line 1: the CSV header has no 'identifier' column")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise FileFormatError(f"line 1: duplicate CSV column(s): {', '.join(duplicates)}")
    end = reader.line_num
    for values in reader:
        line, end = end + 1, reader.line_num
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        if len(values) != len(header):
            yield line, RowError(f"row has {len(values)} values, the header has {len(header)} columns")
            continue
        yield line, _csv_row(header, values)


def _csv_row(header: list[str], values: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for name, value in zip(header, values):
        if value == "":
            continue  # empty cells are left out
        if name in ("type", "identifier", "event_name"):
            row[name] = value.strip()
        else:
            raw[name] = value
    kind = row.get("type") or ("track" if "event_name" in row else "identify")
    if kind == "register_device":
        for name in DEVICE_FIELDS:
            if name in raw and name != "attributes":
                value = raw.pop(name)
                row[name] = _typed(value) if name == "last_active_at" else value
        if raw:
            row["attributes"] = {k: _typed(v) for k, v in raw.items()}
    elif raw:
        row["properties"] = {k: _typed(v) for k, v in raw.items()}
    return row


def iter_rows(stream: BinaryIO, fmt: str) -> Iterator[tuple[int, Union[Any, RowError]]]:
    """Yield ``(line, row)`` from a ``jsonl``, ``json`` (array) or ``csv`` stream; a row that
    cannot be parsed comes as a :class:`RowError`, so one bad line never stops the rest.

    >>> import io
    >>> list(iter_rows(io.BytesIO(b'{"identifier": "u1"}\\n\\nnot json\\n'), "jsonl"))[0]
    (1, {'identifier': 'u1'})
    """
    if fmt == "csv":
        yield from _csv_rows(stream)
        return
    if fmt == "json":
        for line, element in iter_json_array(stream):
            if not element:
                yield line, RowError("empty array element")
                continue
            try:
                yield line, decode(element)
            except DECODE_ERRORS as exc:
                yield line, RowError(f"invalid JSON: {exc}")
        return
    for number, data in enumerate(stream, 1):
        if not data.strip():
            continue
        try:
            yield number, decode(data)
        except DECODE_ERRORS as exc:
            yield number, RowError(f"invalid JSON: {exc}")


def row_call(row: Any) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The client call for one row: ``(method, args, kwargs)``. Raises :class:`RowError`.

    ``type`` defaults to ``track`` when ``event_name`` is present, else ``identify``; device rows
    carry :meth:`CDPClient.register_device`'s keyword arguments.

    >>> row_call({"identifier": "u1", "event_name": "signup", "properties": {"plan": "pro"}})
    ('track', ('u1', 'signup', {'plan': 'pro'}), {})
    """
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, got {_json_type(row)}")
    kind = row.get("type")
    if kind is None or kind == "":
        kind = "track" if row.get("event_name") is not None else "identify"
    if kind not in ROW_TYPES:
        raise RowError(f"type must be one of track, identify, register_device; got {kind!r}")
    unknown = [k for k in row if k not in _ALLOWED[kind]]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise RowError(f"unknown field(s) for {kind} rows: {names}")
    identifier = row.get("identifier")
    if kind == "track":
        return "track", (identifier, row.get("event_name"), row.get("properties")), {}
    if kind == "identify":
        return "identify", (identifier, row.get("properties")), {}
    device = {k: row[k] for k in DEVICE_FIELDS if k in row}
    device.setdefault("device_id", None)
    device.setdefault("platform", None)
    return "register_device", (identifier,), device


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def format_of(path: str, given: Optional[str]) -> str:
    """The file's format: ``given``, else from its extension; ConfigError when neither says."""
    if given:
        return given
    suffix = os.path.splitext(path.lower())[1]
    if suffix not in _FORMATS:
        raise ConfigError(f"cannot tell the format of {path!r}: use .jsonl, .json or .csv, or --format")
    return _FORMATS[suffix]
