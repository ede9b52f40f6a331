"""Build the data of the downstream segmentation benchmark (``laugen experiment segmentation``).

Usage:
    python bench/segmentation_data.py OUT [--wheel DIPY_WHEEL] [--cache DIR]

Writes two folders of image/mask pairs, one per real scan, and a preview of the built labels:

- ``OUT/mni/``: the shipped sample (``sample_data/``: MNI152 2009a T1 template, lateral
  ventricles labels 1 and 2), symlinked.
- ``OUT/dwi/``: ``dipy_aniso_b0.nii.gz`` + ``dipy_aniso_b0_seg.nii.gz``, a second real scan: the
  single-subject diffusion b0 volume ``dipy/data/files/aniso_vox.nii.gz`` of the dipy wheel
  (58 x 58 x 24 voxels of 4 x 4 x 5 mm, oblique affine, int16), copied unchanged, and the
  ventricular CSF derived from it here (label 1). On a b0 image CSF is bright.
- ``OUT/dwi_labels.png``: the label contour on every slice of the b0 volume.

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
4. the largest 3D connected component (face connectivity) of the
   bright CSF: the lateral ventricles (frontal horns, bodies, atria), the third ventricle and,
   in the lowest slices, the adjoining quadrigeminal cistern, which the threshold cannot tell
   apart at 4 mm; about 25 mL over 9 slices.
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


def extract(wheel: Path, dst_dir: Path) -> Path:
    """The b0 scan and the licence text from the wheel into ``dst_dir``; checks the scan's hash."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
        lic = [n for n in zf.namelist() if n.endswith(".dist-info/LICENSE")]
        if lic:
            (dst_dir / "LICENSE.dipy.txt").write_bytes(zf.read(lic[0]))
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{wheel.name}:{MEMBER} has SHA-256 {digest}, expected {SHA256}")
    out = dst_dir / "dipy_aniso_b0.nii.gz"
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (OUT/mni, OUT/dwi, OUT/dwi_labels.png)")
    p.add_argument("--wheel", type=Path, help=f"a dipy {DIPY_VERSION} wheel (default: downloaded into --cache)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "laugen-napari" / "wheels", help="where the wheel is kept (default: %(default)s)")
    args = p.parse_args(argv)
    wheel = args.wheel or find_or_download_wheel(args.cache)
    out = args.out
    mni = out / "mni"
    mni.mkdir(parents=True, exist_ok=True)
    for name in ("mni152_t1.nii.gz", "mni152_ventricles_seg.nii.gz"):
        link = mni / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / "sample_data" / name)
    shutil.copy(ROOT / "sample_data" / "README.md", mni / "README.md")
    dwi = out / "dwi"
    img_path = extract(wheel, dwi)
    img = nib.load(img_path)
    b0 = np.asanyarray(img.dataobj)
    mask = ventricles(b0)
    seg = nib.Nifti1Image(mask.astype(np.uint8), img.affine, img.header)
    seg.set_data_dtype(np.uint8)
    seg.header.set_slope_inter(1, 0)
    nib.save(seg, dwi / "dipy_aniso_b0_seg.nii.gz")
    preview(b0, mask, out / "dwi_labels.png")
    vox = float(np.prod(img.header.get_zooms()[:3]))
    zs = np.flatnonzero(mask.any((0, 1)))
    print(f"{img_path}: {b0.shape} voxels of {img.header.get_zooms()[:3]} mm; label 1: {int(mask.sum())} voxels "
          f"= {mask.sum() * vox / 1000:.1f} mL on slices {zs.min()}..{zs.max()}; preview {out / 'dwi_labels.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
