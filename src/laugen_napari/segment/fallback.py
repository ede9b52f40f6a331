"""A segmentation backend that needs no weights: seeded region growing that stops at the strongest edge.

Everything is measured in physical units, so the same settings work on 1 mm, 1x1x3 mm and oblique
scans (pass the voxel ``spacing`` in mm, array order).

1. Intensity model: median and robust spread (MAD) of the voxels within ``stats_radius_mm`` of the
   positive clicks.
2. Tolerance sweep: the candidate region at tolerance ``t`` is the connected component of the
   seeds among the voxels whose intensity lies within ``t`` of the median. ``t`` grows in steps
   of 1/``steps`` of the image's robust range.
3. Edge score: for every candidate the mean gradient magnitude (intensity per mm, after a Gaussian
   of ``edge_sigma_mm``) over its boundary shell. A boundary drawn on a real edge sits on steep
   gradients; one that has crossed a weak edge (partial volume, a thin septum, grey matter) runs
   through flat tissue, so its score falls. The sweep stops once the score has fallen below
   ``edge_drop`` times the best seen or the region has grown to ``past_best`` times the best one
   (the strongest edge is behind), on a leak (the region exceeds ``max_fraction`` of the image, or
   jumps by ``leak_ratio`` in one step and still does when that step is walked again in steps of
   1/``refine``: filling a noisy structure from a small first region is gradual, crossing a bridge
   is not), or when it reaches a negative click. The region with the best score wins; holes are
   filled.

The statistics ball keeps its rim when the spacing is off by float rounding (1.00000003 mm from a
rotated affine). Non-finite voxels (NaN, inf) are background: never in the region, in the intensity
model or in the percentiles, and the dark end of the range for the edge map.

Negative clicks that already share the seeds' component at the tightest tolerance split it: only
voxels closer (in mm) to a positive click than to a negative one are kept.
Works on 2D slices and on whole 3D volumes (n-dimensional).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from .prompts import (CancelFn, Prompts, ProgressFn, SlicePrompts, Window, check_cancel, other_axes,
                      take_slice)


@dataclass(frozen=True)
class RegionGrowing:
    """Settings of the region growing (lengths in mm, intensities relative to the image range)."""

    stats_radius_mm: float = 2.0   # the intensity model is learned within this distance of each click
    steps: int = 64                # the robust intensity range is split into this many tolerance steps
    edge_sigma_mm: float = 1.0     # Gaussian smoothing before the gradient (mm)
    edge_drop: float = 0.6         # the sweep stops once the edge score falls below this fraction of the best
    past_best: float = 8.0         # ... or once the region holds this many times the best region's voxels
    leak_ratio: float = 8.0        # region growing by more than this factor in one step = a leak ...
    refine: int = 8                # ... unless it grows gradually over steps this many times finer
    min_leak_base: int = 27        # growth below this many voxels never counts as a leak
    max_fraction: float = 0.25     # a region larger than this fraction of the image is a leak
    crop_margin: int = 8           # voxels around the current region relabelled at each step
    box_margin: float = 0.25       # in 3D a box limits the in-plane extent, widened by this fraction


@dataclass
class GrowthReport:
    """What the region growing learned and chose (intensities in image units, edge scores per mm)."""

    median: float = 0.0
    spread: float = 0.0
    tolerance: float = 0.0
    levels: int = 0
    stop: str = ""
    split_by_negatives: bool = False
    sizes: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    chosen: int = 0


def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(spacing, dtype=float).reshape(-1)
    if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be {ndim} positive voxel sizes in mm, got {tuple(spacing)}")
    return sp


#: relative slack of the ball's edge: voxel sizes off by float rounding (1.0000001 mm read from a
#: float32 header, the column norms of a rotated affine) must not drop the ball's rim
BALL_SLACK = 1e-6


def _ball_offsets(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Integer offsets within ``radius_mm`` (physical distance, relative slack ``BALL_SLACK``) of the origin."""
    reach = np.floor(radius_mm / spacing * (1.0 + BALL_SLACK)).astype(int)
    grid = np.indices(tuple(2 * r + 1 for r in reach)).reshape(len(reach), -1).T - reach
    return grid[((grid * spacing) ** 2).sum(axis=1) <= radius_mm ** 2 * (1.0 + BALL_SLACK) ** 2]


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


class _EdgeMap:
    """Gradient magnitude (intensity per mm) of the smoothed image, computed lazily per region of interest."""

    def __init__(self, img: np.ndarray, spacing: np.ndarray, sigma_mm: float) -> None:
        self.img, self.spacing = img, spacing
        self.sigma = sigma_mm / spacing  # per-axis sigma in voxels
        self.pad = np.ceil(4 * self.sigma).astype(int) + 1
        self.known = np.zeros(img.shape, dtype=bool)
        self.values = np.zeros(img.shape, dtype=np.float32)

    def at(self, where: np.ndarray) -> np.ndarray:
        """Gradient magnitude at the voxels of the bool mask ``where`` (same shape as the image)."""
        need = where & ~self.known
        if need.any():
            pts = np.argwhere(need)
            lo = np.maximum(pts.min(axis=0) - self.pad, 0)
            hi = np.minimum(pts.max(axis=0) + self.pad + 1, self.img.shape)
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            sub = ndi.gaussian_filter(self.img[box], self.sigma, mode="nearest")
            grads = np.gradient(sub, *self.spacing) if min(sub.shape) > 1 else [
                np.gradient(sub, s, axis=a) if n > 1 else np.zeros_like(sub)
                for a, (s, n) in enumerate(zip(self.spacing, sub.shape))]
            mag = np.sqrt(sum(g * g for g in grads)).astype(np.float32)
            fresh = ~self.known[box]
            self.values[box][fresh] = mag[fresh]
            self.known[box] = True
        return self.values[where]


def grow_region(image: np.ndarray, seeds: np.ndarray, negatives: np.ndarray | None = None, *,
                allowed: np.ndarray | None = None, settings: RegionGrowing | None = None,
                fill_axis: int | None = None, cancel: CancelFn | None = None,
                progress: ProgressFn | None = None,
                spacing: Sequence[float] | None = None) -> tuple[np.ndarray, GrowthReport]:
    """Grow a region from integer ``seeds`` (N, ndim) in ``image``; returns (bool mask, report).

    ``spacing`` is the voxel size in mm per array axis (default 1 mm each); ``negatives`` (M, ndim)
    are voxels that must stay outside; ``allowed`` (bool, image shape) limits where the region may
    grow; ``fill_axis`` additionally fills 2D holes slice by slice along that axis.
    """
    cfg = settings or RegionGrowing()
    img = np.asarray(image, dtype=np.float32)
    shape = img.shape
    sp = _spacing(spacing, img.ndim)
    seeds = _clip_points(np.asarray(seeds, dtype=np.int64).reshape(-1, img.ndim), shape)
    negs = np.asarray(negatives if negatives is not None else np.zeros((0, img.ndim)), dtype=np.int64)
    negs = _clip_points(negs.reshape(-1, img.ndim), shape)
    if len(seeds) == 0:
        raise ValueError("region growing needs at least one positive click inside the image")
    report = GrowthReport()

    # non-finite voxels (NaN, inf) are background: never in the region nor in any statistic
    finite = np.isfinite(img)
    all_finite = bool(finite.all())
    if not all_finite:
        seeds = seeds[finite[tuple(seeds.T)]]
        if len(seeds) == 0:
            raise ValueError("every positive click lies on a voxel without a finite intensity (NaN or inf)")
    flat = img.ravel()[:: max(1, img.size // 1_000_000)]
    if not all_finite:
        flat = flat[np.isfinite(flat)]
        flat = flat if flat.size else img[finite]
    lo, hi = np.percentile(flat, [0.5, 99.5])
    step = float(hi - lo) / cfg.steps if hi > lo else 1.0
    if not all_finite:
        img = np.where(finite, img, np.float32(lo))  # the dark end, for the distances and the edge map

    # intensity model from the clicked region (a ball in mm)
    offsets = _ball_offsets(cfg.stats_radius_mm, sp)
    around = _clip_points((seeds[:, None, :] + offsets[None]).reshape(-1, img.ndim), shape)
    usable = finite[tuple(around.T)]
    if allowed is not None:
        usable &= allowed[tuple(around.T)]
    around = around[usable] if usable.any() else seeds
    samples = img[tuple(around.T)]
    median = float(np.median(samples))
    spread = max(1.4826 * float(np.median(np.abs(samples - median))), step)
    report.median, report.spread = median, spread

    distance = np.abs(img - median)
    distance[tuple(seeds.T)] = 0.0  # a clicked voxel belongs to the region, whatever its noise
    blocked = np.zeros(shape, dtype=bool) if allowed is None else ~allowed
    if not all_finite:
        blocked = blocked | ~finite
    max_tol = float(max(distance.max(), spread))
    neg_set = negs[~blocked[tuple(negs.T)]] if len(negs) else negs
    edges = _EdgeMap(img, sp, cfg.edge_sigma_mm)
    shell_structure = ndi.generate_binary_structure(img.ndim, 1)

    def region_at(tol: float, crop: tuple[slice, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
        comp, touches = _component((distance[crop] <= tol) & ~blocked[crop], seeds, crop, shape)
        if touches:  # the crop was too small: label the whole image
            crop = tuple(slice(0, n) for n in shape)
            comp, _ = _component((distance <= tol) & ~blocked, seeds, crop, shape)
        full = np.zeros(shape, dtype=bool)
        full[crop] = comp
        return full, crop

    def edge_score(mask: np.ndarray, crop: tuple[slice, ...]) -> float:
        """Mean gradient magnitude over the region's boundary shell (voxels in and just outside)."""
        box = _crop_around(mask[crop], crop, shape, 2, seeds)
        sub = mask[box]
        shell = ndi.binary_dilation(sub, shell_structure) & ~ndi.binary_erosion(sub, shell_structure,
                                                                                   border_value=1)
        shell &= ~blocked[box]
        if not shell.any():
            return 0.0
        where = np.zeros(shape, dtype=bool)
        where[box] = shell
        return float(edges.at(where).mean())

    def reaches_negative(mask: np.ndarray) -> bool:
        return bool(len(neg_set)) and bool(mask[tuple(neg_set.T)].any())

    whole = tuple(slice(0, n) for n in shape)
    tol = spread
    region, crop = region_at(tol, whole)
    if reaches_negative(region):
        # a negative click shares the seeds' component: keep the positive side of the Voronoi split
        d_pos = ndi.distance_transform_edt(~_point_mask(seeds, shape), sampling=sp)
        d_neg = ndi.distance_transform_edt(~_point_mask(neg_set, shape), sampling=sp)
        blocked = blocked | (d_neg < d_pos)
        report.split_by_negatives = True
        region, crop = region_at(tol, whole)
    best, best_tol, best_score = region, tol, edge_score(region, crop)
    sizes, scores = [int(region.sum())], [best_score]
    best_size = sizes[0]
    report.stop = "tolerance covers the whole intensity range"
    tol0, fine_until, fine_step = tol, tol, step / max(1, int(cfg.refine))
    total = max(1, int(np.ceil((max_tol - tol0) / step)))
    level = 0
    while tol < max_tol:
        check_cancel(cancel)
        level += 1
        if progress is not None:
            progress(min(total, max(1, int(np.ceil((tol - tol0) / step)))), total, "region growing")
        crop = _crop_around(region[crop], crop, shape, cfg.crop_margin, seeds)
        # A leak crosses a bridge: at one tolerance the region suddenly takes in a neighbour. Filling
        # a noisy structure from a small first region is gradual. A step that jumps is walked again
        # in steps of 1/refine; only a jump that remains at that scale counts as a leak.
        fine = tol + fine_step < fine_until - 1e-6 * step
        increment = fine_step if fine else step
        nxt, next_crop = region_at(tol + increment, crop)
        size = int(nxt.sum())
        jump = sizes[-1] >= cfg.min_leak_base and size > cfg.leak_ratio * sizes[-1]
        if jump and not fine and fine_step < step:
            fine_until, increment = tol + step, fine_step
            nxt, next_crop = region_at(tol + increment, crop)
            size = int(nxt.sum())
            jump = size > cfg.leak_ratio * sizes[-1]
        tol, crop = tol + increment, next_crop
        sizes.append(size)
        if reaches_negative(nxt):
            report.stop = "reached a negative click"
            break
        if jump:
            report.stop = f"leak: size jumped {size / max(1, sizes[-2]):.1f}x"
            break
        if size > cfg.max_fraction * img.size:
            report.stop = "region larger than the allowed fraction of the image"
            break
        if size == sizes[-2]:  # nested regions of one size are the same region: nothing new to score
            scores.append(scores[-1])
            continue
        region = nxt
        if best_size >= cfg.min_leak_base and size > cfg.past_best * best_size:
            report.stop = f"region grew to {cfg.past_best:g}x the best one: the strongest edge is behind"
            break
        score = edge_score(region, crop)
        scores.append(score)
        if score > best_score:
            best, best_tol, best_score, best_size, report.chosen = region, tol, score, size, level
        elif score < cfg.edge_drop * best_score:
            report.stop = f"edge score fell to {score / best_score:.2f} of its best: the strongest edge is behind"
            break
    report.tolerance, report.levels, report.sizes, report.scores = best_tol, level, sizes, scores

    best = best.copy()
    if not best.any():
        best = _point_mask(seeds, shape)
    box = _crop_around(best, whole, shape, 1, seeds)
    best[box] = _fill_holes(best[box], fill_axis)
    if allowed is not None:
        best &= allowed
    if not all_finite:
        best &= finite
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

    #: :func:`~laugen_napari.segment.segment` passes the voxel size (mm) to backends that say so.
    uses_spacing = True

    def segment_slice(self, volume: np.ndarray, axis: int, index: int, prompts: SlicePrompts,
                      window: Window | None = None, cancel: CancelFn | None = None,
                      spacing: Sequence[float] | None = None) -> np.ndarray:
        """2D mask on slice ``index`` along ``axis`` from the slice's prompts (``window`` unused).

        ``spacing``: voxel size (z, y, x) of ``volume`` in mm (default 1 mm each).
        """
        if prompts.is_empty:
            raise ValueError(f"no positive click or box on slice {index} along axis {axis}")
        image = take_slice(volume, axis, index)
        seeds = prompts.positive if len(prompts.positive) else _box_centres(prompts.boxes)
        allowed = _box_mask_2d(image.shape, prompts.boxes)
        plane = None if spacing is None else tuple(_spacing(spacing, 3)[list(other_axes(axis))])
        mask, self.last_report = grow_region(image, seeds, prompts.negative, allowed=allowed,
                                             settings=self.settings, cancel=cancel, spacing=plane)
        return mask

    def segment_volume(self, volume: np.ndarray, axis: int, prompts: Prompts, window: Window | None = None,
                       progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                       spacing: Sequence[float] | None = None) -> np.ndarray:
        """3D mask: region growing from all clicks; boxes (drawn along ``axis``) limit the in-plane extent.

        ``spacing``: voxel size (z, y, x) of ``volume`` in mm (default 1 mm each).
        """
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
                                             cancel=cancel, progress=progress, spacing=spacing)
        return mask
