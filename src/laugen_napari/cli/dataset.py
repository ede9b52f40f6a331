"""``laugen dataset MANIFEST -o OUTDIR``: ``laugen generate`` over many pairs, one Dask task each.

The generation options are those of ``laugen generate`` (``add_generate_options``), so both
commands always accept the same options with the same defaults.
"""

from __future__ import annotations

import argparse
import sys

from ..batch import DATASET_JSON, check_dataset_dir, run_dataset
from ..io.pairs import read_manifest
from ..settings import settings_from_args
from .bars import progress_bar
from .generate import add_generate_options

_HELP = {
    "seed": "base seed; each pair's seed is derived from it and the pair's id (default: %(default)s)",
    "overwrite": "write into a non-empty OUTDIR, replacing pair folders of the same ids",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dataset",
        help="generate LAUGEN series for many image/mask pairs (Dask)",
        description="Run 'laugen generate' for every pair of MANIFEST, each as an independent Dask task, into "
        "OUTDIR/<id>. MANIFEST is a CSV with columns image,mask[,id] (paths relative to the CSV) or a folder "
        "of NAME.nii.gz + NAME_seg.nii.gz (or _mask, _label). Each pair's seed is derived from --seed and its "
        f"id. OUTDIR/{DATASET_JSON} records every pair's status; the exit status is 1 if any pair failed.",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="CSV file (image,mask[,id]) or folder of pairs")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output directory (created)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of a running dask.distributed scheduler (tcp://host:8786), or 'synchronous' to run "
                   "in this process (default: a local cluster of --workers processes)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local cluster: worker processes, one thread each (default: CPU count, at most one per pair)")
    add_generate_options(p, _HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = settings_from_args(args)
    if args.workers is not None and args.scheduler is not None:
        raise ValueError("--workers applies to the local cluster only; size a --scheduler cluster on its own")
    pairs = read_manifest(args.manifest)
    check_dataset_dir(args.out, args.overwrite, "--overwrite")  # refuse before the progress bar appears
    bar = None if args.quiet else progress_bar(total=len(pairs), unit="pair", desc="laugen dataset")

    def say(message: str) -> None:
        (bar.write(message, file=sys.stderr) if bar is not None else print(message, file=sys.stderr))

    def progress(done: int, total: int, record: dict) -> None:
        if record["status"] != "ok":
            say(f"{record['id']}: {record['error']}")
        for note in record.get("warnings") or []:  # shown with -q too: a folding warp, a sheared affine
            say(f"laugen dataset: warning: {record['id']}: {note}")
        if bar is not None:
            bar.update(1)

    try:
        summary = run_dataset(pairs, args.out, options, scheduler=args.scheduler, workers=args.workers,
                              overwrite=args.overwrite, progress=progress, manifest=args.manifest)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        folding = summary["pairs_folding"]
        note = f"; the warp folds in {len(folding)} pair(s): {', '.join(folding)}" if folding else ""
        print(f"{args.out}: {summary['pairs_ok']} of {summary['pairs_total']} pairs written "
              f"in {summary['seconds']:.1f} s{note}; see {DATASET_JSON}")
    if summary["pairs_failed"]:
        print(f"laugen dataset: {summary['pairs_failed']} pair(s) failed; see {args.out}/{DATASET_JSON}",
              file=sys.stderr)
        return 1
    return 0
