"""``laugen sample GEN``: new image+mask pairs from a trained generator of the registry, optionally
turned into LAUGEN series (``--then-series``, with the generation settings of ``laugen generate``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    from ..settings import add_settings_arguments
    from ..training.generators import GENERATORS

    p = subparsers.add_parser("sample", help="sample new image+mask pairs from a trained generator")
    sub = p.add_subparsers(dest="model_name", metavar="GEN")
    for spec in GENERATORS.values():
        s = sub.add_parser(
            spec.name, help=f"pairs from a `laugen train {spec.name}` checkpoint",
            description="Write N generated pairs as NIfTI files OUTDIR/gen_NNNN.nii.gz (image channel(s), normalised to "
            "[0, 1]) and gen_NNNN_seg.nii.gz (label map), dropping samples whose mask has fewer than K pixels; "
            "samples.json lists them. With --then-series every pair becomes a LAUGEN series in OUTDIR/series/gen_NNNN.",
        )
        s.add_argument("--checkpoint", required=True, metavar="C", help=f"last.pt or best.pt of `laugen train {spec.name}`")
        s.add_argument("-n", type=int, required=True, metavar="N", help="number of pairs (volumes with --volumes) to write")
        s.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created; must be empty)")
        s.add_argument("--min-mask-voxels", type=int, default=10, metavar="K", help="drop masks smaller than K pixels; empty masks are always dropped (default: %(default)s)")
        s.add_argument("--max-tries", type=int, default=20, help="draw at most this many times N samples (default: %(default)s)")
        s.add_argument("--pixel-mm", type=float, default=1.0, help="pixel size written into the NIfTI files in mm (default: %(default)s)")
        s.add_argument("--seed", type=int, default=0, help="sampling seed (also the series seed)")
        if spec.name in ("stylegan2", "ldm"):
            s.add_argument("--condition", type=float, nargs="+", metavar="V",
                           help="condition values (stylegan2 conditional: slice position 0-1 and sqrt area fraction per "
                           "label; ldm: the nine structure descriptors); default: drawn from the training data")
        if spec.name == "ldm":
            s.add_argument("--volumes", action="store_true", help="write whole generated volumes (D slices) instead of slices")
            s.add_argument("--ddim-steps", type=int, default=50, help="DDIM sampling steps (default: %(default)s)")
            s.add_argument("--no-refine", action="store_true",
                           help="skip the refining module even when the checkpoint has a trained one")
            s.add_argument("--refine-steps", type=int, default=20,
                           help="DDIM steps of a diffusion refiner (default: %(default)s)")
        s.add_argument("--then-series", action="store_true", help="run LAUGEN on each generated pair")
        add_settings_arguments(s, exclude=("seed",), title="LAUGEN series of every pair (the options of `laugen generate`)")
        s.set_defaults(func=run, generator=spec.name)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def sample_pairs(model, n: int, min_mask_pixels: int, seed: int = 0, max_tries: int = 20, sampler=None):
    """See :func:`laugen_napari.training.generators.sample_nonempty`."""
    from ..training.generators import sample_nonempty

    return sample_nonempty(model, n, min_mask_pixels, seed, max_tries, sampler)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..io.export import staged_directory
    from ..io.nifti import save_volume, volume_from_array
    from ..training.generators import GENERATORS, split_pairs

    name = args.generator
    if args.n < 1:
        raise ValueError("-n must be at least 1")
    if args.pixel_mm <= 0:
        raise ValueError("--pixel-mm must be positive")
    options = None
    if args.then_series:
        from ..settings import settings_from_args

        options = settings_from_args(args, seed=args.seed)
    model = GENERATORS[name].load(args.checkpoint)
    cond = getattr(args, "condition", None)
    records, dropped = [], 0
    out = Path(args.out)
    spacing = (args.pixel_mm,) * 3
    ldm_options = {}
    if name == "ldm":
        if args.ddim_steps < 1 or args.refine_steps < 1:
            raise ValueError("--ddim-steps and --refine-steps must be at least 1")
        ldm_options = {"steps": args.ddim_steps, "refine": False if args.no_refine else None,
                       "refine_steps": args.refine_steps}
    if getattr(args, "volumes", False):
        g = torch.Generator().manual_seed(args.seed)
        vols = model.sample_volumes(args.n, generator=g, condition=cond, **ldm_options)
        ci = model.cfg.image_channels
        arrays = []
        for v in vols:  # (C, D, S, S) -> image (D, S, S) (or (C_img, D, S, S)) and the label map
            imgs, labs = split_pairs(v.permute(1, 0, 2, 3), ci)
            arrays.append((imgs[:, 0] if ci == 1 else imgs.transpose(1, 0, 2, 3), labs))
    else:
        sampler = None
        if name == "ldm":
            sampler = lambda k, g: model.sample(k, generator=g, condition=cond, **ldm_options)  # noqa: E731
        elif cond is not None:
            sampler = lambda k, g: model.sample(k, generator=g, condition=torch.tensor(cond))  # noqa: E731
        images, masks, dropped = sample_pairs(model, args.n, args.min_mask_voxels, args.seed, args.max_tries, sampler)
        if len(images) == 0:
            raise ValueError(f"no sample had a mask of >= {max(1, args.min_mask_voxels)} pixels in {args.max_tries} rounds; "
                             "lower --min-mask-voxels or train longer")
        # one slice as a Z = 1 volume; several modalities as a 4D (C, 1, S, S) file
        arrays = [(img[0][None] if len(img) == 1 else img[:, None], msk[None]) for img, msk in zip(images, masks)]
    with staged_directory(out) as tmp:
        for i, (img, msk) in enumerate(arrays):
            vol = volume_from_array(msk.astype(np.float32), spacing=spacing)
            save_volume(tmp / f"gen_{i:04d}.nii.gz", img.astype(np.float32), vol)
            save_volume(tmp / f"gen_{i:04d}_seg.nii.gz", msk.astype(np.uint8), vol)
            records.append({"image": f"gen_{i:04d}.nii.gz", "mask": f"gen_{i:04d}_seg.nii.gz",
                            "mask_pixels": int((msk > 0).sum())})
        if options is not None:
            from ..pipeline import generate_from_files

            (tmp / "series").mkdir()
            for i, rec in enumerate(records):
                dest = tmp / "series" / f"gen_{i:04d}"
                generate_from_files(tmp / rec["image"], tmp / rec["mask"], dest, options)
                rec["series"] = f"series/gen_{i:04d}"
        meta = {"checkpoint": str(Path(args.checkpoint).resolve()), "generator": name, "seed": args.seed,
                "requested": args.n, "written": len(records), "dropped_small_masks": dropped, "condition": cond,
                "min_mask_voxels": args.min_mask_voxels, "pixel_mm": args.pixel_mm, "pairs": records,
                "intensity": "normalised, [0, 1] (per slice; per volume for ldm volumes)",
                "series_settings": options.to_record() if options is not None else None}
        (tmp / "samples.json").write_text(json.dumps(meta, indent=2) + "\n")
    if len(records) < args.n:
        print(f"laugen sample: warning: only {len(records)} of {args.n} samples had a mask of >= "
              f"{max(1, args.min_mask_voxels)} pixels", file=sys.stderr)
    print(f"{len(records)} {'volumes' if getattr(args, 'volumes', False) else 'pairs'} in {out} "
          f"({dropped} dropped for small masks)")
    return 0
