"""Discriminative Hamiltonian VAE (dHVAE) for joint 2D image + mask generation (seed 002).

The model sees a slice and its binary mask as two channels in [0, 1] and learns their joint
distribution; new pairs come from decoding z ~ N(0, I). Three variants share the classes here:

- ``vae``   — leapfrog steps K = 0, no regularisers (the paper's "VAE" row);
- ``hvae``  — K >= 1 Hamiltonian steps with tempering (Caterini et al. 2018), no regularisers;
- ``dhvae`` — HVAE + reconstruction term (L1 + perceptual) + PatchGAN discriminator, weighted by
  beta, with the Hamiltonian ELBO weighted by alpha = 1 - beta.

Choices and where they differ from the authors' public code (the paper is followed):

- AdamW with lr 5e-5, betas (0.5, 0.999), weight decay 1e-6 (paper §4.5; the code uses 4.5e-5
  and betas (0.5, 0.9)).
- Perceptual features from VGG16 ``features`` layers 2, 7, 12, 21 (conv1_2, conv2_2, conv3_2,
  conv4_3; paper §3.4), squared distance averaged per layer; the code uses LPIPS-style relu1_2…relu5_3.
- Discriminator loss as the paper's eq. 11 (log loss, fakes decoded from the prior, non-saturating
  generator term); the code uses a hinge loss on reconstructions with an adaptive weight.
- The paper writes both "beta = 0.01" (§4.6, Tables 1–3) and "alpha = 0.01" (Table 4) for the best
  setting; beta = 0.01 (alpha = 0.99) is the default here, as in the text.
- Loss scaling: the ELBO enters the loss in nats per data dimension (pixels x 2 channels), so that
  alpha/beta weigh it against the mean-based L1/perceptual/GAN terms; the HMC potential itself uses
  the summed log density (the true posterior).
- The ELBO includes - log N(gamma) of the initial momentum draw, so it is a proper lower bound and
  equals the usual single-sample VAE ELBO when K = 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)
MODEL_KINDS = ("dhvae", "hvae", "vae")
PRESETS = {
    # ~1 M parameters at 64x64, K = 1: a first usable generator in 30-60 min on one core
    "cpu": dict(widths=(16, 32, 48, 64), latent_channels=4, leapfrog_steps=1, step_size_init=1e-2),
    # the paper's scale: 22.7 M parameters at 128x128 (3 x 16 x 16 latent), K = 3, eps0 = 1e-3
    "paper": dict(widths=(64, 128, 256, 304), latent_channels=3, leapfrog_steps=3, step_size_init=1e-3),
}


@dataclass
class DHVAEConfig:
    """Hyper-parameters of :class:`DHVAE` (defaults: the ~1 M-parameter widths with the paper's
    K = 3; :data:`PRESETS` hold the ``cpu`` (K = 1) and ``paper`` (~23 M parameters) settings).

    Attributes:
        size: slice side in pixels (a multiple of 2**(len(widths) - 1)).
        in_channels: image channels + one channel per mask label; image_channels: the first of them.
        widths: channels per resolution level; one downsampling between consecutive levels.
        latent_channels: channels of the fully convolutional latent (latent side = size / 2**(L-1)).
        leapfrog_steps: K; 0 gives a plain VAE.
        step_size_init: initial leapfrog step size per latent dimension (learnable).
        beta0: initial inverse temperature of the tempering schedule, in (0, 1].
        learn_beta0: learn beta0 (through a logit) along with the rest.
        kind: ``"dhvae"``, ``"hvae"`` or ``"vae"`` (sets the regulariser switches).
        use_perceptual, use_discriminator: for ``dhvae``, the two regularisers of the paper:
            the reconstruction term L_rec = L1 + perceptual, and the discriminator (switch one off
            for the seed-002 ablations HVAE + discriminator / HVAE + perceptual).
        reg_weight: beta of the paper (regularisers); the ELBO gets alpha = 1 - beta.
        disc_warmup: steps before the discriminator term is switched on.
        kl_warmup: steps over which the weight of the KL-like part of the ELBO (everything but
            log p(x | z_K)) rises linearly from 0 to 1 (0: off, the paper's plain ELBO). Not in the
            paper: without it the posterior collapsed on the shipped sample's ~25 slices at 32x32 (after
            163 steps no latent unit carried > 0.1 nats and prior samples were nearly identical);
            with 150 warm-up steps 5 units stayed informative (bench/results/dhvae_diversity.txt).
            The later "13 of 16 alike" of 64x64 runs has another cause, see ``disc_fakes``.
        disc_fakes: what the discriminator sees as fakes: ``"prior"`` (pairs decoded from N(0, I),
            the paper's eq. 11) or ``"recon"`` (reconstructions, as the authors' code). With prior
            fakes the adversarial term alone shapes the decoder away from the posteriors and can
            pull all prior samples to one mode (pairwise MS-SSIM of samples rose above the real
            slices' 300-400 steps after the discriminator started, bench/results/dhvae_diversity.txt).
        latent_sampling: ``"prior"`` (z ~ N(0, I), the paper) or ``"fitted"`` (z from a Gaussian
            fitted to the encoded training slices after every epoch, see :meth:`DHVAE.fit_latent_density`).
        disc_width: base channels of the PatchGAN discriminator.
        lr, betas, weight_decay: AdamW settings of the paper.
    """

    size: int = 64
    in_channels: int = 2
    image_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 48, 64)
    latent_channels: int = 4
    groups: int = 8
    leapfrog_steps: int = 3
    step_size_init: float = 1e-2
    beta0: float = 0.3
    learn_beta0: bool = True
    kind: str = "dhvae"
    use_perceptual: bool = True
    use_discriminator: bool = True
    reg_weight: float = 0.01
    disc_warmup: int = 500
    kl_warmup: int = 200
    disc_fakes: str = "prior"
    latent_sampling: str = "prior"
    disc_width: int = 32
    lr: float = 5e-5
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-6

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.kind == "vae":
            self.leapfrog_steps = 0
        elif self.leapfrog_steps < 1:
            raise ValueError(f"{self.kind} needs leapfrog_steps >= 1, got {self.leapfrog_steps}")
        factor = 2 ** (len(self.widths) - 1)
        if self.size % factor or self.size < factor:
            raise ValueError(f"size {self.size} must be a multiple of {factor} for {len(self.widths)} levels")
        if self.disc_fakes not in ("prior", "recon"):
            raise ValueError(f"disc_fakes must be 'prior' or 'recon', got {self.disc_fakes!r}")
        if self.latent_sampling not in ("prior", "fitted"):
            raise ValueError(f"latent_sampling must be 'prior' or 'fitted', got {self.latent_sampling!r}")
        if not 0.0 < self.beta0 <= 1.0:
            raise ValueError(f"beta0 must be in (0, 1], got {self.beta0}")
        if self.kind == "dhvae" and not (self.use_perceptual or self.use_discriminator):
            raise ValueError("a dhvae needs the perceptual or the discriminator term (else it is an hvae)")
        if not 0.0 <= self.reg_weight < 1.0:
            raise ValueError(f"reg_weight (beta) must be in [0, 1), got {self.reg_weight}")

    @property
    def latent_side(self) -> int:
        return self.size // 2 ** (len(self.widths) - 1)

    @property
    def latent_dim(self) -> int:
        return self.latent_channels * self.latent_side**2

    @property
    def regularised(self) -> bool:
        """True for dHVAE: L1 + perceptual and discriminator terms are used."""
        return self.kind == "dhvae"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["betas"] = list(self.betas)
        return d


def _groups(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class WSConv2d(nn.Conv2d):
    """Convolution with weight standardisation (zero mean, unit variance per output filter)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) * torch.rsqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ResBlock(nn.Module):
    """Two (WS-conv 3x3 -> GroupNorm -> SiLU) with a 1x1 skip when the width changes."""

    def __init__(self, cin: int, cout: int, groups: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            WSConv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout, groups), cout), nn.SiLU(),
            WSConv2d(cout, cout, 3, padding=1), nn.GroupNorm(_groups(cout, groups), cout), nn.SiLU(),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        y = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
        return x + self.out(y)


class Encoder(nn.Module):
    """x (B, C, S, S) -> mean and log-variance, each (B, latent_channels, s, s)."""

    def __init__(self, cfg: DHVAEConfig):
        super().__init__()
        w, g = cfg.widths, cfg.groups
        self.stem = nn.Conv2d(cfg.in_channels, w[0], 3, padding=1)
        layers: list[nn.Module] = []
        cin = w[0]
        for i, cout in enumerate(w):
            layers += [ResBlock(cin, cout, g), ResBlock(cout, cout, g)]
            if i == len(w) - 1:
                layers.append(SelfAttention(cout, g))
            else:
                layers += [nn.AvgPool2d(2), nn.Conv2d(cout, cout, 1)]
            cin = cout
        layers += [ResBlock(cin, cin, g), SelfAttention(cin, g), ResBlock(cin, cin, g)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(self.stem(x))).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)


class Decoder(nn.Module):
    """z (B, latent_channels, s, s) -> logits (B, C, S, S) of both channels."""

    def __init__(self, cfg: DHVAEConfig):
        super().__init__()
        w, g = tuple(reversed(cfg.widths)), cfg.groups
        self.stem = nn.Conv2d(cfg.latent_channels, w[0], 3, padding=1)
        layers: list[nn.Module] = [ResBlock(w[0], w[0], g), SelfAttention(w[0], g), ResBlock(w[0], w[0], g)]
        cin = w[0]
        for i, cout in enumerate(w):
            layers += [ResBlock(cin, cout, g), ResBlock(cout, cout, g)]
            if i == 0:
                layers.append(SelfAttention(cout, g))
            if i < len(w) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cout, cout, 3, padding=1)]
            cin = cout
        layers += [nn.GroupNorm(_groups(cin, g), cin), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(z)))


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al.): a map of real/fake logits, one per overlapping patch.

    :meth:`features` returns the intermediate activations used for feature matching when no VGG
    weights are given.
    """

    def __init__(self, in_channels: int = 2, width: int = 32, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2))]
        c = width
        for i in range(1, layers):
            cn = width * min(2**i, 8)
            stride = 2 if i < layers - 1 else 1
            blocks.append(nn.Sequential(nn.Conv2d(c, cn, 4, stride, 1), nn.GroupNorm(_groups(cn, 8), cn), nn.LeakyReLU(0.2)))
            c = cn
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c, 1, 4, 1, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1])


def tempering_sqrt_betas(beta0: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """sqrt(beta_k), k = 0..K, of the quadratic tempering schedule (sqrt(beta_0) .. 1)."""
    inv0 = 1.0 / torch.sqrt(beta0)
    return [1.0 / ((1.0 - inv0) * (k / steps) ** 2 + inv0) for k in range(steps + 1)]


def leapfrog_tempered(
    z: torch.Tensor,
    rho: torch.Tensor,
    grad_u: Callable[[torch.Tensor], tuple[torch.Tensor, object]],
    eps: torch.Tensor,
    beta0: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """K tempered leapfrog steps (Caterini et al. 2018, eq. 7 of seed 002).

    Args:
        z: (B, D) start position; rho: (B, D) start momentum (already gamma / sqrt(beta0)).
        grad_u: z -> (dU/dz, extra); ``extra`` of the last call is returned (e.g. decoder logits).
        eps: (D,) per-dimension step sizes; beta0: scalar initial inverse temperature.
    Returns:
        (z_K, rho_K, extra at z_K).
    """
    sqrt_b = tempering_sqrt_betas(beta0, steps)
    g, extra = grad_u(z)
    for k in range(1, steps + 1):
        rho = rho - 0.5 * eps * g
        z = z + eps * rho
        g, extra = grad_u(z)
        rho = rho - 0.5 * eps * g
        rho = (sqrt_b[k - 1] / sqrt_b[k]) * rho
    return z, rho, extra


def bernoulli_log_lik(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum over pixels and channels of log Bernoulli(x | sigmoid(logits)); (B,) in nats."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def std_normal_log_prob(v: torch.Tensor) -> torch.Tensor:
    """log N(v; 0, I) summed over all but the batch dimension; (B,) in nats."""
    return -0.5 * (v.flatten(1) ** 2 + LOG_2PI).sum(1)


class DHVAE(nn.Module):
    """Joint image+mask (H)VAE with optional discriminator; see the module docstring.

    ``forward``-style use: :meth:`elbo` for training quantities, :meth:`sample` for new pairs.
    """

    def __init__(self, cfg: DHVAEConfig | None = None):
        super().__init__()
        self.cfg = cfg or DHVAEConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        d = self.cfg.latent_dim
        if self.cfg.leapfrog_steps > 0:
            self.step_size = nn.Parameter(torch.full((d,), float(self.cfg.step_size_init)))
            logit = math.log(self.cfg.beta0 / max(1.0 - self.cfg.beta0, 1e-6)) if self.cfg.beta0 < 1 else 12.0
            self.beta0_logit = nn.Parameter(torch.tensor(logit), requires_grad=self.cfg.learn_beta0)
        self.discriminator = (PatchDiscriminator(self.cfg.in_channels, self.cfg.disc_width)
                              if self.cfg.regularised and self.cfg.use_discriminator else None)
        # ex-post latent density (Ghosh et al. 2020): a Gaussian fitted to the encoded training
        # slices, used by sample() once fitted (empty = sample the N(0, I) prior, as the paper)
        self.register_buffer("latent_mean", torch.zeros(0))
        self.register_buffer("latent_chol", torch.zeros(0, 0))

    @property
    def beta0(self) -> torch.Tensor:
        """Initial inverse temperature in (0, 1)."""
        return torch.sigmoid(self.beta0_logit)

    @property
    def eps(self) -> torch.Tensor:
        """Leapfrog step sizes (D,), kept positive."""
        return self.step_size.clamp(min=1e-5)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Everything but the discriminator (what the generator optimiser updates)."""
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.") and p.requires_grad]

    def decode(self, z_flat: torch.Tensor) -> torch.Tensor:
        """(B, D) latent -> (B, C, S, S) logits."""
        c, s = self.cfg.latent_channels, self.cfg.latent_side
        return self.decoder(z_flat.reshape(-1, c, s, s))

    def potential(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U(z) = -[log p(x|z) + log N(z; 0, I)] per sample (B,), and the decoder logits."""
        logits = self.decode(z)
        return -(bernoulli_log_lik(logits, x) + std_normal_log_prob(z)), logits

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Single-sample Hamiltonian ELBO of x (B, C, S, S) in [0, 1].

        Returns a dict with ``elbo`` (B,) in nats, ``rec`` (B,) its reconstruction part
        log p(x | z_K) (the rest, ``elbo - rec``, is the KL-like part), ``logits`` (B, C, S, S) decoded at z_K, ``z0``,
        ``zK``, ``mu``, ``logvar``. Gradients flow through the leapfrog (create_graph in training).
        """
        mu, logvar = self.encoder(x)
        mu, logvar = mu.flatten(1), logvar.flatten(1)
        e0 = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        std = torch.exp(0.5 * logvar)
        z0 = mu + std * e0
        log_q0 = std_normal_log_prob(e0) - 0.5 * logvar.sum(1)
        k = self.cfg.leapfrog_steps
        if k == 0:
            logits = self.decode(z0)
            rec = bernoulli_log_lik(logits, x)
            elbo = rec + std_normal_log_prob(z0) - log_q0
            return {"elbo": elbo, "rec": rec, "logits": logits, "z0": z0, "zK": z0, "mu": mu, "logvar": logvar}
        gamma = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        beta0 = self.beta0
        rho0 = gamma / torch.sqrt(beta0)
        create_graph = torch.is_grad_enabled()

        def grad_u(z: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            with torch.enable_grad():
                zz = z if z.requires_grad else z.detach().requires_grad_(True)
                u, logits = self.potential(zz, x)
                (g,) = torch.autograd.grad(u.sum(), zz, create_graph=create_graph)
            return g, (u, logits)

        zk, rhok, (u_k, logits) = leapfrog_tempered(z0, rho0, grad_u, self.eps, beta0, k)
        if not create_graph:
            u_k, logits = u_k.detach(), logits.detach()
        rec = bernoulli_log_lik(logits, x)
        elbo = -u_k + std_normal_log_prob(rhok) - log_q0 - std_normal_log_prob(gamma)
        return {"elbo": elbo, "rec": rec, "logits": logits, "z0": z0, "zK": zk, "mu": mu, "logvar": logvar}

    @torch.no_grad()
    def fit_latent_density(self, x: torch.Tensor, batch: int = 64) -> None:
        """Fit the ex-post Gaussian of :meth:`sample` to the posteriors of slices x (N, C, S, S):
        mean of the posterior means, covariance = their sample covariance + the mean posterior
        variance per dimension (the aggregate posterior's second moment)."""
        mus, vars_ = [], []
        for i in range(0, len(x), batch):
            mu, logvar = self.encoder(x[i:i + batch].to(next(self.parameters()).device))
            mus.append(mu.flatten(1).double().cpu())
            vars_.append(logvar.flatten(1).exp().double().cpu())
        mu, var = torch.cat(mus), torch.cat(vars_)
        centred = mu - mu.mean(0)
        cov = centred.T @ centred / max(len(mu) - 1, 1) + torch.diag(var.mean(0) + 1e-6)
        self.latent_mean = mu.mean(0).float()
        self.latent_chol = torch.linalg.cholesky(cov).float()

    def clear_latent_density(self) -> None:
        """Back to sampling the N(0, I) prior."""
        self.latent_mean = torch.zeros(0)
        self.latent_chol = torch.zeros(0, 0)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch: int = 64) -> torch.Tensor:
        """n new pairs: (n, C, S, S) probabilities in [0, 1] (mask: threshold 0.5). z is drawn from
        the fitted ex-post Gaussian when :meth:`fit_latent_density` was called, else from N(0, I)."""
        out = []
        device = next(self.parameters()).device
        fitted = self.latent_mean.numel() == self.cfg.latent_dim
        for start in range(0, n, batch):
            m = min(batch, n - start)
            z = torch.randn((m, self.cfg.latent_dim), generator=generator)
            if fitted:
                z = self.latent_mean.cpu() + z @ self.latent_chol.cpu().T
            out.append(torch.sigmoid(self.decode(z.to(device))).cpu())
        return torch.cat(out) if out else torch.empty(0, self.cfg.in_channels, self.cfg.size, self.cfg.size)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (decoder at the posterior mean), probabilities (B, C, S, S)."""
        mu, _ = self.encoder(x)
        return torch.sigmoid(self.decoder(mu))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_model(kind: str = "dhvae", preset: str | None = None, **overrides) -> DHVAE:
    """A model of the given kind: :class:`DHVAEConfig` defaults, then the ``preset`` (``cpu`` or
    ``paper``, optional), then keyword overrides (None values ignored)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"dHVAE preset must be one of {tuple(PRESETS)}, got {preset!r}")
    opts = {**(PRESETS[preset] if preset else {}), **{k: v for k, v in overrides.items() if v is not None}}
    return DHVAE(DHVAEConfig(kind=kind, **opts))
