"""``laugen experiment mixing|sizes``: the paper's sweeps (Figs. 3–4) with repeats.

    laugen experiment mixing --ratios 0,0.1,0.2,0.5 --repeats 3 --real-acdc DIR --out EXP_DIR
    laugen experiment sizes --sizes 10,20,40 --mix 0.1 --real 4D.nii.gz ... --synthetic IMAGE MASK --out EXP_DIR

write EXP_DIR/<sweep>/results.csv (one row per run: SimVP and last-image metrics) and
EXP_DIR/<sweep>/<sweep>.png; each run's folder holds its metrics.csv, checkpoints and report.json.
"""

from __future__ import annotations

import argparse
import sys

from .train import add_data_arguments, add_model_arguments, data_kwargs, model_size


def _numbers(text: str, cast=float) -> list:
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError("expected at least one value")
    return values


def _run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..training.experiments import run_sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    values = _numbers(args.ratios) if args.sweep == "mixing" else _numbers(args.sizes, int)
    if args.sweep == "mixing" and not all(0 <= v <= 1 for v in values):
        raise ValueError("mixing ratios must lie in [0, 1]")
    bar = tqdm(total=len(values) * args.repeats, unit="run", file=sys.stderr)

    def progress(msg: str) -> None:
        bar.set_description(msg.split(":")[0])
        bar.update(0 if bar.n == 0 and not getattr(progress, "started", False) else 1)
        progress.started = True

    try:
        rows = run_sweep(args.sweep, values, data_kwargs(args), args.out, repeats=args.repeats, epochs=args.epochs,
                         mix=args.mix, train_options=dict(batch_size=args.batch_size, translator=args.translator,
                                                          size=model_size(args), lr=args.lr), progress=progress)
        bar.update(1)
    finally:
        bar.close()
    for r in rows:
        print(f"{args.sweep} {r['value']:g} rep {r['repeat']}: RMSE {r['rmse']:.4g} SSIM {r['ssim']:.4f} "
              f"PSNR {r['psnr']:.2f} (last image {r['baseline_rmse']:.4g} / {r['baseline_ssim']:.4f} / {r['baseline_psnr']:.2f})")
    print(f"results in {args.out}/{args.sweep}/results.csv and {args.sweep}.png")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``laugen experiment mixing`` and ``laugen experiment sizes``."""
    parser = subparsers.add_parser("experiment", help="mixing-ratio and dataset-size sweeps (paper Figs. 3-4)")
    sub = parser.add_subparsers(dest="sweep", metavar="SWEEP")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    for name, help_ in (("mixing", "sweep the fraction of semi-synthetic samples"),
                        ("sizes", "sweep the number of real training sequences")):
        p = sub.add_parser(name, help=help_)
        if name == "mixing":
            p.add_argument("--ratios", default="0,0.1,0.2,0.5", help="comma-separated mixing ratios")
        else:
            p.add_argument("--sizes", required=True, help="comma-separated numbers of real training sequences")
        p.add_argument("--mix", type=float, default=0.1, help="mixing ratio of the sizes sweep (default 0.1)")
        p.add_argument("--repeats", type=int, default=3, help="runs (seeds) per value")
        add_data_arguments(p)
        add_model_arguments(p)
        p.add_argument("--out", required=True, metavar="EXP_DIR")
        p.set_defaults(func=_run, epochs=10)
