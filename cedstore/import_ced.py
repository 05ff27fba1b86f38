"""Importing the teacher logits of the original CED code (RicherMans/CED, ``save_logits.py``).

The original writes, per augmentation epoch ``E`` (1-based) and rank ``R``, into one directory:

- ``logits_ep{E}_{R}.h5`` with three datasets, row ``i`` for the ``i``-th chunk the rank saw:
  ``topk_values`` float16 (n, k), the teacher's sigmoid outputs, descending (``torch.topk``);
  ``topk_indexes`` int16 (n, k), their class indices; ``seeds`` int32 (n,), the chunk's seed.
- ``logits_ep{E}_{R}.parquet`` with the columns ``filename`` (the file's base name, the key of
  its waveform in the HDF5 audio pack), ``start`` and ``end`` (float32 seconds), row ``i``
  describing row ``i`` of the ``.h5``.
- ``meta.pt``, a pickle of the augmentation objects and config. Never read here: unpickling
  runs code.

Every epoch holds the same chunks; ranks split the file list. The import makes one store with
``E`` epochs: store epoch ``e`` holds ``logits_ep{e+1}_*``; sample order is that of the first
epoch, ranks in order. The key of a chunk is ``{key_prefix}{filename}#{start}-{end}`` with the
sample range ``round(seconds * sample_rate)``, as ced_train keys its chunks and as the original
reads its audio (float32 seconds are exact to the sample for clips up to about 8 minutes).

The original's augmentation is recorded as its own recipe, ``{"name": "ced-original", ...}``:
its seeds seed torch's global CPU generator, which then draws the waveform shift and the two
spectrogram-mask parameters, so cedaug (ced_train's counter-based generator) cannot replay it.

Note the original's epoch cycling: training epoch ``t`` (1-based) reads stored epoch
``max(t % E, 1)``, so stored epoch ``E`` is never read and epoch 1 is read twice per cycle.
The import keeps all ``E`` epochs; ced_train cycles through them evenly.

Needs h5py and pyarrow: ``pip install 'cedstore[ced-original]'``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from cedstore.errors import InvalidInputError
from cedstore.store import Store
from cedstore.writer import create_replacing, label_space

__all__ = ["ORIGINAL_RECIPE_NAME", "import_ced_h5"]

ORIGINAL_RECIPE_NAME = "ced-original"
_FILE = re.compile(r"^logits_ep(\d+)_(\d+)\.h5$")
_DATASETS = {"topk_values": "f", "topk_indexes": "iu", "seeds": "iu"}
_COLUMNS = ("filename", "start", "end")
_BATCH = 1 << 16  # rows written per call: bounds memory
# The original's log-mel settings (its FrontEnd defaults), in ced_train's FrontendConfig
# fields. One difference stays: the original floors at max - 120 dB over the whole batch.
_ORIGINAL_FRONTEND = {"sample_rate": 16000, "n_fft": 512, "win_length": 512, "hop_length": 160,
                      "n_mels": 64, "f_min": 0.0, "f_max": 8000.0, "top_db": 120.0}


def _require(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except ImportError as e:
        raise ImportError(
            f"import_ced_h5 needs {name.split('.')[0]} ({e}); install the extra: "
            "pip install 'cedstore[ced-original]' (h5py, pyarrow)"
        ) from e


def _find_files(logits_dir: Path) -> list[list[Path]]:
    """The ``.h5`` files as ``[epoch][rank]``, epochs 1..E and ranks 0..R-1 all present."""
    if not logits_dir.is_dir():
        raise InvalidInputError(f"{logits_dir}: not a directory")
    found: dict[int, dict[int, Path]] = {}
    for path in logits_dir.iterdir():
        match = _FILE.match(path.name)
        if match:
            found.setdefault(int(match[1]), {})[int(match[2])] = path
    if not found:
        raise InvalidInputError(f"{logits_dir}: no logits_ep{{E}}_{{rank}}.h5 files")
    num_epochs = max(found)
    num_ranks = 1 + max(rank for ranks in found.values() for rank in ranks)
    files = []
    for epoch in range(1, num_epochs + 1):
        row = []
        for rank in range(num_ranks):
            path = found.get(epoch, {}).get(rank)
            if path is None:
                raise InvalidInputError(
                    f"{logits_dir}: logits_ep{epoch}_{rank}.h5 is missing: expected epochs "
                    f"1..{num_epochs} and ranks 0..{num_ranks - 1}, found epochs {sorted(found)}"
                )
            if not path.with_suffix(".parquet").is_file():
                raise InvalidInputError(f"{path}: its index {path.with_suffix('.parquet').name} is missing")
            row.append(path)
        files.append(row)
    return files


def _read_index(path: Path, key_prefix: str, sample_rate: int) -> list[str]:
    """The chunk keys of one ``.parquet`` index, in row order."""
    parquet = _require("pyarrow.parquet")
    table = parquet.read_table(path)
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise InvalidInputError(f"{path}: columns {missing} missing; expected {list(_COLUMNS)}, "
                                f"found {table.column_names}")
    names = table.column("filename").to_pylist()
    # float32 seconds widened to float64, then rounded half to even: as the original reads them.
    bounds = [np.round(table.column(c).to_numpy().astype(np.float64) * sample_rate).astype(np.int64)
              for c in ("start", "end")]
    return [f"{key_prefix}{name}#{start}-{end}" for name, start, end in zip(names, *bounds)]


def _read_logits(path: Path, num_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, indices, seeds) of one ``.h5``, checked against the index's row count."""
    h5py = _require("h5py")
    with h5py.File(path, "r") as f:
        arrays = []
        for name, kinds in _DATASETS.items():
            if name not in f:
                raise InvalidInputError(f"{path}: dataset {name!r} missing; expected {list(_DATASETS)}")
            a = f[name][()]
            if a.dtype.kind not in kinds:
                raise InvalidInputError(f"{path}: {name} has dtype {a.dtype}, expected "
                                        f"{'a float' if kinds == 'f' else 'an integer'} type")
            arrays.append(a)
    values, indices, seeds = arrays
    k = values.shape[1] if values.ndim == 2 else -1
    for name, a, shape in (("topk_values", values, (num_rows, k)), ("topk_indexes", indices, (num_rows, k)),
                           ("seeds", seeds, (num_rows,))):
        if a.shape != shape or k < 1:
            raise InvalidInputError(f"{path}: {name} has shape {list(a.shape)}, expected {list(shape)} "
                                    f"({num_rows} rows, as its .parquet index)")
    return values.astype(np.float16, copy=False), indices, seeds


def _metadata(logits_dir: Path, files: list[list[Path]], class_names: list[str] | None) -> dict:
    meta = {
        "activation": "sigmoid",
        "tail_policy": "zero",
        "teacher": {
            "source": "save_logits.py of the original CED code (github.com/RicherMans/CED)",
            "logits_dir": str(logits_dir),
            "files": [[p.name for p in row] for row in files],
            "note": "top-dB floor of the log-mel taken over each batch, not per example",
        },
        "augmentation": {
            "name": ORIGINAL_RECIPE_NAME,
            "version": 1,
            "replayable": False,
            "seeds": "torch.manual_seed(seed) then, on torch's global CPU generator, the "
                     "waveform shift and two torch.rand(1) draws for the time and frequency masks",
            "parameters": "in the original's meta.pt (a pickle: not read)",
            "store_epochs": f"store epoch e holds logits_ep{{e+1}}_*; the original never trains "
                            f"on its last stored epoch (ep{len(files)})",
        },
        "frontend": dict(_ORIGINAL_FRONTEND),
    }
    if class_names is not None:
        meta["label_space"] = label_space(list(class_names))
    return meta


def import_ced_h5(
    out_path: str | os.PathLike,
    logits_dir: str | os.PathLike,
    *,
    num_classes: int = 527,
    class_names: list[str] | None = None,
    key_prefix: str = "",
    sample_rate: int = 16000,
    overwrite: bool = False,
) -> Store:
    """Turn the original CED's logit files (all epochs and ranks) into one sealed store.

    Args:
        out_path: the store to write; it appears only when the import succeeds.
        logits_dir: the directory with ``logits_ep{E}_{rank}.h5`` and ``.parquet`` files.
        num_classes: the teacher's outputs (527 for AudioSet); the files do not record it.
        class_names: the class names, to record the store's ``label_space``.
        key_prefix: prepended to every key's file name, e.g. ``"audio/"`` when your TSV lists
            ``audio/x.wav`` where the original recorded ``x.wav``.
        sample_rate: the rate of the sample ranges in the keys (the original's: 16 kHz).
        overwrite: replace ``out_path`` if it exists.

    Returns:
        The new store, open for reading.

    Raises:
        InvalidInputError: a missing epoch, rank, index, dataset or column; shapes that do not
            match; a chunk key twice in one epoch; an epoch whose chunks differ from epoch 1's;
            invalid records (naming the file).
        FileExistsError: ``out_path`` exists and not ``overwrite``.
        ImportError: h5py or pyarrow is not installed.

    Example:
        >>> store = import_ced_h5("teacher.ced", "logits/ensemble5014/balanced/chunk_10")
        >>> store.num_epochs, store.k, store.keys[0]
        (40, 20, 'Y--PJHxphWEs.wav#0-160000')
    """
    _require("h5py")
    _require("pyarrow.parquet")
    out_path, logits_dir = os.fspath(out_path), Path(logits_dir)
    if os.path.exists(out_path) and not overwrite:
        raise FileExistsError(f"{out_path} exists; refusing to overwrite it")
    files = _find_files(logits_dir)
    first = [_read_index(p.with_suffix(".parquet"), key_prefix, sample_rate) for p in files[0]]
    keys = [key for rank_keys in first for key in rank_keys]
    ids: dict[str, int] = {}
    for rank_keys, path in zip(first, files[0]):
        for row, key in enumerate(rank_keys):
            if key in ids:
                raise InvalidInputError(f"{path.with_suffix('.parquet')} row {row}: chunk {key!r} "
                                        "appears twice in epoch 1 (a file listed twice in the TSV?)")
            ids[key] = len(ids)
    k = _num_values(files[0][0])
    with create_replacing(out_path, num_classes=num_classes, k=k, num_samples=len(keys), num_epochs=len(files),
                          keys=keys, metadata=_metadata(logits_dir, files, class_names)) as writer:
        for epoch, row in enumerate(files):
            seen = np.zeros(len(keys), bool)
            for path in row:
                _import_file(writer, epoch, path, ids, seen, key_prefix, sample_rate, k)
            unwritten = np.flatnonzero(~writer.written(epoch))
            if len(unwritten):
                raise InvalidInputError(
                    f"{logits_dir}: logits_ep{epoch + 1}_*.h5 have no record for {len(unwritten)} "
                    f"chunks of epoch 1, e.g. {[keys[i] for i in unwritten[:5]]}"
                )
    return Store(out_path)


def _num_values(path: Path) -> int:
    h5py = _require("h5py")
    with h5py.File(path, "r") as f:
        shape = f["topk_values"].shape if "topk_values" in f else ()
    if len(shape) != 2 or shape[1] < 1:
        raise InvalidInputError(f"{path}: expected a dataset topk_values of shape (n, k), found {list(shape)}")
    return shape[1]


def _import_file(writer, epoch: int, path: Path, ids: dict, seen: np.ndarray, key_prefix: str,
                 sample_rate: int, k: int) -> None:
    """Write one rank's records of ``epoch``; ``seen`` marks the samples already written."""
    index = path.with_suffix(".parquet")
    keys = _read_index(index, key_prefix, sample_rate)
    values, indices, seeds = _read_logits(path, len(keys))
    if values.shape[1] != k:
        raise InvalidInputError(f"{path}: k = {values.shape[1]}, expected {k} as in epoch 1")
    sample_ids = np.empty(len(keys), np.int64)
    for row, key in enumerate(keys):
        sample_id = ids.get(key)
        if sample_id is None:
            raise InvalidInputError(f"{index} row {row}: chunk {key!r} is not in epoch 1")
        if seen[sample_id]:
            raise InvalidInputError(f"{index} row {row}: chunk {key!r} appears twice in epoch {epoch + 1}")
        seen[sample_id] = True
        sample_ids[row] = sample_id
    for start in range(0, len(keys), _BATCH):
        part = slice(start, start + _BATCH)
        try:
            writer.write(epoch, sample_ids[part], values=values[part], indices=indices[part],
                         seeds=seeds[part])
        except (InvalidInputError, IndexError) as e:
            raise InvalidInputError(f"{path} rows {start}..{min(start + _BATCH, len(keys)) - 1}: {e}") from e
