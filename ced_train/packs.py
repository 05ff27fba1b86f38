"""The original CED's HDF5 audio packs as a source of audio (docs/INTEROP.md section 3).

The original's ``scripts/wavlist_to_hdf5.py`` writes packs ``X_{i}.h5`` holding one dataset per
audio file at the root, named by the file's base name (its full name with ``--fullname``),
whose data is the whole file: int16 (scaled by 1/32768 when read, as the original reads it) or
float; 1-D for mono, ``(samples, channels)`` with ``--stereo`` (averaged here). Packs store no
sample rate: the original assumes 16 kHz (:data:`PACK_RATE`). Its label TSV gains an
``hdf5path`` column naming each row's pack; :meth:`ced_train.data.AudioDataset.from_tsv` reads
a row from its pack when that column is present.

h5py is imported only when a pack is read (``pip install 'cedstore[ced-original]'``). Open
packs are kept per process (a DataLoader worker opens its own).

Example:
    >>> rate, frames = pack_info(Path("hdf5/train_0.h5"), "a.wav")   # doctest: +SKIP
    >>> wave = read_pack_frames(Path("hdf5/train_0.h5"), "a.wav", 0, 16000)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ced_train.errors import DataError

__all__ = ["PACK_RATE", "dataset_name", "pack_info", "read_pack_frames"]

PACK_RATE = 16000
_OPEN: dict[tuple[int, str], object] = {}  # (pid, pack path) -> h5py.File


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError("reading the original CED's HDF5 audio packs needs h5py: "
                        "pip install 'cedstore[ced-original]'") from None
    return h5py


def _open(pack: Path):
    key = (os.getpid(), str(pack))
    if key not in _OPEN:
        if not pack.is_file():
            raise DataError(f"{pack}: HDF5 pack not found")
        try:
            _OPEN[key] = _h5py().File(str(pack), "r")
        except OSError as e:
            raise DataError(f"{pack}: not a readable HDF5 file: {e}") from None
    return _OPEN[key]


def dataset_name(pack: Path, filename: str) -> str:
    """The dataset of ``filename`` in ``pack``: its full name if the pack has it (written with
    ``--fullname``), else its base name (the default).

    Raises:
        DataError: the pack has neither.
    """
    h5 = _open(pack)
    for name in (filename, Path(filename).name):
        if name in h5 and isinstance(h5[name], _h5py().Dataset):
            return name
    raise DataError(f"{pack}: no dataset {Path(filename).name!r} (nor {filename!r}) for {filename}")


def pack_info(pack: Path, name: str) -> tuple[int, int]:
    """``(rate, num_frames)`` of dataset ``name`` in ``pack``, without reading its samples.

    Raises:
        DataError: the dataset is not 1-D or 2-D integer or float audio, or is empty.
    """
    data = _open(pack)[name]
    if data.ndim not in (1, 2) or data.dtype.kind not in "iuf" or (data.ndim == 2 and not data.shape[1]):
        raise DataError(f"{pack}[{name!r}]: expected audio of shape (samples,) or (samples, channels) of integers "
                        f"or floats, found {data.dtype} {data.shape}")
    if not data.shape[0]:
        raise DataError(f"{pack}[{name!r}]: empty audio (0 samples)")
    return PACK_RATE, int(data.shape[0])


def read_pack_frames(pack: Path, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames ``[start, stop)`` of dataset ``name`` as float32 mono: int16 scaled by 1/32768 (as
    the original reads it), floats as stored, channels averaged. Only those frames are read.
    """
    data = _open(pack)[name]
    try:
        x = data[start:stop]
    except OSError as e:
        raise DataError(f"{pack}[{name!r}]: cannot read samples {start}-{stop}: {e}") from None
    if x.dtype.kind in "iu":
        x = x.astype(np.float32) / np.float32(32768.0)
    x = x.astype(np.float32, copy=False)
    return x.mean(axis=1, dtype=np.float32) if x.ndim == 2 else np.array(x, dtype=np.float32)
