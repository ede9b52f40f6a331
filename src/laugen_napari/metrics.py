"""Image, label and mask-set metrics: the one definition used by the CLI, the dock and the tests.

Conventions
-----------
- Intensities are compared on the scale the caller gives (de-normalise first); ``data_range`` is
  the intensity span (max − min possible, e.g. 1.0 for [0, 1], 255 for 8-bit) and is always
  explicit: it sets PSNR's peak and SSIM's constants C1 = (0.01 R)², C2 = (0.03 R)².
- :func:`mse` and :func:`mae` are means **per pixel** (not summed over C·H·W as in OpenSTL);
  RMSE is ``sqrt(mse)`` in intensity units.
- :func:`psnr` and :func:`ssim` equal ``skimage.metrics.peak_signal_noise_ratio`` and
  ``structural_similarity`` for the same ``data_range`` (computed in float64; scikit-image keeps
  float32 inputs in float32, so float32 agrees to ~1e-6). PSNR in dB; +inf for identical images.
- :func:`frame_metrics` evaluates predictions (..., T, H, W) frame by frame (every 2D image) and
  averages the per-frame values — RMSE, MAE, SSIM and PSNR per predicted frame, then the mean.
  PSNR's mean is taken over the frames that differ from their target (an exact frame has an
  infinite PSNR and would make any mean infinite); it is +inf only if every frame is exact.
- :func:`openstl_metrics` gives the same predictions in OpenSTL's conventions, to set results
  beside OpenSTL and the LAUGEN paper: intensities mapped to [0, 1], MSE/MAE **summed** over
  C·H·W per frame and averaged over samples and frames, SSIM/PSNR per frame on [0, 1] after
  clipping the prediction to [0, 1], averaged.
- Dice per label value; JSD/KLD between class distributions of mask sets (see
  :func:`mask_divergences`).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "mse", "rmse", "mae", "psnr", "ssim", "frame_metrics", "dice", "class_distribution",
    "jsd", "kld", "mask_divergences", "FRAME_METRICS", "openstl_metrics", "OPENSTL_METRICS", "mean_psnr",
]

FRAME_METRICS = ("rmse", "mae", "ssim", "psnr")
#: keys of :func:`openstl_metrics`
OPENSTL_METRICS = ("openstl_mse", "openstl_mae", "openstl_ssim", "openstl_psnr")


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("empty images")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("images hold non-finite values (NaN or inf)")
    return a, b


def _range(data_range: float) -> float:
    r = float(data_range)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"data_range must be a positive finite number, got {data_range}")
    return r


def mse(pred, target) -> float:
    """Mean squared error per pixel, in squared intensity units."""
    a, b = _pair(pred, target)
    return float(np.mean((a - b) ** 2))


def rmse(pred, target) -> float:
    """Root mean squared error per pixel, in intensity units."""
    return math.sqrt(mse(pred, target))


def mae(pred, target) -> float:
    """Mean absolute error per pixel, in intensity units."""
    a, b = _pair(pred, target)
    return float(np.mean(np.abs(a - b)))


def psnr(pred, target, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(R² / MSE)``; +inf when the images are equal.
    Same value as ``skimage.metrics.peak_signal_noise_ratio(target, pred, data_range=R)``."""
    r = _range(data_range)
    err = mse(pred, target)
    if err == 0:
        return math.inf
    return float(10.0 * np.log10(r * r / err))


def ssim(pred, target, data_range: float, *, gaussian: bool = False, win_size: int | None = None,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean structural similarity (Wang et al. 2004) of two images of any dimension.

    Defaults are scikit-image's: a 7-wide uniform window with sample covariance; with
    ``gaussian=True`` a Gaussian window of ``sigma`` 1.5 (truncated at 3.5 sigma, width 11) with
    population covariance, which is Wang et al.'s setting. Border strips of half a window are
    excluded from the mean, as in scikit-image. Unitless, in [-1, 1].
    """
    a, b = _pair(pred, target)
    r = _range(data_range)
    truncate = 3.5
    if win_size is None:
        win_size = 2 * int(truncate * sigma + 0.5) + 1 if gaussian else 7
    if win_size % 2 != 1 or win_size < 3:
        raise ValueError(f"the SSIM window size must be odd and >= 3, got {win_size}")
    if any(s < win_size for s in a.shape):
        raise ValueError(f"images of shape {a.shape} are smaller than the SSIM window ({win_size})")
    if gaussian:
        def filt(x):
            return ndimage.gaussian_filter(x, sigma=sigma, truncate=truncate, mode="reflect")
        cov_norm = 1.0
    else:
        def filt(x):
            return ndimage.uniform_filter(x, size=win_size)
        n = win_size ** a.ndim
        cov_norm = n / (n - 1)
    ux, uy = filt(a), filt(b)
    vx = cov_norm * (filt(a * a) - ux * ux)
    vy = cov_norm * (filt(b * b) - uy * uy)
    vxy = cov_norm * (filt(a * b) - ux * uy)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    inner = tuple(slice(pad, n - pad) for n in s.shape)
    return float(s[inner].mean())


def frame_metrics(pred, target, data_range: float, *, gaussian_ssim: bool = False) -> dict[str, float]:
    """RMSE, MAE (intensity units, per pixel), SSIM and PSNR (dB) of every 2D frame, averaged.

    Args:
        pred, target: arrays (..., H, W) — e.g. (N, T, H, W) or (N, T, C, H, W) — on the
            de-normalised intensity scale; every trailing (H, W) image is one frame.
        data_range: intensity span R of the data.
    Returns:
        ``{"rmse", "mae", "ssim", "psnr"}``, each the mean over frames. PSNR is +inf only if every
        frame is predicted exactly.
    """
    a, b = _pair(pred, target)
    if a.ndim < 2:
        raise ValueError("frames must be at least 2D (..., H, W)")
    a = a.reshape((-1,) + a.shape[-2:])
    b = b.reshape((-1,) + b.shape[-2:])
    out = {k: [] for k in FRAME_METRICS}
    for x, y in zip(a, b):
        out["rmse"].append(rmse(x, y))
        out["mae"].append(mae(x, y))
        out["ssim"].append(ssim(x, y, data_range, gaussian=gaussian_ssim))
        out["psnr"].append(psnr(x, y, data_range))
    values = {k: float(np.mean(v)) for k, v in out.items() if k != "psnr"}
    values["psnr"] = mean_psnr(out["psnr"])
    return {k: values[k] for k in FRAME_METRICS}


def mean_psnr(values: Iterable[float]) -> float:
    """Mean of per-frame PSNRs (dB) over the frames with an error; +inf only if every frame is
    exact (each exact frame's +inf would otherwise make the mean infinite)."""
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        raise ValueError("no PSNR values to average")
    finite = v[np.isfinite(v)]
    return float(finite.mean()) if finite.size else math.inf


def openstl_metrics(pred, target, offset: float = 0.0, scale: float = 1.0) -> dict[str, float]:
    """Metrics in OpenSTL's conventions for predictions (N, T, H, W) or (N, T, C, H, W).

    Both arrays are first mapped to [0, 1] by ``(x - offset) / scale`` (the training data's
    min-max normalisation; give the data's own offset and scale). Then:

    - ``openstl_mse`` / ``openstl_mae``: squared / absolute error **summed over C·H·W** of each
      frame, averaged over samples and frames (unclipped prediction);
    - ``openstl_ssim``: SSIM per frame (per channel, averaged) with data range 1, after clipping
      the prediction to [0, 1];
    - ``openstl_psnr``: ``10 log10(1 / MSE_pixel)`` per frame after clipping, averaged as in
      :func:`mean_psnr`.
    """
    a, b = _pair(pred, target)
    s = _range(scale)
    if a.ndim == 4:
        a, b = a[:, :, None], b[:, :, None]
    if a.ndim != 5:
        raise ValueError(f"expected (N, T, H, W) or (N, T, C, H, W) predictions, got shape {a.shape}")
    a = (a - float(offset)) / s
    b = (b - float(offset)) / s
    err = a - b
    out = {"openstl_mse": float(np.mean(np.sum(err ** 2, axis=(2, 3, 4)))),
           "openstl_mae": float(np.mean(np.sum(np.abs(err), axis=(2, 3, 4))))}
    a = np.clip(a, 0.0, 1.0)
    frames_a = a.reshape((-1,) + a.shape[2:])
    frames_b = b.reshape((-1,) + b.shape[2:])
    ssims, psnrs = [], []
    for x, y in zip(frames_a, frames_b):
        ssims.append(float(np.mean([ssim(xc, yc, 1.0) for xc, yc in zip(x, y)])))
        psnrs.append(psnr(x, y, 1.0))
    out["openstl_ssim"] = float(np.mean(ssims))
    out["openstl_psnr"] = mean_psnr(psnrs)
    return out


def dice(pred, target, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice coefficient 2|P∩T| / (|P| + |T|) per label value.

    ``labels`` defaults to every non-zero value present in either map; a label absent from both
    maps gets NaN (undefined rather than a perfect 1).
    """
    p = np.asarray(pred)
    t = np.asarray(target)
    if p.shape != t.shape:
        raise ValueError(f"label maps differ in shape: {p.shape} vs {t.shape}")
    if labels is None:
        labels = sorted(int(v) for v in np.union1d(np.unique(p), np.unique(t)) if v != 0)
    out: dict[int, float] = {}
    for v in labels:
        pm, tm = p == v, t == v
        denom = int(pm.sum()) + int(tm.sum())
        out[int(v)] = float(2 * np.logical_and(pm, tm).sum() / denom) if denom else math.nan
    return out


def class_distribution(masks, n_classes: int, eps: float = 1e-6) -> np.ndarray:
    """Per-image class histograms of label masks, ε-clipped and normalised to sum 1.

    Args:
        masks: (N, ...) integer masks with values in [0, n_classes).
        n_classes: number of classes, background included (2 for background/foreground).
    Returns:
        (N, n_classes) float64 probabilities.
    """
    m = np.asarray(masks)
    if m.ndim < 2:
        raise ValueError("masks must be (N, ...) with one mask per image")
    if not np.issubdtype(m.dtype, np.integer):
        if not np.all(np.isfinite(m)) or np.any(np.mod(m, 1) != 0):
            raise ValueError("masks must hold integer class values")
        m = m.astype(np.int64)
    if m.size and (m.min() < 0 or m.max() >= n_classes):
        raise ValueError(f"mask values must lie in [0, {n_classes}), got [{m.min()}, {m.max()}]")
    flat = m.reshape(len(m), -1)
    hist = np.stack([np.bincount(row, minlength=n_classes) for row in flat]).astype(np.float64)
    hist = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    hist = np.clip(hist, eps, None)
    return hist / hist.sum(1, keepdims=True)


def jsd(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen–Shannon divergence in bits (base 2, in [0, 1]) between two distributions;
    equals ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``."""
    p = np.asarray(p, np.float64) / np.sum(p)
    q = np.asarray(q, np.float64) / np.sum(q)
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m))


def kld(p: Sequence[float], q: Sequence[float]) -> float:
    """Kullback–Leibler divergence KL(p ‖ q) in nats; equals ``scipy.stats.entropy(p, q)``."""
    p = np.asarray(p, np.float64) / np.sum(p)
    q = np.asarray(q, np.float64) / np.sum(q)
    nz = p > 0
    if np.any(q[nz] == 0):
        return math.inf
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def mask_divergences(real, generated, n_classes: int = 2, *, eps: float = 1e-6, pairs: int = 0,
                     seed: int | None = 0) -> dict[str, float]:
    """How far generated masks are from real ones, by their per-image class distributions.

    Returns:
        ``jsd``: :func:`jsd` (bits) between the mean class distribution of the real masks and that
        of the generated masks; ``kld``: KL(real ‖ generated) (nats) of the same means. Both are 0
        for identical sets and positive otherwise. With ``pairs > 0`` also ``kld_paired``: KL of
        ``pairs`` random (real, generated) image pairs, averaged (the protocol of the generator
        papers; not 0 for identical sets unless every mask has the same distribution).
    """
    p = class_distribution(real, n_classes, eps)
    q = class_distribution(generated, n_classes, eps)
    pm, qm = p.mean(0), q.mean(0)
    out = {"jsd": jsd(pm, qm), "kld": kld(pm, qm)}
    if pairs > 0:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, len(p), pairs)
        j = rng.integers(0, len(q), pairs)
        out["kld_paired"] = float(np.mean([kld(p[a], q[b]) for a, b in zip(i, j)]))
    return out
