"""Latent trajectories: the boundary displacement z_t in mm for frames t = 0..T-1.

Frame 0 is always the input itself (z_0 = 0). ``linear`` is the LAUGEN paper's trajectory,
z_t = m * t with the slope m (mm per frame) drawn uniformly from a range with a seed. The other
shapes reach the same end point z_{T-1} = m * (T - 1), so that one slope range controls the
overall amount of change whatever the shape:

- ``sigmoid`` — slow, fast, slow (Alzheimer-like atrophy or enlargement),
- ``exponential`` — accelerating growth,
- ``gompertz`` — fast early growth that saturates (tumour growth),
- ``custom`` — values given by the user (z_0 must be 0).

The drawn parameters are returned with the values, so every series records its ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

TRAJECTORIES = ("linear", "sigmoid", "exponential", "gompertz", "custom")
DEFAULT_RATE = {"sigmoid": 1.0, "exponential": 0.3, "gompertz": 0.5}  # per frame


def _check_frames(frames: int) -> None:
    if int(frames) != frames or frames < 2:
        raise ValueError(f"a series needs at least 2 frames, got {frames}")


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _log_sinh_half(d: np.ndarray) -> np.ndarray:
    """log(sinh(d / 2)) for d >= 0 without overflow (-inf at d = 0)."""
    h = d / 2
    return h + np.log(-np.expm1(-2 * h)) - math.log(2.0)


def _sigmoid_shape(rate: float, frames: int, mid: float) -> np.ndarray:
    """(g_t - g_0) / (g_end - g_0) of g(t) = expit(rate (t - mid)), t = 0..frames-1, in log space.

    With expit(b) - expit(a) = sinh((b - a) / 2) / (2 cosh(a / 2) cosh(b / 2)) the shape is
    sinh(r t / 2) / sinh(r end / 2) * cosh(a_end) / cosh(a_t), a = r (t - mid) / 2, and
    cosh(a_t) / cosh(a_end) = expit(-2 a_end) e^D + expit(2 a_end) e^-D with D = r (end - t) / 2,
    so no term overflows and a midpoint far outside the frames leaves an exponential-like curve.
    """
    t = np.arange(frames, dtype=np.float64)
    end = frames - 1.0
    two_a_end = rate * (end - mid)
    d = rate * (end - t) / 2
    log_ratio = np.logaddexp(-np.logaddexp(0.0, two_a_end) + d, -np.logaddexp(0.0, -two_a_end) - d)
    return np.exp(_log_sinh_half(rate * t) - _log_sinh_half(rate * end) - log_ratio)


@dataclass
class Trajectory:
    """A trajectory shape with a slope range in mm per frame.

    Args:
        name: one of :data:`TRAJECTORIES` except ``custom``.
        slope_range: (low, high) of the mean slope m in mm per frame; m is drawn uniformly.
            A negative slope shrinks the structure.
        rate: steepness of ``sigmoid`` (per frame), growth rate of ``exponential`` and
            ``gompertz`` (per frame; defaults in :data:`DEFAULT_RATE`); ignored by ``linear``.
        midpoint: frame of the steepest change of ``sigmoid`` (default: the middle frame).
    """

    name: str = "linear"
    slope_range: tuple[float, float] = (0.2, 0.6)
    rate: float | None = None
    midpoint: float | None = None

    def __post_init__(self) -> None:
        if self.name not in TRAJECTORIES or self.name == "custom":
            raise ValueError(f"unknown trajectory {self.name!r}; choose one of {', '.join(TRAJECTORIES)}")
        lo, hi = (_finite("slope range", v) for v in self.slope_range)
        if lo > hi:
            raise ValueError(f"slope range must be MIN MAX with MIN <= MAX, got {lo} {hi}")
        self.slope_range = (lo, hi)
        if self.rate is None:
            self.rate = DEFAULT_RATE.get(self.name, 1.0)
        self.rate = _finite("rate", self.rate)
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.midpoint is not None:
            self.midpoint = _finite("midpoint", self.midpoint)

    def shape(self, frames: int) -> np.ndarray:
        """The normalised shape s_t, s_0 = 0 and s_{T-1} = 1, for ``frames`` frames.

        Computed without overflow for any positive rate and any finite midpoint (a steep sigmoid
        is a step, an exponential with a large rate jumps at the last frame, a sigmoid whose
        midpoint lies far before the frames saturates like 1 - e^(-rate t)). Raises a
        ``ValueError`` starting with ``rate:`` when even so the curve cannot be resolved in
        float64 (a rate near the largest float, or subnormal).
        """
        _check_frames(frames)
        t = np.arange(frames, dtype=np.float64)
        end = frames - 1.0
        r = float(self.rate)
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            if self.name == "linear":
                s = t / end
            elif self.name == "sigmoid":
                mid = end / 2 if self.midpoint is None else self.midpoint
                s = _sigmoid_shape(r, frames, mid)
            elif self.name == "exponential":
                # expm1(r t) / expm1(r end), written with exp of non-positive numbers only
                s = np.exp(r * (t - end)) * (np.expm1(-r * t) / np.expm1(-r * end))
            else:  # gompertz exp(-b exp(-c t)), b chosen so that the curve starts near its base:
                # (g_t - g_0) / (g_end - g_0) with g_t - g_0 = exp(-b) expm1(-b expm1(-c t))
                b = 5.0
                s = np.expm1(-b * np.expm1(-r * t)) / np.expm1(-b * np.expm1(-r * end))
        self._check_shape(s, frames)
        s = np.clip(s, 0.0, 1.0)  # rounding of large exponents can leave 1 + 1e-13: the curves are monotone
        s[0], s[-1] = 0.0, 1.0
        return s

    def _check_shape(self, s: np.ndarray, frames: int) -> None:
        """Raise naming the field to change when ``s`` is not a usable normalised shape."""
        ok = (bool(np.all(np.isfinite(s))) and abs(s[-1] - 1.0) < 1e-9 and s[0] == 0.0
              and (self.name == "linear" or self.rate >= np.finfo(np.float64).tiny))  # subnormal: too few digits
        if ok:
            return
        raise ValueError(f"rate: {self.rate:g} per frame is out of range for the {self.name} trajectory over "
                         f"{frames} frames (its curve is flat or not finite in float64)")

    def sample(self, frames: int, rng: np.random.Generator) -> "TrajectoryDraw":
        """Draw the slope with ``rng`` and return the values z_t (mm) with the parameters."""
        lo, hi = self.slope_range
        m = float(rng.uniform(lo, hi)) if hi > lo else lo
        z = m * (frames - 1) * self.shape(frames)
        params = {"slope_range_mm_per_frame": [lo, hi], "slope_mm_per_frame": m}
        if self.name != "linear":
            params["rate_per_frame"] = self.rate
        if self.name == "sigmoid":
            params["midpoint_frame"] = (frames - 1) / 2 if self.midpoint is None else self.midpoint
        return TrajectoryDraw(self.name, z, params)


@dataclass
class CustomTrajectory:
    """A trajectory given as values z_t in mm; z_0 must be 0 (frame 0 is the input)."""

    values: Sequence[float]
    name: str = field(default="custom", init=False)

    def __post_init__(self) -> None:
        vals = np.asarray([_finite("custom value", v) for v in self.values], dtype=np.float64)
        _check_frames(len(vals))
        if vals[0] != 0.0:
            raise ValueError(f"custom values must start with 0 (frame 0 is the input), got {vals[0]}")
        self.values = vals

    def sample(self, frames: int, rng: np.random.Generator | None = None) -> "TrajectoryDraw":
        """The given values; ``frames`` must equal their count."""
        if frames != len(self.values):
            raise ValueError(f"{len(self.values)} custom values given for {frames} frames")
        return TrajectoryDraw("custom", np.array(self.values), {})


@dataclass
class TrajectoryDraw:
    """One drawn trajectory: its name, values z_t (mm, length T) and parameters."""

    name: str
    z_mm: np.ndarray
    params: dict

    def to_json(self) -> dict:
        return {"name": self.name, **self.params}


def make_trajectory(
    name: str,
    slope_range: tuple[float, float] = (0.2, 0.6),
    rate: float | None = None,
    midpoint: float | None = None,
    values: Sequence[float] | None = None,
) -> Trajectory | CustomTrajectory:
    """Build a trajectory by name (see module docstring)."""
    if name == "custom":
        if values is None:
            raise ValueError("trajectory 'custom' needs values (z_t in mm, starting with 0)")
        return CustomTrajectory(values)
    return Trajectory(name, tuple(slope_range), rate, midpoint)
