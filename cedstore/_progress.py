"""Progress with rate and ETA on stderr, for operations that can take more than a few seconds."""

from __future__ import annotations

import sys
import time

_QUIET_SECONDS = 2.0  # an automatic display starts only after this long: short runs print nothing
_EVERY_SECONDS = 0.5  # at most this often


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Counts `done` of `total` units and shows `label: done/total unit (p%), rate/s, ETA m:ss`.

    Args:
        progress: None shows it on an interactive stderr once the operation has run for 2 s;
            True always shows it (one line per update on a non-terminal); False never.

    Example:
        >>> with Progress("merge", total=n, unit="records", progress=None) as p:
        ...     p.update(len(chunk))
    """

    def __init__(self, label: str, total: int, unit: str, progress: bool | None):
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        stream = sys.stderr
        self._terminal = bool(getattr(stream, "isatty", lambda: False)())
        self._enabled = self._terminal if progress is None else bool(progress)
        self._quiet_until = _QUIET_SECONDS if progress is None else 0.0
        self._start = self._last = time.monotonic()
        self._shown = False

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self._enabled and now - self._start >= self._quiet_until and now - self._last >= _EVERY_SECONDS:
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        percent = 100 * self.done / self.total if self.total else 100.0
        line = (f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({percent:.0f}%), "
                f"{rate:,.0f} {self.unit}/s, ETA {eta}")
        print(f"\r{line}\x1b[K" if self._terminal else line, end="" if self._terminal else "\n",
              file=sys.stderr, flush=True)
        self._last, self._shown = now, True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._enabled and (self._shown or self._quiet_until == 0.0):
            self._show(time.monotonic())  # the final count, once
        if self._shown and self._terminal:
            print(file=sys.stderr, flush=True)
