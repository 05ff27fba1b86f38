"""The original's training step (``run.py`` ``_step``) and save-logits loop, per-batch work kept.

See the package docstring for provenance. Inputs come from memory here (the original reads HDF5
packs through a DataLoader); the per-item work of its ``SequentialHDF5DataLoader`` (a seed, the
seeded wave shift inside ``FixSeedContext``, two ``torch.rand`` mask values) is kept.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import torch

TIME_MASK, FREQ_MASK = 192, 24  # logitconfig spectransforms: TimeMasking(192), FrequencyMasking(24)


def mask_along_axis(spec: torch.Tensor, mask_param: int, axis: int, values: torch.Tensor,
                    min_values: torch.Tensor) -> torch.Tensor:
    """``augment.mask_along_axis`` with given per-example values in [0, 1): one band per row."""
    shape = spec.size()
    spec = spec.reshape([-1, *shape[-2:]])
    value = values.to(spec.device) * mask_param
    min_value = min_values.to(spec.device) * (spec.size(axis) - value)
    mask_start = min_value.long().squeeze()[..., None, None]
    mask_end = (min_value.long() + value.long()).squeeze()[..., None, None]
    mask = torch.arange(0, spec.shape[axis], device=spec.device, dtype=spec.dtype)
    mask = mask.expand(spec.shape[0], 1, -1) if axis == 2 else mask[:, None].expand(spec.shape[0], -1, 1)
    mask = (mask >= mask_start) & (mask < mask_end)
    if any((mask_end - mask_start >= mask_param).flatten()):
        raise ValueError("Number of columns to be masked should be less than mask_param")
    return spec.masked_fill(mask, 0.0).reshape(shape[:-2] + spec.shape[-2:])


def spectransforms(x: torch.Tensor, values: torch.Tensor, min_values: torch.Tensor) -> torch.Tensor:
    """The logitconfig's ``KwargsSequential(TimeMasking(192), FrequencyMasking(24))``."""
    x = mask_along_axis(x, TIME_MASK, 2, values, min_values)
    return mask_along_axis(x, FREQ_MASK, 1, values, min_values)


def mixup(x: torch.Tensor, lamb: torch.Tensor) -> torch.Tensor:
    """``utils.mixup``: each row mixed with the batch reversed."""
    x1, x2 = x.flip(0).movedim(0, -1), x.detach().movedim(0, -1)
    return (x1 * lamb + x2 * (1.0 - lamb)).movedim(-1, 0)


def mixup_criterion(pred, y, lamb, criterion) -> torch.Tensor:
    mixed = lamb * criterion(pred, y.flip(0)).mean(-1) + (1.0 - lamb) * criterion(pred, y).mean(-1)
    return mixed.mean()


def train_step(model, optimizer, criterion, wave, targets, values, min_values, mixup_alpha: float = 0.5) -> float:
    """``run.py`` ``_step`` in fp32 (``mode`` not amp): frontend, masks, mixup, forward, BCE, step."""
    model.train()
    with torch.enable_grad():
        optimizer.zero_grad(set_to_none=True)
        x = model.front_end(wave)
        x = spectransforms(x, values=torch.as_tensor(values), min_values=torch.as_tensor(min_values))
        lamb = None
        if mixup_alpha > 0:
            lamb = torch.tensor(np.random.beta(mixup_alpha, mixup_alpha, size=len(x)), dtype=torch.float32)
            x = mixup(x, lamb)
        pred = model.forward_spectrogram(x)
        loss = mixup_criterion(pred, targets, lamb, criterion) if lamb is not None else criterion(pred, targets).mean()
        loss.backward()
        optimizer.step()
        return loss.item()


class _FixSeedContext:
    """``utils.FixSeedContext``: seed torch, numpy and random; restore torch and numpy after."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self):
        self.np_state, self.torch_state = np.random.get_state(), torch.get_rng_state()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)

    def __exit__(self, *_):
        np.random.set_state(self.np_state)
        torch.set_rng_state(self.torch_state)


def _shift(chunk: torch.Tensor) -> torch.Tensor:
    """torch_audiomentations ``Shift(min_shift=-0.5, max_shift=0.5)`` (fraction of length, rollover)."""
    num_samples = chunk.shape[-1]
    shift = int(torch.randint(int(-0.5 * num_samples), int(0.5 * num_samples) + 1, (1,)))
    return torch.roll(chunk, shifts=shift, dims=-1)


def sequential_items(waves: np.ndarray, keys: list[str]):
    """``SequentialHDF5DataLoader.__iter__`` over in-memory 10 s clips (one chunk per clip)."""
    for wave, key in zip(waves, keys):
        chunk = torch.as_tensor(wave, dtype=torch.float32)
        seed = np.random.randint(0, 1 << 31)
        with _FixSeedContext(seed):
            chunk = _shift(chunk.view(1, 1, -1)).view(-1)
            value, min_value = torch.rand(1), torch.rand(1)
        yield chunk, 0.0, len(wave) / 16_000, key, seed, value, min_value


def batches(items, batch_size: int):
    """``DataLoader(batch_size, collate_fn=sequential_pad_logits)`` with ``num_workers=0``."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield _collate(batch)
            batch = []
    if batch:
        yield _collate(batch)


def _collate(items):
    datas, *other = zip(*items)
    return (torch.nn.utils.rnn.pad_sequence(list(datas), batch_first=True), *other)


def save_logits_epoch(model, loader, out: Path, topk: int = 20, batch_size: int = 128) -> int:
    """One epoch of ``_save_logits_parallel``: forward, topk, resizable HDF5 datasets, index lists.

    The original writes the index lists to a brotli parquet file at the end of the epoch (pandas);
    here they go to a JSON-free ``.npy`` of keys (the cost is negligible either way).
    Returns the number of records written.
    """
    indexed = defaultdict(list)
    c = 0
    with h5py.File(out, "w") as store:
        vals = store.create_dataset("topk_values", dtype="float16", maxshape=(None, topk), shape=(batch_size, topk))
        idxs = store.create_dataset("topk_indexes", dtype="int16", maxshape=(None, topk), shape=(batch_size, topk))
        seeds = store.create_dataset("seeds", dtype="int32", maxshape=(None,), shape=(batch_size,))
        for data, starts, ends, fnames, seed, specaug_vals, specaug_minvals in loader:
            with torch.inference_mode():
                data = model.front_end(data)
                data = spectransforms(data, values=torch.stack(specaug_vals), min_values=torch.stack(specaug_minvals))
                y = model.forward_spectrogram(data).to("cpu")
                y_vals, y_idxs = y.topk(topk)
                if c >= vals.shape[0]:
                    vals.resize((c + data.shape[0], topk))
                    idxs.resize((c + data.shape[0], topk))
                    seeds.resize((c + data.shape[0],))
                vals[c : c + y.shape[0], :] = y_vals.numpy()
                idxs[c : c + y.shape[0], :] = y_idxs.numpy()
                seeds[c : c + y.shape[0]] = seed
                indexed["filename"].extend(fnames)
                indexed["start"].extend(starts)
                indexed["end"].extend(ends)
                c += y.shape[0]
        vals.resize((c, topk))
        idxs.resize((c, topk))
        seeds.resize((c,))
    np.save(out.with_suffix(".keys.npy"), np.asarray(indexed["filename"]))
    return c
