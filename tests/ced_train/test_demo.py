"""ced-train demo --quick: the whole pipeline at toy size writes results.json and results.png."""

from __future__ import annotations

import json

from ced_train.cli import main
from ced_train.demo import STUDENTS, DemoConfig


def test_quick_demo_writes_results(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"teachers", "ensemble_mAP", "students", "store_bytes", "seconds"} <= set(results)
    assert [t["name"] for t in results["teachers"]] == ["teacher1", "teacher2"]
    assert set(results["students"]) == set(STUDENTS) == {"none", "student_only", "teacher_only", "consistent"}
    for value in [t["mAP"] for t in results["teachers"]] + [results["ensemble_mAP"], *results["students"].values()]:
        assert 0.0 <= value <= 1.0
    quick = DemoConfig.quick()
    records = quick.num_train * quick.store_epochs * (4 * quick.k + 4)
    assert records < results["store_bytes"] < records + 4096 + 64 * quick.num_train + 4096
    assert results["records_per_s"] > 0
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "student consistent (augmented store, aug store)" in out


def test_recipe_time_mask_scales_with_the_clip():
    assert DemoConfig().recipe().time_mask_max == 37  # 192 * 193 / 1001 frames
    assert DemoConfig().recipe().freq_mask_max == 24
