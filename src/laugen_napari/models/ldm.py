"""Conditional slice-based latent diffusion of whole volumes with their masks (seed 004), CPU-sized.

Three parts, trained one after the other (see :mod:`laugen_napari.training.ldm`):

1. :class:`SliceAutoencoder` — a per-slice VAE over all image channels + one mask channel per
   label (everything in [-1, 1]; a mask is recovered by sign), downsampling x8 to ``latent_channels``
   channels; the slice position (sinusoidal embedding of the slice index -> MLP) is added inside
   every residual block of encoder and decoder. Loss L1 + (1 - SSIM) + a tiny KL, plus a soft
   Dice term on the mask channels (not in the seed; small structures vanished without it). The
   seed's perceptual term is not used.
2. :class:`Aggregator` — the latents of the D slices of one volume are laid out as one 2D canvas
   (D = g*g slices in a g x g grid) and encoded by a second small autoencoder (x4 down), so the
   diffusion sees all slices at once and they stay coherent.
3. :class:`DiffusionUNet` — predicts the noise of the aggregated latent (divided by its standard
   deviation), conditioned on the timestep and on structure descriptors (seed 004: nine tumour
   characteristics; here :func:`structure_descriptors` of the mask) through an MLP added to the
   time embedding. 1000 steps, scaled-linear betas 0.0015 -> 0.0195 (the usual LDM schedule),
   L1 noise loss; sampling by DDIM (50 steps, eta 0) or ancestral DDPM.

4. :class:`Refiner` (optional, ``refiner`` = ``"residual"`` or ``"diffusion"``) — seed 004's refining
   module against the autoencoders' blur, trained last on (decoded, real) pairs: a real volume is
   encoded and decoded through both autoencoders (the path every generated volume takes), and a
   small UNet learns the real slice's image from the decoded slice, its ``refine_context``
   neighbours on each side (so it sees the stack, not one slice; volume ends repeat the edge
   slice) and the decoded mask. ``"diffusion"`` is the authors' form (their published code: a
   pixel-space conditional DDPM, the decoded image concatenated to the noisy one, noise
   prediction with L1; they refine 64x64 patches around the tumour, here the whole slice) sampled
   by DDIM; ``"residual"`` (CPU default) regresses a correction added to the decoded slice (last
   layer zero-initialised, so an untrained refiner is the identity), trained with L1 + (1 - SSIM).
   Masks are not refined (as the authors: the image only). At sampling the refiner is used when
   it has been trained (``refine=None``), or on request (``refine=True/False``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_DESCRIPTORS = 9
REFINERS = ("none", "residual", "diffusion")
PRESETS = {
    "cpu": dict(depth=16, ae_widths=(16, 32, 48, 64), agg_widths=(32, 64, 64), unet_widths=(64, 128)),
    "paper": dict(depth=64, ae_widths=(64, 128, 256, 256), agg_widths=(64, 128, 256), unet_widths=(128, 256, 512)),
}


@dataclass
class LDMConfig:
    """Hyper-parameters of :class:`SliceLDM` (defaults: the ``cpu`` preset at 64x64, 16 slices)."""

    size: int = 64
    image_channels: int = 1
    mask_channels: int = 1
    depth: int = 16
    latent_channels: int = 4
    ae_widths: tuple[int, ...] = (16, 32, 48, 64)
    agg_widths: tuple[int, ...] = (32, 64, 64)
    agg_latent_channels: int = 4
    unet_widths: tuple[int, ...] = (64, 128)
    cond_dim: int = N_DESCRIPTORS
    timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    kl_weight: float = 1e-6
    lr: float = 1e-3
    refiner: str = "none"
    refiner_widths: tuple[int, ...] = (32, 64)
    refine_context: int = 1

    def __post_init__(self) -> None:
        self.ae_widths = tuple(int(w) for w in self.ae_widths)
        self.agg_widths = tuple(int(w) for w in self.agg_widths)
        self.unet_widths = tuple(int(w) for w in self.unet_widths)
        self.refiner_widths = tuple(int(w) for w in self.refiner_widths)
        if self.refiner not in REFINERS:
            raise ValueError(f"refiner must be one of {REFINERS}, got {self.refiner!r}")
        if self.refiner != "none" and (not self.refiner_widths or self.refine_context < 0):
            raise ValueError("the refiner needs at least one width and refine_context >= 0")
        if self.refiner != "none" and self.size % 2 ** (len(self.refiner_widths) - 1):
            raise ValueError(f"size {self.size} must be a multiple of {2 ** (len(self.refiner_widths) - 1)} "
                             "for the refiner's depth")
        g = int(round(math.sqrt(self.depth)))
        if g * g != self.depth:
            raise ValueError(f"depth (slices per volume) must be a square number (16, 64, ...), got {self.depth}")
        f = 2 ** (len(self.ae_widths) - 1)
        if self.size % f:
            raise ValueError(f"size {self.size} must be a multiple of {f}")
        canvas = g * (self.size // f)
        fa = 2 ** (len(self.agg_widths) - 1)
        if canvas % fa or canvas // fa < 2 ** (len(self.unet_widths) - 1):
            raise ValueError(f"the {canvas}x{canvas} latent canvas is too small for the aggregator/UNet depths")

    @property
    def channels(self) -> int:
        return self.image_channels + self.mask_channels

    @property
    def grid(self) -> int:
        return int(round(math.sqrt(self.depth)))

    @property
    def latent_side(self) -> int:
        return self.size // 2 ** (len(self.ae_widths) - 1)

    @property
    def agg_side(self) -> int:
        return self.grid * self.latent_side // 2 ** (len(self.agg_widths) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("ae_widths", "agg_widths", "unet_widths", "refiner_widths"):
            d[k] = list(d[k])
        return d


def _groups(c: int) -> int:
    for g in (8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) positions/timesteps -> (B, dim) sinusoidal embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], 1)
    return F.pad(emb, (0, dim % 2))


class EmbResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with an embedding (B, E) added between the convs; 1x1 skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int = 0):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout) if emb_dim else None
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm, self.qkv, self.out = nn.GroupNorm(_groups(c), c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor, emb=None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), -1)
        return x + self.out(torch.einsum("bij,bcj->bci", a, v).reshape(b, c, h, w))


class ConvEncoder(nn.Module):
    """x -> (mu, logvar) with one downsampling between consecutive widths; optional embedding."""

    def __init__(self, cin: int, widths: tuple[int, ...], zc: int, emb_dim: int = 0):
        super().__init__()
        self.stem = nn.Conv2d(cin, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            self.blocks.append(EmbResBlock(c, w, emb_dim))
            self.downs.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
            c = w
        self.mid = EmbResBlock(c, c, emb_dim)
        self.head = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, 2 * zc, 3, padding=1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h, emb))
        mu, logvar = self.head(self.mid(h, emb)).chunk(2, 1)
        return mu, logvar.clamp(-20.0, 10.0)


class ConvDecoder(nn.Module):
    """z -> x with nearest upsampling, mirror of :class:`ConvEncoder`."""

    def __init__(self, zc: int, widths: tuple[int, ...], cout: int, emb_dim: int = 0):
        super().__init__()
        w = tuple(reversed(widths))
        self.stem = nn.Conv2d(zc, w[0], 3, padding=1)
        self.mid = EmbResBlock(w[0], w[0], emb_dim)
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        c = w[0]
        for i, wi in enumerate(w):
            self.blocks.append(EmbResBlock(c, wi, emb_dim))
            self.ups.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(wi, wi, 3, padding=1))
                            if i < len(w) - 1 else nn.Identity())
            c = wi
        self.head = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, cout, 3, padding=1))

    def forward(self, z: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.mid(self.stem(z), emb)
        for block, up in zip(self.blocks, self.ups):
            h = up(block(h, emb))
        return self.head(h)


class SliceAutoencoder(nn.Module):
    """Per-slice VAE with slice-position encoding (stage 1)."""

    def __init__(self, cfg: LDMConfig):
        super().__init__()
        e = 4 * cfg.ae_widths[0]
        self.emb_dim = e
        self.pos_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.encoder = ConvEncoder(cfg.channels, cfg.ae_widths, cfg.latent_channels, e)
        self.decoder = ConvDecoder(cfg.latent_channels, cfg.ae_widths, cfg.channels, e)

    def position(self, index: torch.Tensor) -> torch.Tensor:
        return self.pos_mlp(sinusoidal(index, self.emb_dim))

    def encode(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, self.position(index))

    def decode(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(z, self.position(index)))


class Aggregator(nn.Module):
    """Latent aggregation (stage 2): slice latents (B, D, c, h, h) <-> canvas (B, c, g*h, g*h) <->
    aggregated latent (B, c', g*h / 2**k, ...)."""

    def __init__(self, cfg: LDMConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg.latent_channels, cfg.agg_widths, cfg.agg_latent_channels)
        self.decoder = ConvDecoder(cfg.agg_latent_channels, cfg.agg_widths, cfg.latent_channels)

    def to_canvas(self, z: torch.Tensor) -> torch.Tensor:
        b, _, c, h, w = z.shape
        g = self.cfg.grid
        return z.reshape(b, g, g, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * h, g * w)

    def from_canvas(self, canvas: torch.Tensor) -> torch.Tensor:
        b, c, gh, gw = canvas.shape
        g = self.cfg.grid
        h, w = gh // g, gw // g
        return canvas.reshape(b, c, g, h, g, w).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, h, w)


class DiffusionUNet(nn.Module):
    """Noise predictor eps(x_t, t, c): a small UNet, time + condition embedding in every block,
    self-attention at the lowest resolution."""

    def __init__(self, cfg: LDMConfig):
        super().__init__()
        w = cfg.unet_widths
        e = 4 * w[0]
        self.emb_dim = e
        self.time_mlp = nn.Sequential(nn.Linear(w[0], e), nn.SiLU(), nn.Linear(e, e))
        self.cond_mlp = nn.Sequential(nn.Linear(cfg.cond_dim, e), nn.SiLU(), nn.Linear(e, e))
        self.stem = nn.Conv2d(cfg.agg_latent_channels, w[0], 3, padding=1)
        self.down = nn.ModuleList()
        c = w[0]
        skips = [c]
        for i, wi in enumerate(w):
            self.down.append(EmbResBlock(c, wi, e))
            c = wi
            skips.append(c)
            if i < len(w) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1, self.attn, self.mid2 = EmbResBlock(c, c, e), Attention(c), EmbResBlock(c, c, e)
        self.up = nn.ModuleList()
        for i, wi in enumerate(reversed(w)):
            for _ in range(2):
                self.up.append(EmbResBlock(c + skips.pop(), wi, e))
                c = wi
            if i < len(w) - 1:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.head = nn.Sequential(nn.GroupNorm(_groups(w[0]), w[0]), nn.SiLU(), nn.Conv2d(w[0], cfg.agg_latent_channels, 3, padding=1))
        self.t_dim = w[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal(t, self.t_dim)) + self.cond_mlp(cond)
        h = self.stem(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, EmbResBlock) else m(h)
            hs.append(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for m in self.up:
            if isinstance(m, EmbResBlock):
                h = m(torch.cat([h, hs.pop()], 1), emb)
            else:
                h = m(h)
        return self.head(h)


def neighbour_stack(vol: torch.Tensor, context: int) -> torch.Tensor:
    """(B, C, D, S, S) -> (B * D, C * (2 * context + 1), S, S): every slice with its ``context``
    neighbours on each side (order: -context .. +context), the end slices repeated at the ends."""
    b, c, d, s, w = vol.shape
    idx = torch.arange(d, device=vol.device)
    parts = [vol[:, :, (idx + k).clamp(0, d - 1)] for k in range(-context, context + 1)]
    stack = torch.stack(parts, 2)  # (B, C, K, D, S, S)
    return stack.permute(0, 3, 1, 2, 4, 5).reshape(b * d, c * len(parts), s, w)


class Refiner(nn.Module):
    """Stage 4: the refining module (see the module docstring). A small UNet over the decoded
    image channels of a slice and its neighbours plus the decoded mask channels of the slice;
    the diffusion form also takes the noisy image and a timestep."""

    def __init__(self, cfg: LDMConfig):
        super().__init__()
        self.cfg = cfg
        ci, w = cfg.image_channels, cfg.refiner_widths
        self.diffusion = cfg.refiner == "diffusion"
        cin = ci * (2 * cfg.refine_context + 1) + cfg.mask_channels + (ci if self.diffusion else 0)
        e = 4 * w[0] if self.diffusion else 0
        self.t_dim = w[0]
        self.time_mlp = nn.Sequential(nn.Linear(w[0], e), nn.SiLU(), nn.Linear(e, e)) if self.diffusion else None
        self.stem = nn.Conv2d(cin, w[0], 3, padding=1)
        self.down = nn.ModuleList()
        c = w[0]
        for wi in w:
            self.down.append(EmbResBlock(c, wi, e))
            c = wi
        self.downs = nn.ModuleList(nn.Conv2d(wi, wi, 3, stride=2, padding=1) for wi in w[:-1])
        self.up = nn.ModuleList()
        for wi in reversed(w[:-1]):
            self.up.append(EmbResBlock(c + wi, wi, e))
            c = wi
        self.head = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, ci, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    def condition(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoded volumes (B, C, D, S, S) in [-1, 1] -> per-slice inputs (B * D, K, S, S)."""
        ci = self.cfg.image_channels
        b, c, d, s, _ = decoded.shape
        masks = decoded[:, ci:].permute(0, 2, 1, 3, 4).reshape(b * d, c - ci, s, s)
        return torch.cat([neighbour_stack(decoded[:, :ci], self.cfg.refine_context), masks], 1)

    def forward(self, cond: torch.Tensor, x_t: torch.Tensor | None = None, t: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Residual form: the correction (B, C_img, S, S) of the centre slice; diffusion form: the
        predicted noise of ``x_t`` at timestep ``t``."""
        emb = None
        if self.diffusion:
            if x_t is None or t is None:
                raise ValueError("the diffusion refiner needs x_t and t")
            cond = torch.cat([x_t, cond], 1)
            emb = self.time_mlp(sinusoidal(t, self.t_dim))
        h = self.stem(cond)
        hs = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            if i < len(self.downs):
                hs.append(h)
                h = self.downs[i](h)
        for block in self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, hs.pop()], 1), emb)
        return self.head(h)


class SliceLDM(nn.Module):
    """The three parts plus the noise schedule, latent scale and training conditions."""

    def __init__(self, cfg: LDMConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LDMConfig()
        self.ae = SliceAutoencoder(cfg)
        self.agg = Aggregator(cfg)
        self.unet = DiffusionUNet(cfg)
        self.refiner = Refiner(cfg) if cfg.refiner != "none" else None
        betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.timesteps, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, 0).float())
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("condition_bank", torch.zeros(0, cfg.cond_dim))

    # -- encoding of whole volumes ---------------------------------------------------------------
    def slice_index(self, b: int, device=None) -> torch.Tensor:
        return torch.arange(self.cfg.depth, device=device).repeat(b)

    def encode_volumes(self, vol: torch.Tensor) -> torch.Tensor:
        """(B, C, D, S, S) in [-1, 1] -> aggregated latent means (B, c', a, a), unscaled."""
        b, c, d, s, _ = vol.shape
        slices = vol.permute(0, 2, 1, 3, 4).reshape(b * d, c, s, s)
        mu, _ = self.ae.encode(slices, self.slice_index(b, vol.device))
        canvas = self.agg.to_canvas(mu.reshape(b, d, *mu.shape[1:]))
        return self.agg.encoder(canvas)[0]

    def decode_latents(self, lat: torch.Tensor) -> torch.Tensor:
        """Aggregated latents (B, c', a, a), unscaled -> volumes (B, C, D, S, S) in [-1, 1]."""
        b = lat.shape[0]
        z = self.agg.from_canvas(self.agg.decoder(lat))
        x = self.ae.decode(z.reshape(b * self.cfg.depth, *z.shape[2:]), self.slice_index(b, lat.device))
        return x.reshape(b, self.cfg.depth, *x.shape[1:]).permute(0, 2, 1, 3, 4)

    # -- diffusion ---------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def draw_conditions(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if len(self.condition_bank) == 0:
            raise ValueError("no condition given and no training conditions stored in the model")
        return self.condition_bank[torch.randint(0, len(self.condition_bank), (n,), generator=generator)]

    @torch.no_grad()
    def sample_latents(self, cond: torch.Tensor, generator: torch.Generator | None = None, steps: int = 50,
                       method: str = "ddim") -> torch.Tensor:
        """Aggregated latents (B, c', a, a) (scaled) by DDIM (eta 0) or ancestral DDPM."""
        cfg = self.cfg
        device = self.alphas_cumprod.device
        b = cond.shape[0]
        x = torch.randn((b, cfg.agg_latent_channels, cfg.agg_side, cfg.agg_side), generator=generator).to(device)
        ac = self.alphas_cumprod
        if method == "ddpm":
            ts = list(range(cfg.timesteps - 1, -1, -1))
        elif method == "ddim":
            ts = np.linspace(cfg.timesteps - 1, 0, max(2, int(steps))).round().astype(int).tolist()
        else:
            raise ValueError(f"sampler must be ddim or ddpm, got {method!r}")
        for i, t in enumerate(ts):
            tt = torch.full((b,), t, device=device, dtype=torch.long)
            eps = self.unet(x, tt, cond.to(device))
            a_t = ac[t]
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x0 = x0.clamp(-6.0, 6.0)
            a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=device)
            if method == "ddim":
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            else:
                beta_t = 1 - a_t / a_prev
                mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + ((1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t)) * x
                if i + 1 < len(ts):
                    var = beta_t * (1 - a_prev) / (1 - a_t)
                    x = mean + var.sqrt() * torch.randn(x.shape, generator=generator).to(x)
                else:
                    x = mean
        return x

    # -- refining module ---------------------------------------------------------------------------
    def refine_ready(self) -> bool:
        """Whether the model has a refiner that has been trained."""
        return self.refiner is not None and int(self.refiner.trained_steps) > 0

    def refine_volumes(self, decoded: torch.Tensor, generator: torch.Generator | None = None, steps: int = 20
                       ) -> torch.Tensor:
        """Decoded volumes (B, C, D, S, S) in [-1, 1] -> the same with refined image channels
        (masks unchanged). Residual refiner: one pass; diffusion refiner: DDIM (eta 0) over
        ``steps`` steps from noise, conditioned on the decoded stack. Differentiable (residual)."""
        if self.refiner is None:
            raise ValueError("this LDM has no refiner (train it with a refiner and refine steps)")
        ci = self.cfg.image_channels
        b, _, d, s, _ = decoded.shape
        cond = self.refiner.condition(decoded)
        centre = decoded[:, :ci].permute(0, 2, 1, 3, 4).reshape(b * d, ci, s, s)
        if not self.refiner.diffusion:
            img = (centre + self.refiner(cond)).clamp(-1.0, 1.0)
        else:
            ac = self.alphas_cumprod
            ts = np.linspace(self.cfg.timesteps - 1, 0, max(2, int(steps))).round().astype(int).tolist()
            x = torch.randn(centre.shape, generator=generator).to(centre)
            for i, t in enumerate(ts):
                eps = self.refiner(cond, x, torch.full((len(x),), t, dtype=torch.long, device=x.device))
                a_t = ac[t]
                x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1.0, 1.0)
                a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=x.device)
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            img = x.clamp(-1.0, 1.0)
        img = img.reshape(b, d, ci, s, s).permute(0, 2, 1, 3, 4)
        return torch.cat([img, decoded[:, ci:]], 1)

    @torch.no_grad()
    def sample_volumes(self, n: int, generator: torch.Generator | None = None, condition=None, steps: int = 50,
                       method: str = "ddim", batch: int = 8, refine: bool | None = None, refine_steps: int = 20
                       ) -> torch.Tensor:
        """n volumes (n, C_img + C_mask, D, S, S): images in [0, 1], mask channels probabilities
        (0.5 = the sign of the continuous mask). ``condition``: (cond_dim,) or (n, cond_dim)
        descriptors (see :func:`structure_descriptors`); default: drawn from the training volumes.
        ``refine``: pass the decoded volumes through the refiner (None: when it has been trained);
        ``refine_steps``: DDIM steps of a diffusion refiner."""
        if refine is None:
            refine = self.refine_ready()
        elif refine and self.refiner is None:
            raise ValueError("this LDM has no refiner (train it with a refiner and refine steps)")
        if condition is None:
            cond = self.draw_conditions(n, generator)
        else:
            cond = torch.as_tensor(np.asarray(condition, np.float32)).reshape(-1, self.cfg.cond_dim)
            if len(cond) == 1:
                cond = cond.expand(n, -1)
            if len(cond) != n:
                raise ValueError(f"give one condition or {n}, got {len(cond)}")
        out = []
        for start in range(0, n, batch):
            lat = self.sample_latents(cond[start:start + batch], generator, steps, method)
            vol = self.decode_latents(lat / self.latent_scale)
            if refine:
                vol = self.refine_volumes(vol, generator, refine_steps)
            out.append(((vol + 1) * 0.5).clamp(0, 1).cpu())
        if not out:
            return torch.empty(0, self.cfg.channels, self.cfg.depth, self.cfg.size, self.cfg.size)
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, condition=None, steps: int = 50,
               refine: bool | None = None, refine_steps: int = 20) -> torch.Tensor:
        """n slices (n, C, S, S): the slices of ceil(n / depth) generated volumes, in order
        (``refine``, ``refine_steps`` as in :meth:`sample_volumes`)."""
        vols = -(-int(n) // self.cfg.depth)
        v = self.sample_volumes(vols, generator, condition, steps, refine=refine, refine_steps=refine_steps)
        return v.permute(0, 2, 1, 3, 4).reshape(-1, self.cfg.channels, self.cfg.size, self.cfg.size)[:n]


def structure_descriptors(mask: np.ndarray) -> np.ndarray:
    """Nine descriptors of a (D, S, S) structure mask (non-zero = structure), each in about [0, 1]:
    volume fraction (x10), surface fraction (boundary voxels / volume), sphericity
    (pi^(1/3) (6V)^(2/3) / A in voxel units), centre of mass (z, y, x relative to the array), and
    the bounding box extents (z, y, x relative). An empty mask gives zeros."""
    m = np.asarray(mask) != 0
    out = np.zeros(N_DESCRIPTORS, np.float32)
    v = float(m.sum())
    if v == 0:
        return out
    pad = np.pad(m, 1)
    interior = pad[1:-1, 1:-1, 1:-1].copy()
    for ax in range(3):
        for sh in (1, -1):
            interior &= np.roll(pad, sh, axis=ax)[1:-1, 1:-1, 1:-1]
    area = float((m & ~interior).sum())
    coords = np.argwhere(m)
    shape = np.array(m.shape, np.float64)
    com = coords.mean(0) / np.maximum(shape - 1, 1)
    ext = (coords.max(0) - coords.min(0) + 1) / shape
    out[0] = min(1.0, 10 * v / m.size)
    out[1] = area / v
    out[2] = min(1.0, (math.pi ** (1 / 3)) * (6 * v) ** (2 / 3) / max(area, 1.0))
    out[3:6] = com
    out[6:9] = ext
    return out


def build_ldm(preset: str = "cpu", **overrides) -> SliceLDM:
    if preset not in PRESETS:
        raise ValueError(f"LDM preset must be one of {tuple(PRESETS)}, got {preset!r}")
    return SliceLDM(LDMConfig(**{**PRESETS[preset], **overrides}))
