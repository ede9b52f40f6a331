"""3D propagation of a 2D promptable segmenter, slice by slice along any axis.

The prompted slices are segmented from the user's prompts. From there each step prompts the next
slice with the previous slice's mask: its bounding box and its centre (the interior point farthest
from the edge) as a positive click. A step's mask is kept within the previous box widened by
``search_margin`` (structures move little between neighbouring slices). Propagation in a direction
stops when the mask vanishes (fewer than ``min_area`` pixels), when it leaves the prompted region
(more than half of it outside the prompted slices' box widened by ``region_margin``), or when it
grows beyond ``max_growth`` times the largest prompted mask. Between two prompted slices both
ends propagate towards each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .prompts import CancelFn, ProgressFn, Prompts, SlicePrompts, check_cancel, mask_box, mask_centre, slice_key

#: ``segment(index, prompts) -> bool mask`` of one slice along the propagation axis.
SliceSegmenter = Callable[[int, SlicePrompts], np.ndarray]


@dataclass(frozen=True)
class PropagationSettings:
    """Stopping rules (fractions of box sizes; areas in pixels)."""

    min_area: int = 4
    region_margin: float = 0.5
    search_margin: float = 0.25
    max_growth: float = 3.0
    max_outside: float = 0.5


@dataclass
class PropagationReport:
    """Which slices were segmented and why each direction stopped."""

    slices: list[int] = field(default_factory=list)
    stops: dict[str, str] = field(default_factory=dict)


def _widen(box: np.ndarray, fraction: float, shape: tuple[int, int], pad: int = 2) -> np.ndarray:
    r0, c0, r1, c1 = box
    dr = int(round(fraction * (r1 - r0 + 1))) + pad
    dc = int(round(fraction * (c1 - c0 + 1))) + pad
    return np.array([max(0, r0 - dr), max(0, c0 - dc), min(shape[0] - 1, r1 + dr), min(shape[1] - 1, c1 + dc)])


def _box_mask(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[box[0]: box[2] + 1, box[1]: box[3] + 1] = True
    return mask


def propagate(shape: Sequence[int], axis: int, seeds: dict[int, np.ndarray], segment: SliceSegmenter, *,
              settings: PropagationSettings | None = None, progress: ProgressFn | None = None,
              cancel: CancelFn | None = None, report: PropagationReport | None = None) -> np.ndarray:
    """Propagate the 2D ``seeds`` masks {slice index: mask} through a volume of ``shape``.

    Returns the bool 3D mask; ``report`` (if given) is filled with the visited slices and stop reasons.
    """
    cfg = settings or PropagationSettings()
    report = report if report is not None else PropagationReport()
    shape = tuple(int(s) for s in shape)
    n = shape[axis]
    plane = tuple(s for a, s in enumerate(shape) if a != axis)
    seeds = {int(i): np.asarray(m, dtype=bool) for i, m in seeds.items() if np.asarray(m).any()}
    if not seeds:
        raise ValueError("the prompted slice(s) gave an empty mask: nothing to propagate")
    out = np.zeros(shape, dtype=bool)
    union = np.zeros(plane, dtype=bool)
    for i, m in seeds.items():
        out[slice_key(axis, i, len(shape))] = m
        union |= m
        report.slices.append(i)
    region = _box_mask(_widen(mask_box(union), cfg.region_margin, plane), plane)
    max_area = cfg.max_growth * max(int(m.sum()) for m in seeds.values())
    order = sorted(seeds)
    # (start, step, stop-before) runs: down from the first, up from the last, both ways inside gaps
    runs: list[tuple[int, int, int]] = [(order[0], -1, -1), (order[-1], +1, n)]
    for a, b in zip(order[:-1], order[1:]):
        if b - a > 1:
            runs += [(a, +1, b), (b, -1, a)]
    total = max(1, n - len(seeds))
    done = 0

    for start, step, end in runs:
        prev = seeds[start]
        idx = start + step
        name = f"{'up' if step > 0 else 'down'} from {start}"
        reason = "reached the end of the volume" if end in (-1, n) else "reached the next prompted slice"
        while idx != end:
            check_cancel(cancel)
            if out[slice_key(axis, idx, len(shape))].any():
                reason = "met the other propagation front"
                break
            box = mask_box(prev)
            prompt = SlicePrompts(positive=mask_centre(prev)[None, :], boxes=(box,))
            mask = np.asarray(segment(idx, prompt), dtype=bool)
            mask &= _box_mask(_widen(box, cfg.search_margin, plane), plane)
            area = int(mask.sum())
            done += 1
            if progress is not None:
                progress(min(done, total), total, f"slice {idx}")
            if area < cfg.min_area:
                reason = f"mask vanished at slice {idx}"
                break
            if (mask & ~region).sum() > cfg.max_outside * area:
                reason = f"mask left the prompted region at slice {idx}"
                break
            if area > max_area:
                reason = f"mask grew beyond {cfg.max_growth:g}x the prompted mask at slice {idx}"
                break
            out[slice_key(axis, idx, len(shape))] = mask
            report.slices.append(idx)
            prev = mask
            idx += step
        report.stops[name] = reason
    if progress is not None:
        progress(total, total, "done")
    report.slices.sort()
    return out


def propagate_from_prompts(shape: Sequence[int], axis: int, prompts: Prompts, segment: SliceSegmenter, *,
                           settings: PropagationSettings | None = None, progress: ProgressFn | None = None,
                           cancel: CancelFn | None = None, report: PropagationReport | None = None) -> np.ndarray:
    """Segment every prompted slice along ``axis`` from its prompts, then :func:`propagate`."""
    prompts.check_inside(shape)
    if prompts.is_empty:
        raise ValueError("no positive click or box to segment from")
    seeds = {}
    for index in prompts.slices(axis):
        check_cancel(cancel)
        seeds[index] = np.asarray(segment(index, prompts.on_slice(axis, index)), dtype=bool)
    return propagate(shape, axis, seeds, segment, settings=settings, progress=progress, cancel=cancel, report=report)
