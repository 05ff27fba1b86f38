"""The wide index layout of format 1.2 (int32 class indices, C up to 2**24) next to the narrow
one (int16, C <= 32767, the paper's 84-byte record at K = 20): core and reference byte for
byte, decoding against numpy, the version rules, verify, merge, the CLI and the C API."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cedstore
from cedstore import _core
from cedstore import format as F
from cedstore.cli import main
from cedstore.errors import FormatError, IntegrityError, InvalidInputError
from cedstore.reference import ReferenceReader, ReferenceWriter

META = b'{"writer":"wide test"}'
GPT2, LLAMA3 = 50_257, 128_256


def numpy_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FORMAT.md's encoding, independently: a stable sort of -x, values rounded to float16."""
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, order, axis=1).astype(np.float16), order


def write_both(folder: Path, k: int, num_classes: int, probs: np.ndarray, seeds: np.ndarray, index_width: int,
               rewrite: bool = False) -> tuple[str, str]:
    """The same store through the core and the reference writer (one epoch, every record, and
    when `rewrite`, record 0 written again from the last row and seed)."""
    paths = []
    for name, writer in (("core", _core.Writer), ("reference", ReferenceWriter)):
        path = str(folder / f"{name}.ced")
        w = writer.create(path, k, num_classes, len(probs), 1, 0, META, None, False, index_width)
        w = cedstore.Writer(w) if isinstance(w, _core.Writer) else w
        w.write(0, np.arange(len(probs)), probs=probs, seeds=seeds)
        if rewrite:
            w.write(0, [0], probs=probs[-1:], seeds=seeds[-1:])
        w.close()
        paths.append(path)
    return paths[0], paths[1]


def test_constants_agree_with_core():
    assert (_core.MAX_CLASSES, _core.MAX_CLASSES_WIDE) == (F.MAX_CLASSES, F.MAX_CLASSES_WIDE) == (32767, 2**24)
    assert _core.FORMAT_MINOR_VERSION == F.FORMAT_MINOR_VERSION == F.WIDE_INDEX_MINOR_VERSION == 2


@pytest.mark.parametrize("k, index_dtype, size, indices_offset", [
    (20, np.int16, 84, 40), (20, np.int32, 124, 40), (1, np.int32, 12, 4), (3, np.int32, 24, 8), (4, np.int32, 28, 8),
])
def test_record_dtype(k, index_dtype, size, indices_offset):
    dt = F.record_dtype(k, index_dtype)
    assert dt.itemsize == size and size % 4 == 0
    assert [dt.fields[name][1] for name in ("values", "indices", "seed")] == [
        0, indices_offset, indices_offset + np.dtype(index_dtype).itemsize * k]
    assert dt.fields["indices"][0].base == np.dtype(index_dtype)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_classes=st.one_of(st.integers(1, 40), st.integers(32_760, 32_775), st.sampled_from([GPT2, LLAMA3, 2**17 + 3])),
    k_fraction=st.floats(0, 1),
    wide=st.booleans(),
    num_samples=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_both_layouts_round_trip_byte_identical_through_core_and_reference(num_classes, k_fraction, wide,
                                                                           num_samples, seed):
    if num_classes > F.MAX_CLASSES:
        wide = True  # int16 cannot hold these classes (refused: test_narrow_refuses_more_than_32767_classes)
    k = min(num_classes, 1 + int(k_fraction * min(num_classes, 70)))  # past 64: the partial-sort path
    rng = np.random.default_rng(seed)
    probs = rng.random((num_samples, num_classes), dtype=np.float32)
    probs[:, -1] = probs.max(axis=1) + 1  # the highest class is the top-1: an index >= 32768 when C is
    seeds = rng.integers(-(2**31), 2**31, num_samples).astype(np.int32)
    with tempfile.TemporaryDirectory() as folder:
        core, reference = write_both(Path(folder), k, num_classes, probs, seeds, 4 if wide else 0, rewrite=True)
        probs[0], seeds[0] = probs[-1], seeds[-1]  # what the rewrite of record 0 left
        assert Path(core).read_bytes() == Path(reference).read_bytes()
        store, ref = cedstore.open(core), ReferenceReader(core)
        assert store.index_dtype == (np.int32 if wide else np.int16) and store.info()["format_version"] == "1.2"
        ids = np.arange(num_samples)[::-1]
        values, indices = numpy_topk(probs, k)
        for reader in (store, ref):
            got_values, got_indices, got_seeds = reader.topk(0, ids)
            np.testing.assert_array_equal(got_indices, indices[ids])
            np.testing.assert_array_equal(got_values, values[ids].astype(np.float32))
            assert got_seeds.tolist() == seeds[ids].tolist()
            dense, _ = reader.dense(0, ids)
            expected = np.zeros((num_samples, num_classes), np.float32)
            np.put_along_axis(expected, indices[ids], values[ids].astype(np.float32), axis=1)
            np.testing.assert_array_equal(dense, expected)
            reader.verify()
        records = store.records(0)
        assert records.dtype == F.record_dtype(k, store.index_dtype) and records["indices"][:, 0].tolist() == indices[:, 0].tolist()


def test_class_indices_past_int16_are_stored_and_decoded_exactly(tmp_path):
    probs = np.zeros((3, LLAMA3), np.float32)
    top = [[LLAMA3 - 1, 32_768, 0], [32_767, 65_535, 65_536], [100_000, 5, 128_000]]
    for row, classes in enumerate(top):
        probs[row, classes] = [0.5, 0.25, 0.125]
    with cedstore.create(tmp_path / "lm.ced", num_classes=LLAMA3, k=3, num_samples=3, metadata={"activation": "softmax"}) as w:
        assert w.index_dtype == np.int32
        w.write(0, [0, 1, 2], probs=probs, seeds=[1, 2, 3])
    store = cedstore.open(tmp_path / "lm.ced")
    assert (store.index_dtype, store.record_size) == (np.int32, 4 * 2 + 4 * 3 + 4)
    values, indices, _ = store.topk(0, [0, 1, 2])
    assert indices.tolist() == top and values.tolist() == [[0.5, 0.25, 0.125]] * 3
    dense, _ = store.dense(0, [2, 0])
    assert np.flatnonzero(dense[0]).tolist() == [5, 100_000, 128_000] and dense[1, LLAMA3 - 1] == values[0, 0]
    sparse_values, sparse_indices, tail, _ = cedstore.targets.sparse(store, 0, [1], tail="uniform")
    assert sparse_indices.tolist() == [top[1]] and sparse_indices.dtype == np.int64
    assert tail.tolist() == [np.float32(0.125) / np.float32(LLAMA3 - 3)]
    assert store.records(0)["indices"].dtype == np.int32 and store.records(0)["indices"].tolist() == top


def test_create_picks_the_layout_by_num_classes(tmp_path):
    for num_classes, index_dtype, expected, record_size in [
        (527, None, np.int16, 84), (32_767, None, np.int16, 84), (32_768, None, np.int32, 124),
        (GPT2, None, np.int32, 124), (527, np.int32, np.int32, 124), (527, "int16", np.int16, 84),
    ]:
        path = tmp_path / f"{num_classes}-{index_dtype}.ced"
        cedstore.create(path, num_classes=num_classes, k=20, num_samples=1, index_dtype=index_dtype).close()
        store = cedstore.open(path)
        h = F.read_header(path.read_bytes(), str(path))
        assert (store.index_dtype, store.record_size, h.version_minor) == (expected, record_size, 2)
        assert h.index_width == (4 if expected == np.int32 else 0)


def test_narrow_refuses_more_than_32767_classes(tmp_path):
    with pytest.raises(InvalidInputError, match=re.escape(
            f"{tmp_path / 'x.ced'}: num_classes = 50257 must be in [1, 32767] with int16 class indices; "
            "50257 classes need int32 class indices")):
        cedstore.create(tmp_path / "x.ced", num_classes=GPT2, k=20, num_samples=1, index_dtype=np.int16)
    with pytest.raises(InvalidInputError, match=r"^num_classes: expected 1 <= num_classes <= 32767, found 32768$"):
        _core.Writer.create(str(tmp_path / "y.ced"), 2, 32_768, 1, 1, 0, META, None)
    with pytest.raises(InvalidInputError, match=r"need 1 <= k <= num_classes <= 32767, got k=2, num_classes=32768"):
        ReferenceWriter.create(tmp_path / "z.ced", 2, 32_768, 1, 1, 0, META, None)
    with pytest.raises(InvalidInputError, match=r"index_width: expected 0 \(int16 class indices\) or 4 \(int32 class "
                                                r"indices\), found 2"):
        _core.Writer.create(str(tmp_path / "w.ced"), 2, 3, 1, 1, 0, META, None, False, 2)


def test_odd_k_pads_with_zeros_and_rewrites_whole(tmp_path):
    """K = 3: two bytes of padding keep indices[0] on a 4-byte word; a rewrite leaves it zero."""
    probs = np.array([[0.1, 0.7, 0.2, 0.4, 0.0], [0.5, 0.1, 0.9, 0.3, 0.2]], np.float32)
    core, reference = write_both(tmp_path, 3, 5, probs, np.array([7, -7], np.int32), 4, rewrite=True)
    assert Path(core).read_bytes() == Path(reference).read_bytes()
    raw = cedstore.open(core).records(0).view(np.uint8).reshape(2, -1)
    assert raw.shape == (2, 24) and raw[:, 6:8].tolist() == [[0, 0], [0, 0]]
    assert cedstore.open(core).topk(0, [0, 1])[1].tolist() == [[2, 0, 3], [2, 0, 3]]


def corrupt(path: str, record: int, offset: int, data: bytes) -> None:
    store = cedstore.open(path)
    at = store._core.records_offset + record * store.record_size + offset
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


@pytest.mark.parametrize("offset, data, message", [
    (8, (40_000).to_bytes(4, "little"), r"epoch 0, sample 1: class index 40000 at position 0 outside \[0, 33000\)"),
    (8, (-2).to_bytes(4, "little", signed=True), r"epoch 0, sample 1: class index -2 at position 0 outside \[0, 33000\)"),
    (12, (32_999).to_bytes(4, "little"), r"epoch 0, sample 1: class index 32999 appears twice"),
    (6, b"\x00\x01", r"epoch 0, sample 1: padding after the values is not zero"),
])
def test_verify_checks_wide_records(tmp_path, offset, data, message):
    probs = np.zeros((2, 33_000), np.float32)
    probs[:, [32_999, 40, 7]] = [3, 2, 1]
    path, reference = write_both(tmp_path, 3, 33_000, probs, np.zeros(2, np.int32), 4)
    corrupt(path, 1, offset, data)
    corrupt(reference, 1, offset, data)  # unsealed (write_both closes with seal): only verify reads it
    for reader in (cedstore.open(path), ReferenceReader(reference)):
        with pytest.raises(IntegrityError, match=message):
            reader.verify()
    if offset == 8:  # a bad index is refused on decode too, naming it as stored
        with pytest.raises(IntegrityError, match=message.replace(r"\)", r"\) \(the record is corrupted\)")):
            cedstore.open(path).topk(0, [1])


def test_written_and_unwritten_marker_is_a_whole_int32(tmp_path):
    path = tmp_path / "w.ced"
    with cedstore.create(path, num_classes=LLAMA3, k=2, num_samples=3) as w:
        probs = np.zeros((1, LLAMA3), np.float32)
        probs[0, [LLAMA3 - 1, 65_535]] = [1, 0.5]  # 65535 = 0x0000FFFF: half of -1 only
        w.write(0, [1], probs=probs, seeds=[0])
        assert w.written(0).tolist() == [False, True, False]
    store = cedstore.open(path)
    assert store.written(0).tolist() == [False, True, False]
    assert store.records(0)["indices"][:, 0].tolist() == [-1, LLAMA3 - 1, -1]
    with pytest.raises(cedstore.UnwrittenRecordError, match=r"epoch 0, sample 2: record not written"):
        store.dense(0, [2])
    probs[0, [LLAMA3 - 1, 65_535]] = [0.5, 1]
    with cedstore.resume(path) as w:
        w.write(0, [0], probs=probs, seeds=[4])
    assert cedstore.open(path).topk(0, [0])[1].tolist() == [[65_535, LLAMA3 - 1]]


def test_write_topk_wide_checks_indices(tmp_path):
    w = cedstore.create(tmp_path / "t.ced", num_classes=GPT2, k=3, num_samples=2)
    values = np.array([[0.5, 0.25, 0.125]], np.float32)
    with pytest.raises(InvalidInputError, match=r"sample 0 \(row 0\): indices\[0, 2\] = 40000 repeats indices\[0, 0\]"):
        w.write(0, [0], values=values, indices=[[40_000, 50_000, 40_000]], seeds=[0])
    with pytest.raises(InvalidInputError, match=r"indices\[0, 1\] = 50257 outside \[0, 50257\)"):
        w.write(0, [0], values=values, indices=[[0, GPT2, 1]], seeds=[0])
    w.write(0, [0, 1], values=np.repeat(values, 2, 0), indices=[[50_256, 32_768, 0], [1, 2, 3]], seeds=[5, 6])
    w.close()
    assert cedstore.open(tmp_path / "t.ced").topk(0, [0])[1].tolist() == [[50_256, 32_768, 0]]


def test_encode_topk_core_matches_reference_past_int16():
    rng = np.random.default_rng(1)
    x = rng.random((4, GPT2), dtype=np.float32)
    x[:, 40_000] = 2  # the top-1 needs int32
    values, indices = _core.encode_topk(x, 20)
    ref_values, ref_indices = F.encode_topk_reference(x, 20)
    assert indices.dtype == ref_indices.dtype == np.int32 and indices[:, 0].tolist() == [40_000] * 4
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(values.view(np.uint16), ref_values.view(np.uint16))
    assert _core.encode_topk(x[:, :527], 20)[1].dtype == np.int16


def test_merge_of_wide_shards(tmp_path):
    rng = np.random.default_rng(2)
    probs = rng.random((2, 6, 40_000), dtype=np.float32)
    seeds = rng.integers(0, 100, (2, 6))
    paths = []
    for rank in range(2):
        path = tmp_path / f"rank{rank}.ced"
        with cedstore.create(path, num_classes=40_000, k=5, num_samples=6, num_epochs=2) as w:
            for epoch in range(2):
                ids = np.arange(rank, 6, 2)
                w.write(epoch, ids, probs=probs[epoch, ids], seeds=seeds[epoch, ids])
        paths.append(path)
    cedstore.merge(tmp_path / "merged.ced", paths)
    merged = cedstore.open(tmp_path / "merged.ced")
    assert merged.index_dtype == np.int32
    merged.verify()
    for epoch in range(2):
        np.testing.assert_array_equal(merged.topk(epoch, np.arange(6))[1], numpy_topk(probs[epoch], 5)[1])
    small = tmp_path / "small.ced"
    cedstore.create(small, num_classes=527, k=5, num_samples=6, num_epochs=2, index_dtype=np.int16).close()
    small_wide = tmp_path / "small_wide.ced"
    cedstore.create(small_wide, num_classes=527, k=5, num_samples=6, num_epochs=2, index_dtype=np.int32).close()
    with pytest.raises(InvalidInputError, match=re.escape(
            f"cannot merge {small_wide} into {small}: index_dtype is dtype('int32'), expected dtype('int16')")):
        cedstore.merge(tmp_path / "x.ced", [small, small_wide])


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        status = main([str(a) for a in args])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_info_and_size_name_the_layout(tmp_path, capsys):
    path = tmp_path / "lm.ced"
    cedstore.create(path, num_classes=LLAMA3, k=20, num_samples=2).close()
    status, out, _ = run_cli(capsys, "info", path)
    assert status == 0 and out.splitlines()[:2] == [
        f"{path}: cedstore format 1.2, probability values",
        f"  samples 2, epochs 1, classes {LLAMA3}, k 20, record 124 bytes (int32 class indices), keys no"]
    assert json.loads(run_cli(capsys, "info", path, "--json")[1])["index_dtype"] == "int32"
    status, out, _ = run_cli(capsys, "size", "--num-samples", 1000, "--num-classes", LLAMA3, "--k", 20)
    assert status == 0 and out.splitlines()[:2] == [
        f"1 epoch(s) x 1000 samples, {LLAMA3} classes, k=20; ced: int32 class indices, 124-byte records",
        "  ced            124,000 bytes         0.12 MB         0.12 MiB"]
    sizes = json.loads(run_cli(capsys, "size", "--num-samples", 10, "--num-classes", 527, "--k", 20,
                               "--index-dtype", "int32", "--json")[1])
    assert sizes["ced"]["bytes"] == 1240 and sizes["ced_layout"] == {"index_dtype": "int32", "record_size": 124}
    assert cedstore.storage_bytes(10, 527, 20, index_dtype=np.int32) == 1240 == 10 * F.record_layout(20, 4)[0]


@pytest.mark.parametrize("args, message", [
    (["--num-classes", LLAMA3, "--index-dtype", "int16"],
     f"num_classes = {LLAMA3} must be in [1, 32767] with int16 class indices; {LLAMA3} classes need int32 class indices"),
    (["--num-classes", 2**24 + 1],
     "num_classes = 16777217 must be in [1, 16777216] with int32 class indices (the most any cedstore layout holds)"),
    (["--num-classes", 527, "--num-epochs", 2**32], "num_epochs = 4294967296 must be below 2**32 (a u32 in the header)"),
    (["--num-classes", 527, "--num-samples", 2**62], "bytes of records do not fit in a 64-bit file size"),
])
def test_size_refuses_stores_that_cannot_exist(capsys, args, message):
    status, out, err = run_cli(capsys, "size", "--num-samples", 1000, "--k", 20, *args)
    assert (status, out) == (1, "") and err.startswith("cedstore: error: ") and message in err


def test_capi_reports_the_index_width_and_decodes_wide(tmp_path):
    cffi = pytest.importorskip("cffi")
    header = (Path(__file__).resolve().parents[2] / "csrc" / "cedstore.h").read_text()
    cdef = header[header.index("/* cdef-begin"):header.index("/* cdef-end */")]
    ffi = cffi.FFI()
    ffi.cdef(re.sub(r"/\*.*?\*/", "", cdef, flags=re.S).replace("CEDSTORE_API ", ""))
    lib = ffi.dlopen(_core.__file__)
    probs = np.zeros((2, GPT2), np.float32)
    probs[:, [GPT2 - 1, 40_000]] = [[1, 0.5], [0.5, 1]]
    for name, index_dtype in (("explicit", np.int32), ("auto", None)):
        path = tmp_path / f"{name}.ced"
        with cedstore.create(path, num_classes=GPT2, k=2, num_samples=2, index_dtype=index_dtype) as w:
            w.write(0, [0, 1], probs=probs, seeds=[3, 4])
        handle, err = ffi.new("cedstore_reader**"), ffi.new("char[256]")
        assert lib.cedstore_open(str(path).encode(), handle, err, len(err)) == lib.CEDSTORE_OK
        try:
            assert lib.cedstore_index_bytes(handle[0]) == 4
            out, seeds = np.empty((2, GPT2), np.float32), np.empty(2, np.int32)
            ids = np.array([1, 0], np.int64)
            status = lib.cedstore_decode_dense(handle[0], 0, ffi.from_buffer("int64_t[]", ids), 2, 0.0,
                                               ffi.from_buffer("float[]", out), ffi.from_buffer("int32_t[]", seeds),
                                               err, len(err))
            assert status == lib.CEDSTORE_OK and seeds.tolist() == [4, 3]
            np.testing.assert_array_equal(out, probs[::-1])
        finally:
            lib.cedstore_close(handle[0])
    narrow = tmp_path / "n16.ced"
    cedstore.create(narrow, num_classes=527, k=2, num_samples=1).close()
    handle = ffi.new("cedstore_reader**")
    assert lib.cedstore_open(str(narrow).encode(), handle, ffi.NULL, 0) == lib.CEDSTORE_OK
    assert lib.cedstore_index_bytes(handle[0]) == 2
    lib.cedstore_close(handle[0])


def test_epoch_tensors_of_a_wide_store_are_int32(tmp_path):
    torch = pytest.importorskip("torch")
    from cedstore.torch import epoch_tensors  # noqa: PLC0415  (needs torch)

    probs = np.zeros((2, GPT2), np.float32)
    probs[:, [50_000, 1]] = [2, 1]
    with cedstore.create(tmp_path / "t.ced", num_classes=GPT2, k=3, num_samples=3) as w:
        w.write(0, [0, 2], probs=probs, seeds=[1, 2])
    values, indices, seeds = epoch_tensors(cedstore.open(tmp_path / "t.ced"), 0)
    assert indices.dtype == torch.int32 and indices[:, :2].tolist() == [[50_000, 1], [-1, -1], [50_000, 1]]
    assert seeds.tolist()[::2] == [1, 2] and values.dtype == torch.float16


def test_header_rules_for_index_width(tmp_path):
    from cedstore_helpers import assemble  # noqa: PLC0415

    wide = assemble(META, records=b"\xff" * 16 * 3, header={"index_width": 4, "record_size": 16, "records_length": 48})
    assert F.read_header(wide, "f").index_width == 4
    bad = [
        ({"index_width": 4}, r"header field record_size: expected 4\*ceil\(k/2\) \+ 4\*k \+ 4 = 16, found 12"),
        ({"index_width": 2}, r"header field index_width: expected 0 \(int16 class indices\) or 4 \(int32 class indices\), found 2"),
        ({"num_classes": 40_000, "index_width": 0}, r"header field num_classes: expected 1 <= num_classes <= 32767, found 40000"),
        ({"num_classes": 2**24 + 1, "index_width": 4, "record_size": 16, "records_length": 48},
         r"header field num_classes: expected 1 <= num_classes <= 16777216, found 16777217"),
        ({"version_minor": 1, "index_width": 4, "record_size": 16, "records_length": 48},
         r"header field reserved0: expected 0, found 4"),
    ]
    for fields, message in bad:
        data = assemble(META, records=b"\xff" * 48, header={"records_length": 48, **fields})
        path = tmp_path / "bad.ced"
        path.write_bytes(data)
        for read in (lambda: F.read_header(data, str(path)), lambda: cedstore.open(path)):
            with pytest.raises(FormatError, match=message):
                read()


def test_rewrite_race_never_tears_a_wide_record(tmp_path):
    """test_concurrency's rewrite race on a wide store: indices[0] is a whole int32 word there,
    not half of one. 200,000 records read while a writer process rewrites every record."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import textwrap  # noqa: PLC0415

    from race_versions import version  # noqa: PLC0415
    from test_concurrency import _READER, _REWRITER, _child_env, run_python  # noqa: PLC0415

    path, stop = str(tmp_path / "race.ced"), str(tmp_path / "stop")
    with cedstore.create(path, num_classes=32, k=20, num_samples=256, index_dtype=np.int32) as w:
        w.write(0, np.arange(256), **version(0, 256))
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_REWRITER), path, stop], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_child_env())
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        reader_output = run_python(_READER, path, str(200_000), timeout=300)
    finally:
        open(stop, "w").close()
        rounds, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors
    reads, _ = map(int, reader_output.split())
    assert int(rounds) > 0 and reads >= 200_000
    store = cedstore.open(path)
    assert store.index_dtype == np.int32
    store.verify(require_complete=False)


@pytest.mark.parametrize("num_classes", [300, 40_000, 2**24])  # a slot per class, then hashing
@pytest.mark.parametrize("k", [2, 20, 65, 200])
def test_repeats_are_found_at_any_k_and_c(tmp_path, num_classes, k):
    """write_topk and verify find a repeated class wherever it is (core, both repeat finders)."""
    rng = np.random.default_rng(k)
    classes = rng.choice(num_classes, k, replace=False)
    values = np.linspace(1, 0, k, dtype=np.float32)[None]
    path = tmp_path / "r.ced"
    with cedstore.create(path, num_classes=num_classes, k=k, num_samples=1, index_dtype=np.int32) as w:
        for at in (k - 1, 1):
            bad = classes.copy()
            bad[at] = classes[at - 1]
            with pytest.raises(InvalidInputError, match=re.escape(
                    f"indices[0, {at}] = {classes[at - 1]} repeats indices[0, {at - 1}]")):
                w.write(0, [0], values=values, indices=bad[None], seeds=[0])
        w.write(0, [0], values=values, indices=classes[None], seeds=[0])
    cedstore.open(path).verify()
    corrupt(path, 0, F.record_layout(k, 4)[1] + 4 * (k - 1), int(classes[0]).to_bytes(4, "little"))
    with pytest.raises(IntegrityError, match=f"epoch 0, sample 0: class index {classes[0]} appears twice"):
        cedstore.open(path).verify()
