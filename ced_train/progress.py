"""A progress line with rate and ETA on stderr, for every operation that can take a while.

``extract``, ``train`` (each epoch's steps), ``evaluate`` and ``check_store`` report through it
when asked to (the command line asks unless ``--quiet``); library calls are silent by default.
The line looks like cedstore's (``cedstore merge``, ``verify``)::

    extract teacher.ced: 12,800/40,000 records (32%), 85 records/s, ETA 5:20

Example:
    >>> with Progress("evaluate", total=len(dataset), unit="chunks", enabled=True) as progress:
    ...     progress.update(32)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "format_duration"]

EVERY_SECONDS = 5.0  # at most one line this often (a log file stays readable)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour), rounded to the second.

    Example:
        >>> format_duration(3725.4), format_duration(59.6)
        ('1:02:05', '1:00')
    """
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Counts ``done`` of ``total`` units; shows ``label: done/total unit (p%), rate unit/s, ETA``.

    A line is printed at most every ``every`` seconds while running, and once at the end
    (leaving the ``with`` block without an error) if the operation printed any or ran at least
    ``every`` seconds.

    Args:
        label: what is running, e.g. ``"extract teacher.ced"``.
        total: units to do.
        unit: their name, plural (``"records"``, ``"steps"``, ``"chunks"``).
        enabled: False prints nothing (the counts are still kept).
        every: seconds between lines.
    """

    def __init__(self, label: str, total: int, unit: str, enabled: bool = True,
                 every: float = EVERY_SECONDS) -> None:
        self.label, self.total, self.unit, self.enabled, self.every = label, total, unit, enabled, every
        self.done = 0
        self.start = self._last = time.monotonic()
        self._shown = False

    def update(self, count: int) -> None:
        """Add ``count`` finished units; print a line if the last one is ``every`` seconds old."""
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every:
            self._show(now)

    @property
    def seconds(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start

    def eta(self) -> float:
        """Seconds left at the rate so far (inf before the first unit)."""
        rate = self.done / max(self.seconds, 1e-9)
        return (self.total - self.done) / rate if rate > 0 else float("inf")

    def line(self) -> str:
        """The progress line for the counts so far."""
        rate = self.done / max(self.seconds, 1e-9)
        eta = self.eta()
        percent = 100 * self.done / self.total if self.total else 100.0
        return (f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({percent:.0f}%), "
                f"{rate:,.1f} {self.unit}/s, ETA {format_duration(eta) if eta < 1e7 else '?'}")

    def _show(self, now: float) -> None:
        print(self.line(), file=sys.stderr, flush=True)
        self._last, self._shown = now, True

    def finish(self) -> None:
        """Print the final count, if a line was printed before or the run took ``every`` seconds."""
        if self.enabled and (self._shown or self.seconds >= self.every):
            self._show(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
