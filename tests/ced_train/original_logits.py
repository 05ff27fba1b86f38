"""A store imported from the original CED's logit files (cedstore.import_ced), for the trainer's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from train_helpers import CLIP_SAMPLES, NUM_CLASSES

h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install -e '.[ced-original]')")
pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install -e '.[ced-original]')")
import pyarrow.parquet as pq  # noqa: E402

from cedstore.import_ced import import_ced_h5  # noqa: E402


def imported_store(folder: Path, file_names: list[str], num_epochs: int = 2, k: int = 3) -> Path:
    """``logits_ep{E}_0.h5`` + ``.parquet`` as save_logits.py writes them (one rank, one 0.5 s
    chunk per file), imported into ``folder / "imported.ced"``."""
    logits = folder / "logits"
    logits.mkdir(parents=True)
    rng = np.random.default_rng(0)
    seconds = CLIP_SAMPLES / 16000
    for epoch in range(1, num_epochs + 1):
        probs = rng.uniform(0, 1, (len(file_names), NUM_CLASSES))
        order = np.argsort(-probs, axis=1)[:, :k]
        with h5py.File(logits / f"logits_ep{epoch}_0.h5", "w") as f:
            f["topk_values"] = np.take_along_axis(probs, order, axis=1).astype(np.float16)
            f["topk_indexes"] = order.astype(np.int16)
            f["seeds"] = rng.integers(0, 1 << 31, len(file_names)).astype(np.int32)
        table = pa.table({"filename": file_names, "start": pa.array([0.0] * len(file_names), pa.float32()),
                          "end": pa.array([seconds] * len(file_names), pa.float32())})
        pq.write_table(table, logits / f"logits_ep{epoch}_0.parquet")
    import_ced_h5(folder / "imported.ced", logits, num_classes=NUM_CLASSES)
    return folder / "imported.ced"
