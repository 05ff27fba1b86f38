"""CED audio taggers: a ViT over 16x16 log-mel patches (Dinkel et al., ICASSP 2024).

``state_dict()`` names, order and shapes equal those of the published
``audiotransformer_{tiny,mini,small,base}`` checkpoints (``ced_checkpoint_layout.json``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ced_train.frontend import log_mel_frontend

VARIANTS = {
    "ced_tiny": {"embed_dim": 192, "num_heads": 3},
    "ced_mini": {"embed_dim": 256, "num_heads": 4},
    "ced_small": {"embed_dim": 384, "num_heads": 6},
    "ced_base": {"embed_dim": 768, "num_heads": 12},
    "ced_custom": {},
}


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, N, N)
    return attn.softmax(dim=-1) @ v


_ATTEND = {"sdpa": _sdpa, "explicit": _explicit}


@dataclasses.dataclass
class CEDConfig:
    """Architecture of a CED model; the defaults are CED-Tiny for the 527 AudioSet classes.

    Attributes:
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads; must divide ``embed_dim``.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        num_classes: number of output logits.
        patch_size: side of the square, non-overlapping patches.
        target_length: frames per chunk; sets the time positional embedding to
            ``target_length // patch_size`` patches. Longer inputs are chunked.
        n_mels: mel bins of the log-mel input.
        attention: ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"explicit"``
            (``softmax(QK^T / sqrt(d)) V`` written out; for benchmarks and cross-checks).

    Example:
        >>> CEDConfig.from_dict(CEDConfig(depth=2).to_dict()).depth
        2
    """

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 527
    patch_size: int = 16
    target_length: int = 1012
    n_mels: int = 64
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if min(self.n_mels, self.target_length) < self.patch_size:
            raise ValueError(
                f"n_mels ({self.n_mels}) and target_length ({self.target_length}) must be at least "
                f"patch_size ({self.patch_size})"
            )
        if self.attention not in _ATTEND:
            raise ValueError(f"attention must be one of {sorted(_ATTEND)}, got {self.attention!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a plain dict (safe for ``torch.load(weights_only=True)``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CEDConfig:
        """Build a config from :meth:`to_dict` output.

        Raises:
            ValueError: ``values`` has keys that are not config fields.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown CEDConfig fields {unknown}; expected a subset of {names}")
        return cls(**values)


class _Transpose(nn.Module):
    """Swap two dims; stands in for einops ``Rearrange`` so the norm is named ``init_bn.1``."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)


class PatchEmbed(nn.Module):
    """Non-overlapping square patches of a one-channel spectrogram -> (B, D, F/p, T/p)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (bias on)."""

    def __init__(self, dim: int, num_heads: int, attention: str = "sdpa") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attend = _ATTEND[attention]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, C/H)
        x = self.attend(q, k, v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    """Two-layer MLP with exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attention: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class CED(nn.Module):
    """CED audio tagger: waveform -> log-mel -> per-mel batch norm -> ViT -> mean pool -> logits.

    Inputs longer than ``config.target_length`` frames are split, after the batch norm, into
    chunks of that length (a short last chunk is zero-padded); per-chunk results are averaged.

    Args:
        config: architecture; ``CEDConfig()`` (CED-Tiny) if omitted.

    Example:
        >>> model = CED(CEDConfig(embed_dim=64, depth=2, num_heads=2, num_classes=10)).eval()
        >>> model(torch.zeros(2, 16000)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: CEDConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CEDConfig()
        dim, patch = config.embed_dim, config.patch_size
        # Own parameters come first in state_dict(), as in the published checkpoints.
        self.time_pos_embed = nn.Parameter(torch.zeros(1, dim, 1, config.target_length // patch))
        self.freq_pos_embed = nn.Parameter(torch.zeros(1, dim, config.n_mels // patch, 1))
        self.front_end = log_mel_frontend(n_mels=config.n_mels)
        # The mel bins become BatchNorm2d channels: (B, 1, F, T) -> (B, F, 1, T) -> back.
        self.init_bn = nn.Sequential(
            _Transpose(1, 2), nn.BatchNorm2d(config.n_mels, momentum=0.01), _Transpose(1, 2)
        )
        self.patch_embed = PatchEmbed(patch, dim)
        self.blocks = nn.Sequential(
            *(Block(dim, config.num_heads, config.mlp_ratio, config.attention)
              for _ in range(config.depth))
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.outputlayer = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, config.num_classes))
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.time_pos_embed, std=0.02)
        nn.init.trunc_normal_(self.freq_pos_embed, std=0.02)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Tag 16 kHz audio.

        Args:
            waveform: (B, S) or (S,) samples; (S,) is a batch of one.

        Returns:
            (B, num_classes) logits (per-chunk logits averaged for long inputs).
        """
        return self.forward_spectrogram(self.front_end(waveform))

    def forward_spectrogram(self, logmel: torch.Tensor) -> torch.Tensor:
        """Tag a log-mel spectrogram, e.g. one already augmented by the training pipeline.

        Args:
            logmel: (B, n_mels, T) log-mel in dB, as produced by ``self.front_end``;
                T >= patch_size.

        Returns:
            (B, num_classes) logits; for T > target_length the mean of the per-chunk logits.

        Raises:
            ValueError: ``logmel`` has the wrong rank, mel count, or fewer than patch_size frames.

        Example:
            >>> logits = model.forward_spectrogram(model.front_end(waveform))
        """
        return self.outputlayer(self._pooled_chunks(logmel)).mean(0)

    @torch.no_grad()
    def predict(self, waveform: torch.Tensor) -> torch.Tensor:
        """Return tag probabilities, as the released models did; call ``eval()`` first.

        Args:
            waveform: (B, S) or (S,) 16 kHz samples.

        Returns:
            (B, num_classes) sigmoid probabilities; for long inputs the mean of the
            per-chunk probabilities (not the sigmoid of the mean logit).

        Example:
            >>> probs = model.eval().predict(waveform)
        """
        return self.outputlayer(self._pooled_chunks(self.front_end(waveform))).sigmoid().mean(0)

    @torch.no_grad()
    def predict_chunk(self, logmel: torch.Tensor, last_of_many: bool = False) -> torch.Tensor:
        """Probabilities of one chunk of a log-mel, as ``predict`` scores it; the mean over the
        chunks of a long input is ``predict``'s result, so a long input can be streamed chunk by
        chunk (``ced_train.evaluate.tag``).

        Args:
            logmel: (B, n_mels, T) log-mel in dB, patch_size <= T <= target_length (1 <= T
                with ``last_of_many``).
            last_of_many: the chunk ends an input longer than target_length; zero-padded to
                target_length after the batch norm, as ``predict`` pads the last chunk.

        Returns:
            (B, num_classes) sigmoid probabilities.

        Raises:
            ValueError: ``logmel`` has the wrong rank, mel count or number of frames.
        """
        n_mels, length = self.config.n_mels, self.config.target_length
        shortest = 1 if last_of_many else self.config.patch_size
        if logmel.dim() != 3 or logmel.shape[1] != n_mels or not shortest <= logmel.shape[2] <= length:
            raise ValueError(f"expected a log-mel chunk of shape (B, {n_mels}, T) with {shortest} <= T <= {length}, "
                             f"got {tuple(logmel.shape)}")
        chunk = length if last_of_many else logmel.shape[2]
        return self.outputlayer(self._pool(logmel, chunk)[0]).sigmoid()

    @torch.no_grad()
    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """Return clip embeddings for linear probes: mean-pooled final-norm tokens.

        Args:
            waveform: (B, S) or (S,) 16 kHz samples.

        Returns:
            (B, embed_dim) features (before the head), averaged over chunks for long inputs.

        Example:
            >>> features = model.eval().embed(waveform)
        """
        return self._pooled_chunks(self.front_end(waveform)).mean(0)

    def forward_features(self, logmel: torch.Tensor) -> torch.Tensor:
        """Return the final-norm tokens of a log-mel of at most ``target_length`` frames.

        Args:
            logmel: (B, n_mels, T) with patch_size <= T <= target_length.

        Returns:
            (B, N, embed_dim) tokens, N = (n_mels // p) * (T // p), frequency-major.

        Raises:
            ValueError: bad shape, or T > target_length (use ``forward_spectrogram``).
        """
        self._check_logmel(logmel)
        if logmel.shape[-1] > self.config.target_length:
            raise ValueError(
                f"forward_features takes at most target_length={self.config.target_length} frames, "
                f"got {logmel.shape[-1]}; use forward_spectrogram, which chunks long inputs"
            )
        return self._encode(self.init_bn(logmel.unsqueeze(1)))

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean-pool (B, N, D) tokens and apply the head -> (B, num_classes) logits."""
        return self.outputlayer(tokens.mean(1))

    def _check_logmel(self, logmel: torch.Tensor) -> None:
        n_mels, patch = self.config.n_mels, self.config.patch_size
        if logmel.dim() != 3 or logmel.shape[1] != n_mels or logmel.shape[2] < patch:
            raise ValueError(
                f"expected a log-mel of shape (B, {n_mels}, T) with T >= {patch}, "
                f"got {tuple(logmel.shape)}"
            )

    def _encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T) normalised -> (B, N, D)
        x = self.patch_embed(x)  # (B, D, F/p, T/p)
        x = x + self.time_pos_embed[..., : x.shape[-1]] + self.freq_pos_embed
        # (B, N, D), frequency-major. Contiguous once here: the transposed view would otherwise
        # carry through every residual add, and each LayerNorm (forward and backward) copied it.
        x = x.flatten(2).transpose(1, 2).contiguous()
        return self.norm(self.blocks(x))

    def _pooled_chunks(self, logmel: torch.Tensor) -> torch.Tensor:
        """Mean-pooled features of each ``target_length`` chunk: (num_chunks, B, D)."""
        self._check_logmel(logmel)
        return self._pool(logmel, min(logmel.shape[-1], self.config.target_length))

    def _pool(self, logmel: torch.Tensor, chunk: int) -> torch.Tensor:
        """Mean-pooled features of each ``chunk``-frame piece of ``logmel``: (num_chunks, B, D)."""
        x = self.init_bn(logmel.unsqueeze(1))  # (B, 1, F, T)
        batch, frames = x.shape[0], x.shape[-1]
        # Ceil division without negative operands: torch.onnx lowers a symbolic floor division
        # to ONNX integer Div, which truncates, so -(-n // c) exported as one chunk too few.
        num_chunks = (frames + chunk - 1) // chunk
        # Pad after init_bn: the short last chunk is zero in the normalised domain, as in the
        # original. Unlike the original, a last chunk of exactly target_length is kept.
        x = F.pad(x, (0, num_chunks * chunk - frames))
        x = x.unflatten(-1, (num_chunks, chunk)).movedim(-2, 0).flatten(0, 1)  # (n*B, 1, F, chunk)
        return self._encode(x).mean(1).unflatten(0, (num_chunks, batch))


def create(name: str, num_classes: int = 527, **overrides: Any) -> CED:
    """Build a freshly initialised CED model by name.

    Args:
        name: one of ``VARIANTS``: ``ced_tiny``, ``ced_mini``, ``ced_small``, ``ced_base``, or
            ``ced_custom`` (the ``CEDConfig`` defaults, meant to be overridden).
        num_classes: number of output logits.
        **overrides: further ``CEDConfig`` fields (``depth``, ``attention``, ...).

    Returns:
        The model, in training mode.

    Raises:
        ValueError: unknown ``name`` or an invalid config.

    Example:
        >>> model = create("ced_custom", num_classes=10, embed_dim=64, depth=2, num_heads=2)
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(VARIANTS)}")
    return CED(CEDConfig(**{**VARIANTS[name], "num_classes": num_classes, **overrides}))


def ced_tiny(**kwargs: Any) -> CED:
    """CED-Tiny: 192 dim, 3 heads, 12 blocks (5.5 M parameters with 527 classes)."""
    return create("ced_tiny", **kwargs)


def ced_mini(**kwargs: Any) -> CED:
    """CED-Mini: 256 dim, 4 heads, 12 blocks (9.7 M parameters with 527 classes)."""
    return create("ced_mini", **kwargs)


def ced_small(**kwargs: Any) -> CED:
    """CED-Small: 384 dim, 6 heads, 12 blocks (21.6 M parameters with 527 classes)."""
    return create("ced_small", **kwargs)


def ced_base(**kwargs: Any) -> CED:
    """CED-Base: 768 dim, 12 heads, 12 blocks (85.7 M parameters with 527 classes)."""
    return create("ced_base", **kwargs)
