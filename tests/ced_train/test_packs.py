"""The original CED's HDF5 audio packs read through AudioDataset (issue 12 item 3).

The packs are written by ``wavlist_to_hdf5`` below, a faithful copy of the layout of the
original's ``scripts/wavlist_to_hdf5.py`` (docs/INTEROP.md section 3), with h5py.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

h5py = pytest.importorskip("h5py")

from ced_train.data import AudioDataset  # noqa: E402
from ced_train.errors import DataError  # noqa: E402
from ced_train.manifest import write_tsv  # noqa: E402

SR = 16000


def wavlist_to_hdf5(tsv: Path, out: Path, dtype="int16", size_per_file=50_000, stereo=False, fullname=False) -> Path:
    """The original's layout: OUT/hdf5/X_{i}.h5 (one dataset per unique file, named by its base
    name or full name, the whole file as soundfile.read(dtype=...); stereo averaged and cast back
    unless ``stereo``) and OUT/labels/X.tsv (the input TSV plus ``hdf5path``)."""
    with open(tsv, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    unique = list(dict.fromkeys(row["filename"] for row in rows))
    (out / "hdf5").mkdir(parents=True)
    (out / "labels").mkdir(parents=True)
    pack_of = {}
    for i in range(0, len(unique), size_per_file):
        pack = out / "hdf5" / f"{tsv.stem}_{i // size_per_file}.h5"
        with h5py.File(pack, "w") as hf:
            for name in unique[i:i + size_per_file]:
                data, _ = sf.read(str(tsv.parent / name), dtype=dtype)
                if data.ndim == 2 and not stereo:
                    data = data.mean(axis=1).astype(dtype)
                hf.create_dataset(name if fullname else Path(name).name, data=data)
                pack_of[name] = str(pack)
    labels = out / "labels" / tsv.name
    with open(labels, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "hdf5path"], delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "hdf5path": pack_of[row["filename"]]})
    return labels


def _files(tmp_path):
    rng = np.random.default_rng(0)
    lengths = {"a.wav": SR * 25 + 3, "sub/b.wav": SR // 2, "c.wav": SR * 12}
    for i, (name, n) in enumerate(lengths.items()):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        x = rng.uniform(-0.5, 0.5, (n, 2) if name == "c.wav" else n)
        sf.write(str(tmp_path / name), x, SR, subtype="PCM_16")
    return write_tsv(tmp_path / "train.tsv", list(lengths), [[0], [1, 2], []])


@pytest.mark.parametrize("dtype, fullname, stereo", [("int16", False, False), ("float32", False, False),
                                                      ("int16", True, True), ("float64", False, True)])
def test_packs_read_as_the_files_themselves(tmp_path, dtype, fullname, stereo):
    tsv = _files(tmp_path)
    labels = wavlist_to_hdf5(tsv, tmp_path / "out", dtype=dtype, size_per_file=2, fullname=fullname, stereo=stereo)
    from_files = AudioDataset.from_tsv(tsv)
    from_packs = AudioDataset.from_tsv(labels, skip_bad=True)  # skip_bad: every pack is scanned too
    assert from_packs.keys == from_files.keys  # the same keys as the files
    assert from_packs.manifest_sha256() == from_files.manifest_sha256() and not from_packs.skipped
    np.testing.assert_array_equal(from_packs.labels(range(len(from_packs))), from_files.labels(range(len(from_files))))
    ids = list(range(len(from_files)))
    got, want = from_packs.load_batch(ids), from_files.load_batch(ids)
    mono = [i for i, key in enumerate(from_files.keys) if not key.startswith("c.wav#")]
    if dtype == "int16":  # mono: the same int16 samples, scaled as soundfile scales them
        np.testing.assert_array_equal(got[mono], want[mono])
    # a float pack: float rounding; c.wav (stereo) in an int16 pack without --stereo: the original
    # casts the channel mean back to int16 (truncating: below one step of 1/32768)
    step = 1 / 32768 if dtype == "int16" and not stereo else 1e-6
    np.testing.assert_allclose(got, want, rtol=0, atol=step)


def test_int16_stereo_is_averaged_and_truncated_as_the_original_writes_it(tmp_path):
    tsv = _files(tmp_path)
    labels = wavlist_to_hdf5(tsv, tmp_path / "out")  # int16, mean over channels cast back to int16
    ds = AudioDataset.from_tsv(labels)
    ints, _ = sf.read(str(tmp_path / "c.wav"), dtype="int16")
    expected = ints.mean(axis=1).astype(np.int16) / 32768.0
    c = [i for i, key in enumerate(ds.keys) if key.startswith("c.wav#")]
    np.testing.assert_array_equal(ds.load_batch(c).ravel(), expected[: 10 * SR].astype(np.float32))


def test_pack_errors_name_the_pack_and_the_row(tmp_path):
    tsv = _files(tmp_path)
    labels = wavlist_to_hdf5(tsv, tmp_path / "out", size_per_file=2)
    text = labels.read_text()
    pack = tmp_path / "out" / "hdf5" / "train_0.h5"
    (tmp_path / "bad.tsv").write_text(text.replace(str(pack), str(tmp_path / "gone.h5")))
    with pytest.raises(DataError, match=rf"bad.tsv line 2: {tmp_path / 'gone.h5'}: HDF5 pack not found"):
        AudioDataset.from_tsv(tmp_path / "bad.tsv")
    with h5py.File(pack, "a") as hf:
        del hf["b.wav"]
        data = hf["a.wav"][:].astype(np.float32)
        data[SR * 20] = np.nan
        del hf["a.wav"]
        hf.create_dataset("a.wav", data=data)
    ds = AudioDataset.from_tsv(labels, skip_bad=True)
    assert [name for name, _ in ds.skipped] == ["a.wav", "sub/b.wav"]
    assert f"{pack}['a.wav']: non-finite audio (NaN or Inf) at sample 320000" in ds.skipped[0][1]
    assert f"{pack}: no dataset 'b.wav' (nor 'sub/b.wav') for sub/b.wav" in ds.skipped[1][1]


def test_without_h5py_the_error_names_the_extra(tmp_path, monkeypatch):
    import builtins

    from ced_train import packs

    tsv = _files(tmp_path)
    labels = wavlist_to_hdf5(tsv, tmp_path / "out")
    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    monkeypatch.setattr(packs, "_OPEN", {})
    with pytest.raises(DataError, match=r"reading the original CED's HDF5 audio packs needs h5py: "
                                        r"pip install 'cedstore\[ced-original\]'"):
        AudioDataset.from_tsv(labels)
