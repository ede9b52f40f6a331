"""The LAUGEN augment dock in a real napari viewer (under Xvfb)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from laugen_napari.ui.augment_widget import DIFF, MASKS, SERIES, AugmentWidget


@pytest.fixture
def dock(make_napari_viewer, sample_pair, qtbot):
    image, mask = sample_pair
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image.data, name="t1", scale=image.spacing, translate=image.origin)
    viewer.add_labels(mask.data, name="seg", scale=image.spacing, translate=image.origin)
    _, widget = viewer.window.add_plugin_dock_widget("laugen-napari", "LAUGEN augment")
    assert isinstance(widget, AugmentWidget)
    qtbot.waitUntil(lambda: widget.model is not None and widget.model.augmenter is not None, timeout=30000)
    yield viewer, widget
    widget.wait_idle()


def _show_plane(viewer, t, z):
    step = list(viewer.dims.current_step)
    step[0], step[1] = t, z
    viewer.dims.current_step = tuple(step)


def test_series_layers_overlay_the_image(dock, sample_pair):
    viewer, widget = dock
    image, _ = sample_pair
    for name in (SERIES, MASKS, DIFF):
        layer = viewer.layers[name]
        assert layer.data.shape == (8,) + image.data.shape
        np.testing.assert_allclose(layer.scale, (1.0,) + image.spacing)
        np.testing.assert_allclose(layer.translate, (0.0,) + image.origin)


def test_trajectory_change_moves_only_the_boundary(dock, sample_pair, qtbot):
    viewer, widget = dock
    image, mask = sample_pair
    z = int(np.argmax((mask.data > 0).sum(axis=(1, 2))))  # the axial plane with most ventricle
    _show_plane(viewer, 7, z)
    series = viewer.layers[SERIES]
    before = np.asarray(series._slice.image.raw).copy()
    widget.w["slope_min"].value = 0.5
    widget.w["slope_max"].value = 0.5
    shown = np.asarray(series._slice.image.raw)
    np.testing.assert_array_equal(shown, np.asarray(series.data[7, z]))  # what is on screen is the layer's data
    assert widget.model.z_mm[-1] == pytest.approx(3.5)
    changed = shown != before
    dist = ndi.distance_transform_edt(mask.data == 0, sampling=image.spacing)[z]  # 3D distance in mm
    assert changed[dist <= 2].mean() > 0.2  # near the boundary: pixels change
    assert not changed[dist > 25].any()  # far away: equal
    # the same on the canvas: a screenshot before/after differs only around the ventricles
    shot1 = viewer.screenshot(canvas_only=True, flash=False)
    widget.w["slope_min"].value = widget.w["slope_max"].value = 0.05
    shot2 = viewer.screenshot(canvas_only=True, flash=False)
    diff = np.abs(shot1[..., :3].astype(int) - shot2[..., :3].astype(int)).sum(-1) > 0
    assert diff.any()
    rows, cols = np.nonzero(diff)
    h, w = diff.shape
    # changes stay in the central part of the canvas where the ventricles are
    assert rows.min() > 0.15 * h and rows.max() < 0.85 * h and cols.min() > 0.15 * w and cols.max() < 0.85 * w


def test_difference_is_zero_at_frame_0_and_follows_the_switch(dock, sample_pair):
    viewer, widget = dock
    _, mask = sample_pair
    diff = viewer.layers[DIFF]
    z = int(np.argmax((mask.data > 0).sum(axis=(1, 2))))
    assert not np.any(diff.data[0, z])
    first = np.asarray(diff.data[5, z])
    assert np.abs(first).max() > 1
    widget.w["difference"].value = "I_t - I_(t-1)"
    prev = np.asarray(diff.data[5, z])
    series = viewer.layers[SERIES].data
    np.testing.assert_allclose(prev, np.asarray(series[5, z]) - np.asarray(series[4, z]))
    lo, hi = diff.contrast_limits
    assert lo == -hi  # symmetric around zero
    widget.w["show_difference"].value = True
    assert diff.visible


def test_3d_display_computes_the_frame_in_the_background(dock, qtbot, sample_pair):
    viewer, widget = dock
    image, _ = sample_pair
    _show_plane(viewer, 6, 90)
    layer = viewer.layers[SERIES]
    viewer.dims.ndisplay = 3
    z6 = widget.model.z_mm[6]
    key = ("image", z6, id(widget.model.augmenter))
    qtbot.waitUntil(lambda: key in widget.model._cache and not widget.busy, timeout=30000)
    shown = np.asarray(layer._slice.image.raw)
    assert shown.shape[-3:] == image.data.shape
    assert np.array_equal(shown.reshape(image.data.shape), widget.model._cache[key])  # the warped frame
    assert not np.array_equal(shown.reshape(image.data.shape), image.data)


def test_kind_change_recomputes_the_field_in_a_worker(dock, qtbot, sample_pair):
    viewer, widget = dock
    _, mask = sample_pair
    old = widget.model.augmenter
    zyx = np.argwhere(mask.data == 1)
    widget.w["centre"].value = ", ".join(str(v) for v in zyx[len(zyx) // 2])
    widget.w["kind"].value = "gaussian"
    qtbot.waitUntil(lambda: widget.model.augmenter is not old, timeout=30000)
    assert widget.model.augmenter.kind.name == "gaussian"
    assert widget.model.augmenter.warper.n_moving < old.warper.n_moving


def test_errors_become_notifications(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    errors = []
    monkeypatch.setattr("laugen_napari.ui.augment_widget.show_error", errors.append)
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="img")
    viewer.add_labels(np.zeros((4, 8, 9), np.uint8), name="lab")
    widget = AugmentWidget(viewer)
    assert errors and "differ in shape" in errors[-1]
    viewer.layers.remove("lab")
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="empty")
    assert "empty" in errors[-1]


def test_export_takes_the_panel_parameters_and_matches_the_cli_and_preview(dock, qtbot, tmp_path):
    import nibabel as nib

    from laugen_napari.cli import main as laugen
    from laugen_napari.ui.export_widget import ExportWidget

    from .conftest import SAMPLE_IMAGE, SAMPLE_MASK

    viewer, widget = dock
    widget.w["trajectory"].value = "gompertz"
    widget.w["frames"].value = 3
    widget.w["seed"].value = 5
    widget.w["device"].value = "cpu"
    export = ExportWidget(viewer)
    export.image.value, export.labels.value = viewer.layers["t1"], viewer.layers["seg"]
    export.outdir.value = tmp_path / "gui"
    assert export.export_series() is not None
    qtbot.waitUntil(lambda: not export.busy, timeout=60000)
    assert export.last_error is None, export.last_error
    assert laugen(["generate", str(SAMPLE_IMAGE), str(SAMPLE_MASK), "-o", str(tmp_path / "cli"), "-q", "--frames", "3",
                   "--seed", "5", "--trajectory", "gompertz", "--rate", str(widget.w["rate"].value), "--device", "cpu"]) == 0
    gui = np.asarray(nib.load(str(tmp_path / "gui" / "image_series.nii.gz")).dataobj)
    cli = np.asarray(nib.load(str(tmp_path / "cli" / "image_series.nii.gz")).dataobj)
    assert gui.tobytes() == cli.tobytes()
    # and what was exported is what the preview showed (file layout is X, Y, Z, T for this RAS file)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    series = viewer.layers[SERIES].data
    preview = np.stack([np.asarray(series[2, k]) for k in range(series.shape[1])])  # plane by plane, as shown
    np.testing.assert_allclose(gui[..., 2].transpose(2, 1, 0), preview, atol=1e-4)
