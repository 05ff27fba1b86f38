"""Log-mel frontend: 16 kHz waveform -> 64-bin log-mel spectrogram in dB.

The numerics are those of torchaudio's ``MelSpectrogram`` + ``AmplitudeToDB`` defaults used by
the published CED checkpoints (periodic Hann window, ``center=True`` reflect padding, power
spectrum, HTK mel scale without filter normalisation), reimplemented on ``torch.stft`` so that
torchaudio is not a dependency. One deliberate difference: the top-dB floor is taken per example,
never across the batch, so an example's features do not depend on its batch neighbours.

The module tree mirrors the checkpoints' ``front_end`` so that their two buffers load as is::

    log_mel_frontend()              # LogMelFrontend, an nn.Sequential
      0: MelSpectrogram
           spectrogram: Spectrogram   buffer window [win_length]
           mel_scale:   MelScale      buffer fb     [n_fft // 2 + 1, n_mels]
      1: AmplitudeToDB                (no state)
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = [
    "AmplitudeToDB",
    "FrontendConfig",
    "LogMelFrontend",
    "MelScale",
    "MelSpectrogram",
    "Spectrogram",
    "log_mel_frontend",
    "mel_filterbank",
    "num_frames",
]

AMIN = 1e-10  # power floor before log10, as torchaudio's AmplitudeToDB
# Samples per sub-batch on the CPU: one 10 s clip, or ten 1 s clips. glibc hands the STFT
# buffers of a larger call (megabytes each) back to the OS when they are freed, so the next call
# page-faults them in afresh: 16 clips in one call cost ~14,000 page faults and ran at 0.63x a
# clip-by-clip loop. Sub-batches of this size allocate as the loop does, keep the working set
# (~6 MB a clip) in cache and bound the scratch below; with the scratch, sub-batches of 2-16
# clips still cost 5-20 % more CPU time per clip than one clip.
SUB_BATCH_SAMPLES = 160_000
# Per-thread scratch for the padded input, the windowed frames and the power spectrum of CPU
# calls of at most SUB_BATCH_SAMPLES samples (~3.7 MB for one 10 s clip). Whether glibc keeps a
# freed multi-megabyte buffer or hands it back to the OS depends on the process's earlier
# allocations (its mmap threshold rises only when a chunk of at most 32 MB is freed): in a process
# whose big tensors had been over 32 MB, every call page-faulted ~1,000 pages afresh per 10 s clip
# and ran 2.2x slower than with the scratch (benchmarks/frontend.py makes that state first).
# Buffers kept across calls cannot be handed back. Per thread, so concurrent calls never share.
_scratch = threading.local()


@dataclass(frozen=True)
class FrontendConfig:
    """Settings of the log-mel frontend; the defaults are those of the CED checkpoints.

    Args:
        sample_rate: input sample rate in Hz.
        n_fft: FFT size; the spectrogram has ``n_fft // 2 + 1`` frequency bins.
        win_length: periodic Hann window length in samples (at most ``n_fft``).
        hop_length: frame hop in samples.
        n_mels: number of mel bins.
        f_min: lowest mel filter edge in Hz.
        f_max: highest mel filter edge in Hz (at most ``sample_rate / 2``).
        top_db: dynamic range kept below each example's maximum, in dB.

    Raises:
        ValueError: if a setting is out of range.

    Example:
        >>> FrontendConfig().num_frames(160_000)
        1001
    """

    sample_rate: int = 16_000
    n_fft: int = 512
    win_length: int = 512
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8_000.0
    top_db: float = 120.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FrontendConfig.{name}: expected a positive int, got {value!r}")
        if self.win_length > self.n_fft:
            raise ValueError(
                f"FrontendConfig.win_length: expected at most n_fft={self.n_fft}, "
                f"got {self.win_length}"
            )
        if not 0.0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"FrontendConfig: expected 0 <= f_min < f_max <= sample_rate / 2 = "
                f"{self.sample_rate / 2}, got f_min={self.f_min}, f_max={self.f_max}"
            )
        if not self.top_db > 0:
            raise ValueError(f"FrontendConfig.top_db: expected > 0, got {self.top_db!r}")

    def to_dict(self) -> dict:
        """Return the settings as a plain dict (JSON-serialisable, for metadata)."""
        return asdict(self)

    def num_frames(self, num_samples: int) -> int:
        """Return the number of frames the frontend gives for ``num_samples`` samples."""
        return num_frames(num_samples, self.hop_length)


def num_frames(num_samples: int, hop_length: int = 160) -> int:
    """Return the number of STFT frames for a clip (``center=True``).

    Args:
        num_samples: clip length in samples.
        hop_length: frame hop in samples.

    Returns:
        ``num_samples // hop_length + 1``.

    Example:
        >>> num_frames(160_000)
        1001
    """
    return num_samples // hop_length + 1


def mel_filterbank(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int
) -> torch.Tensor:
    """Return the HTK-scale triangular mel filterbank, unnormalised, as [n_freqs, n_mels].

    Same formula as ``torchaudio.functional.melscale_fbanks(..., norm=None, mel_scale="htk")``,
    evaluated in float64 and rounded once to float32. torchaudio evaluates it in float32, so the
    ``mel_scale.fb`` buffer of checkpoints made with it differs from ours by up to about 6e-6
    (that rounding error moves a tone at a filter's tip by up to ~0.01 dB; ours does not).

    Args:
        n_freqs: number of STFT bins, ``n_fft // 2 + 1``, spanning 0 .. sample_rate / 2.
        f_min: lower edge of the first filter in Hz.
        f_max: upper edge of the last filter in Hz.
        n_mels: number of filters.
        sample_rate: sample rate in Hz.

    Returns:
        float32 tensor [n_freqs, n_mels]; column m is the triangle of mel bin m.

    Example:
        >>> mel_filterbank(257, 0.0, 8000.0, 64, 16000).shape
        torch.Size([257, 64])
    """
    f64 = torch.float64
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=f64)
    m_min = 2595.0 * math.log10(1.0 + f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    m_pts = torch.linspace(m_min, m_max, n_mels + 2, dtype=f64)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)  # filter edges/centres in Hz
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).to(torch.float32)


def _autocast_off(device: torch.device):
    """Disable autocast for ``device``; the frontend is always computed in float32."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class Spectrogram(nn.Module):
    """Power STFT with a periodic Hann window, ``center=True`` and reflect padding.

    Args:
        n_fft: FFT size.
        win_length: window length in samples (at most ``n_fft``).
        hop_length: frame hop in samples.

    Example:
        >>> Spectrogram(512, 512, 160)(torch.randn(2, 16000)).shape
        torch.Size([2, 257, 101])
    """

    def __init__(self, n_fft: int = 512, win_length: int = 512, hop_length: int = 160) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Map float32 ``wave`` [B, S] to the power spectrogram [B, n_fft // 2 + 1, T]."""
        spec = torch.stft(
            wave,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        # re² + im²: |z|² without abs()'s sqrt, which is several times slower on CPU; in place,
        # to keep one buffer fewer alive (square() saves its input for backward, not its output)
        return spec.real.square().addcmul_(spec.imag, spec.imag)


class MelScale(nn.Module):
    """Apply a triangular mel filterbank held in the buffer ``fb`` [n_freqs, n_mels].

    Example:
        >>> MelScale(mel_filterbank(257, 0.0, 8000.0, 64, 16000))(torch.rand(2, 257, 5)).shape
        torch.Size([2, 64, 5])
    """

    def __init__(self, fb: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("fb", fb)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """Map ``spec`` [B, n_freqs, T] to mel bins [B, n_mels, T]."""
        return torch.matmul(self.fb.transpose(0, 1), spec)  # (n_mels, F) @ (B, F, T)


class MelSpectrogram(nn.Module):
    """Waveform to power mel spectrogram, always in float32 (autocast is disabled inside).

    Args:
        sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max: as in
            :class:`FrontendConfig`.

    Raises:
        ValueError: for invalid settings; in ``forward``, for input that is not [S] or
            [B, S] or is too short for reflect padding (at most ``n_fft // 2`` samples).

    Example:
        >>> MelSpectrogram()(torch.randn(2, 160_000)).shape
        torch.Size([2, 64, 1001])
    """

    def __init__(
        self,
        sample_rate: int = 16_000,
        n_fft: int = 512,
        win_length: int = 512,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float = 8_000.0,
    ) -> None:
        super().__init__()
        FrontendConfig(sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max)
        self.spectrogram = Spectrogram(n_fft, win_length, hop_length)
        self.mel_scale = MelScale(
            mel_filterbank(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate)
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Map ``wave`` [B, S] (or [S]) to the float32 power mel spectrogram [B, n_mels, T]."""
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform [B, S] or [S], got shape {tuple(wave.shape)}")
        min_samples = self.spectrogram.n_fft // 2 + 1
        if wave.shape[1] < min_samples:
            raise ValueError(
                f"expected at least {min_samples} samples per clip (reflect padding), "
                f"got {wave.shape[1]}"
            )
        with _autocast_off(wave.device):
            if self._may_reuse_scratch(wave):
                return self._forward_in_scratch(wave.float())
            return self.mel_scale(self.spectrogram(wave.float()))  # (B, n_mels, T)

    def _may_reuse_scratch(self, wave: torch.Tensor) -> bool:
        """True where ``_forward_in_scratch`` gives the plain path's result bit for bit."""
        spectrogram, fb = self.spectrogram, self.mel_scale.fb
        return (
            wave.device.type == "cpu"
            and wave.numel() <= SUB_BATCH_SAMPLES
            and spectrogram.win_length == spectrogram.n_fft  # else torch.stft pads the window
            and spectrogram.window.dtype == fb.dtype == torch.float32
            and not (torch.is_grad_enabled() and (wave.requires_grad or fb.requires_grad
                                                  or spectrogram.window.requires_grad))
            and not _is_graph_capture()
        )

    def _forward_in_scratch(self, wave: torch.Tensor) -> torch.Tensor:
        """``mel_scale(spectrogram(wave))`` op for op as ``torch.stft`` runs it, into scratch.

        Every buffer but the FFT's output (allocated inside ``torch.fft``) and the returned mel
        spectrogram is per-thread scratch kept across calls; the result never aliases it.
        """
        num_clips, num_samples = wave.shape
        n_fft, hop = self.spectrogram.n_fft, self.spectrogram.hop_length
        pad, num_frames_ = n_fft // 2, num_frames(num_samples, hop)
        fb = self.mel_scale.fb
        padded = _scratch_buffer("padded", (num_clips, num_samples + 2 * pad))
        padded[:, pad : pad + num_samples] = wave
        padded[:, :pad] = wave[:, 1 : pad + 1].flip(-1)  # reflect padding, as torch.stft's
        padded[:, pad + num_samples :] = wave[:, -pad - 1 : -1].flip(-1)
        frames = padded.as_strided((num_clips, num_frames_, n_fft), (padded.stride(0), hop, 1))
        windowed = torch.mul(frames, self.spectrogram.window,
                             out=_scratch_buffer("windowed", frames.shape))
        spec = torch.fft.rfft(windowed)  # (B, T, n_fft // 2 + 1) complex
        power = torch.square(spec.real, out=_scratch_buffer("power", spec.shape))
        power.addcmul_(spec.imag, spec.imag)
        del spec
        # the plain path's matmul (n_mels, F) @ (B, F, T) runs as exactly this bmm
        mel = power.new_empty((num_clips, fb.shape[1], num_frames_))
        return torch.bmm(fb.T.expand(num_clips, -1, -1), power.mT, out=mel)  # (B, n_mels, T)


def _scratch_buffer(role: str, shape: tuple[int, ...]) -> torch.Tensor:
    """This thread's float32 CPU buffer for ``role`` viewed as ``shape``; its contents are stale."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    numel = math.prod(shape)
    if role not in buffers or buffers[role].numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            buffers[role] = torch.empty(numel)
    return buffers[role][:numel].view(shape)


class AmplitudeToDB(nn.Module):
    """Power to dB, ``10 * log10(max(x, 1e-10))``, floored at ``top_db`` below each example's max.

    The floor is computed over the last two dimensions (mel, time) of each example, so a
    batch gives the same result as its examples one at a time.

    Args:
        top_db: dynamic range kept below each example's maximum, in dB.

    Example:
        >>> AmplitudeToDB()(torch.tensor([[[1.0, 1e-20]]]))
        tensor([[[   0., -100.]]])
    """

    def __init__(self, top_db: float = 120.0) -> None:
        super().__init__()
        self.top_db = top_db

    def forward(
        self, power: torch.Tensor, max_db: torch.Tensor | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Map ``power`` [..., F, T] to float32 dB of the same shape.

        ``max_db``, when given, replaces each example's own maximum dB: a long example streamed
        in pieces passes the whole example's maximum, so each piece is floored as the whole is.
        ``out`` (float32, ``power``'s shape; not for autograd), when given, receives the result,
        computed in place in it: one buffer instead of four, the same bits.
        """
        with _autocast_off(power.device):
            if out is None:
                db = 10.0 * torch.log10(torch.clamp(power.float(), min=AMIN))
            else:
                db = torch.log10(torch.clamp(power.float(), min=AMIN, out=out), out=out).mul_(10.0)
            if max_db is None:
                max_db = db.amax(dim=(-2, -1), keepdim=True)
            return torch.maximum(db, max_db - self.top_db, out=out)


class LogMelFrontend(nn.Sequential):
    """``nn.Sequential(MelSpectrogram, AmplitudeToDB)`` that runs a large CPU batch in pieces.

    On the CPU, a batch of more than ``SUB_BATCH_SAMPLES`` samples is processed in sub-batches
    of whole clips (see ``SUB_BATCH_SAMPLES``), each converted to dB in place in its slice of the
    one output tensor (out of place and copied there where autograd needs it). Every step is per
    example (the top-dB floor too), so the result is bit for bit that of one call on the whole
    batch. CUDA inputs, and graphs being traced, compiled or exported, take the whole batch at
    once.

    Example:
        >>> log_mel_frontend()(torch.zeros(3, 160_000)).shape  # three sub-batches of one clip
        torch.Size([3, 64, 1001])
    """

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Map ``wave`` [B, S] (or [S]) to float32 log-mel dB [B, n_mels, T]."""
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)  # as MelSpectrogram does
        if wave.dim() != 2 or not len(wave) or wave.device.type != "cpu" or _is_graph_capture():
            return super().forward(wave)
        mel_spectrogram, to_db = self
        num_clips, clip_samples = wave.shape
        step = max(1, SUB_BATCH_SAMPLES // max(clip_samples, 1))
        out = None
        for start in range(0, num_clips, step):
            power = mel_spectrogram(wave[start : start + step])  # (step, n_mels, T)
            if out is None:
                out = power.new_empty((num_clips, *power.shape[1:]))
            if power.requires_grad:  # autograd: out of place, copied into the output
                out[start : start + step] = to_db(power)
            else:
                to_db(power, out=out[start : start + step])
        return out


def _is_graph_capture() -> bool:
    """True while torch.jit traces, torch.compile / torch.export capture or ONNX exports."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def log_mel_frontend(**config) -> LogMelFrontend:
    """Build the CED log-mel frontend ``LogMelFrontend(MelSpectrogram, AmplitudeToDB)``.

    Its state dict holds exactly ``0.spectrogram.window`` and ``0.mel_scale.fb``, matching the
    ``front_end.*`` buffers of the published checkpoints.

    Args:
        **config: any :class:`FrontendConfig` field; unspecified fields keep the CED defaults.

    Returns:
        A module mapping a waveform [B, S] (or [S]) to float32 log-mel dB [B, n_mels, T].

    Raises:
        TypeError: for an unknown setting name.
        ValueError: for an invalid setting value.

    Example:
        >>> log_mel_frontend()(torch.randn(2, 160_000)).shape
        torch.Size([2, 64, 1001])
    """
    cfg = FrontendConfig(**config)
    return LogMelFrontend(
        MelSpectrogram(
            cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels, cfg.f_min,
            cfg.f_max,
        ),
        AmplitudeToDB(cfg.top_db),
    )
