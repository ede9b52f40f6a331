"""The headless segmentation API: one interface whichever backend runs.

A backend has ``describe()``, ``segment_slice(volume, axis, index, slice_prompts, window)`` → 2D
bool mask and ``segment_volume(volume, axis, prompts, window, progress, cancel)`` → 3D bool mask.
:func:`get_backend` gives SAM when a checkpoint is named, else the weightless region growing.
A backend whose ``uses_spacing`` is true also receives ``spacing=`` (voxel size in mm, array order).
"""

from __future__ import annotations

import os
from typing import Any, Protocol, Sequence

import numpy as np

from .fallback import RegionGrowingBackend
from .prompts import CancelFn, ProgressFn, Prompts, SlicePrompts, Window, normalise_window, slice_key


class Backend(Protocol):
    """What the dock and the CLI need from a segmentation backend."""

    name: str

    def describe(self) -> str: ...

    def segment_slice(self, volume: np.ndarray, axis: int, index: int, prompts: SlicePrompts,
                      window: Window | None = None, cancel: CancelFn | None = None) -> np.ndarray: ...

    def segment_volume(self, volume: np.ndarray, axis: int, prompts: Prompts, window: Window | None = None,
                       progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> np.ndarray: ...


def get_backend(checkpoint: str | os.PathLike | None = None, model_type: str = "vit_b",
                device: str | None = "auto") -> Backend:
    """SAM loaded from ``checkpoint`` as ``model_type`` when a checkpoint is given, else the fallback."""
    if checkpoint is None or str(checkpoint) == "":
        return RegionGrowingBackend()
    from .sam import SamBackend

    return SamBackend.from_checkpoint(checkpoint, model_type, device)


def choose_axis(prompts: Prompts, default: int = 0) -> int:
    """The slice axis for prompts: the axis every box is flat along (``default`` if it qualifies)."""
    if not prompts.boxes:
        return default
    flat = prompts.flat_axes()
    if not flat:
        raise ValueError("the boxes are not all drawn on slices along one axis")
    return default if default in flat else min(flat)


def check_no_conflict(prompts: Prompts) -> None:
    """Raise ``ValueError`` when one voxel is both a positive and a negative click (array indices)."""
    negative = {tuple(int(v) for v in p) for p in prompts.negative}
    for p in prompts.positive:
        if tuple(int(v) for v in p) in negative:
            raise ValueError(f"voxel {tuple(int(v) for v in p)} is both a positive and a negative click; "
                             "remove one of them")


def segment(volume: np.ndarray, prompts: Prompts, backend: Backend | None = None, *, axis: int = 0,
            index: int | None = None, window: Window | None = None, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Segment ``volume`` (Z, Y, X) from ``prompts`` (array indices); returns a bool mask of its shape.

    With ``index`` only slice ``index`` along ``axis`` is segmented (the rest stays False);
    otherwise the whole volume (3D region growing, or SAM propagation along ``axis``).
    ``spacing`` is the voxel size (z, y, x) in mm; give it for anisotropic scans (default 1 mm each).
    Clicks outside the volume raise ``ValueError``.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"segmentation needs a 3D (Z, Y, X) volume, got {volume.ndim} dimensions")
    if not 0 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    prompts.check_inside(volume.shape)
    if prompts.is_empty:
        raise ValueError("give at least one positive click or a box")
    check_no_conflict(prompts)
    backend = backend if backend is not None else RegionGrowingBackend()
    win = normalise_window(window, volume)
    extra = {}
    if spacing is not None:
        sp = np.asarray(spacing, dtype=float).reshape(-1)
        if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ValueError(f"spacing must be three positive voxel sizes (z, y, x) in mm, got {tuple(spacing)}")
        if getattr(backend, "uses_spacing", False):
            extra["spacing"] = tuple(float(v) for v in sp)
    if index is None:
        mask = np.asarray(backend.segment_volume(volume, axis, prompts, win, progress, cancel, **extra), dtype=bool)
        _check_shape(backend, mask, volume.shape)
        return mask
    if not 0 <= index < volume.shape[axis]:
        raise ValueError(f"slice {index} lies outside the {volume.shape[axis]} slices along axis {axis}")
    out = np.zeros(volume.shape, dtype=bool)
    plane = np.asarray(backend.segment_slice(volume, axis, index, prompts.on_slice(axis, index), win, cancel, **extra),
                       dtype=bool)
    _check_shape(backend, plane, out[slice_key(axis, index)].shape)
    out[slice_key(axis, index)] = plane
    if progress is not None:
        progress(1, 1, "done")
    return out


def _check_shape(backend: Any, mask: np.ndarray, shape: tuple[int, ...]) -> None:
    """A backend's mask must have the shape asked for: a wrong one would paint in the wrong place."""
    if mask.shape != tuple(shape):
        name = getattr(backend, "name", type(backend).__name__)
        raise ValueError(f"the {name} backend returned a mask of shape {mask.shape}, expected {tuple(shape)}")
