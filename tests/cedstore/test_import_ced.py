"""Importing the original CED's logit files: fake logits dirs written as its save_logits.py does."""

from pathlib import Path

import numpy as np
import pytest

import cedstore
from cedstore.errors import InvalidInputError

h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install -e '.[ced-original]')")
pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install -e '.[ced-original]')")
import pyarrow.parquet as pq  # noqa: E402

from cedstore.import_ced import ORIGINAL_RECIPE_NAME, import_ced_h5  # noqa: E402

SR = 16000
CHUNK_S = 1.0  # the original's chunk_length (10 s there; 1 s keeps the fixture small)
NUM_CLASSES, K = 10, 5
# File lengths in samples: full chunks, kept and dropped remainders, a file too short for any
# chunk (the original drops chunks under half a chunk, even a file's first).
LENGTHS = {"a.wav": 16000, "b.wav": 40001, "c.wav": 35000, "d.wav": 6000, "e.wav": 12000}


def original_chunks(name, n):
    """(filename, start, end) rows as SequentialHDF5DataLoader yields them (float32 seconds)."""
    L = int(CHUNK_S * SR)
    rows = []
    for i, s in enumerate(range(0, n, L)):
        if min(L, n - s) < L // 2:
            break
        rows.append((name, i * CHUNK_S, min((i + 1) * CHUNK_S, n / SR)))
    return rows


def expected_key(name, n, start):
    """Our key for the chunk at `start`, from exact integers (not through float seconds)."""
    L = int(CHUNK_S * SR)
    return f"{name}#{start}-{min(start + L, n)}"


def write_rank(out_dir, epoch, rank, rows, values, indices, seeds, batch_size=3):
    """One logits_ep{epoch}_{rank}.h5 + .parquet, with the original's datasets and growth."""
    with h5py.File(out_dir / f"logits_ep{epoch}_{rank}.h5", "w") as store:
        vals = store.create_dataset("topk_values", dtype="float16", maxshape=(None, K), shape=(batch_size, K))
        idxs = store.create_dataset("topk_indexes", dtype="int16", maxshape=(None, K), shape=(batch_size, K))
        sds = store.create_dataset("seeds", dtype="int32", maxshape=(None,), shape=(batch_size,))
        c = 0
        for lo in range(0, len(rows), batch_size):
            n = len(rows[lo:lo + batch_size])
            if c >= vals.shape[0]:
                vals.resize((c + n, K))
                idxs.resize((c + n, K))
                sds.resize((c + n,))
            vals[c:c + n] = values[lo:lo + n]
            idxs[c:c + n] = indices[lo:lo + n]
            sds[c:c + n] = seeds[lo:lo + n]
            c += n
        vals.resize((c, K))
        idxs.resize((c, K))
        sds.resize((c,))
    table = pa.table({"filename": [r[0] for r in rows],
                      "start": pa.array([r[1] for r in rows], pa.float32()),
                      "end": pa.array([r[2] for r in rows], pa.float32())})
    pq.write_table(table, out_dir / f"logits_ep{epoch}_{rank}.parquet", compression="brotli")


def teacher_outputs(rng, n):
    """(values fp16 descending, indices int16, seeds int32) like torch.topk of sigmoid outputs."""
    probs = 1 / (1 + np.exp(-rng.normal(0, 3, (n, NUM_CLASSES))))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :K]
    values = np.take_along_axis(probs, order, axis=1).astype(np.float16)
    return values, order.astype(np.int16), rng.integers(0, 1 << 31, n).astype(np.int32)


@pytest.fixture
def logits_dir(tmp_path):
    """3 epochs x 2 ranks; rank order within an epoch shuffled from epoch 2 on."""
    rng = np.random.default_rng(0)
    names = list(LENGTHS)
    ranks = [names[:3], names[3:]]  # np.array_split(df, 2)
    truth = {}  # key -> [(values, indices, seed)] per epoch
    for epoch in (1, 2, 3):
        for rank, files in enumerate(ranks):
            rows = [row for name in files for row in original_chunks(name, LENGTHS[name])]
            if epoch > 1:
                rows = [rows[i] for i in rng.permutation(len(rows))]
            values, indices, seeds = teacher_outputs(rng, len(rows))
            write_rank(tmp_path, epoch, rank, rows, values, indices, seeds)
            for row, (name, start, _) in enumerate(rows):
                key = expected_key(name, LENGTHS[name], round(start * SR))
                truth.setdefault(key, []).append((values[row], indices[row], seeds[row]))
    (tmp_path / "meta.pt").write_bytes(b"not read")
    return tmp_path, truth


def test_round_trip_of_values_indices_seeds_and_keys(logits_dir, tmp_path_factory):
    src, truth = logits_dir
    out = tmp_path_factory.mktemp("out") / "imported.ced"
    store = import_ced_h5(out, src, num_classes=NUM_CLASSES)
    assert (store.num_epochs, store.k, store.num_classes, store.value_kind) == (3, K, NUM_CLASSES, "probability")
    assert sorted(store.keys) == sorted(truth)
    assert "d.wav#0-6000" not in store.keys and "b.wav#32000-40001" in store.keys
    store.verify()
    ids = store.lookup(list(truth))
    for epoch in range(3):
        values, indices, seeds = store.topk(epoch, ids)
        for row, key in enumerate(truth):
            want_values, want_indices, want_seed = truth[key][epoch]
            np.testing.assert_array_equal(values[row], want_values.astype(np.float32), err_msg=key)
            np.testing.assert_array_equal(indices[row], want_indices, err_msg=key)
            assert seeds[row] == want_seed, key


def test_sample_order_is_epoch_one_ranks_in_order(logits_dir, tmp_path):
    src, _ = logits_dir
    store = import_ced_h5(tmp_path / "s.ced", src, num_classes=NUM_CLASSES)
    first = [pq.read_table(src / f"logits_ep1_{r}.parquet").column("filename").to_pylist() for r in (0, 1)]
    assert [key.split("#")[0] for key in store.keys] == first[0] + first[1]


def test_metadata_records_the_original_recipe(logits_dir, tmp_path):
    src, _ = logits_dir
    names = [f"class {i}" for i in range(NUM_CLASSES)]
    meta = import_ced_h5(tmp_path / "s.ced", src, num_classes=NUM_CLASSES, class_names=names).metadata
    assert meta["augmentation"]["name"] == ORIGINAL_RECIPE_NAME == "ced-original"
    assert meta["augmentation"]["replayable"] is False
    assert "ep3" in meta["augmentation"]["store_epochs"]
    assert meta["activation"] == "sigmoid" and meta["tail_policy"] == "zero"
    assert meta["label_space"] == cedstore.label_space(names)
    assert meta["frontend"]["hop_length"] == 160 and meta["frontend"]["top_db"] == 120.0
    assert meta["teacher"]["files"] == [[f"logits_ep{e}_{r}.h5" for r in (0, 1)] for e in (1, 2, 3)]


def test_key_prefix(logits_dir, tmp_path):
    src, truth = logits_dir
    store = import_ced_h5(tmp_path / "s.ced", src, num_classes=NUM_CLASSES, key_prefix="audio/")
    assert sorted(store.keys) == sorted("audio/" + key for key in truth)


def test_keys_join_a_ced_train_dataset_of_the_same_audio(logits_dir, tmp_path):
    sf = pytest.importorskip("soundfile")
    from ced_train.data import AudioDataset

    src, _ = logits_dir
    audio = tmp_path / "audio"
    audio.mkdir()
    for name, n in LENGTHS.items():
        sf.write(audio / name, np.zeros(n, np.int16), SR, subtype="PCM_16")
    dataset = AudioDataset.from_folder(audio, chunk_seconds=CHUNK_S)
    report = import_ced_h5(tmp_path / "s.ced", src, num_classes=NUM_CLASSES).join(dataset.keys)
    assert report.missing_in_dataset == 0
    # Only the chunk the original drops (under half a chunk, yet the whole file) is not stored.
    assert report.missing_in_store_examples == ["d.wav#0-6000"]


def test_output_appears_only_on_success(logits_dir, tmp_path):
    src, _ = logits_dir
    with h5py.File(src / "logits_ep2_1.h5", "a") as f:
        f["topk_indexes"][0, 0] = NUM_CLASSES  # out of range
    out = tmp_path / "s.ced"
    with pytest.raises(InvalidInputError, match=r"logits_ep2_1\.h5 rows 0\.\.\d+: .*"):
        import_ced_h5(out, src, num_classes=NUM_CLASSES)
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_refuses_to_overwrite(logits_dir, tmp_path):
    src, _ = logits_dir
    out = tmp_path / "s.ced"
    out.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="exists; refusing to overwrite it"):
        import_ced_h5(out, src, num_classes=NUM_CLASSES)
    import_ced_h5(out, src, num_classes=NUM_CLASSES, overwrite=True)


def _drop_row(path):
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)


def _duplicate_row(path):
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table.slice(0, 1), table.slice(0, table.num_rows - 1)]), path)


def _rename_column(path):
    table = pq.read_table(path)
    pq.write_table(table.rename_columns(["fname", "start", "end"]), path)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "logits_ep2_1.h5").unlink(),
     r"logits_ep2_1\.h5 is missing: expected epochs 1\.\.3 and ranks 0\.\.1, found epochs \[1, 2, 3\]"),
    (lambda d: (d / "logits_ep3_0.parquet").unlink(), r"logits_ep3_0\.h5: its index logits_ep3_0\.parquet is missing"),
    (lambda d: _drop_row(d / "logits_ep2_0.parquet"),
     r"logits_ep2_0\.h5: topk_values has shape \[\d+, 5\], expected \[\d+, 5\] \(\d+ rows, as its \.parquet index\)"),
    (lambda d: _duplicate_row(d / "logits_ep1_0.parquet"), r"logits_ep1_0\.parquet row 1: chunk 'a\.wav#0-16000' appears twice in epoch 1"),
    (lambda d: _rename_column(d / "logits_ep1_1.parquet"),
     r"logits_ep1_1\.parquet: columns \['filename'\] missing; expected \['filename', 'start', 'end'\]"),
])
def test_damaged_dirs_name_the_file(logits_dir, tmp_path, damage, message):
    src, _ = logits_dir
    damage(src)
    with pytest.raises(InvalidInputError, match=message):
        import_ced_h5(tmp_path / "s.ced", src, num_classes=NUM_CLASSES)


def test_an_epoch_with_other_chunks_is_refused(logits_dir, tmp_path):
    src, _ = logits_dir
    path = src / "logits_ep3_1.parquet"
    table = pq.read_table(path)
    names = table.column("filename").to_pylist()
    names[0] = "z.wav"
    pq.write_table(table.set_column(0, "filename", pa.array(names)), path)
    with pytest.raises(InvalidInputError, match=r"logits_ep3_1\.parquet row 0: chunk 'z\.wav#.*' is not in epoch 1"):
        import_ced_h5(tmp_path / "s.ced", src, num_classes=NUM_CLASSES)


def test_an_empty_dir_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match=r"no logits_ep\{E\}_\{rank\}\.h5 files"):
        import_ced_h5(tmp_path / "s.ced", tmp_path, num_classes=NUM_CLASSES)


def test_an_epoch_missing_a_chunk_is_refused(logits_dir, tmp_path):
    src, _ = logits_dir
    path = src / "logits_ep2_1.h5"
    table = pq.read_table(path.with_suffix(".parquet"))
    rows = list(zip(*(table.column(c).to_pylist() for c in ("filename", "start", "end"))))
    with h5py.File(path, "r") as f:
        values, indices, seeds = (f[name][()] for name in ("topk_values", "topk_indexes", "seeds"))
    write_rank(src, 2, 1, rows[1:], values[1:], indices[1:], seeds[1:])
    with pytest.raises(InvalidInputError, match=r"logits_ep2_\*\.h5 have no record for 1 chunks of epoch 1, "
                                                r"e\.g\. \['.*'\]"):
        import_ced_h5(tmp_path / "s.ced", src, num_classes=NUM_CLASSES)


def _cli(*args):
    from cedstore.cli import main  # noqa: PLC0415

    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def test_cli_import_ced_h5(logits_dir, tmp_path, capsys):
    src, truth = logits_dir
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {i}\n" for i in range(NUM_CLASSES)))
    out = tmp_path / "cli.ced"
    assert _cli("import-ced-h5", out, src, "--num-classes", NUM_CLASSES, "--class-names", names,
                "--key-prefix", "audio/") == 0
    assert capsys.readouterr().out == f"{out}: imported 3 epochs x {len(truth)} records, k={K}\n"
    with cedstore.open(out) as store:
        assert sorted(store.keys) == sorted(f"audio/{key}" for key in truth)
        assert store.metadata["label_space"] == cedstore.label_space([f"class {i}" for i in range(NUM_CLASSES)])
    assert _cli("import-ced-h5", out, src, "--num-classes", NUM_CLASSES) == 1
    assert capsys.readouterr().err.endswith("(use --overwrite to replace it)\n")


def test_cli_import_ced_h5_without_the_extra_is_exit_4(logits_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)  # as if h5py were not installed
    assert _cli("import-ced-h5", tmp_path / "x.ced", logits_dir[0]) == 4
    err = capsys.readouterr().err
    assert err.startswith("cedstore: error: import_ced_h5 needs h5py") and "cedstore[ced-original]" in err
    assert not (tmp_path / "x.ced").exists()
