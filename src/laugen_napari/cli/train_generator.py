"""``laugen train GEN``: train any image+mask generator of the registry on slices of NIfTI pairs.

GEN is one of :data:`laugen_napari.training.generators.GENERATORS` (vae, hvae, dhvae, hvae-disc,
hvae-perc, stylegan2, ldm). All share the data options (``--pairs``, ``--size``, ``--labels``,
``--separate-labels``), the run folder (metrics.csv, last.pt, best.pt, samples_latest.npz),
``--resume`` and the loop; each adds its own options (``laugen train GEN -h``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from .bars import progress_bar


def _train_group(subparsers):
    """The shared ``laugen train`` sub-subparsers (cli/train.py), or a local one while it is absent."""
    try:
        from .train import train_subparsers
    except ImportError:
        p = subparsers.add_parser("train", help="train a model (SimVP, image+mask generators)")
        return p.add_subparsers(dest="model_name", metavar="MODEL")
    return train_subparsers(subparsers)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The data options every generator shares."""
    g = p.add_argument_group("data")
    g.add_argument("--pairs", required=True, metavar="DIR",
                   help="folder of pairs: NAME.nii.gz + NAME_seg.nii.gz (or _mask/_label), or imagesTr/ + labelsTr/")
    g.add_argument("--size", type=int, choices=(32, 64, 128), default=64, help="slice side in pixels (default: %(default)s)")
    g.add_argument("--labels", type=int, nargs="+", metavar="L", help="label values to use (default: every non-zero label)")
    g.add_argument("--separate-labels", action="store_true",
                   help="one mask channel per label (default: the labels merged into one structure)")


def add_option_arguments(p: argparse.ArgumentParser, spec) -> None:
    """One flag per generator option of ``spec`` (``--name-with-dashes``)."""
    g = p.add_argument_group(f"{spec.name} options")
    for o in spec.options:
        kw: dict = {"dest": f"opt_{o.name}", "default": o.default, "help": o.help + (" (default: %(default)s)" if o.default is not None else "")}
        if o.type is bool:
            kw["action"] = "store_true"
        else:
            kw["type"] = o.type
            if o.choices:
                kw["choices"] = o.choices
            if o.nargs is not None:
                kw["nargs"] = o.nargs
        g.add_argument("--" + o.name.replace("_", "-"), **kw)


def register(subparsers) -> None:
    from ..training.generators import GENERATORS

    group = _train_group(subparsers)
    for spec in GENERATORS.values():
        p = group.add_parser(spec.name, help=spec.description,
                             description=f"Train {spec.name}: {spec.description}. Writes RUN_DIR/metrics.csv, last.pt, "
                             f"best.pt and samples_latest.npz." + (f" CPU: {spec.cpu_note}." if spec.cpu_note else ""))
        add_data_arguments(p)
        p.add_argument("--steps", type=int, required=True, metavar="N", help="total optimiser steps (counting a resumed run)")
        p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                       help="torch CPU threads (default: all cores but one: %(default)s)")
        p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        add_option_arguments(p, spec)
        p.set_defaults(func=run, generator=spec.name)


def options_from_args(args: argparse.Namespace) -> dict:
    """The generator options of parsed arguments (those left at None are not passed)."""
    out = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    if args.labels:
        out["labels"] = list(args.labels)
    if args.separate_labels:
        out["separate_labels"] = True
    return out


@contextmanager
def _notices_printed_here() -> Iterator[None]:
    """Keep the package's logged notices (:func:`laugen_napari.models.perceptual.notice`) off
    logging's last-resort stderr handler while the task is built: this command prints the task's
    notices itself, once, as ``laugen train GEN: notice: ...``. A handler the user configured
    still receives them (they propagate); library users and the train dock are unaffected."""
    logger = logging.getLogger("laugen_napari")
    quiet = logging.NullHandler()
    logger.addHandler(quiet)
    try:
        yield
    finally:
        logger.removeHandler(quiet)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..training.generators import GENERATORS
    from ..training.loop import check_run_folder, run_training

    if args.steps < 1:
        raise ValueError("--steps must be at least 1")
    check_run_folder(args.out, args.resume, "--resume")  # before any data are read or a model is built
    name = args.generator
    torch.set_num_threads(max(1, args.threads))
    with _notices_printed_here():
        task, batches, kw = GENERATORS[name].make_training(args.pairs, size=args.size, steps=args.steps, out=args.out,
                                                           resume=args.resume, seed=args.seed, **options_from_args(args))
    for msg in getattr(task, "notices", []):
        print(f"laugen train {name}: notice: {msg}", file=sys.stderr)
    print(f"{name}: {sum(p.numel() for p in task.model.parameters()):,} parameters, {args.size}x{args.size}",
          file=sys.stderr)
    bar = None if args.quiet else progress_bar(total=args.steps, unit="step")
    for rec in run_training(task, batches, **kw, warn=lambda m: print(f"laugen train {name}: warning: {m}", file=sys.stderr)):
        if rec.phase == "train" and bar is not None:
            bar.n = rec.step
            bar.set_postfix(loss=f"{rec.values.get('loss', float('nan')):.4g}", refresh=False)
            bar.refresh()
        elif rec.phase != "train":
            text = ", ".join(f"{k} {v:.4g}" for k, v in rec.values.items())
            (bar.write if bar is not None else print)(f"step {rec.step} {rec.phase}: {text}")
    if bar is not None:
        bar.close()
    print(f"checkpoints and metrics.csv in {args.out}")
    return 0
