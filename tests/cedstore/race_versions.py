"""Two versions of every record of a 256-sample, C=32, K=20 store for the rewrite race test:
the same first class index, everything else different."""

import numpy as np


def version(v: int, num_samples: int) -> dict:
    """write() arguments (values=, indices=, seeds=) of version v (0 or 1) of every record."""
    ids = np.arange(num_samples)
    rest = np.arange(1, 20) if v == 0 else np.arange(31, 12, -1)  # 19 other classes
    indices = np.concatenate([np.zeros((num_samples, 1), np.int64), np.tile(rest, (num_samples, 1))], axis=1)
    values = np.linspace(1.0, 0.5 if v == 0 else 0.25, 20).astype(np.float16).astype(np.float32)  # stored exactly
    values = values[None].repeat(num_samples, 0)
    seeds = ids * 2 + v
    return {"values": values, "indices": indices, "seeds": seeds}
