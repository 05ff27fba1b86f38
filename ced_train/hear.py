"""The HEAR 2021 API (https://hearbenchmark.com/hear-api.html) for CED checkpoints.

Validate or evaluate a checkpoint with the HEAR tools by naming this module::

    hear-validator ced_train.hear -m audiotransformer_mini_mAP_4896.pt
    python -m heareval.embeddings.runner ced_train.hear -m audiotransformer_mini_mAP_4896.pt ...

Embeddings come from the penultimate layer, as in the original's HEAR submission (HEAR_CED):
the tokens after the final LayerNorm, before the classification head, mean-pooled.

- Scene embedding: the mean over all tokens of the clip (of every 1012-frame chunk for long
  clips), ``(n_sounds, embed_dim)``; equal to :meth:`CED.embed`.
- Timestamp embeddings: one every ``TIMESTAMP_HOP_MS`` (50 ms), the mean-pooled tokens of a
  ``TIMESTAMP_WINDOW`` (7677-sample, 0.48 s) window of zero-padded audio centred on the
  timestamp; ``(n_sounds, n_samples // 800 + 1, embed_dim)`` with timestamps
  ``0, 50, 100, ...`` ms. Window and hop are those of the original's submission.

Audio is float32 ``(n_sounds, n_samples)`` at 16 kHz on the model's device.

Example:
    >>> from ced_train import hear
    >>> model = hear.load_model("audiotransformer_mini_mAP_4896.pt")
    >>> scene = hear.get_scene_embeddings(audio, model)           # (n_sounds, 256)
    >>> frames, ms = hear.get_timestamp_embeddings(audio, model)  # (n_sounds, T, 256), (n_sounds, T)
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ced_train.models import CED, from_checkpoint

__all__ = [
    "SAMPLE_RATE", "TIMESTAMP_HOP_MS", "TIMESTAMP_WINDOW", "HearModel", "load_model",
    "get_scene_embeddings", "get_timestamp_embeddings",
]

SAMPLE_RATE = 16_000
TIMESTAMP_HOP_MS = 50
TIMESTAMP_WINDOW = 7677  # samples: 48 frames, 3 time patches (the original's overlap_frame)
_HOP = SAMPLE_RATE * TIMESTAMP_HOP_MS // 1000  # 800 samples
_MIN_SAMPLES = 15 * 160  # 16 frames = one patch: shorter clips are zero-padded to this
_WINDOWS_PER_BATCH = 1024  # bounds memory for long recordings


class HearModel(nn.Module):
    """A CED model with the attributes the HEAR API requires.

    Attributes:
        model: the wrapped :class:`CED`, in eval mode.
        sample_rate: 16000.
        scene_embedding_size, timestamp_embedding_size: the model's ``embed_dim``.
    """

    def __init__(self, model: CED) -> None:
        super().__init__()
        self.model = model.eval()
        self.sample_rate = SAMPLE_RATE
        self.scene_embedding_size = model.config.embed_dim
        self.timestamp_embedding_size = model.config.embed_dim


def load_model(model_file_path: str = "") -> HearModel:
    """Load a CED checkpoint for the HEAR API.

    Args:
        model_file_path: a published CED ``.pt`` or a checkpoint of ours. Required: no
            weights are bundled or downloaded.

    Returns:
        A :class:`HearModel` on the CPU in eval mode.

    Raises:
        ValueError: no path given, or the checkpoint does not match a CED architecture.

    Example:
        >>> model = load_model("audiotransformer_tiny_mAP_4814.pt")
        >>> model.scene_embedding_size
        192
    """
    if not model_file_path:
        raise ValueError(
            "ced_train.hear.load_model needs a checkpoint path (a published CED .pt or one of "
            "ours), e.g. hear-validator ced_train.hear -m audiotransformer_mini_mAP_4896.pt"
        )
    return HearModel(from_checkpoint(os.fspath(model_file_path)))


def _check_audio(audio: torch.Tensor) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2:
        shape = tuple(audio.shape) if hasattr(audio, "shape") else type(audio).__name__
        raise ValueError(f"expected audio as a torch tensor (n_sounds, n_samples), got {shape}")
    return audio.float()


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """One embedding per clip: the mean of its final-norm tokens.

    Args:
        audio: float32 (n_sounds, n_samples) at 16 kHz, on the model's device. Clips shorter
            than 2400 samples (one patch) are zero-padded to it.
        model: from :func:`load_model`.

    Returns:
        float32 (n_sounds, model.scene_embedding_size).

    Raises:
        ValueError: ``audio`` is not a 2-D tensor.

    Example:
        >>> get_scene_embeddings(torch.zeros(2, 16000), model).shape
        torch.Size([2, 192])
    """
    audio = _check_audio(audio)
    audio = F.pad(audio, (0, max(0, _MIN_SAMPLES - audio.shape[1])))
    return model.model.eval().embed(audio)


@torch.no_grad()
def get_timestamp_embeddings(
    audio: torch.Tensor, model: HearModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings every 50 ms, each from the 0.48 s of audio centred on its timestamp.

    Args:
        audio: float32 (n_sounds, n_samples) at 16 kHz, on the model's device.
        model: from :func:`load_model`.

    Returns:
        (embeddings float32 (n_sounds, T, model.timestamp_embedding_size),
        timestamps float32 (n_sounds, T) in milliseconds), T = n_samples // 800 + 1;
        embedding ``t`` is centred on ``t * 50`` ms.

    Raises:
        ValueError: ``audio`` is not a 2-D tensor.

    Example:
        >>> emb, ms = get_timestamp_embeddings(torch.zeros(2, 32000), model)
        >>> emb.shape, ms[0, :3].tolist()
        (torch.Size([2, 41, 192]), [0.0, 50.0, 100.0])
    """
    audio = _check_audio(audio)
    n_sounds = audio.shape[0]
    half = TIMESTAMP_WINDOW // 2
    padded = F.pad(audio, (half, TIMESTAMP_WINDOW - half))
    # Window t starts at t * hop in the padded audio, i.e. is centred on sample t * hop.
    windows = padded.unfold(1, TIMESTAMP_WINDOW, _HOP)  # (n_sounds, T, window)
    num_frames = windows.shape[1]
    flat = windows.reshape(-1, TIMESTAMP_WINDOW)
    embedder = model.model.eval()
    embeddings = torch.cat([embedder.embed(part) for part in flat.split(_WINDOWS_PER_BATCH)])
    timestamps = torch.arange(num_frames, device=audio.device, dtype=torch.float32) * TIMESTAMP_HOP_MS
    return embeddings.reshape(n_sounds, num_frames, -1), timestamps.expand(n_sounds, -1).clone()
