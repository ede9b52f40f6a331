"""Training the image+mask generators (dHVAE, HVAE, VAE): 2D slice data and the training task.

2D data (shared by every generator of :mod:`laugen_napari.training.generators`): slices of NIfTI
image/mask pairs (found by :func:`laugen_napari.io.pairs.find_pairs`). A slice is kept when its
mask contains the structure (at least ``min_voxels`` voxels of the selected labels). Each kept
slice is min-max normalised to [0, 1] on its own (the minimum and maximum are recorded, so
intensities can be mapped back), padded to a square and resized to ``size`` x ``size``; its slice
index (along Z of the closest-canonical (Z, Y, X) array, i.e. axial for RAS data) and the pair it
came from are kept. Labels are either merged into one structure (the default: every non-zero
label, or the selected ones) or kept apart (``separate_labels``: label k of ``selected`` becomes
class k, one mask channel each).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SIZES = (32, 64, 128)


@dataclass
class SliceSet:
    """Slices of image+mask pairs ready for a generator of (C_img + C_mask)-channel pairs.

    Attributes:
        images: (N, S, S) float32 in [0, 1], or (N, C_img, S, S) for several modalities.
        masks: (N, S, S) uint8 class indices in 0..n_labels (0 background).
        slice_index: (N,) index of the slice along Z in its volume.
        source: (N,) index into ``names`` of the pair each slice came from.
        intensity_min, intensity_max: (N,) original intensities mapped to 0 and 1.
        names: one name per pair (file names or "arrays").
    """

    images: np.ndarray
    masks: np.ndarray
    slice_index: np.ndarray
    source: np.ndarray
    intensity_min: np.ndarray
    intensity_max: np.ndarray
    names: list[str] = field(default_factory=list)
    n_labels: int = 1

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def image_channels(self) -> int:
        return 1 if self.images.ndim == 3 else int(self.images.shape[1])

    def tensor(self) -> torch.Tensor:
        """(N, C_img + n_labels, S, S) float32: the image channel(s), then one 0/1 channel per label
        (for one label: channel 0 the image, channel 1 the mask)."""
        img = self.images[:, None] if self.images.ndim == 3 else self.images
        onehot = np.stack([self.masks == k for k in range(1, self.n_labels + 1)], axis=1).astype(np.float32)
        return torch.from_numpy(np.concatenate([img.astype(np.float32), onehot], axis=1))

    def subset(self, idx: np.ndarray) -> "SliceSet":
        return SliceSet(self.images[idx], self.masks[idx], self.slice_index[idx], self.source[idx],
                        self.intensity_min[idx], self.intensity_max[idx], list(self.names), self.n_labels)

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple["SliceSet", "SliceSet"]:
        """Random train/validation split of the slices (at least one of each when N >= 2)."""
        n = len(self)
        n_val = min(max(1, int(round(n * val_fraction))), n - 1) if n >= 2 else 0
        perm = np.random.default_rng(seed).permutation(n)
        return self.subset(np.sort(perm[n_val:])), self.subset(np.sort(perm[:n_val]))

    @staticmethod
    def concat(sets: Sequence["SliceSet"]) -> "SliceSet":
        names: list[str] = []
        parts = []
        if len({s.n_labels for s in sets}) > 1:
            raise ValueError("slice sets with different numbers of labels cannot be joined")
        for s in sets:
            parts.append((s, len(names)))
            names.extend(s.names)
        return SliceSet(
            np.concatenate([s.images for s, _ in parts]), np.concatenate([s.masks for s, _ in parts]),
            np.concatenate([s.slice_index for s, _ in parts]), np.concatenate([s.source + off for s, off in parts]),
            np.concatenate([s.intensity_min for s, _ in parts]), np.concatenate([s.intensity_max for s, _ in parts]),
            names, sets[0].n_labels,
        )


def _square_resize(plane: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) -> (N, size, size): centred zero padding to a square, then area-aware bilinear."""
    n, h, w = plane.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    plane = F.pad(plane, (left, side - w - left, top, side - h - top))
    if side == size:
        return plane
    return F.interpolate(plane[:, None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=side > size)[:, 0]


def slices_from_arrays(
    image: np.ndarray,
    labels: np.ndarray,
    size: int = 64,
    selected: Sequence[int] | None = None,
    min_voxels: int = 1,
    name: str = "arrays",
    separate_labels: bool = False,
) -> SliceSet:
    """Slices along Z of one (Z, Y, X) image and label map that contain the selected labels.

    Args:
        image: (Z, Y, X) array, or (C, Z, Y, X) for C modalities (a 2D pair may be given as (Y, X)).
        labels: (Z, Y, X) integer label map.
        size: output side in pixels (32, 64 or 128).
        selected: label values forming the structure (default: every non-zero label).
        min_voxels: a slice needs at least this many structure voxels (before resizing).
        name: how errors and :attr:`SliceSet.names` refer to this pair.
        separate_labels: keep the selected labels apart (class k = k-th of ``selected``, or of the
            sorted non-zero labels present); default: one merged structure.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if image.ndim == 2:
        image = image[None]
    multi = image.ndim == 4
    if image.shape[-3:] != labels.shape or labels.ndim != 3 or image.ndim not in (3, 4):
        raise ValueError(f"{name}: image and mask differ in shape: {image.shape} vs {labels.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{name}: the image holds NaN or infinite values")
    mask = np.isin(labels, list(selected)) if selected else labels != 0
    if separate_labels:
        values = list(selected) if selected else sorted(int(v) for v in np.unique(labels) if v != 0)
        classes = np.zeros(labels.shape, np.uint8)
        for k, v in enumerate(values, 1):
            classes[labels == v] = k
        n_labels = max(1, len(values))
    else:
        classes, n_labels = mask.astype(np.uint8), 1
    counts = mask.reshape(mask.shape[0], -1).sum(1)
    keep = np.flatnonzero(counts >= max(1, int(min_voxels)))
    if keep.size:  # drop slices whose structure vanishes at the training size
        small = _square_resize(torch.from_numpy(mask[keep].astype(np.float32)), size) >= 0.5
        keep = keep[small.flatten(1).any(1).numpy()]
    if keep.size == 0:
        what = f"labels {list(selected)}" if selected else "any non-zero label"
        raise ValueError(f"{name}: the mask has no structure ({what}, >= {min_voxels} voxels in a slice)")
    chans = image if multi else image[None]
    imgs, los, his = [], [], []
    for ch in chans:
        img = torch.from_numpy(ch[keep].astype(np.float32))
        lo = img.flatten(1).min(1).values
        hi = img.flatten(1).max(1).values
        img = (img - lo[:, None, None]) / (hi - lo).clamp(min=1e-12)[:, None, None]
        imgs.append(_square_resize(img, size).clamp(0.0, 1.0))
        los.append(lo)
        his.append(hi)
    img = torch.stack(imgs, 1) if multi else imgs[0]
    # labels: one-hot, resized, the largest class (>= 0.5 in total) per pixel
    onehot = torch.from_numpy(np.stack([classes[keep] == k for k in range(1, n_labels + 1)], 0).astype(np.float32))
    probs = torch.stack([_square_resize(o, size) for o in onehot], 0)  # (L, N, S, S)
    best = probs.argmax(0) + 1
    msk = torch.where(probs.sum(0) >= 0.5, best, torch.zeros_like(best)).to(torch.uint8)
    return SliceSet(img.numpy(), msk.numpy(), keep.astype(np.int64), np.zeros(keep.size, np.int64),
                    los[0].numpy().astype(np.float64), his[0].numpy().astype(np.float64), [name], n_labels)


def find_pairs(directory: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(image, mask) NIfTI paths of the pairs in ``directory``, by the project's one rule
    (:func:`laugen_napari.io.pairs.find_pairs`)."""
    from ..io.pairs import find_pairs as find

    return [(Path(p.image), Path(p.mask)) for p in find(directory)]


def slices_from_files(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    size: int = 64,
    selected: Sequence[int] | None = None,
    min_voxels: int = 1,
    separate_labels: bool = False,
) -> SliceSet:
    """Slices of several NIfTI pairs (read in closest-canonical (Z, Y, X) order). A 4D image file
    holds several modalities (channels) on the mask's grid; every pair needs the same number."""
    from ..io.pairs import read_pair

    sets = []
    for img_path, lab_path in pairs:
        img, lab = read_pair(img_path, lab_path, channels=True)
        sets.append(slices_from_arrays(img.data, lab.data, size, selected, min_voxels, name=Path(lab_path).name,
                                       separate_labels=separate_labels))
    if not sets:
        raise ValueError("no image/mask pairs given")
    if len({x.image_channels for x in sets}) > 1:
        raise ValueError("the images have different numbers of channels (modalities): "
                         + ", ".join(f"{x.names[0]}: {x.image_channels}" for x in sets))
    if separate_labels and not selected and len({s.n_labels for s in sets}) > 1:
        raise ValueError("the pairs hold different label sets: give the labels to use (--labels)")
    return SliceSet.concat(sets)


def slices_from_folder(directory: str | os.PathLike, size: int = 64, selected: Sequence[int] | None = None,
                       min_voxels: int = 1, separate_labels: bool = False) -> SliceSet:
    """Slices of every pair found by :func:`find_pairs` in ``directory``."""
    return slices_from_files(find_pairs(directory), size, selected, min_voxels, separate_labels)


# ---------------------------------------------------------------------------------------------
# The dHVAE / HVAE / VAE training task for :func:`laugen_napari.training.loop.run_training`
# ---------------------------------------------------------------------------------------------

def _bce_logits(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class DHVAETask:
    """Trains a :class:`~laugen_napari.models.dhvae.DHVAE` on a :class:`SliceSet`.

    Loss per step (the paper's eq. 12): ``alpha * (-ELBO_H / dims) + beta * (L_rec + L_gen)`` for
    dHVAE, ``-ELBO_H / dims`` for HVAE/VAE; ``dims`` = 2 * S * S. ``L_rec`` = L1 of both channels
    + perceptual distance on the image channel: VGG16 features when ``vgg`` is given (the paper),
    else ST-LPIPS when ``lpips`` is given, else feature matching on the discriminator's
    channel-normalised features of all channels (the ``hvae-perc`` ablation has no discriminator
    and then uses ST-LPIPS of the stlpips-pytorch wheel). Gradients are clipped
    to norm ``clip_grad`` (0: off; not in the paper). The discriminator term starts after
    ``cfg.disc_warmup`` steps: then the discriminator is also updated, real slices against pairs
    decoded from the prior.

    Train values (per step): ``loss``, ``nelbo`` (-ELBO_H in nats per slice), ``l1``, ``perc``,
    ``gen`` (generator adversarial loss), ``disc`` (discriminator loss), ``gnorm`` (generator
    gradient norm before clipping), ``eps`` (mean leapfrog
    step size), ``beta0``. Validation: ``loss`` (= ``nelbo`` on held-out slices), ``psnr`` (dB) and
    ``ssim`` of reconstructed images, ``dice`` of reconstructed masks. Sample metrics: ``jsd``
    (bits) and ``kld`` (nats) between real and generated mask class distributions, ``nonempty``
    (fraction of generated masks with >= ``min_mask_pixels`` pixels), ``kld_paired``,
    ``msssim_pairwise`` / ``near_duplicates`` / ``lpips_pairwise`` (diversity), ``fid`` with an
    Inception file (:func:`~laugen_napari.training.generators.sample_metrics`).
    """

    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, model, train: SliceSet, val: SliceSet | None = None, *, batch_size: int = 8,
                 steps_per_epoch: int = 50, vgg=None, inception=None, seed: int = 0, n_samples: int = 64,
                 min_mask_pixels: int = 4, sample_dir: str | os.PathLike | None = None, clip_grad: float = 1.0,
                 lpips=None):
        from ..models.perceptual import STLPIPS_NAME, load_stlpips, notice

        if len(train) == 0:
            raise ValueError("no training slices")
        if model.cfg.size != train.size:
            raise ValueError(f"model size {model.cfg.size} differs from the slice size {train.size}")
        self.model = model
        self.cfg = model.cfg
        self.train_x = train.tensor()
        self.val_x = val.tensor() if val is not None and len(val) else self.train_x[: min(16, len(train))]
        self.batch_size, self.steps_per_epoch, self.seed = int(batch_size), int(steps_per_epoch), int(seed)
        self.vgg, self.inception, self.lpips = vgg, inception, lpips
        self.image_channels, self.n_labels = train.image_channels, train.n_labels
        if model.cfg.in_channels != self.train_x.shape[1]:
            raise ValueError(f"model channels {model.cfg.in_channels} differ from the data's {self.train_x.shape[1]}")
        self.n_samples, self.min_mask_pixels = int(n_samples), int(min_mask_pixels)
        self.sample_dir = Path(sample_dir) if sample_dir is not None else None
        self.clip_grad = float(clip_grad)
        self.step = 0
        kw = dict(lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay)
        self.opt_g = torch.optim.AdamW(model.generator_parameters(), **kw)
        self.opt_d = torch.optim.AdamW(model.discriminator.parameters(), **kw) if model.discriminator is not None else None
        self.notices: list[str] = []
        perc = self.cfg.regularised and self.cfg.use_perceptual
        if perc and vgg is None and lpips is None and model.discriminator is None:
            self.lpips = load_stlpips(STLPIPS_NAME)
            self.notices.append(notice("no VGG16 weights file given and no discriminator: the perceptual term is "
                                       f"{self.lpips.name}"))
        elif perc and vgg is None and lpips is None:
            self.notices.append(notice("no VGG16 weights file given: the perceptual term uses feature matching on "
                                       "the discriminator's features instead of ImageNet VGG16 features"))
        if inception is None:
            self.notices.append(notice("no Inception weights file given: FID is skipped"))

    def batches(self, epoch: int):
        """``steps_per_epoch`` random batches (N, 2, S, S), reproducible per (seed, epoch)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.train_x)
        for _ in range(self.steps_per_epoch):
            yield self.train_x[torch.randint(0, n, (min(self.batch_size, n),), generator=g)]

    def _perceptual(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        from ..models.perceptual import feature_distance

        if self.vgg is not None:
            return feature_distance(self.vgg(recon[:, :1]), self.vgg(x[:, :1]))
        if self.lpips is not None:
            return self.lpips(recon[:, :1], x[:, :1]).mean()
        d = self.model.discriminator
        unit = lambda f: f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-6)  # noqa: E731 - bounded as D's scale drifts
        return feature_distance([unit(f) for f in d.features(recon)], [unit(f).detach() for f in d.features(x)])

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        m, cfg = self.model, self.cfg
        x = batch.float()
        dims = x[0].numel()
        out = m.elbo(x)
        nelbo = -out["elbo"].mean()
        values = {"nelbo": nelbo.detach().item()}
        if cfg.kl_warmup > 0 and self.step < cfg.kl_warmup:  # anneal the KL-like part in
            w = self.step / cfg.kl_warmup
            rec = out["rec"].mean()
            nelbo = -(rec + w * (out["elbo"].mean() - rec))
            values["kl_weight"] = w
        disc_on = m.discriminator is not None and self.step >= cfg.disc_warmup
        fake = None
        if cfg.regularised:
            recon = torch.sigmoid(out["logits"])
            rec_on = cfg.use_perceptual  # the paper's L_rec = L1 + perceptual, switched as one
            l1 = (recon - x).abs().mean() if rec_on else torch.zeros(())
            perc = self._perceptual(recon, x) if rec_on else torch.zeros(())
            gen = torch.zeros(())
            if disc_on:
                if cfg.disc_fakes == "recon":  # reconstructions (the authors' code): tied to real inputs
                    fake = torch.sigmoid(out["logits"])
                else:  # pairs decoded from the prior (the paper's eq. 11)
                    fake = torch.sigmoid(m.decode(torch.randn(x.shape[0], cfg.latent_dim)))
                for p in m.discriminator.parameters():
                    p.requires_grad_(False)
                gen = _bce_logits(m.discriminator(fake), 1.0)
                for p in m.discriminator.parameters():
                    p.requires_grad_(True)
            beta = cfg.reg_weight
            loss = (1.0 - beta) * nelbo / dims + beta * (l1 + perc + gen)
            values.update(l1=l1.detach().item(), perc=perc.detach().item(), gen=gen.detach().item())
        else:
            loss = nelbo / dims
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_grad:
            values["gnorm"] = float(torch.nn.utils.clip_grad_norm_(m.generator_parameters(), self.clip_grad))
        self.opt_g.step()
        if self.opt_d is not None:
            self.opt_d.zero_grad(set_to_none=True)  # feature matching left gradients on D: not a D update
            d_loss = torch.zeros(())
            if disc_on:
                d_loss = _bce_logits(m.discriminator(x), 1.0) + _bce_logits(m.discriminator(fake.detach()), 0.0)
                d_loss.backward()
                if self.clip_grad:
                    torch.nn.utils.clip_grad_norm_(m.discriminator.parameters(), self.clip_grad)
                self.opt_d.step()
            values["disc"] = d_loss.detach().item()
        if cfg.leapfrog_steps > 0:
            values.update(eps=m.eps.mean().detach().item(), beta0=m.beta0.detach().item())
        self.step += 1
        values["loss"] = loss.detach().item()
        return values

    def validate(self) -> dict[str, float]:
        from ..metrics import dice, psnr, ssim

        m = self.model
        x = self.val_x
        g = torch.Generator().manual_seed(self.seed)
        nelbo = float(-m.elbo(x, generator=g)["elbo"].mean())
        rec = m.reconstruct(x).numpy()
        xi = x.numpy()
        ps = [psnr(r[0], t[0], 1.0) for r, t in zip(rec, xi)]
        ss = [ssim(r[0], t[0], 1.0) for r, t in zip(rec, xi)]
        from .generators import split_pairs

        ci, labels = self.image_channels, list(range(1, self.n_labels + 1))
        rl, tl = split_pairs(rec, ci)[1], split_pairs(xi, ci)[1]
        dc = [np.nanmean(list(dice(r, t, labels=labels).values())) for r, t in zip(rl, tl)]
        return {"loss": nelbo, "psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "dice": float(np.nanmean(dc))}

    def sample(self) -> dict[str, float]:
        from .generators import sample_metrics, save_latest_samples

        g = torch.Generator().manual_seed(self.seed + 1)
        if self.cfg.latent_sampling == "fitted":
            self.model.fit_latent_density(self.train_x)
        s = self.model.sample(self.n_samples, generator=g)
        out = sample_metrics(self.train_x, s, self.image_channels, self.n_labels, min_mask_pixels=self.min_mask_pixels,
                             inception=self.inception, lpips=self.lpips, seed=self.seed)
        save_latest_samples(self.sample_dir, s, self.image_channels, self.step)
        return out

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None, "step": self.step,
                "model_config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("latent_mean", "latent_chol"):
            if key in state["model"]:
                setattr(self.model, key, torch.zeros_like(state["model"][key]))
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.opt_d is not None and state.get("opt_d") is not None:
            self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])

    def config(self) -> dict:
        return {"task": "dhvae", **self.cfg.to_dict()}


def load_generator(path: str | os.PathLike):
    """The :class:`~laugen_napari.models.dhvae.DHVAE` of a training checkpoint (last.pt / best.pt), in eval mode."""
    from ..models.dhvae import DHVAE, DHVAEConfig
    from .loop import load_model

    def build(cfg: dict, state: dict):
        model = DHVAE(DHVAEConfig(**cfg))
        for key in ("latent_mean", "latent_chol"):  # absent in older checkpoints; sized by the fit
            if key in state:
                setattr(model, key, torch.zeros_like(state[key]))
        return model

    return load_model(path, "dhvae", "dHVAE/HVAE/VAE", build)


def make_training(pairs: str | os.PathLike | None = None, *, slices: SliceSet | None = None, size: int = 64,
                  model: str = "dhvae", steps: int = 1000, out: str | os.PathLike | None = None, resume: bool = False,
                  vgg: str | os.PathLike | None = None, inception: str | os.PathLike | None = None,
                  lpips: str | os.PathLike | None = None, batch_size: int = 8, steps_per_epoch: int = 50, seed: int = 0,
                  val_fraction: float = 0.1, clip_grad: float = 1.0, labels=None, separate_labels: bool = False,
                  preset: str | None = "cpu", **model_options):
    """Build ``(task, batches, run_training kwargs)`` from a folder of pairs (or slices); a
    module-level factory usable by :class:`~laugen_napari.training.process.TrainingProcess`.

    ``preset`` (``cpu`` / ``paper`` / None) sets widths, latent channels and K; ``model_options``
    (:class:`~laugen_napari.models.dhvae.DHVAEConfig` fields, None = preset value) override it."""
    from ..models.dhvae import build_model
    from ..models.perceptual import load_inception, load_stlpips, load_vgg16

    vgg_net = load_vgg16(vgg) if vgg else None  # bad files fail before any data work
    inc_net = load_inception(inception) if inception else None
    lp_net = load_stlpips(lpips) if lpips else None
    if slices is None:
        if pairs is None:
            raise ValueError("give a folder of image/mask pairs or slices")
        slices = slices_from_folder(pairs, size, list(labels) if labels else None, separate_labels=separate_labels)
    train, val = slices.split(val_fraction, seed)
    torch.manual_seed(seed)
    if model_options.get("widths") is not None:
        model_options["widths"] = tuple(model_options["widths"])
    net = build_model(model, preset, size=slices.size, in_channels=slices.image_channels + slices.n_labels,
                      image_channels=slices.image_channels,
                      **model_options)
    task = DHVAETask(net, train, val, batch_size=batch_size, steps_per_epoch=steps_per_epoch, vgg=vgg_net,
                     inception=inc_net, seed=seed, sample_dir=out, clip_grad=clip_grad, lpips=lp_net)
    return task, task.batches, {"steps": int(steps), "out_dir": out, "resume": resume}
