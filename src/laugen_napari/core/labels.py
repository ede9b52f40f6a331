"""Label maps: their values and counts, the float-to-integer rule, the selection that drives the
field, and a structure's centre. Arrays are (Z, Y, X); label maps hold integers (0 is background)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .field import shared_tensor


def label_counts(labels: np.ndarray) -> dict[int, int]:
    """Voxel count of every value of an integer label map (0 included when present), sorted by value."""
    flat = labels.reshape(-1)
    if not flat.size:
        return {}
    if flat.dtype in (np.uint8, np.int8, np.int16, np.int32, np.int64):
        counts = _sparse_counts(flat)
        if counts is None and (flat.dtype == np.uint8 or (flat.min() >= 0 and flat.max() < 1 << 20)):
            counts = torch.bincount(shared_tensor(np.ascontiguousarray(flat))).numpy()
        if counts is not None:
            values = np.flatnonzero(counts)
            return {int(v): int(counts[v]) for v in values}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _sparse_counts(flat: np.ndarray) -> np.ndarray | None:
    """``bincount`` of a contiguous 1D integer array whose values are all in [0, 2^20), reading as
    values only the 8-byte words that hold a non-zero one (a label map is mostly background: the
    zeros are counted by the word); None when the array does not fit (strided, unaligned, negative
    or large values, or more than a quarter of its words busy: the plain ``bincount`` is faster)."""
    size = flat.dtype.itemsize
    if not flat.flags.c_contiguous or 8 % size or flat.ctypes.data % 8:
        return None
    per = 8 // size
    whole = flat.size // per * per
    words = shared_tensor(flat[:whole].view(np.int64))
    busy = words != 0
    n_busy = int(torch.count_nonzero(busy))
    if n_busy > words.numel() // 4:
        return None
    values = np.concatenate([words[busy].numpy().view(flat.dtype), flat[whole:]])
    if values.size and (values.min() < 0 or values.max() >= 1 << 20):
        return None
    counts = torch.bincount(torch.from_numpy(values), minlength=1).numpy()
    counts[0] += per * (words.numel() - n_busy)
    return counts


LABEL_ROUNDING = 1e-3
"""Float label values this close to a whole number are that number (float32 storage, a scaling
slope); anything farther is not a label (e.g. a map resampled with linear interpolation)."""


def integer_labels(labels: np.ndarray, name: str = "the label map") -> np.ndarray:
    """``labels`` as an integer array: integer maps as they are, float maps whose values are whole
    numbers within :data:`LABEL_ROUNDING` rounded to int32 (int64 for values beyond its range).
    Raises ``ValueError`` (naming ``name``) for NaN/inf, values between labels (with how many
    voxels and what to do) and values beyond 2^53, where a float no longer holds every whole number."""
    if np.issubdtype(labels.dtype, np.integer):
        return labels
    if labels.dtype == np.bool_:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.floating):
        raise ValueError(f"{name} must hold integer values, got dtype {labels.dtype}")
    rounded = np.rint(labels)
    off = ~(np.abs(labels - rounded) <= LABEL_ROUNDING)  # NaN and inf included
    bad = int(np.count_nonzero(off))
    if bad:
        example = labels[off].flat[0]
        raise ValueError(f"{name} must hold integer values: {bad:,} voxels are not whole numbers (e.g. {example:g}); "
                         "resample label maps with nearest-neighbour interpolation, or round them first")
    if not rounded.size:
        return rounded.astype(np.int32)
    low, high = float(rounded.min()), float(rounded.max())
    if max(-low, high) > 2.0**53:
        raise ValueError(f"{name} holds values up to {max(-low, high):g}, beyond 2^53: as floats they are no longer "
                         "exact labels; store label maps as integers")
    fits = np.iinfo(np.int32).min <= low and high <= np.iinfo(np.int32).max
    return rounded.astype(np.int32 if fits else np.int64)


def label_values(labels: np.ndarray) -> list[int]:
    """The sorted non-zero values of an integer label map."""
    return [v for v in label_counts(labels) if v != 0]


def selection_mask(labels: np.ndarray, selected: Sequence[int] | None = None, present: Sequence[int] | None = None) -> np.ndarray:
    """Boolean mask of the voxels whose label is in ``selected`` (all non-zero labels if None).

    ``present`` (the map's non-zero values) may be passed when already known.
    Raises ``ValueError`` for an empty selection or a label absent from the map.
    """
    if selected is None:
        mask = labels != 0
        if not mask.any():
            raise ValueError("the label map is empty: no non-zero voxel to deform")
        return mask
    if any(int(v) == 0 for v in selected):
        raise ValueError("label 0 is background and cannot drive the deformation")
    present = set(label_values(labels) if present is None else present)
    missing = [int(v) for v in selected if int(v) not in present]
    if missing:
        raise ValueError(f"label(s) {missing} not in the label map (present: {sorted(present)})")
    return np.isin(labels, np.asarray(list(selected), dtype=labels.dtype))


def centroid(mask: np.ndarray) -> np.ndarray | None:
    """Mean (z, y, x) voxel index of the True voxels of a 3D bool ``mask``; None when it has none.

    Computed from per-axis voxel counts (no list of voxel indices, whatever the structure's size);
    the same numbers as ``np.argwhere(mask).mean(axis=0)``."""
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (Z, Y, X), got shape {mask.shape}")
    rows = np.count_nonzero(mask, axis=2)  # (Z, Y)
    n = int(rows.sum())
    if n == 0:
        return None
    profiles = (rows.sum(axis=1), rows.sum(axis=0), np.count_nonzero(mask, axis=(0, 1)))
    return np.array([int(np.dot(p.astype(np.int64), np.arange(p.size, dtype=np.int64))) / n for p in profiles])
