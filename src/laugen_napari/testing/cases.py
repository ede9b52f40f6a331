"""Series with known truth for testing longitudinal models: a LAUGEN series and everything the
engine knows about it (z_t in mm, warped labels, label volumes, Jacobians, the field).

:func:`make_case` builds one :class:`LongitudinalCase` from an image/mask :class:`Source`;
:func:`sample_source` is the shipped MNI152 T1 with its ventricle labels (cropped around the
ventricles, so a case is small), :func:`pair_sources` reads a user's image/mask pairs (the
project's one pair rule, :func:`laugen_napari.io.pairs.find_pairs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class Source:
    """An image (Z, Y, X) with its integer label map and spacing (z, y, x) in mm."""

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    name: str = ""


def _crop_to_structure(image: np.ndarray, labels: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    nz = np.nonzero(labels)
    box = tuple(slice(max(0, int(a.min()) - margin), int(a.max()) + 1 + margin) for a in nz)
    return image[box], labels[box]


@lru_cache(maxsize=4)
def sample_source(margin: int = 12) -> Source:
    """The shipped MNI152 T1 (1 mm) and its ventricle labels (1 left, 2 right), cropped to the
    ventricles plus ``margin`` voxels (about 54 × 102 × 86 voxels at the default)."""
    from ..io.nifti import load_volume
    from .acdc import sample_pair

    t1, seg = sample_pair()
    img = load_volume(t1, ndim=3)
    lab = load_volume(seg, ndim=3)
    image, labels = _crop_to_structure(np.asarray(img.data, np.float32), np.asarray(lab.data).astype(np.int32), margin)
    return Source(np.ascontiguousarray(image), np.ascontiguousarray(labels), img.spacing, "mni152")


def pair_sources(folder: str | Path, margin: int = 12) -> list[Source]:
    """The image/mask pairs of ``folder`` (or a CSV manifest) as sources, each cropped to its
    structure plus ``margin`` voxels."""
    from ..io.pairs import find_pairs, read_pair

    out = []
    for pair in find_pairs(folder):
        img, lab = read_pair(pair.image, pair.mask)
        labels = np.asarray(lab.data, np.int32)
        if not labels.any():
            raise ValueError(f"{pair.mask}: the mask is empty")
        image, labels = _crop_to_structure(np.asarray(img.data, np.float32), labels, margin)
        out.append(Source(np.ascontiguousarray(image), np.ascontiguousarray(labels), img.spacing, pair.id))
    if not out:
        raise ValueError(f"{folder}: no image/mask pairs found")
    return out


@dataclass
class LongitudinalCase:
    """One series with its ground truth.

    Attributes:
        frames: (T, Z, Y, X) float32 images; frame 0 is the source image.
        labels: (T, Z, Y, X) warped label maps.
        z_mm: (T,) boundary displacement per frame in mm (the latent truth).
        volumes_ml: label -> (T,) volume in mL; ``volume_ml`` is their sum over the driving labels.
        jacobian_min: (T,) lowest Jacobian determinant of the warp; ``folded_fraction`` (T,) the
            share of voxels with determinant <= 0.
        field: (3, Z, Y, X) unit displacement field in mm (frame t moves by ``z_mm[t] * field``).
        spacing: (z, y, x) mm; ``params``: kind, trajectory, slope, sigma, labels, seed, source.
    """

    frames: np.ndarray
    labels: np.ndarray
    z_mm: np.ndarray
    volumes_ml: dict[int, np.ndarray]
    jacobian_min: np.ndarray
    folded_fraction: np.ndarray
    field: np.ndarray
    spacing: tuple[float, float, float]
    driving: list[int]
    params: dict = field(default_factory=dict)
    _jacobian: object = None

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def volume_ml(self) -> np.ndarray:
        """(T,) total volume of the labels that drive the deformation, mL."""
        return np.sum([self.volumes_ml[v] for v in self.driving], axis=0)

    @property
    def static(self) -> np.ndarray:
        """(Z, Y, X) True where the field is exactly zero (nothing moves there in any frame)."""
        return ~np.any(self.field != 0, axis=0)

    def jacobian(self, t: int) -> np.ndarray:
        """Jacobian determinants of frame ``t``'s warp at the voxels where the field varies
        (flattened; 1 everywhere else)."""
        return self._jacobian.determinant(float(self.z_mm[t])).cpu().numpy()

    def planes(self, axis: int = 0, crop: Sequence[int] | None = None, min_pixels: int = 20,
               max_planes: int | None = None) -> "PlaneSeries":
        """The planes along ``axis`` (0 = Z) where the driving structure covers at least
        ``min_pixels`` pixels at frame 0, as 2D sequences (N, T, H, W) for a 2D model, cropped to
        ``crop`` (H, W) around the structure (edge-padded where the volume is smaller)."""
        from ..training.datasets import SliceSpec

        spec = SliceSpec(axis=axis, crop=tuple(crop) if crop else None)
        driving = np.isin(self.labels[0], self.driving)
        counts = np.moveaxis(driving, axis, 0).reshape(driving.shape[axis], -1).sum(1)
        idx = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] >= min_pixels]
        idx = sorted(idx[:max_planes] if max_planes else idx)
        if not idx:
            raise ValueError(f"no plane along axis {axis} shows at least {min_pixels} pixels of the structure")
        seqs, labs, static = [], [], []
        structure, still = np.isin(self.labels, self.driving), self.static
        for i in idx:
            box = spec.crop_box(driving.shape[:axis] + driving.shape[axis + 1:], spec.plane(driving, i))
            seqs.append(spec.cut(spec.plane(self.frames, i), box))
            labs.append(spec.cut(spec.plane(structure, i), box))
            static.append(spec.cut(spec.plane(still, i), box))
        pixel_mm2 = float(np.prod(spec.spacing2d(self.spacing)))
        return PlaneSeries(np.stack(seqs).astype(np.float32), np.stack(labs), np.stack(static), idx, axis, pixel_mm2,
                           self.z_mm)


@dataclass
class PlaneSeries:
    """2D views of a case: ``frames`` (N, T, H, W), ``structure`` (N, T, H, W) bool (the warped
    driving labels), ``static`` (N, H, W) where the field is zero, plane indices, ``pixel_mm2``
    and the case's ``z_mm``. Crops reaching past the volume are edge-padded (the padding copies
    the edge, so it is static only where the edge is)."""

    frames: np.ndarray
    structure: np.ndarray
    static: np.ndarray
    indices: list[int]
    axis: int
    pixel_mm2: float
    z_mm: np.ndarray

    @property
    def area_mm2(self) -> np.ndarray:
        """(N, T) true area of the structure per plane and frame, mm²."""
        return self.structure.reshape(*self.structure.shape[:2], -1).sum(-1) * self.pixel_mm2


def make_case(source: Source, kind: str = "uniform", trajectory: str = "linear", slope: float = 0.5,
              frames: int = 8, labels: Sequence[int] | None = None, sigma_mm: float | None = None,
              seed: int = 0, direction: Sequence[float] | None = None, center: Sequence[float] | None = None,
              spread_mm: float | None = None) -> LongitudinalCase:
    """Generate one series of ``source`` with the engine (3D) and collect its truth.

    ``slope`` is the mean boundary displacement per frame in mm (negative shrinks); the kind's
    ``direction`` (directional, (z, y, x) array axes, default +y) and ``center`` (gaussian, (z, y, x)
    voxels, default the driving structure's voxel closest to its centroid) are fixed so that a case
    is reproducible; defaults of
    ``sigma_mm`` and ``spread_mm`` are :class:`~laugen_napari.settings.GenerationSettings`'.
    """
    from ..core import Augmenter, make_kind
    from ..settings import GenerationSettings

    defaults = GenerationSettings()
    sigma = defaults.sigma_mm if sigma_mm is None else float(sigma_mm)
    spread = defaults.spread_mm if spread_mm is None else float(spread_mm)
    driving = sorted(int(v) for v in np.unique(source.labels) if v != 0) if labels is None else [int(v) for v in labels]
    mask = np.isin(source.labels, driving)
    if not mask.any():
        raise ValueError(f"{source.name or 'source'}: label(s) {driving} not in the mask")
    pts = np.argwhere(mask)
    centre = pts[np.argmin(((pts - pts.mean(0)) ** 2).sum(1))].astype(float) if center is None else center
    kind_obj = make_kind(kind, direction=tuple(direction) if direction is not None else (0.0, 1.0, 0.0),
                         center=tuple(centre), spread_mm=spread)
    aug = Augmenter(source.image, source.labels, source.spacing, selected=driving, sigma_mm=sigma, kind=kind_obj,
                    device="cpu")
    traj = GenerationSettings(trajectory=trajectory, slope_range=(float(slope), float(slope)), frames=frames,
                              sigma_mm=sigma).validate().trajectory_model()
    series = aug.series(traj, frames=frames, seed=seed)
    return LongitudinalCase(
        frames=series.images, labels=series.labels, z_mm=np.asarray(series.z_mm, np.float64),
        volumes_ml={int(k): np.asarray(v) for k, v in series.volumes_ml.items()},
        jacobian_min=np.asarray(series.jacobian_min), folded_fraction=np.asarray(series.folded_fraction),
        field=aug.field.dense(), spacing=tuple(source.spacing), driving=driving,
        params={"kind": kind, "trajectory": trajectory, "slope_mm_per_frame": float(slope), "frames": int(frames),
                "sigma_mm": sigma, "labels": driving, "seed": int(seed), "source": source.name,
                "kind_params": kind_obj.params()},
        _jacobian=aug.jacobian)


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size != b.size or a.size < 2:
        raise ValueError(f"need two sequences of the same length >= 2, got {a.size} and {b.size}")
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0 or not (math.isfinite(sa) and math.isfinite(sb)):
        return math.nan
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))
