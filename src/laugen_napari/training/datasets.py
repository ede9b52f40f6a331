"""Datasets of 2D slice sequences for next-frame prediction: real, semi-synthetic and mixed.

A *sequence* is a float array (T, H, W) of one plane over time, T = context + target frames.

- Real: 4D NIfTI files (x, y, z, t — time last, as NIfTI stores them), read with
  :func:`laugen_napari.io.nifti.load_volume` (closest-RAS, (T, Z, Y, X)); every plane along
  ``axis`` in the slice range gives sliding windows of T frames. ACDC folders
  (``patientNNN/patientNNN_4d.nii.gz`` with ``patientNNN_frameNN.nii.gz`` and ``..._gt.nii.gz``)
  also give the ED frame and its ground truth. Train/validation are split by patient (file) with a
  fixed ``split_seed``; a training-set size keeps a seeded, nested subset of the training patients.
- Semi-synthetic: LAUGEN series generated on the fly from image/mask pairs with the parameters of
  a :class:`~laugen_napari.settings.GenerationSettings`, either per plane (``geometry="2d"``,
  the plane as a Z = 1 volume) or in 3D and then sliced (``geometry="3d"``); per sample the
  source, plane, kind, direction/centre and slope are drawn from ``series_seed(seed, index)``,
  so sample ``index`` is the same in every run with that seed.
- Mixed (the paper's protocol): an epoch of ``length`` samples of which a fraction ``ratio`` is
  semi-synthetic in expectation (systematic stochastic rounding: floor or ceil of ratio · length
  per epoch, the running total within one sample of the expectation) and the rest real, the real
  set cycled (repeated) as needed, so runs with different ratios see the same number of samples.
- Intensities are normalised with a recorded :class:`Normalizer` (min–max of the training data to
  [0, 1]); metrics are computed after :meth:`Normalizer.invert`, with ``data_range = scale``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..core import KINDS, Augmenter, make_kind, series_seed


# ---- normalisation ---------------------------------------------------------------------------

@dataclass
class Normalizer:
    """x_norm = (x − offset) / scale; :meth:`invert` gives intensities back in the data's units."""

    offset: float = 0.0
    scale: float = 1.0

    @classmethod
    def fit(cls, arrays: Sequence[np.ndarray]) -> "Normalizer":
        """Min–max over every array (the training data): maps them to [0, 1]."""
        arrays = [a for a in arrays if np.size(a)]
        if not arrays:
            raise ValueError("no data to fit the intensity normalisation")
        lo = min(float(np.min(a)) for a in arrays)
        hi = max(float(np.max(a)) for a in arrays)
        return cls(lo, hi - lo if hi > lo else 1.0)

    @property
    def data_range(self) -> float:
        """Intensity span of the training data in its own units (the metrics' data range)."""
        return float(self.scale)

    def apply(self, x):
        return (x - self.offset) / self.scale

    def invert(self, x):
        return x * self.scale + self.offset

    def to_dict(self) -> dict:
        return {"offset": float(self.offset), "scale": float(self.scale)}


def check_finite(array: np.ndarray, what: str) -> np.ndarray:
    """Raise a one-line :class:`ValueError` if ``array`` holds NaN or inf."""
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} holds non-finite intensities (NaN or inf)")
    return array


# ---- reading ---------------------------------------------------------------------------------

def read_volume(path: str | Path, ndim: int | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI file through :func:`laugen_napari.io.nifti.load_volume`: (Z, Y, X) or (T, Z, Y, X)
    float32 (closest-RAS), checked finite, and its spacing (z, y, x) in mm."""
    from ..io.nifti import load_volume

    vol = load_volume(path, ndim=ndim)
    return check_finite(np.asarray(vol.data, np.float32), str(path)), vol.spacing


def read_4d(path: str | Path, frames_needed: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 4D NIfTI as (T, Z, Y, X); a clear error if it is not 4D or has fewer than ``frames_needed``."""
    data, spacing = read_volume(path)
    if data.ndim != 4:
        raise ValueError(f"{path} is not a 4D series (time last); got a 3D volume")
    if data.shape[0] < frames_needed:
        raise ValueError(f"{path} has {data.shape[0]} frames; context + target needs at least {frames_needed}")
    return data, spacing


@dataclass
class AcdcPatient:
    """One ACDC patient: the 4D cine, and the ED frame with its ground truth."""

    name: str
    four_d: Path
    ed_image: Path
    ed_labels: Path


def scan_acdc(root: str | Path) -> list[AcdcPatient]:
    """Patients of an ACDC folder. ED is read from ``Info.cfg`` (``ED: n``) or else the lowest
    numbered ``_frameNN`` file with a ``_gt`` file."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    patients = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"patient\d+", p.name)):
        four_d = d / f"{d.name}_4d.nii.gz"
        frames = sorted(int(m.group(1)) for f in d.glob(f"{d.name}_frame*_gt.nii.gz")
                        if (m := re.search(r"_frame(\d+)_gt", f.name)))
        if not four_d.is_file() or not frames:
            continue
        ed = frames[0]
        info = d / "Info.cfg"
        if info.is_file() and (m := re.search(r"^ED:\s*(\d+)", info.read_text(), re.M)) and int(m.group(1)) in frames:
            ed = int(m.group(1))
        patients.append(AcdcPatient(d.name, four_d, d / f"{d.name}_frame{ed:02d}.nii.gz",
                                    d / f"{d.name}_frame{ed:02d}_gt.nii.gz"))
    if not patients:
        raise FileNotFoundError(f"{root} holds no ACDC patient folders (patientNNN/patientNNN_4d.nii.gz with _gt frames)")
    return patients


# ---- planes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SliceSpec:
    """Which planes become sequences: ``axis`` of the (Z, Y, X) volume (0 axial), planes
    ``start:stop`` along it, and an optional (H, W) crop centred on the structure."""

    axis: int = 0
    start: int | None = None
    stop: int | None = None
    crop: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2 (z, y, x), got {self.axis}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise ValueError(f"crop must be two positive sizes (H, W), got {self.crop}")

    def planes(self, shape: Sequence[int], mask: np.ndarray | None = None) -> list[int]:
        """Plane indices in range; with a mask only those where the structure is present."""
        idx = list(range(shape[self.axis]))[slice(self.start, self.stop)]
        if mask is not None:
            present = np.moveaxis(mask != 0, self.axis, 0).reshape(shape[self.axis], -1).any(1)
            idx = [i for i in idx if present[i]]
        return idx

    def plane(self, volume: np.ndarray, index: int) -> np.ndarray:
        """The plane ``index`` of (..., Z, Y, X) along ``axis``: (..., H, W)."""
        return np.take(volume, index, axis=volume.ndim - 3 + self.axis)

    def crop_box(self, plane_shape: Sequence[int], mask_plane: np.ndarray | None) -> tuple[slice, slice]:
        """The crop window centred on the structure's centroid (or the plane's centre)."""
        if self.crop is None:
            return slice(None), slice(None)
        if mask_plane is not None and np.any(mask_plane):
            cy, cx = (int(round(v.mean())) for v in np.nonzero(mask_plane))
        else:
            cy, cx = plane_shape[0] // 2, plane_shape[1] // 2
        out = []
        for c, n, size in zip((cy, cx), plane_shape, self.crop):
            lo = min(max(c - size // 2, 0), max(n - size, 0))
            out.append(slice(lo, lo + size))
        return out[0], out[1]

    def cut(self, plane: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
        """Crop (..., H, W) to ``box``, padding at the edge (replicate) if the plane is smaller."""
        out = plane[..., box[0], box[1]]
        if self.crop is not None and out.shape[-2:] != tuple(self.crop):
            ph, pw = self.crop[0] - out.shape[-2], self.crop[1] - out.shape[-1]
            out = np.pad(out, [(0, 0)] * (out.ndim - 2) + [(0, ph), (0, pw)], mode="edge")
        return out

    def spacing2d(self, spacing: Sequence[float]) -> tuple[float, float]:
        rest = [s for i, s in enumerate(spacing) if i != self.axis]
        return float(rest[0]), float(rest[1])


def windows(series: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Sliding windows (N, length, H, W) of a (T, H, W) sequence."""
    t = series.shape[0]
    if t < length:
        raise ValueError(f"a sequence of {t} frames is shorter than context + target ({length})")
    return np.stack([series[s:s + length] for s in range(0, t - length + 1, stride)])


def real_sequences(data: np.ndarray, spec: SliceSpec, length: int, mask: np.ndarray | None = None,
                   stride: int = 1) -> list[np.ndarray]:
    """Windows of every plane of a (T, Z, Y, X) series: one (N, length, H, W) array per plane."""
    out = []
    for i in spec.planes(data.shape[1:], mask):
        mplane = spec.plane(mask, i) if mask is not None else None
        plane = spec.plane(data, i)
        out.append(windows(spec.cut(plane, spec.crop_box(plane.shape[-2:], mplane)), length, stride))
    return out


def stack_same_size(groups: Sequence[np.ndarray], what: str) -> np.ndarray:
    """Concatenate (N, T, H, W) arrays, refusing different plane sizes with a clear error."""
    sizes = sorted({tuple(g.shape[-2:]) for g in groups})
    if len(sizes) > 1:
        raise ValueError(f"{what}: sequences of different sizes {sizes}; choose a common --crop H W")
    return np.concatenate(groups, 0)


# ---- semi-synthetic --------------------------------------------------------------------------

GEOMETRIES = ("2d", "3d")


@dataclass
class SyntheticSource:
    """An image/mask pair (Z, Y, X) with spacing (z, y, x) mm, the source of LAUGEN series."""

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    name: str = ""

    def __post_init__(self) -> None:
        self.image = check_finite(np.asarray(self.image, np.float32), self.name or "the source image")
        self.labels = np.asarray(self.labels)
        if self.image.shape != self.labels.shape or self.image.ndim != 3:
            raise ValueError(f"{self.name or 'source'}: image {self.image.shape} and mask {self.labels.shape} must be the same 3D shape")
        if not np.any(self.labels):
            raise ValueError(f"{self.name or 'source'}: the mask is empty")
        spacing = tuple(float(v) for v in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing):
            # checked here: a bad spacing would otherwise make every series static (see _augmenter)
            raise ValueError(f"{self.name or 'source'}: spacing must be three positive numbers in mm, got {spacing}")
        self.spacing = spacing

    @classmethod
    def from_files(cls, image: str | Path, mask: str | Path) -> "SyntheticSource":
        from ..io.pairs import read_pair

        img, lab = read_pair(image, mask)
        if not np.any(lab.data):
            raise ValueError(f"{mask}: the mask is empty (no non-zero voxel to deform)")
        return cls(check_finite(np.asarray(img.data, np.float32), str(image)), np.asarray(lab.data, np.int32),
                   img.spacing, name=str(image))

    def selection(self, labels: Sequence[int] | None) -> np.ndarray:
        """Boolean mask of the labels that drive the series (all non-zero labels if None)."""
        if labels is None:
            return self.labels != 0
        missing = [int(v) for v in labels if not np.any(self.labels == int(v))]
        if missing:
            present = sorted(int(v) for v in np.unique(self.labels) if v != 0)
            raise ValueError(f"{self.name or 'source'}: label(s) {missing} not in the mask (present: {present})")
        return np.isin(self.labels, [int(v) for v in labels])


def _default_settings():
    from ..settings import GenerationSettings

    return GenerationSettings()


@dataclass
class SyntheticSequences:
    """Semi-synthetic sequences drawn per index (deterministic in ``seed`` and ``index``).

    The series' parameters come from ``settings`` (a
    :class:`~laugen_napari.settings.GenerationSettings`: trajectory, slope range in mm/frame,
    rate, midpoint, labels that drive the deformation, sigma_mm, spread_mm, label interpolation;
    its ``kind``, ``direction``, ``center`` and ``frames`` are not used). Per series, the kind is
    drawn from ``kinds``; a directional kind gets a random direction and a gaussian one a centre
    on a random voxel of the driving structure in the chosen plane.

    ``geometry``:

    - ``"2d"``: the field of the chosen plane alone (a Z = 1 volume): every plane moves by the
      full z_t, in-plane; through-plane motion is lost.
    - ``"3d"``: the series is generated on the whole volume and the plane is read from it
      (:meth:`~laugen_napari.core.warp.Warper.image_plane`), so a plane shows the in-plane part of
      a 3D motion; directions are drawn on the sphere.
    """

    sources: Sequence[SyntheticSource]
    frames: int
    spec: SliceSpec = field(default_factory=SliceSpec)
    settings: Any = field(default_factory=_default_settings)
    kinds: Sequence[str] = ("uniform", "directional", "gaussian")
    geometry: str = "2d"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("no image/mask pair for the semi-synthetic series")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if not self.kinds:
            raise ValueError("give at least one deformation kind")
        for k in self.kinds:
            if k not in KINDS:
                raise ValueError(f"unknown kind {k!r}; choose from {', '.join(KINDS)}")
        self.trajectory = self.settings.trajectory_model()  # validates early
        self.trajectory.sample(self.frames, np.random.default_rng(0))  # custom values: right count
        self.labels = None if self.settings.labels is None else [int(v) for v in self.settings.labels]
        self._planes, self._masks, self._work = [], [], []
        for s in self.sources:
            mask = s.selection(self.labels)
            self._work.append(self._working_volume(s, mask))
            planes = self.spec.planes(s.image.shape, mask)
            if not planes:
                raise ValueError(f"{s.name or 'source'}: the structure is absent from the chosen planes")
            self._planes.append(planes)
            self._masks.append(mask)

    def _working_volume(self, src: SyntheticSource, mask: np.ndarray) -> tuple:
        """For ``geometry="3d"`` with a crop: the source cut to the structure's box plus a margin
        that holds the field's support, the warp's reach (the largest |z_t|) and half the crop, so
        that a plane's crop comes out as from the whole volume at a fraction of the cost. Returns
        (image, labels, offset (z, y, x) voxels)."""
        if self.geometry != "3d" or self.spec.crop is None:
            return src.image, src.labels, (0, 0, 0)
        from ..core.field import TRUNCATE

        lo_hi = np.abs(np.asarray(self.settings.slope_range, float)).max() * (self.frames - 1)
        if self.trajectory.name == "custom":
            lo_hi = float(np.abs(self.trajectory.values).max())
        sl, pad = [], []
        nz = np.nonzero(mask)
        for axis, (sp, n) in enumerate(zip(src.spacing, mask.shape)):
            reach = int(TRUNCATE * self.settings.sigma_mm / sp + 0.5) + 2 + int(math.ceil(lo_hi / sp)) + 2
            if axis != self.spec.axis:
                reach += max(self.spec.crop) // 2 + 1
            lo, hi = max(0, int(nz[axis].min()) - reach), min(n, int(nz[axis].max()) + 1 + reach)
            sl.append(slice(lo, hi))
            pad.append(lo)
        box = tuple(sl)
        return np.ascontiguousarray(src.image[box]), np.ascontiguousarray(src.labels[box].astype(np.int32)), tuple(pad)

    def source_planes(self) -> list[np.ndarray]:
        """The cropped source planes (for fitting the normalisation)."""
        out = []
        for s, planes, mask in zip(self.sources, self._planes, self._masks):
            for i in planes:
                img = self.spec.plane(s.image, i)
                out.append(self.spec.cut(img, self.spec.crop_box(img.shape, self.spec.plane(mask, i))))
        return out

    def _augmenter(self, image, labels, spacing, kind) -> Augmenter | None:
        opts = dict(spacing=spacing, selected=self.labels, sigma_mm=self.settings.sigma_mm, device="cpu",
                    label_interpolation=self.settings.label_interpolation)
        try:
            return Augmenter(image, labels, kind=kind, **opts)
        except ValueError:  # the structure is absent from the crop or the kind leaves no field
            try:
                return Augmenter(image, labels, **opts)
            except ValueError:
                return None

    def draw(self, index: int) -> dict:
        """Sequence ``index`` with its truth: ``images`` (frames, H, W) float32, ``z_mm`` (frames,),
        ``kind``, ``source``, ``plane``."""
        rng = series_seed(self.seed, int(index))
        k = int(rng.integers(len(self.sources)))
        src, mask = self.sources[k], self._masks[k]
        i = int(rng.choice(self._planes[k]))
        img, mplane = self.spec.plane(src.image, i), self.spec.plane(mask, i)
        box = self.spec.crop_box(img.shape, mplane)
        kind_name = str(rng.choice(list(self.kinds)))
        ys, xs = np.nonzero(self.spec.cut(mplane, box) if self.geometry == "2d" else mplane)
        pick = int(rng.integers(len(ys))) if len(ys) else 0
        draw = self.trajectory.sample(self.frames, rng)
        if self.geometry == "2d":
            plane_img, plane_lab = self.spec.cut(img, box), self.spec.cut(self.spec.plane(src.labels, i), box)
            sy, sx = self.spec.spacing2d(src.spacing)
            angle = rng.uniform(0, 2 * math.pi)
            kind = make_kind(kind_name, direction=(0.0, math.sin(angle), math.cos(angle)),
                             center=(0.0, float(ys[pick]) if len(ys) else 0.0, float(xs[pick]) if len(xs) else 0.0),
                             spread_mm=self.settings.spread_mm)
            aug = self._augmenter(plane_img[None], plane_lab[None].astype(np.int32), (1.0, sy, sx), kind)
            images = (np.repeat(plane_img[None].astype(np.float32), self.frames, 0) if aug is None
                      else aug.series_from_values(draw).images[:, 0])
        else:
            v = rng.normal(size=3)
            work_img, work_lab, off = self._work[k]
            axis = self.spec.axis
            rest = [a for a in range(3) if a != axis]
            centre = [0.0, 0.0, 0.0]
            centre[axis] = float(i - off[axis])
            if len(ys):
                centre[rest[0]], centre[rest[1]] = float(ys[pick] - off[rest[0]]), float(xs[pick] - off[rest[1]])
            kind = make_kind(kind_name, direction=tuple(v / np.linalg.norm(v)), center=tuple(centre),
                             spread_mm=self.settings.spread_mm)
            aug = self._augmenter(work_img, work_lab, src.spacing, kind)
            if aug is None:
                images = np.repeat(self.spec.cut(img, box)[None], self.frames, 0)
            else:
                wbox = tuple(b if b.start is None else slice(b.start - off[a], b.stop - off[a]) for b, a in zip(box, rest))
                images = np.stack([self.spec.cut(aug.warper.image_plane(float(z), axis, i - off[axis]).numpy(), wbox)
                                   for z in draw.z_mm])
            images = images.astype(np.float32)
        return {"images": images, "z_mm": np.asarray(draw.z_mm, np.float64), "kind": kind_name,
                "source": src.name, "plane": i}

    def __getitem__(self, index: int) -> np.ndarray:
        """Sequence ``index``: (frames, H, W) float32."""
        return self.draw(index)["images"]


# ---- mixing ----------------------------------------------------------------------------------

def synthetic_counts(ratio: float, length: int, epochs: int, seed: int = 0) -> np.ndarray:
    """Synthetic samples per epoch for an expected fraction ``ratio`` of ``length`` samples.

    Systematic stochastic rounding: with a seeded offset u in [0, 1), epoch e gets
    ``floor((e + 1)·r·L + u) − floor(e·r·L + u)``, i.e. floor(r·L) or ceil(r·L), the expectation is
    exactly r·L and after E epochs the total is within one sample of E·r·L (``round`` would give
    0 for r = 0.1 and L = 4 forever)."""
    u = float(np.random.default_rng([int(seed), 13]).random())
    e = np.arange(int(epochs) + 1, dtype=np.float64)
    cum = np.floor(e * float(ratio) * int(length) + u)
    return np.diff(cum).astype(np.int64)


class MixedSequences(torch.utils.data.Dataset):
    """An epoch of ``length`` samples, a fraction ``ratio`` of them semi-synthetic in expectation.

    The synthetic count of an epoch is floor or ceil of ``ratio · length`` by
    :func:`synthetic_counts` (exact in expectation, within one sample over any number of epochs).
    Items are ``(frames (T, 1, H, W) float32 normalised, is_synthetic)``. Real sequences (N, T, H, W)
    are cycled in a seeded shuffled order (repeated when there are fewer than needed); synthetic
    ones are generated on the fly with a fresh index per epoch (:meth:`set_epoch`).
    """

    def __init__(self, real: np.ndarray | None, synthetic: SyntheticSequences | None, ratio: float,
                 normalizer: Normalizer, length: int | None = None, seed: int = 0):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"the mixing ratio must lie in [0, 1], got {ratio}")
        n_real = 0 if real is None else len(real)
        if ratio > 0 and synthetic is None:
            raise ValueError("a mixing ratio above 0 needs image/mask pairs for semi-synthetic series")
        if ratio < 1 and n_real == 0:
            raise ValueError("a mixing ratio below 1 needs real sequences")
        self.length = int(length if length is not None else n_real)
        if self.length < 1:
            raise ValueError("the dataset needs at least one sample per epoch (give a length)")
        self.real, self.synthetic, self.ratio = real, synthetic, float(ratio)
        self.normalizer, self.seed = normalizer, int(seed)
        self.set_epoch(0)

    @property
    def expected_synthetic(self) -> float:
        """Expected synthetic samples per epoch, ``ratio · length``."""
        return self.ratio * self.length

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle which positions are synthetic and which real sequences fill the rest."""
        rng = np.random.default_rng([self.seed, int(epoch), 7])
        self.epoch = int(epoch)
        self.n_synthetic = int(synthetic_counts(self.ratio, self.length, self.epoch + 1, self.seed)[-1])
        self.is_synthetic = np.zeros(self.length, bool)
        self.is_synthetic[rng.permutation(self.length)[:self.n_synthetic]] = True
        n_real = self.length - self.n_synthetic
        order = np.concatenate([rng.permutation(len(self.real)) for _ in range(-(-n_real // max(len(self.real), 1)))]) \
            if n_real else np.zeros(0, int)
        self.source_index = np.zeros(self.length, np.int64)
        self.source_index[~self.is_synthetic] = order[:n_real]
        self.source_index[self.is_synthetic] = self.epoch * self.length + np.arange(self.n_synthetic)

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> np.ndarray:
        """Sample ``index`` in the data's intensity units, (T, H, W)."""
        j = int(self.source_index[index])
        return self.synthetic[j] if self.is_synthetic[index] else self.real[j]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        x = self.normalizer.apply(np.asarray(self.raw(index), np.float32))
        return torch.from_numpy(np.ascontiguousarray(x, np.float32))[:, None], bool(self.is_synthetic[index])


# ---- one call for the CLI and the dock ---------------------------------------------------------

@dataclass
class DataBundle:
    """Training set, validation sequences (raw intensities, (N, T, H, W)), normalisation, summary."""

    train: MixedSequences
    val: np.ndarray
    normalizer: Normalizer
    info: dict


def split_groups(names: Sequence[str], val_fraction: float, split_seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, validation) indices of ``names`` (patients, files or planes): a seeded hold-out of
    ``round(val_fraction · n)`` groups (at least one, at most n − 1). It depends only on the names'
    order and ``split_seed``, so every run of a sweep validates on the same groups."""
    n = len(names)
    if n < 2:
        raise ValueError("the real data give a single plane; need at least two planes or files to hold some out")
    order = np.random.default_rng([int(split_seed), 11]).permutation(n)
    n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def choose_subset(n_available: int, n: int, seed: int) -> list[int]:
    """``n`` of ``n_available`` training groups for repeat ``seed``: a prefix of one seeded
    permutation, so for one seed the subsets of increasing n are nested."""
    if not 1 <= n <= n_available:
        raise ValueError(f"size {n} exceeds the {n_available} training patients/files available" if n > n_available
                         else f"size must be at least 1, got {n}")
    return sorted(int(i) for i in np.random.default_rng([int(seed), 5]).permutation(n_available)[:n])


def build_data(real: Sequence[str | Path] = (), acdc: str | Path | None = None,
               synthetic: Sequence[tuple[str | Path, str | Path]] = (), *, mix: float | None = None,
               context: int = 4, target: int = 4, spec: SliceSpec = SliceSpec(), val_fraction: float = 0.1,
               length: int | None = None, seed: int = 0, n_val_synthetic: int = 32, window_stride: int = 1,
               sources: Sequence[SyntheticSource] = (), real_arrays: Sequence[np.ndarray] = (),
               split_seed: int = 0, train_size: int | None = None, **synthetic_options) -> DataBundle:
    """Read the data and build the mixed training set and the validation set.

    Real data (``real`` 4D files, an ``acdc`` folder, or ``real_arrays`` (T, Z, Y, X) from the
    viewer) are split into train/validation by file or ACDC patient (by plane when there is only
    one file) with ``split_seed`` (not ``seed``: the validation set stays the same across seeds).
    ``train_size`` keeps that many training patients/files (a seeded, nested choice,
    :func:`choose_subset`); semi-synthetic series come from ``synthetic`` (image, mask) files,
    ``sources``, and the ED frames of the **kept** training ACDC patients only. ``mix`` defaults
    to 1 without real data, 0 without image/mask pairs and 0.1 (the paper's best) with both.
    Without real data the validation set is ``n_val_synthetic`` held-out semi-synthetic series
    (another seed stream). ``synthetic_options`` go to :class:`SyntheticSequences` (settings,
    kinds, geometry).
    """
    if context < 1 or target < 1:
        raise ValueError("context and target must be at least 1 frame")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    frames = context + target
    groups: list[tuple[str, list[np.ndarray]]] = []
    group_sources: dict[str, SyntheticSource] = {}
    labels = getattr(synthetic_options.get("settings"), "labels", None)
    for path in real:
        data, _ = read_4d(path, frames)
        groups.append((str(path), real_sequences(data, spec, frames, stride=window_stride)))
    for k, data in enumerate(real_arrays):
        data = check_finite(np.asarray(data, np.float32), f"real series {k}")
        if data.ndim != 4 or data.shape[0] < frames:
            raise ValueError(f"real series {k} must be (T, Z, Y, X) with at least {frames} frames, got {data.shape}")
        groups.append((f"array{k}", real_sequences(data, spec, frames, stride=window_stride)))
    if acdc is not None:
        for p in scan_acdc(acdc):
            data, _ = read_4d(p.four_d, frames)
            src = SyntheticSource.from_files(p.ed_image, p.ed_labels)
            if src.image.shape != data.shape[1:]:
                raise ValueError(f"{p.name}: ED frame {src.image.shape} and 4D series {data.shape[1:]} differ in size")
            groups.append((p.name, real_sequences(data, spec, frames, mask=src.selection(labels), stride=window_stride)))
            group_sources[p.name] = src
    groups = [(name, seqs) for name, seqs in groups if seqs]
    if len(groups) == 1 and acdc is None:  # one file: hold out whole planes
        groups = [(f"{groups[0][0]}#plane{i}", [s]) for i, s in enumerate(groups[0][1])]
    train_groups, val_groups = groups, []
    pool = len(groups)
    if groups:
        tr, va = split_groups([n for n, _ in groups], val_fraction, split_seed)
        val_groups = [groups[i] for i in va]
        train_groups = [groups[i] for i in tr]
        pool = len(train_groups)
        if train_size is not None:
            train_groups = [train_groups[i] for i in choose_subset(len(train_groups), int(train_size), seed)]
    elif train_size is not None:
        raise ValueError("a training-set size needs real data (4D files or an ACDC folder)")
    all_sources = list(sources) + [SyntheticSource.from_files(i, m) for i, m in synthetic]
    all_sources += [group_sources[n] for n, _ in train_groups if n in group_sources]
    if mix is None:
        mix = 1.0 if not groups else (0.0 if not all_sources else 0.1)
    syn_all = SyntheticSequences(all_sources, frames, spec, seed=seed, **synthetic_options) if all_sources else None
    syn = syn_all if mix > 0 else None
    real_train = stack_same_size([s for _, seqs in train_groups for s in seqs], "real data") if train_groups else None
    planes = syn_all.source_planes() if syn_all is not None else []
    if planes:
        sizes = {p.shape for p in planes} | ({real_train.shape[-2:]} if real_train is not None else set())
        if len(sizes) > 1:
            raise ValueError(f"sequences of different sizes {sorted(sizes)}; choose a common --crop H W")
    # the normalisation does not depend on the mixing ratio: training data and source planes
    norm = Normalizer.fit(([real_train] if real_train is not None else []) + planes)
    if val_groups:
        val = stack_same_size([s for _, seqs in val_groups for s in seqs], "validation data")
        if real_train is not None and val.shape[-2:] != real_train.shape[-2:]:
            raise ValueError(f"sequences of different sizes {[val.shape[-2:], real_train.shape[-2:]]}; choose a common --crop H W")
    else:
        held_out = SyntheticSequences(all_sources, frames, spec, seed=int(seed) + 1_000_003, **synthetic_options)
        val = np.stack([held_out[i] for i in range(n_val_synthetic)])
    if length is None and real_train is None:
        length = 256
    train = MixedSequences(real_train, syn, mix, norm, length=length, seed=seed)
    info = {"context": context, "target": target, "mix": float(mix), "length": train.length,
            "n_synthetic": train.n_synthetic, "expected_synthetic": train.expected_synthetic,
            "real_train_sequences": 0 if real_train is None else len(real_train),
            "val_sequences": len(val), "val_source": "real" if val_groups else "semi-synthetic",
            "train_groups": [n for n, _ in train_groups], "val_groups": [n for n, _ in val_groups],
            "train_pool": pool, "synthetic_sources": [s.name for s in all_sources] if syn is not None else [],
            "frame_size": list(val.shape[-2:]), "normalizer": norm.to_dict(), "axis": spec.axis,
            "crop": list(spec.crop) if spec.crop else None, "split_seed": int(split_seed), "seed": int(seed)}
    if syn is not None:
        info.update(geometry=syn.geometry, kinds=list(syn.kinds), settings=syn.settings.to_record())
    return DataBundle(train, val, norm, info)
