"""metrics.py against scikit-image and scipy, on random and real image pairs."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from laugen_napari import metrics

SAMPLE = "sample_data/mni152_t1.nii.gz"


@pytest.fixture(scope="module")
def mni_slices():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / SAMPLE
    vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
    return vol[:, :, 90], vol[:, :, 93]  # two neighbouring axial slices, 197 x 233


@pytest.mark.parametrize("shape,gauss", [((40, 50), False), ((40, 50), True), ((12, 20, 16), False), ((7, 7), False)])
def test_ssim_and_psnr_equal_skimage_on_random_pairs(shape, gauss):
    rng = np.random.default_rng(0)
    a = rng.random(shape)
    b = np.clip(a + 0.2 * rng.standard_normal(shape), 0, 1)
    ours = metrics.ssim(b, a, data_range=1.0, gaussian=gauss)
    ref = structural_similarity(a, b, data_range=1.0, gaussian_weights=gauss,
                                use_sample_covariance=not gauss)
    assert ours == pytest.approx(ref, abs=1e-12)
    assert 0 < ours < 1
    assert metrics.psnr(b, a, 1.0) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-12)


def test_metrics_equal_skimage_on_real_image_pairs(mni_slices):
    a, b = mni_slices
    r = float(a.max() - a.min())
    assert metrics.ssim(b, a, r) == pytest.approx(structural_similarity(a, b, data_range=r), abs=1e-10)
    assert metrics.psnr(b, a, r) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=r), abs=1e-10)
    # float32 input: scikit-image computes in float32, we in float64
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert metrics.ssim(b32, a32, r) == pytest.approx(structural_similarity(a32, b32, data_range=r), abs=1e-5)
    # a different data range changes both metrics
    assert metrics.psnr(b, a, 2 * r) == pytest.approx(metrics.psnr(b, a, r) + 20 * math.log10(2))
    assert metrics.ssim(b, a, 2 * r) != metrics.ssim(b, a, r)


def test_pixel_errors_are_per_pixel_means():
    a = np.zeros((4, 5))
    b = np.zeros((4, 5))
    b[0, 0] = 2.0
    assert metrics.mse(b, a) == pytest.approx(4 / 20)
    assert metrics.mae(b, a) == pytest.approx(2 / 20)
    assert metrics.rmse(b, a) == pytest.approx(math.sqrt(4 / 20))
    assert metrics.psnr(a, a, 1.0) == math.inf
    assert metrics.ssim(np.full((9, 9), 0.5), np.full((9, 9), 0.5), 1.0) == pytest.approx(1.0)


def test_frame_metrics_average_per_frame():
    rng = np.random.default_rng(1)
    t = rng.random((2, 3, 16, 16))
    p = t + 0.05 * rng.standard_normal(t.shape)
    got = metrics.frame_metrics(p, t, data_range=1.0)
    frames = [(p[i, j], t[i, j]) for i in range(2) for j in range(3)]
    assert got["rmse"] == pytest.approx(np.mean([np.sqrt(np.mean((x - y) ** 2)) for x, y in frames]))
    assert got["ssim"] == pytest.approx(np.mean([structural_similarity(y, x, data_range=1.0) for x, y in frames]))
    assert got["psnr"] == pytest.approx(np.mean([peak_signal_noise_ratio(y, x, data_range=1.0) for x, y in frames]))
    assert got["mae"] == pytest.approx(np.mean(np.abs(p - t)))


def test_bad_inputs_are_clear_errors():
    a = np.zeros((8, 8))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.rmse(a, np.zeros((8, 9)))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.psnr(a, np.full((8, 8), np.nan), 1.0)
    with pytest.raises(ValueError, match="data_range"):
        metrics.ssim(a, a, 0.0)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        metrics.ssim(np.zeros((5, 9)), np.zeros((5, 9)), 1.0)


def test_dice_per_label():
    p = np.array([[1, 1, 0], [2, 0, 0]])
    t = np.array([[1, 0, 0], [2, 2, 0]])
    d = metrics.dice(p, t)
    assert d == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}
    assert math.isnan(metrics.dice(p, t, labels=[3])[3])
    assert metrics.dice(t, t) == {1: 1.0, 2: 1.0}


def _masks(rng, n, frac):
    return (rng.random((n, 16, 16)) < frac).astype(np.int64)


def test_mask_divergences_zero_for_identical_sets_positive_otherwise():
    rng = np.random.default_rng(2)
    real = _masks(rng, 10, 0.3)
    same = metrics.mask_divergences(real, real.copy(), pairs=0)
    assert same == {"jsd": 0.0, "kld": 0.0}
    other = metrics.mask_divergences(real, _masks(rng, 12, 0.6), pairs=50)
    assert other["jsd"] > 0.01 and other["kld"] > 0.01 and other["kld_paired"] > 0.01


def test_mask_divergences_equal_direct_scipy_computation():
    rng = np.random.default_rng(3)
    real, gen = _masks(rng, 6, 0.2), _masks(rng, 5, 0.5)
    eps = 1e-6

    def dist(masks):
        out = []
        for m in masks:
            h = np.bincount(m.ravel(), minlength=2) / m.size
            h = np.clip(h, eps, None)
            out.append(h / h.sum())
        return np.array(out)

    p, q = dist(real).mean(0), dist(gen).mean(0)
    got = metrics.mask_divergences(real, gen, eps=eps, pairs=20, seed=4)
    assert got["jsd"] == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9)
    assert got["kld"] == pytest.approx(entropy(p, q), rel=1e-9)
    r = np.random.default_rng(4)
    i, j = r.integers(0, 6, 20), r.integers(0, 5, 20)
    assert got["kld_paired"] == pytest.approx(np.mean([entropy(dist(real)[a], dist(gen)[b]) for a, b in zip(i, j)]))
    # an all-background mask is clipped, not a division by zero
    assert math.isfinite(metrics.mask_divergences(np.zeros((2, 4, 4), int), np.ones((2, 4, 4), int))["kld"])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics.class_distribution(np.full((1, 3, 3), 2), 2)


def test_mean_psnr_is_infinite_only_if_every_frame_is_exact():
    rng = np.random.default_rng(5)
    t = rng.random((1, 3, 16, 16))
    p = t + 0.1 * rng.standard_normal(t.shape)
    p[0, 1] = t[0, 1]  # one exact frame among three
    got = metrics.frame_metrics(p, t, 1.0)["psnr"]
    per_frame = [peak_signal_noise_ratio(t[0, j], p[0, j], data_range=1.0) for j in (0, 2)]
    assert math.isfinite(got) and got == pytest.approx(np.mean(per_frame))
    assert metrics.frame_metrics(t.copy(), t, 1.0)["psnr"] == math.inf
    assert metrics.mean_psnr([math.inf, 20.0, 30.0]) == 25.0


def test_openstl_conventions_equal_a_direct_computation(mni_slices):
    """Real MNI planes as a (N=2, T=2) prediction: OpenSTL-style sums over C*H*W per frame,
    SSIM/PSNR on [0, 1] after clipping, computed here directly with numpy and scikit-image."""
    a, b = mni_slices
    target = np.stack([np.stack([a, b]), np.stack([b, a])])[:, :, 40:104, 50:114]  # (2, 2, 64, 64)
    rng = np.random.default_rng(6)
    pred = target + rng.normal(0, 8, target.shape)  # intensity units, some values beyond the range
    offset, scale = 0.0, 100.0  # a normalisation that maps part of the data above 1
    got = metrics.openstl_metrics(pred, target, offset, scale)
    pn, tn = (pred - offset) / scale, (target - offset) / scale
    n_frames = 4
    mse_direct = sum(((pn[i, j] - tn[i, j]) ** 2).sum() for i in range(2) for j in range(2)) / n_frames
    mae_direct = sum(np.abs(pn[i, j] - tn[i, j]).sum() for i in range(2) for j in range(2)) / n_frames
    clipped = np.clip(pn, 0, 1)
    ssim_direct = np.mean([structural_similarity(tn[i, j], clipped[i, j], data_range=1.0)
                           for i in range(2) for j in range(2)])
    psnr_direct = np.mean([10 * np.log10(1.0 / np.mean((clipped[i, j] - tn[i, j]) ** 2))
                           for i in range(2) for j in range(2)])
    assert got["openstl_mse"] == pytest.approx(mse_direct, rel=1e-10)
    assert got["openstl_mae"] == pytest.approx(mae_direct, rel=1e-10)
    assert got["openstl_ssim"] == pytest.approx(ssim_direct, abs=1e-10)
    assert got["openstl_psnr"] == pytest.approx(psnr_direct, abs=1e-10)
    # summed over the 64*64 pixels of a frame: 4096 times the per-pixel mean of ours (unclipped)
    ours = metrics.frame_metrics(pn, tn, 1.0)
    assert got["openstl_mae"] == pytest.approx(4096 * ours["mae"], rel=1e-10)
    # channels axis (N, T, C, H, W) gives the same numbers for C = 1
    assert metrics.openstl_metrics(pred[:, :, None], target[:, :, None], offset, scale) == pytest.approx(got)
    with pytest.raises(ValueError, match="expected"):
        metrics.openstl_metrics(pred[0], target[0])
