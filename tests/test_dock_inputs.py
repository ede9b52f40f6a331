"""Layers a user could hand the docks that are not plain 3D arrays on one grid: multiscale data,
a flipped axis (negative scale), labels on another grid, an RGB volume. Each works or is refused in
one notification; nothing is silently wrong."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from laugen_napari.ui.augment_widget import MASKS, SERIES, AugmentWidget
from laugen_napari.ui.layers import check_layers_on_one_grid, layer_input, volume_from_layer

CROP = (slice(60, 136), slice(80, 168), slice(64, 108))


@pytest.fixture
def crop(sample_pair):
    image, mask = sample_pair
    return image.data[CROP].astype(np.float32), mask.data[CROP].copy(), image.spacing


def _ready(widget):
    return widget.model is not None and widget.model.augmenter is not None and not widget.busy


def _errors(monkeypatch, module):
    shown: list[str] = []
    monkeypatch.setattr(module, "show_error", shown.append)
    return shown


def test_multiscale_images_are_read_at_their_finest_level(make_napari_viewer, crop, qtbot, monkeypatch):
    from laugen_napari.ui import augment_widget

    image, labels, spacing = crop
    shown = _errors(monkeypatch, augment_widget)
    viewer = make_napari_viewer()
    pyramid = [image, image[::2, ::2, ::2].copy()]
    layer = viewer.add_image(pyramid, multiscale=True, name="t1", scale=spacing, contrast_limits=(0, 255))
    viewer.add_labels(labels, name="seg", scale=spacing)
    assert np.asarray(layer.data).shape != image.shape  # napari's own array of it is the coarsest level
    assert volume_from_layer(layer).data.shape == image.shape
    assert layer_input(layer).data.shape == image.shape
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: _ready(widget) and SERIES in viewer.layers, timeout=60000)
    np.testing.assert_array_equal(np.asarray(viewer.layers[SERIES].data[0]), image)
    assert shown == []
    widget.wait_idle()


def test_a_flipped_axis_is_refused_in_one_line_and_trains_with_its_true_spacing(make_napari_viewer, crop, qtbot,
                                                                                monkeypatch, tmp_path):
    from laugen_napari.training.plan import make_plan
    from laugen_napari.ui import augment_widget

    image, labels, spacing = crop
    shown = _errors(monkeypatch, augment_widget)
    viewer = make_napari_viewer()
    flipped = (spacing[0], -spacing[1], spacing[2])
    img = viewer.add_image(image, name="t1", scale=flipped, contrast_limits=(0, 255))
    lab = viewer.add_labels(labels, name="seg", scale=flipped)
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: any("flipped" in m for m in shown), timeout=30000)
    assert SERIES not in viewer.layers and all("\n" not in m for m in shown)
    assert "flip its data" in widget.w["status"].value
    with pytest.raises(ValueError, match="flipped"):
        volume_from_layer(img)
    # the train dock hands the plan the true (positive) voxel size, so its series do deform
    assert layer_input(img).scale == pytest.approx(tuple(abs(v) for v in flipped))
    from test_train_dock import SIMVP_VALUES

    plan = make_plan({**SIMVP_VALUES, "run_dir": str(tmp_path / "r")}, image=layer_input(img), labels=layer_input(lab))
    assert plan["image"][1] == pytest.approx(tuple(abs(v) for v in flipped))
    widget.wait_idle()


def test_training_sources_refuse_a_bad_spacing(crop):
    from laugen_napari.training.datasets import SyntheticSource

    image, labels, _ = crop
    with pytest.raises(ValueError, match="spacing must be three positive"):
        SyntheticSource(image, labels, (1.0, -1.0, 1.0), name="flipped")


def test_labels_on_another_grid_are_refused_by_the_augment_dock(make_napari_viewer, crop, qtbot, monkeypatch):
    from laugen_napari.ui import augment_widget

    image, labels, spacing = crop
    shown = _errors(monkeypatch, augment_widget)
    viewer = make_napari_viewer()
    img = viewer.add_image(image, name="t1", scale=spacing, contrast_limits=(0, 255))
    lab = viewer.add_labels(labels, name="seg", scale=(2 * spacing[0],) + tuple(spacing[1:]))
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: any("not on the same grid" in m for m in shown), timeout=30000)
    assert SERIES not in viewer.layers and MASKS not in viewer.layers
    with pytest.raises(ValueError, match="'t1'.*'seg'.*not on the same grid"):
        check_layers_on_one_grid(img, lab)
    # a rotation set in the viewer on one of the two is another grid as well
    lab.scale = spacing
    lab.rotate = [[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]]
    with pytest.raises(ValueError, match="not on the same grid"):
        check_layers_on_one_grid(img, lab)
    lab.rotate = np.eye(3)
    check_layers_on_one_grid(img, lab)
    qtbot.waitUntil(lambda: _ready(widget) and SERIES in viewer.layers, timeout=60000)
    # both layers re-scaled (3 mm slices): the field and the LAUGEN layers follow
    old = widget.model.augmenter
    img.scale = lab.scale = (3.0,) + tuple(spacing[1:])
    qtbot.waitUntil(lambda: _ready(widget) and widget.model.augmenter is not old
                    and tuple(viewer.layers[SERIES].scale[-3:]) == (3.0,) + tuple(spacing[1:]), timeout=60000)
    assert widget.model.augmenter.spacing == pytest.approx((3.0,) + tuple(spacing[1:]))
    np.testing.assert_allclose(viewer.layers[SERIES].data_to_world((0, 5, 6, 7))[1:], img.data_to_world((5, 6, 7)))
    widget.wait_idle()


def test_rgb_layers_are_not_offered_and_a_removal_says_why(make_napari_viewer, crop, qtbot):
    image, labels, spacing = crop
    viewer = make_napari_viewer()
    rgb = viewer.add_image(np.stack([image] * 3, axis=-1).astype(np.uint8), rgb=True, name="colour")
    assert rgb.rgb
    img = viewer.add_image(image, name="t1", scale=spacing, contrast_limits=(0, 255))
    viewer.add_labels(labels, name="seg", scale=spacing)
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert rgb not in widget.w["image"].choices and widget.w["image"].value is img
    qtbot.waitUntil(lambda: _ready(widget) and SERIES in viewer.layers, timeout=60000)
    widget.wait_idle()
    viewer.layers.remove("seg")
    status = widget.w["status"].value
    assert "removed" in status and "pick an image and a labels layer" in status
    assert not any(isinstance(layer, Labels) for layer in viewer.layers)


def _rotation(deg: float) -> np.ndarray:
    """A turn about napari's world z axis (in the y-x plane)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def test_a_rotation_set_in_the_viewer_is_written_as_an_oblique_affine(make_napari_viewer, crop, tmp_path):
    """A layer turned by 30 degrees in napari (no file behind it), and an oblique file's layer the
    user turned further: Save Layer writes the affine napari draws, so every voxel of the file lands
    where the layer shows it. A turn of 60 degrees is refused in one line."""
    import nibabel as nib

    from laugen_napari.ui import io_hooks
    from laugen_napari.ui.layers import _layer_meta

    image, _, spacing = crop
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="t1", scale=spacing, translate=(5.0, -3.0, 2.0), rotate=_rotation(30),
                             contrast_limits=(0, 255))
    meta = _layer_meta(layer)
    out = io_hooks.write_image(str(tmp_path / "turned.nii.gz"), image, meta)[0]
    written = nib.load(out)
    data = np.asarray(written.dataobj)
    rng = np.random.default_rng(0)
    for ijk in rng.integers(0, np.array(written.shape), size=(50, 3)):
        xyz = (written.affine @ [*ijk, 1.0])[:3]
        zyx = np.rint(layer.world_to_data(xyz[::-1])).astype(int)
        assert data[tuple(ijk)] == image[tuple(zyx)]
    # the reader gives it back on the same place
    back = viewer.add_layer(napari_layer(io_hooks.read_nifti(out)[0]))
    for zyx in [(0, 0, 0), (10, 20, 30), tuple(n - 1 for n in image.shape)]:
        np.testing.assert_allclose(back.data_to_world(zyx), layer.data_to_world(zyx), atol=1e-4)
    # a file layer turned further by the user: the turn the viewer shows is what is written
    back.rotate = _rotation(30) @ _rotation(10)
    out2 = io_hooks.write_image(str(tmp_path / "turned_more.nii.gz"), image, _layer_meta(back))[0]
    again = viewer.add_layer(napari_layer(io_hooks.read_nifti(out2)[0]))
    np.testing.assert_allclose(again.data_to_world((10, 20, 30)), back.data_to_world((10, 20, 30)), atol=1e-4)
    layer.rotate = _rotation(60)
    with pytest.raises(ValueError, match="45 degrees"):
        io_hooks.write_image(str(tmp_path / "no.nii.gz"), image, _layer_meta(layer))
    assert not (tmp_path / "no.nii.gz").exists()


def napari_layer(layer_data):
    from napari.layers import Layer

    return Layer.create(*layer_data)


def test_removing_the_augment_dock_stops_it(make_napari_viewer, crop, qtbot):
    """napari's remove_dock_widget takes the panel out of its dock without closing it: the panel
    then stops following the viewer (no field on paint, no keys, no longer the viewer's panel);
    its LAUGEN layers stay."""
    from laugen_napari.ui.augment_widget import augment_panel

    image, labels, spacing = crop
    viewer = make_napari_viewer()
    viewer.add_image(image, name="t1", scale=spacing, contrast_limits=(0, 255))
    seg = viewer.add_labels(labels, name="seg", scale=spacing)
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="LAUGEN augment")
    qtbot.waitUntil(lambda: _ready(widget) and SERIES in viewer.layers, timeout=60000)
    assert augment_panel(viewer) is widget
    keys = set(map(str, viewer.keymap))
    viewer.window.remove_dock_widget(widget)
    assert widget._closed and augment_panel(viewer) is None
    assert len(set(map(str, viewer.keymap))) < len(keys)  # the dock's keys are released
    old, version = widget.model.augmenter, widget._labels_version
    seg.data[0, 0, 0] = 9
    seg.events.data(value=seg.data, action="changed", data_indices=(), vertex_indices=())
    qtbot.wait(800)
    assert widget._labels_version == version and widget.model.augmenter is old and not widget.busy
    assert SERIES in viewer.layers and np.asarray(viewer.layers[SERIES].data[0]).shape == image.shape
