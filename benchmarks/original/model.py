"""The original's ``AudioTransformer`` (CED-Tiny/Mini/...), op for op, without torchaudio/einops.

See the package docstring for provenance. ``pooling="logit"`` is the students' head (the train
configs), ``pooling="mean"`` (sigmoid of the mean-pooled tokens) the teachers' default.
"""

from __future__ import annotations

import math

import torch
from torch import nn

VARIANTS = {"tiny": (192, 3), "mini": (256, 4), "small": (384, 6), "base": (768, 12)}


def _melscale_fbanks(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk"), float32 as there."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min, m_max = (2595.0 * math.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    f_pts = 700.0 * (10 ** (torch.linspace(m_min, m_max, n_mels + 2) / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down, up = (-1.0 * slopes[:, :-2]) / f_diff[:-1], slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down, up))


class FrontEnd(nn.Module):
    """torchaudio MelSpectrogram(n_fft=512, hop 160, 64 mels, 0-8 kHz) + AmplitudeToDB(top_db=120).

    As torchaudio: ``|stft|`` then ``pow(2)``, mel as ``(spec^T @ fb)^T``, and the top-dB floor
    taken over the whole batch of a (B, F, T) input. Autocast is off inside, as in the original.
    """

    def __init__(self, n_mels: int = 64) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(512))
        self.register_buffer("fb", _melscale_fbanks(257, 0.0, 8000.0, n_mels, 16_000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.stft(x, 512, 160, 512, self.window, center=True, pad_mode="reflect",
                              normalized=False, onesided=True, return_complex=True).abs().pow(2.0)
            mel = torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)
            db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10)) - 10.0 * math.log10(1.0)
            shape = db.size()
            packed = db.reshape(-1, shape[-3], shape[-2], shape[-1])
            packed = torch.max(packed, (packed.amax(dim=(-3, -2, -1)) - 120.0).view(-1, 1, 1, 1))
            return packed.reshape(shape)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop, self.proj, self.proj_drop = nn.Dropout(0.0), nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.drop = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, num_heads)
        self.ls1, self.drop_path1 = nn.Identity(), nn.Identity()  # drop_path_rate 0
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)
        self.ls2, self.drop_path2 = nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class AudioPatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj, self.norm = nn.Conv2d(1, dim, 16, stride=16), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class _Swap12(nn.Module):  # einops Rearrange('b c f t -> b f c t') and back
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class AudioTransformer(nn.Module):
    """The original's ViT: frontend, per-mel BatchNorm, 16x16 patches, 12 blocks, mean pooling."""

    def __init__(self, variant: str = "tiny", num_classes: int = 527, pooling: str = "logit",
                 target_length: int = 1012, n_mels: int = 64) -> None:
        super().__init__()
        dim, heads = VARIANTS[variant]
        self.pooling, self.target_length = pooling, target_length
        self.front_end = FrontEnd(n_mels)
        self.init_bn = nn.Sequential(_Swap12(), nn.BatchNorm2d(n_mels, momentum=0.01), _Swap12())
        self.patch_embed = AudioPatchEmbed(dim)
        self.time_pos_embed = nn.Parameter(torch.randn(1, dim, 1, target_length // 16) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, dim, n_mels // 16, 1) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(12)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.outputlayer = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + self.time_pos_embed[:, :, :, : x.shape[-1]]
        x = x + self.freq_pos_embed[:, :, :, :]
        x = self.pos_drop(x.flatten(2).transpose(1, 2))  # 'b c f t -> b (f t) c'
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.outputlayer(x.mean(1))
        return x if self.pooling == "logit" else x.sigmoid()

    def forward_spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        x = self.init_bn(x.unsqueeze(1))  # 'b f t -> b 1 f t'
        if x.shape[-1] > self.target_length:  # chunked, last chunk zero-padded (pad_last)
            splits = list(x.split(self.target_length, -1))
            if splits[-1].shape[-1] < self.target_length:
                pad = torch.zeros(*x.shape[:-1], self.target_length, device=x.device)
                pad[..., : splits[-1].shape[-1]] = splits[-1]
                splits[-1] = pad
            stacked = torch.stack(splits, dim=0)
            out = self.forward_head(self.forward_features(stacked.flatten(0, 1)))
            return out.unflatten(0, (len(splits), -1)).mean(0)
        return self.forward_head(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_spectrogram(self.front_end(x))
