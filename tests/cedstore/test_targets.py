"""Tail policies (cedstore.targets) against an independent per-row reference (issue 8 item 2)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cedstore
from cedstore import _core, targets
from cedstore_helpers import create_store, make_teacher, write_with

NUM_CLASSES, K, NUM_SAMPLES = 9, 3, 12


def softmax_store(path, metadata=None, value_kind="probability", seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (NUM_SAMPLES, NUM_CLASSES)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    meta = {"activation": "softmax"} if metadata is None else metadata
    with cedstore.create(path, num_classes=NUM_CLASSES, k=K, num_samples=NUM_SAMPLES, metadata=meta,
                         value_kind=value_kind) as w:
        w.write(0, np.arange(NUM_SAMPLES), probs=probs.astype(np.float32), seeds=np.arange(NUM_SAMPLES))
    return cedstore.open(path), probs


def reference_dense(probs: np.ndarray, tail: str) -> np.ndarray:
    """Row by row from the teacher's outputs, as FORMAT.md describes each policy."""
    out = np.zeros_like(probs)
    for b, row in enumerate(probs):
        top = np.argsort(-row, kind="stable")[:K]
        values = row[top].astype(np.float16).astype(np.float64)
        if tail == "uniform":
            out[b] = max(1 - values.sum(), 0) / (NUM_CLASSES - K)
        if tail == "renormalize":
            values = values / values.sum()
        out[b, top] = values
    return out


@pytest.mark.parametrize("tail", ["zero", "uniform", "renormalize"])
def test_dense_and_sparse_match_the_reference(tmp_path, tail):
    store, probs = softmax_store(tmp_path / "s.ced")
    ids = np.array([5, 0, 11, 5])
    dense, seeds = targets.dense(store, 0, ids, tail=tail)
    np.testing.assert_allclose(dense, reference_dense(probs[ids], tail), rtol=1e-6, atol=1e-7)
    assert seeds.tolist() == ids.tolist()
    values, indices, fill, seeds = targets.sparse(store, 0, ids, tail=tail)
    assert (values.dtype, indices.dtype, fill.dtype, fill.shape) == (np.float32, np.int64, np.float32, (4,))
    np.testing.assert_array_equal(targets.densify(values, indices, fill, NUM_CLASSES), dense)
    if tail != "zero":
        np.testing.assert_allclose(dense.sum(1), 1, rtol=1e-6)


def test_zero_is_what_the_store_decodes(store_path):
    store = cedstore.open(store_path)  # a sigmoid store
    dense, seeds = targets.dense(store, 1, [3, 4])
    expected, expected_seeds = store.dense(1, [3, 4])
    np.testing.assert_array_equal(dense, expected)
    np.testing.assert_array_equal(seeds, expected_seeds)


def test_policies_that_do_not_fit_the_store_are_refused(tmp_path, store_path):
    sigmoid = cedstore.open(store_path)
    with pytest.raises(cedstore.InvalidInputError, match=(
            r"teacher.ced: tail policy 'uniform' needs softmax probabilities \(metadata activation 'softmax', "
            r"value_kind 'probability'\); the store has activation 'sigmoid' and value_kind 'probability': "
            r"use tail='zero'")):
        targets.dense(sigmoid, 0, [0], tail="uniform")
    with pytest.raises(cedstore.InvalidInputError, match=(
            r"teacher.ced: unknown tail policy 'Uniform': expected one of zero, uniform, renormalize")):
        targets.sparse(sigmoid, 0, [0], tail="Uniform")
    bare, _ = softmax_store(tmp_path / "bare.ced", metadata={})
    with pytest.raises(cedstore.InvalidInputError, match=r"the store has no 'activation' in its metadata"):
        targets.check_tail(bare, "renormalize")
    logits, _ = softmax_store(tmp_path / "logits.ced", value_kind="logit")
    with pytest.raises(cedstore.InvalidInputError, match=r"activation 'softmax' and value_kind 'logit'"):
        targets.check_tail(logits, "uniform")
    assert targets.check_tail(logits, "zero") == "zero"
    with pytest.raises(cedstore.InvalidInputError, match=r"out must be a writable float32 array of shape \[1, 9\], found float64 \[1, 9\]"):
        targets.densify(np.ones((1, 3)), np.zeros((1, 3), int) + [[0, 1, 2]], np.zeros(1), 9, out=np.zeros((1, 9)))


def test_temperature_key(tmp_path):
    assert targets.temperature(softmax_store(tmp_path / "a.ced")[0]) == 1.0
    assert targets.temperature(softmax_store(tmp_path / "b.ced", {"activation": "softmax", "temperature": 4})[0]) == 4.0
    bad = softmax_store(tmp_path / "c.ced", {"activation": "softmax", "temperature": "hot"})[0]
    with pytest.raises(cedstore.InvalidInputError, match=r"c.ced: metadata 'temperature' must be a positive number, found 'hot'"):
        targets.temperature(bad)


def test_uniform_edge_cases():
    values, fill = targets.apply_tail(np.array([[0.6, 0.5], [0.5, 0.25]], np.float32), 4, "uniform")
    assert fill.tolist() == [0.0, 0.125]  # a top-K past 1 (fp16 rounding) leaves no mass, not a negative one
    assert targets.apply_tail(np.array([[0.5, 0.25]], np.float32), 2, "uniform")[1].tolist() == [0.0]  # K == C
    assert targets.apply_tail(np.zeros((1, 2), np.float32), 4, "renormalize")[0].tolist() == [[0.0, 0.0]]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.sampled_from(["uniform", "renormalize"]))
def test_softmax_policies_give_distributions(num_rows, seed, tail):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 40))
    k = int(rng.integers(1, num_classes + 1))
    logits = rng.normal(0, 3, (num_rows, num_classes))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    top = np.sort(probs, axis=1)[:, ::-1][:, :k].astype(np.float16).astype(np.float32)
    values, fill = targets.apply_tail(top, num_classes, tail)
    total = values.sum(1, dtype=np.float64) + fill * (num_classes - k)
    assert (fill >= 0).all() and (values >= 0).all()
    if k < num_classes or tail == "renormalize":
        np.testing.assert_allclose(total[top.sum(1) <= 1], 1, rtol=1e-5)


def test_store_dense_takes_a_tail_policy(tmp_path, store_path):
    store, probs = softmax_store(tmp_path / "s.ced")
    for tail in ("uniform", "renormalize"):
        np.testing.assert_array_equal(store.dense(0, [2, 7], tail=tail)[0], targets.dense(store, 0, [2, 7], tail=tail)[0])
    out = np.empty((2, NUM_CLASSES), np.float32)
    assert store.dense(0, [2, 7], out=out, tail="uniform")[0] is out
    np.testing.assert_allclose(out.sum(1), 1, rtol=1e-6)
    with pytest.raises(cedstore.InvalidInputError, match=r"s.ced: fill = 0.5 applies to tail 'zero' only, not 'uniform'"):
        store.dense(0, [0], 0.5, tail="uniform")
    with pytest.raises(cedstore.InvalidInputError, match=r"unknown tail policy 'none'"):
        store.dense(0, [0], tail="none")
    with pytest.raises(cedstore.InvalidInputError, match=r"tail policy 'renormalize' needs softmax probabilities"):
        cedstore.open(store_path).dense(0, [0], tail="renormalize")


@pytest.mark.parametrize("recorded", [None, "zero", "uniform", "renormalize"])
def test_without_tail_the_recorded_policy_applies(tmp_path, recorded):
    meta = {"activation": "softmax", **({"tail_policy": recorded} if recorded else {})}
    store, probs = softmax_store(tmp_path / "s.ced", meta)
    policy = recorded or "zero"  # FORMAT.md: absent means zero
    assert targets.recorded_tail(store) == policy
    ids = [4, 1, 4]
    np.testing.assert_allclose(targets.dense(store, 0, ids)[0], reference_dense(probs[ids], policy), rtol=1e-6, atol=1e-7)
    for got, expected in zip(targets.sparse(store, 0, ids), targets.sparse(store, 0, ids, tail=policy)):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(targets.dense(store, 0, ids, tail="zero")[0], store.dense(0, ids)[0])  # a request wins
    pytest.importorskip("torch")
    from cedstore.torch import TargetDataset

    assert TargetDataset(store).tail == policy and TargetDataset(store, tail="zero").tail == "zero"


def test_a_recorded_policy_that_is_unknown_or_does_not_fit_is_refused(tmp_path):
    unknown = cedstore.open(write_with(_core.Writer, tmp_path / "u.ced", make_teacher(1, 2, 4), 2,
                                       metadata_json=b'{"activation":"softmax","tail_policy":"entropy","writer":"x"}'))
    message = (r"u.ced: the store records tail_policy 'entropy', which this cedstore does not know "
               r"\(it knows zero, uniform, renormalize\): name one of them explicitly")
    with pytest.raises(cedstore.InvalidInputError, match=message):
        targets.dense(unknown, 0, [0])  # FORMAT.md: never applied silently
    assert targets.dense(unknown, 0, [0], tail="zero")[0].shape == (1, 4)
    unfit = cedstore.open(write_with(_core.Writer, tmp_path / "f.ced", make_teacher(1, 2, 4), 2,
                                     metadata_json=b'{"activation":"sigmoid","tail_policy":"uniform","writer":"x"}'))
    with pytest.raises(cedstore.InvalidInputError, match=r"f.ced: tail policy 'uniform' needs softmax probabilities"):
        targets.sparse(unfit, 0, [0])


@pytest.mark.parametrize("metadata, value_kind, message", [
    ({"tail_policy": "flat"}, "probability", "unknown tail policy 'flat': expected one of zero, uniform, renormalize"),
    ({"activation": "sigmoid", "tail_policy": "uniform"}, "probability",
     "tail policy 'uniform' needs softmax probabilities (metadata activation 'softmax', value_kind 'probability'); "
     "the store has activation 'sigmoid' and value_kind 'probability': record 'tail_policy': 'zero'"),
    ({"tail_policy": "renormalize"}, "probability", "the store has no 'activation' in its metadata"),
    ({"activation": "softmax", "tail_policy": "uniform"}, "logit", "activation 'softmax' and value_kind 'logit'"),
])
def test_create_refuses_a_recorded_policy_readers_cannot_apply(tmp_path, metadata, value_kind, message):
    path = tmp_path / "s.ced"
    with pytest.raises(cedstore.InvalidInputError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
        cedstore.create(path, num_classes=4, k=2, num_samples=2, metadata=metadata, value_kind=value_kind)
    assert not path.exists()
    for fits in ({"activation": "softmax", "tail_policy": "uniform"}, {"tail_policy": "zero"}):
        cedstore.create(path, num_classes=4, k=2, num_samples=2, metadata=fits, overwrite=True).close()
