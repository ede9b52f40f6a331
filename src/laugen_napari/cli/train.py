"""``laugen train MODEL ...``: train a model with the shared loop (tqdm progress, checkpoints).

``laugen train`` is a group other modules extend: call :func:`train_subparsers(subparsers)` from
your module's ``register(subparsers)`` to get (created once) the ``train`` sub-subparsers, then
``add_parser("dhvae", ...)`` on it and set ``func``. This module adds ``simvp``::

    laugen train simvp --synthetic IMAGE MASK [--synthetic ...] [--real 4D.nii.gz ... | --real-acdc DIR]
                       [--mix R] [--context 4 --target 4] [--axis 0 --slices A B --crop H W]
                       [--epochs N] --out RUN_DIR [--resume]

writes RUN_DIR/metrics.csv, last.pt, best.pt and report.json (model vs last-image baseline).
"""

from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path

_TRAIN_ATTR = "_laugen_train_subparsers"


def train_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``train`` command's sub-subparsers, created on first call and shared afterwards."""
    existing = getattr(subparsers, _TRAIN_ATTR, None)
    if existing is not None:
        return existing
    parser = subparsers.add_parser("train", help="train a model (simvp, ...) with checkpoints and metrics")
    sub = parser.add_subparsers(dest="model", metavar="MODEL")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    setattr(subparsers, _TRAIN_ATTR, sub)
    return sub


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Data options shared by ``train simvp`` and ``experiment``."""
    g = p.add_argument_group("data")
    g.add_argument("--real", nargs="+", default=[], metavar="PATH", help="4D NIfTI series (time last)")
    g.add_argument("--real-acdc", metavar="DIR", help="ACDC folder (patientNNN/...); ED frames also seed synthetic series")
    g.add_argument("--synthetic", nargs=2, action="append", default=[], metavar=("IMAGE", "MASK"),
                   help="image/mask pair for semi-synthetic series (repeatable)")
    g.add_argument("--context", type=int, default=4, help="context frames (default 4)")
    g.add_argument("--target", type=int, default=4, help="predicted frames (default 4)")
    g.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="slice axis of the (z, y, x) volume (0 axial)")
    g.add_argument("--slices", nargs=2, type=int, metavar=("START", "STOP"), help="plane range along the axis")
    g.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"), help="crop planes to H x W around the structure")
    g.add_argument("--kinds", default="uniform,directional,gaussian", help="deformation kinds drawn per series")
    g.add_argument("--trajectories", default="linear", help="trajectories drawn per series (linear,sigmoid,...)")
    g.add_argument("--slope", nargs=2, type=float, default=(-1.0, 1.0), metavar=("LO", "HI"), help="slope range, mm/frame")
    g.add_argument("--sigma-mm", type=float, default=4.0, help="deformation field blur in mm")
    g.add_argument("--length", type=int, help="samples per epoch (default: real training sequences, or 256)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="files/patients held out for validation")
    g.add_argument("--val-series", type=int, default=32, help="held-out synthetic series when there is no real data")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--translator", default="gsta", choices=("gsta", "incepu"))
    g.add_argument("--size", default="cpu", choices=("cpu", "mmnist"), help="preset sizes (cpu default, mmnist published)")
    for name in ("hid-s", "hid-t", "n-s", "n-t"):
        g.add_argument(f"--{name}", type=int, help=f"override the preset's {name.replace('-', '_')}")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def data_kwargs(args: argparse.Namespace) -> dict:
    """:func:`~laugen_napari.training.datasets.build_data` keyword arguments from parsed options."""
    from ..training.datasets import SliceSpec

    for path in list(args.real) + [p for pair in args.synthetic for p in pair]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
    if not (args.real or args.real_acdc or args.synthetic):
        raise ValueError("give data: --real PATH..., --real-acdc DIR and/or --synthetic IMAGE MASK")
    start, stop = args.slices if args.slices else (None, None)
    return dict(real=list(args.real), acdc=args.real_acdc, synthetic=[tuple(p) for p in args.synthetic],
                context=args.context, target=args.target,
                spec=SliceSpec(args.axis, start, stop, tuple(args.crop) if args.crop else None),
                val_fraction=args.val_fraction, length=args.length, n_val_synthetic=args.val_series,
                kinds=tuple(k for k in args.kinds.split(",") if k),
                trajectories=tuple(t for t in args.trajectories.split(",") if t),
                slope_range=tuple(args.slope), sigma_mm=args.sigma_mm)


def model_size(args: argparse.Namespace) -> dict:
    from ..models.simvp import CPU_DEFAULT, MMNIST

    size = dict(MMNIST if args.size == "mmnist" else CPU_DEFAULT)
    for key, attr in (("hid_S", "hid_s"), ("hid_T", "hid_t"), ("N_S", "n_s"), ("N_T", "n_t")):
        if getattr(args, attr) is not None:
            size[key] = getattr(args, attr)
    return size


def _run_simvp(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..training.datasets import build_data
    from ..training.simvp import train_simvp

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 1:
        raise ValueError("--epochs must be at least 1")
    bundle = build_data(**data_kwargs(args), mix=args.mix, seed=args.seed)
    steps_per_epoch = -(-len(bundle.train) // args.batch_size)
    print(f"data: {bundle.info['length']} samples/epoch ({bundle.info['n_synthetic']} semi-synthetic), "
          f"{bundle.info['val_sequences']} {bundle.info['val_source']} validation sequences, "
          f"frames {bundle.info['frame_size']}")
    bar = tqdm(total=args.epochs * steps_per_epoch, unit="step", dynamic_ncols=True)
    first = True
    for rec in train_simvp(bundle, args.out, epochs=args.epochs, batch_size=args.batch_size, translator=args.translator,
                           size=model_size(args), lr=args.lr, seed=args.seed, resume=args.resume,
                           warn=lambda m: print(f"laugen train simvp: warning: {m}", file=sys.stderr)):
        if first:
            bar.update(rec.step - 1 if rec.phase == "train" else rec.step)
            first = False
        if rec.phase == "train":
            bar.update(1)
            bar.set_postfix(epoch=rec.epoch, loss=f"{rec.values['loss']:.4g}")
        else:
            v = rec.values
            bar.write(f"epoch {rec.epoch}: val RMSE {v['rmse']:.4g} SSIM {v['ssim']:.4f} PSNR {v['psnr']:.2f} dB "
                      f"(last image: {v['baseline_rmse']:.4g} / {v['baseline_ssim']:.4f} / {v['baseline_psnr']:.2f})")
    bar.close()
    report = json.loads((Path(args.out) / "report.json").read_text())
    print(json.dumps({"model": report["model"], "last_image_baseline": report["last_image_baseline"]}, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``laugen train simvp``."""
    sub = train_subparsers(subparsers)
    p = sub.add_parser("simvp", help="train SimVP next-frame prediction on real and/or semi-synthetic series")
    add_data_arguments(p)
    p.add_argument("--mix", type=float, help="fraction of semi-synthetic samples (default 1 / 0 / 0.1, see docs)")
    add_model_arguments(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.set_defaults(func=_run_simvp)
