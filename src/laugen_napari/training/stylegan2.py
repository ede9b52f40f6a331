"""Training the conditional StyleGAN2 (seed 003) on image+mask slices with the shared loop.

One step = one discriminator update (non-saturating logistic loss, lazy R1 on reals every
``r1_every`` steps, scaled by the interval as in StyleGAN2) then one generator update. For the
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


class StyleGAN2Task:
    """Trains a :class:`~laugen_napari.models.stylegan2.StyleGAN2` on a SliceSet (see module docstring).

    Train values: ``d_loss``, ``g_loss``, ``r1`` (last lazy R1 penalty), ``d_real`` / ``d_fake``
    (mean logits); for mask-only also ``dm_loss`` / ``gm_loss`` of the mask GAN.
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
        kw = dict(lr=cfg.lr, betas=cfg.betas)
        self.opt_g = torch.optim.Adam(model.generator_parameters(), **kw)
        # lazy regularisation: the D optimiser's momentum is corrected for the R1 interval (StyleGAN2)
        ratio = cfg.r1_every / (cfg.r1_every + 1)
        self.opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=cfg.lr * ratio,
                                      betas=(cfg.betas[0] ** ratio, cfg.betas[1] ** ratio))
        self.last_r1 = 0.0
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
            gm_loss = F.softplus(-m.mask_discriminator(m.generate(self._z(b))[:, ci:])).mean()
            values["gm_loss"] = gm_loss.item()
            g_total = g_loss + gm_loss
        else:
            fake = m.generate(self._z(b), c)
            g_loss = F.softplus(-d(fake, c)).mean()
            g_total = g_loss
        self.opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        self.opt_g.step()
        for p in m.discriminator_parameters():
            p.requires_grad_(True)
        values["g_loss"] = g_loss.item()
        values["loss"] = d_loss.item() + g_total.item()
        self.step += 1
        return values

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
                "step": self.step, "model_config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])

    def config(self) -> dict:
        return {"task": "stylegan2", **self.cfg.to_dict()}


def load_generator(path: str | os.PathLike):
    """The :class:`~laugen_napari.models.stylegan2.StyleGAN2` of a checkpoint, in eval mode."""
    from ..models.stylegan2 import StyleGAN2Config, StyleGAN2
    from .loop import load_model

    def build(cfg: dict, state: dict):
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
