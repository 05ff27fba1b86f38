"""Real-world data: files corrupt in the middle, non-finite audio, clips under one patch, and
the list of skipped files (issue 13 items 3, 4, 5, 9)."""

import re

import numpy as np
import pytest
import soundfile as sf

from ced_train.audio import MIN_CLIP_SECONDS, load_audio
from ced_train.data import AudioDataset, write_skipped
from ced_train.errors import DataError
from ced_train.manifest import write_tsv

SR = 16000


def _noise(n, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)


def _corrupt_in_the_middle(path, seconds=40):
    """A FLAC whose header is intact and whose middle frames are garbage."""
    sf.write(str(path), _noise(SR * seconds), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200_000] = bytes(range(256)) * (200_000 // 256) + bytes(200_000 % 256)
    path.write_bytes(bytes(data))
    return path


def _data_set(tmp_path):
    sf.write(str(tmp_path / "good.wav"), _noise(SR), SR, subtype="FLOAT")
    _corrupt_in_the_middle(tmp_path / "corrupt.flac")
    nan = _noise(SR)
    nan[100] = np.nan
    sf.write(str(tmp_path / "nan.wav"), nan, SR, subtype="FLOAT")
    sf.write(str(tmp_path / "short.wav"), _noise(800), SR, subtype="FLOAT")  # 0.05 s
    sf.write(str(tmp_path / "one.wav"), _noise(1), SR, subtype="FLOAT")
    names = ["good.wav", "corrupt.flac", "nan.wav", "short.wav", "one.wav"]
    return write_tsv(tmp_path / "m.tsv", names, [[0]] * len(names))


def test_skip_bad_skips_every_bad_file_before_the_keys_are_fixed(tmp_path, caplog):
    tsv = _data_set(tmp_path)
    ds = AudioDataset.from_tsv(tsv, skip_bad=True, min_seconds=MIN_CLIP_SECONDS)
    assert ds.keys == ["good.wav#0-16000"]
    reasons = dict(ds.skipped)
    assert sorted(reasons) == ["corrupt.flac", "nan.wav", "one.wav", "short.wav"]
    assert "corrupt.flac: cannot decode audio" in reasons["corrupt.flac"] or \
        "corrupt.flac: decoded" in reasons["corrupt.flac"]
    assert f"{tmp_path / 'nan.wav'}: non-finite audio (NaN or Inf) at sample 100 of [0, 16000)" in reasons["nan.wav"]
    assert reasons["short.wav"] == (f"{tsv} line 5: {tmp_path / 'short.wav'}: 0.05 s (800 samples at 16000 Hz) "
                                    "is shorter than the 0.15 s minimum (2400 samples; 16 spectrogram frames: the shortest "
                                    "clip a CED model takes)")
    assert "6.25e-05 s (1 samples at 16000 Hz)" in reasons["one.wav"]
    listed = write_skipped(tmp_path / "skipped.tsv", [ds])
    lines = listed.read_text().splitlines()
    assert lines[0] == "source\tfilename\treason" and len(lines) == 5
    assert lines[1].startswith(f"{tsv}\tcorrupt.flac\t")
    assert write_skipped(tmp_path / "none.tsv", [AudioDataset.from_tsv(write_tsv(tmp_path / "g.tsv",
                                                                                  ["good.wav"]))]) is None
    assert not (tmp_path / "none.tsv").exists()


def test_without_skip_bad_the_first_bad_file_is_named(tmp_path):
    tsv = _data_set(tmp_path)
    with pytest.raises(DataError, match=rf"^{tsv} line 5: .*short.wav: 0.05 s \(800 samples"):
        AudioDataset.from_tsv(tsv, min_seconds=MIN_CLIP_SECONDS)
    ds = AudioDataset.from_tsv(write_tsv(tmp_path / "n.tsv", ["nan.wav"]))  # headers only
    with pytest.raises(DataError, match=rf"^{tmp_path / 'nan.wav'}: non-finite audio"):
        ds.load_batch([0])


def test_load_audio_refuses_a_clip_under_the_minimum(tmp_path):
    sf.write(str(tmp_path / "short.wav"), _noise(800), SR, subtype="FLOAT")
    with pytest.raises(DataError, match=r"short.wav: 0.05 s \(800 samples at 16000 Hz\) is shorter than the "
                                        r"0.15 s minimum"):
        load_audio(tmp_path / "short.wav", min_seconds=MIN_CLIP_SECONDS)
    assert len(load_audio(tmp_path / "short.wav", min_seconds=0.0)) == 800  # an explicit override takes any length


def test_the_python_api_refuses_a_clip_under_one_patch_by_default_as_the_command_line_does(tmp_path):
    sf.write(str(tmp_path / "good.wav"), _noise(SR), SR, subtype="FLOAT")
    sf.write(str(tmp_path / "short.wav"), _noise(2399), SR, subtype="FLOAT")  # one sample under 0.15 s
    tsv = write_tsv(tmp_path / "m.tsv", ["good.wav", "short.wav"], [[0], [1]])
    why = (f"{tmp_path / 'short.wav'}: 0.149938 s (2399 samples at 16000 Hz) is shorter than the 0.15 s minimum "
           "(2400 samples; 16 spectrogram frames: the shortest clip a CED model takes)")
    with pytest.raises(DataError, match=rf"^{re.escape(why)}$"):
        load_audio(tmp_path / "short.wav")
    with pytest.raises(DataError, match=rf"^{re.escape(f'{tsv} line 3: {why}')}$"):
        AudioDataset.from_tsv(tsv)
    with pytest.raises(DataError, match=rf"^{re.escape(why)}$"):
        AudioDataset.from_folder(tmp_path)
    skipping = AudioDataset.from_folder(tmp_path, skip_bad=True)
    assert skipping.keys == ["good.wav#0-16000"] and skipping.skipped == [("short.wav", why)]
    assert AudioDataset.from_tsv(tsv, skip_bad=True).skipped == [("short.wav", f"{tsv} line 3: {why}")]
    assert AudioDataset.from_folder(tmp_path, min_seconds=0.0).keys == ["good.wav#0-16000", "short.wav#0-2399"]
    assert len(load_audio(tmp_path / "short.wav", min_seconds=0.0)) == 2399
    sf.write(str(tmp_path / "short.wav"), _noise(2400), SR, subtype="FLOAT")  # exactly 0.15 s: taken
    assert AudioDataset.from_folder(tmp_path).keys == ["good.wav#0-16000", "short.wav#0-2400"]


# ---- the command line: the same --skip-bad on every command that reads data -------------------

TINY = ["--arch", "ced_custom", "--embed-dim", "32", "--depth", "1", "--num-heads", "2",
        "--batch-size", "4", "--warmup-steps", "1", "--optimizer", "adamw", "--quiet"]


def _cli_error(capsys, argv) -> str:
    from ced_train.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ced-train: error: "), lines
    return lines[0]


def test_every_command_that_reads_data_skips_the_same_bad_files(tmp_path, capsys):
    from train_helpers import tiny_model, write_clips

    from ced_train import models
    from ced_train.cli import main

    tsv = write_clips(tmp_path, 4)
    (tmp_path / "bad").mkdir()
    _data_set(tmp_path / "bad")
    bad_rows = [f"bad/{name}\t0" for name in ["corrupt.flac", "nan.wav", "short.wav", "one.wav"]]
    tsv.write_text(tsv.read_text() + "\n".join(bad_rows) + "\n")
    teacher = tmp_path / "teacher.pt"
    models.save_checkpoint(tiny_model(0), teacher)
    store = tmp_path / "t.ced"
    extract = ["extract", "--teacher", str(teacher), "--data", str(tsv), "--store-epochs", "1", "--k", "3",
               "--store", str(store), "--batch-size", "4", "--quiet"]
    assert "bad/short.wav: 0.05 s" in _cli_error(capsys, extract)  # without --skip-bad: the first bad header
    assert main([*extract, "--skip-bad"]) == 0
    skipped = (tmp_path / "t.ced.skipped.tsv").read_text().splitlines()
    assert [line.split("\t")[1] for line in skipped[1:]] == [f"bad/{n}" for n in
                                                            ["corrupt.flac", "nan.wav", "short.wav", "one.wav"]]
    assert f"skipped bad files are listed in {store}.skipped.tsv" in capsys.readouterr().err

    out = tmp_path / "run"
    train = ["train", "--store", str(store), "--data", str(tsv), "--epochs", "1", "--out", str(out), *TINY]
    assert "bad/short.wav: 0.05 s" in _cli_error(capsys, train)
    assert main([*train, "--skip-bad", "--eval-data", str(tsv)]) == 0
    assert (out / "skipped.tsv").read_text().count("\tbad/nan.wav\t") == 2  # train and eval data
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(tsv), "--skip-bad", "--quiet"]) == 0
    assert main(["check-store", "--store", str(store), "--teacher", str(teacher), "--data", str(tsv),
                 "--skip-bad", "--quiet", "--num-records", "4"]) == 0
    capsys.readouterr()
    line = _cli_error(capsys, ["tag", str(tmp_path / "bad" / "short.wav"), "--checkpoint", str(teacher)])
    assert line == (f"ced-train: error: {tmp_path / 'bad' / 'short.wav'}: 0.05 s (800 samples at 16000 Hz) is "
                    "shorter than the 0.15 s minimum (2400 samples; 16 spectrogram frames: the shortest clip a CED model takes)")
    line = _cli_error(capsys, ["tag", str(tmp_path / "bad" / "nan.wav"), "--checkpoint", str(teacher)])
    assert line.startswith(f"ced-train: error: {tmp_path / 'bad' / 'nan.wav'}: non-finite audio (NaN or Inf)")


def test_a_resume_survives_the_data_set_losing_files_it_never_wrote(tmp_path):
    from train_helpers import RECIPE, load, tiny_model, write_clips

    import cedstore
    from ced_train.errors import StoreMismatchError
    from ced_train.extract import Ensemble, extract
    from ced_train.rng import seed_for

    tsv = write_clips(tmp_path, 6)
    teacher = Ensemble([tiny_model(0)])
    args = dict(store_epochs=2, k=3, recipe=RECIPE, batch_size=2)
    full = tmp_path / "full.ced"
    extract(teacher, load(tsv), full, **args)
    # A run that stopped after 2 of the 6 batches (clips 0-3 of epoch 0), then clip 5 is dropped.
    part = tmp_path / "part.ced"
    with cedstore.open(full) as done:
        keys, (values, indices, seeds) = done.keys, done.topk(0, [0, 1, 2, 3])
        writer = cedstore.create(part, num_classes=done.num_classes, k=3, num_samples=6, num_epochs=2,
                                 keys=keys, metadata={k: v for k, v in done.metadata.items() if k != "writer"})
    writer.write(0, [0, 1, 2, 3], values=values, indices=indices, seeds=seeds)
    writer.close(seal=False)
    rows = tsv.read_text().splitlines()
    tsv.write_text("\n".join(rows[:6]) + "\n")  # header + clips 0-4: clip005 is gone
    stats = extract(teacher, load(tsv), part, **args)
    assert stats.lost_chunks == 1 and stats.records == 6  # epoch 0: clip 4; epoch 1: clips 0-4
    with cedstore.open(part) as resumed, cedstore.open(full) as reference:
        assert resumed.keys == keys  # the store keeps its ids; clip005's records stay unwritten
        assert not resumed.written(0)[5] and not resumed.written(1)[5]
        for epoch in range(2):
            got, want = resumed.topk(epoch, range(5)), reference.topk(epoch, range(5))
            np.testing.assert_array_equal(got[2], seed_for(0, epoch, np.arange(5)))
            np.testing.assert_array_equal(got[2], want[2])  # the same seeds: the same augmentation
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5)  # other batch neighbours

    # A lost file whose records were written cannot be resumed without it: the message says so.
    tsv.write_text("\n".join(rows[:1] + rows[2:6]) + "\n")  # clip000 gone too
    with pytest.raises(StoreMismatchError, match=r"the data set lost 2 of the store's chunks, and 1 of them "
                                                 r"already have records \(e.g. \['clip000.wav#0-8000'\]\): put "
                                                 r"their files back in the TSV to resume"):
        extract(teacher, load(tsv), part, **args)



def test_extraction_warns_when_the_recipe_blanks_short_clips(tmp_path, caplog):
    from train_helpers import load, tiny_model, write_clips

    import cedstore
    from ced_train.augment import Recipe
    from ced_train.extract import Ensemble, extract

    tsv = write_clips(tmp_path, 8)  # 0.5 s: 51 frames, under v1's bound of 192
    teacher = Ensemble([tiny_model(0)])
    stats = extract(teacher, load(tsv), tmp_path / "v1.ced", store_epochs=4, k=3, recipe=Recipe(), batch_size=8)
    with cedstore.open(tmp_path / "v1.ced") as store:  # the stored seeds' time masks, counted here
        seeds = np.concatenate([store.topk(e, range(8))[2] for e in range(4)])
    blanked = int((Recipe().params(seeds, 8000, 51, 64)["time_width"] >= 51).sum())
    assert blanked == 25 and stats.blanked_share == blanked / 32  # the paper's bound blanks most
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == [f"{tmp_path / 'v1.ced'}: the recipe {Recipe().to_json()} masks every frame of 78.1% of the "
                       "records (more than 1%): their teacher outputs do not depend on the audio (short clips); "
                       "recipe version 2 scales the time mask with the clip (extract --time-mask-percent, "
                       "docs/AUGMENTATION.md)"]
    caplog.clear()
    stats = extract(teacher, load(tsv), tmp_path / "v2.ced", store_epochs=4, k=3, recipe=Recipe(version=2),
                    batch_size=8)
    assert stats.blanked_share == 0.0 and not caplog.records
    with cedstore.open(tmp_path / "v2.ced") as store:
        assert store.metadata["augmentation"] == Recipe(version=2).to_dict()


def test_extract_time_mask_percent_writes_recipe_v2(tmp_path, caplog):
    from train_helpers import tiny_model, write_clips

    import cedstore
    from ced_train import models
    from ced_train.augment import Recipe
    from ced_train.cli import main

    tsv = write_clips(tmp_path, 4)
    models.save_checkpoint(tiny_model(0), tmp_path / "teacher.pt")
    store = tmp_path / "t.ced"
    assert main(["extract", "--teacher", str(tmp_path / "teacher.pt"), "--data", str(tsv), "--store-epochs", "2",
                 "--k", "3", "--store", str(store), "--time-mask-percent", "25", "--quiet"]) == 0
    with cedstore.open(store) as s:
        assert s.metadata["augmentation"] == Recipe(version=2, time_mask_max_percent=25).to_dict()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
