"""Streamed frames in reused memory (issue 13): ``Augmenter.iter_frames`` writes a frame into the
memory of an earlier frame only once the consumer holds no reference to it or any view of it.

- a consumer that drops every frame gets the frames of ``series_from_values`` byte for byte, all in
  the same memory (no fresh volume per frame);
- whatever the consumer still holds (the frame, a slice of it, a torch tensor on it) is never
  overwritten by a later frame;
- a label map whose dtype is cast back (uint16) takes the same path.
"""

import numpy as np
import pytest
import torch

from laugen_napari.core import Augmenter, CustomTrajectory
from laugen_napari.core.series import _FramePool

Z = [0.0, 0.8, -1.5, 2.5, 3.0]


@pytest.fixture(scope="module")
def engine(sample_arrays):
    image, labels, spacing = sample_arrays
    box = (slice(60, 130), slice(70, 180), slice(50, 150))
    aug = Augmenter(np.clip(image[box], 0, 255).astype(np.uint8), labels[box].copy(), spacing, sigma_mm=4.0,
                    device="cpu")
    draw = CustomTrajectory(Z).sample(len(Z))
    return aug, draw, aug.series_from_values(draw)


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_dropped_frames_share_one_buffer_and_equal_the_series(engine):
    aug, draw, series = engine
    addresses = []
    for frame in aug.iter_frames(draw):
        np.testing.assert_array_equal(frame.image, series.images[frame.t])
        np.testing.assert_array_equal(frame.labels, series.labels[frame.t])
        assert frame.volumes_ml == {v: series.volumes_ml[v][frame.t] for v in series.volumes_ml}
        addresses.append((_address(frame.image), _address(frame.labels)))
        del frame
    assert len(set(addresses)) == 1  # every frame in the memory of the first
    # a consumer that keeps its loop variable while the next frame is made: two buffers alternate
    addresses = [(_address(f.image), f.t) for f in aug.iter_frames(draw)]
    assert len({a for a, _ in addresses}) == 2


def test_what_the_consumer_holds_is_never_overwritten(engine):
    aug, draw, series = engine
    kept_slice = kept_tensor = kept_labels = None
    for frame in aug.iter_frames(draw):
        if frame.t == 1:
            kept_slice = frame.image[10:60]  # a view: holds the frame's memory
            kept_labels = frame.labels.reshape(-1)
        if frame.t == 2:
            kept_tensor = torch.from_numpy(frame.image)
        del frame
    np.testing.assert_array_equal(kept_slice, series.images[1][10:60])
    np.testing.assert_array_equal(kept_labels, series.labels[1].reshape(-1))
    np.testing.assert_array_equal(kept_tensor.numpy(), series.images[2])
    assert not np.shares_memory(kept_slice, kept_tensor.numpy())


def test_cast_labels_reuse_the_working_buffer(engine):
    aug, draw, _ = engine
    image = aug.warper.image[0].numpy()
    labels = aug.warper.labels.numpy().astype(np.uint16) * 300  # torch computes uint16 maps as int32
    wide = Augmenter(image, labels, aug.spacing, sigma_mm=4.0, device="cpu")
    reference = wide.series_from_values(draw)
    addresses = set()
    for frame in wide.iter_frames(draw):
        assert frame.labels.dtype == np.uint16
        np.testing.assert_array_equal(frame.labels, reference.labels[frame.t])
        np.testing.assert_array_equal(frame.image, reference.images[frame.t])
        addresses.add(_address(frame.image))
        del frame
    assert len(addresses) == 1


def test_pool_keeps_at_most_keep_pairs_and_hands_out_fresh_views():
    pool = _FramePool((3, 4), (3, 4), np.uint8, keep=2)
    a, _la = pool.take()
    b, lb = pool.take()  # a is held: a second pair
    c, _lc = pool.take()  # both held: a third, the first left to its holder
    assert len(pool._owned) == 2 and not np.shares_memory(a, c) and not np.shares_memory(b, c)
    a[...] = 7
    del b, lb
    d, _ld = pool.take()  # b's memory is free again
    d[...] = 1
    assert (a == 7).all()
    assert len({_address(x) for x in (a, c, d)}) == 3
