"""ced-train demo: --quick end to end (results.json, results.png), the E sweep, the config logic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ced_train.cli import build_parser, demo_config, main
from ced_train.demo import STUDENTS, DemoConfig, demo


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0  # 2 jobs: spawned processes
    return out, json.loads((out / "results.json").read_text())


def test_quick_demo_writes_results(quick, capsys):
    out, results = quick
    config = DemoConfig.quick()
    assert [t["name"] for t in results["teachers"]] == ["teacher1", "teacher2"]
    assert set(results["students"]) == set(STUDENTS) == {"none", "student_only", "teacher_only", "consistent"}
    assert results["student_seeds"] == [0, 1]
    for name, per_seed in results["students_per_seed"].items():
        assert len(per_seed) == 2
        assert results["students"][name] == pytest.approx(np.mean(per_seed))
        assert len(results["students_train_mAP_per_seed"][name]) == 2
        assert [[epoch for epoch, _ in curve] for curve in results["curves"][name]] == [[1, 2], [1, 2]]
    values = [t["mAP"] for t in results["teachers"]] + [results["ensemble_mAP"]]
    values += [v for per_seed in results["students_per_seed"].values() for v in per_seed]
    values += [mAP for curves in results["curves"].values() for curve in curves for _, mAP in curve]
    assert all(0.0 <= v <= 1.0 for v in values)
    records = config.num_student_clips * config.store_epochs
    assert records * (4 * 14 + 4) < results["store_bytes"] < records * (4 * 14 + 4) + 16384  # K = C = 14
    storage = results["storage"]
    assert storage["records"] == records
    assert storage["dense_float32_bytes"] == records * 14 * 4
    assert storage["dense_npy_bytes"] > storage["dense_float32_bytes"]  # plus the .npy header
    assert storage["as20k_ced_bytes"] == config.store_epochs * 21155 * 84  # the paper: 84 bytes a record
    assert results["cpu_seconds"] > 0 and results["records_per_s"] > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "results_sweep.png").exists()


def test_students_see_the_first_of_the_teachers_clips(quick):
    out, _ = quick
    teacher_rows = (out / "data" / "train.tsv").read_text().splitlines()
    student_rows = (out / "data" / "student.tsv").read_text().splitlines()
    assert len(teacher_rows) == 1 + 64 and student_rows == teacher_rows[: 1 + 32]


def test_demo_is_deterministic_in_one_process_and_sweeps_epochs(quick, tmp_path, capsys):
    _, results = quick
    again = demo(tmp_path, DemoConfig.quick(jobs=1, sweep_store_epochs=(1, 2)))
    for key in ("teachers", "ensemble_mAP", "students_per_seed", "curves", "store_bytes"):
        assert again[key] == results[key], key
    sweep = again["store_epochs_sweep"]
    assert list(sweep) == ["1", "2"]
    assert sweep["2"] == again["students_per_seed"]["consistent"]  # E' = E is the consistent student
    assert len(sweep["1"]) == 2 and all(0.0 <= v <= 1.0 for v in sweep["1"])
    assert (tmp_path / "results_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "student consistent (augmented store, aug store)" in printed
    assert "consistent, first E'=1 stored epochs" in printed


def test_k_is_the_papers_20_capped_at_the_class_count():
    assert DemoConfig().top_k() == 14
    assert DemoConfig(num_classes=5, k=None).top_k() == 5
    assert DemoConfig(num_classes=30).top_k() == 20  # config only: synth has 14 classes
    assert DemoConfig(k=5).top_k() == 5


def test_default_sweep_is_1_5_20_and_e():
    assert DemoConfig().default_sweep() == (1, 5, 20, 40)
    assert DemoConfig(store_epochs=10).default_sweep() == (1, 5, 10)
    assert DemoConfig.quick().default_sweep() == (1, 2)


@pytest.mark.parametrize("overrides, message", [
    (dict(num_student_clips=4001), "the students' clips are a subset of the teachers': need 1 <= num_student_clips "
                                   "<= num_teacher_clips = 4000, got 4001"),
    (dict(num_curve_eval=0), "need 1 <= num_curve_eval <= num_eval = 2000, got 0"),
    (dict(k=15), "need 1 <= k <= num_classes = 14, got 15"),
    (dict(student_seeds=()), "need at least one pairing seed in student_seeds"),
    (dict(sweep_store_epochs=(1, 41)), "sweep_store_epochs must lie in [1, store_epochs = 40], got [41]"),
])
def test_bad_configs_are_refused(overrides, message):
    with pytest.raises(ValueError) as error:
        DemoConfig(**overrides)
    assert str(error.value) == message


@pytest.mark.parametrize("argv, expected", [
    ([], dict(sweep_store_epochs=(), student_seeds=(0, 1))),
    (["--sweep-epochs"], dict(sweep_store_epochs=(1, 5, 20, 40))),
    (["--sweep-epochs", "--store-epochs", "8"], dict(sweep_store_epochs=(1, 5, 8), store_epochs=8)),
    (["--sweep-epochs", "2,4"], dict(sweep_store_epochs=(2, 4))),
    (["--quick", "--sweep-epochs"], dict(sweep_store_epochs=(1, 2), num_teacher_clips=64)),
    (["--student-seeds", "3,4,5", "--student-epochs", "7"], dict(student_seeds=(3, 4, 5), student_epochs=7)),
])
def test_options_make_the_config(argv, expected):
    config = demo_config(build_parser().parse_args(["demo", *argv]))
    for name, value in expected.items():
        assert getattr(config, name) == value, name


def test_recipe_time_mask_scales_with_the_clip():
    assert DemoConfig().recipe().time_mask_max == 19  # 192 * 97 / 1001 frames of a 0.96 s clip
    assert DemoConfig(seconds=1.92).recipe().time_mask_max == 37  # 192 * 193 / 1001
    assert DemoConfig().recipe().freq_mask_max == 24
