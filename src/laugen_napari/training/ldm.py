"""Training the conditional slice LDM (seed 004) with the shared loop, stage by stage.

Data: whole volumes, not loose slices. For every image/mask pair the axial slices covering the
structure (plus a 15 % margin at both ends) are resized to ``size`` x ``size`` with the volume's own
min-max intensity normalisation (so slices of one volume stay comparable). A training volume is
``depth`` slices spread evenly over that range with the ends jittered and a random left-right
flip; its condition is :func:`~laugen_napari.models.ldm.structure_descriptors` of its mask.

Steps ``1 .. s1`` train the slice autoencoder, ``s1 .. s1 + s2`` the aggregation autoencoder (slice
AE frozen), the rest the diffusion UNet (both autoencoders frozen); ``stage_steps = (s1, s2)``.
With a refiner (``refine_steps`` > 0, ``stage_steps = (s1, s2, s3)``) the diffusion UNet trains for
``s3`` steps and the steps after it train the refining module (stage 4, everything else frozen) on
real volumes and their reconstructions through both autoencoders, as seed 004 trains it after the
other parts.
``validate`` reports each part's held-out error and ``loss`` = their sum, so ``best.pt`` follows the
whole pipeline; the sample measures of the generated slices come with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .generators import ms_ssim, sample_metrics, save_latest_samples

# model settings added after the first checkpoints were written: recorded in the run's config only
# when they differ from their defaults, so runs from before they existed still resume
_LATER_SETTINGS = {"refiner": "none", "refiner_widths": [32, 64], "refine_context": 1}


@dataclass
class VolumeSet:
    """Per pair: images (C, Z, S, S) float32 in [0, 1] and class maps (Z, S, S) uint8 over the
    structure's axial range with margins; ``core`` (first, last) index of the structure in it."""

    images: list
    masks: list
    core: list
    names: list
    n_labels: int = 1

    @property
    def image_channels(self) -> int:
        return int(self.images[0].shape[0])

    @property
    def size(self) -> int:
        return int(self.images[0].shape[-1])

    def __len__(self) -> int:
        return len(self.images)


def volumes_from_arrays(image: np.ndarray, labels: np.ndarray, size: int, selected=None, separate_labels=False,
                        name: str = "arrays", margin: float = 0.15) -> VolumeSet:
    """One (Z, Y, X) (or (C, Z, Y, X)) image and label map as a :class:`VolumeSet` entry."""
    from .dhvae import _square_resize

    image, labels = np.asarray(image, np.float32), np.asarray(labels)
    if image.ndim == 3:
        image = image[None]
    if image.shape[1:] != labels.shape:
        raise ValueError(f"{name}: image and mask differ in shape: {image.shape[1:]} vs {labels.shape}")
    values = list(selected) if selected else sorted(int(v) for v in np.unique(labels) if v != 0)
    if not values or not np.isin(labels, values).any():
        raise ValueError(f"{name}: the mask has no structure")
    classes = np.zeros(labels.shape, np.uint8)
    for k, v in enumerate(values, 1):
        classes[labels == v] = k if separate_labels else 1
    n_labels = len(values) if separate_labels else 1
    zs = np.flatnonzero(classes.reshape(classes.shape[0], -1).any(1))
    ext = zs[-1] - zs[0] + 1
    pad = int(np.ceil(margin * ext))
    lo, hi = max(0, zs[0] - pad), min(classes.shape[0] - 1, zs[-1] + pad)
    imgs = []
    for ch in image:
        v = ch[lo:hi + 1]
        v = (v - v.min()) / max(float(v.max() - v.min()), 1e-12)
        imgs.append(_square_resize(torch.from_numpy(v), size).clamp(0, 1).numpy())
    onehot = torch.from_numpy(np.stack([classes[lo:hi + 1] == k for k in range(1, n_labels + 1)]).astype(np.float32))
    probs = torch.stack([_square_resize(o, size) for o in onehot])
    best = probs.argmax(0) + 1
    msk = torch.where(probs.sum(0) >= 0.5, best, torch.zeros_like(best)).to(torch.uint8).numpy()
    return VolumeSet([np.stack(imgs)], [msk], [(int(zs[0] - lo), int(zs[-1] - lo))], [name], n_labels)


def volumes_from_folder(folder, size: int, selected=None, separate_labels=False) -> VolumeSet:
    from ..io.pairs import read_pair
    from .dhvae import find_pairs

    parts = []
    for img, lab in find_pairs(folder):
        image, labels = read_pair(img, lab, channels=True)
        parts.append(volumes_from_arrays(image.data, labels.data, size, selected,
                                         separate_labels, name=os.path.basename(str(lab))))
    if len({p.n_labels for p in parts}) > 1:
        raise ValueError("the pairs hold different label sets: give the labels to use (--labels)")
    return VolumeSet(sum((p.images for p in parts), []), sum((p.masks for p in parts), []),
                     sum((p.core for p in parts), []), sum((p.names for p in parts), []), parts[0].n_labels)


def draw_volume(vs: VolumeSet, i: int, depth: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Volume i as (C + L, depth, S, S) in [-1, 1] and its descriptors (9,); jittered with ``rng``."""
    from ..models.ldm import structure_descriptors

    img, msk = vs.images[i], vs.masks[i]
    z = img.shape[1]
    lo, hi = 0.0, float(z - 1)
    if rng is not None:
        c0, c1 = vs.core[i]
        lo = rng.uniform(0, max(c0 * 0.6, 0.0))
        hi = rng.uniform(min(c1 + (z - 1 - c1) * 0.4, z - 1), z - 1)
    idx = np.linspace(lo, hi, depth).round().astype(int)
    im, mk = img[:, idx], msk[idx]
    if rng is not None and rng.random() < 0.5:
        im, mk = im[..., ::-1], mk[..., ::-1]
    onehot = np.stack([mk == k for k in range(1, vs.n_labels + 1)]).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate([im, onehot]))) * 2 - 1
    return x, torch.from_numpy(structure_descriptors(mk))


def slice_step_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |(pred[k+1] - pred[k]) - (target[k+1] - target[k])| over the slices k of stacks
    (B, D, C, S, S): how far a stack's change from slice to slice is from the real one's."""
    return ((pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])).abs().mean()


class LDMTask:
    """Trains a :class:`~laugen_napari.models.ldm.SliceLDM` (see the module docstring).

    Train values: ``stage`` (1, 2, 3, 4), and ``ae_l1`` / ``ae_ssim`` / ``ae_dice`` (soft Dice loss of
    the mask channels) / ``kl`` (stage 1), ``agg_l1``
    (stage 2), ``diff_l1`` (stage 3), ``refine_l1`` (stage 4: L1 of the refined image, or of the
    predicted noise for a diffusion refiner) with ``refine_ssim`` and ``refine_z``
    (:func:`slice_step_error`) for a residual refiner; ``loss`` the optimised value. Validation of
    a residual refiner adds ``decoded_l1`` / ``decoded_z``, the same errors without it."""

    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, model, volumes: VolumeSet, *, stage_steps: tuple[int, int], batch_size: int = 4,
                 steps_per_epoch: int = 50, seed: int = 0, slices_per_step: int = 16, inception=None,
                 sample_dir=None, n_sample_volumes: int = 2):
        cfg = model.cfg
        if volumes.size != cfg.size or volumes.image_channels != cfg.image_channels or volumes.n_labels != cfg.mask_channels:
            raise ValueError("the volumes' size/channels differ from the model's")
        self.model, self.cfg, self.volumes = model, cfg, volumes
        self.stage_steps = tuple(int(v) for v in stage_steps)
        if len(self.stage_steps) not in (2, 3):
            raise ValueError("stage_steps: give (slice AE, aggregation) or (slice AE, aggregation, diffusion) steps")
        if (len(self.stage_steps) == 3) != (model.refiner is not None):
            raise ValueError("a refiner needs three stage lengths (slice AE, aggregation, diffusion); without one give two")
        self.batch_size, self.steps_per_epoch, self.seed = int(batch_size), int(steps_per_epoch), int(seed)
        self.slices_per_step, self.inception, self.sample_dir = int(slices_per_step), inception, sample_dir
        self.n_sample_volumes = int(n_sample_volumes)
        self.step = 0
        conds = torch.stack([draw_volume(volumes, i, cfg.depth, None)[1] for i in range(len(volumes))])
        rng = np.random.default_rng(seed)
        jittered = [draw_volume(volumes, i % len(volumes), cfg.depth, rng)[1] for i in range(64)]
        model.condition_bank = torch.cat([conds, torch.stack(jittered)])
        self.val = [draw_volume(volumes, i, cfg.depth, None) for i in range(len(volumes))]
        kw = dict(lr=cfg.lr)
        self.opts = [torch.optim.Adam(model.ae.parameters(), **kw), torch.optim.Adam(model.agg.parameters(), **kw),
                     torch.optim.Adam(model.unet.parameters(), lr=cfg.lr * 0.5)]
        if model.refiner is not None:
            self.opts.append(torch.optim.Adam(model.refiner.parameters(), lr=cfg.lr))
        self.notices: list[str] = []

    @property
    def diffusion_start(self) -> int:
        """Step at which the diffusion UNet starts training."""
        return self.stage_steps[0] + self.stage_steps[1]

    @property
    def stage(self) -> int:
        s1, s2 = self.stage_steps[:2]
        if self.step < s1:
            return 1
        if self.step < s1 + s2:
            return 2
        if len(self.stage_steps) == 3 and self.step >= sum(self.stage_steps):
            return 4
        return 3

    def batches(self, epoch: int):
        rng = np.random.default_rng(self.seed * 100_003 + epoch)
        n = len(self.volumes)
        for _ in range(self.steps_per_epoch):
            items = [draw_volume(self.volumes, int(rng.integers(n)), self.cfg.depth, rng) for _ in range(self.batch_size)]
            yield torch.stack([x for x, _ in items]), torch.stack([c for _, c in items])

    def _ae_loss(self, x: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        ae = self.model.ae
        mu, logvar = ae.encode(x, idx)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = ae.decode(z, idx)
        l1 = (rec - x).abs().mean()
        ci = self.cfg.image_channels
        ss = ms_ssim((rec[:, :ci] + 1) / 2, (x[:, :ci] + 1) / 2).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
        # soft Dice of the mask channels: a small structure is ~1 % of the pixels, and L1 alone let
        # the autoencoder drop it (first CPU run: no mask survived decoding); not in the seed
        pm, tm = (rec[:, ci:] + 1) / 2, (x[:, ci:] + 1) / 2
        inter = (pm * tm).sum(dim=(2, 3))
        dice = 1 - (2 * inter + 1) / (pm.sum(dim=(2, 3)) + tm.sum(dim=(2, 3)) + 1)
        return {"ae_l1": l1, "ae_ssim": ss, "ae_dice": dice.mean(), "kl": kl,
                "loss": l1 + (1 - ss) + dice.mean() + self.cfg.kl_weight * kl}

    def _canvas(self, vol: torch.Tensor) -> torch.Tensor:
        m = self.model
        b, c, d, s, _ = vol.shape
        with torch.no_grad():
            mu, _ = m.ae.encode(vol.permute(0, 2, 1, 3, 4).reshape(b * d, c, s, s), m.slice_index(b))
        return m.agg.to_canvas(mu.reshape(b, d, *mu.shape[1:]))

    def _agg_loss(self, vol: torch.Tensor) -> dict[str, torch.Tensor]:
        canvas = self._canvas(vol)
        mu, logvar = self.model.agg.encoder(canvas)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        l1 = (self.model.agg.decoder(z) - canvas).abs().mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
        return {"agg_l1": l1, "loss": l1 + self.cfg.kl_weight * kl}

    def _diff_loss(self, vol: torch.Tensor, cond: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        m = self.model
        with torch.no_grad():
            lat = m.agg.encoder(self._canvas(vol))[0] * m.latent_scale
        t = torch.randint(0, self.cfg.timesteps, (lat.shape[0],), generator=generator)
        noise = torch.randn(lat.shape, generator=generator)
        l1 = (m.unet(m.q_sample(lat, t, noise), t, cond) - noise).abs().mean()
        return {"diff_l1": l1, "loss": l1}

    def _refine_loss(self, vol: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 4: the refiner on the reconstructions of the first ``ceil(slices_per_step / depth)``
        volumes of the batch (reconstructing whole volumes through both autoencoders is most of a
        step's cost, so no more are reconstructed than needed). Residual form: every slice of
        those volumes, loss L1 + (1 - SSIM) + ``refine_z`` (L1 between the refined and the real
        slice-to-slice differences, so the refined stack changes from slice to slice as the real
        one does); diffusion form: ``slices_per_step`` random slices, noise-prediction L1."""
        m, ci = self.model, self.cfg.image_channels
        vol = vol[: max(1, -(-self.slices_per_step // self.cfg.depth))]
        with torch.no_grad():
            decoded = m.decode_latents(m.encode_volumes(vol))
        b, _, d, s, _ = vol.shape
        cond = m.refiner.condition(decoded)
        target = vol[:, :ci].permute(0, 2, 1, 3, 4).reshape(b * d, ci, s, s)
        centre = decoded[:, :ci].permute(0, 2, 1, 3, 4).reshape(b * d, ci, s, s)
        if m.refiner.diffusion:
            pick = torch.randperm(b * d)[: self.slices_per_step]
            cond, target = cond[pick], target[pick]
            t = torch.randint(0, self.cfg.timesteps, (len(target),))
            noise = torch.randn_like(target)
            l1 = (m.refiner(cond, m.q_sample(target, t, noise), t) - noise).abs().mean()
            return {"refine_l1": l1, "loss": l1}
        pred = centre + m.refiner(cond)
        l1 = (pred - target).abs().mean()
        ss = ms_ssim(((pred + 1) / 2).clamp(0, 1), (target + 1) / 2).mean()
        z = slice_step_error(pred.reshape(b, d, ci, s, s), target.reshape(b, d, ci, s, s))
        return {"refine_l1": l1, "refine_ssim": ss, "refine_z": z, "loss": l1 + (1 - ss) + z}

    def train_step(self, batch) -> dict[str, float]:
        vol, cond = batch
        stage = self.stage
        if stage == 3 and self.step == self.diffusion_start:  # scale latents to unit std once
            with torch.no_grad():
                lat = self.model.agg.encoder(self._canvas(vol))[0]
                self.model.latent_scale.fill_(1.0 / max(float(lat.std()), 1e-6))
        if stage == 1:
            b, c, d, s, _ = vol.shape
            flat = vol.permute(0, 2, 1, 3, 4).reshape(b * d, c, s, s)
            idx = self.model.slice_index(b)
            pick = torch.randperm(b * d)[: self.slices_per_step]
            losses = self._ae_loss(flat[pick], idx[pick])
        elif stage == 2:
            losses = self._agg_loss(vol)
        elif stage == 3:
            losses = self._diff_loss(vol, cond)
        else:
            losses = self._refine_loss(vol)
        opt = self.opts[stage - 1]
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if stage == 4:
            self.model.refiner.trained_steps += 1
        self.step += 1
        return {"stage": float(stage), **{k: float(v.detach()) for k, v in losses.items()}}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        m = self.model
        g = torch.Generator().manual_seed(self.seed)
        vol = torch.stack([v for v, _ in self.val])
        cond = torch.stack([c for _, c in self.val])
        b, c, d, s, _ = vol.shape
        flat = vol.permute(0, 2, 1, 3, 4).reshape(b * d, c, s, s)
        idx = m.slice_index(b)
        mu, _ = m.ae.encode(flat, idx)
        ae_l1 = float((m.ae.decode(mu, idx) - flat).abs().mean())
        canvas = self._canvas(vol)
        agg_l1 = float((m.agg.decoder(m.agg.encoder(canvas)[0]) - canvas).abs().mean())
        lat = m.agg.encoder(canvas)[0] * m.latent_scale
        diffs = []
        for t in (50, 250, 500, 750):
            noise = torch.randn(lat.shape, generator=g)
            tt = torch.full((b,), t, dtype=torch.long)
            diffs.append(float((m.unet(m.q_sample(lat, tt, noise), tt, cond) - noise).abs().mean()))
        out = {"ae_l1": ae_l1, "agg_l1": agg_l1, "diff_l1": float(np.mean(diffs))}
        out["loss"] = ae_l1 + agg_l1 + out["diff_l1"]
        if m.refiner is not None:
            out.update(self._refine_validation(vol, g))
            out["loss"] += out["refine_l1"]
        if self.stage >= 3 and self.step > self.diffusion_start:
            fake = m.sample(self.n_sample_volumes * self.cfg.depth, generator=torch.Generator().manual_seed(self.seed + 1))
            real = (flat + 1) / 2
            out.update(sample_metrics(real, fake, self.cfg.image_channels, self.cfg.mask_channels,
                                      inception=self.inception, seed=self.seed))
            save_latest_samples(self.sample_dir, fake, self.cfg.image_channels, self.step)
        return out

    @torch.no_grad()
    def _refine_validation(self, vol: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        """``refine_l1`` on the held-out volumes' reconstructions (residual: L1 of the refined image
        against the real one, next to ``decoded_l1`` of the unrefined; diffusion: noise-prediction
        L1 at four timesteps)."""
        m, ci = self.model, self.cfg.image_channels
        decoded = m.decode_latents(m.encode_volumes(vol))
        real = vol[:, :ci]
        if not m.refiner.diffusion:
            refined = m.refine_volumes(decoded)
            def as_stack(v: torch.Tensor) -> torch.Tensor:  # (B, C, D, S, S) -> images (B, D, C_img, S, S)
                return v[:, :ci].permute(0, 2, 1, 3, 4)

            return {"refine_l1": float((refined[:, :ci] - real).abs().mean()),
                    "decoded_l1": float((decoded[:, :ci] - real).abs().mean()),
                    "refine_z": float(slice_step_error(as_stack(refined), as_stack(vol))),
                    "decoded_z": float(slice_step_error(as_stack(decoded), as_stack(vol)))}
        b, _, d, s, _ = vol.shape
        cond = m.refiner.condition(decoded)
        target = real.permute(0, 2, 1, 3, 4).reshape(b * d, ci, s, s)
        errs = []
        for t in (50, 250, 500, 750):
            noise = torch.randn(target.shape, generator=g)
            tt = torch.full((len(target),), t, dtype=torch.long)
            errs.append(float((m.refiner(cond, m.q_sample(target, tt, noise), tt) - noise).abs().mean()))
        return {"refine_l1": float(np.mean(errs))}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opts": [o.state_dict() for o in self.opts], "step": self.step,
                "model_config": self.cfg.to_dict(), "stage_steps": list(self.stage_steps)}

    def load_state_dict(self, state: dict) -> None:
        self.model.condition_bank = torch.zeros_like(state["model"]["condition_bank"])
        self.model.load_state_dict(state["model"])
        for o, s in zip(self.opts, state["opts"]):
            o.load_state_dict(s)
        self.step = int(state["step"])

    def config(self) -> dict:
        cfg = self.cfg.to_dict()
        for key, default in _LATER_SETTINGS.items():
            if cfg.get(key) == default:
                del cfg[key]
        return {"task": "ldm", **cfg, "stage_steps": list(self.stage_steps)}


def load_generator(path: str | os.PathLike):
    """The :class:`~laugen_napari.models.ldm.SliceLDM` of a checkpoint, in eval mode."""
    from ..models.ldm import LDMConfig, SliceLDM
    from .loop import load_model

    def build(cfg: dict, state: dict):
        model = SliceLDM(LDMConfig(**cfg))
        if "condition_bank" in state:  # sized by the training data
            model.condition_bank = torch.zeros_like(state["condition_bank"])
        return model

    return load_model(path, "ldm", "slice-LDM", build)


def make_training(pairs=None, *, slices=None, volumes: VolumeSet | None = None, size: int = 64, steps: int = 1000,
                  out=None, resume: bool = False, seed: int = 0, labels=None, separate_labels: bool = False,
                  preset: str = "cpu", depth: int | None = None, stage_steps=None, lr: float = 1e-3,
                  batch_size: int = 4, steps_per_epoch: int = 50, inception=None, refine_steps: int = 0,
                  refiner: str = "residual", **model_options):
    """``(task, batches, run_training kwargs)`` for a slice-LDM run (module-level, picklable).

    Data: a folder of pairs or a :class:`VolumeSet` (``slices`` is not enough: the LDM needs whole volumes).
    ``refine_steps`` > 0 adds the refining module (``refiner``: residual or diffusion), trained in
    the last ``refine_steps`` of ``steps``; ``stage_steps`` then still gives the two autoencoders'
    steps and the diffusion UNet gets what is left."""
    from ..models.ldm import PRESETS, LDMConfig, SliceLDM
    from ..models.perceptual import load_inception

    inc = load_inception(inception) if inception else None
    if volumes is None:
        if pairs is None:
            raise ValueError("the slice LDM needs whole volumes: give a folder of image/mask pairs")
        volumes = volumes_from_folder(pairs, size, labels, separate_labels)
    if preset not in PRESETS:
        raise ValueError(f"LDM preset must be one of {tuple(PRESETS)}, got {preset!r}")
    steps = int(steps)
    refine_steps = int(refine_steps or 0)
    if refine_steps < 0:
        raise ValueError("refine_steps must be >= 0")
    if stage_steps is None:
        stage_steps = (max(1, int(0.3 * steps)), max(1, int(0.15 * steps)))
    stage_steps = tuple(int(v) for v in stage_steps)[:2]
    if refine_steps:
        diffusion_steps = steps - sum(stage_steps) - refine_steps
        if diffusion_steps < 1:
            raise ValueError(f"--steps {steps} leaves no diffusion steps after the autoencoders' {list(stage_steps)} "
                             f"and {refine_steps} refine steps")
        stage_steps = (*stage_steps, diffusion_steps)
        model_options = {**model_options, "refiner": refiner}
    torch.manual_seed(seed)
    opts = {**PRESETS[preset], **{k: v for k, v in model_options.items() if v is not None}}
    if depth is not None:
        opts["depth"] = depth
    cfg = LDMConfig(size=volumes.size, image_channels=volumes.image_channels, mask_channels=volumes.n_labels, lr=lr,
                    **opts)
    task = LDMTask(SliceLDM(cfg), volumes, stage_steps=tuple(stage_steps), batch_size=batch_size,
                   steps_per_epoch=steps_per_epoch, seed=seed, inception=inc, sample_dir=out)
    return task, task.batches, {"steps": steps, "out_dir": out, "resume": resume}
