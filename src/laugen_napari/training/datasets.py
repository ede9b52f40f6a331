"""Datasets of 2D slice sequences for next-frame prediction: real, semi-synthetic and mixed.

A *sequence* is a float array (T, H, W) of one plane over time, T = context + target frames.

- Real: 4D NIfTI files (x, y, z, t — time last, as NIfTI stores them), read in closest-canonical
  orientation and transposed to (T, Z, Y, X); every plane along ``axis`` in the slice range gives
  sliding windows of T frames. ACDC folders (``patientNNN/patientNNN_4d.nii.gz`` with
  ``patientNNN_frameNN.nii.gz`` and ``..._gt.nii.gz``) also give the ED frame and its ground truth.
- Semi-synthetic: LAUGEN series generated on the fly (2D, a plane as a Z = 1 volume) from
  image/mask pairs; per sample the source, plane, kind, trajectory and slope are drawn from
  ``series_seed(seed, index)``, so sample ``index`` is the same in every run with that seed.
- Mixed (the paper's protocol): an epoch of ``length`` samples of which exactly
  ``round(ratio · length)`` are semi-synthetic and the rest real, the real set cycled (repeated)
  as needed, so runs with different ratios see the same number of samples.
- Intensities are normalised with a recorded :class:`Normalizer` (min–max of the training data to
  [0, 1]); metrics are computed after :meth:`Normalizer.invert`, with ``data_range = scale``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core import Augmenter, Trajectory, make_kind, series_seed


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

def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI file as (Z, Y, X) or (T, Z, Y, X) float32 in closest-canonical orientation, and its
    spacing (z, y, x) in mm."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    zooms = img.header.get_zooms()
    if data.ndim == 3:
        data = data.transpose(2, 1, 0)
    elif data.ndim == 4:
        data = data.transpose(3, 2, 1, 0)
    else:
        raise ValueError(f"{path} is {data.ndim}D; expected a 3D volume or a 4D (x, y, z, t) series")
    return check_finite(data, str(path)), (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def read_4d(path: str | Path, frames_needed: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 4D NIfTI as (T, Z, Y, X); a clear error if it is not 4D or has fewer than ``frames_needed``."""
    data, spacing = read_nifti(path)
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

    @classmethod
    def from_files(cls, image: str | Path, mask: str | Path) -> "SyntheticSource":
        img, spacing = read_nifti(image)
        lab, _ = read_nifti(mask)
        if img.ndim != 3:
            raise ValueError(f"{image} must be a 3D volume")
        return cls(img, np.rint(lab).astype(np.int32), spacing, name=str(image))


@dataclass
class SyntheticSequences:
    """Semi-synthetic sequences drawn per index (deterministic in ``seed`` and ``index``).

    ``slope_range`` in mm per frame; ``kinds`` from uniform/directional/gaussian (direction
    in-plane, centre a structure pixel, spread ``spread_mm``); ``sigma_mm`` the field's blur.
    """

    sources: Sequence[SyntheticSource]
    frames: int
    spec: SliceSpec = field(default_factory=SliceSpec)
    kinds: Sequence[str] = ("uniform", "directional", "gaussian")
    trajectories: Sequence[str] = ("linear",)
    slope_range: tuple[float, float] = (-1.0, 1.0)
    sigma_mm: float = 4.0
    spread_mm: tuple[float, float] = (5.0, 15.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("no image/mask pair for the semi-synthetic series")
        self._planes = []
        for s in self.sources:
            planes = self.spec.planes(s.image.shape, s.labels)
            if not planes:
                raise ValueError(f"{s.name or 'source'}: the structure is absent from the chosen planes")
            self._planes.append(planes)
        for name in self.trajectories:
            Trajectory(name, self.slope_range)  # validates early
        for k in self.kinds:
            if k not in ("uniform", "directional", "gaussian"):
                raise ValueError(f"unknown kind {k!r}")

    def source_planes(self) -> list[np.ndarray]:
        """The cropped source planes (for fitting the normalisation)."""
        out = []
        for s, planes in zip(self.sources, self._planes):
            for i in planes:
                img, lab = self.spec.plane(s.image, i), self.spec.plane(s.labels, i)
                out.append(self.spec.cut(img, self.spec.crop_box(img.shape, lab)))
        return out

    def __getitem__(self, index: int) -> np.ndarray:
        """Sequence ``index``: (frames, H, W) float32."""
        rng = series_seed(self.seed, int(index))
        k = int(rng.integers(len(self.sources)))
        src = self.sources[k]
        i = int(rng.choice(self._planes[k]))
        img, lab = self.spec.plane(src.image, i), self.spec.plane(src.labels, i)
        box = self.spec.crop_box(img.shape, lab)
        img, lab = self.spec.cut(img, box), self.spec.cut(lab, box)
        kind_name = str(rng.choice(list(self.kinds)))
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.nonzero(lab)
        pick = int(rng.integers(len(ys))) if len(ys) else 0
        spread = float(rng.uniform(*self.spread_mm))
        traj = Trajectory(str(rng.choice(list(self.trajectories))), self.slope_range)
        sy, sx = self.spec.spacing2d(src.spacing)
        kind = make_kind(kind_name, direction=(0.0, math.sin(angle), math.cos(angle)),
                         center=(0.0, float(ys[pick]) if len(ys) else 0.0, float(xs[pick]) if len(xs) else 0.0),
                         spread_mm=spread)
        try:
            aug = Augmenter(img[None], lab[None].astype(np.int32), spacing=(1.0, sy, sx), sigma_mm=self.sigma_mm,
                            kind=kind, device="cpu")
        except ValueError:  # the structure is absent from the crop or the kind leaves no field
            aug = Augmenter(img[None], lab[None].astype(np.int32), spacing=(1.0, sy, sx), sigma_mm=self.sigma_mm,
                            device="cpu") if np.any(lab) else None
        if aug is None:
            return np.repeat(img[None].astype(np.float32), self.frames, 0)
        return aug.series(traj, frames=self.frames, seed=rng).images[:, 0]


# ---- mixing ----------------------------------------------------------------------------------

class MixedSequences(torch.utils.data.Dataset):
    """An epoch of ``length`` samples, ``round(ratio · length)`` of them semi-synthetic.

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
        self.n_synthetic = int(round(self.ratio * self.length))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle which positions are synthetic and which real sequences fill the rest."""
        rng = np.random.default_rng([self.seed, int(epoch), 7])
        self.epoch = int(epoch)
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


def build_data(real: Sequence[str | Path] = (), acdc: str | Path | None = None,
               synthetic: Sequence[tuple[str | Path, str | Path]] = (), *, mix: float | None = None,
               context: int = 4, target: int = 4, spec: SliceSpec = SliceSpec(), val_fraction: float = 0.1,
               length: int | None = None, seed: int = 0, n_val_synthetic: int = 32, window_stride: int = 1,
               sources: Sequence[SyntheticSource] = (), real_arrays: Sequence[np.ndarray] = (),
               **synthetic_options) -> DataBundle:
    """Read the data and build the mixed training set and the validation set.

    Real data (``real`` 4D files, an ``acdc`` folder, or ``real_arrays`` (T, Z, Y, X) from the
    viewer) are split into train/validation by file or ACDC patient (by plane when there is only
    one file); semi-synthetic series come from ``synthetic`` (image, mask) files, ``sources``, and
    the ED frames of the training ACDC patients. ``mix`` defaults to 1 without real data, 0
    without image/mask pairs and 0.1 (the paper's best) with both. Without real data the
    validation set is ``n_val_synthetic`` held-out semi-synthetic series (another seed stream).
    ``synthetic_options`` go to :class:`SyntheticSequences` (kinds, trajectories, slope_range, ...).
    """
    if context < 1 or target < 1:
        raise ValueError("context and target must be at least 1 frame")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    frames = context + target
    groups: list[tuple[str, list[np.ndarray]]] = []
    group_sources: dict[str, SyntheticSource] = {}
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
            groups.append((p.name, real_sequences(data, spec, frames, mask=src.labels, stride=window_stride)))
            group_sources[p.name] = src
    groups = [(name, seqs) for name, seqs in groups if seqs]
    if len(groups) == 1 and acdc is None:  # one file: hold out whole planes
        groups = [(f"{groups[0][0]}#plane{i}", [s]) for i, s in enumerate(groups[0][1])]
    rng = np.random.default_rng([int(seed), 11])
    train_groups, val_groups = groups, []
    if groups:
        if len(groups) < 2:
            raise ValueError("the real data give a single plane; need at least two planes or files to hold some out")
        order = rng.permutation(len(groups))
        n_val = min(max(1, int(round(val_fraction * len(groups)))), len(groups) - 1)
        val_groups = [groups[i] for i in order[:n_val]]
        train_groups = [groups[i] for i in order[n_val:]]
    all_sources = list(sources) + [SyntheticSource.from_files(i, m) for i, m in synthetic]
    all_sources += [group_sources[n] for n, _ in train_groups if n in group_sources]
    if mix is None:
        mix = 1.0 if not groups else (0.0 if not all_sources else 0.1)
    syn = SyntheticSequences(all_sources, frames, spec, seed=seed, **synthetic_options) if all_sources and mix > 0 else None
    real_train = stack_same_size([s for _, seqs in train_groups for s in seqs], "real data") if train_groups else None
    if syn is not None:
        planes = syn.source_planes()
        sizes = {p.shape for p in planes} | ({real_train.shape[-2:]} if real_train is not None else set())
        if len(sizes) > 1:
            raise ValueError(f"sequences of different sizes {sorted(sizes)}; choose a common --crop H W")
    norm = Normalizer.fit(([real_train] if real_train is not None else []) + (syn.source_planes() if syn else []))
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
            "n_synthetic": train.n_synthetic, "real_train_sequences": 0 if real_train is None else len(real_train),
            "val_sequences": len(val), "val_source": "real" if val_groups else "semi-synthetic",
            "train_groups": [n for n, _ in train_groups], "val_groups": [n for n, _ in val_groups],
            "frame_size": list(val.shape[-2:]), "normalizer": norm.to_dict(), "axis": spec.axis,
            "crop": list(spec.crop) if spec.crop else None}
    return DataBundle(train, val, norm, info)
