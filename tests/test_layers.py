"""Layer <-> geometry rules: world positions, oblique files, the plane on screen."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from napari.layers import Image, Layer

from laugen_napari.io.nifti import load_volume
from laugen_napari.ui.layers import (
    LAUGEN_VOLUME,
    PlaneOnScreen,
    is_oblique,
    series_layer_kwargs,
    volume_from_layer,
    volume_layer_data,
)


def _oblique_file(tmp_path):
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, 1.5, 2.0])  # oblique and left-pointing i
    affine[:3, 3] = (12.0, -7.0, 3.0)
    data = np.arange(8 * 9 * 5, dtype=np.int16).reshape(8, 9, 5)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "oblique.nii.gz"))
    return tmp_path / "oblique.nii.gz", affine, data


def test_layer_world_positions_follow_the_affine(tmp_path):
    """napari's data-to-world transform of the layer equals the file's affine, even when oblique."""
    path, affine, data = _oblique_file(tmp_path)
    vol = load_volume(path)
    assert is_oblique(vol)
    layer = Layer.create(*volume_layer_data(vol, "image"))
    for ijk in [(0, 0, 0), (7, 0, 4), (3, 8, 2), (7, 8, 4)]:
        zyx = vol.file_to_array_index(ijk)
        assert layer.data[tuple(int(v) for v in zyx)] == data[ijk]
        world_xyz = (affine @ np.r_[ijk, 1.0])[:3]
        np.testing.assert_allclose(layer.data_to_world(zyx), world_xyz[::-1], atol=1e-5)
    # and back: the Volume taken from the layer keeps the file's affine
    back = volume_from_layer(layer)
    np.testing.assert_array_equal(back.file_affine, vol.file_affine)
    np.testing.assert_array_equal(back.data, vol.data)


def test_series_kwargs_overlay_the_image(tmp_path):
    path, _, _ = _oblique_file(tmp_path)
    image = Layer.create(*volume_layer_data(load_volume(path), "image"))
    series = Image(np.stack([image.data] * 3), **series_layer_kwargs(image))
    for zyx in [(0, 0, 0), (4, 8, 7), (2, 3, 1)]:
        np.testing.assert_allclose(series.data_to_world((2,) + zyx)[1:], image.data_to_world(zyx), atol=1e-6)
    assert series.metadata[LAUGEN_VOLUME].spatial_shape == image.data.shape
    # a layer without geometry: its own scale and translate are used
    plain = Image(np.zeros((4, 5, 6)), scale=(2, 3, 4), translate=(1, 2, 3))
    kw = series_layer_kwargs(plain)
    np.testing.assert_allclose(kw["scale"], (1, 2, 3, 4))
    np.testing.assert_allclose(kw["translate"], (0, 1, 2, 3))


def test_plane_on_screen_follows_dims_and_camera(make_napari_viewer):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).normal(size=(3, 6, 7, 8)).astype(np.float32)
    layer = viewer.add_image(data, scale=(1, 2.0, 0.5, 0.25))
    viewer.dims.set_point(1, 2 * 4.0)  # z index 4
    plane = PlaneOnScreen(layer, viewer)
    assert (plane.rows, plane.cols) == (2, 3) and plane.fixed() == {1: 4}
    np.testing.assert_array_equal(plane.take(layer.data, 2), data[2, 4])
    assert plane.pixel_mm == (0.5, 0.25) and not plane.flip_rows and not plane.flip_cols

    viewer.dims.order = (0, 2, 3, 1)  # show (x, z): x as rows, z as columns
    viewer.dims.set_point(2, 0.5 * 5)  # y index 5
    viewer.camera.orientation2d = ("up", "left")
    plane = PlaneOnScreen(layer, viewer)
    assert (plane.rows, plane.cols) == (3, 1) and plane.fixed() == {2: 5}
    np.testing.assert_array_equal(plane.take(layer.data, 1), data[1, :, 5, :].T)
    assert plane.pixel_mm == (0.25, 2.0) and plane.flip_rows and plane.flip_cols

    viewer.dims.order = (1, 2, 0, 3)  # time on screen: no movie plane
    try:
        PlaneOnScreen(layer, viewer)
    except ValueError as exc:
        assert "time axis" in str(exc)
    else:
        raise AssertionError("a displayed time axis must be refused")
