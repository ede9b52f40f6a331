"""Training the conditional StyleGAN2 (seed 003) on image+mask slices with the shared loop.

One step = one discriminator update (non-saturating logistic loss, lazy R1 on reals every
``r1_every`` steps, scaled by the interval as in StyleGAN2) then one generator update, every
``pl_every`` steps followed by a path-length update on half a batch (scaled by the interval), then
the moving average of the generator weights (what sampling uses). Both lazy terms correct their
optimiser's lr and betas for the interval, as StyleGAN2 does. For the
``mask-only`` variant the mask generator and its discriminator train on masks alone and the
mask -> image generator on (real mask -> image) against the pair discriminator, so the two stages
train side by side. A GAN has no validation likelihood: ``validate`` reports the sample measures of
:func:`~laugen_napari.training.generators.sample_metrics` and ``loss`` = mask JSD + the 1-D
Wasserstein distance of image intensities (real vs generated), which picks ``best.pt``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .generators import sample_metrics, save_latest_samples, slice_conditions

# settings added after the first checkpoints were written: recorded in the run's config only when
# they differ from their defaults, so runs from before they existed still resume
_LATER_SETTINGS = {"pl_weight": 2.0, "pl_every": 4, "ema_kimg": 10.0, "ema_rampup": 0.05, "mask_area_weight": 0.0}
PL_DECAY = 0.01  # running-mean decay of the path lengths (StyleGAN2)
PL_BATCH_SHRINK = 2  # the path-length batch is this many times smaller (StyleGAN2)
AREA_SHARPNESS = 10.0  # slope of the soft pixel count whose gradient the mask-area term uses


class StyleGAN2Task:
    """Trains a :class:`~laugen_napari.models.stylegan2.StyleGAN2` on a SliceSet (see module docstring).

    Train values: ``d_loss``, ``g_loss``, ``r1`` (last lazy R1 penalty), ``d_real`` / ``d_fake``
    (mean logits), ``pl`` (last path-length penalty, unweighted) and ``pl_mean``, ``mask_area``
    (:func:`mask_area_loss`, when weighted); for mask-only
    also ``dm_loss`` / ``gm_loss`` of the mask GAN.
    """

    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, model, train, val=None, *, batch_size: int = 8, steps_per_epoch: int = 50, seed: int = 0,
                 n_samples: int = 64, inception=None, sample_dir=None):
        if len(train) == 0:
            raise ValueError("no training slices")
        cfg = model.cfg
        if cfg.size != train.size:
            raise ValueError(f"model size {cfg.size} differs from the slice size {train.size}")
        if cfg.image_channels != train.image_channels or cfg.mask_channels != train.n_labels:
            raise ValueError(f"model channels ({cfg.image_channels} image, {cfg.mask_channels} labels) differ from the "
                             f"data ({train.image_channels}, {train.n_labels})")
        self.model, self.cfg = model, cfg
        self.train_x = train.tensor()
        self.cond = slice_conditions(train)
        if model.cond:
            model.set_condition_bank(self.cond)
        self.val_x = val.tensor() if val is not None and len(val) else self.train_x
        self.batch_size, self.steps_per_epoch, self.seed = int(batch_size), int(steps_per_epoch), int(seed)
        self.n_samples, self.inception = int(n_samples), inception
        self.sample_dir = sample_dir
        self.step = 0
        # lazy regularisation: each optimiser's lr and momentum are corrected for its interval (StyleGAN2)
        g_ratio = cfg.pl_every / (cfg.pl_every + 1) if cfg.pl_weight > 0 else 1.0
        self.opt_g = torch.optim.Adam(model.generator_parameters(), lr=cfg.lr * g_ratio,
                                      betas=(cfg.betas[0] ** g_ratio, cfg.betas[1] ** g_ratio))
        ratio = cfg.r1_every / (cfg.r1_every + 1)
        self.opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=cfg.lr * ratio,
                                      betas=(cfg.betas[0] ** ratio, cfg.betas[1] ** ratio))
        self.last_r1 = self.last_pl = 0.0
        self.images_seen = 0
        # running mean of the path lengths of each generator
        self.pl_mean = {"generator": 0.0, "mask_generator": 0.0}
        self.notices: list[str] = []

    def batches(self, epoch: int):
        """``steps_per_epoch`` batches ((B, C, S, S) in [-1, 1], conditions (B, D)), reproducible."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.train_x)
        for _ in range(self.steps_per_epoch):
            idx = torch.randint(0, n, (min(self.batch_size, n),), generator=g)
            yield self.train_x[idx] * 2.0 - 1.0, self.cond[idx]

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim)

    @staticmethod
    def _r1(d, x: torch.Tensor, c) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        logits = d(x, c) if c is not None else d(x)
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        return g.pow(2).flatten(1).sum(1).mean()

    def train_step(self, batch) -> dict[str, float]:
        m, cfg = self.model, self.cfg
        x, c = batch
        x = x.float()
        c = c.float() if m.cond else None
        b = x.shape[0]
        ci = cfg.image_channels
        values: dict[str, float] = {}
        lazy = self.step % cfg.r1_every == 0
        # ---- discriminator(s)
        with torch.no_grad():
            if cfg.variant == "mask-only":
                fake_mask = m.generate(self._z(b))[:, ci:]
                fake = m.generate(self._z(b), real_mask=x[:, ci:])
            else:
                fake = m.generate(self._z(b), c)
        d = m.discriminator
        real_logit, fake_logit = d(x, c), d(fake, c)
        d_loss = F.softplus(fake_logit).mean() + F.softplus(-real_logit).mean()
        if cfg.variant == "mask-only":
            dm = m.mask_discriminator
            dm_loss = F.softplus(dm(fake_mask)).mean() + F.softplus(-dm(x[:, ci:])).mean()
            values["dm_loss"] = dm_loss.item()
            d_loss = d_loss + dm_loss
        if lazy and cfg.r1_gamma > 0:
            r1 = self._r1(d, x, c)
            if cfg.variant == "mask-only":
                r1 = r1 + self._r1(m.mask_discriminator, x[:, ci:], None)
            d_loss = d_loss + 0.5 * cfg.r1_gamma * cfg.r1_every * r1
            self.last_r1 = r1.item()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        values.update(d_loss=d_loss.item(), d_real=real_logit.mean().item(), d_fake=fake_logit.mean().item(),
                      r1=self.last_r1)
        # ---- generator(s)
        for p in m.discriminator_parameters():
            p.requires_grad_(False)
        if cfg.variant == "mask-only":
            fake = m.generate(self._z(b), real_mask=x[:, ci:])
            g_loss = F.softplus(-d(fake)).mean()
            fake_mask = m.generate(self._z(b))[:, ci:]
            gm_loss = F.softplus(-m.mask_discriminator(fake_mask)).mean()
            values["gm_loss"] = gm_loss.item()
            g_total = g_loss + gm_loss
        else:
            fake = m.generate(self._z(b), c)
            g_loss = F.softplus(-d(fake, c)).mean()
            g_total = g_loss
            fake_mask = fake[:, ci:]
        if cfg.mask_area_weight > 0:
            area = mask_area_loss(fake_mask, x[:, ci:], c if m.cond == 1 + cfg.mask_channels else None)
            values["mask_area"] = area.item()
            g_total = g_total + cfg.mask_area_weight * area
        self.opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        self.opt_g.step()
        for p in m.discriminator_parameters():
            p.requires_grad_(True)
        # ---- lazy path-length regularisation of the generator(s)
        if cfg.pl_weight > 0 and self.step % cfg.pl_every == 0:
            self.last_pl = self._path_length_step(x, c)
        values.update(pl=self.last_pl, pl_mean=self.pl_mean["generator"])
        # ---- moving average of the generator weights
        beta = cfg.ema_beta(self.images_seen, b)
        m.update_ema(beta)
        self.images_seen += b
        values["g_loss"] = g_loss.item()
        values["loss"] = d_loss.item() + g_total.item()
        self.step += 1
        return values

    def _path_length_step(self, x: torch.Tensor, c: torch.Tensor | None) -> float:
        """One optimiser step on the path-length penalty (weight x interval); returns the penalty."""
        m, cfg = self.model, self.cfg
        ci = cfg.image_channels
        bs = max(1, x.shape[0] // PL_BATCH_SHRINK)
        parts = ["generator"] + (["mask_generator"] if cfg.variant == "mask-only" else [])
        total, penalties = 0.0, []
        for which in parts:
            real_mask = x[:bs, ci:] if (cfg.variant == "mask-only" and which == "generator") else None
            lengths = m.path_lengths(self._z(bs), None if c is None else c[:bs], real_mask=real_mask, which=which)
            mean = self.pl_mean[which] + PL_DECAY * (float(lengths.detach().mean()) - self.pl_mean[which])
            self.pl_mean[which] = mean
            penalty = (lengths - mean).pow(2).mean()
            penalties.append(penalty.item())
            total = total + penalty
        self.opt_g.zero_grad(set_to_none=True)
        (total * cfg.pl_weight * cfg.pl_every).backward()
        self.opt_g.step()
        return float(sum(penalties))

    def _samples(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 1)
        return self.model.sample(self.n_samples, generator=g)

    def validate(self) -> dict[str, float]:
        fake = self._samples()
        real = self.val_x
        out = sample_metrics(real, fake, self.cfg.image_channels, self.cfg.mask_channels, inception=self.inception,
                             seed=self.seed)
        from scipy.stats import wasserstein_distance

        w1 = wasserstein_distance(real[:, 0].flatten().numpy(), fake[:, 0].flatten().numpy())
        out["intensity_w1"] = float(w1)
        out["loss"] = out["jsd"] + float(w1)
        save_latest_samples(self.sample_dir, fake, self.cfg.image_channels, self.step)
        return out

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "step": self.step, "model_config": self.cfg.to_dict(), "images_seen": self.images_seen,
                "pl_mean": dict(self.pl_mean), "last_r1": self.last_r1, "last_pl": self.last_pl}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; one written before the moving average existed gets it set
        to the checkpoint's generator weights."""
        missing = load_weights(self.model, state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self.images_seen = int(state.get("images_seen", self.step * self.batch_size))
        self.pl_mean.update({k: float(v) for k, v in dict(state.get("pl_mean", {})).items()})
        self.last_r1, self.last_pl = float(state.get("last_r1", 0.0)), float(state.get("last_pl", 0.0))
        if missing:
            self.model.reset_ema()

    def config(self) -> dict:
        cfg = self.cfg.to_dict()
        for key, default in _LATER_SETTINGS.items():
            if cfg.get(key) == default:
                del cfg[key]
        return {"task": "stylegan2", **cfg}


def mask_area_loss(fake_mask: torch.Tensor, real_mask: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Mask-area term of the generator (not in seed 003): |sqrt(generated area fraction) - target|
    per label, the target being the condition's sqrt area fraction of each sample (``cond`` laid out
    as :func:`~laugen_napari.training.generators.slice_conditions`: position, then one value per
    label) or, without a condition, the batch means of generated and real sqrt areas are compared.
    Masks in [-1, 1] (B, L, S, S). The generated area counts the pixels whose label wins (the
    probability above 0.5, as :func:`~laugen_napari.training.generators.split_pairs` decides) with
    the gradient of a soft count ``sigmoid(AREA_SHARPNESS * (p - 0.5))`` (straight-through), which
    acts mostly on pixels near 0.5: matching the mean probability alone was met by faint masks no
    pixel of which reached 0.5 (0 of 64 non-empty at step 100), and the hard count with the mean
    probability's gradient raised the whole mask channel (grey backgrounds, intensity W1 0.08 ->
    0.25 in the 64x64 run).
    Against the collapse to empty masks of a small structure: on the shipped sample's ventricles
    (~1 % of the pixels) the share of non-empty masks fell from 55 % to 2 % within 150 steps
    without any such term."""
    probs = (fake_mask + 1) * 0.5
    soft = torch.sigmoid(AREA_SHARPNESS * (probs - 0.5)).mean(dim=(2, 3))
    hard = (probs > 0.5).float().mean(dim=(2, 3))
    fake_area = (hard + soft - soft.detach()).add(1e-4).sqrt()  # (B, L)
    if cond is not None:
        return (fake_area - cond[:, 1:]).abs().mean()
    real_area = ((real_mask + 1) * 0.5).mean(dim=(2, 3)).sqrt()
    return (fake_area.mean(0) - real_area.mean(0)).abs().mean()


def load_weights(model, state: dict) -> bool:
    """Load a StyleGAN2 state dict; one without moving-average weights (written before they
    existed) loads too. Returns True when the moving averages were missing (left as they are)."""
    ema_keys = {k for k in model.state_dict() if k.split(".")[0] in ("generator_ema", "mask_generator_ema")}
    if ema_keys and not any(k in state for k in ema_keys):
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys or set(result.missing_keys) - ema_keys:
            model.load_state_dict(state)  # raises naming the real mismatch
        return True
    model.load_state_dict(state)
    return False


def load_generator(path: str | os.PathLike):
    """The :class:`~laugen_napari.models.stylegan2.StyleGAN2` of a checkpoint, in eval mode; it
    samples with the moving-average generator when the checkpoint has one (checkpoints written
    before it existed load with ``ema_kimg = 0`` and sample with the trained weights)."""
    from ..models.stylegan2 import StyleGAN2, StyleGAN2Config
    from .loop import load_model

    def build(cfg: dict, state: dict):
        if not any(k.startswith("generator_ema.") for k in state):  # written before the moving average existed
            cfg = {**cfg, "ema_kimg": 0.0}
        model = StyleGAN2(StyleGAN2Config(**cfg))
        if "condition_bank" in state:  # sized by the training data
            model.condition_bank = torch.zeros_like(state["condition_bank"])
        return model

    return load_model(path, "stylegan2", "StyleGAN2", build)


def make_training(pairs=None, *, slices=None, size: int = 64, steps: int = 1000, out=None, resume: bool = False,
                  seed: int = 0, labels=None, separate_labels: bool = False, variant: str = "conditional",
                  preset: str = "cpu", batch_size: int = 8, steps_per_epoch: int = 50, val_fraction: float = 0.1,
                  inception=None, **model_options):
    """``(task, batches, run_training kwargs)`` for a StyleGAN2 run (module-level, picklable)."""
    from ..models.perceptual import load_inception
    from ..models.stylegan2 import PRESETS, StyleGAN2, StyleGAN2Config
    from .generators import load_slices

    inc = load_inception(inception) if inception else None
    if slices is None:
        if pairs is None:
            raise ValueError("give a folder of image/mask pairs or slices")
        slices = load_slices(pairs, size, labels, separate_labels)
    if preset not in PRESETS:
        raise ValueError(f"StyleGAN2 preset must be one of {tuple(PRESETS)}, got {preset!r}")
    train, val = slices.split(val_fraction, seed)
    torch.manual_seed(seed)
    cfg = StyleGAN2Config(**{**PRESETS[preset], "size": slices.size, "image_channels": slices.image_channels,
                             "mask_channels": slices.n_labels, "variant": variant, "cond_dim": 1 + slices.n_labels,
                             **{k: v for k, v in model_options.items() if v is not None}})
    task = StyleGAN2Task(StyleGAN2(cfg), train, val, batch_size=batch_size, steps_per_epoch=steps_per_epoch, seed=seed,
                         inception=inc, sample_dir=out)
    return task, task.batches, {"steps": int(steps), "out_dir": out, "resume": resume}
