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
  note: a checkpoint trained on all subjects has seen the test fold), or, with ``generators`` and
  ``generator_steps``, from one generator per name trained per fold on that fold's training
  slices only (the slice LDM, which needs whole volumes, gets each subject's volume without the
  Z range of its test block: the runs of slices above and below it, as separate volumes). How
  many drawn pairs had a usable mask is recorded (``n_drawn`` / ``n_usable``); a generator with
  no usable pair keeps its rows, with Dice NaN.
- The same N synthetic pairs are a prefix of the larger draws (N = 16 is part of N = 64).
- LAUGEN: for every training subject, one series of ``laugen_frames`` frames (GenerationSettings;
  frame 0, the input, is skipped); its structure slices become extra pairs (test blocks removed).
- Model: MONAI's BasicUNet (2D), Dice + cross-entropy, Adam; the same for all conditions.
- Metric: Dice per label over the stacked test slices of a fold; summary mean ± sd over folds.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

UNET_FEATURES = (8, 16, 32, 64, 128, 8)


@dataclass
class Condition:
    """One training set variant: its name, kind (``real``, ``generator``, ``laugen``), size and generator."""

    name: str
    kind: str
    n_synthetic: int = 0
    generator: str = ""


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
    from ..io.pairs import read_pair
    from ..pipeline import build_augmenter
    from .dhvae import SliceSet, slices_from_arrays

    parts = []
    for s in subjects:
        img_path, lab_path = pairs[s]
        image, mask = read_pair(img_path, lab_path)
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


def fold_volumes(pairs: Sequence[tuple[str, str]], slices, test_idx: np.ndarray, size: int, selected=None,
                 separate_labels: bool = False):
    """Training volumes of a fold for the slice LDM: per subject, the runs of Z above and below the
    Z range of its test slices (each a volume of its own, margins inside the run), or the whole
    volume for a subject without test slices. Runs without structure at ``size`` are left out.

    Returns a :class:`~laugen_napari.training.ldm.VolumeSet`; raises ValueError if nothing is left."""
    from ..io.pairs import read_pair
    from .ldm import VolumeSet, volumes_from_arrays

    parts = []
    for s, (img_path, lab_path) in enumerate(pairs):
        if not np.any(slices.source == s):
            continue
        image, labels = (v.data for v in read_pair(img_path, lab_path, channels=True))
        z = labels.shape[0]
        test_z = slices.slice_index[test_idx][slices.source[test_idx] == s]
        runs = [(0, z)] if test_z.size == 0 else [(0, int(test_z.min())), (int(test_z.max()) + 1, z)]
        for lo, hi in runs:
            if hi - lo < 1:
                continue
            try:
                part = volumes_from_arrays(image[..., lo:hi, :, :], labels[lo:hi], size, selected, separate_labels,
                                           name=f"{slices.names[s]}[z{lo}:{hi}]")
            except ValueError:  # no structure in this run
                continue
            if part.masks[0].any():  # structure that survives the resize to size x size
                parts.append(part)
    if not parts:
        raise ValueError("no training volume with structure is left outside the test slices")
    return VolumeSet([x for p in parts for x in p.images], [x for p in parts for x in p.masks],
                     [x for p in parts for x in p.core], [x for p in parts for x in p.names], parts[0].n_labels)


def train_fold_generator(name: str, train_slices, *, pairs, all_slices, test_idx, size: int, steps: int, seed: int,
                         selected=None, separate_labels: bool = False, options: dict | None = None):
    """A generator of the family trained for ``steps`` steps on a fold's training data only (see
    :func:`fold_volumes` for the slice LDM); returns the model in eval mode. No validation runs (the
    fold's few slices leave no useful validation set, and the test slices must stay unseen); a
    dHVAE with fitted latent sampling gets its latent Gaussian fitted to the training slices."""
    from .generators import GENERATORS
    from .loop import run_training

    opts = {"steps_per_epoch": max(1, int(steps)), **(options or {})}
    if name == "ldm":
        opts["volumes"] = fold_volumes(pairs, all_slices, test_idx, size, selected, separate_labels)
        task, batches, kw = GENERATORS[name].make_training(size=size, steps=steps, seed=seed, **opts)
    else:
        task, batches, kw = GENERATORS[name].make_training(slices=train_slices, size=size, steps=steps, seed=seed, **opts)
    steps = int(kw.get("steps", steps))
    for rec in run_training(task, batches, **{**kw, "validate_every": 10**9}):
        if rec.phase == "train" and rec.step >= steps:
            break  # closes the loop before its final validation
    model = task.model.eval()
    if getattr(model.cfg, "latent_sampling", "prior") == "fitted" and hasattr(model, "fit_latent_density"):
        with torch.no_grad():
            model.fit_latent_density(task.train_x)
    return model


def _sample_grid(real: tuple[np.ndarray, np.ndarray], synth: dict, png: Path, n: int = 10) -> None:
    """First image channel with the mask contour: one row of real training slices, one per generator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("real", real)] + list(synth.items())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.45 * len(rows)), squeeze=False)
    for r, (name, (img, lab)) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(img):
                ax.imshow(img[c, 0], cmap="gray", vmin=0, vmax=1)
                if lab[c].any():
                    ax.contour(lab[c] > 0, [0.5], colors="r", linewidths=0.6)
        axes[r, 0].set_title(f"{name} ({len(img)})", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


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
    generator: str | Sequence[str] | None = None,
    generator_steps: int | Sequence[int] = 0,
    generator_options: dict[str, dict] | None = None,
    laugen_settings=None,
    unet_steps: int = 300,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    min_mask_pixels: int = 10,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run the experiment; writes OUT/segmentation_folds.csv, segmentation_summary.csv,
    segmentation_sampling.csv (per fold and generator: pairs drawn, pairs with a usable mask,
    training seconds), segmentation_dice.png and segmentation_samples.png (fold 1), and returns
    the summary rows (condition, label, dice_mean, dice_sd, ...).

    ``generator``: one name or several of the family, trained per fold for ``generator_steps``
    (one number, or one per name); ``generator_options``: {name: {option: value}}."""
    import time

    from .dhvae import find_pairs, slices_from_files
    from .generators import GENERATORS, load_any, sample_nonempty

    say = progress or (lambda m: None)
    synthetic = sorted({int(n) for n in synthetic})
    if any(n < 0 for n in synthetic):
        raise ValueError("synthetic counts must be >= 0")
    names = [generator] if isinstance(generator, str) else list(generator or [])
    for g in names:
        if g not in GENERATORS:
            raise ValueError(f"unknown generator {g!r}; choose one of {', '.join(GENERATORS)}")
    if len(set(names)) != len(names):
        raise ValueError("a generator is named twice")
    steps_list = [int(generator_steps)] * len(names) if isinstance(generator_steps, (int, np.integer)) else list(generator_steps)
    if len(steps_list) == 1 and len(names) > 1:
        steps_list = steps_list * len(names)
    if names and len(steps_list) != len(names):
        raise ValueError(f"give one generator step count or one per generator ({len(names)}), got {len(steps_list)}")
    if generator_checkpoint and len(names) > 1:
        raise ValueError("a generator checkpoint goes with at most one generator name")
    per_fold = not generator_checkpoint and bool(names)
    if per_fold and any(s < 1 for s in steps_list) and any(n > 0 for n in synthetic):
        raise ValueError("generators trained per fold need generator_steps >= 1")
    if any(n > 0 for n in synthetic) and not (generator_checkpoint or per_fold):
        raise ValueError("synthetic counts > 0 need a generator checkpoint, or a generator name and generator_steps")
    unknown = sorted(set(generator_options or {}) - set(names))
    if unknown:
        raise ValueError(f"options given for {unknown[0]!r}, which is not among the generators {names}")
    pairs = [tuple(str(p) for p in pr) for d in pairs_dirs for pr in find_pairs(d)]
    selected = list(labels) if labels else None
    slices = slices_from_files(pairs, size, selected, separate_labels=separate_labels)
    n_labels = slices.n_labels
    fold_idx, rule = make_folds(slices, folds)
    ckpt_model = None
    if generator_checkpoint:
        gen_name, ckpt_model = load_any(generator_checkpoint)
        names = names or [gen_name]
        if getattr(ckpt_model.cfg, "size", size) != size:
            raise ValueError(f"the generator makes {ckpt_model.cfg.size}x{ckpt_model.cfg.size} slices, the experiment uses {size}")
    if not any(n > 0 for n in synthetic):
        names = []
    conditions = [Condition("real", "real")]
    conditions += [Condition(f"real + {n} {g}", "generator", n, g) for g in names for n in synthetic if n > 0]
    if laugen_settings is not None:
        conditions.append(Condition(f"real + LAUGEN ({laugen_settings.frames - 1} frames/subject)", "laugen"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    sampling: list[dict] = []
    for f, test in enumerate(fold_idx):
        train_idx = np.setdiff1d(np.arange(len(slices)), test)
        train, test_set = slices.subset(train_idx), slices.subset(test)
        xr, yr = _as_xy(train)
        xt, yt = _as_xy(test_set)
        synth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for g, g_steps in zip(names, steps_list):
            t0 = time.perf_counter()
            if ckpt_model is not None:
                model = ckpt_model
            else:
                say(f"fold {f + 1}/{folds}: training {g} for {g_steps} steps on the fold's {len(train)} training slices")
                model = train_fold_generator(g, train, pairs=pairs, all_slices=slices, test_idx=test, size=size,
                                             steps=g_steps, seed=seed + f, selected=selected,
                                             separate_labels=separate_labels, options=(generator_options or {}).get(g))
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.no_grad():
                si, sl, dropped = sample_nonempty(model, synthetic[-1], min_mask_pixels, seed=seed + 1000 * f)
            synth[g] = (si, sl)
            sampling.append({"fold": f, "generator": g, "steps": 0 if ckpt_model is not None else g_steps,
                             "n_wanted": synthetic[-1], "n_drawn": len(si) + dropped, "n_usable": len(si),
                             "min_mask_pixels": min_mask_pixels, "train_s": round(t_train, 1),
                             "sample_s": round(time.perf_counter() - t0, 1)})
            say(f"fold {f + 1}/{folds}: {g}: {len(si)} of {len(si) + dropped} drawn pairs have a mask of "
                f">= {min_mask_pixels} pixels")
        if f == 0 and synth:
            _sample_grid((xr, yr), synth, out / "segmentation_samples.png")
        for cond in conditions:
            x, y = xr, yr
            n_syn = 0
            gname = cond.generator
            if cond.kind == "generator":
                si, sl = synth[gname]
                if len(si) == 0:
                    say(f"fold {f + 1}/{folds}: {cond.name}: no pair with a mask of >= {min_mask_pixels} pixels; "
                        "row kept with Dice NaN")
                    for lab in range(1, n_labels + 1):
                        rows.append({"condition": cond.name, "kind": cond.kind, "generator": gname, "n_synthetic": 0,
                                     "fold": f, "label": lab, "dice": float("nan"), "n_train_real": len(xr),
                                     "n_test": len(xt), "folds_rule": rule})
                    continue
                n_syn = min(cond.n_synthetic, len(si))
                x = np.concatenate([xr, si[:n_syn]])
                y = np.concatenate([yr, sl[:n_syn]])
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
                rows.append({"condition": cond.name, "kind": cond.kind, "generator": gname,
                             "n_synthetic": n_syn, "fold": f, "label": lab, "dice": d, "n_train_real": len(xr),
                             "n_test": len(xt), "folds_rule": rule})
    _write_csv(out / "segmentation_folds.csv", rows)
    if sampling:
        _write_csv(out / "segmentation_sampling.csv", sampling)
    summary = summarise(rows)
    _write_csv(out / "segmentation_summary.csv", summary)
    plot_summary(summary, out / "segmentation_dice.png", title=f"{', '.join(Path(d).name for d in pairs_dirs)}, {size}x{size}: ")
    return summary


def summarise(rows: list[dict]) -> list[dict]:
    """Dice mean ± sd over folds per (condition, label), in the order conditions first appear;
    folds with Dice NaN (no usable generated pair) are left out of the mean and counted apart."""
    out = []
    keys = list(dict.fromkeys((r["condition"], r["label"]) for r in rows))
    for cond, lab in keys:
        sel = [r for r in rows if r["condition"] == cond and r["label"] == lab]
        d = np.array([r["dice"] for r in sel], float)
        ok = d[np.isfinite(d)]
        out.append({"condition": cond, "kind": sel[0]["kind"], "generator": sel[0].get("generator", ""),
                    "n_synthetic": int(np.mean([r["n_synthetic"] for r in sel])), "label": lab,
                    "dice_mean": float(ok.mean()) if ok.size else float("nan"),
                    "dice_sd": float(ok.std(ddof=1)) if ok.size > 1 else (0.0 if ok.size else float("nan")),
                    "folds": int(ok.size), "folds_without_pairs": int(d.size - ok.size), "folds_rule": sel[0]["folds_rule"]})
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    os.replace(tmp, path)


def plot_summary(summary: list[dict], png: Path, title: str = "") -> None:
    """Dice (mean ± sd over folds) per label against the number of extra training slices: one line
    per generator starting at the real-only point, LAUGEN as a separate marker at its number of
    extra slices (seed 002 Fig. 6 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({r["label"] for r in summary})
    fig, axes = plt.subplots(1, len(labels), figsize=(4.8 * len(labels), 3.8), squeeze=False)
    for ax, lab in zip(axes[0], labels):
        real = [r for r in summary if r["label"] == lab and r["kind"] == "real"]
        gens = list(dict.fromkeys(r["generator"] for r in summary if r["label"] == lab and r["kind"] == "generator"))
        if not gens and real:
            ax.errorbar([0], [real[0]["dice_mean"]], [real[0]["dice_sd"]], fmt="o", color="k", capsize=3, label="real")
        for i, g in enumerate(gens):
            pts = real + [r for r in summary if r["label"] == lab and r["kind"] == "generator" and r["generator"] == g]
            pts = [r for r in pts if np.isfinite(r["dice_mean"])]
            pts.sort(key=lambda r: r["n_synthetic"])
            ax.errorbar([r["n_synthetic"] + 0.6 * i for r in pts], [r["dice_mean"] for r in pts], [r["dice_sd"] for r in pts],
                        fmt="o-", capsize=3, color=f"C{i}", label=f"real + {g}")
        for r in summary:
            if r["label"] == lab and r["kind"] == "laugen":
                ax.errorbar([r["n_synthetic"]], [r["dice_mean"]], [r["dice_sd"]], fmt="s", color="k", capsize=3,
                            label="real + LAUGEN frames")
        ax.set(xlabel="extra training slices (realised mean)", ylabel="Dice (mean ± sd over folds)",
               title=f"{title}label {lab}" if title else f"label {lab}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
