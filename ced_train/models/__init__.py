"""CED audio-tagging models and their checkpoints.

Example:
    >>> from ced_train import models
    >>> model = models.create("ced_mini")                       # fresh, 527 classes
    >>> model = models.from_checkpoint("audiotransformer_mini_mAP_4896.pt")
    >>> probs = model.predict(waveform)                         # (B, 527)
"""

from ced_train.models.ced import (
    CED,
    VARIANTS,
    Attention,
    Block,
    CEDConfig,
    Mlp,
    PatchEmbed,
    ced_base,
    ced_mini,
    ced_small,
    ced_tiny,
    create,
)
from ced_train.models.checkpoint import from_checkpoint, infer_config, load_checkpoint, save_checkpoint

__all__ = [
    "CED", "VARIANTS", "Attention", "Block", "CEDConfig", "Mlp", "PatchEmbed",
    "ced_base", "ced_mini", "ced_small", "ced_tiny", "create",
    "from_checkpoint", "infer_config", "load_checkpoint", "save_checkpoint",
]
