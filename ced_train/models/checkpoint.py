"""Checkpoints: the one writer (:func:`save_checkpoint`) and the one safe reader
(:func:`load_checkpoint`, ``weights_only=True``); models from ours and the published
``audiotransformer_*.pt`` (:func:`from_checkpoint`), loaded strictly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ced_train.errors import CheckpointError
from ced_train.models.ced import CED, CEDConfig

HEAD_DIM = 64  # every published size; used to infer num_heads from a bare state dict
_PLAIN = (torch.Tensor, str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(
            f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) "
            "cannot read; store tensors, dicts, lists, str or numbers"
        )


def save_checkpoint(model: nn.Module, path: str | os.PathLike, /, **extra: Any) -> None:
    """Write ``{"model": state_dict, "config": config dict, **extra}`` atomically.

    The file is written next to ``path`` and renamed over it, so a run killed while saving
    leaves the previous checkpoint intact. ``"config"`` is stored when the model has a
    ``config.to_dict()`` (every CED model), which lets :func:`from_checkpoint` rebuild it.

    Args:
        model: the model to save.
        path: destination file.
        **extra: more entries (step, optimizer state, ...): tensors, dicts, lists, tuples,
            str, numbers or None only, so the file reloads with ``weights_only=True``.

    Raises:
        ValueError: ``extra`` uses the reserved keys "model" or "config".
        TypeError: ``extra`` holds another type.

    Example:
        >>> save_checkpoint(model, "step1000.pt", step=1000, optimizer=opt.state_dict())  # doctest: +SKIP
    """
    reserved = sorted({"model", "config"} & extra.keys())
    if reserved:
        raise ValueError(f"extra entries {reserved} are reserved for the model and its config")
    for key, value in extra.items():
        _check_plain(value, f"extra[{key!r}]")
    checkpoint = {"model": model.state_dict()}
    config_dict = getattr(getattr(model, "config", None), "to_dict", None)
    if config_dict is not None:
        checkpoint["config"] = config_dict()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**checkpoint, **extra}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Read a checkpoint safely: ``torch.load(weights_only=True, map_location="cpu")``.

    Only tensors, dicts, lists, tuples, strings and numbers are read; a file that holds other
    Python objects is refused, never executed.

    Raises:
        CheckpointError: the file is not a readable PyTorch checkpoint, or holds Python objects
            a safe load refuses.
        OSError: the file is missing or unreadable.

    Example:
        >>> checkpoint = load_checkpoint("runs/mini/last.pt")  # doctest: +SKIP
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001  (torch raises many kinds; none of their text is useful here)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"{os.fspath(path)}: the checkpoint holds Python objects ({found.group(1)}) that a "
                "safe load refuses; expected only tensors, dicts, lists, strings and numbers "
                "(a CED state dict, or a file written by save_checkpoint)"
            ) from None
        raise CheckpointError(
            f"{os.fspath(path)}: not a readable PyTorch checkpoint (damaged, truncated, or another "
            f"kind of file: {type(e).__name__})"
        ) from None


def infer_config(state: dict[str, torch.Tensor]) -> CEDConfig:
    """Infer the architecture of a bare state dict (e.g. a published checkpoint) from its shapes.

    embed_dim comes from ``patch_embed.proj.weight``, depth from the block count, classes from
    ``outputlayer.1.weight``, the MLP ratio from ``blocks.0.mlp.fc1.weight`` and
    num_heads = embed_dim / 64 (the published head width).

    Raises:
        CheckpointError: an entry needed for the inference is missing, or embed_dim is not a
            multiple of 64.
    """
    needed = ["patch_embed.proj.weight", "outputlayer.1.weight", "blocks.0.mlp.fc1.weight"]
    missing = [key for key in needed if key not in state]
    if missing:
        raise CheckpointError(
            f"cannot infer the model size: the checkpoint has no {', '.join(missing)} "
            "(and no 'config')"
        )
    dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    if dim % HEAD_DIM:
        # Head count does not change any shape, so guessing it would load silently wrong.
        raise CheckpointError(
            f"cannot infer num_heads for embed_dim={dim} (not a multiple of the published head "
            f"width {HEAD_DIM}); save the model with save_checkpoint to record its config"
        )
    return CEDConfig(
        embed_dim=dim,
        depth=1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks.")),
        num_heads=dim // HEAD_DIM,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        num_classes=state["outputlayer.1.weight"].shape[0],
        patch_size=patch,
    )


def _describe(keys: list[str], limit: int = 10) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"({len(keys)}): " + ", ".join(keys[:limit]) + more


def _load_strict(model: CED, state: dict[str, Any], source: str) -> None:
    """Like ``load_state_dict(strict=True)``, but reports every mismatch in one readable error."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(getattr(state[key], 'shape', ()))} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and getattr(state[key], "shape", None) != value.shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match {model.config}:"]
        if missing:
            lines.append(f"missing keys {_describe(missing)}")
        if unexpected:
            lines.append(f"unexpected keys {_describe(unexpected)}")
        if mismatched:
            lines.append(f"shape mismatches, checkpoint != model {_describe(mismatched)}")
        raise CheckpointError("\n  ".join(lines))
    model.load_state_dict(state)


def from_checkpoint(path: str | os.PathLike) -> CED:
    """Load a published CED checkpoint or one written by :func:`save_checkpoint`.

    Accepts a raw state dict or one nested under ``"model"``; the architecture comes from a
    ``"config"`` entry if present, else from the tensor shapes (:func:`infer_config`).

    Args:
        path: a ``.pt`` file; read with ``torch.load(weights_only=True, map_location="cpu")``.

    Returns:
        The model in eval mode (so inference does not update the batch-norm statistics).

    Raises:
        CheckpointError: the file is unreadable or not a dict, its config is not a CED config,
            or its tensors do not match the architecture exactly (the message lists
            missing/unexpected keys and shape mismatches).
        OSError: the file is missing or unreadable.

    Example:
        >>> model = from_checkpoint("audiotransformer_mini_mAP_4896.pt")
        >>> probs = model.predict(waveform)
    """
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: expected a dict (a state dict or {{'model': ...}}), "
            f"got {type(checkpoint).__name__}"
        )
    state = checkpoint["model"] if isinstance(checkpoint.get("model"), dict) else checkpoint
    if "config" in checkpoint:
        try:
            config = CEDConfig.from_dict(checkpoint["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its 'config' is not a CED model config: {e}") from None
    else:
        try:
            config = infer_config(state)
        except CheckpointError as e:
            raise CheckpointError(f"{os.fspath(path)}: {e}") from None
    model = CED(config)
    _load_strict(model, state, source=f"checkpoint {os.fspath(path)}")
    return model.eval()
