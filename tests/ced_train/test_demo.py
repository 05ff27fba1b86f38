"""ced-train demo --quick: the whole pipeline at toy size writes results.json and results.png."""

from __future__ import annotations

import json

import pytest

from ced_train.cli import main
from ced_train.demo import STUDENTS, DemoConfig, demo


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0  # 2 jobs: spawned processes
    return out, json.loads((out / "results.json").read_text())


def test_quick_demo_writes_results(quick, capsys):
    out, results = quick
    assert {"teachers", "ensemble_mAP", "students", "store_bytes", "seconds"} <= set(results)
    assert [t["name"] for t in results["teachers"]] == ["teacher1", "teacher2"]
    assert set(results["students"]) == set(STUDENTS) == {"none", "student_only", "teacher_only", "consistent"}
    for value in [t["mAP"] for t in results["teachers"]] + [results["ensemble_mAP"], *results["students"].values()]:
        assert 0.0 <= value <= 1.0
    config = DemoConfig.quick()
    records = config.num_train * config.store_epochs * (4 * config.k + 4)
    assert records < results["store_bytes"] < records + 4096 + 64 * config.num_train + 4096
    assert results["records_per_s"] > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_is_deterministic_in_one_process(quick, tmp_path, capsys):
    _, results = quick
    again = demo(tmp_path, DemoConfig.quick(jobs=1))
    assert again["teachers"] == results["teachers"]
    assert again["ensemble_mAP"] == results["ensemble_mAP"]
    assert again["students"] == results["students"]
    assert again["store_bytes"] == results["store_bytes"]
    assert "student consistent (augmented store, aug store)" in capsys.readouterr().out


def test_recipe_time_mask_scales_with_the_clip():
    assert DemoConfig().recipe().time_mask_max == 37  # 192 * 193 / 1001 frames
    assert DemoConfig().recipe().freq_mask_max == 24
