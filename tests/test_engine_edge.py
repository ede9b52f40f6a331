"""Structures cut by the image or crop edge (issue 10, section 5).

The field's blur extends the mask with its edge values, so a structure that touches the edge
continues across it: the cut face is no boundary. Before, the blur padded with zeros and the cut face
was a false boundary that moved (numbers measured on the sample in the comments below).
"""

import numpy as np
import pytest
import torch

from laugen_napari.core import Augmenter, CustomTrajectory, UnitField, Warper, unit_field
from laugen_napari.core.field import TRUNCATE, gaussian_blur, spatial_gradient

SIGMA = 5.0
CUT_Y = 124  # a coronal plane through the middle of both lateral ventricles (they span y = 85..163)
Z = [0.0, 1.4, 2.8]


def _zero_padded_field(mask, spacing):
    """The field as the engine made it before: blur padded with zeros (the old behaviour)."""
    blurred = gaussian_blur(torch.from_numpy(mask.astype(np.float32)), [SIGMA / s for s in spacing], mode="constant")
    whole = tuple(slice(0, n) for n in mask.shape)
    return UnitField(mask.shape, tuple(spacing), whole, spatial_gradient(blurred, spacing)).normalised()


def _radius_vox(spacing):
    return max(int(TRUNCATE * SIGMA / s + 0.5) for s in spacing)


@pytest.fixture(scope="module")
def cut(sample_arrays):
    """The sample cropped at y = CUT_Y (posterior part dropped): both ventricles touch the y = 0 face."""
    image, labels, spacing = sample_arrays
    return image[:, CUT_Y:].copy(), labels[:, CUT_Y:].copy(), spacing


def test_the_field_of_a_cut_structure_is_that_of_the_structure_continued(sample_arrays, cut):
    image, labels, spacing = sample_arrays
    c_image, c_labels, _ = cut
    mask = c_labels > 0
    assert mask[:, 0].sum() == 130  # voxels of the ventricles on the cut face
    field = unit_field(mask, spacing, SIGMA, "cpu").dense()
    # the same structure continued 30 planes beyond the face (edge values repeated)
    pad = 30
    continued = unit_field(np.pad(mask, ((0, 0), (pad, 0), (0, 0)), mode="edge"), spacing, SIGMA, "cpu").dense()
    np.testing.assert_allclose(field, continued[:, :, pad:], atol=1e-5)  # measured: 5.7e-7
    # away from the face (farther than the blur reaches) the field is that of the uncropped volume
    whole = unit_field(labels > 0, spacing, SIGMA, "cpu").dense()[:, :, CUT_Y:]
    away = _radius_vox(spacing) + 2
    np.testing.assert_allclose(field[:, :, away:], whole[:, :, away:], atol=1e-6)  # measured: 0.0
    # the zero-padded blur made the face a boundary: its field there differs by up to 0.45 mm per mm of z
    old = _zero_padded_field(mask, spacing).dense()
    assert np.abs(old[:, :, 0] - field[:, :, 0]).max() > 0.3
    np.testing.assert_allclose(old[:, :, away:], field[:, :, away:], atol=1e-6)  # only the edge changed


def test_a_structure_running_straight_into_the_edge_does_not_move_at_the_cut_face(cut):
    """The cut ventricles made straight (constant along y) for 24 planes before the face: a
    structure that runs straight out of the image. Its field normal to the face is 0 there, so the
    face plane samples itself at every frame; the zero-padded blur moved it by about z mm."""
    c_image, c_labels, spacing = cut
    k = _radius_vox(spacing) + 4
    image = c_image.copy()
    labels = c_labels.copy()
    image[:, :k] = image[:, k : k + 1]
    labels[:, :k] = labels[:, k : k + 1]
    mask = labels > 0
    face = mask[:, 0]
    field = unit_field(mask, spacing, SIGMA, "cpu").dense()
    # |F_y| at the face relative to the peak: 5e-7 (old zero padding: 0.81 on the ventricles' footprint)
    assert np.abs(field[1][:, 0]).max() < 1e-4
    assert np.linalg.norm(field[:, :, 0], axis=0)[face].max() > 0.5  # the face still grows in-plane
    old = _zero_padded_field(mask, spacing).dense()
    assert np.abs(old[1][:, 0][face]).max() > 0.7
    # in a series: an image holding each voxel's own y index shows, in every frame, the y from which
    # that voxel was sampled. On the face plane it stays 0 (measured 1.5e-6 voxels at z = 2.8 mm);
    # the old field sampled the face from 2.3 voxels inside
    ramp = np.indices(mask.shape)[1].astype(np.float32)
    series = Augmenter(ramp, labels, spacing, sigma_mm=SIGMA, device="cpu").series(CustomTrajectory(Z), frames=3)
    assert np.abs(series.images[:, :, 0]).max() < 1e-3
    assert (series.labels[-1] != labels).sum() > 1000  # while the ventricles do grow
    old_frame = Warper(_zero_padded_field(mask, spacing), ramp, labels).image_frame(Z[-1]).numpy()
    assert old_frame[:, 0][face].max() > 2.0


def test_the_series_of_a_cut_volume_is_the_crop_of_the_continued_volumes_series(cut):
    """Image and labels continued beyond the face by their edge values give the same frames inside
    the crop: the edge adds no motion of its own."""
    c_image, c_labels, spacing = cut
    pad = ((0, 0), (30, 0), (0, 0))
    draw = CustomTrajectory(Z)
    a = Augmenter(c_image, c_labels, spacing, sigma_mm=SIGMA, device="cpu").series(draw, frames=3)
    b = Augmenter(np.pad(c_image, pad, mode="edge"), np.pad(c_labels, pad, mode="edge"), spacing, sigma_mm=SIGMA,
                  device="cpu").series(draw, frames=3)
    assert np.abs(a.images - b.images[:, :, 30:]).max() < 5e-3  # measured 4e-4 on 0..255
    np.testing.assert_array_equal(a.labels, b.labels[:, :, 30:])
    assert a.volumes_ml[1][-1] > a.volumes_ml[1][0]
