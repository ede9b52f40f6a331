"""Assertions about a longitudinal model's behaviour on series with known truth.

Each raises :class:`AssertionError` with a message that says what was expected, what was measured
and where it went wrong (frame, z_t, value), so a failing pytest run reads as a diagnosis.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .cases import pearson

__all__ = ["assert_monotone", "assert_correlates", "assert_error_growth", "assert_invariant_where_static"]


def _vec(x, name: str) -> np.ndarray:
    a = np.asarray(x, np.float64).ravel()
    if a.size < 2:
        raise ValueError(f"{name}: need at least two values, got {a.size}")
    if not np.all(np.isfinite(a)):
        raise AssertionError(f"{name} holds non-finite values: {np.round(a, 4).tolist()}")
    return a


def assert_monotone(measure: Sequence[float], z_mm: Sequence[float], *, tolerance: float = 0.0,
                    increasing: bool | None = None, what: str = "measurement", unit: str = "") -> None:
    """The per-frame ``measure`` changes monotonically with z_t.

    Frames are taken in order of z_t. ``increasing`` None: the direction is that of z (a growing
    z gives a growing measure, i.e. the sign of ``z[-1] - z[0]`` in frame order is irrelevant, only
    the order by z counts). A step against the direction by more than ``tolerance`` (in the
    measure's unit) fails.
    """
    m, z = _vec(measure, what), _vec(z_mm, "z_mm")
    if m.size != z.size:
        raise ValueError(f"{what}: {m.size} values for {z.size} frames")
    order = np.argsort(z, kind="stable")
    ms, zs = m[order], z[order]
    sign = 1.0 if increasing in (None, True) else -1.0
    steps = sign * np.diff(ms)
    bad = np.flatnonzero(steps < -float(tolerance))
    if bad.size:
        k = int(bad[0])
        u = f" {unit}" if unit else ""
        direction = "increase" if sign > 0 else "decrease"
        raise AssertionError(
            f"{what} is not monotone in z_t: expected it to {direction} with z, but from z = {zs[k]:.3g} mm "
            f"(frame {int(order[k])}) to z = {zs[k + 1]:.3g} mm (frame {int(order[k + 1])}) it went "
            f"{ms[k]:.4g}{u} -> {ms[k + 1]:.4g}{u} (tolerance {tolerance:g}{u}); "
            f"{bad.size} of {steps.size} steps go the wrong way; values by z: {np.round(ms, 4).tolist()}")


def assert_correlates(measure: Sequence[float], truth: Sequence[float], *, min_r: float = 0.9,
                      what: str = "measurement", truth_name: str = "truth") -> float:
    """Pearson r between a model's ``measure`` and the ``truth`` is at least ``min_r``; returns r.
    A constant measure (no change at all) fails: r is undefined."""
    m, t = _vec(measure, what), _vec(truth, truth_name)
    if m.size != t.size:
        raise ValueError(f"{what}: {m.size} values for {t.size} true values")
    r = pearson(m, t)
    if math.isnan(r):
        flat = what if np.std(m) == 0 else truth_name
        raise AssertionError(f"{what} vs {truth_name}: correlation undefined, {flat} does not change "
                             f"({what}: {np.round(m, 4).tolist()}; {truth_name}: {np.round(t, 4).tolist()})")
    if r < min_r:
        raise AssertionError(f"{what} correlates with the {truth_name} at r = {r:.3f}, below the required "
                             f"{min_r:g} ({what}: {np.round(m, 4).tolist()}; {truth_name}: {np.round(t, 4).tolist()})")
    return r


def assert_error_growth(errors: Sequence[float], *, max_rate: float, relative: bool = False,
                        what: str = "prediction error") -> None:
    """The error at horizon h (h = 1..H frames ahead) grows no faster than ``max_rate`` per frame:
    ``e_h <= e_1 + max_rate · (h − 1)``, or with ``relative`` ``e_h <= e_1 · (1 + max_rate · (h − 1))``."""
    e = _vec(errors, what)
    h = np.arange(e.size, dtype=np.float64)
    limit = e[0] * (1 + max_rate * h) if relative else e[0] + max_rate * h
    bad = np.flatnonzero(e > limit + 1e-12)
    if bad.size:
        k = int(bad[0])
        growth = (e[k] - e[0]) / k
        rule = (f"e_1 * (1 + {max_rate:g} (h - 1))" if relative else f"e_1 + {max_rate:g} (h - 1)")
        raise AssertionError(
            f"{what} grows too fast with the horizon: {e[k]:.4g} at {k + 1} frames ahead exceeds {rule} = "
            f"{limit[k]:.4g} (e_1 = {e[0]:.4g}, growth {growth:.4g} per frame"
            f"{f', {growth / e[0]:.3g} of e_1' if e[0] > 0 else ''}); errors by horizon: {np.round(e, 4).tolist()}")


def assert_invariant_where_static(predicted: np.ndarray, reference: np.ndarray, static: np.ndarray, *,
                                  atol: float, what: str = "prediction") -> None:
    """Where the field is zero (``static``, broadcast over leading axes), ``predicted`` equals
    ``reference`` (e.g. the last context frame) within ``atol`` intensity units."""
    p = np.asarray(predicted, np.float64)
    r = np.broadcast_to(np.asarray(reference, np.float64), p.shape)
    s = np.broadcast_to(np.asarray(static, bool), p.shape)
    if not s.any():
        raise ValueError("the static mask is empty: nothing to check")
    diff = np.where(s, np.abs(p - r), 0.0)
    bad = diff > atol
    if bad.any():
        worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise AssertionError(
            f"{what} changes where the field is zero: {int(bad.sum())} of {int(s.sum())} static values "
            f"({100 * bad.sum() / s.sum():.2f}%) differ by more than {atol:g}; largest change "
            f"{diff[worst]:.4g} at index {tuple(int(i) for i in worst)}; mean change there "
            f"{diff[s].mean():.4g}")
