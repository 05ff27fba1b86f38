"""Tests for ced_train.models: published layout, shapes, chunking, attention, checkpoints."""

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ced_train import models
from ced_train.errors import CheckpointError
from ced_train.models import CEDConfig

REPO = Path(__file__).resolve().parents[2]
# A copy of shared/reference/ced_checkpoint_layout.json: the published checkpoints' layout.
LAYOUT_PATH = REPO / "tests" / "data" / "ced_checkpoint_layout.json"
PARAMETER_COUNTS = {
    "ced_tiny": 5_503_183,
    "ced_mini": 9_696_655,
    "ced_small": 21_622_543,
    "ced_base": 85_711_759,
}
HOP = 160  # frontend hop: S samples give S // 160 + 1 frames


def published_layout(name):
    return json.loads(LAYOUT_PATH.read_text())["models"][name]


def small_model(**overrides):
    """A model small enough for 2 shared cores; eval mode, non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    config = {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5, "target_length": 64}
    model = models.create("ced_custom", **{**config, **overrides}).eval()
    bn = model.init_bn[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-60, -20)
        bn.running_var.uniform_(50, 200)
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
    return model


def normalised_zero(model):
    """Per-mel-bin raw value that init_bn (eval) maps to 0, i.e. zero in the normalised domain."""
    bn = model.init_bn[1]
    return (bn.running_mean - bn.bias * (bn.running_var + bn.eps).sqrt() / bn.weight)[:, None]


def chunk_logits(model, logmel):
    """Reference: call the model once per target_length chunk (short last chunk padded)."""
    length = model.config.target_length
    chunks = []
    for chunk in logmel.split(length, dim=-1):
        batch, mels, frames = chunk.shape
        pad = normalised_zero(model).expand(batch, mels, length - frames)
        chunks.append(model.forward_spectrogram(torch.cat([chunk, pad], dim=-1)))
    return torch.stack(chunks)  # (num_chunks, B, C)


# --- the published architectures -------------------------------------------------------------


@pytest.mark.parametrize("name", list(PARAMETER_COUNTS))
def test_parameter_count(name):
    with torch.device("meta"):
        model = models.create(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", list(PARAMETER_COUNTS))
def test_state_dict_matches_published_layout(name):
    layout = published_layout(name)
    with torch.device("meta"):
        model = models.create(name)
    parameters = dict(model.named_parameters())

    def entry(key, tensor):
        kind = "parameter" if key in parameters else "buffer"
        return [key, list(tensor.shape), str(tensor.dtype).removeprefix("torch."), kind]

    ours = [entry(key, tensor) for key, tensor in model.state_dict().items()]
    assert ours == layout["state_dict"]
    assert len(ours) == layout["state_dict_entries"] == 161
    cfg = layout["config"]
    assert (model.config.embed_dim, model.config.num_heads, model.config.depth) == (
        cfg["embed_dim"], cfg["num_heads"], cfg["depth"],
    )


def test_layer_settings_match_published_config():
    model = small_model()
    bn = model.init_bn[1]
    assert (bn.num_features, bn.momentum, bn.eps) == (64, 0.01, 1e-5)
    assert all(block.norm1.eps == block.norm2.eps == 1e-6 for block in model.blocks)
    assert model.norm.eps == 1e-6 and model.outputlayer[0].eps == 1e-5
    assert model.blocks[0].mlp.act.approximate == "none"
    assert model.patch_embed.proj.kernel_size == model.patch_embed.proj.stride == (16, 16)


def test_create_unknown_name():
    names = "ced_tiny, ced_mini, ced_small, ced_base, ced_custom"
    with pytest.raises(ValueError, match=f"unknown model 'ced_huge'; expected one of {names}$"):
        models.create("ced_huge")


def reference_forward(model, logmel):
    """The original single-chunk forward, re-written with plain tensor ops: (tokens, logits)."""
    sd, heads = model.state_dict(), model.config.num_heads
    x = logmel.unsqueeze(1).permute(0, 2, 1, 3)  # b c f t -> b f c t
    x = F.batch_norm(
        x, sd["init_bn.1.running_mean"], sd["init_bn.1.running_var"],
        sd["init_bn.1.weight"], sd["init_bn.1.bias"], training=False, eps=1e-5,
    ).permute(0, 2, 1, 3)
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    b, d, f, t = x.shape
    x = x + sd["time_pos_embed"][..., :t] + sd["freq_pos_embed"]
    x = torch.einsum("bdft->bftd", x).reshape(b, f * t, d)  # b c f t -> b (f t) c
    for i in range(model.config.depth):
        prefix = f"blocks.{i}."
        w = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
        h = F.layer_norm(x, (d,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        qkv = F.linear(h, w["attn.qkv.weight"], w["attn.qkv.bias"])
        q, k, v = qkv.reshape(b, f * t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(b, f * t, d)
        x = x + F.linear(a, w["attn.proj.weight"], w["attn.proj.bias"])
        h = F.layer_norm(x, (d,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        h = F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"]))
        x = x + F.linear(h, w["mlp.fc2.weight"], w["mlp.fc2.bias"])
    tokens = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    head_norm = sd["outputlayer.0.weight"], sd["outputlayer.0.bias"]
    x = F.layer_norm(tokens.mean(1), (d,), *head_norm, eps=1e-5)
    return tokens, F.linear(x, sd["outputlayer.1.weight"], sd["outputlayer.1.bias"])


@pytest.mark.parametrize("frames", [100, 1001])
def test_matches_functional_reference(frames):
    model = small_model(target_length=1012)
    with torch.no_grad():  # move every parameter off its init so each one matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    logmel = torch.randn(2, 64, frames) * 10 - 40
    tokens, logits = reference_forward(model, logmel)
    close = {"atol": 1e-5, "rtol": 1e-5}
    # Token order is invisible in the logits (attention and mean pooling are permutation
    # invariant), so the frequency-major flattening is checked on the tokens.
    torch.testing.assert_close(model.forward_features(logmel), tokens, **close)
    torch.testing.assert_close(model.forward_spectrogram(logmel), logits, **close)


# --- shapes and input validation -----------------------------------------------------------------


@pytest.mark.parametrize(("frames", "time_patches"), [(1001, 62), (1012, 63), (100, 6), (16, 1)])
def test_output_shapes(frames, time_patches):
    model = small_model(target_length=1012)
    logmel = torch.randn(2, 64, frames)
    assert model.forward_features(logmel).shape == (2, 4 * time_patches, 32)
    assert model.forward_spectrogram(logmel).shape == (2, 5)


def test_waveform_api():
    model = small_model(target_length=1012)
    wave = torch.randn(2, 16000)
    logmel = model.front_end(wave)
    assert logmel.shape == (2, 64, 101)
    logits = model(wave)
    assert logits.shape == (2, 5)
    assert model(wave[0]).shape == (1, 5)
    torch.testing.assert_close(model.predict(wave), logits.sigmoid())
    torch.testing.assert_close(model.embed(wave), model.forward_features(logmel).mean(1))
    torch.testing.assert_close(model.forward_head(model.forward_features(logmel)), logits)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 32, 100), "expected a log-mel of shape (B, 64, T) with T >= 16, got (2, 32, 100)"),
        ((2, 64, 15), "expected a log-mel of shape (B, 64, T) with T >= 16, got (2, 64, 15)"),
        ((64, 100), "expected a log-mel of shape (B, 64, T) with T >= 16, got (64, 100)"),
    ],
)
def test_bad_logmel(shape, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        small_model().forward_spectrogram(torch.zeros(shape))


def test_forward_features_rejects_long_input():
    message = "at most target_length=64 frames, got 65; use forward_spectrogram"
    with pytest.raises(ValueError, match=message):
        small_model().forward_features(torch.zeros(1, 64, 65))


# --- long inputs: chunk after init_bn, zero-pad the last chunk, average -------------------------


@pytest.mark.parametrize(
    ("target_length", "frames"),
    [
        (64, 192),  # last chunk exactly target_length: kept, not dropped
        (64, 148),  # short last chunk, zero-padded
        (64, 65),  # one-frame last chunk
        (1012, 2024),  # the published length, exact last chunk
        (1012, 1501),
    ],
)
def test_long_input_averages_chunks(target_length, frames):
    model = small_model(target_length=target_length)
    wave = torch.randn(2, (frames - 1) * HOP)
    logmel = model.front_end(wave)
    assert logmel.shape[-1] == frames
    reference = chunk_logits(model, logmel)
    assert reference.shape[0] == -(-frames // target_length)
    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(model.forward_spectrogram(logmel), reference.mean(0), **close)
    torch.testing.assert_close(model(wave), reference.mean(0), **close)
    # The released models averaged probabilities, not logits.
    torch.testing.assert_close(model.predict(wave), reference.sigmoid().mean(0), **close)


# --- attention implementations and training ------------------------------------------------------


def test_sdpa_matches_explicit_attention():
    sdpa = small_model(target_length=1012)
    config = {**sdpa.config.to_dict(), "attention": "explicit"}
    explicit = models.create("ced_custom", **config).eval()
    explicit.load_state_dict(sdpa.state_dict())
    logmel = torch.randn(2, 64, 1001)
    torch.testing.assert_close(
        explicit.forward_spectrogram(logmel), sdpa.forward_spectrogram(logmel), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_training_step_lowers_loss(attention):
    model = small_model(attention=attention).train()
    logmel, targets = torch.randn(4, 64, 64), torch.randint(0, 2, (4, 5)).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = F.binary_cross_entropy_with_logits(model.forward_spectrogram(logmel), targets)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    optimizer.step()
    after = F.binary_cross_entropy_with_logits(model.forward_spectrogram(logmel), targets)
    assert after < loss


def _encode_with_transposed_stream(model, x):
    """``CED._encode`` before the residual stream was made contiguous (a transposed view)."""
    x = model.patch_embed(x)
    x = x + model.time_pos_embed[..., : x.shape[-1]] + model.freq_pos_embed
    return model.norm(model.blocks(x.flatten(2).transpose(1, 2)))


def test_contiguous_residual_stream_equals_the_transposed_one():
    model = small_model(target_length=1012).train()
    logmel, targets = torch.randn(3, 64, 1001) * 10 - 40, torch.rand(3, 5)
    results = []
    for encode in (model._encode, lambda x: _encode_with_transposed_stream(model, x)):
        model.zero_grad()
        x = model.init_bn(logmel.unsqueeze(1))
        loss = F.binary_cross_entropy_with_logits(model.forward_head(encode(x)), targets)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (new_loss, new_grads), (old_loss, old_grads) = results
    torch.testing.assert_close(new_loss, old_loss, rtol=0, atol=1e-6)
    for name in new_grads:
        torch.testing.assert_close(new_grads[name], old_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_blocks_see_a_contiguous_residual_stream():
    # the regression: a transposed (B, N, D) view made every LayerNorm copy its input, forward
    # and backward (~3 % of a CED-Mini training step)
    model, seen = small_model(target_length=1012), []
    model.blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    model.forward_spectrogram(torch.randn(2, 64, 100))
    assert seen == [True]


# --- config ------------------------------------------------------------------------------------


@given(
    num_heads=st.integers(1, 4),
    head_dim=st.integers(1, 16),
    depth=st.integers(1, 24),
    mlp_ratio=st.sampled_from([1.0, 2.0, 4.0]),
    num_classes=st.integers(1, 1000),
    target_length=st.integers(16, 4000),
    attention=st.sampled_from(["sdpa", "explicit"]),
)
def test_config_dict_round_trip(
    num_heads, head_dim, depth, mlp_ratio, num_classes, target_length, attention
):
    config = CEDConfig(
        embed_dim=num_heads * head_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        num_classes=num_classes, target_length=target_length, attention=attention,
    )
    assert CEDConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"embed_dim": 100, "num_heads": 3}, "embed_dim (100) must be divisible by num_heads (3)"),
        (
            {"target_length": 8},
            "n_mels (64) and target_length (8) must be at least patch_size (16)",
        ),
        ({"attention": "flash"}, "attention must be one of ['explicit', 'sdpa'], got 'flash'"),
    ],
)
def test_bad_config(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CEDConfig(**fields)


def test_config_from_dict_rejects_unknown_fields():
    message = "unknown CEDConfig fields ['drop_path', 'outputdim']; expected a subset of ['embed"
    with pytest.raises(ValueError, match=re.escape(message)):
        CEDConfig.from_dict({**CEDConfig().to_dict(), "outputdim": 527, "drop_path": 0.1})


# --- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    model = small_model()
    optimizer = torch.optim.AdamW(model.parameters())
    model.train()
    model.forward_spectrogram(torch.randn(2, 64, 64)).sum().backward()
    optimizer.step()
    model.eval()
    path = tmp_path / "ckpt.pt"
    models.save_checkpoint(model, path, step=3, optimizer=optimizer.state_dict(), note="x")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "config", "step", "optimizer", "note"} and raw["step"] == 3
    loaded = models.from_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    wave = torch.randn(2, 30000)
    assert torch.equal(loaded(wave), model(wave))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("nested", [False, True])
def test_published_layout_loads_strictly(tmp_path, nested):
    layout = published_layout("ced_tiny")
    torch.manual_seed(1)
    state = {}
    for key, shape, dtype, _ in layout["state_dict"]:
        if dtype == "int64":
            state[key] = torch.randint(0, 100, shape)
        else:
            state[key] = torch.rand(shape, dtype=getattr(torch, dtype))
    path = tmp_path / "audiotransformer_tiny.pt"
    torch.save({"model": state} if nested else state, path)
    model = models.from_checkpoint(path)
    config = model.config
    assert (config.embed_dim, config.depth, config.num_heads) == (192, 12, 3)
    assert config.num_classes == 527
    assert list(model.state_dict()) == list(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def _drop(state):
    del state["blocks.1.mlp.fc2.bias"]


def _add(state):
    state["head.weight"] = torch.zeros(5, 32)


def _reshape(state):
    state["outputlayer.1.bias"] = torch.zeros(4)


def _all_three(state):
    _drop(state)
    _add(state)
    _reshape(state)


MISSING = "missing keys (1): blocks.1.mlp.fc2.bias"
UNEXPECTED = "unexpected keys (1): head.weight"
MISMATCH = "shape mismatches, checkpoint != model (1): outputlayer.1.bias (4,) != (5,)"


@pytest.mark.parametrize(
    ("corrupt", "lines"),
    [
        (_drop, [MISSING]),
        (_add, [UNEXPECTED]),
        (_reshape, [MISMATCH]),
        (_all_three, [MISSING, UNEXPECTED, MISMATCH]),
    ],
)
def test_mismatched_checkpoint_lists_every_problem(tmp_path, corrupt, lines):
    model = small_model()
    path = tmp_path / "bad.pt"
    models.save_checkpoint(model, path)
    checkpoint = torch.load(path, weights_only=True)
    corrupt(checkpoint["model"])
    torch.save(checkpoint, path)
    with pytest.raises(ValueError) as excinfo:
        models.from_checkpoint(path)
    message = str(excinfo.value)
    assert message.startswith(
        f"checkpoint {path} does not match CEDConfig(embed_dim=32, depth=2, num_heads=2,"
    )
    assert message.splitlines()[1:] == ["  " + line for line in lines]


def test_long_key_lists_are_truncated(tmp_path):
    path = tmp_path / "empty_blocks.pt"
    state = {k: v for k, v in small_model().state_dict().items() if not k.startswith("blocks.1.")}
    torch.save({"model": state, "config": small_model().config.to_dict()}, path)
    first, last = "missing keys (12): blocks.1.norm1.weight, ", ", ... (2 more)"
    with pytest.raises(ValueError, match=re.escape(first) + ".*" + re.escape(last)):
        models.from_checkpoint(path)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            {"outputlayer.1.weight": torch.zeros(5, 64)},
            "cannot infer the model size: the checkpoint has no patch_embed.proj.weight, "
            "blocks.0.mlp.fc1.weight (and no 'config')",
        ),
        (
            {
                "patch_embed.proj.weight": torch.zeros(96, 1, 16, 16),
                "outputlayer.1.weight": torch.zeros(5, 96),
                "blocks.0.mlp.fc1.weight": torch.zeros(384, 96),
            },
            "cannot infer num_heads for embed_dim=96 (not a multiple of the published head "
            "width 64); save the model with save_checkpoint to record its config",
        ),
    ],
)
def test_infer_config_errors(state, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        models.infer_config(state)


def test_infer_config_of_custom_state_dict():
    model = small_model(embed_dim=128, num_heads=2, depth=3, mlp_ratio=2.0)
    config = models.infer_config(model.state_dict())
    got = (config.embed_dim, config.depth, config.num_heads, config.mlp_ratio, config.num_classes)
    assert got == (128, 3, 2, 2.0, 5)


def test_from_checkpoint_rejects_non_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    message = f"{path}: expected a dict (a state dict or {{'model': ...}}), got list"
    with pytest.raises(ValueError, match=re.escape(message)):
        models.from_checkpoint(path)


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        (
            {"config": {}},
            ValueError,
            "extra entries ['config'] are reserved for the model and its config",
        ),
        (
            {"meta": {"when": object()}},
            TypeError,
            "extra['meta']['when'] is a object, which torch.load(weights_only=True) cannot read; "
            "store tensors, dicts, lists, str or numbers",
        ),
        ({"steps": [1, {2}]}, TypeError, "extra['steps'][1] is a set"),
    ],
)
def test_save_checkpoint_rejects(tmp_path, extra, error, message):
    with pytest.raises(error, match=re.escape(message)):
        models.save_checkpoint(small_model(), tmp_path / "x.pt", **extra)
    assert not (tmp_path / "x.pt").exists()


class _Foreign:
    """A pickled object: a safe load must refuse it, never run it."""


def _truncated(path):
    torch.save({"model": {}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("write", "message"), [
    (lambda p: torch.save({"model": {}, "trainer": _Foreign()}, p),
     "the checkpoint holds Python objects (test_models._Foreign) that a safe load refuses; expected "
     "only tensors, dicts, lists, strings and numbers (a CED state dict, or a file written by save_checkpoint)"),
    (lambda p: p.write_bytes(b"not a checkpoint" * 8),
     "not a readable PyTorch checkpoint (damaged, truncated, or another kind of file: UnpicklingError)"),
    (lambda p: p.write_bytes(b""), "not a readable PyTorch checkpoint (damaged, truncated, or another kind of "
                                   "file: EOFError)"),
    (_truncated, "not a readable PyTorch checkpoint (damaged, truncated, or another kind of file: RuntimeError)"),
    (lambda p: torch.save([1, 2], p), "expected a dict (a state dict or {'model': ...}), got list"),
    (lambda p: torch.save({"config": {"width": 3}}, p), "its 'config' is not a CED model config: unknown "
                                                        "CEDConfig fields ['width']"),
])
def test_unreadable_or_foreign_checkpoints_are_one_checkpoint_error(tmp_path, write, message):
    path = tmp_path / "bad.pt"
    write(path)
    with pytest.raises(CheckpointError) as err:
        models.from_checkpoint(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert "weights_only=False" not in str(err.value)


def test_save_checkpoint_replaces_the_file_whole(tmp_path):
    path = tmp_path / "m.pt"
    models.save_checkpoint(small_model(), path, step=1)
    models.save_checkpoint(small_model(), path, step=2)
    assert models.load_checkpoint(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind
