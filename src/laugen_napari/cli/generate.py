"""``laugen generate IMAGE MASK -o OUTDIR``: LAUGEN series from one scan and its segmentation."""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

from ..io.export import check_output_dir
from ..pipeline import generate_from_files
from ..settings import add_settings_arguments, settings_from_args
from .bars import progress_bar


def add_generate_options(parser: argparse.ArgumentParser, help_overrides: dict[str, str] | None = None) -> None:
    """Add the generation options (every field of :class:`GenerationSettings`) and ``--overwrite``,
    ``-q``: everything of ``laugen generate`` but IMAGE, MASK and -o."""
    helps = help_overrides or {}
    group = add_settings_arguments(parser, help_overrides=helps)
    group.add_argument("--overwrite", action="store_true", help=helps.get("overwrite", "replace a non-empty OUTDIR"))
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary (warnings are still shown)")


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
    options = settings_from_args(args)
    check_output_dir(args.out, args.overwrite, "--overwrite")  # refuse before the progress bar appears
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:  # only once the inputs and resources passed their checks
            bar = progress_bar(total=total, unit="frame", desc="laugen generate", leave=False)
        bar.n = done
        bar.refresh()

    with warnings_as_lines("generate"):  # printed after the bar is gone
        try:
            dirs = generate_from_files(args.image, args.mask, args.out, options, overwrite=args.overwrite,
                                       progress=progress)
        finally:
            if bar is not None:
                bar.close()
    if not args.quiet:
        _summary(dirs)
    return 0


@contextmanager
def warnings_as_lines(command: str) -> Iterator[None]:
    """Print the library's warnings raised inside the block as ``laugen COMMAND: warning: ...``
    lines on stderr (once each, also with ``-q``) when the block succeeds."""
    from ..pipeline import LaugenWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LaugenWarning)
        yield
    seen = set()
    for w in caught:  # reached only when the block succeeded: an error stays the one line printed
        if issubclass(w.category, LaugenWarning):
            text = " ".join(str(w.message).split())
            if text not in seen:
                seen.add(text)
                print(f"laugen {command}: warning: {text}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _summary(dirs) -> None:
    import json

    for d in dirs:
        rec = json.loads((d / "series.json").read_text())
        vols = ", ".join(f"label {k}: {v[0]:.2f} -> {v[-1]:.2f} mL" for k, v in rec["volumes_ml"].items())
        jmin = min(rec["jacobian_min"])
        z = rec["z_mm"]
        print(f"{d}: {rec['frames']} frames, z {z[0]:.2f} -> {z[-1]:.2f} mm; {vols}; min Jacobian {jmin:.3f}")
