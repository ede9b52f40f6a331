"""The LAUGEN engine on the shipped sample (MNI152 T1, lateral ventricles) and on synthetic shapes."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from laugen_napari.core import (
    Augmenter,
    CustomTrajectory,
    Directional,
    Gaussian,
    Trajectory,
    difference_maps,
    label_volumes_ml,
    unit_field,
)
from laugen_napari.core.field import gaussian_blur

SIGMA = 5.0


@pytest.fixture(scope="module")
def uniform(sample_arrays):
    image, labels, spacing = sample_arrays
    aug = Augmenter(image, labels, spacing, sigma_mm=SIGMA, device="cpu")
    return aug, aug.series(Trajectory("linear", (0.3, 0.4)), frames=6, seed=3)


def _distance_mm(mask, spacing):
    return ndi.distance_transform_edt(~mask, sampling=spacing)


def test_frame0_is_the_input(sample_arrays, uniform):
    image, labels, _ = sample_arrays
    _, series = uniform
    assert series.z_mm[0] == 0
    np.testing.assert_array_equal(series.images[0], image)
    np.testing.assert_array_equal(series.labels[0], labels)
    assert series.labels.dtype == labels.dtype


def test_unit_field_is_one_mm_and_points_inward(sample_arrays):
    _, labels, spacing = sample_arrays
    field = unit_field(labels > 0, spacing, SIGMA, "cpu")
    assert field.max_mm == pytest.approx(1.0, abs=1e-5)
    dense = field.dense()
    # just outside the structure the field points into it: towards higher mask values
    blurred = ndi.gaussian_filter((labels > 0).astype(np.float32), SIGMA, mode="constant")
    grad = np.stack(np.gradient(blurred))
    ring = ndi.binary_dilation(labels > 0, iterations=2) & ~(labels > 0)
    cos = (dense[:, ring] * grad[:, ring]).sum(0) / (np.linalg.norm(dense[:, ring], axis=0) * np.linalg.norm(grad[:, ring], axis=0) + 1e-12)
    assert np.median(cos) > 0.999


def test_far_from_the_structure_nothing_changes(sample_arrays, uniform):
    image, labels, spacing = sample_arrays
    _, series = uniform
    far = _distance_mm(labels > 0, spacing) > 4 * SIGMA + series.z_mm.max() + 2
    diff = np.abs(series.images[-1] - image)
    assert far.sum() > 0.9 * far.size
    assert diff[far].max() == 0.0
    near = ndi.binary_dilation(labels > 0, iterations=2) ^ ndi.binary_erosion(labels > 0, iterations=2)
    assert diff[near].mean() > 1.0  # the boundary region does change


def test_volume_grows_for_positive_slope_and_shrinks_for_negative(sample_arrays, uniform):
    image, labels, spacing = sample_arrays
    aug, grow = uniform
    shrink = aug.series(Trajectory("linear", (-0.4, -0.3)), frames=6, seed=3)
    for label in (1, 2):
        g = np.array(grow.volumes_ml[label])
        s = np.array(shrink.volumes_ml[label])
        assert np.all(np.diff(g) >= 0) and g[-1] > 1.15 * g[0]
        assert np.all(np.diff(s) <= 0) and s[-1] < 0.85 * s[0]
        # the reported volumes are those of the written label maps
        direct = [label_volumes_ml(f, spacing, [label])[label] for f in grow.labels]
        np.testing.assert_allclose(g, direct)


def test_matches_a_full_volume_scipy_reference(sample_arrays, uniform):
    image, labels, spacing = sample_arrays
    aug, series = uniform
    disp_vox = aug.field.dense() / np.asarray(spacing, np.float32).reshape(3, 1, 1, 1)
    grid = np.indices(image.shape, dtype=np.float32)
    t = len(series.z_mm) - 1
    coords = grid + np.float32(series.z_mm[t]) * disp_vox
    ref = ndi.map_coordinates(image, coords, order=1, mode="nearest")
    assert np.abs(series.images[t] - ref).max() < 0.02  # float32 round-off on a 0-255 image


def test_directional_moves_the_centroid_along_the_direction(sample_arrays):
    image, labels, spacing = sample_arrays
    d = np.array([0.0, 1.0, 0.0])  # +y of the array: anterior
    aug = Augmenter(image, labels, spacing, selected=[2], sigma_mm=SIGMA, kind=Directional(d), device="cpu")
    series = aug.series(CustomTrajectory([0, 1.5, 3.0]), frames=3)
    before = np.array(ndi.center_of_mass(series.labels[0] == 2))
    after = np.array(ndi.center_of_mass(series.labels[-1] == 2))
    shift = (after - before) * np.asarray(spacing)
    assert shift[1] > 0.5 and abs(shift[0]) < 0.5 * shift[1] and abs(shift[2]) < 0.5 * shift[1]
    # the far (posterior) side's boundary stays: the rearmost slab of the structure is unchanged
    ys = np.nonzero((labels == 2).any(axis=(0, 2)))[0]
    back = slice(0, ys.min() + 5)
    np.testing.assert_array_equal(series.labels[-1][:, back] == 2, labels[:, back] == 2)
    # while the front grows
    assert (series.labels[-1] == 2).sum() > (labels == 2).sum()
    # the other label did not drive the deformation; the far side of label 1 is untouched
    assert series.info["labels"] == [2]


def test_gaussian_changes_voxels_only_near_the_centre(sample_arrays):
    image, labels, spacing = sample_arrays
    zyx = np.argwhere(labels == 1)
    centre = zyx[np.argmax(zyx[:, 1])]  # the anterior tip of the left ventricle
    spread = 6.0
    aug = Augmenter(image, labels, spacing, sigma_mm=SIGMA, kind=Gaussian(centre, spread), device="cpu")
    series = aug.series(CustomTrajectory([0, 2.0]), frames=2)
    changed = np.argwhere(series.images[1] != image)
    assert len(changed) > 100
    dist = np.linalg.norm((changed - centre) * np.asarray(spacing), axis=1)
    assert dist.max() <= 3 * spread + 2.0 + 1.0
    assert (series.labels[1] == 1).sum() > (labels == 1).sum()


def test_gaussian_centre_far_from_the_structure_is_an_error(sample_arrays):
    image, labels, spacing = sample_arrays
    with pytest.raises(ValueError, match="farther than"):
        Augmenter(image, labels, spacing, kind=Gaussian((5, 5, 5), 5.0), device="cpu")


def test_jacobian_positive_at_defaults_and_folding_reported(sample_arrays):
    image, labels, spacing = sample_arrays
    aug = Augmenter(image, labels, spacing, device="cpu")
    series = aug.series(Trajectory(), frames=8, seed=0)
    assert min(series.jacobian_min) > 0 and max(series.folded_fraction) == 0
    big = aug.series(CustomTrajectory([0, 12.0]), frames=2)
    assert big.jacobian_min[1] < 0 and big.folded_fraction[1] > 0


def test_same_seed_same_series_other_seed_other_slope(sample_arrays, uniform):
    aug, series = uniform
    again = aug.series(Trajectory("linear", (0.3, 0.4)), frames=6, seed=3)
    np.testing.assert_array_equal(series.images, again.images)
    np.testing.assert_array_equal(series.labels, again.labels)
    other = aug.series(Trajectory("linear", (0.3, 0.4)), frames=6, seed=4)
    assert other.z_mm[-1] != series.z_mm[-1]


def test_trajectories_start_at_zero_and_end_at_slope_times_frames():
    rng = np.random.default_rng(0)
    for name in ("linear", "sigmoid", "exponential", "gompertz"):
        draw = Trajectory(name, (0.5, 0.5)).sample(9, rng)
        assert draw.z_mm[0] == 0 and draw.z_mm[-1] == pytest.approx(4.0)
        assert np.all(np.diff(draw.z_mm) > 0)
    sig = Trajectory("sigmoid", (1, 1), rate=2.0).sample(9, rng).z_mm
    assert np.diff(sig)[3:5].min() > np.diff(sig)[[0, -1]].max()  # steepest in the middle
    with pytest.raises(ValueError, match="start with 0"):
        CustomTrajectory([1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        Trajectory().sample(1, rng)
    with pytest.raises(ValueError, match="finite"):
        Trajectory("linear", (0, float("nan")))


def test_anisotropic_spacing_blurs_per_axis_in_mm():
    mask = np.zeros((12, 40, 40), bool)
    mask[4:8, 15:25, 15:25] = True
    spacing = (3.0, 1.0, 0.5)
    blurred = gaussian_blur(torch.from_numpy(mask.astype(np.float32)), [4.0 / s for s in spacing]).numpy()
    ref = ndi.gaussian_filter(mask.astype(np.float32), [4.0 / s for s in spacing], mode="constant")
    np.testing.assert_allclose(blurred, ref, atol=1e-6)
    field = unit_field(mask, spacing, 4.0, "cpu").dense()
    grad = np.stack(np.gradient(ref, *spacing))
    grad /= np.linalg.norm(grad, axis=0).max()
    kept = np.linalg.norm(grad, axis=0) >= 1e-3  # negligible displacements are set to zero
    np.testing.assert_allclose(field[:, kept], grad[:, kept], atol=1e-5)
    assert np.all(field[:, ~kept] == 0)


def test_2d_multichannel_and_several_labels():
    rng = np.random.default_rng(0)
    labels = np.zeros((1, 64, 64), np.uint16)
    labels[0, 20:30, 20:30] = 3
    labels[0, 35:45, 35:50] = 7
    image = rng.normal(100, 10, (2, 1, 64, 64)).astype(np.float32)
    aug = Augmenter(image, labels, (1.0, 0.7, 0.7), sigma_mm=2.0, device="cpu")
    series = aug.series(CustomTrajectory([0, 1.0, 2.0]), frames=3)
    assert series.images.shape == (3, 2, 1, 64, 64) and series.labels.dtype == np.uint16
    assert set(series.volumes_ml) == {3, 7}
    for label in (3, 7):
        assert series.volumes_ml[label][2] > series.volumes_ml[label][0]
    # both channels moved by the same field: their change is the same warp of different data
    moved = series.images[2, 0] != image[0]
    np.testing.assert_array_equal(moved, series.images[2, 1] != image[1])


def test_difference_maps():
    frames = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 2, 2, 2), np.float32)
    first = difference_maps(frames, "first")
    prev = difference_maps(frames, "previous")
    assert np.all(first[0] == 0) and np.all(first[3] == 3)
    assert np.all(prev[0] == 0) and np.all(prev[1:] == 1)


def test_bad_engine_input(sample_arrays):
    image, labels, spacing = sample_arrays
    with pytest.raises(ValueError, match="not in the label map"):
        Augmenter(image, labels, spacing, selected=[5])
    with pytest.raises(ValueError, match="empty"):
        Augmenter(image, np.zeros_like(labels), spacing)
    with pytest.raises(ValueError, match="spacing"):
        Augmenter(image, labels, (1, 0, 1))
    with pytest.raises(ValueError, match="does not match"):
        Augmenter(image[:10], labels, spacing)
    # a NaN or inf in the image is not an error: see test_nonfinite.py


def test_iter_frames_streams_the_same_frames_in_fresh_arrays(sample_arrays, uniform):
    aug, series = uniform
    frames = []
    seen = []
    for frame in aug.iter_frames(series.trajectory, progress=lambda done, total: seen.append((done, total))):
        frames.append(frame)
    assert [f.t for f in frames] == list(range(series.frames))
    assert seen == [(t + 1, series.frames) for t in range(series.frames)]
    for f in frames:
        assert f.z_mm == series.z_mm[f.t]
        np.testing.assert_array_equal(f.image, series.images[f.t])
        np.testing.assert_array_equal(f.labels, series.labels[f.t])
        assert f.labels.dtype == series.labels.dtype and f.image.dtype == np.float32
        assert f.volumes_ml == {v: series.volumes_ml[v][f.t] for v in series.volumes_ml}
        assert f.jacobian_min == series.jacobian_min[f.t] and f.folded_fraction == series.folded_fraction[f.t]
    # every frame owns its arrays: none shares memory with another frame or with the engine
    for a, b in zip(frames, frames[1:]):
        assert not np.shares_memory(a.image, b.image) and not np.shares_memory(a.labels, b.labels)
    assert not np.shares_memory(frames[0].image, aug.warper.image.numpy())


def test_iter_frames_keeps_an_unsigned_label_dtype():
    labels = np.zeros((1, 48, 48), np.uint16)
    labels[0, 18:30, 18:30] = 300
    image = np.linspace(0, 1, labels.size, dtype=np.float32).reshape(labels.shape)
    aug = Augmenter(image, labels, (1.0, 1.0, 1.0), sigma_mm=2.0, device="cpu")
    frames = list(aug.iter_frames(CustomTrajectory([0, 1.0, 2.0]).sample(3)))
    assert all(f.labels.dtype == np.uint16 for f in frames)
    assert frames[2].volumes_ml[300] > frames[0].volumes_ml[300]
    np.testing.assert_array_equal(frames[0].labels, labels)
