"""Does synthetic data help segmentation? A 2D U-Net trained on real slices vs real + N synthetic
pairs from a generator of the family (N a sweep), and vs real + LAUGEN series frames, k-fold.

Protocol (after seeds 002 Fig. 6 / Table 4 and 003's tables):

- Data: slices of image/mask pairs (the generators' slice rule: structure-containing slices,
  per-slice min-max, ``size`` x ``size``).
- Folds by subject: with >= k subjects, subjects are split into k groups; with fewer (the shipped
  sample is one scan), each subject's slices are cut into k contiguous blocks along Z and the
  folds are those blocks (neighbouring slices never sit on both sides; the CSV says which rule
  was used). Every condition of a fold uses the same test slices, U-Net seed and step count.
- Synthetic pairs: drawn from a generator checkpoint (masks with >= ``min_mask_pixels`` pixels;
  note: a checkpoint trained on all subjects has seen the test fold — give ``generator_steps`` to
  train a generator per fold on that fold's training slices only), or none.
- LAUGEN: for every training subject, one series of ``laugen_frames`` frames (GenerationSettings;
  frame 0, the input, is skipped); its structure slices become extra pairs (test blocks removed).
- Model: MONAI's BasicUNet (2D), Dice + cross-entropy, Adam; the same for all conditions.
- Metric: Dice per label over the stacked test slices of a fold; summary mean ± sd over folds.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

UNET_FEATURES = (8, 16, 32, 64, 128, 8)


@dataclass
class Condition:
    """One training set variant: its name, kind (``real``, ``generator``, ``laugen``) and size."""

    name: str
    kind: str
    n_synthetic: int = 0


def make_folds(slices, k: int) -> tuple[list[np.ndarray], str]:
    """Test-slice indices of k folds and the rule used (see the module docstring)."""
    if k < 2:
        raise ValueError(f"folds must be at least 2, got {k}")
    subjects = np.unique(slices.source)
    if len(subjects) >= k:
        groups = np.array_split(np.random.default_rng(0).permutation(subjects), k)
        return [np.flatnonzero(np.isin(slices.source, g)) for g in groups], f"by subject ({len(subjects)} subjects)"
    folds: list[list[int]] = [[] for _ in range(k)]
    for s in subjects:
        idx = np.flatnonzero(slices.source == s)
        idx = idx[np.argsort(slices.slice_index[idx])]
        if len(idx) < k:
            raise ValueError(f"{slices.names[s]}: {len(idx)} structure slices cannot form {k} folds")
        for f, block in enumerate(np.array_split(idx, k)):
            folds[f].extend(block.tolist())
    return [np.array(sorted(f)) for f in folds], f"contiguous Z blocks ({len(subjects)} subject(s) < {k} folds)"


def train_unet(images: np.ndarray, labels: np.ndarray, n_classes: int, *, steps: int = 300, batch_size: int = 8,
               lr: float = 1e-3, seed: int = 0, features: Sequence[int] = UNET_FEATURES) -> torch.nn.Module:
    """A 2D BasicUNet trained on images (N, C, S, S) in [0, 1] and label maps (N, S, S)."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    net = BasicUNet(spatial_dims=2, in_channels=images.shape[1], out_channels=n_classes, features=tuple(features))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    y = torch.from_numpy(np.ascontiguousarray(labels, np.int64))[:, None]
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=g)
        xb, yb = x[idx], y[idx]
        if torch.rand((), generator=g) < 0.5:  # left-right flip, the only augmentation, for every condition
            xb, yb = xb.flip(-1), yb.flip(-1)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xb), yb).backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def evaluate(net: torch.nn.Module, images: np.ndarray, labels: np.ndarray, n_labels: int) -> dict[int, float]:
    """Dice per label 1..n_labels over the stacked slices."""
    from ..metrics import dice

    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    pred = torch.cat([net(x[i:i + 32]).argmax(1) for i in range(0, len(x), 32)]).numpy().astype(np.uint8)
    return dice(pred, labels.astype(np.uint8), labels=list(range(1, n_labels + 1)))


def laugen_slices(pairs: Sequence[tuple[str, str]], subjects: Sequence[int], slices, settings, size: int,
                  selected, separate_labels: bool, exclude: dict[int, set[int]]):
    """Structure slices of one LAUGEN series per training subject (frames 1..T-1), without the
    slice indices in ``exclude[subject]`` (the test block of that subject)."""
    from ..core.series import series_seed
    from ..io.nifti import load_volume
    from ..pipeline import build_augmenter
    from .dhvae import SliceSet, slices_from_arrays

    parts = []
    for s in subjects:
        img_path, lab_path = pairs[s]
        image, mask = load_volume(img_path, ndim=3), load_volume(lab_path, ndim=3)
        aug = build_augmenter(image, mask, settings)
        draw = settings.trajectory_model().sample(settings.frames, series_seed(settings.seed, int(s)))
        for frame in aug.iter_frames(draw):
            if frame.t == 0:
                continue
            try:
                fs = slices_from_arrays(frame.image, frame.labels, size, selected, name=f"{slices.names[s]}_t{frame.t}",
                                        separate_labels=separate_labels)
            except ValueError:
                continue
            keep = np.flatnonzero(~np.isin(fs.slice_index, list(exclude.get(int(s), set()))))
            if keep.size:
                parts.append(fs.subset(keep))
    if not parts:
        return None
    return SliceSet.concat(parts)


def _as_xy(slices) -> tuple[np.ndarray, np.ndarray]:
    img = slices.images[:, None] if slices.images.ndim == 3 else slices.images
    return img.astype(np.float32), slices.masks


def run_segmentation_experiment(
    pairs_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    size: int = 64,
    labels: Sequence[int] | None = None,
    separate_labels: bool = False,
    folds: int = 3,
    synthetic: Sequence[int] = (0, 16, 64),
    generator_checkpoint: str | os.PathLike | None = None,
    generator: str | None = None,
    generator_steps: int = 0,
    generator_options: dict | None = None,
    laugen_settings=None,
    unet_steps: int = 300,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    min_mask_pixels: int = 10,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run the experiment; writes OUT/segmentation_folds.csv, segmentation_summary.csv and
    segmentation_dice.png and returns the summary rows (condition, label, dice_mean, dice_sd, ...)."""
    from .dhvae import find_pairs, slices_from_files
    from .generators import GENERATORS, load_any, sample_nonempty

    say = progress or (lambda m: None)
    synthetic = sorted({int(n) for n in synthetic})
    if any(n < 0 for n in synthetic):
        raise ValueError("synthetic counts must be >= 0")
    if any(n > 0 for n in synthetic) and not (generator_checkpoint or (generator and generator_steps > 0)):
        raise ValueError("synthetic counts > 0 need a generator checkpoint, or a generator name and generator_steps")
    if generator and generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; choose one of {', '.join(GENERATORS)}")
    pairs = [tuple(str(p) for p in pr) for d in pairs_dirs for pr in find_pairs(d)]
    selected = list(labels) if labels else None
    slices = slices_from_files(pairs, size, selected, separate_labels=separate_labels)
    n_labels = slices.n_labels
    fold_idx, rule = make_folds(slices, folds)
    ckpt_model = None
    if generator_checkpoint:
        gen_name, ckpt_model = load_any(generator_checkpoint)
        generator = generator or gen_name
        if getattr(ckpt_model.cfg, "size", size) != size:
            raise ValueError(f"the generator makes {ckpt_model.cfg.size}x{ckpt_model.cfg.size} slices, the experiment uses {size}")
    conditions = [Condition("real", "real")]
    conditions += [Condition(f"real + {n} {generator}", "generator", n) for n in synthetic if n > 0]
    if laugen_settings is not None:
        conditions.append(Condition(f"real + LAUGEN ({laugen_settings.frames - 1} frames/subject)", "laugen"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for f, test in enumerate(fold_idx):
        train_idx = np.setdiff1d(np.arange(len(slices)), test)
        train, test_set = slices.subset(train_idx), slices.subset(test)
        xr, yr = _as_xy(train)
        xt, yt = _as_xy(test_set)
        model = ckpt_model
        if model is None and generator and generator_steps > 0 and any(n > 0 for n in synthetic):
            say(f"fold {f + 1}/{folds}: training {generator} for {generator_steps} steps on the fold's training slices")
            task, batches, kw = GENERATORS[generator].make_training(slices=train, size=size, steps=generator_steps,
                                                                     seed=seed + f, **(generator_options or {}))
            from .loop import run_training

            for _ in run_training(task, batches, **kw):
                pass
            model = task.model.eval()
        synth = None
        if model is not None and synthetic and synthetic[-1] > 0:
            si, sl, _ = sample_nonempty(model, synthetic[-1], min_mask_pixels, seed=seed + 1000 * f)
            synth = (si, sl)
        for cond in conditions:
            x, y = xr, yr
            n_syn = 0
            if cond.kind == "generator":
                if synth is None or len(synth[0]) == 0:
                    say(f"fold {f + 1}/{folds}: {cond.name}: skipped, the generator gave no pair with a mask of "
                        f">= {min_mask_pixels} pixels")
                    continue
                n_syn = min(cond.n_synthetic, len(synth[0]))
                x = np.concatenate([xr, synth[0][:n_syn]])
                y = np.concatenate([yr, synth[1][:n_syn]])
            elif cond.kind == "laugen":
                subjects = np.unique(train.source)
                exclude = {int(s): set(test_set.slice_index[test_set.source == s].tolist()) for s in np.unique(test_set.source)}
                extra = laugen_slices(pairs, subjects, slices, laugen_settings, size, selected, separate_labels, exclude)
                if extra is not None:
                    xe, ye = _as_xy(extra)
                    x, y, n_syn = np.concatenate([xr, xe]), np.concatenate([yr, ye]), len(xe)
            say(f"fold {f + 1}/{folds}: {cond.name}: {len(xr)} real + {n_syn} extra slices")
            net = train_unet(x, y, n_labels + 1, steps=unet_steps, batch_size=batch_size, lr=lr, seed=seed + f)
            for lab, d in evaluate(net, xt, yt, n_labels).items():
                rows.append({"condition": cond.name, "kind": cond.kind, "generator": generator if cond.kind == "generator" else "",
                             "n_synthetic": n_syn, "fold": f, "label": lab, "dice": d, "n_train_real": len(xr),
                             "n_test": len(xt), "folds_rule": rule})
    _write_csv(out / "segmentation_folds.csv", rows)
    summary = summarise(rows)
    _write_csv(out / "segmentation_summary.csv", summary)
    plot_summary(summary, out / "segmentation_dice.png")
    return summary


def summarise(rows: list[dict]) -> list[dict]:
    """Dice mean ± sd over folds per (condition, label), in the order conditions first appear."""
    out = []
    keys = list(dict.fromkeys((r["condition"], r["label"]) for r in rows))
    for cond, lab in keys:
        sel = [r for r in rows if r["condition"] == cond and r["label"] == lab]
        d = np.array([r["dice"] for r in sel], float)
        out.append({"condition": cond, "kind": sel[0]["kind"], "n_synthetic": int(np.mean([r["n_synthetic"] for r in sel])),
                    "label": lab, "dice_mean": float(np.nanmean(d)), "dice_sd": float(np.nanstd(d, ddof=1)) if len(d) > 1 else 0.0,
                    "folds": len(d), "folds_rule": sel[0]["folds_rule"]})
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    os.replace(tmp, path)


def plot_summary(summary: list[dict], png: Path) -> None:
    """Dice (mean ± sd over folds) per label against the number of synthetic pairs; LAUGEN as a
    separate marker at its number of extra slices (seed 002 Fig. 6 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({r["label"] for r in summary})
    fig, axes = plt.subplots(1, len(labels), figsize=(4.5 * len(labels), 3.6), squeeze=False)
    for ax, lab in zip(axes[0], labels):
        gen = [r for r in summary if r["label"] == lab and r["kind"] in ("real", "generator")]
        gen.sort(key=lambda r: r["n_synthetic"])
        ax.errorbar([r["n_synthetic"] for r in gen], [r["dice_mean"] for r in gen], [r["dice_sd"] for r in gen],
                    fmt="o-", capsize=3, label="real + generated")
        for r in summary:
            if r["label"] == lab and r["kind"] == "laugen":
                ax.errorbar([r["n_synthetic"]], [r["dice_mean"]], [r["dice_sd"]], fmt="s", color="C3", capsize=3,
                            label="real + LAUGEN frames")
        ax.set(xlabel="extra training slices", ylabel="Dice (mean ± sd over folds)", title=f"label {lab}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
