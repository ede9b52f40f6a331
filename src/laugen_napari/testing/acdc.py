"""An ACDC-layout folder built offline from the shipped MNI sample, for experiments without ACDC.

ACDC (Bernard et al., 2018) stores per patient ``patientNNN/patientNNN_4d.nii.gz`` (a cine series,
time last), ``patientNNN_frameNN.nii.gz`` with ``_gt`` segmentations at end-diastole (ED) and
end-systole (ES), and ``Info.cfg`` (``ED: n``, ``ES: n``, ``NbFrame: n``). :func:`build_acdc_folder`
writes that layout, so ``laugen experiment ... --real-acdc DIR`` runs here exactly as on ACDC.

Each "patient" is a different view of the real MNI152 T1 scan (seeded per patient):

- anatomy: an in-plane rotation (±12°), an isotropic scale (0.9–1.1) and a shift (±4 mm) around
  the lateral ventricles, resampled to an ACDC-like anisotropic grid (4 mm slices, 1.6 mm pixels);
- motion over one cycle of ``frames`` frames, made of two parts that LAUGEN's training series do
  not contain: the ventricles contract and relax (a periodic, non-monotone displacement, amplitude
  1.5–3.5 mm, sigma 3 mm, computed with the engine :class:`~laugen_napari.core.Augmenter`) and a
  smooth whole-image elastic motion (random low-frequency field, amplitude up to ~1.5 mm, with its
  own phase), plus Gaussian noise (σ 2 intensity units);
- frame 1 (ED) and the frame of smallest ventricle volume (ES) get ground-truth label maps
  (1 = left, 2 = right lateral ventricle; not ACDC's RV/MYO/LV).

These are not hearts: the folder exercises the protocol (patients, ED frames, 4D windows, the
split), not cardiac anatomy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

import laugen_napari

GRID_SPACING = (4.0, 1.6, 1.6)  # z, y, x mm


def sample_pair() -> tuple[Path, Path]:
    """Paths of the shipped MNI152 T1 and its ventricle labels."""
    folder = Path(laugen_napari.__file__).resolve().parent / "sample_data"
    return folder / "mni152_t1.nii.gz", folder / "mni152_ventricles_seg.nii.gz"


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], amplitude_mm: float) -> np.ndarray:
    """(3, Z, Y, X) random displacement in mm, low-frequency (a few cosine modes per axis)."""
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    out = np.zeros((3,) + tuple(shape))
    for c in range(3):
        for _ in range(3):
            f = rng.uniform(0.5, 1.5, 3)
            ph = rng.uniform(0, 2 * math.pi, 3)
            out[c] += np.prod([np.cos(math.pi * f[a] * grids[a] + ph[a]) for a in range(3)], axis=0)
    peak = np.abs(out).max()
    return out * (amplitude_mm / peak if peak > 0 else 0.0)


def build_acdc_folder(out: str | Path, patients: int = 10, frames: int = 12, shape: Sequence[int] = (10, 48, 48),
                      seed: int = 0, noise: float = 2.0) -> list[Path]:
    """Write ``patients`` ACDC-style patient folders under ``out``; returns the folders.

    Args:
        frames: frames of the cine cycle (ACDC has 12–35).
        shape: (Z, Y, X) voxels of the anisotropic grid (spacing :data:`GRID_SPACING` mm).
        noise: standard deviation of the added Gaussian noise, intensity units.
    """
    from scipy import ndimage

    from ..core import Augmenter, CustomTrajectory
    from ..io.nifti import load_volume, save_volume, volume_from_array

    if patients < 1 or frames < 2:
        raise ValueError("need at least 1 patient and 2 frames")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t1, seg = sample_pair()
    image = np.asarray(load_volume(t1).data, np.float32)
    labels = np.asarray(load_volume(seg).data).astype(np.int32)
    centre = np.array([c.mean() for c in np.nonzero(labels)])  # (z, y, x) voxels at 1 mm
    shape = tuple(int(n) for n in shape)
    grid = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, GRID_SPACING)],
                                indexing="ij"))  # (3, Z, Y, X) mm around the grid centre
    folders = []
    for p in range(1, patients + 1):
        rng = np.random.default_rng([int(seed), p])
        theta = math.radians(rng.uniform(-12, 12))
        scale = rng.uniform(0.9, 1.1)
        shift = np.array([rng.uniform(-2, 2), rng.uniform(-4, 4), rng.uniform(-4, 4)])
        rot = np.array([[1, 0, 0], [0, math.cos(theta), -math.sin(theta)], [0, math.sin(theta), math.cos(theta)]])
        base = np.einsum("ij,j...->i...", rot * scale, grid) + (centre + shift)[:, None, None, None]
        amp = rng.uniform(1.5, 3.5)
        t = np.arange(frames)
        z = -amp * (1 - np.cos(2 * math.pi * t / frames)) / 2  # contraction and relaxation, z_0 = 0
        aug = Augmenter(image, labels, (1.0, 1.0, 1.0), sigma_mm=3.0, device="cpu")
        series = aug.series(CustomTrajectory(list(z)), frames=frames)
        elastic = _smooth_field(rng, shape, rng.uniform(0.5, 1.5))
        phase = rng.uniform(0, 2 * math.pi)
        cine = np.empty((frames,) + shape, np.float32)
        gts = []
        for f in range(frames):
            coords = base + elastic * math.sin(2 * math.pi * f / frames + phase) - elastic * math.sin(phase)
            cine[f] = ndimage.map_coordinates(series.images[f], coords, order=1, mode="nearest")
            gts.append(ndimage.map_coordinates(series.labels[f], coords, order=0, mode="nearest").astype(np.uint8))
        cine += rng.normal(0, noise, cine.shape).astype(np.float32)
        es = int(np.argmin([int((g > 0).sum()) for g in gts]))
        if es == 0:
            es = frames // 2
        name = f"patient{p:03d}"
        d = out / name
        d.mkdir(exist_ok=True)
        ref = volume_from_array(cine[0], GRID_SPACING)
        save_volume(d / f"{name}_4d.nii.gz", cine, ref, time_step=1.0)
        for f in (0, es):
            save_volume(d / f"{name}_frame{f + 1:02d}.nii.gz", cine[f], ref)
            save_volume(d / f"{name}_frame{f + 1:02d}_gt.nii.gz", gts[f], ref, dtype=np.uint8)
        (d / "Info.cfg").write_text(f"ED: 1\nES: {es + 1}\nGroup: MNI\nNbFrame: {frames}\n"
                                    f"Source: MNI152 T1 variant (seed {seed}, rotation {math.degrees(theta):.1f} deg, "
                                    f"scale {scale:.3f}, contraction {amp:.2f} mm)\n")
        folders.append(d)
    return folders
