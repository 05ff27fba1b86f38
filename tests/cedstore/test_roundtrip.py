"""Round-trip properties: the core and the reference write identical bytes and decode identically."""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np
from cedstore_helpers import WRITERS, Teacher, write_with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cedstore
from cedstore import _core
from cedstore.format import encode_topk_reference
from cedstore.reference import ReferenceReader

# Values where encoders tend to disagree: ties, signed zeros, 1, fp16 subnormals and halfway
# points, float32 subnormals, and the edges of the fp16 range.
SPECIAL = np.array([0.0, -0.0, 1.0, 0.5, 6e-8, 1e-8, 1e-40, 1.0004883, 0.99975586, 2049.0,
                    65504.0, -65504.0, 65519.0, 3.3333333e-1, -1.0], np.float32)


@st.composite
def teachers(draw):
    num_classes = draw(st.integers(1, 40))
    k = draw(st.integers(1, num_classes))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 12)), num_classes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    probs = rng.choice(SPECIAL, shape) if draw(st.booleans()) else rng.standard_normal(shape, np.float32) * 100
    probs = probs.astype(draw(st.sampled_from([np.float32, np.float16])))
    seeds = rng.integers(-(2**31), 2**31, shape[:2]).astype(np.int32)
    order = [(e, i) for e in range(shape[0]) for i in rng.permutation(shape[1])]
    cuts = sorted(rng.choice(len(order), min(3, len(order) - 1), replace=False) + 1)
    batches = []
    for chunk in np.split(np.array(order), cuts):  # one batch per chunk and epoch
        for e in np.unique(chunk[:, 0]):
            batches.append((int(e), chunk[chunk[:, 0] == e, 1]))
    keys = [f"{rng.integers(1000)}/{i}" for i in range(shape[1])] if draw(st.booleans()) else None
    return Teacher(probs, seeds), k, batches, keys, draw(st.sampled_from([0, 1]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(teachers())
def test_core_and_reference_files_are_identical(case):
    teacher, k, batches, keys, value_kind = case
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            name: write_with(cls, pathlib.Path(tmp) / f"{name}.ced", teacher, k, keys=keys,
                             batches=batches, value_kind=value_kind)
            for name, cls in WRITERS.items()
        }
        assert paths["core"].read_bytes() == paths["reference"].read_bytes()
        store, ref = cedstore.open(paths["core"]), ReferenceReader(paths["core"])
        store.verify()
        ref.verify()
        ids = np.random.default_rng(0).permutation(teacher.num_samples)
        x = teacher.probs.astype(np.float32)
        for epoch in range(teacher.num_epochs):
            values, indices, seeds = store.topk(epoch, ids)
            np.testing.assert_array_equal(seeds, teacher.seeds[epoch, ids])
            # top-k is a stable sort of -x, values rounded to fp16 and back
            expected_indices = np.argsort(-x[epoch, ids], axis=1, kind="stable")[:, :k]
            expected_values = np.take_along_axis(x[epoch, ids], expected_indices, 1).astype(np.float16)
            np.testing.assert_array_equal(indices, expected_indices)
            assert values.tobytes() == expected_values.astype(np.float32).tobytes()  # signed zeros too
            # dense is a naive scatter of the top-k into `fill`
            targets, dense_seeds = store.dense(epoch, ids, fill=-7.0)
            expected = np.full((len(ids), teacher.num_classes), -7.0, np.float32)
            for row in range(len(ids)):
                expected[row, expected_indices[row]] = expected_values[row]
            assert targets.tobytes() == expected.tobytes()
            np.testing.assert_array_equal(dense_seeds, seeds)
            ref_targets, _ = ref.dense(epoch, ids, fill=-7.0)
            assert ref_targets.tobytes() == targets.tobytes()
        if keys is not None:
            assert store.keys == keys
            assert store.lookup(keys + ["absent"]).tolist() == list(range(len(keys))) + [-1]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 64).flatmap(lambda c: st.tuples(st.just(c), st.integers(1, c))),
       st.integers(0, 2**32 - 1), st.booleans())
def test_encode_topk_core_equals_reference(shape, seed, special):
    num_classes, k = shape
    rng = np.random.default_rng(seed)
    x = rng.choice(SPECIAL[SPECIAL != 65519.0], (5, num_classes)) if special else rng.random((5, num_classes), np.float32)
    for dtype in (np.float32, np.float16):
        values, indices = _core.encode_topk(x.astype(dtype), k)
        ref_values, ref_indices = encode_topk_reference(x.astype(dtype), k)
        assert values.dtype == np.float16 and indices.dtype == np.int16
        assert values.tobytes() == ref_values.tobytes() and indices.tobytes() == ref_indices.tobytes()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300) | st.integers(4096, 4096 + 36 - 1), st.integers(0, 255)),
                min_size=1, max_size=4))
def test_mutated_files_are_refused_cleanly(mutations):
    """Any byte changes to a valid file: open, verify and decode succeed or raise a CedStoreError."""
    teacher = Teacher(np.linspace(0, 1, 3 * 5, dtype=np.float32).reshape(1, 3, 5), np.arange(3, dtype=np.int32)[None])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_with(_core.Writer, pathlib.Path(tmp) / "x.ced", teacher, 2, keys=["a", "bb", "c"])
        data = bytearray(path.read_bytes())
        for position, value in mutations:
            data[position] = value
        path.write_bytes(data)
        try:
            store = cedstore.open(path)
            store.dense(0, [0, 1, 2])
            store.lookup(["a", "bb", "zz"])
            store.verify()
        except cedstore.CedStoreError:
            pass
