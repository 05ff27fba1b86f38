"""cedstore.torch: zero-copy epoch tensors and the batched Dataset, with DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import BatchSampler, DataLoader, SequentialSampler  # noqa: E402

import cedstore  # noqa: E402
from cedstore.torch import TargetDataset, collate, epoch_tensors  # noqa: E402
from test_concurrency import run_python  # noqa: E402


def test_epoch_tensors_are_zero_copy_views(store_path, teacher):
    store = cedstore.open(store_path)
    values, indices, seeds = epoch_tensors(store, 1)  # no warning: pytest turns warnings into errors
    records = store.records(1)
    assert (values.dtype, indices.dtype, seeds.dtype) == (torch.float16, torch.int16, torch.int32)
    assert values.shape == (12, 3) and indices.shape == (12, 3) and seeds.shape == (12,)
    assert seeds.data_ptr() == values.data_ptr() + 12 and indices.data_ptr() == values.data_ptr() + 6  # one buffer
    assert values.stride() == (8, 1) and seeds.stride() == (4,)  # strides in elements: 16-byte records
    np.testing.assert_array_equal(values.numpy(), records["values"])
    np.testing.assert_array_equal(indices.numpy(), records["indices"])
    np.testing.assert_array_equal(seeds.numpy(), teacher.seeds[1])
    with pytest.raises(IndexError, match=r"epoch 2 out of range \[0, 2\)"):
        epoch_tensors(store, 2)


def test_epoch_tensors_in_place_ops_neither_crash_nor_change_the_file(store_path):
    """Issue 7 item 3: before, the views were over read-only pages and an in-place op was SIGSEGV."""
    before = Path(store_path).read_bytes()
    out = run_python("""
        import sys
        import cedstore
        from cedstore.torch import epoch_tensors
        store = cedstore.open(sys.argv[1])
        values, indices, seeds = epoch_tensors(store, 1)
        values.mul_(2)
        indices.zero_()
        seeds[:] = 7
        print(seeds.tolist() == [7] * store.num_samples, int(indices.abs().sum()))
        again = epoch_tensors(store, 1)[2]  # a new view maps the file again: unchanged
        print(again.tolist() == store.dense(1, range(store.num_samples))[1].tolist())
    """, store_path)
    assert out.split() == ["True", "0", "True"]
    assert Path(store_path).read_bytes() == before
    cedstore.open(store_path).verify()


def test_dataset_items_and_batches(store_path):
    store = cedstore.open(store_path)
    data = TargetDataset(store_path, epoch=1)
    assert len(data) == 12 and data.store.path == store_path
    rows = data.__getitems__([4, 0, 4])
    batch = collate(rows)
    assert batch is rows.batch and collate(batch) is batch  # no copy
    targets, seeds = store.dense(1, [4, 0, 4])
    assert batch["ids"].tolist() == [4, 0, 4] and batch["ids"].dtype == torch.int64
    assert torch.equal(batch["targets"], torch.from_numpy(targets)) and torch.equal(batch["seeds"], torch.from_numpy(seeds))
    item = data[4]
    assert item["ids"].shape == () and item["targets"].shape == (9,) and int(item["seeds"]) == int(seeds[0])
    stacked = collate([data[4], data[0]])
    assert all(torch.equal(stacked[k], batch[k][:2]) for k in batch)
    assert data[np.array([0, 4])]["ids"].tolist() == [0, 4]
    with pytest.raises(IndexError, match=r"sample id 12 \(row 0\) out of range"):
        data[12]
    with pytest.raises(IndexError, match=r"epoch 5 out of range \[0, 2\)"):
        TargetDataset(store, epoch=5)


def _batches(loader) -> list[dict]:
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


def _assert_same(a: list[dict], b: list[dict]):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# Spawned workers each import torch (seconds of CPU), so spawn runs one; fork runs two.
@pytest.mark.parametrize("context, num_workers", [("fork", 2), ("spawn", 1)])
def test_dataloader_workers_match_single_process(store_path, context, num_workers):
    data = TargetDataset(cedstore.open(store_path), epoch=0, fill=-1.0)
    single = _batches(DataLoader(data, batch_size=5, collate_fn=collate))
    assert [b["ids"].tolist() for b in single] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    workers = _batches(DataLoader(data, batch_size=5, collate_fn=collate, num_workers=num_workers,
                                  multiprocessing_context=context))
    _assert_same(single, workers)
    # a BatchSampler as the sampler: one __getitem__(list of ids) per batch, default collation
    sampled = _batches(DataLoader(data, sampler=BatchSampler(SequentialSampler(data), 5, False), batch_size=None))
    _assert_same(single, sampled)


# --- sparse batches, losses without densifying, and the DataLoader contract (issue 8 items 3, 6)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cedstore import targets  # noqa: E402
from cedstore.torch import sparse_bce_with_logits, sparse_cross_entropy, sparse_kl_div  # noqa: E402
from test_targets import softmax_store  # noqa: E402

F = torch.nn.functional


def _sparse_case(seed: int, num_rows: int, num_classes: int, k: int, tail: str):
    """Random logits and a sparse target (top-k of a softmax, fp16-rounded) with its dense twin."""
    rng = np.random.default_rng(seed)
    teacher = torch.from_numpy(rng.normal(0, 3, (num_rows, num_classes))).softmax(1)
    top = teacher.topk(k, dim=1)
    values = top.values.half().float().numpy()
    values, fill = targets.apply_tail(values, num_classes, tail)
    indices = top.indices.numpy()
    dense = targets.densify(values, indices, fill, num_classes)
    logits = torch.from_numpy(rng.normal(0, 2, (num_rows, num_classes))).float()
    return logits, torch.from_numpy(values), torch.from_numpy(indices), torch.from_numpy(fill), torch.from_numpy(dense)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(2, 50), st.data(),
       st.sampled_from(["zero", "uniform", "renormalize"]))
def test_sparse_losses_match_dense_references(seed, num_rows, num_classes, data, tail):
    k = data.draw(st.integers(1, num_classes))
    logits, values, indices, fill, dense = _sparse_case(seed, num_rows, num_classes, k, tail)
    logits.requires_grad_(True)
    pairs = [
        (sparse_kl_div(logits, values, indices, fill), F.kl_div(F.log_softmax(logits, 1), dense, reduction="batchmean")),
        (sparse_cross_entropy(logits, values, indices, fill), F.cross_entropy(logits, dense)),
        (sparse_bce_with_logits(logits, values, indices, fill), F.binary_cross_entropy_with_logits(logits, dense)),
    ]
    for sparse, reference in pairs:
        torch.testing.assert_close(sparse, reference, rtol=1e-5, atol=1e-5)
        grad_sparse, = torch.autograd.grad(sparse, logits)
        grad_reference, = torch.autograd.grad(reference, logits)
        torch.testing.assert_close(grad_sparse, grad_reference, rtol=1e-5, atol=1e-6)


def test_sparse_dataset_batches_match_dense_ones(tmp_path):
    store, _ = softmax_store(tmp_path / "soft.ced")
    sparse = TargetDataset(store, tail="uniform", sparse=True)
    dense = TargetDataset(store, tail="uniform")
    batch = collate(sparse.__getitems__([3, 1]))
    assert list(batch) == ["ids", "values", "indices", "tail", "seeds"]
    assert batch["values"].shape == (2, 3) and batch["indices"].dtype == torch.int64 and batch["tail"].shape == (2,)
    rebuilt = targets.densify(batch["values"].numpy(), batch["indices"].numpy(), batch["tail"].numpy(), 9)
    np.testing.assert_array_equal(rebuilt, dense[[3, 1]]["targets"].numpy())
    logits = torch.randn(2, 9)
    torch.testing.assert_close(sparse_kl_div(logits, batch["values"], batch["indices"], batch["tail"]),
                               F.kl_div(F.log_softmax(logits, 1), dense[[3, 1]]["targets"], reduction="batchmean"))
    with pytest.raises(cedstore.InvalidInputError, match=r"fill = -1.0 applies to dense targets with tail 'zero' only"):
        TargetDataset(store, tail="uniform", fill=-1.0)


def test_sigmoid_store_refuses_a_softmax_tail(store_path):
    with pytest.raises(cedstore.InvalidInputError, match=r"tail policy 'renormalize' needs softmax probabilities"):
        TargetDataset(store_path, tail="renormalize", sparse=True)


@pytest.mark.parametrize("sparse", [False, True])
def test_default_collation_gives_the_same_batches(store_path, sparse):
    """Regression: without collate_fn=collate, torch's default collation failed with `KeyError: 0`."""
    data = TargetDataset(store_path, epoch=1, sparse=sparse)
    ours = _batches(DataLoader(data, batch_size=5, collate_fn=collate))
    default = _batches(DataLoader(data, batch_size=5))
    _assert_same(ours, default)
    single = _batches(DataLoader(data, batch_size=None))  # one item per step
    assert single[3]["ids"].shape == () and int(single[3]["ids"]) == 3


def test_slices_and_negative_indices(store_path):
    data = TargetDataset(store_path, epoch=0)
    _assert_same([data[-3:]], [data[[9, 10, 11]]])
    _assert_same([data[::5]], [data[np.array([0, 5, 10])]])
    assert int(data[-1]["ids"]) == 11 and torch.equal(data[-1]["targets"], data[11]["targets"])
    assert data[[-12, 0]]["ids"].tolist() == [0, 0]
    with pytest.raises(IndexError, match=r"sample id -13 \(row 1\) out of range \[-12, 12\)"):
        data[[0, -13]]
    with pytest.raises(IndexError, match=r"sample id 12 \(row 0\) out of range"):
        data[12]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pin_memory needs an accelerator")
@pytest.mark.parametrize("sparse", [False, True])
def test_pin_memory(store_path, sparse):
    data = TargetDataset(store_path, epoch=0, sparse=sparse)
    for collate_fn in (collate, None):
        batches = list(DataLoader(data, batch_size=5, collate_fn=collate_fn, pin_memory=True, num_workers=1))
        assert all(t.is_pinned() for b in batches for t in b.values())
        _assert_same([{k: v.clone() for k, v in b.items()} for b in batches],
                     _batches(DataLoader(data, batch_size=5, collate_fn=collate)))


@pytest.mark.parametrize("sparse", [False, True])
def test_pin_memory_reaches_every_tensor_of_a_batch(store_path, sparse, monkeypatch):
    """What DataLoader(pin_memory=True) does to our batches, without an accelerator: torch's
    pin_memory() walks the batch and calls Tensor.pin_memory on each tensor (stand-in: a copy)."""
    from torch.utils.data._utils.pin_memory import pin_memory
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **kw: pinned.append(t.clone()) or pinned[-1])
    data = TargetDataset(store_path, epoch=0, sparse=sparse)
    for collate_fn in (collate, None):
        batch = next(iter(DataLoader(data, batch_size=5, collate_fn=collate_fn)))
        pinned.clear()
        out = pin_memory(batch)
        assert type(out) is dict and out.keys() == batch.keys()
        assert [id(t) for t in out.values()] == [id(t) for t in pinned]  # every tensor, nothing else
        _assert_same([out], [batch])


def test_float64_and_bfloat16_teacher_outputs_are_cast_to_float32(tmp_path, teacher):
    """Issue 8 item 2: teachers emit float64 (numpy) and bfloat16 (torch); both used to be refused."""
    probs = teacher.probs[0, :4]
    bf16 = torch.from_numpy(probs).bfloat16()
    path = tmp_path / "cast.ced"
    with cedstore.create(path, num_classes=9, k=3, num_samples=4, num_epochs=3) as w:
        w.write(0, range(4), probs=probs.astype(np.float64), seeds=range(4))
        w.write(1, range(4), probs=bf16, seeds=range(4))
        w.write(2, range(4), values=bf16[:, :3].sort(descending=True).values, indices=[[0, 1, 2]] * 4, seeds=range(4))
        with pytest.raises(cedstore.InvalidInputError, match=r"epoch 0, sample 0 \(row 0\): dense\[0, 0\] = inf is infinite"):
            w.write(0, [0], probs=np.full((1, 9), 1e300), seeds=[0])
    store = cedstore.open(path)
    expected64 = np.zeros((4, 9), np.float32)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    np.put_along_axis(expected64, top, np.take_along_axis(probs, top, 1).astype(np.float16), 1)
    np.testing.assert_array_equal(store.dense(0, range(4))[0], expected64)
    as_float = bf16.float().numpy()
    top = np.argsort(-as_float, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(store.topk(1, range(4))[1], top)
    np.testing.assert_array_equal(store.topk(1, range(4))[0], np.take_along_axis(as_float, top, 1).astype(np.float16))
