"""Log-mel frontend against an independent float64 numpy implementation."""

import doctest
import math
import threading

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

import ced_train.frontend
from ced_train.frontend import (
    AmplitudeToDB,
    FrontendConfig,
    MelSpectrogram,
    log_mel_frontend,
    mel_filterbank,
    num_frames,
)

SR, N_FFT, HOP, N_MELS, TOP_DB = 16_000, 512, 160, 64, 120.0
TEN_SECONDS = 10 * SR


# ---- numpy reference (float64), written from the formulas, not from the module --------------


def np_filterbank(n_freqs=257, f_min=0.0, f_max=8000.0, n_mels=N_MELS, sr=SR):
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sr / 2, n_freqs)[:, None]
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def np_periodic_hann(n=N_FFT):
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def np_log_mel(wave):
    """One clip [S] -> dB [n_mels, T]."""
    padded = np.pad(np.asarray(wave, np.float64), N_FFT // 2, mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[::HOP]  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames * np_periodic_hann(), axis=1)) ** 2
    db = 10.0 * np.log10(np.maximum(power @ np_filterbank(), 1e-10))
    return np.maximum(db, db.max() - TOP_DB).T


def _inputs():
    rng = np.random.default_rng(1234)
    t = np.arange(TEN_SECONDS) / SR
    return {
        "noise": 0.1 * rng.standard_normal(TEN_SECONDS),
        "uniform": rng.uniform(-1.0, 1.0, TEN_SECONDS),
        "tone": np.sin(2 * np.pi * 440.0 * t),
        "chirp": np.sin(2 * np.pi * (100.0 + 300.0 * t) * t),
        "short_noise": rng.standard_normal(4321),
    }


INPUTS = _inputs()


@pytest.fixture(scope="module")
def frontend():
    return log_mel_frontend()


# ---- numerics --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_matches_numpy_reference(frontend, name):
    wave = INPUTS[name].astype(np.float32)
    ref = np_log_mel(wave)
    out = frontend(torch.from_numpy(wave))[0].numpy()
    assert out.shape == ref.shape == (N_MELS, num_frames(len(wave)))
    err = np.abs(out.astype(np.float64) - ref)
    # float32 STFT rounding noise sits ~140 dB below a frame's energy, so bins far below the
    # maximum (pure-tone leakage) are only accurate to ~0.1 dB; the contract is 1e-3 dB for
    # everything within 60 dB of the maximum.
    strong = ref > ref.max() - 60.0
    assert err[strong].max() < 1e-3
    assert err.max() < 0.25


def test_batched_equals_numpy_reference(frontend):
    waves = np.stack([INPUTS[k] for k in ("noise", "uniform", "tone")]).astype(np.float32)
    out = frontend(torch.from_numpy(waves)).numpy()
    for b, wave in enumerate(waves):
        ref = np_log_mel(wave)
        strong = ref > ref.max() - 60.0
        assert np.abs(out[b] - ref)[strong].max() < 1e-3


def test_ten_seconds_give_1001_frames(frontend):
    assert frontend(torch.zeros(2, TEN_SECONDS)).shape == (2, N_MELS, 1001)
    assert num_frames(TEN_SECONDS) == FrontendConfig().num_frames(TEN_SECONDS) == 1001


def test_single_clip_gets_batch_dim(frontend):
    wave = torch.from_numpy(INPUTS["noise"][:SR].astype(np.float32))
    single = frontend(wave)
    assert single.shape == (1, N_MELS, 101)
    torch.testing.assert_close(single, frontend(wave[None]), rtol=0, atol=1e-4)


def test_filterbank_buffer_equals_numpy_filterbank(frontend):
    fb = frontend[0].mel_scale.fb
    assert fb.shape == (257, N_MELS) and fb.dtype == torch.float32
    np.testing.assert_allclose(fb.numpy(), np_filterbank(), rtol=0, atol=6e-8)
    assert mel_filterbank(257, 0.0, 8000.0, N_MELS, SR).equal(fb)


def test_filterbank_close_to_torchaudio_float32_evaluation(frontend):
    # torchaudio.functional.melscale_fbanks evaluates the formula in float32; checkpoints carry
    # that buffer. Pin how far it is from ours (replicated op for op, float32).
    all_freqs = torch.linspace(0, SR // 2, 257)
    m_pts = torch.linspace(0.0, 2595.0 * math.log10(1.0 + 8000.0 / 700.0), N_MELS + 2)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    torchaudio_fb = torch.max(torch.zeros(1), torch.min(down, up))
    torch.testing.assert_close(frontend[0].mel_scale.fb, torchaudio_fb, rtol=0, atol=1e-5)


def test_window_is_periodic_hann(frontend):
    window = frontend[0].spectrogram.window
    np.testing.assert_allclose(window.numpy(), np_periodic_hann(), rtol=0, atol=1e-6)


# ---- top-dB floor per example ------------------------------------------------------------------


def test_top_db_floor_is_per_example(frontend):
    rng = np.random.default_rng(7)
    quiet = np.zeros(TEN_SECONDS, np.float32)
    quiet[: TEN_SECONDS // 2] = 1e-3 * rng.standard_normal(TEN_SECONDS // 2)
    loud = (1e3 * rng.standard_normal(TEN_SECONDS)).astype(np.float32)
    alone = [frontend(torch.from_numpy(w)[None])[0] for w in (quiet, loud)]
    batched = frontend(torch.from_numpy(np.stack([quiet, loud])))
    # teeth: a floor taken over the whole batch would cut into the quiet example
    assert alone[0].min() < alone[1].max() - TOP_DB
    for b in range(2):
        torch.testing.assert_close(batched[b], alone[b], rtol=0, atol=1e-4)


def test_floor_sits_exactly_top_db_below_example_max():
    power = torch.tensor([[[1e3, 1e-30], [1.0, 0.0]], [[1e-2, 1e-30], [0.0, 0.0]]])
    db = AmplitudeToDB(top_db=TOP_DB)(power)
    expected = torch.tensor([[[30.0, -90.0], [0.0, -90.0]], [[-20.0, -100.0], [-100.0, -100.0]]])
    torch.testing.assert_close(db, expected)


# ---- dtype, devices, structure ---------------------------------------------------------------


def test_float32_under_bfloat16_autocast(frontend):
    wave = torch.from_numpy(INPUTS["noise"][: 2 * SR].astype(np.float32)).reshape(2, SR)
    plain = frontend(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = frontend(wave)
        from_bf16_input = frontend(wave.bfloat16())
    assert under_autocast.dtype == from_bf16_input.dtype == torch.float32
    assert torch.equal(under_autocast, plain)


def test_float64_input_gives_float32(frontend):
    assert frontend(torch.zeros(1, SR, dtype=torch.float64)).dtype == torch.float32


def test_state_dict_keys_match_checkpoints(frontend):
    state = frontend.state_dict()
    assert set(state) == {"0.spectrogram.window", "0.mel_scale.fb"}
    assert state["0.spectrogram.window"].shape == (512,)
    assert state["0.mel_scale.fb"].shape == (257, 64)
    assert not list(frontend.parameters())
    fresh = log_mel_frontend()
    fresh.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(frontend):
    waves = torch.from_numpy(np.stack([INPUTS["noise"], INPUTS["tone"]]).astype(np.float32))
    on_gpu = log_mel_frontend().cuda()(waves.cuda()).cpu()
    torch.testing.assert_close(on_gpu, frontend(waves), rtol=0, atol=1e-3)


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 1, SR), r"expected a waveform \[B, S\] or \[S\], got shape \(2, 1, 16000\)"),
        ((), r"expected a waveform \[B, S\] or \[S\], got shape \(\)"),
        ((3, 256), r"expected at least 257 samples per clip \(reflect padding\), got 256"),
    ],
)
def test_bad_input_shapes(frontend, shape, message):
    with pytest.raises(ValueError, match=message):
        frontend(torch.zeros(shape))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_fft": 0}, r"FrontendConfig.n_fft: expected a positive int, got 0"),
        ({"n_mels": 6.4}, r"FrontendConfig.n_mels: expected a positive int, got 6.4"),
        ({"hop_length": True}, r"FrontendConfig.hop_length: expected a positive int, got True"),
        ({"win_length": 1024}, r"FrontendConfig.win_length: expected at most n_fft=512, got 1024"),
        ({"f_max": 9000.0}, r"0 <= f_min < f_max <= sample_rate / 2 = 8000.0, got f_min=0.0"),
        ({"f_min": 8000.0}, r"got f_min=8000.0, f_max=8000.0"),
        ({"top_db": 0.0}, r"FrontendConfig.top_db: expected > 0, got 0.0"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        log_mel_frontend(**kwargs)
    with pytest.raises(ValueError, match=message):
        FrontendConfig(**kwargs)


def test_unknown_setting_is_a_type_error():
    with pytest.raises(TypeError, match="power"):
        log_mel_frontend(power=1.0)


def test_config_to_dict_round_trips():
    cfg = FrontendConfig()
    assert cfg.to_dict() == {
        "sample_rate": 16000, "n_fft": 512, "win_length": 512, "hop_length": 160,
        "n_mels": 64, "f_min": 0.0, "f_max": 8000.0, "top_db": 120.0,
    }
    assert FrontendConfig(**cfg.to_dict()) == cfg


def test_mel_spectrogram_custom_settings():
    mel = MelSpectrogram(n_mels=32, f_max=4000.0)
    assert mel(torch.randn(1, SR)).shape == (1, 32, 101)
    assert mel.mel_scale.fb.shape == (257, 32)


def test_docstring_examples():
    assert doctest.testmod(ced_train.frontend).failed == 0


# ---- sub-batches on the CPU --------------------------------------------------------------------


def _whole_batch(frontend, waves):
    """The frontend's modules applied to the whole batch in one call (no sub-batches)."""
    return torch.nn.Sequential.forward(frontend, waves)


@pytest.mark.parametrize("num_clips, step", [(5, 2), (6, 3), (7, 1), (3, 4)])
def test_sub_batches_equal_one_call_and_per_clip_bit_for_bit(frontend, monkeypatch, num_clips, step):
    # rows of very different level, so a floor shared across a sub-batch boundary would show
    rng = np.random.default_rng(num_clips)
    scales = 10.0 ** rng.uniform(-4, 3, num_clips)
    waves = torch.from_numpy((scales[:, None] * rng.standard_normal((num_clips, 3 * SR))).astype(np.float32))
    monkeypatch.setattr(ced_train.frontend, "SUB_BATCH_SAMPLES", step * 3 * SR)
    out = frontend(waves)
    assert torch.equal(out, _whole_batch(frontend, waves))
    assert torch.equal(out, torch.cat([frontend(wave) for wave in waves]))


def test_default_sub_batch_is_one_ten_second_clip(frontend):
    assert ced_train.frontend.SUB_BATCH_SAMPLES == TEN_SECONDS
    waves = torch.from_numpy(np.stack([INPUTS[k] for k in ("noise", "uniform", "tone")]).astype(np.float32))
    assert torch.equal(frontend(waves), _whole_batch(frontend, waves))


def test_short_clips_share_a_sub_batch_across_its_end(frontend):
    # 4321 samples: 37 clips per sub-batch, so 40 clips are split 37 + 3
    rng = np.random.default_rng(3)
    waves = torch.from_numpy(rng.standard_normal((40, 4321)).astype(np.float32))
    assert TEN_SECONDS // 4321 == 37
    out = frontend(waves)
    assert torch.equal(out, _whole_batch(frontend, waves))
    assert torch.equal(out[36:38], frontend(waves[36:38]))


def test_sub_batches_keep_gradients(frontend, monkeypatch):
    monkeypatch.setattr(ced_train.frontend, "SUB_BATCH_SAMPLES", SR)
    waves = torch.randn(3, SR, generator=torch.Generator().manual_seed(5), requires_grad=True)
    frontend(waves).sum().backward()
    expected = waves.detach().clone().requires_grad_(True)
    _whole_batch(frontend, expected).sum().backward()
    assert torch.equal(waves.grad, expected.grad)


def test_large_cpu_batch_reaches_the_stft_in_sub_batches():
    # the regression: 16 clips in one STFT call page-faulted its buffers in afresh every call
    frontend = log_mel_frontend()
    seen = []
    frontend[0].register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    frontend(torch.zeros(5, TEN_SECONDS))
    frontend(torch.zeros(25, SR))
    assert seen == [(1, TEN_SECONDS)] * 5 + [(10, SR), (10, SR), (5, SR)]


# ---- per-thread scratch for the STFT's buffers --------------------------------------------------


def _plain_power_mel(mel_spectrogram, waves):
    """MelSpectrogram's result through torch.stft, without the scratch buffers."""
    return mel_spectrogram.mel_scale(mel_spectrogram.spectrogram(waves))


def _in_new_thread(fn):
    """Run ``fn`` in a fresh thread (fresh scratch) and return its result."""
    result = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    return result[0]


def _scratch_buffers():
    return dict(ced_train.frontend._scratch.__dict__.get("buffers", {}))


@pytest.mark.parametrize("grad_mode", ["inference_mode", "no_grad", "enable_grad"])
@pytest.mark.parametrize("num_clips, num_samples", [(1, TEN_SECONDS), (3, SR), (2, 4321), (7, 1000), (1, 257), (40, 4000)])
def test_scratch_path_equals_torch_stft_path_bit_for_bit(frontend, grad_mode, num_clips, num_samples):
    mel = frontend[0]
    rng = np.random.default_rng(num_samples)
    scales = 10.0 ** rng.uniform(-4, 3, (num_clips, 1))
    waves = torch.from_numpy((scales * rng.standard_normal((num_clips, num_samples))).astype(np.float32))
    with getattr(torch, grad_mode)():
        assert mel._may_reuse_scratch(waves)  # teeth: this is the path under test
        assert torch.equal(mel(waves), _plain_power_mel(mel, waves))
        assert torch.equal(frontend(waves), frontend[1](_plain_power_mel(mel, waves)))


def test_results_never_alias_the_scratch(frontend):
    rng = np.random.default_rng(11)
    first_wave, second_wave = (torch.from_numpy(rng.standard_normal((1, SR)).astype(np.float32)) for _ in range(2))
    first_db, first_power = frontend(first_wave), frontend[0](first_wave)
    kept_db, kept_power = first_db.clone(), first_power.clone()
    second_db, second_power = frontend(second_wave), frontend[0](second_wave)
    assert torch.equal(first_db, kept_db) and torch.equal(first_power, kept_power)  # not overwritten
    assert not torch.equal(second_db, first_db)
    assert torch.equal(second_db, frontend[1](_plain_power_mel(frontend[0], second_wave)))
    for result in (first_db, first_power, second_db, second_power):
        start, end = result.data_ptr(), result.data_ptr() + result.nbytes
        for buffer in _scratch_buffers().values():
            assert end <= buffer.data_ptr() or buffer.data_ptr() + buffer.nbytes <= start


def test_scratch_is_kept_across_calls_and_grows_only_when_needed(frontend):
    def run():
        frontend(torch.randn(1, SR))
        first = {role: buf.data_ptr() for role, buf in _scratch_buffers().items()}
        frontend(torch.randn(2, SR // 4))  # fewer samples in all: the same buffers
        same = {role: buf.data_ptr() for role, buf in _scratch_buffers().items()}
        frontend(torch.randn(1, 3 * SR))
        grown = {role: buf.numel() for role, buf in _scratch_buffers().items()}
        return first, same, grown

    first, same, grown = _in_new_thread(run)
    assert set(first) == {"padded", "windowed", "power"} and first == same
    assert grown["windowed"] == num_frames(3 * SR) * N_FFT


def test_scratch_made_in_inference_mode_is_reused_outside_it(frontend):
    def run():
        wave = torch.randn(2, SR, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            inside = frontend(wave)
        outside = frontend(wave)  # would raise on an inference tensor updated in place
        return inside, outside

    inside, outside = _in_new_thread(run)
    assert torch.equal(inside, outside)


def test_concurrent_threads_each_get_their_own_scratch(frontend):
    rng = np.random.default_rng(5)
    waves = [torch.from_numpy(rng.standard_normal((1, SR)).astype(np.float32)) for _ in range(2)]
    expected = [frontend[1](_plain_power_mel(frontend[0], w)) for w in waves]
    barrier, failures = threading.Barrier(2), []

    def worker(i):
        barrier.wait()
        for _ in range(20):
            if not torch.equal(frontend(waves[i]), expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


@pytest.mark.parametrize(
    "case",
    ["requires_grad", "longer_than_a_sub_batch", "win_length_below_n_fft", "float64_buffers"],
)
def test_torch_stft_path_where_scratch_does_not_apply(case):
    mel, waves = MelSpectrogram(), torch.randn(2, SR)
    if case == "requires_grad":
        waves.requires_grad_(True)
    elif case == "longer_than_a_sub_batch":
        waves = torch.randn(1, TEN_SECONDS + 1)
    elif case == "win_length_below_n_fft":
        mel = MelSpectrogram(win_length=400)
    else:
        mel = mel.double()
    assert not mel._may_reuse_scratch(waves)
    assert torch.equal(mel(waves), _plain_power_mel(mel, waves.float()))


@pytest.mark.parametrize("with_max_db", [False, True])
def test_to_db_in_place_equals_out_of_place_bit_for_bit(with_max_db):
    rng = np.random.default_rng(9)
    power = torch.from_numpy((10.0 ** rng.uniform(-16, 4, (3, N_MELS, 333))).astype(np.float32))
    power[0, :, :5] = 0.0  # below AMIN
    max_db = torch.tensor([[[30.0]], [[-5.0]], [[12.5]]]) if with_max_db else None
    to_db, out = AmplitudeToDB(TOP_DB), torch.full_like(power, float("nan"))
    expected = to_db(power, max_db)
    assert to_db(power, max_db, out=out) is out
    assert torch.equal(out, expected)


def test_a_single_clip_call_equals_the_whole_batch_path(frontend):
    wave = torch.from_numpy(INPUTS["chirp"][:SR].astype(np.float32))
    assert torch.equal(frontend(wave), _whole_batch(frontend, wave[None]))


def test_a_learnable_filterbank_keeps_its_gradient():
    frontend = log_mel_frontend()
    frontend[0].mel_scale.fb.requires_grad_(True)  # e.g. fine-tuning the filterbank
    waves = torch.randn(2, SR, generator=torch.Generator().manual_seed(8))
    frontend(waves).sum().backward()
    grad = frontend[0].mel_scale.fb.grad
    frontend[0].mel_scale.fb.grad = None
    _whole_batch(frontend, waves).sum().backward()
    assert grad is not None and torch.equal(grad, frontend[0].mel_scale.fb.grad)
