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


def _oblique_sample(tmp_path, sample_pair):
    """The sample cropped around the ventricles, its affine rotated by 20 degrees about two world
    axes and sheared: an oblique, sheared image and mask pair on disk."""
    from .conftest import SAMPLE_IMAGE, SAMPLE_MASK

    img_nii, seg_nii = nib.load(str(SAMPLE_IMAGE)), nib.load(str(SAMPLE_MASK))
    seg = np.asarray(seg_nii.dataobj)
    ijk = np.argwhere(seg > 0)
    lo, hi = np.maximum(ijk.min(0) - 10, 0), np.minimum(ijk.max(0) + 11, seg.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = img_nii.affine.copy()
    crop[:3, 3] = img_nii.affine[:3, :3] @ lo + img_nii.affine[:3, 3]
    a = np.deg2rad(20)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    shear = np.array([[1, 0.15, 0], [0, 1, 0.1], [0, 0, 1]])
    affine = crop.copy()
    affine[:3, :3] = rz @ rx @ shear @ crop[:3, :3]
    paths = []
    for name, data, dtype in (("oblique_t1.nii.gz", np.asarray(img_nii.dataobj)[box], np.float32),
                              ("oblique_seg.nii.gz", seg[box], np.uint8)):
        out = nib.Nifti1Image(data.astype(dtype), affine)
        out.set_sform(affine, code=2)
        out.set_qform(affine, code=1)
        nib.save(out, str(tmp_path / name))
        paths.append(tmp_path / name)
    return paths, affine


def test_series_layers_take_the_oblique_sheared_transform(make_napari_viewer, sample_pair, tmp_path, qtbot,
                                                          monkeypatch):
    """On an oblique, sheared file the LAUGEN layers sit exactly on the input (world position of
    every voxel), frame 0 of the mask series is the input mask, and full reads equal `laugen
    generate` on the file for a directional growth (world direction -> array axes)."""
    from laugen_napari.cli import main as laugen
    from laugen_napari.ui import io_hooks
    from laugen_napari.ui.augment_widget import DIFF, MASKS, SERIES, AugmentWidget

    monkeypatch.setenv("LAUGEN_SETTINGS_DIR", str(tmp_path / "config"))
    (image_path, mask_path), affine = _oblique_sample(tmp_path, sample_pair)
    viewer = make_napari_viewer(show=True)
    image, labels = [viewer.add_layer(Layer.create(*ld)) for ld in io_hooks.read_nifti([str(image_path), str(mask_path)])]
    assert is_oblique(image.metadata[LAUGEN_VOLUME])
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    f = widget.form.fields
    f["kind"].value = "directional"
    f["direction"].value = "0, 0, 1"
    f["frames"].value = 3
    f["slope_min"].value = f["slope_max"].value = 0.8
    f["device"].value = "cpu"
    qtbot.waitUntil(lambda: widget.model is not None and widget.model.augmenter is not None
                    and widget.model.augmenter.kind.name == "directional" and widget.model.frames == 3
                    and not widget.busy and not widget._field_timer.isActive(), timeout=60000)
    shape = image.data.shape
    for name in (SERIES, MASKS, DIFF):
        layer = viewer.layers[name]
        for zyx in [(0, 0, 0), tuple(n - 1 for n in shape), (shape[0] // 2, 3, shape[2] - 2)]:
            np.testing.assert_allclose(layer.data_to_world((2,) + zyx)[1:], image.data_to_world(zyx), atol=1e-5)
    file_ijk = (3, 5, 7)
    zyx = load_volume(image_path).file_to_array_index(file_ijk)
    np.testing.assert_allclose(viewer.layers[SERIES].data_to_world((0,) + zyx)[1:], (affine @ [*file_ijk, 1])[:3][::-1],
                               atol=1e-4)
    np.testing.assert_array_equal(np.asarray(viewer.layers[MASKS].data[0]), labels.data)
    assert laugen(["generate", str(image_path), str(mask_path), "-o", str(tmp_path / "cli"), "-q", "--frames", "3",
                   "--kind", "directional", "--direction", "0", "0", "1", "--slope-range", "0.8", "0.8",
                   "--device", "cpu"]) == 0
    cli = load_volume(tmp_path / "cli" / "image_series.nii.gz").data
    np.testing.assert_array_equal(np.asarray(viewer.layers[SERIES].data), cli)
    assert np.abs(cli[2] - cli[0]).max() > 1
    widget.wait_idle()


class _CountingArray:
    """An array-like layer data that counts how often it is read whole (``np.asarray``)."""

    reads = 0

    def __init__(self, array: np.ndarray):
        self._a = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        return self._a[key]

    def __array__(self, dtype=None, copy=None):
        type(self).reads += 1
        return self._a if dtype is None else self._a.astype(dtype)


def test_volume_reader_reads_the_data_only_when_called(tmp_path):
    """A worker thread reads the layer's data; the geometry, taken on the caller's thread, is that
    of volume_from_layer: the file's (oblique) for a loaded layer, a RAS one from scale and
    translate for a layer drawn without a file (anisotropic voxels), and the image's for labels
    drawn on it."""
    from laugen_napari.io.nifti import volume_from_array
    from laugen_napari.ui.layers import ras_geometry, volume_reader

    path, _, _ = _oblique_file(tmp_path)
    loaded = Layer.create(*volume_layer_data(load_volume(path), "image"))
    raw = _CountingArray(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8))
    drawn = Image(raw, scale=(3.0, 0.8, 0.8), translate=(-5.0, 2.0, 10.0))
    labels = Layer.create(np.zeros((6, 7, 8), np.uint8), {"scale": drawn.scale, "translate": drawn.translate},
                          "labels")
    _CountingArray.reads = 0
    reads = [volume_reader(loaded), volume_reader(drawn), volume_reader(labels, reference=drawn)]
    assert _CountingArray.reads == 0  # nothing read yet
    got = [read() for read in reads]
    assert _CountingArray.reads >= 1
    want = [volume_from_layer(loaded), volume_from_layer(drawn), volume_from_layer(labels, reference=drawn)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.data, w.data)
        np.testing.assert_allclose(g.affine, w.affine)
        np.testing.assert_allclose(g.file_affine, w.file_affine)
        assert g.path == w.path and g.data.dtype == w.data.dtype
    assert got[1].spacing == (3.0, 0.8, 0.8)
    # the RAS geometry without an array of the volume's shape equals volume_from_array's
    geometry = ras_geometry((400, 512, 512), (1.0, 0.75, 0.75), (-200.0, 3.0, 7.5))
    assert geometry.data.strides == (0, 0, 0)
    small = volume_from_array(np.zeros((40, 51, 52), np.uint8), (1.0, 0.75, 0.75), (-200.0, 3.0, 7.5))
    np.testing.assert_allclose(geometry.affine, small.affine)
    assert geometry.header.get_data_shape() == (512, 512, 400)
