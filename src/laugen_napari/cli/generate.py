"""``laugen generate IMAGE MASK -o OUTDIR``: LAUGEN series from one scan and its segmentation."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from ..core import KINDS, TRAJECTORIES
from ..io.export import check_output_dir
from ..pipeline import GenerateOptions, generate_from_files


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_generate_options(parser: argparse.ArgumentParser, help_overrides: dict[str, str] | None = None) -> None:
    """Add the generation options of ``laugen generate`` (everything but IMAGE, MASK and -o)."""
    d = GenerateOptions()
    helps = help_overrides or {}
    g = parser.add_argument_group("generation options")
    g.add_argument("--kind", choices=KINDS, default=d.kind, help="deformation kind (default: %(default)s)")
    g.add_argument("--trajectory", choices=TRAJECTORIES, default=d.trajectory, help="latent trajectory (default: %(default)s)")
    g.add_argument("--frames", type=int, default=d.frames, metavar="T", help="frames per series incl. the input (default: %(default)s)")
    g.add_argument("--slope-range", type=float, nargs=2, default=list(d.slope_range), metavar=("MIN", "MAX"),
                   help="mean boundary displacement per frame in mm, drawn uniformly per series; negative shrinks "
                   "(default: %(default)s)")
    g.add_argument("--values", type=_floats, metavar="V,V,...", help="custom trajectory: z_t in mm for every frame, starting with 0")
    g.add_argument("--rate", type=float, help="steepness/growth rate per frame for sigmoid, exponential, gompertz")
    g.add_argument("--midpoint", type=float, help="sigmoid: frame of the steepest change (default: middle)")
    g.add_argument("--labels", type=_ints, metavar="L,L", help="labels that drive the deformation (default: all non-zero)")
    g.add_argument("--sigma-mm", type=float, default=d.sigma_mm, metavar="S",
                   help="Gaussian blur of the mask in mm; the deformation reaches about 4 S (default: %(default)s)")
    g.add_argument("--direction", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="directional: growth direction in the image's world axes (RAS+)")
    g.add_argument("--center", type=float, nargs=3, metavar=("I", "J", "K"), help="gaussian: centre voxel index in the file")
    g.add_argument("--spread-mm", type=float, default=d.spread_mm, metavar="S", help="gaussian: spread in mm (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help=helps.get("seed", "random seed (default: %(default)s)"))
    g.add_argument("--series", type=int, default=d.series, metavar="K", help="number of independent series (default: %(default)s)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="torch device (default: %(default)s)")
    g.add_argument("--label-interpolation", choices=("linear", "nearest"), default=d.label_interpolation,
                   help="label maps: one-hot linear + argmax, or nearest neighbour (default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help=helps.get("overwrite", "replace a non-empty OUTDIR"))
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    """:class:`GenerateOptions` from parsed generation options, checked (ValueError with one line)."""
    if args.trajectory == "custom" and args.values is None:
        raise ValueError("--trajectory custom needs --values V,V,... (z_t in mm, starting with 0)")
    if args.values is not None and args.trajectory != "custom":
        raise ValueError("--values is only used with --trajectory custom")
    options = GenerateOptions(
        kind=args.kind, trajectory=args.trajectory, frames=len(args.values) if args.values is not None else args.frames,
        slope_range=tuple(args.slope_range), values=args.values, rate=args.rate, midpoint=args.midpoint,
        labels=args.labels, sigma_mm=args.sigma_mm, direction=args.direction, center=args.center,
        spread_mm=args.spread_mm, seed=args.seed, series=args.series, device=args.device,
        label_interpolation=args.label_interpolation,
    )
    options.validate()
    return options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate LAUGEN series from an image and its segmentation",
        description="Deform IMAGE and MASK along a latent trajectory: frame t moves the boundary of the "
        "selected labels by z_t mm (frame 0 is the input). Writes image_series.nii.gz, "
        "mask_series.nii.gz and series.json into OUTDIR (OUTDIR/series_NNN for --series > 1).",
    )
    p.add_argument("image", help="3D NIfTI image (.nii or .nii.gz)")
    p.add_argument("mask", help="3D NIfTI label map on the same grid as IMAGE")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output directory (created)")
    add_generate_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    check_output_dir(args.out, args.overwrite)  # refuse before the progress bar appears
    bar = None if args.quiet else tqdm(total=options.frames * options.series, unit="frame", desc="laugen generate",
                                       file=sys.stderr, leave=False)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()

    try:
        dirs = generate_from_files(args.image, args.mask, args.out, options, overwrite=args.overwrite, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        _summary(dirs)
    return 0


def _summary(dirs) -> None:
    import json

    for d in dirs:
        rec = json.loads((d / "series.json").read_text())
        vols = ", ".join(f"label {k}: {v[0]:.2f} -> {v[-1]:.2f} mL" for k, v in rec["volumes_ml"].items())
        jmin = min(rec["jacobian_min"])
        folded = max(rec["folded_fraction"])
        z = rec["z_mm"]
        print(f"{d}: {rec['frames']} frames, z {z[0]:.2f} -> {z[-1]:.2f} mm; {vols}; min Jacobian {jmin:.3f}")
        if folded > 0:
            print(f"  warning: the warp folds (Jacobian <= 0) in up to {folded:.2e} of the voxels; "
                  "lower --slope-range or raise --sigma-mm", file=sys.stderr)
