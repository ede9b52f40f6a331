"""``laugen experiment segmentation``: does synthetic data help a 2D segmentation U-Net?

    laugen experiment segmentation --pairs DIR [DIR ...] --folds 3 --synthetic 0 16 64 \\
        --generator-checkpoint RUN/best.pt --laugen-frames 4 --unet-steps 300 --out EXP_DIR

Real slices vs real + N generated pairs (any generator of the family; or ``--generator NAME
[NAME ...] --generator-steps S [S ...]`` to train each one per fold on that fold's training data
only, so no generator sees a test slice) vs real + LAUGEN series frames, k-fold by subject;
writes EXP_DIR/segmentation_folds.csv, segmentation_summary.csv (Dice mean ± sd per label),
segmentation_sampling.csv (usable generated masks per fold), segmentation_dice.png and
segmentation_samples.png. See
:mod:`laugen_napari.training.segmentation_experiment` for the protocol.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(experiment_subparsers) -> argparse.ArgumentParser:
    """Add ``segmentation`` to the ``laugen experiment`` sub-subparsers; returns the parser."""
    from ..settings import add_settings_arguments
    from ..training.generators import GENERATORS

    p = experiment_subparsers.add_parser(
        "segmentation", help="U-Net Dice with real vs real + generated vs real + LAUGEN training slices (k-fold)",
        description=__doc__.split("\n\n")[-1].replace("\n", " "))
    g = p.add_argument_group("data")
    g.add_argument("--pairs", nargs="+", required=True, metavar="DIR", help="folder(s) of image/mask NIfTI pairs")
    g.add_argument("--size", type=int, choices=(32, 64, 128), default=64, help="slice side in pixels (default: %(default)s)")
    g.add_argument("--labels", type=int, nargs="+", metavar="L", help="label values to segment (default: every non-zero label)")
    g.add_argument("--separate-labels", action="store_true", help="one class per label (default: one merged structure)")
    g.add_argument("--folds", type=int, default=3, help="k of the k-fold split by subject (default: %(default)s)")
    s = p.add_argument_group("augmentation")
    s.add_argument("--synthetic", type=int, nargs="+", default=[0], metavar="N",
                   help="numbers of generated pairs added to the real slices (default: 0 only)")
    s.add_argument("--generator-checkpoint", metavar="C", help="checkpoint of any `laugen train GEN` run")
    s.add_argument("--generator", nargs="+", choices=list(GENERATORS), metavar="GEN",
                   help="train these generators per fold on the fold's training data instead (with --generator-steps); "
                        f"one of {', '.join(GENERATORS)}")
    s.add_argument("--generator-steps", type=int, nargs="+", default=[0], metavar="S",
                   help="steps of the per-fold generator training (one number, or one per --generator)")
    s.add_argument("--generator-option", action="append", default=[], metavar="GEN:NAME=VALUE",
                   help="an option of `laugen train GEN` for the per-fold runs, e.g. dhvae:lr=1e-3 (repeatable)")
    s.add_argument("--min-mask-voxels", type=int, default=10, help="drop generated pairs with smaller masks (default: %(default)s)")
    s.add_argument("--laugen-frames", type=int, default=0, metavar="T",
                   help="add one LAUGEN series of T frames per training subject (frames 1..T-1); 0 = off")
    add_settings_arguments(p, exclude=("labels", "seed", "frames", "series", "values"),
                           title="LAUGEN series settings (the options of `laugen generate`)")
    m = p.add_argument_group("U-Net")
    m.add_argument("--unet-steps", type=int, default=300, help="training steps per run (default: %(default)s)")
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--lr", type=float, default=1e-3)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", required=True, metavar="EXP_DIR", help="output folder")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..training.segmentation_experiment import run_segmentation_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.unet_steps < 1:
        raise ValueError("--unet-steps must be at least 1")
    settings = None
    if args.laugen_frames:
        from ..settings import settings_from_args

        if args.laugen_frames < 2:
            raise ValueError("--laugen-frames must be 0 (off) or at least 2")
        settings = settings_from_args(args, seed=args.seed, frames=args.laugen_frames,
                                      labels=tuple(args.labels) if args.labels else None)
    gen_options = parse_generator_options(args.generator_option, args.generator or [])
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    summary = run_segmentation_experiment(
        args.pairs, args.out, size=args.size, labels=args.labels, separate_labels=args.separate_labels, folds=args.folds,
        synthetic=args.synthetic, generator_checkpoint=args.generator_checkpoint, generator=args.generator,
        generator_steps=args.generator_steps, generator_options=gen_options, laugen_settings=settings, unet_steps=args.unet_steps,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, min_mask_pixels=args.min_mask_voxels, progress=say)
    print(f"{'condition':40s} {'label':>5s} {'Dice mean ± sd':>16s} folds")
    for r in summary:
        if r["folds"] == 0:
            print(f"{r['condition']:40s} {r['label']:5d} {'no usable pairs':>16s} {r['folds']:5d}")
            continue
        note = f"  ({r['folds_without_pairs']} fold(s) without usable pairs)" if r.get("folds_without_pairs") else ""
        print(f"{r['condition']:40s} {r['label']:5d} {r['dice_mean']:8.3f} ± {r['dice_sd']:.3f} {r['folds']:5d}{note}")
    sampling = Path(args.out) / "segmentation_sampling.csv"
    if sampling.exists():
        import csv

        with open(sampling, newline="") as fh:
            sampled = list(csv.DictReader(fh))
        for r in sampled:
            print(f"# fold {int(r['fold']) + 1} {r['generator']}: {r['n_usable']} of {r['n_drawn']} drawn pairs with a mask "
                  f">= {r['min_mask_pixels']} px (wanted {r['n_wanted']}); trained {r['train_s']} s, sampled {r['sample_s']} s")
    print(f"folds: {summary[0]['folds_rule'] if summary else '-'}; CSV and plot in {args.out}")
    return 0


def parse_generator_options(items: list[str], generators: list[str]) -> dict[str, dict]:
    """``GEN:NAME=VALUE`` strings -> {GEN: {NAME: value}}, values typed by the registry's option
    (``NAME`` with dashes or underscores; several values of an nargs option comma-separated)."""
    from ..training.generators import get_generator

    out: dict[str, dict] = {}
    for item in items:
        gen, sep, rest = item.partition(":")
        name, eq, value = rest.partition("=")
        if not sep or not eq or not name:
            raise ValueError(f"--generator-option {item!r}: write GEN:NAME=VALUE, e.g. dhvae:lr=1e-3")
        if gen not in generators:
            raise ValueError(f"--generator-option {item!r}: {gen!r} is not among --generator {' '.join(generators)}")
        spec = get_generator(gen)
        key = name.replace("-", "_")
        opt = next((o for o in spec.options if o.name == key), None)
        if opt is None:
            raise ValueError(f"--generator-option {item!r}: {gen} has no option {name!r} "
                             f"(one of {', '.join(o.name for o in spec.options)})")
        try:
            typed = [opt.type(v) for v in value.split(",")] if opt.nargs else opt.type(value)
        except ValueError:
            raise ValueError(f"--generator-option {item!r}: {value!r} is not a {opt.type.__name__}") from None
        if opt.choices and typed not in opt.choices:
            raise ValueError(f"--generator-option {item!r}: choose one of {', '.join(map(str, opt.choices))}")
        out.setdefault(gen, {})[key] = typed
    return out
