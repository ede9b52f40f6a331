"""Prompts (clicks and boxes), slicing helpers and intensity windowing shared by every backend.

Conventions: volumes are (Z, Y, X) arrays; prompt coordinates are integer array indices in the
same order. A 2D slice ``take_slice(volume, axis, index)`` keeps the two other axes in their
order, so a slice point is (row, col) = the two remaining indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

#: ``progress(done, total, message)`` — called by long runs after each unit of work.
ProgressFn = Callable[[int, int, str], None]
#: ``cancel()`` — polled by long runs; returning True stops them with :class:`SegmentationCancelled`.
CancelFn = Callable[[], bool]
#: Intensity window (low, high) in the image's own units, mapped to 0..255.
Window = tuple[float, float]


class SegmentationCancelled(RuntimeError):
    """Raised inside a run when its ``cancel()`` callback returned True."""


def check_cancel(cancel: CancelFn | None) -> None:
    """Raise :class:`SegmentationCancelled` when ``cancel`` says so."""
    if cancel is not None and cancel():
        raise SegmentationCancelled("segmentation cancelled")


def other_axes(axis: int, ndim: int = 3) -> tuple[int, int]:
    """The two in-plane axes of a slice taken along ``axis``, in array order."""
    axes = tuple(a for a in range(ndim) if a != axis)
    return axes[0], axes[1]


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` of ``volume`` along ``axis`` (a view, rows/cols = remaining axes)."""
    return np.take(volume, int(index), axis=int(axis))


def slice_key(axis: int, index: int, ndim: int = 3) -> tuple:
    """Index tuple selecting slice ``index`` along ``axis`` of an ``ndim`` array."""
    key: list = [slice(None)] * ndim
    key[axis] = int(index)
    return tuple(key)


def default_window(volume: np.ndarray) -> Window:
    """A robust intensity window: the 0.5th and 99.5th percentiles (image units) of the finite voxels
    (NaN and inf are left out; an image without a finite voxel gets (0, 1))."""
    flat = np.asarray(volume).ravel()
    step = max(1, flat.size // 1_000_000)
    sub = flat[::step]
    if not np.isfinite(sub).all():
        sub = sub[np.isfinite(sub)]
    if sub.size == 0 or not np.isfinite(flat).all():
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            return 0.0, 1.0
        sub = sub if sub.size else flat
    lo, hi = np.percentile(sub, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
        if hi <= lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def normalise_window(window: Sequence[float] | None, volume: np.ndarray) -> Window:
    """Validate ``window`` (low < high, image units) or derive it with :func:`default_window`."""
    if window is None:
        return default_window(volume)
    lo, hi = (float(v) for v in window)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        raise ValueError(f"intensity window must be two finite numbers low < high, got {window!r}")
    return round(lo, 6), round(hi, 6)


def window_to_uint8(image: np.ndarray, window: Window) -> np.ndarray:
    """Map intensities linearly so that window low → 0 and high → 255, clipped, as uint8; a
    non-finite voxel (NaN, ±inf) has no intensity and maps to the window's low end (0)."""
    lo, hi = window
    image = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        image = np.where(finite, image, np.float32(lo))
    scaled = (image - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _as_points(points: object, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(points if points is not None else [], dtype=float)
    if arr.size == 0:
        return np.zeros((0, ndim), dtype=np.int64)
    arr = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr.reshape(1, -1)
    if arr.shape[1] != ndim:
        raise ValueError(f"{what} must have {ndim} coordinates each, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain non-finite coordinates")
    return np.rint(arr).astype(np.int64)


@dataclass(frozen=True)
class SlicePrompts:
    """Prompts on one 2D slice: (row, col) points and an optional box (r0, c0, r1, c1), inclusive."""

    positive: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    negative: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    boxes: tuple[np.ndarray, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when there is neither a positive point nor a box."""
        return len(self.positive) == 0 and len(self.boxes) == 0


@dataclass(frozen=True)
class Prompts:
    """Positive/negative clicks and boxes as integer array indices of a volume.

    ``boxes`` holds (2, ndim) arrays [lo, hi] of inclusive corners; a box lies on one slice, so
    one of its axes has lo == hi.
    """

    positive: np.ndarray
    negative: np.ndarray
    boxes: tuple[np.ndarray, ...] = ()

    @classmethod
    def create(cls, positive: object = (), negative: object = (), boxes: Sequence[object] = (),
               ndim: int = 3) -> "Prompts":
        """Build prompts from sequences of coordinates (rounded to the nearest voxel)."""
        pos = _as_points(positive, ndim, "positive points")
        neg = _as_points(negative, ndim, "negative points")
        out_boxes = []
        for box in boxes:
            corners = _as_points(box, ndim, "box corners")
            if len(corners) != 2:
                raise ValueError(f"a box needs two corners, got {len(corners)}")
            out_boxes.append(np.stack([corners.min(axis=0), corners.max(axis=0)]))
        return cls(pos, neg, tuple(out_boxes))

    @property
    def ndim(self) -> int:
        """Number of coordinates of each prompt."""
        return self.positive.shape[1]

    @property
    def is_empty(self) -> bool:
        """True when there is neither a positive point nor a box."""
        return len(self.positive) == 0 and len(self.boxes) == 0

    def check_inside(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` naming the first prompt that lies outside an array of ``shape``."""
        shape_arr = np.asarray(shape)
        named = [("positive point", p) for p in self.positive] + [("negative point", p) for p in self.negative]
        named += [("box corner", c) for b in self.boxes for c in b]
        for what, p in named:
            if np.any(p < 0) or np.any(p >= shape_arr):
                raise ValueError(
                    f"{what} {tuple(int(v) for v in p)} lies outside the image of shape {tuple(int(s) for s in shape)}"
                )

    def flat_axes(self) -> set[int]:
        """Axes along which every box is flat (candidate slice axes for the boxes)."""
        axes = set(range(self.ndim))
        for box in self.boxes:
            axes &= {a for a in range(self.ndim) if box[0, a] == box[1, a]}
        return axes

    def slices(self, axis: int) -> list[int]:
        """Sorted slice indices along ``axis`` that hold a positive point or a box."""
        found = {int(p[axis]) for p in self.positive}
        for box in self.boxes:
            if box[0, axis] != box[1, axis]:
                raise ValueError(f"box {box.tolist()} is not drawn on a single slice along axis {axis}")
            found.add(int(box[0, axis]))
        return sorted(found)

    def on_slice(self, axis: int, index: int) -> SlicePrompts:
        """The prompts lying on slice ``index`` along ``axis``, as 2D (row, col) coordinates."""
        keep = list(other_axes(axis, self.ndim))
        pos = self.positive[self.positive[:, axis] == index][:, keep]
        neg = self.negative[self.negative[:, axis] == index][:, keep]
        boxes = tuple(
            np.array([b[0, keep[0]], b[0, keep[1]], b[1, keep[0]], b[1, keep[1]]], dtype=np.int64)
            for b in self.boxes if b[0, axis] == index and b[1, axis] == index
        )
        return SlicePrompts(pos, neg, boxes)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Inclusive bounding box (r0, c0, r1, c1) of a 2D mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([rows[0], cols[0], rows[-1], cols[-1]], dtype=np.int64)


def mask_centre(mask: np.ndarray) -> np.ndarray:
    """The interior point of a non-empty 2D mask farthest from its edge, as (row, col)."""
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(dist)), mask.shape), dtype=np.int64)
