"""The public API: create/open/resume/merge, joins, info, sizes, pickling."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
from cedstore_helpers import METADATA, METADATA_JSON, WRITERS, create_store, make_teacher, write_with

import cedstore
from cedstore.format import encode_topk_reference
from cedstore.reference import ReferenceReader

KEYS = [f"clip{i:03d}.wav" for i in range(12)]


def test_public_surface():
    assert cedstore.__version__ == "0.1.0" and cedstore.FORMAT_VERSION == 1
    assert sorted(cedstore.__all__) == sorted([
        "__version__", "FORMAT_VERSION", "create", "resume", "open", "merge", "shards", "create_shard", "resume_shard",
        "merge_shards", "storage_bytes", "targets", "label_space",
        "Store", "Writer", "JoinReport", "CedStoreError", "FormatError", "UnsupportedVersionError",
        "IntegrityError", "UnwrittenRecordError", "WriterClosedError", "InvalidInputError",
    ])
    assert issubclass(cedstore.CedStoreError, ValueError)


def test_import_needs_no_torch_and_refuses_a_missing_core():
    code = ("import sys; import cedstore; assert 'torch' not in sys.modules; "
            "sys.modules.pop('cedstore'); sys.modules.pop('cedstore._core'); sys.modules['cedstore._core'] = None\n"
            "try:\n import cedstore\nexcept ImportError as e:\n print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "cedstore's C++ extension cedstore._core is not built or does not load" in out
    assert "`pip install .` (or `pip install -e .` in a source checkout)" in out


def test_store_attributes(store_path, teacher):
    store = cedstore.open(store_path)
    assert (store.num_classes, store.k, store.num_samples, store.num_epochs) == (9, 3, 12, 2)
    assert (store.record_size, store.value_kind, store.path) == (16, "probability", store_path)
    assert store.metadata == {**METADATA, "writer": "cedstore 0.1.0"}
    assert store.keys == KEYS
    assert repr(store) == f"<cedstore.Store {store_path!r} N=12 E=2 C=9 K=3 probability>"


def test_dense_topk_records_agree(store_path, teacher):
    store = cedstore.open(store_path)
    ids = np.array([5, 0, 11, 5])
    values, indices = encode_topk_reference(teacher.probs[1, ids], 3)
    v, i, seeds = store.topk(1, ids)
    assert v.dtype == np.float32 and i.dtype == np.int64 and seeds.dtype == np.int32
    np.testing.assert_array_equal(v, values.astype(np.float32))
    np.testing.assert_array_equal(i, indices)
    np.testing.assert_array_equal(seeds, teacher.seeds[1, ids])
    targets, seeds2 = store.dense(1, ids)
    expected = np.zeros((4, 9), np.float32)
    np.put_along_axis(expected, indices.astype(np.int64), values.astype(np.float32), axis=1)
    np.testing.assert_array_equal(targets, expected)
    np.testing.assert_array_equal(seeds2, seeds)
    out = np.full((4, 9), 5.0, np.float32)
    filled, _ = store.dense(1, ids, fill=-1.0, out=out)
    assert filled is out and np.all((out == expected) | ((expected == 0) & (out == -1.0)))
    records = store.records(1)
    assert records.dtype.itemsize == 16 and not records.flags.writeable and records.shape == (12,)
    np.testing.assert_array_equal(records["values"][ids], values)
    np.testing.assert_array_equal(records["seed"][ids], teacher.seeds[1, ids])
    empty_targets, empty_seeds = store.dense(0, [])
    assert empty_targets.shape == (0, 9) and empty_seeds.shape == (0,)


def test_records_view_is_zero_copy_and_outlives_close(store_path):
    store = cedstore.open(store_path)
    records = store.records(0)
    buffer = np.frombuffer(store._core.buffer(), np.uint8)
    assert records.ctypes.data == buffer.ctypes.data + 4096
    store.close()
    assert records["indices"][:, 0].min() >= 0  # the mapping lives while the view does


def test_write_topk_equals_write_dense(tmp_path, teacher):
    dense_path = create_store(tmp_path / "dense.ced", teacher)
    with cedstore.create(tmp_path / "topk.ced", num_classes=9, k=3, num_samples=12, num_epochs=2, metadata=METADATA) as w:
        for epoch in range(2):
            values, indices = encode_topk_reference(teacher.probs[epoch], 3)
            w.write(epoch, np.arange(12), values=values, indices=indices, seeds=teacher.seeds[epoch])
        w.write(0, [], probs=np.zeros((0, 9), np.float32), seeds=[])  # an empty batch is a no-op
    assert (tmp_path / "topk.ced").read_bytes() == pathlib.Path(dense_path).read_bytes()


def test_metadata_bytes_and_label_space(tmp_path):
    names = ["Speech", "Music", "Dög"]
    space = cedstore.label_space(names)
    assert space == {"num_classes": 3, "names_sha256": hashlib.sha256("Speech\nMusic\nDög".encode()).hexdigest()}
    meta = {"label_space": space, "teacher": ["a", "b"], "user": {"é": 1.5}}
    cedstore.create(tmp_path / "m.ced", num_classes=3, k=1, num_samples=1, metadata=meta, value_kind="logit").close()
    raw = cedstore.open(tmp_path / "m.ced")._core.metadata_bytes()
    assert raw == json.dumps({**meta, "writer": "cedstore 0.1.0"}, sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False).encode()
    assert cedstore.open(tmp_path / "m.ced").value_kind == "logit"


def test_core_and_reference_write_the_same_file(tmp_path):
    teacher = make_teacher(num_epochs=3, num_samples=20, num_classes=30, seed=3)
    batches = [(1, [3, 1, 2]), (0, range(20)), (2, range(19, -1, -1)), (1, [0, *range(4, 20)])]
    files = {name: write_with(cls, tmp_path / f"{name}.ced", teacher, 7, keys=[f"k{i}" for i in range(20)],
                              batches=batches).read_bytes() for name, cls in WRITERS.items()}
    assert files["core"] == files["reference"]


def test_join_reports_coverage(store_path):
    store = cedstore.open(store_path)
    report = store.join(["clip003.wav", "nope.wav", "clip000.wav", "other.wav"])
    assert report.ids.tolist() == [3, -1, 0, -1]
    assert (report.missing_in_store, report.missing_in_dataset) == (2, 10)
    assert report.missing_in_store_examples == ["nope.wav", "other.wav"]
    assert report.missing_in_dataset_examples == ["clip001.wav", "clip002.wav", "clip004.wav", "clip005.wav", "clip006.wav"]
    assert str(report).endswith("2 of 4 dataset keys have records; 2 missing in the store (e.g. ['nope.wav', "
                                "'other.wav']), 10 store samples not in the dataset (e.g. ['clip001.wav', "
                                "'clip002.wav', 'clip004.wav', 'clip005.wav', 'clip006.wav'])")
    with pytest.raises(cedstore.InvalidInputError, match=r"teacher\.ced: 2 of 4 dataset keys have records"):
        report.check()
    full = store.join(reversed(KEYS)).check()
    assert full.ids.tolist() == list(range(11, -1, -1)) and full.missing_in_dataset == 0
    assert store.lookup(["clip011.wav", "clip0", "\ud800"]).tolist() == [11, -1, -1]


def test_info(store_path):
    info = cedstore.open(store_path).info()
    assert json.loads(json.dumps(info)) == info
    assert info["epochs"][1] == {"epoch": 1, "written": 12, "sealed": True, "crc32": info["epochs"][1]["crc32"]}
    assert {k: info[k] for k in ("num_samples", "num_epochs", "num_classes", "k", "record_size", "complete", "sealed")} == {
        "num_samples": 12, "num_epochs": 2, "num_classes": 9, "k": 3, "record_size": 16, "complete": True, "sealed": True}
    assert info["records_bytes"] == 2 * 12 * 16 and info["file_size"] == os.path.getsize(store_path)
    assert info["overhead_bytes"] == info["file_size"] - info["records_bytes"]


def test_store_pickles_by_path(store_path):
    store = cedstore.open(store_path)
    blob = pickle.dumps(store)
    assert len(blob) < 300  # the path, not the records
    clone = pickle.loads(blob)
    assert clone.path == store.path and clone.dense(0, [1])[0].tobytes() == store.dense(0, [1])[0].tobytes()


def test_with_block_that_raises_leaves_epochs_open(tmp_path, teacher):
    with pytest.raises(RuntimeError):
        with cedstore.create(tmp_path / "x.ced", num_classes=9, k=3, num_samples=12, num_epochs=1) as w:
            w.write(0, np.arange(12), probs=teacher.probs[0], seeds=teacher.seeds[0])
            raise RuntimeError("teacher crashed")
    assert cedstore.open(tmp_path / "x.ced").info()["epochs"][0]["sealed"] is False


@pytest.mark.parametrize("interrupt", ["close(seal=False)", "close()", "drop"])
def test_resume_finishes_to_the_one_shot_file(tmp_path, teacher, interrupt):
    one_shot = create_store(tmp_path / "one.ced", teacher, keys=KEYS)
    path = tmp_path / "resumed.ced"
    w = cedstore.create(path, num_classes=9, k=3, num_samples=12, num_epochs=2, keys=KEYS, metadata=METADATA)
    w.write(0, np.arange(12), probs=teacher.probs[0], seeds=teacher.seeds[0])
    w.write(1, [7, 2], probs=teacher.probs[1, [7, 2]], seeds=teacher.seeds[1, [7, 2]])
    {"close(seal=False)": lambda: w.close(seal=False), "close()": w.close, "drop": lambda: None}[interrupt]()
    del w  # "drop": like a killed process, nothing is sealed
    w = cedstore.resume(path)
    assert w.written(0).all() and np.flatnonzero(w.written(1)).tolist() == [2, 7]
    assert [state for state, _ in cedstore.open(path)._core.epoch_table()] == [0, 0]  # resume opens every epoch
    todo = np.flatnonzero(~w.written(1))
    w.write(1, todo, probs=teacher.probs[1, todo], seeds=teacher.seeds[1, todo])
    w.close()
    assert path.read_bytes() == pathlib.Path(one_shot).read_bytes()
    cedstore.open(path).verify()


def _shards(tmp_path, teacher, split):
    """Two shards: rank 0 writes samples where split is True, rank 1 the others (and overlap)."""
    paths = []
    for rank, mine in enumerate([split, ~split]):
        path = tmp_path / f"rank{rank}.ced"
        with cedstore.create(path, num_classes=9, k=3, num_samples=12, num_epochs=2, keys=KEYS, metadata=METADATA) as w:
            for epoch in range(2):
                ids = np.flatnonzero(mine)
                w.write(epoch, ids, probs=teacher.probs[epoch, ids], seeds=teacher.seeds[epoch, ids])
        paths.append(path)
    return paths


def test_merge_equals_one_shot(tmp_path, teacher):
    one_shot = create_store(tmp_path / "one.ced", teacher, keys=KEYS)
    split = np.arange(12) % 3 == 0
    split[[1, 2]] = True  # rank 0 also writes samples 1 and 2, identically to rank 1 ... below
    shards = _shards(tmp_path, teacher, split)
    with cedstore.resume(shards[1]) as w:  # ... so they are written, identical, in both shards
        w.write(0, [1, 2], probs=teacher.probs[0, [1, 2]], seeds=teacher.seeds[0, [1, 2]])
    cedstore.merge(tmp_path / "merged.ced", shards)
    assert (tmp_path / "merged.ced").read_bytes() == pathlib.Path(one_shot).read_bytes()
    assert not (tmp_path / "merged.ced.partial").exists()
    with pytest.raises(FileExistsError, match=r"merged\.ced exists; refusing to overwrite it$"):
        cedstore.merge(tmp_path / "merged.ced", shards)
    cedstore.merge(tmp_path / "merged.ced", shards, overwrite=True)


def test_merge_refuses_conflicts_and_gaps(tmp_path, teacher):
    split = np.arange(12) < 6
    shards = _shards(tmp_path, teacher, split)
    with cedstore.resume(shards[1]) as w:
        w.write(1, [4], probs=teacher.probs[0, [4]], seeds=teacher.seeds[1, [4]])  # other outputs, same seed
    out = tmp_path / "merged.ced"
    with pytest.raises(cedstore.InvalidInputError,
                       match=rf"epoch 1, sample 4: shards {shards[0]} and {shards[1]} hold different records"):
        cedstore.merge(out, shards)
    assert not out.exists() and not (tmp_path / "merged.ced.partial").exists()
    with pytest.raises(cedstore.UnwrittenRecordError, match=r"epoch 0, sample 6: record is written in none of the 1 shards"):
        cedstore.merge(out, shards[:1])
    with pytest.raises(cedstore.InvalidInputError, match=r"merged\.ced: no shards to merge"):
        cedstore.merge(out, [])


def test_merge_refuses_different_shards(tmp_path, teacher):
    a = create_store(tmp_path / "a.ced", teacher, keys=KEYS)
    b = create_store(tmp_path / "b.ced", teacher, k=4, keys=KEYS)
    c = create_store(tmp_path / "c.ced", teacher, keys=KEYS[::-1])
    cedstore.create(tmp_path / "d.ced", num_classes=9, k=3, num_samples=12, num_epochs=2, keys=KEYS,
                    metadata={"user": {"rank": 1}}).close()
    cases = [(b, r"k is 4, expected 3"), (c, r"keys differ"), (tmp_path / "d.ced", r"metadata differs")]
    for other, message in cases:
        with pytest.raises(cedstore.InvalidInputError, match=rf"cannot merge {other} into {a}: {message}"):
            cedstore.merge(tmp_path / "out.ced", [a, other])


# The paper's Table 2, per epoch with C = 527, K = 20: (clips, method, MB, MiB)
TABLE_2 = [
    (21_155, "fp32", "44.6", "42.5"),
    (21_155, "fp16", "22.3", "21.3"),
    (21_155, "ced", "1.78", None),
    (1_904_746, "fp32", "4,015", "3,829"),
    (1_904_746, "fp16", "2,008", "1,914"),
    (1_904_746, "ced", "160.0", "152.6"),
]


@pytest.mark.parametrize("clips, method, mb, mib", TABLE_2)
def test_storage_bytes_reproduces_table_2(clips, method, mb, mib):
    size = cedstore.storage_bytes(clips, 527, 20, method=method)
    assert f"{size / 1e6:,.{len(mb.partition('.')[2])}f}" == mb
    if mib is not None:
        rounded = f"{size / 2**20:,.{len(mib.partition('.')[2])}f}"
        # The paper truncates fp16 on AS-2M (1,914.6 MiB); every other entry is rounded.
        assert rounded == mib or (clips, method) == (1_904_746, "fp16") and math.floor(size / 2**20) == 1914
    assert cedstore.storage_bytes(clips, 527, 20, num_epochs=3, method=method) == 3 * size


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "int8"}, r"method must be one of \['ced', 'fp16', 'fp32'\], found 'int8'"),
        ({"k": 600}, r"k <= num_classes, got num_samples=10, num_classes=527, k=600, num_epochs=1"),
        ({"num_samples": 0}, r"need num_samples, num_classes, k, num_epochs >= 1"),
    ],
)
def test_storage_bytes_refuses(kwargs, message):
    with pytest.raises(cedstore.InvalidInputError, match=message):
        cedstore.storage_bytes(**{"num_samples": 10, "num_classes": 527, "k": 20, **kwargs})


@pytest.mark.parametrize("num_samples, num_epochs, keys", [(1, 1, False), (1000, 3, False), (5000, 2, True)])
def test_file_size_is_records_plus_documented_overhead(tmp_path, num_samples, num_epochs, keys):
    keys = [f"audio/{i:07d}.flac" for i in range(num_samples)] if keys else None
    path = tmp_path / "x.ced"
    cedstore.create(path, num_classes=527, k=20, num_samples=num_samples, num_epochs=num_epochs, keys=keys,
                    metadata=METADATA).close()
    records = cedstore.storage_bytes(num_samples, 527, 20, num_epochs=num_epochs)
    key_bytes = 0 if keys is None else 16 + 8 * (num_samples + 1) + 8 * num_samples + sum(len(k) for k in keys)
    overhead = os.path.getsize(path) - records
    fixed = 128 + len(METADATA_JSON) + key_bytes + 8 * num_epochs
    assert fixed <= overhead <= fixed + 4095 + 7 + 7
    assert ReferenceReader(path).header.records_offset == overhead
