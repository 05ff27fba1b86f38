"""Epochs reach DataLoader workers: EpochSampler's indices carry the epoch (issue 8 item 1)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler  # noqa: E402

from cedstore.torch import EpochIndex, EpochSampler, TargetDataset, collate  # noqa: E402
from cedstore_helpers import create_store, make_teacher  # noqa: E402

NUM_STORED_EPOCHS = 3


@pytest.fixture
def three_epochs(tmp_path):
    teacher = make_teacher(num_epochs=NUM_STORED_EPOCHS, num_samples=10)
    return create_store(tmp_path / "three.ced", teacher), teacher


def _epoch_seeds(loader, sampler, epochs) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    seen = {}
    for epoch in epochs:
        sampler.set_epoch(epoch)
        seen[epoch] = [(b["ids"].numpy().copy(), b["seeds"].numpy().copy()) for b in loader]
    return seen


def test_setting_epoch_on_the_dataset_is_refused_naming_the_fix(three_epochs):
    """Regression: `data.epoch = e` used to be accepted, and with persistent_workers=True every
    later epoch silently came from the epoch the workers were started with."""
    data = TargetDataset(three_epochs[0], epoch=0)
    with pytest.raises(AttributeError, match=r"cannot be changed after construction: .*EpochSampler.*set_epoch"):
        data.epoch = 1
    assert data.epoch == 0


# Spawned workers each import torch (seconds of CPU), so spawn runs one; fork runs two.
@pytest.mark.parametrize("context, num_workers, persistent", [
    (None, 0, False), ("fork", 2, True), ("fork", 2, False), ("spawn", 1, True),
])
def test_epochs_1_2_3_read_stored_epoch_e_mod_E_in_workers(three_epochs, context, num_workers, persistent):
    path, teacher = three_epochs
    data = TargetDataset(path)
    sampler = EpochSampler(RandomSampler(data, generator=torch.Generator().manual_seed(0)))
    loader = DataLoader(data, batch_size=4, sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        persistent_workers=persistent, multiprocessing_context=context)
    seen = _epoch_seeds(loader, sampler, [1, 2, 3])
    for epoch, batches in seen.items():
        ids = np.concatenate([ids for ids, _ in batches])
        assert sorted(ids.tolist()) == list(range(10)), epoch
        for ids, seeds in batches:
            np.testing.assert_array_equal(seeds, teacher.seeds[epoch % NUM_STORED_EPOCHS, ids], err_msg=f"epoch {epoch}")


def test_batch_sampler_and_distributed_set_epoch_pass_through(three_epochs):
    path, teacher = three_epochs
    data = TargetDataset(path)
    batches = EpochSampler(BatchSampler(SequentialSampler(data), 4, drop_last=False), epoch=5)
    assert list(batches)[0] == [EpochIndex(5, i) for i in range(4)] and len(batches) == 3
    loader = DataLoader(data, batch_sampler=batches, collate_fn=collate, num_workers=1,
                        persistent_workers=True, multiprocessing_context="fork")
    for epoch in (2, 4):
        batches.set_epoch(epoch)
        seeds = torch.cat([b["seeds"] for b in loader]).numpy()
        np.testing.assert_array_equal(seeds, teacher.seeds[epoch % NUM_STORED_EPOCHS])

    class Reshuffles(SequentialSampler):  # stands in for DistributedSampler
        def set_epoch(self, epoch):
            self.inner_epoch = epoch
    inner = Reshuffles(data)
    EpochSampler(BatchSampler(inner, 4, False)).set_epoch(7)
    assert inner.inner_epoch == 7
    with pytest.raises(ValueError, match="epoch must be >= 0, found -1"):
        batches.set_epoch(-1)


def test_a_batch_spanning_epochs_keeps_its_order(three_epochs):
    path, teacher = three_epochs
    data = TargetDataset(path)
    batch = data[[EpochIndex(1, 3), EpochIndex(0, 3), EpochIndex(4, 9), EpochIndex(2, 0)]]
    assert batch["ids"].tolist() == [3, 3, 9, 0]
    assert batch["seeds"].tolist() == [teacher.seeds[1, 3], teacher.seeds[0, 3], teacher.seeds[1, 9], teacher.seeds[2, 0]]
    assert data[EpochIndex(5, 2)]["seeds"] == teacher.seeds[2, 2]
    with pytest.raises(IndexError, match="training epoch -1 is negative"):
        data[[EpochIndex(-1, 0)]]
