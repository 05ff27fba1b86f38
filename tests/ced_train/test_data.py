"""AudioDataset: TSV and folder sources, decoding, chunk keys, bad inputs, collation."""

import hashlib
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given
from hypothesis import strategies as st

from ced_train import audio, data
from ced_train.audio import load_audio
from ced_train.data import AudioDataset, collate
from ced_train.errors import CedTrainError, DataError
from ced_train.manifest import write_tsv

SR = 16000


def _wave(n, seed=0, channels=1):
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, (n, channels)).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def _write(path, x, sr=SR, subtype="FLOAT"):
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix != ".wav":  # flac has no float subtype; ogg is vorbis
        subtype = None if suffix == ".ogg" or subtype == "FLOAT" else subtype
    sf.write(str(path), x, sr, subtype=subtype)
    return path


# ----------------------------------------------------------------------------- sources


def test_tsv_with_wav_flac_ogg(tmp_path):
    _write(tmp_path / "a.wav", _wave(800, 1))
    _write(tmp_path / "sub" / "b.flac", _wave(900, 2), subtype="PCM_24")
    _write(tmp_path / "c.ogg", _wave(1000, 3))
    tsv = write_tsv(tmp_path / "m.tsv", ["a.wav", "sub/b.flac", "c.ogg"], [[0, 2], [], [4]])
    ds = AudioDataset.from_tsv(tsv, min_seconds=0.0)
    assert ds.num_classes == 5  # inferred: max label + 1
    assert ds.keys == ["a.wav#0-800", "sub/b.flac#0-900", "c.ogg#0-1000"]
    assert ds.lengths.tolist() == [800, 900, 1000]
    np.testing.assert_array_equal(ds.labels([0, 1, 2]), [[1, 0, 1, 0, 0], [0] * 5, [0, 0, 0, 0, 1]])
    assert ds.labels([0]).dtype == np.float32
    np.testing.assert_array_equal(ds[0]["wave"], _wave(800, 1))  # float wav: exact
    np.testing.assert_allclose(ds[1]["wave"], _wave(900, 2), atol=1e-6)  # 24-bit
    assert ds[2]["wave"].dtype == np.float32 and ds[2]["wave"].shape == (1000,)
    item = ds[0]
    assert item["id"] == 0 and item["key"] == "a.wav#0-800"
    np.testing.assert_array_equal(item["target"], [1, 0, 1, 0, 0])


def test_tsv_absolute_paths_extra_columns_and_num_classes(tmp_path):
    a = _write(tmp_path / "audio" / "a.wav", _wave(500))
    tsv = tmp_path / "lists" / "m.tsv"
    tsv.parent.mkdir()
    tsv.write_text(f"id\tfilename\tlabels\n7\t{a}\t1\n")
    ds = AudioDataset.from_tsv(tsv, num_classes=10, min_seconds=0.0)
    assert ds.keys == [f"{a}#0-500"] and ds.num_classes == 10
    assert ds.labels([0]).shape == (1, 10)


def test_tsv_without_labels_column(tmp_path):
    _write(tmp_path / "a.wav", _wave(500))
    ds = AudioDataset.from_tsv(write_tsv(tmp_path / "m.tsv", ["a.wav"]), min_seconds=0.0)
    assert ds.labels([0]) is None and ds.num_classes is None
    assert "target" not in ds[0]


def test_folder_is_recursive_sorted_and_filtered(tmp_path):
    for name in ["z.wav", "b/y.FLAC", "b/a.ogg", "a.wav"]:
        _write(tmp_path / name, _wave(400))
    (tmp_path / "notes.txt").write_text("not audio")
    ds = AudioDataset.from_folder(tmp_path, min_seconds=0.0)
    assert ds.keys == ["a.wav#0-400", "b/a.ogg#0-400", "b/y.FLAC#0-400", "z.wav#0-400"]
    assert ds.labels([0]) is None and ds.num_classes is None


def test_stereo_is_downmixed_to_the_mean(tmp_path):
    x = _wave(600, channels=2)
    ds = AudioDataset.from_tsv(write_tsv(tmp_path / "m.tsv", [_write(tmp_path / "s.wav", x).name]), min_seconds=0.0)
    np.testing.assert_allclose(ds[0]["wave"], x.mean(axis=1), atol=1e-7)


def test_resampling_44k1_keeps_a_1khz_tone_at_1khz(tmp_path):
    sr = 44100
    t = np.arange(sr) / sr  # 1 s
    _write(tmp_path / "t.wav", (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), sr=sr)
    ds = AudioDataset.from_folder(tmp_path, min_seconds=0.0)
    assert ds.keys == ["t.wav#0-16000"]
    y = ds[0]["wave"]
    assert y.shape == (16000,) and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.fft.rfftfreq(len(y), 1 / SR)[spectrum.argmax()] == pytest.approx(1000, abs=1)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    np.testing.assert_array_equal(load_audio(tmp_path / "t.wav"), y)


@pytest.mark.parametrize(
    "frames, rate, expected",
    [(1, 44100, 0), (3, 44100, 1), (44100, 44100, 16000), (1, 32000, 1), (3, 96000, 1),
     (7, 8000, 14)],
)
def test_resampled_length_matches_soxr(frames, rate, expected):
    assert audio.resampled_length(frames, rate, SR) == expected
    assert len(audio.resample(np.zeros(frames, np.float32), rate, SR)) == expected


# ----------------------------------------------------------------------------- chunking


@pytest.mark.parametrize(
    "n, expected",
    [
        (1000, [(0, 1000, 1000)]),  # shorter than a chunk: own length, not padded
        (1600, [(0, 1600, 1600)]),
        (2399, [(0, 1600, 1600)]),  # trailing 799 < 800: dropped
        (2400, [(0, 1600, 1600), (1600, 2400, 1600)]),  # trailing 800 = half: kept, padded
        (3200, [(0, 1600, 1600), (1600, 3200, 1600)]),
        (4000, [(0, 1600, 1600), (1600, 3200, 1600), (3200, 4000, 1600)]),
    ],
)
def test_chunk_rule(n, expected):
    assert data._chunks(n, 1600) == expected


@given(n=st.integers(1, 50_000), chunk=st.integers(1, 5_000))
def test_chunks_tile_the_file(n, chunk):
    chunks = data._chunks(n, chunk)
    assert chunks[0][0] == 0
    for (s0, e0, _), (s1, _, _) in zip(chunks, chunks[1:]):
        assert e0 == s1
    assert all(e - s <= length for s, e, length in chunks)
    assert n - chunks[-1][1] < max(chunk / 2, 1)  # never drops half a chunk or more


def test_long_file_chunks_keys_and_padding(tmp_path):
    x = _wave(4000)
    _write(tmp_path / "long.wav", x)
    ds = AudioDataset.from_folder(tmp_path, chunk_seconds=0.1, min_seconds=0.0)
    assert ds.keys == ["long.wav#0-1600", "long.wav#1600-3200", "long.wav#3200-4000"]
    np.testing.assert_array_equal(ds[1]["wave"], x[1600:3200])
    last = ds[2]["wave"]
    assert last.shape == (1600,)
    np.testing.assert_array_equal(last[:800], x[3200:])
    assert not last[800:].any()


def test_resampled_chunks_slice_the_resampled_file(tmp_path):
    _write(tmp_path / "r.flac", _wave(22050 * 3 // 10), sr=22050, subtype="PCM_16")  # 0.3 s
    ds = AudioDataset.from_folder(tmp_path, chunk_seconds=0.1, min_seconds=0.0)
    assert ds.keys == ["r.flac#0-1600", "r.flac#1600-3200", "r.flac#3200-4800"]
    whole = load_audio(tmp_path / "r.flac")
    batch = ds.load_batch([0, 1, 2])
    # chunks 0 and 1 are resampled from the file's first frame, as the whole file is: exact;
    # chunk 2 from a window (tests/ced_train/test_audio_window.py): a float32 rounding step
    np.testing.assert_array_equal(batch[:2].ravel(), whole[:3200])
    np.testing.assert_allclose(batch[2], whole[3200:], rtol=0, atol=1e-6)


def test_load_batch_pads_only_short_chunks(tmp_path):
    _write(tmp_path / "a.wav", _wave(1000, 1))
    _write(tmp_path / "b.wav", _wave(1500, 2))
    ds = AudioDataset.from_folder(tmp_path, min_seconds=0.0)
    batch = ds.load_batch([1, 0])
    assert batch.shape == (2, 1500) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1, :1000], _wave(1000, 1))
    assert not batch[1, 1000:].any()


def test_index_reads_headers_only(tmp_path, monkeypatch):
    _write(tmp_path / "a.wav", _wave(500))

    def no_decoding(*args, **kwargs):
        raise AssertionError("index building decoded audio")

    monkeypatch.setattr(audio.sf, "read", no_decoding)
    assert len(AudioDataset.from_folder(tmp_path, min_seconds=0.0)) == 1


def test_cache_serves_copies(tmp_path):
    path = _write(tmp_path / "a.wav", _wave(500))
    ds = AudioDataset.from_folder(tmp_path, cache=True, min_seconds=0.0)
    first = ds[0]["wave"]
    first[:] = 0  # a caller modifying its wave must not corrupt the cache
    path.unlink()  # later loads come from the cache
    np.testing.assert_array_equal(ds.load_batch([0])[0], _wave(500))


def test_out_of_range_id(tmp_path):
    _write(tmp_path / "a.wav", _wave(500))
    ds = AudioDataset.from_folder(tmp_path, min_seconds=0.0)
    with pytest.raises(IndexError, match="chunk id 1 out of range .* with 1 chunks"):
        ds[1]
    with pytest.raises(IndexError, match="chunk id -1 out of range"):
        ds.load_batch([-1])


# ----------------------------------------------------------------------------- bad inputs


def _bad_tsv(tmp_path, body, header="filename\tlabels"):
    _write(tmp_path / "ok.wav", _wave(500))
    (tmp_path / "text.wav").write_text("this is not audio")
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), SR)
    tsv = tmp_path / "m.tsv"
    tsv.write_text(header + "\n" + body)
    return tsv


@pytest.mark.parametrize(
    "body, header, message",
    [
        ("ok.wav\t3;x\n", "filename\tlabels", r"m.tsv line 2: bad label entry 'x' in '3;x'"),
        ("ok.wav\t1\nok2.wav\t12\n", "filename\tlabels",
         r"m.tsv line 3: label 12 in '12' out of range \(expected >= 0, < num_classes=10\)"),
        ("ok.wav\t-1\n", "filename\tlabels", r"line 2: label -1 in '-1' out of range"),
        ("ok.wav\t1\n\n./ok.wav\t2\n", "filename\tlabels",
         r"m.tsv line 4: duplicate filename './ok.wav' \(first on line 2\)"),
        ("gone.wav\t1\n", "filename\tlabels", r"m.tsv line 2: .*gone.wav: file not found"),
        ("text.wav\t1\n", "filename\tlabels", r"line 2: .*text.wav: not a readable audio file"),
        ("empty.wav\t1\n", "filename\tlabels",
         r"line 2: .*empty.wav: empty audio file \(0 frames\)"),
        ("ok.wav\n", "filename\tlabels",
         r"m.tsv line 2: expected 2 tab-separated columns, found 1"),
        ("\t1\n", "filename\tlabels", r"m.tsv line 2: empty filename"),
        ("ok.wav\t1\n", "file\tlabels",
         r"m.tsv line 1: no 'filename' column in the header \['file', 'labels'\]"),
        ("", "", r"m.tsv: empty TSV, expected a header row with a 'filename' column"),
    ],
)
def test_bad_tsv_messages(tmp_path, body, header, message):
    tsv = _bad_tsv(tmp_path, body, header)
    with pytest.raises(DataError, match=message):
        AudioDataset.from_tsv(tsv, num_classes=10, min_seconds=0.0)


def test_missing_sources(tmp_path):
    with pytest.raises(DataError, match=r"nope.tsv: TSV file not found"):
        AudioDataset.from_tsv(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match=r"nope: folder not found"):
        AudioDataset.from_folder(tmp_path / "nope")
    with pytest.raises(DataError, match=r"no usable audio"):
        AudioDataset.from_folder(tmp_path, min_seconds=0.0)
    with pytest.raises(DataError, match=r"gone.wav: file not found"):
        load_audio(tmp_path / "gone.wav")


def test_data_errors_are_ced_train_errors(tmp_path):
    with pytest.raises(CedTrainError, match=r"nope.tsv: TSV file not found") as err:
        AudioDataset.from_tsv(tmp_path / "nope.tsv")
    assert isinstance(err.value, ValueError)


def test_skip_bad_logs_and_summarises(tmp_path, caplog):
    tsv = _bad_tsv(tmp_path, "ok.wav\t1\ngone.wav\t2\ntext.wav\t3;x\nempty.wav\t\nok.wav\t4\n")
    with caplog.at_level(logging.WARNING, logger="ced_train.data"):
        ds = AudioDataset.from_tsv(tsv, num_classes=10, skip_bad=True, min_seconds=0.0)
    assert ds.keys == ["ok.wav#0-500"]
    assert [name for name, _ in ds.skipped] == ["gone.wav", "text.wav", "empty.wav", "ok.wav"]
    assert "line 3" in ds.skipped[0][1] and "file not found" in ds.skipped[0][1]
    assert "bad label entry 'x'" in ds.skipped[1][1]
    assert "duplicate filename" in ds.skipped[3][1]
    assert len(caplog.records) == 4 and "skipping" in caplog.records[0].getMessage()
    summary = ds.summary()
    assert "\n" not in summary
    assert summary.startswith(f"{tsv}: 1 files, 1 chunks, skipped 4 bad (first: ")


def test_skip_bad_folder(tmp_path):
    _write(tmp_path / "ok.wav", _wave(500))
    (tmp_path / "bad.flac").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match=r"bad.flac: not a readable audio file"):
        AudioDataset.from_folder(tmp_path, min_seconds=0.0)
    ds = AudioDataset.from_folder(tmp_path, skip_bad=True, min_seconds=0.0)
    assert ds.keys == ["ok.wav#0-500"] and ds.skipped[0][0] == "bad.flac"


def test_all_bad_with_skip_bad_is_an_error(tmp_path):
    tsv = _bad_tsv(tmp_path, "gone.wav\t1\n")
    with pytest.raises(DataError, match=r"m.tsv: no usable audio \(.*skipped 1 bad"):
        AudioDataset.from_tsv(tsv, skip_bad=True, min_seconds=0.0)


def test_load_time_failure_names_file_and_key(tmp_path):
    path = _write(tmp_path / "a.wav", _wave(2000))
    ds = AudioDataset.from_folder(tmp_path, chunk_seconds=0.1, min_seconds=0.0)
    sf.write(str(path), _wave(1000), SR, subtype="FLOAT")  # shrunk after indexing
    message = r"a.wav: chunk a.wav#0-1600: expected 1600 samples, decoded 1000"
    with pytest.raises(DataError, match=message):
        ds[0]
    path.write_text("garbage")
    with pytest.raises(DataError, match=r"a.wav: cannot decode audio"):
        ds.load_batch([0])


def test_write_tsv_rejects_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="got 2 filenames but 1 label rows"):
        write_tsv(tmp_path / "m.tsv", ["a", "b"], [[1]])
    with pytest.raises(ValueError, match=r"filename 'a\\tb' \(row 0\) is empty or holds a tab"):
        write_tsv(tmp_path / "m.tsv", ["a\tb"])


# ----------------------------------------------------------------------------- manifest, collation


def test_manifest_sha256_follows_the_documented_formula(tmp_path):
    _write(tmp_path / "a.wav", _wave(500))
    _write(tmp_path / "b.wav", _wave(500))
    ds = AudioDataset.from_tsv(write_tsv(tmp_path / "m.tsv", ["a.wav", "b.wav"], [[3, 1], []]), min_seconds=0.0)
    expected = hashlib.sha256(b"a.wav#0-500\t1;3\nb.wav#0-500\t\n").hexdigest()
    assert ds.manifest_sha256() == expected
    other = AudioDataset.from_tsv(write_tsv(tmp_path / "n.tsv", ["a.wav", "b.wav"], [[3], []]), min_seconds=0.0)
    assert other.manifest_sha256() != expected
    unlabelled = AudioDataset.from_folder(tmp_path, min_seconds=0.0)
    assert unlabelled.manifest_sha256() == hashlib.sha256(b"a.wav#0-500\nb.wav#0-500\n").hexdigest()


def test_dataloader_with_collate(tmp_path):
    for i, n in enumerate([700, 700, 500]):
        _write(tmp_path / f"{i}.wav", _wave(n, i))
    tsv = write_tsv(tmp_path / "m.tsv", ["0.wav", "1.wav", "2.wav"], [[0], [1], []])
    ds = AudioDataset.from_tsv(tsv, min_seconds=0.0)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)
    (batch,) = list(loader)
    assert batch["ids"].tolist() == [0, 1, 2] and batch["ids"].dtype == torch.int64
    assert batch["keys"] == ["0.wav#0-700", "1.wav#0-700", "2.wav#0-500"]
    assert batch["wave"].shape == (3, 700) and batch["wave"].dtype == torch.float32
    assert batch["lengths"].tolist() == [700, 700, 500]
    assert not batch["wave"][2, 500:].any()
    assert batch["target"].tolist() == [[1, 0], [0, 1], [0, 0]]
    unlabelled = collate([{k: v for k, v in ds[0].items() if k != "target"}])
    assert "target" not in unlabelled
