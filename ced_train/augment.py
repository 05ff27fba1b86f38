"""Augmentation recipe ``cedaug`` (v1, v2) and the consistent input that teacher and student share.

Consistent teaching needs the student to see exactly what the teacher saw. The teacher's
augmentation is therefore a pure function of (recipe, seed, input shape): every parameter is an
integer drawn from the seed with SplitMix64 (``ced_train.rng``) in uint64 arithmetic, so it is
the same on any machine, device, process or library version, and the tensor ops (a circular
shift and two masks) are exact. docs/AUGMENTATION.md is the normative specification, with test
vectors.

:func:`augmented_logmel` (and :func:`augment_waves` for a teacher that takes waveforms) is the
one place that turns a batch of waves and seeds into that input: extraction and the store check
feed the teacher with it, training feeds the student with it.

Student-side mixup is not part of the stored recipe: see ``ced_train.mixup``.

Example:
    >>> x = augmented_logmel(waves, seeds, Recipe(), log_mel_frontend(), lengths)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from ced_train.errors import CedTrainError
from ced_train.rng import draw, uniform_int
from ced_train.sampling import length_groups

__all__ = ["BLANK_WARN_SHARE", "RECIPE_NAME", "RECIPE_VERSION", "RECIPE_VERSIONS", "Recipe", "augment_waves",
           "augmented_logmel", "blanked_share"]

RECIPE_NAME = "cedaug"
RECIPE_VERSION = 1  # Recipe()'s version: the paper's mask bounds, whatever the clip length
RECIPE_VERSIONS = (1, 2)  # 2 adds time_mask_max_percent: the time mask scales with the clip
DEFAULT_TIME_MASK_PERCENT = 20  # v2's default: 10 s clips (1001 frames) keep v1's bound of 192
# Extraction warns when more than this share of a store's records has every frame time-masked.
BLANK_WARN_SHARE = 0.01

# Draw j of a seed's stream feeds one parameter; the order is part of the recipe version.
DRAW_SHIFT, DRAW_TIME_WIDTH, DRAW_TIME_START, DRAW_FREQ_WIDTH, DRAW_FREQ_START = range(5)


# ---- inputs --------------------------------------------------------------------------------


def _seeds_u32(seeds) -> np.ndarray:
    """Seeds as stored (int32; or uint32, python ints, tensors) -> their 32 bits as uint64 [B]."""
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.detach().cpu().numpy()
    arr = np.asarray(seeds)
    if arr.dtype.kind not in "iu" or arr.ndim > 1:
        raise ValueError(f"seeds: expected integers of shape [B], got {arr.dtype} {arr.shape}")
    arr = np.atleast_1d(arr)
    if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**32):
        raise ValueError(
            f"seeds: expected int32 or uint32 values, got range [{arr.min()}, {arr.max()}]"
        )
    return (arr.astype(np.int64) & 0xFFFFFFFF).astype(np.uint64)


def _sizes(value, name: str, batch: int, upper: int = 2**32 - 1) -> np.ndarray:
    """An int or [B] ints in [1, upper] -> uint64 [B]."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or arr.ndim > 1 or (arr.ndim == 1 and len(arr) != batch):
        raise ValueError(
            f"{name}: expected an int or {batch} ints (one per example), got {arr.dtype} "
            f"{arr.shape}"
        )
    if arr.size and (arr.min() < 1 or arr.max() > upper):
        raise ValueError(
            f"{name}: expected values in [1, {upper}], got range [{arr.min()}, {arr.max()}]"
        )
    return np.broadcast_to(arr, (batch,)).astype(np.uint64)


def _check_name_version(name, version) -> None:
    if name != RECIPE_NAME or isinstance(version, bool) or version not in RECIPE_VERSIONS:
        raise ValueError(
            f"augmentation recipe {name!r} version {version!r} is not supported: "
            f"this code implements {RECIPE_NAME!r} versions {' and '.join(map(str, RECIPE_VERSIONS))}"
        )


# ---- recipe --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """The stored augmentation recipe: circular shift of the waveform, then one time mask and
    one frequency mask on the dB spectrogram (before the model's normalisation).

    Args:
        name: must be ``"cedaug"``.
        version: ``1`` (the paper's fixed bounds) or ``2`` (the time-mask bound scales with the
            clip: ``time_mask_max_percent``); a stored recipe keeps its version, so it replays
            exactly.
        time_mask_max: time-mask width is drawn in [0, time_mask_max) frames (v2: at most).
        time_mask_max_percent: v2 only (default 20): the width is drawn in
            [0, max(1, min(time_mask_max, percent · T div 100))) for a clip of T frames, so
            short clips are never blanked whole; 10 s clips keep v1's bound.
        freq_mask_max: frequency-mask width is drawn in [0, freq_mask_max) mel bins.
        mask_value: value written into masked spectrogram cells.

    Raises:
        ValueError: for another name or version, or an out-of-range field.

    Example:
        >>> recipe = Recipe()
        >>> Recipe.from_json(recipe.to_json()) == recipe
        True
        >>> recipe.params([7], num_samples=160_000, num_frames=1001, num_mels=64)["freq_width"]
        array([13])
    """

    name: str = RECIPE_NAME
    version: int = RECIPE_VERSION
    time_mask_max: int = 192
    freq_mask_max: int = 24
    mask_value: float = 0.0
    time_mask_max_percent: int | None = None

    def __post_init__(self) -> None:
        _check_name_version(self.name, self.version)
        percent = self.time_mask_max_percent
        if self.version == 1 and percent is not None:
            raise CedTrainError(f"Recipe.time_mask_max_percent needs version 2, got version 1 with {percent!r}")
        if self.version == 2:
            percent = DEFAULT_TIME_MASK_PERCENT if percent is None else percent
            if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
                raise CedTrainError(f"Recipe.time_mask_max_percent: expected an int in [1, 100], got {percent!r}")
            object.__setattr__(self, "time_mask_max_percent", percent)
        for field in ("time_mask_max", "freq_mask_max"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**32:
                raise CedTrainError(f"Recipe.{field}: expected an int in [1, 2**32), got {value!r}")
        value = self.mask_value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isinf(value) \
                or math.isnan(value):
            raise CedTrainError(f"Recipe.mask_value: expected a finite number, got {value!r}")
        object.__setattr__(self, "mask_value", float(value))  # so that 0 and 0.0 compare equal

    def to_dict(self) -> dict:
        """Return the recipe as a plain dict (the store's ``augmentation`` metadata entry).

        Example:
            >>> Recipe().to_dict()["name"]
            'cedaug'
        """
        data = asdict(self)
        if self.version == 1:  # v1's JSON is what v1 stores hold, field for field
            del data["time_mask_max_percent"]
        return dict(sorted(data.items()))  # sorted: the stored JSON bytes never vary

    @classmethod
    def from_dict(cls, data) -> Recipe:
        """Build a recipe from :meth:`to_dict` output (e.g. a store's metadata).

        Raises:
            ValueError: not a dict, an unknown name/version, or missing/unknown fields.

        Example:
            >>> Recipe.from_dict(Recipe().to_dict()) == Recipe()
            True
        """
        if not isinstance(data, dict):
            raise CedTrainError(f"augmentation recipe: expected a JSON object, got {data!r}")
        _check_name_version(data.get("name"), data.get("version"))
        expected = {f.name for f in fields(cls)} - ({"time_mask_max_percent"} if data["version"] == 1 else set())
        if set(data) != expected:
            raise CedTrainError(
                f"augmentation recipe {RECIPE_NAME!r} version {data['version']}: expected fields "
                f"{sorted(expected)}, got {sorted(data)}"
            )
        return cls(**data)

    def to_json(self) -> str:
        """Return :meth:`to_dict` as a JSON object string (sorted keys), e.g. for a log line."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """Parse :meth:`to_json` output.

        Raises:
            ValueError: for invalid JSON, an unknown name/version, or missing/unknown fields.

        Example:
            >>> Recipe.from_json('{"name": "cedaug", "version": 3}')  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ValueError: augmentation recipe 'cedaug' version 3 is not supported: ...
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CedTrainError(
                f"augmentation recipe: expected a JSON object, got {text!r}: {err}"
            ) from err
        if not isinstance(data, dict):
            raise CedTrainError(f"augmentation recipe: expected a JSON object, got {text!r}")
        return cls.from_dict(data)

    def params(self, seeds, num_samples, num_frames, num_mels) -> dict:
        """Return each example's integer parameters for the given input sizes.

        Args:
            seeds: [B] integers as stored (int32, read as their uint32 bits) or uint32 values;
                a numpy array, a list, a python int or a torch tensor.
            num_samples: waveform length L, an int or [B] ints (one per example).
            num_frames: spectrogram frames T, an int or [B] ints.
            num_mels: spectrogram mel bins F, an int or [B] ints.

        Returns:
            ``{"shift", "time_start", "time_width", "freq_start", "freq_width"}`` -> int64 [B].
            ``shift`` is in [-(L // 2), L // 2]; masks cover ``[start, start + width)``.

        Raises:
            ValueError: for bad seeds or sizes outside [1, 2**32).

        Example:
            >>> Recipe().params(np.array([0, -1], np.int32), 160_000, 1001, 64)["shift"]
            array([61330, -7692])
        """
        seeds = _seeds_u32(seeds)
        return {"shift": self._shift(seeds, _sizes(num_samples, "num_samples", len(seeds))),
                **self._masks(seeds, num_frames, num_mels)}

    def apply_wave(self, waves: torch.Tensor, seeds, num_samples=None) -> torch.Tensor:
        """Circularly shift each waveform by its seed's ``shift`` (as ``torch.roll``).

        Args:
            waves: [B, S] on any device.
            seeds: [B] seeds, as in :meth:`params`.
            num_samples: None (every row is S samples long), or [B] lengths L_b <= S of
                zero-padded rows: row b is shifted within its first L_b samples, the padding
                stays, and the shift is the one drawn for L_b.

        Returns:
            New tensor [B, S] with ``out[b, t] = waves[b, (t - shift[b]) mod L_b]`` for t < L_b.

        Raises:
            ValueError: for a bad shape, a seed count other than B, or lengths outside [1, S].

        Example:
            >>> Recipe().apply_wave(torch.arange(6.0).view(1, 6), [6])  # shift 2 for L = 6
            tensor([[4., 5., 0., 1., 2., 3.]])
        """
        if waves.dim() != 2:
            raise ValueError(f"expected waves [B, S], got shape {tuple(waves.shape)}")
        batch, size = waves.shape
        seeds = self._batch_seeds(seeds, batch)
        lengths = _sizes(size if num_samples is None else num_samples, "num_samples", batch, size)
        shift = self._shift(seeds, lengths) % lengths.astype(np.int64)
        dev = waves.device
        lengths = torch.from_numpy(lengths.astype(np.int64)).to(dev)[:, None]
        shift = torch.from_numpy(shift).to(dev)[:, None]
        t = torch.arange(size, device=dev)
        index = torch.where(t < lengths, (t - shift).remainder(lengths), t)  # (B, S)
        return waves.gather(1, index)

    def apply_spec(self, specs: torch.Tensor, seeds, num_frames=None) -> torch.Tensor:
        """Fill each example's time mask and frequency mask with ``mask_value``.

        Args:
            specs: [B, F, T] dB spectrograms (before normalisation) on any device.
            seeds: [B] seeds, as in :meth:`params`.
            num_frames: None (every row has T frames), or [B] frame counts T_b <= T of padded
                rows: row b's masks are drawn for T_b frames and frames past T_b stay as
                they are.

        Returns:
            New tensor [B, F, T].

        Raises:
            ValueError: for a bad shape, a seed count other than B, or counts outside [1, T].

        Example:
            >>> recipe = Recipe(time_mask_max=3, freq_mask_max=2, mask_value=-1.0)
            >>> recipe.apply_spec(torch.zeros(1, 4, 6), [2])  # frames 2-3, bin 1
            tensor([[[ 0.,  0., -1., -1.,  0.,  0.],
                     [-1., -1., -1., -1., -1., -1.],
                     [ 0.,  0., -1., -1.,  0.,  0.],
                     [ 0.,  0., -1., -1.,  0.,  0.]]])
        """
        if specs.dim() != 3:
            raise ValueError(f"expected specs [B, F, T], got shape {tuple(specs.shape)}")
        batch, num_mels, size = specs.shape
        seeds = self._batch_seeds(seeds, batch)
        frames = _sizes(size if num_frames is None else num_frames, "num_frames", batch, size)
        p = self._masks(seeds, frames, num_mels)
        dev = specs.device
        ts, tw, fs, fw = (torch.from_numpy(p[k]).to(dev)[:, None]
                          for k in ("time_start", "time_width", "freq_start", "freq_width"))
        t = torch.arange(size, device=dev)
        f = torch.arange(num_mels, device=dev)
        time_mask = (t >= ts) & (t < ts + tw)  # (B, T)
        freq_mask = (f >= fs) & (f < fs + fw)  # (B, F)
        inside = t < torch.from_numpy(frames.astype(np.int64)).to(dev)[:, None]  # (B, T)
        mask = (time_mask[:, None, :] | freq_mask[:, :, None]) & inside[:, None, :]
        return specs.masked_fill(mask, self.mask_value)

    @staticmethod
    def _batch_seeds(seeds, batch: int) -> np.ndarray:
        seeds = _seeds_u32(seeds)
        if len(seeds) != batch:
            raise ValueError(f"expected {batch} seeds (one per example), got {len(seeds)}")
        return seeds

    @staticmethod
    def _shift(seeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        half = lengths // np.uint64(2)
        draws = uniform_int(draw(seeds, DRAW_SHIFT), np.uint64(2) * half + np.uint64(1))
        return draws.astype(np.int64) - half.astype(np.int64)

    def _masks(self, seeds: np.ndarray, num_frames, num_mels) -> dict:
        out = {}
        for axis, size, size_name, width_max, draw_width, draw_start in (
            ("time", num_frames, "num_frames", self.time_mask_max, DRAW_TIME_WIDTH,
             DRAW_TIME_START),
            ("freq", num_mels, "num_mels", self.freq_mask_max, DRAW_FREQ_WIDTH, DRAW_FREQ_START),
        ):
            size = _sizes(size, size_name, len(seeds))
            if axis == "time" and self.time_mask_max_percent is not None:  # v2
                scaled = np.uint64(self.time_mask_max_percent) * size // np.uint64(100)
                width_max = np.maximum(np.uint64(1), np.minimum(np.uint64(width_max), scaled))
            width = np.minimum(uniform_int(draw(seeds, draw_width), width_max), size)
            start = uniform_int(draw(seeds, draw_start), size - width + np.uint64(1))
            out[f"{axis}_start"] = start.astype(np.int64)
            out[f"{axis}_width"] = width.astype(np.int64)
        return out


def blanked_share(recipe: Recipe, seeds, num_frames) -> float:
    """The share of records whose time mask covers every frame (their input carries nothing
    that depends on the clip).

    Args:
        recipe: the augmentation recipe.
        seeds: [N] seeds of the records.
        num_frames: an int or [N] frame counts of the records' clips.

    Returns:
        A share in [0, 1] (0 for no records).

    Example:
        >>> blanked_share(Recipe(), seed_for(0, 0, np.arange(1000)), 101)  # 1 s clips  # doctest: +SKIP
        0.48
    """
    seeds = np.atleast_1d(np.asarray(seeds))
    if not len(seeds):
        return 0.0
    p = recipe.params(seeds, 1, num_frames, 1)
    frames = np.broadcast_to(np.asarray(num_frames, dtype=np.int64), seeds.shape)
    return float(np.mean(p["time_width"] >= frames))


# ---- the consistent input: augmentation at each chunk's own length -----------------------


def augment_waves(recipe: Recipe, waves: torch.Tensor, seeds, lengths=None) -> torch.Tensor:
    """``recipe.apply_wave`` on each row's first ``lengths[b]`` samples (the padding stays).

    Args:
        recipe: the augmentation recipe.
        waves: (B, S) zero-padded batch.
        seeds: (B,) int32 seeds.
        lengths: (B,) samples of each row before padding; None means S for every row.

    Returns:
        (B, S) augmented waves.

    Example:
        >>> x = augment_waves(Recipe(), waves, seeds, lengths=dataset.lengths[ids])  # doctest: +SKIP
    """
    return recipe.apply_wave(waves, np.asarray(seeds), num_samples=lengths)


def augmented_logmel(
    waves: torch.Tensor,
    seeds,
    recipe: Recipe | None,
    frontend: nn.Module,
    lengths=None,
) -> torch.Tensor:
    """The teacher's (and the consistent student's) input: shift, frontend, then masks.

    Each row is computed as if it were alone in its batch, at its own length: the shift acts
    on ``lengths[b]`` samples, the frontend sees no padding (its reflect padding and per-example
    floor would otherwise see zeros past a short row's end), and the masks are drawn for the
    frames that length gives. So a record's input never depends on its batch neighbours, and
    the student rebuilds the teacher's input bit for bit however the two sides batch.

    Args:
        waves: (B, S) float32 zero-padded batch.
        seeds: (B,) int32 seeds (ignored when ``recipe`` is None).
        recipe: the augmentation recipe, or None for clean inputs.
        frontend: waveform -> dB log-mel (B, F, T), e.g. ``log_mel_frontend()``.
        lengths: (B,) samples per row before padding; None means S for every row.

    Returns:
        (B, F, T) float32 dB log-mel; frames past a short row's end are the frontend's view of
        its zero padding.

    Example:
        >>> x = augmented_logmel(waves, seeds, Recipe(), log_mel_frontend(), dataset.lengths[ids])  # doctest: +SKIP
    """
    seeds = np.asarray(seeds)

    def alone(rows_waves: torch.Tensor, rows_seeds: np.ndarray) -> torch.Tensor:
        if recipe is None:
            return frontend(rows_waves)
        return recipe.apply_spec(frontend(recipe.apply_wave(rows_waves, rows_seeds)), rows_seeds)

    sizes = np.full(len(waves), waves.shape[-1]) if lengths is None else np.asarray(lengths)
    if np.all(sizes == waves.shape[-1]):
        return alone(waves, seeds)
    out = frontend(waves)
    for rows in length_groups(sizes):
        size = sizes[rows[0]]
        index = torch.from_numpy(rows).to(waves.device)
        x = alone(waves[index, :size], seeds[rows] if recipe is not None else seeds)
        out[index, :, : x.shape[-1]] = x
    return out
