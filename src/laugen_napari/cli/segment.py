"""``laugen segment``: a mask from clicks and boxes, with SAM (checkpoint given) or region growing.

Point and box coordinates are voxel indices I,J,K of the input file, as ITK-SNAP and nibabel
show them; the mask is written with the image's affine and header.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

AXIS_NAMES = {"i": 0, "j": 1, "k": 2, "0": 0, "1": 1, "2": 2}


def _parse_groups(text: str | None, option: str, names: str) -> list[tuple[float, ...]]:
    """Split ``"a,b,c;a,b,c"`` into tuples of as many numbers as ``names`` (e.g. "I,J,K") has; each
    group is read by the project's one number parser (:func:`laugen_napari.settings.parse_numbers`)."""
    from ..settings import parse_numbers

    if text is None or not text.strip():
        return []
    n = len(names.split(","))
    out = []
    for part in text.split(";"):
        if part.strip():
            out.append(tuple(parse_numbers(part, name=f"--{option}", count=n)))
    return out


def parse_points(text: str | None, what: str = "points") -> list[tuple[float, float, float]]:
    """Parse ``"I,J,K;I,J,K"`` into a list of (i, j, k) voxel indices."""
    return _parse_groups(text, what, "I,J,K")


def parse_boxes(text: str | None) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Parse ``"I0,J0,K0,I1,J1,K1[;…]"`` (two opposite corners on one slice) into corner pairs."""
    return [(v[:3], v[3:]) for v in _parse_groups(text, "box", "I0,J0,K0,I1,J1,K1")]


def parse_window(text: str | None) -> tuple[float, float] | None:
    """Parse ``"LOW,HIGH"`` (image units) or None."""
    from ..settings import parse_numbers

    if text is None:
        return None
    lo, hi = parse_numbers(text, name="--window", count=2)
    if hi <= lo:
        raise ValueError(f"--window: {text!r} must be two finite numbers with LOW < HIGH")
    return lo, hi


def check_output_file(output: str | os.PathLike, overwrite: bool, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse ``-o`` before any work: not a NIfTI name, an existing folder, an existing file without
    ``overwrite``, one of the ``inputs``, or a parent that is missing, not a folder or not writable."""
    from ..io.nifti import is_nifti

    out = Path(output)
    if out.is_dir():
        raise FileExistsError(f"-o {out}: is a folder; give a file name such as {out / 'mask.nii.gz'}")
    if not is_nifti(out):
        raise ValueError(f"-o {out}: the mask is written as NIfTI; name it .nii.gz or .nii")
    for src in inputs:
        if out.exists() and Path(src).exists() and os.path.samefile(out, src):
            raise ValueError(f"-o {out}: is the input image; write the mask to another file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"-o {out}: exists; pass --overwrite to replace it")
    parent = out.parent
    if not parent.exists():
        raise FileNotFoundError(f"-o {out}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise NotADirectoryError(f"-o {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"-o {out}: the folder {parent} is not writable")
    return out


def _check_inside(ijk: tuple[float, ...], shape: tuple[int, int, int], what: str) -> None:
    rounded = [int(round(v)) for v in ijk]
    if any(v < 0 or v >= n for v, n in zip(rounded, shape)):
        raise ValueError(f"{what} {','.join(str(v) for v in rounded)} lies outside the image "
                         f"(voxel indices run 0..{shape[0] - 1}, 0..{shape[1] - 1}, 0..{shape[2] - 1})")


def file_axis_to_array_axis(volume, file_axis: int) -> int:
    """Array axis (0 = Z, 1 = Y, 2 = X) that holds the file's voxel axis ``file_axis`` (I, J, K)."""
    probe = [0.0, 0.0, 0.0]
    base = np.array(volume.file_to_array_index(probe))
    probe[file_axis] = 1.0
    moved = np.abs(np.array(volume.file_to_array_index(probe)) - base)
    return int(np.argmax(moved))


def run(args: argparse.Namespace) -> int:
    """Run ``laugen segment``; returns the exit status."""
    from ..io.nifti import load_volume, save_volume
    from ..segment import Prompts, choose_axis, get_backend, segment

    out_path = check_output_file(args.output, args.overwrite, (args.image,))
    if not (1 <= args.label <= 65535):
        raise ValueError(f"--label must be between 1 and 65535, got {args.label}")
    points = parse_points(args.points, "points")
    negatives = parse_points(args.negative_points, "negative-points")
    boxes = parse_boxes(args.box)
    if not points and not boxes:
        raise ValueError("give at least one click with --points I,J,K or a box with --box")
    if args.model_type and not args.checkpoint:
        raise ValueError("--model-type needs --checkpoint FILE (without a checkpoint region growing runs)")
    window = parse_window(args.window)

    volume = load_volume(args.image, ndim=3)
    shape = volume.file_shape
    for p in points:
        _check_inside(p, shape, "--points: click")
    for p in negatives:
        _check_inside(p, shape, "--negative-points: negative click")
    negative_voxels = {tuple(int(round(v)) for v in p) for p in negatives}
    for p in points:
        voxel = tuple(int(round(v)) for v in p)
        if voxel in negative_voxels:
            raise ValueError(f"voxel {','.join(map(str, voxel))} is both in --points and in --negative-points; "
                             "remove it from one of them")
    for a, b in boxes:
        _check_inside(a, shape, "--box: corner")
        _check_inside(b, shape, "--box: corner")
    prompts = Prompts.create(
        positive=[volume.file_to_array_index(p) for p in points],
        negative=[volume.file_to_array_index(p) for p in negatives],
        boxes=[(volume.file_to_array_index(a), volume.file_to_array_index(b)) for a, b in boxes],
    )
    file_axis = AXIS_NAMES.get(str(args.axis).lower()) if args.axis is not None else 2
    if file_axis is None:
        raise ValueError(f"--axis must be i, j or k (the file's voxel axes), got {args.axis!r}")
    axis = choose_axis(prompts, file_axis_to_array_axis(volume, file_axis))

    backend = get_backend(args.checkpoint, args.model_type or "vit_b", args.device)
    print(f"laugen segment: backend {backend.describe()}", file=sys.stderr)
    data = np.asarray(volume.data, dtype=np.float32)
    index = None
    if args.slice_only:
        slices = prompts.slices(axis)
        if len(slices) != 1:
            raise ValueError(f"--slice-only needs all prompts on one slice along the axis, found slices {slices}")
        index = slices[0]
    t0 = time.perf_counter()
    mask = segment(data, prompts, backend, axis=axis, index=index, window=window, spacing=volume.spacing)
    elapsed = time.perf_counter() - t0
    if not mask.any():
        raise ValueError(f"nothing found from these prompts (the mask is empty); {out_path} not written")
    dtype = np.uint8 if args.label <= 255 else np.uint16
    save_volume(out_path, mask.astype(dtype) * dtype(args.label), volume, dtype=dtype)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    print(f"laugen segment: {int(mask.sum())} voxels ({mask.sum() * voxel_ml:.2f} ml) labelled {args.label} "
          f"in {elapsed:.2f} s → {out_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` subcommand."""
    p = subparsers.add_parser(
        "segment", help="segment a structure from clicks/boxes (SAM with a checkpoint, else region growing)",
        description="Segment a structure from clicks and boxes given as voxel indices I,J,K of IMAGE. "
                    "Without --checkpoint a weightless region growing runs; with it Segment Anything "
                    "propagates slice by slice along --axis.")
    p.add_argument("image", help="input NIfTI image")
    p.add_argument("--points", help="positive clicks 'I,J,K[;I,J,K...]' (file voxel indices)")
    p.add_argument("--negative-points", help="negative clicks 'I,J,K[;I,J,K...]'")
    p.add_argument("--box", help="box(es) 'I0,J0,K0,I1,J1,K1[;...]', two corners on one slice")
    p.add_argument("--checkpoint", help="SAM / MedSAM checkpoint file (.pth); without it region growing runs")
    p.add_argument("--model-type", default=None, help="SAM architecture: vit_b (default, also MedSAM), vit_l, vit_h")
    p.add_argument("--axis", default=None, help="slice axis of the file for SAM propagation: i, j or k (default k)")
    p.add_argument("--window", help="intensity window 'LOW,HIGH' mapped to 8-bit for SAM (default 0.5-99.5 pct)")
    p.add_argument("--slice-only", action="store_true", help="segment only the prompted slice, no 3D")
    p.add_argument("--device", default="auto", help="torch device for SAM: auto, cpu, cuda")
    p.add_argument("-o", "--output", required=True, help="output mask NIfTI (.nii.gz)")
    p.add_argument("--label", type=int, default=1, help="label value written into the mask (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)
