"""``laugen train MODEL ...``: train a model with the shared loop (tqdm progress, checkpoints).

``laugen train`` is a group other modules extend: call :func:`train_subparsers(subparsers)` from
your module's ``register(subparsers)`` to get (created once) the ``train`` sub-subparsers, then
``add_parser("dhvae", ...)`` on it and set ``func``. This module adds ``simvp``::

    laugen train simvp --synthetic IMAGE MASK [--synthetic ...] [--real 4D.nii.gz ... | --real-acdc DIR]
                       [--mix R] [--context 4 --target 4] [--axis 0 --slices A B --crop H W]
                       [--labels 1,2 --kinds uniform,gaussian --trajectory linear --slope-range MIN MAX
                        --geometry 2d|3d] [--epochs N | --steps N] [--schedule onecycle|constant]
                       [--init PRETRAINED.pt] --out RUN_DIR [--resume]

writes RUN_DIR/metrics.csv, last.pt, best.pt and report.json (model vs last-image baseline).
The semi-synthetic series' options (trajectory, slope range, labels, sigma, ...) are those of
:class:`laugen_napari.settings.GenerationSettings`, with the same names and defaults as
``laugen generate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bars import progress_bar

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


SERIES_SETTINGS = ("trajectory", "slope_range", "rate", "midpoint", "labels", "sigma_mm", "spread_mm",
                   "label_interpolation")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Data options shared by ``train simvp`` and ``experiment``."""
    from ..settings import add_settings_arguments

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
    g.add_argument("--length", type=int, help="samples per epoch (default: real training sequences, or 256)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="files/patients held out for validation")
    g.add_argument("--split-seed", type=int, default=0,
                   help="seed of the train/validation split (fixed across --seed and repeats; default 0)")
    g.add_argument("--val-series", type=int, default=32, help="held-out synthetic series when there is no real data")
    s = add_settings_arguments(p, include=SERIES_SETTINGS, title="semi-synthetic series")
    s.add_argument("--kinds", default="uniform,directional,gaussian",
                   help="deformation kinds drawn per series (directional: random direction, gaussian: random "
                        "centre on the structure; default: all three)")
    s.add_argument("--geometry", default="2d", choices=("2d", "3d"),
                   help="2d: a field per plane (every plane moves by the full z_t); 3d: generate the series in 3D, "
                        "then take the plane (default: 2d)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--translator", default="gsta", choices=("gsta", "incepu"))
    g.add_argument("--size", default="cpu", choices=("cpu", "mmnist"), help="preset sizes (cpu default, mmnist published)")
    for name in ("hid-s", "hid-t", "n-s", "n-t"):
        g.add_argument(f"--{name}", type=int, help=f"override the preset's {name.replace('-', '_')}")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--steps", type=int, help="total optimiser steps (with --epochs: whichever ends first)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (OneCycle: its maximum)")
    g.add_argument("--schedule", default="onecycle", choices=("onecycle", "constant"),
                   help="learning-rate schedule: OpenSTL's OneCycle stepped per iteration (default) or constant")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def data_kwargs(args: argparse.Namespace) -> dict:
    """:func:`~laugen_napari.training.datasets.build_data` keyword arguments from parsed options."""
    from ..core import KINDS
    from ..settings import GenerationSettings
    from ..training.datasets import SliceSpec

    for path in list(args.real) + [p for pair in args.synthetic for p in pair]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
    if not (args.real or args.real_acdc or args.synthetic):
        raise ValueError("give data: --real PATH..., --real-acdc DIR and/or --synthetic IMAGE MASK")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"--kinds: expected some of {', '.join(KINDS)} separated by commas, got {args.kinds!r}")
    values = {name: getattr(args, name) for name in SERIES_SETTINGS}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    settings = GenerationSettings(frames=args.context + args.target, **values).validate()
    start, stop = args.slices if args.slices else (None, None)
    return dict(real=list(args.real), acdc=args.real_acdc, synthetic=[tuple(p) for p in args.synthetic],
                context=args.context, target=args.target,
                spec=SliceSpec(args.axis, start, stop, tuple(args.crop) if args.crop else None),
                val_fraction=args.val_fraction, length=args.length, n_val_synthetic=args.val_series,
                split_seed=args.split_seed, settings=settings, kinds=kinds, geometry=args.geometry)


def model_size(args: argparse.Namespace) -> dict:
    from ..models.simvp import CPU_DEFAULT, MMNIST

    size = dict(MMNIST if args.size == "mmnist" else CPU_DEFAULT)
    for key, attr in (("hid_S", "hid_s"), ("hid_T", "hid_t"), ("N_S", "n_s"), ("N_T", "n_t")):
        if getattr(args, attr) is not None:
            size[key] = getattr(args, attr)
    return size


def _run_simvp(args: argparse.Namespace) -> int:
    import torch

    from ..training.datasets import build_data
    from ..training.loop import check_run_folder
    from ..training.simvp import architecture, read_init_checkpoint, total_steps, train_simvp

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 1 or (args.steps is not None and args.steps < 1):
        raise ValueError("--epochs and --steps must be at least 1")
    # refusals that need no data come first: the run folder, then the checkpoint to start from
    check_run_folder(args.out, args.resume, "--resume")
    if args.init is not None and not Path(args.init).is_file():
        raise FileNotFoundError(f"no such checkpoint: {args.init}")
    if args.init is not None and not args.resume:
        read_init_checkpoint(args.init, architecture(args.context, args.translator, model_size(args)))
    bundle = build_data(**data_kwargs(args), mix=args.mix, seed=args.seed)
    total = total_steps(bundle.train, args.batch_size, args.epochs, args.steps)
    print(f"data: {bundle.info['length']} samples/epoch ({bundle.info['expected_synthetic']:.3g} semi-synthetic "
          f"expected), {bundle.info['val_sequences']} {bundle.info['val_source']} validation sequences, "
          f"frames {bundle.info['frame_size']}; {total} steps, schedule {args.schedule}"
          + (f"; fine-tuning from {args.init}" if args.init else ""))
    bar = progress_bar(total=total, unit="step", dynamic_ncols=True)
    first = True
    for rec in train_simvp(bundle, args.out, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                           translator=args.translator, size=model_size(args), lr=args.lr, schedule=args.schedule,
                           init=args.init, seed=args.seed, resume=args.resume,
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
    p.add_argument("--init", metavar="CKPT", help="fine-tune from a pre-trained SimVP checkpoint of the same "
                                                   "architecture (weights and intensity normalisation)")
    p.set_defaults(func=_run_simvp)
