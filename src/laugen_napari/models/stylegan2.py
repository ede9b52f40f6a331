"""Conditional StyleGAN2 for joint 2D image + mask generation (seed 003), compact and CPU-sized.

Data convention (shared with the other generators): a pair is ``C_img`` image channels in [0, 1]
followed by ``C_mask`` foreground-label channels (one-hot, background implicit). Inside the GAN
everything lives in [-1, 1]; a generated mask is a softmax over (background logit 0, one logit per
label), so for one label it is a sigmoid, and the discriminator sees the probabilities.

Variants (seed 003 describes three; no code was published, this is written from the paper's text):

- ``baseline``    — one unconditional generator emitting image and mask channels together;
- ``mask-only``   — an unconditional mask generator, then a mask -> image generator (the mask,
  resized, enters every synthesis block); two discriminators: masks alone, and (image, real mask);
- ``conditional`` — generator and discriminator see a condition vector c (here: the slice's
  relative position and the area fraction of every label, see
  :func:`~laugen_napari.training.stylegan2.slice_conditions`); the mapping network embeds c and
  concatenates it with z, the discriminator uses projection (Miyato & Koyama 2018).

StyleGAN2 parts (Karras et al. 2020): mapping network of equalised-lr FC layers, a learned 4x4
constant, modulated/demodulated 3x3 convolutions run as one grouped convolution over the batch,
per-layer noise inputs with learned strength, skip-architecture toRGB outputs (here "to pair"),
a residual discriminator with minibatch standard deviation. Loss: non-saturating logistic, lazy R1
on real samples every ``r1_every`` steps (gamma ``r1_gamma``). Adam lr 2.5e-3, betas (0, 0.99).
Lazy path-length regularisation of the generator(s) every ``pl_every`` steps (weight ``pl_weight``,
StyleGAN2's 2 and 4, batch halved, running mean decay 0.01); here one w feeds every layer, so the
Jacobian norm is taken w.r.t. that single w (StyleGAN2 averages over its per-layer copies of w; the
penalty is relative to its running mean, so only its scale differs). An exponential moving average
of the generator weights (``generator_ema``; half-life ``ema_kimg`` thousand images, ramped up as
``min(ema_kimg * 1000, images seen * ema_rampup)`` as in StyleGAN2-ADA) is what :meth:`StyleGAN2.sample`
uses; ``ema_kimg = 0`` keeps no average (sampling then uses the trained weights).
Omitted (a docstring line, not silence): style mixing and FIR (blur) resampling — nearest/bilinear
resampling is used instead.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("baseline", "mask-only", "conditional")
PRESETS = {
    # ~1 M + ~1 M parameters at 64x64: trains on one CPU core at ~0.5 s per G+D step
    "cpu": dict(z_dim=64, w_dim=64, mapping_layers=2, channel_base=2048, max_channels=128),
    # StyleGAN2 config-f widths at the seed's resolution (needs a GPU)
    "paper": dict(size=256, z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, max_channels=512),
}


@dataclass
class StyleGAN2Config:
    """Hyper-parameters of :class:`StyleGAN2` (defaults = the ``cpu`` preset at 64x64).

    Attributes:
        size: image side in pixels (a power of two >= 8).
        image_channels: modalities C_img; mask_channels: foreground labels C_mask.
        variant: one of :data:`VARIANTS`.
        cond_dim: length of the condition vector (``conditional`` only).
        z_dim, w_dim, mapping_layers: mapping network.
        channel_base, max_channels: channels at resolution r are min(max_channels, channel_base // r).
        r1_gamma, r1_every: lazy R1 regularisation weight and interval (steps).
        lr, betas: Adam settings (seed 003 / StyleGAN2).
        pl_weight, pl_every: lazy path-length regularisation weight and interval (steps); 0 = off.
        ema_kimg: half-life of the generator weights' moving average in thousands of images (0 = no
            average); ema_rampup: the half-life is at most ``images seen * ema_rampup`` (0 = no ramp-up).
        mask_area_weight: weight of the generator's mask-area term (not in seed 003, see
            :func:`laugen_napari.training.stylegan2.mask_area_loss`); 0 = off, the seed's objective
            (also what a checkpoint without the key means); ``laugen train stylegan2`` defaults to 10.
    """

    size: int = 64
    image_channels: int = 1
    mask_channels: int = 1
    variant: str = "conditional"
    cond_dim: int = 2
    z_dim: int = 64
    w_dim: int = 64
    mapping_layers: int = 2
    channel_base: int = 2048
    max_channels: int = 128
    r1_gamma: float = 1.0
    r1_every: int = 16
    lr: float = 2.5e-3
    betas: tuple[float, float] = (0.0, 0.99)
    pl_weight: float = 2.0
    pl_every: int = 4
    ema_kimg: float = 10.0
    ema_rampup: float = 0.05
    mask_area_weight: float = 0.0

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.variant not in VARIANTS:
            raise ValueError(f"StyleGAN2 variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"StyleGAN2 size must be a power of two >= 8, got {self.size}")
        if self.image_channels < 1 or self.mask_channels < 1:
            raise ValueError("StyleGAN2 needs at least one image and one mask channel")
        if self.variant == "conditional" and self.cond_dim < 1:
            raise ValueError("the conditional variant needs cond_dim >= 1")
        if self.r1_every < 1 or self.pl_every < 1:
            raise ValueError("r1_every and pl_every must be at least 1")
        if min(self.pl_weight, self.ema_kimg, self.ema_rampup, self.mask_area_weight) < 0:
            raise ValueError("pl_weight, ema_kimg, ema_rampup and mask_area_weight must be >= 0")

    def ema_beta(self, images_seen: int, batch: int) -> float:
        """Decay of the moving average for one step of ``batch`` images after ``images_seen``
        images: ``0.5 ** (batch / half-life)`` with the half-life ramped up (see the attributes)."""
        if self.ema_kimg <= 0:
            return 0.0
        half = self.ema_kimg * 1000.0
        if self.ema_rampup > 0:
            half = min(half, images_seen * self.ema_rampup)
        return 0.5 ** (batch / max(half, 1e-8))

    def channels(self, res: int) -> int:
        return max(1, min(self.max_channels, self.channel_base // res))

    @property
    def resolutions(self) -> list[int]:
        return [2**k for k in range(2, int(math.log2(self.size)) + 1)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights N(0, 1) scaled by 1/sqrt(fan_in) at run time)."""

    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.scale, self.lr_mul, self.act = lr_mul / math.sqrt(cin), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(y, 0.2) * math.sqrt(2.0) if self.act else y


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale, self.pad = 1.0 / math.sqrt(cin * k * k), k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


class Mapping(nn.Module):
    """z (B, z_dim) [+ condition (B, cond_dim)] -> w (B, w_dim); lr multiplier 0.01 as in StyleGAN."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, cond_dim: int = 0):
        super().__init__()
        self.embed = EqualLinear(cond_dim, z_dim) if cond_dim else None
        cin = z_dim * (2 if cond_dim else 1)
        mods = []
        for _ in range(layers):
            mods.append(EqualLinear(cin, w_dim, lr_mul=0.01, act=True))
            cin = w_dim
        self.net = nn.Sequential(*mods)

    @staticmethod
    def _norm(v: torch.Tensor) -> torch.Tensor:
        return v * torch.rsqrt(v.pow(2).mean(1, keepdim=True) + 1e-8)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self._norm(z)
        if self.embed is not None:
            if c is None:
                raise ValueError("this generator is conditional: give a condition vector")
            h = torch.cat([h, self._norm(self.embed(c))], 1)
        return self.net(h)


class ModulatedConv(nn.Module):
    """3x3 (or 1x1) convolution whose input channels are scaled per sample by a style from w;
    with ``demodulate`` the output is rescaled to unit expected variance. One grouped conv per batch."""

    def __init__(self, cin: int, cout: int, k: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)
        self.scale, self.demodulate, self.k = 1.0 / math.sqrt(cin * k * k), demodulate, k

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, cin, h, wd = x.shape
        style = self.affine(w).view(b, 1, cin, 1, 1)
        weight = self.scale * self.weight * style  # (B, out, in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        cout = weight.shape[1]
        out = F.conv2d(x.reshape(1, b * cin, h, wd), weight.reshape(b * cout, cin, self.k, self.k),
                       padding=self.k // 2, groups=b)
        return out.view(b, cout, h, wd)


class StyledLayer(nn.Module):
    """Modulated conv -> noise (learned strength) -> bias -> leaky ReLU (gain sqrt 2)."""

    def __init__(self, cin: int, cout: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(cin, cout, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        y = self.conv(x, w)
        noise = torch.randn((y.shape[0], 1, y.shape[2], y.shape[3]), generator=generator).to(y)
        return F.leaky_relu(y + self.noise_strength * noise + self.bias, 0.2) * math.sqrt(2.0)


class Synthesis(nn.Module):
    """w -> (B, out_channels, S, S) through resolutions 4 .. S; with ``mask_in`` > 0 a mask
    (B, mask_in, S, S) in [-1, 1] is resized and concatenated to every block's input (mask -> image)."""

    def __init__(self, cfg: StyleGAN2Config, out_channels: int, mask_in: int = 0):
        super().__init__()
        self.mask_in = mask_in
        res = cfg.resolutions
        self.const = nn.Parameter(torch.randn(1, cfg.channels(4), 4, 4))
        self.layers = nn.ModuleList()
        self.to_out = nn.ModuleList()
        cin = cfg.channels(4)
        for i, r in enumerate(res):
            c = cfg.channels(r)
            block = nn.ModuleList([StyledLayer(cin + mask_in, c, cfg.w_dim)])
            if i > 0:
                block.append(StyledLayer(c, c, cfg.w_dim))
            self.layers.append(block)
            self.to_out.append(ModulatedConv(c, out_channels, 1, cfg.w_dim, demodulate=False))
            cin = c
        self.out_bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, w: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.const.expand(w.shape[0], -1, -1, -1)
        skip = None
        for i, (block, to_out) in enumerate(zip(self.layers, self.to_out)):
            if i > 0:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            if self.mask_in:
                x = torch.cat([x, F.interpolate(mask, size=x.shape[-2:], mode="area")], 1)
            for layer in block:
                x = layer(x, w, generator)
            y = to_out(x, w)
            skip = y if skip is None else F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False) + y
        return skip + self.out_bias


class StyleGenerator(nn.Module):
    """Mapping + synthesis; ``forward(z, c, mask)`` gives raw outputs (image in ~[-1, 1], mask logits)."""

    def __init__(self, cfg: StyleGAN2Config, out_channels: int, cond_dim: int = 0, mask_in: int = 0):
        super().__init__()
        self.mapping = Mapping(cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cond_dim)
        self.synthesis = Synthesis(cfg, out_channels, mask_in)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.synthesis(self.mapping(z, c), mask, generator)


class DBlock(nn.Module):
    """Residual discriminator block: two 3x3 convs, 2x average-pool down, 1x1 skip, / sqrt 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.conv2 = EqualConv2d(cin, cin, 3), EqualConv2d(cin, cout, 3)
        self.skip = EqualConv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2) * math.sqrt(2.0)
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2) * math.sqrt(2.0), 2)
        return (y + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """Residual discriminator with minibatch std (group 4) and optional projection on a condition."""

    def __init__(self, cfg: StyleGAN2Config, in_channels: int, cond_dim: int = 0):
        super().__init__()
        res = list(reversed(cfg.resolutions))  # S .. 4
        self.stem = EqualConv2d(in_channels, cfg.channels(res[0]), 1)
        self.blocks = nn.Sequential(*[DBlock(cfg.channels(r), cfg.channels(r // 2)) for r in res[:-1]])
        c4 = cfg.channels(4)
        self.final_conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, act=True)
        self.out = EqualLinear(c4, 1)
        self.project = EqualLinear(cond_dim, c4) if cond_dim else None

    @staticmethod
    def minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
        b, c, h, w = x.shape
        g = min(group, b)
        while b % g:
            g -= 1
        y = x.view(g, -1, c, h, w)
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/g,)
        y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = F.leaky_relu(self.stem(x), 0.2) * math.sqrt(2.0)
        h = self.blocks(h)
        h = F.leaky_relu(self.final_conv(self.minibatch_std(h)), 0.2) * math.sqrt(2.0)
        h = self.fc(h.flatten(1))
        out = self.out(h)[:, 0]
        if self.project is not None:
            if c is None:
                raise ValueError("this discriminator is conditional: give a condition vector")
            out = out + (self.project(c) * h).sum(1) / math.sqrt(h.shape[1])
        return out


def mask_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) label logits -> (B, L, ...) foreground probabilities of a softmax whose
    background logit is 0 (a sigmoid for L = 1)."""
    zeros = torch.zeros_like(logits[:, :1])
    return torch.softmax(torch.cat([zeros, logits], 1), 1)[:, 1:]


class StyleGAN2(nn.Module):
    """The generator(s) and discriminator(s) of one variant; see the module docstring."""

    def __init__(self, cfg: StyleGAN2Config | None = None):
        super().__init__()
        self.cfg = cfg = cfg or StyleGAN2Config()
        ci, cm = cfg.image_channels, cfg.mask_channels
        cond = cfg.cond_dim if cfg.variant == "conditional" else 0
        self.cond = cond
        self.mask_generator = self.mask_discriminator = None
        if cfg.variant == "mask-only":
            self.mask_generator = StyleGenerator(cfg, cm)
            self.generator = StyleGenerator(cfg, ci, mask_in=cm)
            self.mask_discriminator = Discriminator(cfg, cm)
        else:
            self.generator = StyleGenerator(cfg, ci + cm, cond_dim=cond)
        self.discriminator = Discriminator(cfg, ci + cm, cond_dim=cond)
        self.generator_ema = self.mask_generator_ema = None
        if cfg.ema_kimg > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
            if self.mask_generator is not None:
                self.mask_generator_ema = copy.deepcopy(self.mask_generator).requires_grad_(False)
        # conditions of the training slices, drawn from when sampling without a condition
        self.register_buffer("condition_bank", torch.zeros(0, cond))

    def generator_parameters(self) -> list[nn.Parameter]:
        ps = list(self.generator.parameters())
        return ps + (list(self.mask_generator.parameters()) if self.mask_generator is not None else [])

    def discriminator_parameters(self) -> list[nn.Parameter]:
        ps = list(self.discriminator.parameters())
        return ps + (list(self.mask_discriminator.parameters()) if self.mask_discriminator is not None else [])

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(trained generator, its moving average) for every generator that has one."""
        pairs = [(self.generator, self.generator_ema), (self.mask_generator, self.mask_generator_ema)]
        return [(g, e) for g, e in pairs if g is not None and e is not None]

    @torch.no_grad()
    def update_ema(self, beta: float) -> None:
        """ema <- beta * ema + (1 - beta) * weights for every generator (buffers copied)."""
        for gen, ema in self.ema_pairs():
            for p_ema, p in zip(ema.parameters(), gen.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(ema.buffers(), gen.buffers()):
                b_ema.copy_(b)

    @torch.no_grad()
    def reset_ema(self) -> None:
        """Set the moving averages to the current weights (a checkpoint saved without them)."""
        self.update_ema(0.0)

    def set_condition_bank(self, conditions: torch.Tensor) -> None:
        """Keep the training conditions (N, cond_dim) for unconditioned sampling."""
        self.condition_bank = conditions.detach().float().reshape(-1, self.cond).clone()

    def generate(self, z: torch.Tensor, c: torch.Tensor | None = None, real_mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, ema: bool = False) -> torch.Tensor:
        """Pairs in the GAN's [-1, 1] space, (B, C_img + C_mask, S, S), differentiable.

        ``real_mask`` ([-1, 1], mask-only variant) skips the mask generator (mask -> image training).
        ``ema``: use the moving averages of the weights (where the model keeps them)."""
        ci = self.cfg.image_channels
        gen = self.generator_ema if (ema and self.generator_ema is not None) else self.generator
        if self.cfg.variant == "mask-only":
            if real_mask is None:
                mgen = self.mask_generator_ema if (ema and self.mask_generator_ema is not None) else self.mask_generator
                mask = mask_probabilities(mgen(z, generator=generator)) * 2.0 - 1.0
            else:
                mask = real_mask
            image = gen(z, mask=mask, generator=generator)
            return torch.cat([image, mask], 1)
        out = gen(z, c, generator=generator)
        return torch.cat([out[:, :ci], mask_probabilities(out[:, ci:]) * 2.0 - 1.0], 1)

    def path_lengths(self, z: torch.Tensor, c: torch.Tensor | None = None, real_mask: torch.Tensor | None = None,
                     which: str = "generator") -> torch.Tensor:
        """(B,) lengths |J_w^T y| of the path-length regulariser (StyleGAN2): y ~ N(0, I) / sqrt(S*S)
        over the output the discriminator sees (image + mask probabilities in [-1, 1]; for the
        mask-only variant the image given ``real_mask``, or with ``which="mask_generator"`` the
        mask), J the Jacobian w.r.t. w. Built with ``create_graph`` so it can be minimised."""
        ci = self.cfg.image_channels
        gen = self.mask_generator if which == "mask_generator" else self.generator
        if gen is None:
            raise ValueError(f"this StyleGAN2 variant has no {which}")
        w = gen.mapping(z, c if gen is self.generator and self.cond else None)
        if self.cfg.variant == "mask-only":
            out = gen.synthesis(w, None if which == "mask_generator" else real_mask)
            if which == "mask_generator":
                out = mask_probabilities(out) * 2.0 - 1.0
        else:
            out = gen.synthesis(w)
            out = torch.cat([out[:, :ci], mask_probabilities(out[:, ci:]) * 2.0 - 1.0], 1)
        noise = torch.randn_like(out) / math.sqrt(out.shape[2] * out.shape[3])
        (grad,) = torch.autograd.grad((out * noise).sum(), w, create_graph=True)
        return grad.pow(2).sum(1).add(1e-12).sqrt()

    def draw_conditions(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        if not self.cond:
            return None
        if len(self.condition_bank) == 0:
            raise ValueError("no condition given and no training conditions stored in the model")
        idx = torch.randint(0, len(self.condition_bank), (n,), generator=generator)
        return self.condition_bank[idx]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, condition: torch.Tensor | None = None,
               batch: int = 64) -> torch.Tensor:
        """n new pairs (n, C_img + C_mask, S, S): images in [0, 1], mask channels foreground
        probabilities, from the moving-average generator where there is one. ``condition`` (n, cond_dim) or (cond_dim,) for the conditional variant,
        default: drawn from the training conditions."""
        device = next(self.parameters()).device
        cfg = self.cfg
        if condition is not None and self.cond:
            condition = torch.as_tensor(condition, dtype=torch.float32).reshape(-1, self.cond)
            if len(condition) == 1:
                condition = condition.expand(n, -1)
            if len(condition) != n:
                raise ValueError(f"give one condition or {n}, got {len(condition)}")
        outs = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            z = torch.randn((m, cfg.z_dim), generator=generator)
            c = condition[start:start + m] if (condition is not None and self.cond) else self.draw_conditions(m, generator)
            x = self.generate(z.to(device), None if c is None else c.to(device), generator=generator, ema=True)
            outs.append(((x + 1.0) * 0.5).clamp(0.0, 1.0).cpu())
        if not outs:
            return torch.empty(0, cfg.image_channels + cfg.mask_channels, cfg.size, cfg.size)
        return torch.cat(outs)


def build_stylegan2(preset: str = "cpu", **overrides) -> StyleGAN2:
    """A :class:`StyleGAN2` from a preset (``cpu`` or ``paper``) with keyword overrides."""
    if preset not in PRESETS:
        raise ValueError(f"StyleGAN2 preset must be one of {tuple(PRESETS)}, got {preset!r}")
    return StyleGAN2(StyleGAN2Config(**{**PRESETS[preset], **overrides}))
