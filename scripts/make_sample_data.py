"""Rebuild ``sample_data/`` from the MNI152 2009a files shipped in the nilearn wheel.

Usage: python scripts/make_sample_data.py NILEARN_DATA_DIR

NILEARN_DATA_DIR is ``nilearn/datasets/data`` of an unpacked nilearn wheel. The lateral
ventricles are derived from the T1 template and its GM/WM probability maps: cerebrospinal
fluid enclosed by the brain (low GM+WM probability, dark on T1) inside a box around the
midline, kept as the two largest connected components, labelled 1 (left, x < 0 mm) and
2 (right, x > 0 mm) in RAS world coordinates.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

STEM = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def main(src: Path, dst: Path) -> None:
    t1_img = nib.load(src / STEM.format("t1"))
    t1 = np.asarray(t1_img.dataobj).astype(np.float32)
    gm = np.asarray(nib.load(src / STEM.format("gm")).dataobj).astype(np.float32) / 255
    wm = np.asarray(nib.load(src / STEM.format("wm")).dataobj).astype(np.float32) / 255
    affine = t1_img.affine

    brain = ndi.binary_fill_holes(ndi.binary_closing(gm + wm > 0.5, iterations=2))
    brain = ndi.binary_erosion(brain, iterations=3)
    csf = brain & (gm + wm < 0.35) & (t1 < np.percentile(t1[brain], 20))

    ijk = np.indices(t1.shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3,) + t1.shape)
    box = (np.abs(xyz[0]) < 32) & (xyz[1] > -50) & (xyz[1] < 40) & (xyz[2] > -8) & (xyz[2] < 40)
    csf &= box
    csf = ndi.binary_opening(csf, iterations=1)

    labels = np.zeros(t1.shape, np.uint8)
    for side, value in ((xyz[0] < 0, 1), (xyz[0] >= 0, 2)):
        comp, n = ndi.label(csf & side)
        if n == 0:
            raise SystemExit("no ventricle found on one side")
        sizes = ndi.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
        labels[comp == 1 + int(np.argmax(sizes))] = value
    labels = ndi.binary_fill_holes(labels > 0) * labels  # keep label values, fill no new ones
    for value in (1, 2):
        print(f"label {value}: {int((labels == value).sum())} voxels")

    dst.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(t1.astype(np.uint8), affine, t1_img.header), dst / "mni152_t1.nii.gz")
    seg_header = t1_img.header.copy()
    seg_header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(labels, affine, seg_header), dst / "mni152_ventricles_seg.nii.gz")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "sample_data")
