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
