"""SimVP next-frame predictor (Gao et al., CVPR 2022; SimVP v2, arXiv 2211.12509). Torch only.

Shape convention: inputs and outputs are (B, T, C, H, W). One strided-conv encoder is shared by
all frames, a translator mixes time on the time-folded tensor (B, T·hid_S, H', W'), and a
decoder with a skip from the first encoder layer maps every frame back. Encoder/decoder follow
the OpenSTL layout (3×3 conv → GroupNorm(2) → SiLU, stride 2 on every second layer, upsampling
by conv + PixelShuffle(2), additive skip) for both translators:

- ``"gsta"`` (v2): N_T gated-spatiotemporal-attention blocks (large-kernel attention + MLP, layer
  scale 1e-2), the first widening T·hid_S → hid_T, the last narrowing back;
- ``"incepu"`` (v1): an Inception U-Net of 2·N_T Inception blocks (grouped 3/5/7/11 convs).

With hid_S 64, hid_T 512, N_S 4, N_T 8 and 10×1×64×64 inputs the parameter counts are 46.8 M
(gSTA) and 58.0 M (IncepU), as published. :data:`CPU_DEFAULT` is a small size that trains on a
CPU. Inputs whose H, W are not multiples of ``2 ** (N_S // 2)`` are padded (replicate) and the
output cropped back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

TRANSLATORS = ("gsta", "incepu")


@dataclass(frozen=True)
class SimVPConfig:
    """Architecture of a :class:`SimVP`.

    Attributes:
        frames: input frames T (the translator's width is T·hid_S, so T is fixed at build time).
        channels: image channels C.
        hid_S: encoder/decoder width; hid_T: translator width.
        N_S: encoder (and decoder) layers; spatial stride is 2 ** (N_S // 2).
        N_T: translator depth (gSTA blocks, or Inception blocks per U-Net half).
        translator: ``"gsta"`` or ``"incepu"``.
        mlp_ratio: gSTA MLP expansion; drop_path: gSTA stochastic depth rate (max, linear ramp).
    """

    frames: int = 4
    channels: int = 1
    hid_S: int = 16
    hid_T: int = 64
    N_S: int = 2
    N_T: int = 2
    translator: str = "gsta"
    mlp_ratio: float = 4.0
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        if self.translator not in TRANSLATORS:
            raise ValueError(f"translator must be one of {TRANSLATORS}, got {self.translator!r}")
        for name in ("frames", "channels", "hid_S", "hid_T", "N_S", "N_T"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.N_T < 2:
            raise ValueError("N_T must be at least 2 (first and last translator blocks)")
        if self.hid_S % 2 or self.hid_T % 2:
            raise ValueError("hid_S and hid_T must be even (GroupNorm with 2 groups)")

    def to_dict(self) -> dict:
        return asdict(self)


#: the published sizes (Moving-MNIST configuration) for the fidelity check and benchmarks
MMNIST = dict(hid_S=64, hid_T=512, N_S=4, N_T=8, mlp_ratio=8.0)
#: a size that trains in minutes on a CPU at 64×64 (about 0.2 M parameters at T = 4)
CPU_DEFAULT = dict(hid_S=16, hid_T=64, N_S=2, N_T=2, mlp_ratio=4.0)


class ConvNormAct(nn.Module):
    """3×3 conv (stride 2 to go down, or conv to 4× channels + PixelShuffle to go up) → GN(2) → SiLU."""

    def __init__(self, c_in: int, c_out: int, down: bool = False, up: bool = False, k: int = 3):
        super().__init__()
        if up:
            self.conv = nn.Sequential(nn.Conv2d(c_in, 4 * c_out, k, padding=k // 2), nn.PixelShuffle(2))
        else:
            self.conv = nn.Conv2d(c_in, c_out, k, stride=2 if down else 1, padding=k // 2)
        self.norm = nn.GroupNorm(2, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


class Encoder(nn.Module):
    """Frame encoder; returns the latent and the first layer's output (the skip)."""

    def __init__(self, c_in: int, hid: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            ConvNormAct(c_in if i == 0 else hid, hid, down=(i % 2 == 1)) for i in range(layers))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = layer(x)
        return x, skip


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`; the skip is added before the last layer, then a 1×1 read-out."""

    def __init__(self, hid: int, c_out: int, layers: int):
        super().__init__()
        downs = [i % 2 == 1 for i in range(layers)]
        self.layers = nn.ModuleList(ConvNormAct(hid, hid, up=u) for u in reversed(downs))
        self.readout = nn.Conv2d(hid, c_out, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = layer(x)
        return self.readout(self.layers[-1](x + skip))


# ---- gSTA translator -------------------------------------------------------------------------

class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability p (training)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


class LargeKernelGate(nn.Module):
    """Depthwise 5×5 → depthwise 7×7 dilated 3 → 1×1 to 2·dim, output sigmoid(g)·f."""

    def __init__(self, dim: int):
        super().__init__()
        self.local = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.wide = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.mix = nn.Conv2d(dim, 2 * dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, g = self.mix(self.wide(self.local(x))).chunk(2, dim=1)
        return torch.sigmoid(g) * f


class GatedAttention(nn.Module):
    """1×1 → GELU → :class:`LargeKernelGate` → 1×1, plus the input (attention shortcut)."""

    def __init__(self, dim: int):
        super().__init__()
        self.inp = nn.Conv2d(dim, dim, 1)
        self.gate = LargeKernelGate(dim)
        self.out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.gate(F.gelu(self.inp(x))))


class ConvMlp(nn.Module):
    """1×1 expand → depthwise 3×3 → GELU → 1×1 project."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.dw(self.fc1(x))))


class GSTABlock(nn.Module):
    """x + DropPath(ls1·Attn(BN x)); x + DropPath(ls2·MLP(BN x)); then a 1×1 if the width changes."""

    def __init__(self, c_in: int, c_out: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.attn = GatedAttention(c_in)
        self.norm2 = nn.BatchNorm2d(c_in)
        self.mlp = ConvMlp(c_in, mlp_ratio)
        self.ls1 = nn.Parameter(torch.full((c_in, 1, 1), 1e-2))
        self.ls2 = nn.Parameter(torch.full((c_in, 1, 1), 1e-2))
        self.drop = DropPath(drop_path)
        self.reduce = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.ls1 * self.attn(self.norm1(x)))
        x = x + self.drop(self.ls2 * self.mlp(self.norm2(x)))
        return self.reduce(x)


class GSTATranslator(nn.Module):
    def __init__(self, c_in: int, hid: int, depth: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        widths = [c_in] + [hid] * (depth - 1) + [c_in]
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*(GSTABlock(widths[i], widths[i + 1], mlp_ratio, rates[i]) for i in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


# ---- IncepU translator -----------------------------------------------------------------------

class Inception(nn.Module):
    """1×1 to ``c_hid``, then the sum of grouped k×k convs (k in 3, 5, 7, 11) → GN → LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_hid: int, c_out: int, kernels=(3, 5, 7, 11), groups: int = 8):
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, c_hid, 1)
        g = groups if c_hid % groups == 0 and c_out % groups == 0 else 1
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_hid, c_out, k, padding=k // 2, groups=g), nn.GroupNorm(g, c_out),
                          nn.LeakyReLU(0.2)) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return sum(branch(x) for branch in self.branches)


class IncepUTranslator(nn.Module):
    """U-Net of Inception blocks: N_T down, N_T up with skips concatenated."""

    def __init__(self, c_in: int, hid: int, depth: int):
        super().__init__()
        half = max(hid // 2, 1)
        self.down = nn.ModuleList(Inception(c_in if i == 0 else hid, half, hid) for i in range(depth))
        self.up = nn.ModuleList(
            Inception(hid if i == 0 else 2 * hid, half, c_in if i == depth - 1 else hid) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
        x = self.up[0](x)
        for block in self.up[1:]:
            x = block(torch.cat([x, skips.pop()], dim=1))
        return x


# ---- the model -------------------------------------------------------------------------------

class SimVP(nn.Module):
    """SimVP: (B, T, C, H, W) → (B, T, C, H, W), the next T frames (see the module docstring).

    Use :meth:`predict` for a different number of target frames than ``config.frames``.
    """

    def __init__(self, config: SimVPConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else SimVPConfig(**kwargs)
        c = self.config
        self.stride = 2 ** (c.N_S // 2)
        self.encoder = Encoder(c.channels, c.hid_S, c.N_S)
        if c.translator == "gsta":
            self.translator: nn.Module = GSTATranslator(c.frames * c.hid_S, c.hid_T, c.N_T, c.mlp_ratio, c.drop_path)
        else:
            self.translator = IncepUTranslator(c.frames * c.hid_S, c.hid_T, c.N_T)
        self.decoder = Decoder(c.hid_S, c.channels, c.N_S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.frames or x.shape[2] != c.channels:
            raise ValueError(f"expected input (B, {c.frames}, {c.channels}, H, W), got {tuple(x.shape)}")
        b, t, ch, h, w = x.shape
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x.reshape(b * t, ch, h, w), (0, pw, 0, ph), mode="replicate").reshape(b, t, ch, h + ph, w + pw)
        hp, wp = h + ph, w + pw
        z, skip = self.encoder(x.reshape(b * t, ch, hp, wp))
        _, hid, hz, wz = z.shape
        z = self.translator(z.reshape(b, t * hid, hz, wz)).reshape(b * t, hid, hz, wz)
        y = self.decoder(z, skip).reshape(b, t, ch, hp, wp)
        return y[..., :h, :w]

    def predict(self, context: torch.Tensor, target_frames: int) -> torch.Tensor:
        """Predict ``target_frames`` frames after ``context`` (B, T, C, H, W): the first outputs if
        fewer than T, else rolled out by feeding predictions back, T frames at a time."""
        if target_frames < 1:
            raise ValueError("target_frames must be at least 1")
        out, x = [], context
        while sum(o.shape[1] for o in out) < target_frames:
            y = self(x)
            out.append(y)
            x = y
        return torch.cat(out, dim=1)[:, :target_frames]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
