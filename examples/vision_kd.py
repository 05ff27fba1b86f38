"""Vision-style softmax distillation with cedstore: several teachers, E augmented epochs, your
own augmentation replayed from the stored seeds, a student trained through a DataLoader with
worker processes.

    python examples/vision_kd.py            # seconds on a CPU; writes into a temporary folder

1. Extraction: for each of E epochs draw one seed per image, augment the images from their
   seeds, average the teachers' softmax (at temperature T) and write the top-K with the seeds.
2. Training: EpochSampler tells the DataLoader workers the epoch; TargetDataset reads stored
   epoch ``epoch % E`` with the ``uniform`` tail (the remaining mass spread over the other
   classes, rows sum to 1); the student sees each image augmented from the same seed the
   teachers saw ("consistent teaching").

Synthetic data and random teachers keep it self-contained; replace them with yours.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

import cedstore
from cedstore.torch import EpochSampler, TargetDataset, collate

NUM_IMAGES, NUM_CLASSES, K, STORED_EPOCHS, TEMPERATURE = 256, 100, 10, 4, 2.0
SHAPE = (3, 12, 12)


def _mix32(x: np.ndarray) -> np.ndarray:
    """A 32-bit integer hash (lowbias32): the counter-based generator behind the augmentation."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _uniform(seeds: np.ndarray, counter: int) -> np.ndarray:
    """float64 [B] in [0, 1): draw number `counter` of each seed; the same on every machine."""
    return _mix32(seeds.astype(np.int64).astype(np.uint32) ^ _mix32(np.array([counter]))) / 2.0**32


def augment(images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Shift by up to 2 pixels, flip, scale brightness; every parameter from the row's seed.

    images float32 [B, 3, H, W], seeds int32 [B] -> float32 [B, 3, H, W].
    """
    _, _, height, width = images.shape
    dy = np.floor(_uniform(seeds, 0) * 5).astype(np.int64) - 2
    dx = np.floor(_uniform(seeds, 1) * 5).astype(np.int64) - 2
    flip = _uniform(seeds, 2) < 0.5
    brightness = (0.8 + 0.4 * _uniform(seeds, 3)).astype(np.float32)
    rows = (np.arange(height)[None, :] - dy[:, None]) % height  # (B, H)
    cols = (np.arange(width)[None, :] - dx[:, None]) % width  # (B, W)
    out = np.take_along_axis(images, rows[:, None, :, None], axis=2)
    out = np.take_along_axis(out, cols[:, None, None, :], axis=3)
    out = np.where(flip[:, None, None, None], out[..., ::-1], out)
    return np.ascontiguousarray(out * brightness[:, None, None, None])


def make_teachers(num_teachers: int = 3) -> list[torch.nn.Module]:
    teachers = []
    for t in range(num_teachers):
        torch.manual_seed(100 + t)
        teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(SHAPE)), 64),
                                      torch.nn.GELU(), torch.nn.Linear(64, NUM_CLASSES)).eval()
        with torch.no_grad():
            teacher[-1].weight.mul_(30)  # confident teachers: logits of a few units, not near-uniform
        teachers.append(teacher)
    return teachers


@torch.no_grad()
def ensemble_probs(teachers, images: np.ndarray) -> np.ndarray:
    """The teachers' mean softmax at TEMPERATURE, float64 [B, C] (Writer.write casts it)."""
    x = torch.from_numpy(images)
    return torch.stack([F.softmax(t(x) / TEMPERATURE, dim=1) for t in teachers]).mean(0).double().numpy()


def extract(path: Path, images: np.ndarray, teachers) -> None:
    metadata = {"activation": "softmax", "tail_policy": "uniform", "temperature": TEMPERATURE,
                "teacher": [f"random-mlp-{t}" for t in range(len(teachers))],
                "augmentation": {"name": "example-shift-flip-brightness", "version": 1}}
    with cedstore.create(path, num_classes=NUM_CLASSES, k=K, num_samples=NUM_IMAGES, num_epochs=STORED_EPOCHS,
                         keys=[f"image{i:05d}.png" for i in range(NUM_IMAGES)], metadata=metadata) as writer:
        for epoch in range(STORED_EPOCHS):
            seeds = np.random.default_rng(epoch).integers(-(2**31), 2**31, NUM_IMAGES).astype(np.int32)
            for start in range(0, NUM_IMAGES, 64):
                ids = np.arange(start, min(start + 64, NUM_IMAGES))
                writer.write(epoch, ids, probs=ensemble_probs(teachers, augment(images[ids], seeds[ids])), seeds=seeds[ids])


class StudentData(Dataset):
    """Images augmented from the stored seeds, with their targets: one decode per batch.

    A batch: {"ids": [B], "targets": [B, C], "seeds": [B], "images": [B, 3, H, W]}.
    """

    def __init__(self, store_path: Path, images: np.ndarray):
        self.targets = TargetDataset(store_path, tail="uniform")
        self.images = images

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        batch = collate(self.targets.__getitems__(indices))
        ids, seeds = batch["ids"].numpy(), batch["seeds"].numpy()
        batch["images"] = torch.from_numpy(augment(self.images[ids], seeds))
        return batch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the store (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=2 * STORED_EPOCHS, help="training epochs (cycle the stored ones)")
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        images = np.random.default_rng(7).normal(size=(NUM_IMAGES, *SHAPE)).astype(np.float32)
        teachers = make_teachers()
        path = out / "vision.ced"
        extract(path, images, teachers)

        # The seeds replay the augmentation: the teachers on the replayed images give the stored top-K.
        store = cedstore.open(path)
        ids = np.arange(32)
        _, stored_indices, seeds = store.topk(3, ids)
        replayed = np.argsort(-ensemble_probs(teachers, augment(images[ids], seeds)), axis=1, kind="stable")[:, :K]
        replay_matches = bool((replayed == stored_indices).all())
        print(f"replayed augmentation reproduces the stored top-{K}: {replay_matches}")

        data = StudentData(path, images)
        sampler = EpochSampler(RandomSampler(data, generator=torch.Generator().manual_seed(0)))
        loader = DataLoader(data, batch_size=32, sampler=sampler, collate_fn=collate, num_workers=args.num_workers,
                            persistent_workers=args.num_workers > 0)
        torch.manual_seed(0)
        student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(SHAPE)), 128), torch.nn.GELU(),
                                      torch.nn.Linear(128, NUM_CLASSES))
        optimizer = torch.optim.SGD(student.parameters(), lr=0.2, momentum=0.9)  # AdamW would import torch._dynamo: seconds
        losses = []
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)  # the workers read stored epoch `epoch % STORED_EPOCHS`
            total = 0.0
            for batch in loader:
                log_q = F.log_softmax(student(batch["images"]) / TEMPERATURE, dim=1)
                loss = F.kl_div(log_q, batch["targets"], reduction="batchmean") * TEMPERATURE**2
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch["ids"])
            losses.append(total / len(data))
            print(f"epoch {epoch} (stored epoch {epoch % STORED_EPOCHS}): KL {losses[-1]:.4f}")
        # On the augmented images of a stored epoch (what it was taught on), the student's top-1
        # against the teachers' stored top-1.
        _, stored_indices, seeds = store.topk(0, np.arange(NUM_IMAGES))
        with torch.no_grad():
            student_top1 = student(torch.from_numpy(augment(images, seeds))).argmax(1).numpy()
        agreement = float((student_top1 == stored_indices[:, 0]).mean())
        print(f"student's top-1 is the teachers' on {agreement:.0%} of stored epoch 0's augmented images")
        return {"replay_matches": replay_matches, "losses": losses, "agreement": agreement}


if __name__ == "__main__":
    main()
