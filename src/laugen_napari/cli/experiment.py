"""``laugen experiment mixing|sizes|pretrain|unit-test``: the paper's experiments (Figs. 3–4) with
repeats, pre-training, and LAUGEN as a unit test of a trained model.

    laugen experiment mixing --ratios 0,0.1,0.2,0.5 --repeats 3 --real-acdc DIR --steps 300 --out EXP_DIR
    laugen experiment sizes --sizes 2,4,8 --mix 0.1 --real-acdc DIR --steps 300 --out EXP_DIR
    laugen experiment pretrain --real-acdc DIR --steps 300 --pretrain-steps 300 --out EXP_DIR
    laugen experiment unit-test --model RUN_DIR/best.pt --synthetic IMAGE MASK --out EXP_DIR

write EXP_DIR/<sweep>/results.csv (one row per run: SimVP and last-image metrics in our and
OpenSTL's conventions, steps, realised synthetic fraction) and EXP_DIR/<sweep>/<sweep>.png; each
run's folder holds its metrics.csv, checkpoints and report.json.
"""

from __future__ import annotations

import argparse
import importlib.util

from ..settings import add_settings_arguments
from .bars import progress_bar
from .train import add_data_arguments, add_model_arguments, data_kwargs, model_size


def _numbers(text: str, cast, name: str) -> list:
    from ..settings import parse_numbers

    return parse_numbers(text, cast, name=name)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..training.experiments import run_sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep == "mixing":
        values = _numbers(args.ratios, float, "--ratios")
        if not all(0 <= v <= 1 for v in values):
            raise ValueError("--ratios: mixing ratios must lie in [0, 1]")
    elif args.sweep == "sizes":
        values = _numbers(args.sizes, int, "--sizes")
        if min(values) < 1:
            raise ValueError("--sizes: sizes must be at least 1 patient")
        if not all(0 <= v <= 1 for v in _numbers(args.mix, float, "--mix")):
            raise ValueError("--mix: mixing ratios must lie in [0, 1]")
    else:
        values = []
    runs = args.repeats * (4 if args.sweep == "pretrain" else len(values)) * (
        len(_numbers(args.mix, float, "--mix")) if args.sweep == "sizes" else 1)
    bar = progress_bar(total=runs, unit="run")

    def progress(msg: str) -> None:
        bar.set_description(msg.split(":")[0])
        if getattr(progress, "started", False):
            bar.update(1)
        progress.started = True

    try:
        rows = run_sweep(args.sweep, values, data_kwargs(args), args.out, repeats=args.repeats,
                         epochs=None if args.steps is not None else args.epochs, steps=args.steps,
                         mix=_numbers(args.mix, float, "--mix") if args.sweep == "sizes" else 0.1,
                         seed=args.seed, batch_size=args.batch_size, pretrain_steps=getattr(args, "pretrain_steps", None),
                         train_options=dict(translator=args.translator, size=model_size(args), lr=args.lr,
                                            schedule=args.schedule), progress=progress)
        bar.update(1)
    finally:
        bar.close()
    for r in rows:
        value = r["value"] if isinstance(r["value"], str) else f"{r['value']:g}"
        arm = f" mix {r['mix']:g}" if args.sweep == "sizes" else ""
        print(f"{args.sweep} {value}{arm} rep {r['repeat']}: RMSE {r['rmse']:.4g} SSIM {r['ssim']:.4f} PSNR {r['psnr']:.2f} "
              f"(last image {r['baseline_rmse']:.4g} / {r['baseline_ssim']:.4f} / {r['baseline_psnr']:.2f}); "
              f"{r['steps']} steps, synthetic {r['realised_fraction']:.3f} (expected {r['expected_fraction']:g})")
    print(f"results in {args.out}/{args.sweep}/results.csv and {args.sweep}.png")
    return 0


def _run_unit_test(args: argparse.Namespace) -> int:
    import torch

    from ..testing.scoring import score_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = _words(args.kinds)
    from ..core import KINDS

    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"--kinds: expected some of {', '.join(KINDS)} separated by commas, got {args.kinds!r}")
    if args.series < 1:
        raise ValueError("--series must be at least 1")
    report = score_checkpoint(args.model, args.out, pairs=args.pairs, kinds=kinds,
                              slopes=_numbers(args.slopes, float, "--slopes"), series=args.series, axis=args.axis,
                              crop=tuple(args.crop) if args.crop else None,
                              labels=list(args.labels) if args.labels else None, sigma_mm=args.sigma_mm,
                              trajectory=args.trajectory, seed=args.seed)
    for row in report["rows"]:
        r = row["volume_corr"]
        print(f"{row['kind']:<12} slope {row['slope']:+.2f} mm/frame: area-change correlation "
              f"{'undefined (no change predicted)' if r != r else f'{r:.3f}'}, last-frame change "
              f"{row['model_change_last_mm2']:.0f} vs true {row['true_change_last_mm2']:.0f} mm2; RMSE by horizon "
              f"{', '.join(f'{v:.3g}' for v in row['rmse_by_horizon'])} "
              f"(last image {', '.join(f'{v:.3g}' for v in row['baseline_rmse_by_horizon'])})")
    print(f"report in {args.out}/unit-test/report.json, unit-test.csv and unit-test.png")
    return 0


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``laugen experiment mixing|sizes|pretrain|unit-test`` (and ``segmentation`` when present)."""
    parser = subparsers.add_parser("experiment", help="the paper's sweeps (Figs. 3-4), pre-training, unit tests of a model")
    sub = parser.add_subparsers(dest="sweep", metavar="EXPERIMENT")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    for name, help_ in (("mixing", "sweep the fraction of semi-synthetic samples"),
                        ("sizes", "sweep the number of real training patients"),
                        ("pretrain", "real-only vs synthetic pre-training + real fine-tuning (same real steps; and real-only "
                                     "with the total steps)")):
        p = sub.add_parser(name, help=help_)
        if name == "mixing":
            p.add_argument("--ratios", default="0,0.1,0.2,0.5", help="comma-separated mixing ratios")
        elif name == "sizes":
            p.add_argument("--sizes", required=True, help="comma-separated numbers of training patients (4D files)")
            p.add_argument("--mix", default="0.1", help="mixing ratio(s) of the runs: 0.1 (default, the paper's), or "
                                                        "0,0.1 to run every size without and with augmentation")
        else:
            p.add_argument("--pretrain-steps", type=int, help="steps of synthetic-only pre-training "
                                                              "(default: as many as the fine-tuning)")
        p.add_argument("--repeats", type=int, default=3, help="runs (seeds --seed, --seed+1, ...) per value")
        add_data_arguments(p)
        add_model_arguments(p)
        p.add_argument("--out", required=True, metavar="EXP_DIR")
        p.set_defaults(func=_run, epochs=10)
    u = sub.add_parser("unit-test", help="score a trained SimVP on LAUGEN series with known truth, per kind and slope")
    u.add_argument("--model", required=True, metavar="CKPT", help="a SimVP checkpoint (best.pt or last.pt)")
    u.add_argument("--pairs", metavar="DIR", help="image/mask pairs (folder or CSV manifest; default: the shipped MNI sample)")
    u.add_argument("--kinds", default="uniform,directional,gaussian", help="kinds to score")
    u.add_argument("--slopes", default="-0.5,0.25,0.5,1", help="slopes to score, mm/frame")
    u.add_argument("--series", type=int, default=4, help="series (seeds) per kind and slope")
    u.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="plane axis of the (z, y, x) volume")
    u.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"), help="crop planes around the structure")
    add_settings_arguments(u, include=("trajectory", "labels", "sigma_mm"), title="series")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--threads", type=int, default=0)
    u.add_argument("--out", required=True, metavar="EXP_DIR")
    u.set_defaults(func=_run_unit_test)
    if importlib.util.find_spec(f"{__package__}.experiment_segmentation") is not None:
        from . import experiment_segmentation

        add_parser = getattr(experiment_segmentation, "add_parser", None)
        if add_parser is not None:
            add_parser(sub)
