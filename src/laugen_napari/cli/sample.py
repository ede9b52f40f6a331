"""``laugen sample dhvae``: new image+mask pairs from a trained generator, optionally turned into
LAUGEN series (``--then-series``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample new image+mask pairs from a trained generator")
    sub = p.add_subparsers(dest="model_name", metavar="MODEL")
    s = sub.add_parser(
        "dhvae", help="pairs from a dHVAE/HVAE/VAE checkpoint",
        description="Write N generated pairs as 2D NIfTI files OUTDIR/gen_NNNN.nii.gz (image, normalised to [0, 1]) and "
        "gen_NNNN_seg.nii.gz (mask, 0/1), dropping samples whose mask has fewer than K pixels; samples.json lists them. "
        "With --then-series every pair becomes a LAUGEN series in OUTDIR/series/gen_NNNN.",
    )
    s.add_argument("--checkpoint", required=True, metavar="C", help="last.pt or best.pt of `laugen train dhvae`")
    s.add_argument("-n", type=int, required=True, metavar="N", help="number of pairs to write")
    s.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created; must be empty)")
    s.add_argument("--min-mask-voxels", type=int, default=10, metavar="K", help="drop masks smaller than K pixels (default: %(default)s)")
    s.add_argument("--max-tries", type=int, default=20, help="draw at most this many times N samples (default: %(default)s)")
    s.add_argument("--pixel-mm", type=float, default=1.0, help="pixel size written into the NIfTI files in mm (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0)
    g = s.add_argument_group("LAUGEN series of every pair (the options of `laugen generate`)")
    g.add_argument("--then-series", action="store_true", help="run LAUGEN on each generated pair")
    g.add_argument("--kind", default="uniform", help="deformation kind (default: %(default)s)")
    g.add_argument("--trajectory", default="linear", help="latent trajectory (default: %(default)s)")
    g.add_argument("--frames", type=int, default=8, help="frames per series (default: %(default)s)")
    g.add_argument("--slope-range", type=float, nargs=2, default=[0.1, 0.4], metavar=("MIN", "MAX"), help="mm per frame")
    g.add_argument("--rate", type=float)
    g.add_argument("--midpoint", type=float)
    g.add_argument("--sigma-mm", type=float, default=5.0, help="mask blur in mm (default: %(default)s)")
    g.add_argument("--series", type=int, default=1, help="series per pair (default: %(default)s)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def sample_pairs(model, n: int, min_mask_pixels: int, seed: int = 0, max_tries: int = 20):
    """Draw until ``n`` pairs with masks of >= ``min_mask_pixels`` pixels (or ``max_tries`` rounds).

    Returns (images (M, S, S) float32 in [0, 1], masks (M, S, S) uint8, number dropped), M <= n.
    """
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(int(seed))
    images, masks, dropped = [], [], 0
    for _ in range(max(1, max_tries)):
        s = model.sample(n, generator=g)
        m = (s[:, 1] >= 0.5).numpy().astype(np.uint8)
        ok = m.reshape(n, -1).sum(1) >= max(1, min_mask_pixels)
        dropped += int((~ok).sum())
        images += list(s[:, 0].numpy()[ok])
        masks += list(m[ok])
        if len(images) >= n:
            break
    images, masks = images[:n], masks[:n]
    size = model.cfg.size
    return (np.stack(images) if images else np.zeros((0, size, size), np.float32),
            np.stack(masks) if masks else np.zeros((0, size, size), np.uint8), dropped)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io.export import staged_directory
    from ..io.nifti import save_volume, volume_from_array
    from ..training.dhvae import load_generator

    if args.n < 1:
        raise ValueError("-n must be at least 1")
    if args.pixel_mm <= 0:
        raise ValueError("--pixel-mm must be positive")
    options = None
    if args.then_series:
        from ..pipeline import GenerateOptions

        options = GenerateOptions(kind=args.kind, trajectory=args.trajectory, frames=args.frames,
                                  slope_range=tuple(args.slope_range), rate=args.rate, midpoint=args.midpoint,
                                  sigma_mm=args.sigma_mm, seed=args.seed, series=args.series, device=args.device)
        options.validate()
    model = load_generator(args.checkpoint)
    images, masks, dropped = sample_pairs(model, args.n, args.min_mask_voxels, args.seed, args.max_tries)
    if len(images) == 0:
        raise ValueError(f"no sample had a mask of >= {args.min_mask_voxels} pixels in {args.max_tries} rounds; "
                         "lower --min-mask-voxels or train longer")
    out = Path(args.out)
    records = []
    with staged_directory(out) as tmp:
        for i, (img, msk) in enumerate(zip(images, masks)):
            vol = volume_from_array(img[None].astype(np.float32), spacing=(args.pixel_mm,) * 3)
            save_volume(tmp / f"gen_{i:04d}.nii.gz", img[None].astype(np.float32), vol)
            save_volume(tmp / f"gen_{i:04d}_seg.nii.gz", msk[None].astype(np.uint8), vol)
            records.append({"image": f"gen_{i:04d}.nii.gz", "mask": f"gen_{i:04d}_seg.nii.gz", "mask_pixels": int(msk.sum())})
        if options is not None:
            from ..pipeline import generate_from_files

            (tmp / "series").mkdir()
            for i, rec in enumerate(records):
                dest = tmp / "series" / f"gen_{i:04d}"
                generate_from_files(tmp / rec["image"], tmp / rec["mask"], dest, options)
                rec["series"] = f"series/gen_{i:04d}"
        meta = {"checkpoint": str(Path(args.checkpoint).resolve()), "model": model.cfg.kind, "seed": args.seed,
                "requested": args.n, "written": len(records), "dropped_small_masks": dropped,
                "min_mask_voxels": args.min_mask_voxels, "pixel_mm": args.pixel_mm, "pairs": records,
                "intensity": "per-slice min-max normalised, [0, 1]"}
        (tmp / "samples.json").write_text(json.dumps(meta, indent=2) + "\n")
    if len(records) < args.n:
        print(f"laugen sample: warning: only {len(records)} of {args.n} samples had a mask of >= "
              f"{args.min_mask_voxels} pixels", file=sys.stderr)
    print(f"{len(records)} pairs in {out} ({dropped} dropped for small masks)")
    return 0
