"""LAUGEN series: one image + segmentation in, a time series with a known trajectory out.

Algorithm 1 of the LAUGEN paper: for each frame t, the image is deformed by the augmentation
with magnitude z_t of the latent trajectory. Here the field is computed once per (labels, kind,
sigma); every frame only rescales it.

Example::

    from laugen_napari.core import Augmenter, Trajectory
    aug = Augmenter(image, labels, spacing=(1, 1, 1), sigma_mm=4.0)
    series = aug.series(Trajectory("linear", (0.2, 0.6)), frames=8, seed=0)
    series.images.shape  # (8, Z, Y, X)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .device import resolve_device
from .field import Kind, Uniform, UnitField, unit_field
from .labels import integer_labels, label_counts, selection_mask
from .quality import JacobianStats
from .trajectory import CustomTrajectory, Trajectory, TrajectoryDraw
from .warp import Warper, all_finite, fits_float32, torch_compatible


@dataclass
class Series:
    """A generated series and its ground truth.

    Attributes:
        images: (T, Z, Y, X) or (T, C, Z, Y, X) float32 frames; frame 0 is the input.
        labels: (T, Z, Y, X) label maps, the input's dtype.
        trajectory: the drawn trajectory (name, z_mm, parameters).
        volumes_ml: label value -> volume in mL per frame.
        jacobian_min: lowest Jacobian determinant of the warp per frame.
        folded_fraction: fraction of voxels with determinant <= 0 per frame.
    """

    images: np.ndarray
    labels: np.ndarray
    trajectory: TrajectoryDraw
    volumes_ml: dict[int, list[float]]
    jacobian_min: list[float]
    folded_fraction: list[float]
    info: dict = field(default_factory=dict)

    @property
    def z_mm(self) -> np.ndarray:
        """Boundary displacement per frame in mm (the ground-truth latent)."""
        return self.trajectory.z_mm

    @property
    def frames(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Frame:
    """One frame of a series, as streamed by :meth:`Augmenter.iter_frames`.

    Attributes:
        t: frame index (0 is the input).
        z_mm: boundary displacement of this frame in mm.
        image: (Z, Y, X) or (C, Z, Y, X) float32, owned by the caller: the engine writes into its
            memory again only after the caller has dropped it and every view of it.
        labels: (Z, Y, X) label map in the input's dtype, owned by the caller (as ``image``).
        volumes_ml: label value -> volume in mL in this frame.
        jacobian_min: lowest Jacobian determinant of this frame's warp.
        folded_fraction: fraction of voxels with determinant <= 0.
    """

    t: int
    z_mm: float
    image: np.ndarray
    labels: np.ndarray
    volumes_ml: dict[int, float]
    jacobian_min: float
    folded_fraction: float


def _validate_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive finite numbers in mm, got {list(spacing)}")
    return sp


class Augmenter:
    """The LAUGEN engine for one image and segmentation.

    Args:
        image: (Z, Y, X) or (C, Z, Y, X) image; any real dtype (computed in float32).
        labels: (Z, Y, X) integer label map of the same spatial shape.
        spacing: voxel size (z, y, x) in mm.
        selected: labels that drive the deformation (default: every non-zero label).
        sigma_mm: Gaussian blur of the mask in mm (reach of the deformation, about 4 sigma).
        kind: :class:`~laugen_napari.core.field.Uniform`, ``Directional`` or ``Gaussian``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        label_interpolation: ``"linear"`` (one-hot linear + argmax) or ``"nearest"``.
    """

    def __init__(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        spacing: Sequence[float],
        selected: Sequence[int] | None = None,
        sigma_mm: float = 5.0,
        kind: Kind | None = None,
        device: str | torch.device | None = "auto",
        label_interpolation: str = "linear",
    ):
        image = torch_compatible(np.asarray(image))
        labels = torch_compatible(np.asarray(labels))
        if labels.ndim != 3:
            raise ValueError(f"the label map must be 3D (Z, Y, X), got shape {labels.shape}")
        if image.ndim not in (3, 4) or image.shape[-3:] != labels.shape:
            raise ValueError(f"image shape {image.shape} does not match the label map's {labels.shape}")
        labels = integer_labels(labels)
        if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
            raise ValueError(f"the image must hold real numbers, got dtype {image.dtype}")
        finite = not np.issubdtype(image.dtype, np.floating) or all_finite(image)
        if not fits_float32(image):
            raise ValueError(f"the image holds values beyond float32's range (|x| > {np.finfo(np.float32).max:.3g}); "
                             "frames are float32: rescale the image first")
        self.spacing = _validate_spacing(spacing)
        self.sigma_mm = float(sigma_mm)
        self.kind = kind or Uniform()
        self.device = resolve_device(device)
        work = labels.astype(_TORCH_FRIENDLY.get(labels.dtype.type, labels.dtype), copy=False)
        counts = label_counts(work)
        self.label_values = [v for v in counts if v != 0]
        self.selected = list(self.label_values) if selected is None else [int(v) for v in selected]
        mask = selection_mask(labels, selected, present=self.label_values)
        self.field: UnitField = self.kind.apply(unit_field(mask, self.spacing, self.sigma_mm, self.device))
        del mask
        self.warper = Warper(self.field, image, work, label_interpolation, finite=finite)
        self.jacobian = JacobianStats(self.field)
        self.labels_dtype = labels.dtype
        self._work_dtype = work.dtype
        self._label_counts = {v: counts.get(v, 0) for v in self.label_values}

    @property
    def info(self) -> dict:
        """What this engine is, as recorded with every series: kind and its parameters, sigma in mm,
        driving labels, device and the number of voxels the field moves."""
        return {
            "kind": self.kind.name,
            "kind_params": self.kind.params(),
            "sigma_mm": self.sigma_mm,
            "labels": self.selected,
            "device": str(self.device),
            "moving_voxels": self.warper.n_moving,
        }

    def series(
        self,
        trajectory: Trajectory | CustomTrajectory,
        frames: int = 8,
        seed: int | np.random.Generator | None = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Series:
        """Generate ``frames`` frames along ``trajectory`` (slope drawn with ``seed``, an int or a
        numpy Generator). ``progress(done, total)`` is called after every frame.
        """
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        draw = trajectory.sample(frames, rng)
        return self.series_from_values(draw, progress=progress)

    def _frame_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        w = self.warper
        image_shape = tuple(w.image.shape[1:]) if w.single_channel else tuple(w.image.shape)
        return image_shape, tuple(self.field.shape)

    def _frames(
        self,
        draw: TrajectoryDraw,
        buffers: Callable[[int], tuple[np.ndarray, np.ndarray]],
        progress: Callable[[int, int], None] | None,
    ) -> Iterator[Frame]:
        """Frames of ``draw``, each written into the host arrays ``buffers(t)`` returns
        (image float32, labels in the working dtype)."""
        z = np.asarray(draw.z_mm, dtype=np.float64)
        if z.ndim != 1 or not np.all(np.isfinite(z)):
            raise ValueError("trajectory values must be finite (one value per frame)")
        frames = len(z)
        on_cpu = self.device.type == "cpu"
        counter = _LabelCounter(self.warper, self.spacing, self._label_counts)
        if frames:
            self.warper.prepare(float(np.abs(z).max()))
        dev_img = dev_lab = None
        for t, zt in enumerate(z):
            img_np, lab_np = buffers(t)
            if on_cpu:
                moving = self.warper.warp(float(zt), torch.from_numpy(img_np), torch.from_numpy(lab_np))[2]
            else:  # one device buffer per series, copied to the host arrays
                if dev_img is None:
                    dev_img = torch.empty(self.warper.image.shape, dtype=torch.float32, device=self.device)
                    dev_lab = torch.empty_like(self.warper.labels)
                img, lab, moving = self.warper.warp(float(zt), dev_img, dev_lab)
                torch.from_numpy(img_np).copy_(img.reshape(img_np.shape))
                torch.from_numpy(lab_np).copy_(lab)
            volumes = counter.volumes_ml(moving)
            low, fold = self.jacobian.summary(zt)
            del moving
            yield Frame(t, float(zt), img_np, lab_np, volumes, low, fold)
            del img_np, lab_np  # so that buffers(t + 1) may find them free
            if progress is not None:
                progress(t + 1, frames)

    def iter_frames(self, draw: TrajectoryDraw, progress: Callable[[int, int], None] | None = None) -> Iterator[Frame]:
        """Stream the frames of an already drawn trajectory, one :class:`Frame` at a time.

        A frame's arrays belong to the consumer for as long as it holds them (or any view of
        them): a consumer may keep every frame. The memory of a frame the consumer has dropped is
        reused for a later frame (no fresh memory to fault in per frame), so a consumer that
        writes a frame and drops it keeps memory flat in the number of frames. ``progress(done,
        total)`` is called after the consumer has taken each frame.
        """
        image_shape, label_shape = self._frame_shapes()
        cast = np.dtype(self._work_dtype) != np.dtype(self.labels_dtype)
        pool = _FramePool(image_shape, label_shape, self._work_dtype)
        for frame in self._frames(draw, pool.take, progress):
            if cast:
                frame.labels = frame.labels.astype(self.labels_dtype)
            yield frame
            del frame  # dropped by the consumer too, its arrays can be reused

    def series_from_values(self, draw: TrajectoryDraw, progress: Callable[[int, int], None] | None = None) -> Series:
        """Generate the frames for an already drawn trajectory, all held in memory."""
        z = np.asarray(draw.z_mm, dtype=np.float64)
        if z.ndim != 1 or not np.all(np.isfinite(z)):
            raise ValueError("trajectory values must be finite")
        frames = len(z)
        image_shape, label_shape = self._frame_shapes()
        images = np.empty((frames,) + image_shape, np.float32)
        labels = np.empty((frames,) + label_shape, self._work_dtype)
        volumes: dict[int, list[float]] = {v: [] for v in self.label_values}
        jac_min, folded = [], []
        for frame in self._frames(draw, lambda t: (images[t], labels[t]), progress):
            for v, ml in frame.volumes_ml.items():
                volumes[v].append(ml)
            jac_min.append(frame.jacobian_min)
            folded.append(frame.folded_fraction)
        return Series(
            images=images,
            labels=labels.astype(self.labels_dtype, copy=False),
            trajectory=draw,
            volumes_ml=volumes,
            jacobian_min=jac_min,
            folded_fraction=folded,
            info=self.info,
        )


def _idle_refcount() -> int:
    """The reference count that :meth:`_FramePool.take` sees on an array nobody else holds (the
    same construct: a pair in a list, unpacked by a for loop)."""
    owned = [(np.empty(1), np.empty(1))]
    for a, _ in owned:
        return sys.getrefcount(a)
    raise AssertionError


class _FramePool:
    """Host arrays for streamed frames, handed out as views.

    Every view (and every view of a view) holds a reference to the array it was cut from, so an
    array whose reference count is back to :func:`_idle_refcount` is held by nobody but the pool:
    its memory can take the next frame. Reusing warm memory saves the first touch of two fresh
    volumes per frame (page faults, zeroing), the largest cost after the copy itself. At most
    ``keep`` pairs are kept; when all are held a new pair is made and the oldest left to its holder.
    """

    IDLE = _idle_refcount()

    def __init__(self, image_shape: tuple[int, ...], label_shape: tuple[int, ...], label_dtype, keep: int = 2):
        self.image_shape, self.label_shape, self.label_dtype = image_shape, label_shape, np.dtype(label_dtype)
        self.keep = keep
        self._owned: list[tuple[np.ndarray, np.ndarray]] = []

    def take(self, t: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(image float32, labels) arrays for the next frame, as new views nobody else holds."""
        for img, lab in self._owned:
            if sys.getrefcount(img) == self.IDLE and sys.getrefcount(lab) == self.IDLE:
                return img[...], lab[...]
        pair = (np.empty(self.image_shape, np.float32), np.empty(self.label_shape, self.label_dtype))
        self._owned.append(pair)
        if len(self._owned) > self.keep:
            del self._owned[0]
        return pair[0][...], pair[1][...]


# unsigned types torch cannot scatter into, computed in a wider signed type and cast back
_TORCH_FRIENDLY = {np.uint16: np.int32, np.uint32: np.int64, np.uint64: np.int64}


class _LabelCounter:
    """Label volumes per frame from the moving voxels only: the rest of the map never changes."""

    def __init__(self, warper: Warper, spacing: Sequence[float], full_counts: dict[int, int]):
        self.values = list(full_counts)
        self.voxel_ml = float(np.prod(spacing)) / 1000.0
        full = np.array([full_counts[v] for v in self.values], dtype=np.int64)
        self.base = full - self._count(warper.moving_values(warper.labels))

    def _count(self, moving: torch.Tensor) -> np.ndarray:
        if not self.values:
            return np.zeros(0, np.int64)
        lo, hi = min(self.values), max(self.values)
        if moving.device.type == "cpu" and len(self.values) <= 8:  # numpy's == and count: 10x torch's bincount
            m = moving.numpy()
            return np.array([np.count_nonzero(m == v) for v in self.values], dtype=np.int64)
        if moving.numel() and lo >= 0 and hi < 1 << 16:
            lab = moving if moving.dtype == torch.uint8 else moving.clamp(0, hi + 1).long()
            counts = torch.bincount(lab, minlength=hi + 1).cpu().numpy()
            return counts[np.asarray(self.values)].astype(np.int64)
        return np.array([int(torch.count_nonzero(moving == v)) for v in self.values], dtype=np.int64)

    def volumes_ml(self, moving: torch.Tensor) -> dict[int, float]:
        """Volumes (mL) of a frame whose labels at the moving voxels are ``moving`` (P,)."""
        counts = self.base + self._count(moving)
        return {v: float(c) * self.voxel_ml for v, c in zip(self.values, counts)}


def series_seed(seed: int | None, index: int) -> np.random.Generator:
    """The random generator of series ``index`` of a run with ``seed`` (independent streams)."""
    return np.random.default_rng(None if seed is None else [int(seed), int(index)])


def generate_series(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    trajectory: Trajectory | CustomTrajectory | None = None,
    frames: int = 8,
    seed: int | None = 0,
    **engine_options,
) -> Series:
    """One LAUGEN series in one call; ``engine_options`` go to :class:`Augmenter`."""
    aug = Augmenter(image, labels, spacing, **engine_options)
    return aug.series(trajectory or Trajectory(), frames=frames, seed=seed)
