"""A bounded slice of the fuzz harness (fuzz_store.py; `make fuzz` runs it for hours): the core
and the reference read 1000 mutated files alike, and nothing crashes or hangs."""

from __future__ import annotations

import os
import pathlib
import sys

from fuzz_store import Worker, fuzz, make_input, write_seeds


def test_fuzz_slice(tmp_path):
    report = fuzz(seed=0, num_inputs=1000, crashes=str(tmp_path / "crashes"))
    details = [pathlib.Path(path[:-4] + ".txt").read_text().partition("\n\n")[0] for _, path in report.findings]
    assert report.findings == [], "\n".join(details)
    assert report.inputs == 1000
    assert report.opened >= 100 and report.refused >= 100, report  # the mutations reach records and refusals


def test_inputs_are_reproducible(tmp_path):
    seeds = write_seeds(str(tmp_path))
    assert make_input(seeds, 3, 17) == make_input(write_seeds(str(tmp_path)), 3, 17)
    assert make_input(seeds, 3, 17)[0] != make_input(seeds, 3, 18)[0]


def _worker(source: str) -> list[str]:
    return [sys.executable, "-c", f"import os, sys, time\nfor line in sys.stdin:\n    {source}"]


def test_a_dying_or_hanging_worker_is_caught_and_replaced(tmp_path):
    path = tmp_path / "x.ced"
    path.write_bytes(b"")
    worker = Worker(str(tmp_path), timeout=60.0, command=_worker("os.abort()"))
    kind, detail = worker.run(str(path))
    assert kind == "crash" and detail.startswith("exit status -6"), detail
    assert worker.run(str(path))[0] == "crash"  # a fresh worker
    worker = Worker(str(tmp_path), timeout=0.5, command=_worker("time.sleep(60)"))
    assert worker.run(str(path))[0] == "hang"
    worker.stop()


def test_findings_are_saved_with_how_to_replay(tmp_path):
    crashes = tmp_path / "crashes"
    report = fuzz(seed=5, num_inputs=2, crashes=str(crashes), timeout=60.0, worker_command=_worker("os._exit(3)"))
    assert sorted(os.listdir(crashes)) == ["crash-5-0.ced", "crash-5-0.txt", "crash-5-1.ced", "crash-5-1.txt"]
    text = (crashes / "crash-5-1.txt").read_text()
    assert text.startswith("crash: input 5:1: seed store ") and "exit status 3" in text
    assert "--replay " + str(crashes / "crash-5-1.ced") in text
    assert report.inputs == 2 and len(report.findings) == 2
