"""A segmentation backend that needs no weights: seeded region growing.

The intensity model is learned from the clicked region (median and robust spread of the voxels
within ``stats_radius`` of the positive clicks). The tolerance around that median is then widened
step by step; the region is the connected component of the seeds among the voxels within the
tolerance. Widening stops just before the region *leaks* (its size jumps by ``leak_ratio`` in one
step, exceeds ``max_fraction`` of the image, or reaches a negative click). Holes are filled.
Negative clicks that already share the seeds' component at the tightest tolerance split it:
only voxels closer to a positive click than to a negative one are kept.
Works on 2D slices and on whole 3D volumes (n-dimensional).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .prompts import (CancelFn, Prompts, ProgressFn, SlicePrompts, Window, check_cancel, other_axes,
                      take_slice)


@dataclass(frozen=True)
class RegionGrowing:
    """Settings of the region growing (sizes in voxels, intensities relative to the image range)."""

    stats_radius: int = 2          # voxels around each click used to learn the intensity model
    steps: int = 64                # the robust intensity range is split into this many tolerance steps
    leak_ratio: float = 8.0        # region growing by more than this factor in one step = a leak
    min_leak_base: int = 27        # growth below this many voxels never counts as a leak
    max_fraction: float = 0.25     # a region larger than this fraction of the image is a leak
    crop_margin: int = 8           # voxels around the current region relabelled at each step
    box_margin: float = 0.25       # in 3D a box limits the in-plane extent, widened by this fraction


@dataclass
class GrowthReport:
    """What the region growing learned and chose (intensities in image units)."""

    median: float = 0.0
    spread: float = 0.0
    tolerance: float = 0.0
    levels: int = 0
    stop: str = ""
    split_by_negatives: bool = False
    sizes: list[int] = field(default_factory=list)


def _ball_offsets(radius: int, ndim: int) -> np.ndarray:
    grid = np.indices((2 * radius + 1,) * ndim).reshape(ndim, -1).T - radius
    return grid[(grid ** 2).sum(axis=1) <= radius * radius]


def _clip_points(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.clip(points, 0, np.asarray(shape) - 1)


def _component(sub: np.ndarray, seeds: np.ndarray, crop: tuple[slice, ...],
               shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """Component of ``seeds`` in ``sub`` (the crop of a bool image); also whether it touches an inner crop edge."""
    labels, _ = ndi.label(sub)
    local = seeds - np.array([s.start for s in crop])
    inside = np.all((local >= 0) & (local < np.array(sub.shape)), axis=1)
    ids = np.unique(labels[tuple(local[inside].T)]) if inside.any() else np.array([0])
    ids = ids[ids > 0]
    comp = np.isin(labels, ids) if ids.size else np.zeros(sub.shape, dtype=bool)
    touches = False
    for ax, s in enumerate(crop):
        edge_lo = np.take(comp, 0, axis=ax).any() and s.start > 0
        edge_hi = np.take(comp, -1, axis=ax).any() and s.stop < shape[ax]
        touches = touches or bool(edge_lo or edge_hi)
    return comp, touches


def _crop_around(mask_crop: np.ndarray, crop: tuple[slice, ...], shape: tuple[int, ...], margin: int,
                 seeds: np.ndarray) -> tuple[slice, ...]:
    pts = np.argwhere(mask_crop) + np.array([s.start for s in crop]) if mask_crop.any() else seeds
    lo = np.minimum(pts.min(axis=0), seeds.min(axis=0)) - margin
    hi = np.maximum(pts.max(axis=0), seeds.max(axis=0)) + margin + 1
    return tuple(slice(int(max(0, a)), int(min(n, b))) for a, b, n in zip(lo, hi, shape))


def grow_region(image: np.ndarray, seeds: np.ndarray, negatives: np.ndarray | None = None, *,
                allowed: np.ndarray | None = None, settings: RegionGrowing | None = None,
                fill_axis: int | None = None, cancel: CancelFn | None = None,
                progress: ProgressFn | None = None) -> tuple[np.ndarray, GrowthReport]:
    """Grow a region from integer ``seeds`` (N, ndim) in ``image``; returns (bool mask, report).

    ``negatives`` (M, ndim) are voxels that must stay outside; ``allowed`` (bool, image shape)
    limits where the region may grow; ``fill_axis`` additionally fills 2D holes slice by slice
    along that axis.
    """
    cfg = settings or RegionGrowing()
    img = np.asarray(image, dtype=np.float32)
    shape = img.shape
    seeds = _clip_points(np.asarray(seeds, dtype=np.int64).reshape(-1, img.ndim), shape)
    negs = np.asarray(negatives if negatives is not None else np.zeros((0, img.ndim)), dtype=np.int64)
    negs = _clip_points(negs.reshape(-1, img.ndim), shape)
    if len(seeds) == 0:
        raise ValueError("region growing needs at least one positive click inside the image")
    report = GrowthReport()

    # intensity model from the clicked region
    offsets = _ball_offsets(cfg.stats_radius, img.ndim)
    around = _clip_points((seeds[:, None, :] + offsets[None]).reshape(-1, img.ndim), shape)
    if allowed is not None:
        around = around[allowed[tuple(around.T)]] if allowed[tuple(around.T)].any() else seeds
    samples = img[tuple(around.T)]
    median = float(np.median(samples))
    flat = img.ravel()[:: max(1, img.size // 1_000_000)]
    lo, hi = np.percentile(flat, [0.5, 99.5])
    step = float(hi - lo) / cfg.steps if hi > lo else 1.0
    spread = max(1.4826 * float(np.median(np.abs(samples - median))), step)
    report.median, report.spread = median, spread

    distance = np.abs(img - median)
    blocked = np.zeros(shape, dtype=bool) if allowed is None else ~allowed
    max_tol = float(max(distance.max(), spread))
    neg_set = negs[~blocked[tuple(negs.T)]] if len(negs) else negs

    def region_at(tol: float, crop: tuple[slice, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
        comp, touches = _component((distance[crop] <= tol) & ~blocked[crop], seeds, crop, shape)
        if touches:  # the crop was too small: label the whole image
            crop = tuple(slice(0, n) for n in shape)
            comp, _ = _component((distance <= tol) & ~blocked, seeds, crop, shape)
        full = np.zeros(shape, dtype=bool)
        full[crop] = comp
        return full, crop

    def reaches_negative(mask: np.ndarray) -> bool:
        return bool(len(neg_set)) and bool(mask[tuple(neg_set.T)].any())

    whole = tuple(slice(0, n) for n in shape)
    tol = spread
    best, crop = region_at(tol, whole)
    if reaches_negative(best):
        # a negative click shares the seeds' component: keep the positive side of the Voronoi split
        d_pos = ndi.distance_transform_edt(~_point_mask(seeds, shape))
        d_neg = ndi.distance_transform_edt(~_point_mask(neg_set, shape))
        blocked = blocked | (d_neg < d_pos)
        report.split_by_negatives = True
        best, crop = region_at(tol, whole)
    sizes = [int(best.sum())]
    report.stop = "tolerance covers the whole intensity range"
    total = max(1, int(np.ceil((max_tol - tol) / step)))
    level = 0
    while tol < max_tol:
        check_cancel(cancel)
        level += 1
        if progress is not None:
            progress(level, total, "region growing")
        nxt_tol = tol + step
        crop = _crop_around(best[crop], crop, shape, cfg.crop_margin, seeds)
        nxt, crop = region_at(nxt_tol, crop)
        size = int(nxt.sum())
        sizes.append(size)
        if reaches_negative(nxt):
            report.stop = "reached a negative click"
            break
        if sizes[-2] >= cfg.min_leak_base and size > cfg.leak_ratio * sizes[-2]:
            report.stop = f"leak: size jumped {size / max(1, sizes[-2]):.1f}x"
            break
        if size > cfg.max_fraction * img.size:
            report.stop = "region larger than the allowed fraction of the image"
            break
        best, tol = nxt, nxt_tol
    report.tolerance, report.levels, report.sizes = tol, level, sizes

    if not best.any():
        best = _point_mask(seeds, shape)
    box = _crop_around(best, whole, shape, 1, seeds)
    best[box] = _fill_holes(best[box], fill_axis)
    if allowed is not None:
        best &= allowed
    if len(neg_set):
        best[tuple(neg_set.T)] = False
        best, _ = _component(best, seeds, whole, shape)
    return best, report


def _fill_holes(mask: np.ndarray, fill_axis: int | None) -> np.ndarray:
    """Fill enclosed holes (n-D), then 2D holes slice by slice along ``fill_axis`` (3D only)."""
    mask = ndi.binary_fill_holes(mask)
    if fill_axis is not None and mask.ndim == 3:
        for i in range(mask.shape[fill_axis]):
            key = [slice(None)] * 3
            key[fill_axis] = i
            mask[tuple(key)] = ndi.binary_fill_holes(mask[tuple(key)])
    return mask


def _point_mask(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    if len(points):
        mask[tuple(points.T)] = True
    return mask


def _box_mask_2d(shape: tuple[int, int], boxes: tuple[np.ndarray, ...], margin: float = 0.0) -> np.ndarray | None:
    if not boxes:
        return None
    mask = np.zeros(shape, dtype=bool)
    for r0, c0, r1, c1 in boxes:
        dr, dc = int(round(margin * (r1 - r0 + 1))), int(round(margin * (c1 - c0 + 1)))
        mask[max(0, r0 - dr): r1 + dr + 1, max(0, c0 - dc): c1 + dc + 1] = True
    return mask


def _box_centres(boxes: tuple[np.ndarray, ...]) -> np.ndarray:
    return np.array([[(b[0] + b[2]) // 2, (b[1] + b[3]) // 2] for b in boxes], dtype=np.int64).reshape(-1, 2)


class RegionGrowingBackend:
    """Weightless backend: seeded region growing on a slice or in 3D (see module docstring)."""

    name = "fallback"

    def __init__(self, settings: RegionGrowing | None = None) -> None:
        self.settings = settings or RegionGrowing()
        self.last_report: GrowthReport | None = None

    def describe(self) -> str:
        """Human-readable name of the backend for the UI."""
        return "Fallback: region growing (no weights)"

    def segment_slice(self, volume: np.ndarray, axis: int, index: int, prompts: SlicePrompts,
                      window: Window | None = None, cancel: CancelFn | None = None) -> np.ndarray:
        """2D mask on slice ``index`` along ``axis`` from the slice's prompts (``window`` unused)."""
        if prompts.is_empty:
            raise ValueError(f"no positive click or box on slice {index} along axis {axis}")
        image = take_slice(volume, axis, index)
        seeds = prompts.positive if len(prompts.positive) else _box_centres(prompts.boxes)
        allowed = _box_mask_2d(image.shape, prompts.boxes)
        mask, self.last_report = grow_region(image, seeds, prompts.negative, allowed=allowed,
                                             settings=self.settings, cancel=cancel)
        return mask

    def segment_volume(self, volume: np.ndarray, axis: int, prompts: Prompts, window: Window | None = None,
                       progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> np.ndarray:
        """3D mask: region growing from all clicks; boxes (drawn along ``axis``) limit the in-plane extent."""
        if prompts.is_empty:
            raise ValueError("no positive click or box to segment from")
        seeds = [prompts.positive]
        allowed = None
        if prompts.boxes:
            prompts.slices(axis)  # validates that boxes are flat along axis
            r_ax, c_ax = other_axes(axis)
            plane = (volume.shape[r_ax], volume.shape[c_ax])
            boxes2d = tuple(prompts.on_slice(axis, int(b[0, axis])).boxes[0] for b in prompts.boxes)
            in_plane = _box_mask_2d(plane, boxes2d, self.settings.box_margin)
            allowed = np.broadcast_to(np.expand_dims(in_plane, axis), volume.shape)
            if len(prompts.positive) == 0:
                for b in prompts.boxes:
                    centre = (b[0] + b[1]) // 2
                    seeds.append(centre[None, :])
        mask, self.last_report = grow_region(volume, np.concatenate(seeds), prompts.negative,
                                             allowed=allowed, settings=self.settings, fill_axis=axis,
                                             cancel=cancel, progress=progress)
        return mask
