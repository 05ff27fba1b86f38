"""Progress lines (ced_train.progress): counts, rate, ETA; silent when disabled."""

import doctest
import re

import ced_train.progress
from ced_train.progress import Progress, format_duration

LINE = r"extract t\.ced: {done}/1,000 records \({percent}%\), [\d,]+\.\d records/s, ETA (\d+:)?\d+:\d\d"


def test_lines_show_counts_rate_and_eta(capsys):
    with Progress("extract t.ced", 1000, "records", every=0.0) as progress:
        progress.update(250)
        progress.update(250)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3  # two updates and the final count
    assert re.fullmatch(LINE.format(done=250, percent=25), lines[0]), lines[0]
    assert re.fullmatch(LINE.format(done=500, percent=50), lines[-1]), lines[-1]


def test_disabled_or_short_runs_print_nothing(capsys):
    with Progress("x", 10, "steps", enabled=False, every=0.0) as progress:
        progress.update(10)
    with Progress("x", 10, "steps", every=60.0) as progress:  # faster than one interval
        progress.update(10)
    assert capsys.readouterr().err == ""
    assert progress.done == 10 and progress.eta() == 0.0


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 61, 3600, 86399)] == ["0:00", "0:59", "1:01", "1:00:00",
                                                                         "23:59:59"]


def test_docstring_examples():
    assert doctest.testmod(ced_train.progress).failed == 0
