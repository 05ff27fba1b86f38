"""evaluate (mAP of a model over a dataset), write_per_class_csv and tag."""

import csv

import numpy as np
import pytest
import soundfile as sf
import torch

from ced_train import models
from ced_train.data import AudioDataset
from ced_train.errors import DataError
from ced_train.manifest import write_tsv
from ced_train.evaluate import EvalResult, evaluate, predict, tag, write_per_class_csv
from ced_train.labels import audioset_names
from ced_train.metrics import mean_average_precision

SR = 16000
FREQS = [500.0, 1500.0, 3000.0]  # class c is a tone at FREQS[c]


class ToneDetector(torch.nn.Module):
    """Oracle: the probability of class c grows with the energy at FREQS[c]."""

    def __init__(self, freqs=FREQS):
        super().__init__()
        self.freqs = freqs
        self.batch_shapes = []

    def predict(self, wave):
        self.batch_shapes.append(tuple(wave.shape))
        spectrum = torch.fft.rfft(wave).abs()
        bins = [round(f * wave.shape[-1] / SR) for f in self.freqs]
        energy = spectrum[:, bins] / wave.shape[-1]
        return torch.sigmoid(40 * energy - 2)


def _tone_dataset(tmp_path, lengths=(4000,) * 12, seed=0):
    rng = np.random.default_rng(seed)
    names, labels = [], []
    for i, n in enumerate(lengths):
        classes = sorted(rng.choice(3, size=rng.integers(0, 3), replace=False).tolist())
        t = np.arange(n) / SR
        tones = sum(0.3 * np.sin(2 * np.pi * FREQS[c] * t) for c in classes)
        x = 0.01 * rng.standard_normal(n) + tones
        sf.write(str(tmp_path / f"{i}.wav"), x.astype(np.float32), SR, subtype="FLOAT")
        names.append(f"{i}.wav")
        labels.append(classes)
    return AudioDataset.from_tsv(write_tsv(tmp_path / "eval.tsv", names, labels), num_classes=3)


def test_oracle_model_scores_one(tmp_path):
    ds = _tone_dataset(tmp_path)
    result = evaluate(ToneDetector(), ds, batch_size=5)
    assert isinstance(result, EvalResult)
    assert result.mAP == 1.0 and result.num_clips == 12
    np.testing.assert_array_equal(result.per_class_ap, [1.0, 1.0, 1.0])


def test_evaluate_equals_metrics_on_the_same_scores(tmp_path):
    ds = _tone_dataset(tmp_path, seed=1)
    rng = np.random.default_rng(0)
    fixed = rng.random((len(ds), 3))
    calls = iter(range(0, len(ds), 4))

    def model(wave):  # a plain callable; evaluate keeps id order within equal lengths
        lo = next(calls)
        return torch.from_numpy(fixed[lo:lo + wave.shape[0]])

    result = evaluate(model, ds, batch_size=4)
    expected, per_class = mean_average_precision(fixed, ds.labels(range(len(ds))))
    assert result.mAP == expected
    np.testing.assert_array_equal(result.per_class_ap, per_class)


def test_batches_group_equal_lengths(tmp_path):
    ds = _tone_dataset(tmp_path, lengths=(4000, 3000, 4000, 3000, 4000))
    detector = ToneDetector()
    assert evaluate(detector, ds, batch_size=2).num_clips == 5
    assert sorted(detector.batch_shapes) == [(1, 4000), (2, 3000), (2, 4000)]  # never padded


def test_ced_model_runs_and_keeps_its_mode(tmp_path):
    torch.manual_seed(0)
    model = models.create("ced_tiny", num_classes=3, embed_dim=32, depth=1, num_heads=1)
    assert model.training
    result = evaluate(model, _tone_dataset(tmp_path), batch_size=8)
    assert 0.0 <= result.mAP <= 1.0 and result.per_class_ap.shape == (3,)
    assert model.training  # restored after evaluation


def test_evaluate_errors(tmp_path):
    ds = _tone_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"model has 2 outputs but .*eval.tsv has 3 classes"):
        evaluate(ToneDetector(FREQS[:2]), ds)
    with pytest.raises(ValueError, match=r"values outside \[0, 1\]"):
        evaluate(lambda w: torch.full((w.shape[0], 3), 2.0), ds)
    message = r"model returned shape \(3,\), expected \[12, num_classes\]"
    with pytest.raises(ValueError, match=message):
        evaluate(lambda w: torch.zeros(3), ds, batch_size=12)
    unlabelled = AudioDataset.from_folder(tmp_path)
    with pytest.raises(ValueError, match="cannot evaluate without labels"):
        evaluate(ToneDetector(), unlabelled)
    with pytest.raises(TypeError, match="model must have a predict method or be callable"):
        predict(object(), np.zeros((1, 100), np.float32))


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_write_per_class_csv(tmp_path):
    path = write_per_class_csv(tmp_path / "ap.csv", [0.5, np.nan], ["dog", "cat, wild"])
    assert _rows(path) == [
        ["index", "name", "ap"], ["0", "dog", "0.500000"], ["1", "cat, wild", "nan"]]
    assert _rows(write_per_class_csv(tmp_path / "b.csv", [0.25]))[1] == ["0", "class_0", "0.250000"]
    with pytest.raises(ValueError, match="got 1 names for 2 classes"):
        write_per_class_csv(tmp_path / "c.csv", [0.1, 0.2], ["a"])


def test_tag_wave_and_path(tmp_path):
    t = np.arange(8000) / SR
    wave = (0.3 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32)
    top = tag(ToneDetector(), wave, top=2, names=["low", "mid", "high"])
    assert [(i, name) for i, name, _ in top] == [(1, "mid"), (0, "low")]
    assert top[0][2] > 0.9 and isinstance(top[0][2], float)
    t44 = np.arange(22050) / 44100
    x = (0.3 * np.sin(2 * np.pi * 1500 * t44)).astype(np.float32)
    sf.write(str(tmp_path / "x.wav"), np.stack([x, x], 1), 44100)  # stereo at 44.1 kHz
    assert tag(ToneDetector(), tmp_path / "x.wav", top=1)[0][:2] == (1, "class_1")
    assert len(tag(ToneDetector(), wave, top=10)) == 3


def test_tag_names_for_audioset_and_short_input():
    shapes = []

    def model(w):
        shapes.append(tuple(w.shape))
        probs = torch.zeros(w.shape[0], 527)
        probs[:, 137] = 0.9
        return probs

    top = tag(model, torch.zeros(100), top=1)
    assert top == [(137, audioset_names()[137], pytest.approx(0.9))]
    assert shapes == [(1, 4000)]  # padded to 0.25 s
    with pytest.raises(ValueError, match=r"expected a non-empty 1-D waveform, got shape \(0,\)"):
        tag(model, np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="got 2 names for a model with 527 outputs"):
        tag(model, np.zeros(4000, np.float32), names=["a", "b"])


def test_tag_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"gone.wav: file not found"):
        tag(ToneDetector(), tmp_path / "gone.wav")
