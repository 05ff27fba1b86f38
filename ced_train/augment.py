"""Augmentation recipe ``cedaug`` v1, regenerated exactly from each record's 32-bit seed.

Consistent teaching needs the student to see exactly what the teacher saw. The teacher's
augmentation is therefore a pure function of (recipe, seed, input shape): every parameter is an
integer computed with SplitMix64 in uint64 arithmetic, so it is the same on any machine,
device, process or library version, and the tensor ops (a circular shift and two masks) are
exact. docs/AUGMENTATION.md is the normative specification, with test vectors.

Student-side mixup (:func:`mixup`, :func:`mixup_loss`) is not part of the stored recipe.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RECIPE_NAME", "RECIPE_VERSION", "Recipe", "mixup", "mixup_loss", "seed_for",
           "splitmix64"]

RECIPE_NAME = "cedaug"
RECIPE_VERSION = 1

GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64 state increment
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK32 = np.uint64(0xFFFFFFFF)

# Draw j of a seed's stream feeds one parameter; the order is part of the recipe version.
DRAW_SHIFT, DRAW_TIME_WIDTH, DRAW_TIME_START, DRAW_FREQ_WIDTH, DRAW_FREQ_START = range(5)


# ---- generator -----------------------------------------------------------------------------


def splitmix64(state) -> np.ndarray:
    """Return the SplitMix64 output for each uint64 ``state`` (vectorized, wraps mod 2**64).

    This is one step of Vigna's SplitMix64: ``z = state + 0x9E3779B97F4A7C15`` followed by the
    two xor-shift-multiply rounds. Feeding ``s, s + γ, s + 2γ, …`` gives the standard stream of
    a SplitMix64 generator whose state was set to ``s``.

    Args:
        state: integers castable to uint64 (an array or a scalar).

    Returns:
        uint64 array (or scalar) of the same shape.

    Example:
        >>> hex(splitmix64(0))
        '0xe220a8397b1dcdaf'
    """
    z = np.asarray(state, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic is meant to wrap
        z = z + GOLDEN_GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def _draw(seeds: np.ndarray, j: int) -> np.ndarray:
    """Draw ``j`` (0-based) of each seed's stream: ``splitmix64(seed + j * γ)``."""
    with np.errstate(over="ignore"):
        return splitmix64(seeds + np.uint64(j) * GOLDEN_GAMMA)


def _uniform_int(draws: np.ndarray, n) -> np.ndarray:
    """Map draws to integers in [0, n): ``((draw >> 32) * n) >> 32`` (exact for n <= 2**32)."""
    return ((draws >> np.uint64(32)) * np.asarray(n, dtype=np.uint64)) >> np.uint64(32)


def _lowbias32(x: np.ndarray) -> np.ndarray:
    """A bijection on 32-bit integers (Wellons' lowbias32), in uint64 without wrapping."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & _MASK32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & _MASK32
    return x ^ (x >> np.uint64(16))


def _as_uint(values, bits: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, got {arr.dtype} values")
    if arr.size and (arr.min() < 0 or (bits < 64 and arr.max() >= 2**bits)):
        raise ValueError(
            f"{name}: expected integers in [0, 2**{bits}), got range [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.uint64)


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
    if name != RECIPE_NAME or isinstance(version, bool) or version != RECIPE_VERSION:
        raise ValueError(
            f"augmentation recipe {name!r} version {version!r} is not supported: "
            f"this code implements {RECIPE_NAME!r} version {RECIPE_VERSION}"
        )


def seed_for(base_seed, epoch, sample_index):
    """Return the augmentation seed of one sample in one extraction epoch, as int32.

    ``key = splitmix64(splitmix64(base_seed) ^ epoch) >> 32`` and
    ``seed = lowbias32(sample_index ^ key)``, read as signed int32. The result depends only on
    its three arguments (not on sharding or order), and within one (base_seed, epoch) distinct
    sample indices always get distinct seeds. Arguments broadcast like numpy arrays.

    Args:
        base_seed: run seed, integer(s) in [0, 2**64).
        epoch: extraction epoch, integer(s) in [0, 2**64).
        sample_index: sample index, integer(s) in [0, 2**32).

    Returns:
        ``np.int32`` for scalar arguments, else an int32 array of the broadcast shape.

    Raises:
        ValueError: for non-integer or out-of-range arguments.

    Example:
        >>> seed_for(0, 0, np.arange(3))
        array([-507137767,  807331199, 1617244718], dtype=int32)
    """
    base = _as_uint(base_seed, 64, "base_seed")
    epoch = _as_uint(epoch, 64, "epoch")
    index = _as_uint(sample_index, 32, "sample_index")
    key = splitmix64(splitmix64(base) ^ epoch) >> np.uint64(32)
    seeds = _lowbias32(index ^ key).astype(np.uint32).view(np.int32)
    return seeds[()] if seeds.ndim == 0 else seeds


# ---- recipe --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """The stored augmentation recipe: circular shift of the waveform, then one time mask and
    one frequency mask on the dB spectrogram (before the model's normalisation).

    Args:
        name: must be ``"cedaug"``.
        version: must be ``1``.
        time_mask_max: time-mask width is drawn in [0, time_mask_max) frames.
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

    def __post_init__(self) -> None:
        _check_name_version(self.name, self.version)
        for field in ("time_mask_max", "freq_mask_max"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**32:
                raise ValueError(f"Recipe.{field}: expected an int in [1, 2**32), got {value!r}")
        value = self.mask_value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isinf(value) \
                or math.isnan(value):
            raise ValueError(f"Recipe.mask_value: expected a finite number, got {value!r}")
        object.__setattr__(self, "mask_value", float(value))  # so that 0 and 0.0 compare equal

    def to_json(self) -> str:
        """Return the recipe as a JSON object string (sorted keys), for the store's metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """Parse :meth:`to_json` output.

        Raises:
            ValueError: for invalid JSON, an unknown name/version, or missing/unknown fields.

        Example:
            >>> Recipe.from_json('{"name": "cedaug", "version": 2}')  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ValueError: augmentation recipe 'cedaug' version 2 is not supported: ...
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"augmentation recipe: expected a JSON object, got {text!r}: {err}"
            ) from err
        if not isinstance(data, dict):
            raise ValueError(f"augmentation recipe: expected a JSON object, got {text!r}")
        _check_name_version(data.get("name"), data.get("version"))
        expected = {f.name for f in fields(cls)}
        if set(data) != expected:
            raise ValueError(
                f"augmentation recipe {RECIPE_NAME!r} version {RECIPE_VERSION}: expected fields "
                f"{sorted(expected)}, got {sorted(data)}"
            )
        return cls(**data)

    def check_compatible(self, stored: Recipe) -> None:
        """Raise unless ``stored`` (read from a store's metadata) equals this recipe.

        Raises:
            ValueError: naming both recipes; the stored teacher outputs were computed on
                inputs augmented differently from what this recipe would regenerate.

        Example:
            >>> Recipe().check_compatible(Recipe.from_json(Recipe().to_json()))  # passes
        """
        if stored != self:
            raise ValueError(
                f"augmentation recipe mismatch: the store was made with {stored.to_json()}, "
                f"this run uses {self.to_json()}"
            )

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
        draws = _uniform_int(_draw(seeds, DRAW_SHIFT), np.uint64(2) * half + np.uint64(1))
        return draws.astype(np.int64) - half.astype(np.int64)

    def _masks(self, seeds: np.ndarray, num_frames, num_mels) -> dict:
        out = {}
        for axis, size, size_name, width_max, draw_width, draw_start in (
            ("time", num_frames, "num_frames", self.time_mask_max, DRAW_TIME_WIDTH,
             DRAW_TIME_START),
            ("freq", num_mels, "num_mels", self.freq_mask_max, DRAW_FREQ_WIDTH, DRAW_FREQ_START),
        ):
            size = _sizes(size, size_name, len(seeds))
            width = np.minimum(_uniform_int(_draw(seeds, draw_width), width_max), size)
            start = _uniform_int(_draw(seeds, draw_start), size - width + np.uint64(1))
            out[f"{axis}_start"] = start.astype(np.int64)
            out[f"{axis}_width"] = width.astype(np.int64)
        return out


# ---- student-side mixup --------------------------------------------------------------------


def mixup(x: torch.Tensor, alpha: float, generator: torch.Generator):
    """Mix each example with its partner in the reversed batch: ``λ·x.flip(0) + (1 − λ)·x``.

    λ ~ Beta(α, α) per example, drawn with numpy's PCG64 Beta sampler seeded by one draw from
    ``generator``, so the result is reproducible from the generator's state (save it with the
    training checkpoint). Pair with :func:`mixup_loss` and the same ``lam``.

    Args:
        x: [B, ...] floating-point batch on any device.
        alpha: Beta concentration, > 0 (0.5 in the CED paper for AS-20K).
        generator: a ``torch.Generator`` (any device); advanced by one draw.

    Returns:
        ``(x_mixed, lam)``: x_mixed like x; lam float32 [B] on x's device.

    Raises:
        ValueError: if alpha <= 0.

    Example:
        >>> x_mixed, lam = mixup(torch.randn(4, 64, 1001), 0.5, torch.Generator().manual_seed(0))
    """
    if not alpha > 0:
        raise ValueError(f"mixup: expected alpha > 0, got {alpha!r}")
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))
    lam = np.random.Generator(np.random.PCG64(seed)).beta(alpha, alpha, size=x.shape[0])
    lam = torch.from_numpy(lam).to(device=x.device, dtype=torch.float32)
    weight = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return weight * x.flip(0) + (1.0 - weight) * x, lam


def mixup_loss(logits: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for a batch mixed by :func:`mixup`.

    ``mean_b [λ_b · BCE(logits_b, y_partner(b)) + (1 − λ_b) · BCE(logits_b, y_b)]`` with the
    partner being the reversed batch and BCE the mean over classes; computed as one BCE
    against the mixed targets, which is the same because BCE is linear in its target.

    Args:
        logits: [B, C] pre-sigmoid outputs for the mixed inputs.
        y: [B, C] targets (teacher probabilities) of the unmixed examples.
        lam: [B] from :func:`mixup`.

    Returns:
        Scalar float32 loss.

    Example:
        >>> mixup_loss(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0.5, 0.5]))
        tensor(0.6931)
    """
    lam = lam.to(device=logits.device, dtype=torch.float32)[:, None]
    y = y.float()
    target = lam * y.flip(0) + (1.0 - lam) * y
    return F.binary_cross_entropy_with_logits(logits.float(), target)
