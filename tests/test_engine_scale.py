"""The engine's fast paths (issue 13) give the same numbers as the plain ones.

- the blur (blocked band matrices) equals scipy's gaussian_filter, edge and zero padding;
- frames computed in blocks of moving voxels, with one-byte cell codes for the labels, equal the
  frames computed in one block from the 8 corner labels;
- an integer image kept in its dtype gives the frames of its float32 copy;
- preview planes along every axis are the planes of the full frames;
- streamed frames are not held by the engine (memory flat in the number of frames).
"""

import gc
import warnings
import weakref

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from laugen_napari.core import Augmenter, CustomTrajectory
from laugen_napari.core import warp as warp_module
from laugen_napari.core.field import BLUR_BLOCK, gaussian_blur
from laugen_napari.core.labels import label_counts

Z = [0.0, 1.2, -2.0, 4.5]


@pytest.fixture(scope="module")
def crop(sample_arrays):
    """A box of the sample around the ventricles (fast tests), as uint8 image and labels."""
    image, labels, spacing = sample_arrays
    box = (slice(60, 130), slice(70, 180), slice(50, 150))
    return np.clip(image[box], 0, 255).astype(np.uint8), labels[box].copy(), spacing


@pytest.mark.parametrize("mode", ["nearest", "constant"])
def test_blur_equals_scipy_on_long_and_short_axes(sample_arrays, mode):
    image, _, _ = sample_arrays
    vol = image[40:70, 10:220, 20:(20 + 2 * BLUR_BLOCK + 7)].astype(np.float32) / 255.0  # Y and X use blocks
    assert vol.shape[1] > 2 * BLUR_BLOCK and vol.shape[0] <= 2 * BLUR_BLOCK
    for sigma in ([1.5, 4.0, 7.0], [6.0, 2.0, 12.5]):
        ours = gaussian_blur(torch.from_numpy(vol), sigma, mode=mode).numpy()
        ref = ndi.gaussian_filter(vol, sigma, mode=mode, truncate=4.0)
        np.testing.assert_allclose(ours, ref, atol=2e-6)
    with pytest.raises(ValueError, match="mode"):
        gaussian_blur(torch.from_numpy(vol), [1, 1, 1], mode="reflect")


def test_blocks_and_cell_codes_give_the_plain_frames(crop, monkeypatch):
    image, labels, spacing = crop
    draw = CustomTrajectory(Z).sample(len(Z))
    fast = Augmenter(image, labels, spacing, sigma_mm=4.0, device="cpu")
    frames = list(fast.iter_frames(draw))
    assert fast.warper._codes_ok and fast.warper.n_moving > 3 * warp_module.CPU_BLOCK  # several blocks
    monkeypatch.setattr(warp_module, "CPU_BLOCK", 1 << 30)  # one block
    plain = Augmenter(image, labels, spacing, sigma_mm=4.0, device="cpu")
    plain.warper._codes_ok = False  # the 8 corner labels of every moving voxel
    for f, g in zip(frames, plain.iter_frames(draw)):
        np.testing.assert_array_equal(f.image, g.image)
        np.testing.assert_array_equal(f.labels, g.labels)
        assert f.volumes_ml == g.volumes_ml
    assert not np.array_equal(frames[-1].labels, labels)  # the labels did move
    # a label map holding the code of mixed cells (255) and a wide dtype take the corner path
    for other in (np.where(labels == 2, 255, labels).astype(np.uint8), labels.astype(np.int32)):
        aug = Augmenter(image, other, spacing, sigma_mm=4.0, device="cpu")
        got = list(aug.iter_frames(draw))
        assert not aug.warper._codes_ok
        for f, g in zip(frames, got):
            np.testing.assert_array_equal(f.labels != 0, g.labels != 0)


def test_an_integer_image_is_kept_in_its_dtype_and_gives_the_float_frames(crop):
    image, labels, spacing = crop
    draw = CustomTrajectory(Z).sample(len(Z))
    small = Augmenter(image, labels, spacing, sigma_mm=4.0, device="cpu")
    assert small.warper.image.dtype == torch.uint8  # no float32 copy of the volume
    wide = Augmenter(image.astype(np.float32), labels, spacing, sigma_mm=4.0, device="cpu")
    for f, g in zip(small.iter_frames(draw), wide.iter_frames(draw)):
        assert f.image.dtype == np.float32
        np.testing.assert_array_equal(f.image, g.image)
    # a read-only input is read in place, without a copy and without a warning
    ro_image, ro_labels = image.copy(), labels.copy()
    ro_image.flags.writeable = ro_labels.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = list(Augmenter(ro_image, ro_labels, spacing, sigma_mm=4.0, device="cpu").iter_frames(draw))[-1]
    np.testing.assert_array_equal(frame.image, list(wide.iter_frames(draw))[-1].image)
    # two channels of other dtypes move alike
    two = np.stack([image.astype(np.int16) - 100, image.astype(np.int16)])
    aug = Augmenter(two, labels, spacing, sigma_mm=4.0, device="cpu")
    frame = list(aug.iter_frames(draw))[-1]
    np.testing.assert_allclose(frame.image[0] + 100, frame.image[1], atol=1e-4)
    assert not np.array_equal(frame.image[1], two[1])


def test_planes_along_every_axis_are_planes_of_the_frames(crop):
    image, labels, spacing = crop
    aug = Augmenter(image, labels, spacing, sigma_mm=4.0, device="cpu")
    w = aug.warper
    z = 3.0
    img = w.image_frame(z).numpy()
    lab = w.label_frame(z).numpy()
    centre = np.argwhere(labels > 0).mean(0).astype(int)
    for axis in range(3):
        for index in (0, int(centre[axis]), labels.shape[axis] - 1):
            np.testing.assert_array_equal(w.image_plane(z, axis, index).numpy(), np.take(img, index, axis=axis))
            np.testing.assert_array_equal(w.label_plane(z, axis, index).numpy(), np.take(lab, index, axis=axis))


def test_label_counts_match_numpy(crop):
    _, labels, _ = crop
    values, counts = np.unique(labels, return_counts=True)
    assert label_counts(labels) == dict(zip(values.tolist(), counts.tolist()))
    wide = labels.astype(np.int64) * 70000 - 5
    values, counts = np.unique(wide, return_counts=True)
    assert label_counts(wide) == dict(zip(values.tolist(), counts.tolist()))


def test_streamed_frames_are_not_held_by_the_engine(crop):
    image, labels, spacing = crop
    aug = Augmenter(image, labels, spacing, sigma_mm=4.0, device="cpu")
    refs = []
    for frame in aug.iter_frames(CustomTrajectory([0.4 * t for t in range(6)]).sample(6)):
        refs.append((weakref.ref(frame.image), weakref.ref(frame.labels)))
        del frame
        gc.collect()
        # every earlier frame is gone once the consumer dropped it
        assert all(a() is None and b() is None for a, b in refs[:-1])
