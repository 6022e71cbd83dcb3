"""A small progress display for the command line (no dependency).

On a terminal it redraws one line in place (bar, rows, rate, ETA) a few times a second; elsewhere
(CI logs, pipes) it prints a plain line every few seconds. Log lines and messages written through
:meth:`Progress.write_line` clear the bar first, so the two never mix on one line.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional, TextIO

__all__ = ["Progress", "format_duration"]

TTY_INTERVAL = 0.1
PLAIN_INTERVAL = 5.0
RATE_WINDOW = 5.0
BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour).

    >>> format_duration(83.4)
    '1:23'
    """
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Progress of a long job over a file of ``total_bytes`` bytes (``None``: unknown size).

    Call :meth:`update` as often as you like: it renders only when the interval has passed.

    >>> import io
    >>> p = Progress(1000, io.StringIO(), tty=False, label="import")
    >>> p.update(rows=10, bytes_read=500, force=True)
    >>> p.finish()
    """

    def __init__(
        self,
        total_bytes: Optional[int],
        stream: TextIO,
        *,
        tty: Optional[bool] = None,
        interval: Optional[float] = None,
        label: str = "progress",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_bytes = total_bytes if total_bytes else None
        self.stream = stream
        if tty is None:
            isatty = getattr(stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self.interval = interval if interval is not None else (TTY_INTERVAL if tty else PLAIN_INTERVAL)
        self.label = label
        self._clock = clock
        self._start = clock()
        self._next = self._start + self.interval
        self._samples: deque[tuple[float, int, int]] = deque()
        self._shown = False  # a bar is drawn on the current terminal line
        self._lock = threading.Lock()
        self._last: tuple[int, int, str] = (0, 0, "")
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self._fill, self._empty = ("█", "░") if encoding == "utf8" else ("#", "-")

    def due(self) -> bool:
        """True when :meth:`update` would draw now (lets callers skip computing ``extra``)."""
        return self._clock() >= self._next

    def update(self, rows: int, bytes_read: int, extra: str = "", *, force: bool = False) -> None:
        """Record the job's position; draw when due (or at once with ``force``)."""
        now = self._clock()
        if now < self._next and not force:
            return
        self._next = now + self.interval
        with self._lock:
            self._last = (rows, bytes_read, extra)
            samples = self._samples
            samples.append((now, rows, bytes_read))
            while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
                samples.popleft()
            self._draw(self._line(now, rows, bytes_read, extra))

    def _rates(self, now: float, rows: int, bytes_read: int) -> tuple[float, float]:
        first_t, first_rows, first_bytes = self._samples[0] if self._samples else (self._start, 0, 0)
        if now - first_t < 0.5:  # too short a window: use the whole run
            first_t, first_rows, first_bytes = self._start, 0, 0
        span = max(now - first_t, 1e-6)
        return (rows - first_rows) / span, (bytes_read - first_bytes) / span

    def _line(self, now: float, rows: int, bytes_read: int, extra: str) -> str:
        rate, byte_rate = self._rates(now, rows, bytes_read)
        parts = []
        total = self.total_bytes
        if total:
            frac = min(1.0, bytes_read / total)
            if self.tty:
                filled = int(frac * BAR_WIDTH)
                parts.append(f"[{self._fill * filled}{self._empty * (BAR_WIDTH - filled)}]")
            parts.append(f"{frac * 100:3.0f}%")
        parts.append(f"{rows:,} rows")
        parts.append(f"{rate:,.0f} rows/s")
        if extra:
            parts.append(extra)
        if total and byte_rate > 0 and bytes_read < total:
            parts.append(f"ETA {format_duration((total - bytes_read) / byte_rate)}")
        elif not self.tty:
            parts.append(f"elapsed {format_duration(now - self._start)}")
        return f"{self.label}: " + "  ".join(parts)

    def _draw(self, line: str) -> None:
        try:
            if self.tty:
                self.stream.write("\r" + line + "\x1b[K")
                self._shown = True
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream never stops the job
            pass

    def write_line(self, text: str) -> None:
        """Write a whole line (a message, a log record) without mixing it into the bar."""
        with self._lock:
            try:
                if self._shown:
                    self.stream.write("\r\x1b[K")
                    self._shown = False
                self.stream.write(text + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def finish(self) -> None:
        """Draw the final position (on a terminal) and end the bar's line."""
        with self._lock:
            if self.tty and self._shown:
                rows, bytes_read, extra = self._last
                self._draw(self._line(self._clock(), rows, bytes_read, extra))
                try:
                    self.stream.write("\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
                self._shown = False
