"""Synthetic dataset: determinism, files and labels, and that each class looks like its name."""

import hashlib

import numpy as np
import pytest

from ced_train import synth
from ced_train.data import AudioDataset
from ced_train.labels import read_names

SR = 16000


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_class_names():
    assert len(synth.CLASS_NAMES) == 14 and len(set(synth.CLASS_NAMES)) == 14
    assert synth.class_names() == list(synth.CLASS_NAMES)
    assert synth.class_names(2) == ["tone", "chirp_up"]
    for bad in (0, 15):
        with pytest.raises(ValueError, match=rf"num_classes must be in \[1, 14\], got {bad}"):
            synth.class_names(bad)


def test_make_dataset_files_and_labels(tmp_path):
    train_tsv, eval_tsv, names = synth.make_dataset(
        tmp_path, 6, 4, seconds=0.5, num_classes=10, seed=3)
    assert (train_tsv, eval_tsv) == (tmp_path / "train.tsv", tmp_path / "eval.tsv")
    assert names == synth.class_names(10) == read_names(tmp_path / "classes.txt")
    ds = AudioDataset.from_tsv(train_tsv, num_classes=10)
    assert ds.keys == [f"train/{i:06d}.wav#0-8000" for i in range(6)]
    for i in range(6):
        wave, events = synth.synth_clip(3, "train", i, seconds=0.5, num_classes=10)
        assert 1 <= len(events) <= 3
        assert np.flatnonzero(ds.labels([i])[0]).tolist() == [e.class_id for e in events]
        np.testing.assert_allclose(ds[i]["wave"], wave, atol=1 / 32768)  # 16-bit PCM
    assert len(AudioDataset.from_tsv(eval_tsv, num_classes=10)) == 4


def test_same_seed_same_bytes_and_clips_independent_of_counts(tmp_path):
    synth.make_dataset(tmp_path / "a", 3, 2, seconds=0.3, seed=7)
    synth.make_dataset(tmp_path / "b", 3, 2, seconds=0.3, seed=7)
    synth.make_dataset(tmp_path / "c", 5, 1, seconds=0.3, seed=7)
    synth.make_dataset(tmp_path / "d", 3, 2, seconds=0.3, seed=8)
    a, b, c, d = (_digest(tmp_path / x) for x in "abcd")
    assert a == b
    assert all(c[f"train/{i:06d}.wav"] == a[f"train/{i:06d}.wav"] for i in range(3))
    assert c["eval/000000.wav"] == a["eval/000000.wav"]
    assert all(d[k] != a[k] for k in a if k.endswith(".wav"))
    assert a["train/000000.wav"] != a["eval/000000.wav"]


def test_clip_levels_and_errors():
    wave, events = synth.synth_clip(0, "eval", 5)
    assert wave.shape == (30720,) and wave.dtype == np.float32
    assert np.abs(wave).max() <= 0.99
    assert all(0 <= e.onset and e.onset + e.num_samples <= 30720 for e in events)
    assert [e.class_id for e in events] == sorted({e.class_id for e in events})
    with pytest.raises(ValueError, match=r"split must be one of \['eval', 'train'\], got 'test'"):
        synth.synth_clip(0, "test", 0)
    with pytest.raises(ValueError, match="seconds must be at least 0.02, got 0.01"):
        synth.synth_clip(0, "train", 0, seconds=0.01)
    with pytest.raises(ValueError, match=r"need class_id in \[0, 14\)"):
        synth.render_event(14, 100, np.random.default_rng(0))


def _band_power(w, lo, hi):
    """Mean power per sample of ``w`` between ``lo`` and ``hi`` Hz."""
    f = np.fft.rfftfreq(len(w), 1 / SR)
    return (np.abs(np.fft.rfft(w)) ** 2)[(f >= lo) & (f <= hi)].sum() / len(w) ** 2


_BANDS = {"noise_low": (80, 900), "noise_high": (3000, 8000), "hum": (45, 520)}


def test_events_stand_out_from_the_background():
    """A labelled event is louder than the event-free background (in its band, if it has one)."""
    checked = banded = 0
    for i in range(60):
        wave, events = synth.synth_clip(1, "train", i, seconds=1.92)
        busy = np.zeros(len(wave), bool)
        for e in events:
            busy[e.onset:e.onset + e.num_samples] = True
        quiet = wave[~busy]
        if len(quiet) < 1600:
            continue
        for e in events:
            seg = wave[e.onset:e.onset + e.num_samples]
            assert np.mean(seg**2) > 4 * np.mean(quiet**2), (i, e)
            checked += 1
            band = _BANDS.get(synth.CLASS_NAMES[e.class_id])
            if band:
                assert _band_power(seg, *band) > 10 * _band_power(quiet, *band), (i, e)
                banded += 1
    assert checked >= 50 and banded >= 8


def _band_fraction(w, lo, hi):
    power = np.abs(np.fft.rfft(w)) ** 2
    f = np.fft.rfftfreq(len(w), 1 / SR)
    return power[(f >= lo) & (f <= hi)].sum() / power.sum()


def _centroid(w):
    power = np.abs(np.fft.rfft(w * np.hanning(len(w)))) ** 2
    return (np.fft.rfftfreq(len(w), 1 / SR) * power).sum() / power.sum()


def _render(name, seed, n=8000):
    return synth.render_event(synth.CLASS_NAMES.index(name), n, np.random.default_rng(seed))


@pytest.mark.parametrize("seed", range(5))
def test_event_shapes(seed):
    for name in synth.CLASS_NAMES:
        w = _render(name, seed)
        assert w.shape == (8000,) and np.sqrt(np.mean(w**2)) == pytest.approx(1.0)
    assert _band_fraction(_render("noise_low", seed), 0, 1000) > 0.95
    assert _band_fraction(_render("noise_high", seed), 2900, 8000) > 0.95
    assert _band_fraction(_render("hum", seed), 45, 520) > 0.95
    assert _band_fraction(_render("tone", seed), 0, 3100) > 0.95
    for name, sign in (("chirp_up", 1), ("chirp_down", -1), ("noise_sweep", 1)):
        w = _render(name, seed)
        assert sign * (_centroid(w[-2000:]) - _centroid(w[:2000])) > 200, name
    clicks = _render("click_train", seed)
    assert np.abs(clicks).max() > 5 * np.sqrt(np.mean(clicks**2))  # impulsive
    gated = np.abs(_render("pulsed_tone", seed))
    frames = gated[: 8000 // 160 * 160].reshape(-1, 160).max(axis=1)
    assert (frames < 1e-6).any() and (frames > 0.5).any()  # silent gaps between pulses
    tone = _render("tone", seed)
    spectrum = np.abs(np.fft.rfft(tone))
    assert spectrum.max() ** 2 / (spectrum**2).sum() > 0.3  # one dominant frequency
