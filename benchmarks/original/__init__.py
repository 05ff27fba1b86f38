"""The original CED training and extraction code, reimplemented for side-by-side benchmarks.

Reimplemented (not copied) from the description in github.com/RicherMans/CED, commit 60a0f54
(``models/audiotransformer.py``, ``models/layers.py``, ``run.py`` ``_step``, ``save_logits.py``
``_save_logits_parallel``, ``augment.py`` masks, ``utils.py`` mixup). That repository is
GPL-3.0; no line of it is vendored here. What is kept is what costs time: the module structure
and op sequence of ``AudioTransformer`` (torchaudio's frontend numerics, explicit softmax
attention, ``qkv_bias=True``, identity drop paths at rate 0), the training step's order of work,
and the save-logits loop's per-batch work (frontend, masks, forward, ``topk``, resizable HDF5
datasets, the index lists). Dependencies the original imports (torchaudio, einops, ignite, pandas)
are replaced by the torch ops they lower to.
"""
