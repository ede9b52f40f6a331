"""The "LAUGEN segment" dock driving both backends in a real napari viewer (Xvfb)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from laugen_napari.segment import SegmentationCancelled
from laugen_napari.segment.sam import SamBackend, build_tiny_sam
from laugen_napari.ui.segment_dock import FALLBACK_TEXT, NEW_LABELS, SegmentWidget

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch):
    """The dock remembers its settings here, not in the user's configuration."""
    d = tmp_path / "settings"
    monkeypatch.setenv("LAUGEN_SETTINGS_DIR", str(d))
    return d

SCALE = (2.0, 0.5, 0.75)       # mm per voxel (z, y, x)
TRANSLATE = (10.0, -5.0, 3.0)  # mm


def cuboid() -> np.ndarray:
    vol = np.full((12, 40, 48), 10.0, dtype=np.float32)
    vol[3:9, 10:30, 12:36] = 200.0
    return vol


def world(index) -> np.ndarray:
    """World position (mm) of an array index of the scaled, translated image."""
    return np.asarray(index, dtype=float) * SCALE + TRANSLATE


@pytest.fixture()
def dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(cuboid(), name="scan", scale=SCALE, translate=TRANSLATE, contrast_limits=(0, 255))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="LAUGEN segment")
    widget.image_combo.setCurrentText("scan")
    labels = widget.add_labels_layer()
    return viewer, widget, labels


def click_layer(viewer, widget, positive_world, negative_world=()):
    """A Points layer with unit scale whose data are world mm, clicked through the dock's mode switch."""
    points = viewer.add_points(np.zeros((0, 3)), name="clicks", ndim=3)
    widget.points_combo.setCurrentText("clicks")
    widget.positive_btn.setChecked(True)
    for p in positive_world:
        points.add(np.atleast_2d(p))
    widget.negative_btn.setChecked(True)
    for p in negative_world:
        points.add(np.atleast_2d(p))
    widget.positive_btn.setChecked(True)
    return points


def wait(qtbot, widget, timeout=30_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_fallback_from_world_clicks_paints_undoably(dock, qtbot):
    viewer, widget, labels = dock
    assert FALLBACK_TEXT in widget.backend_label.text()
    points = click_layer(viewer, widget, [world((5, 20, 20))], [world((5, 2, 2))])
    assert list(points.features["positive"]) == [True, False]
    prompts = widget.collect_prompts(viewer.layers["scan"])
    assert prompts.positive.tolist() == [[5, 20, 20]] and prompts.negative.tolist() == [[5, 2, 2]]
    widget.label_value.setValue(3)
    assert widget.run(volume=True) is not None
    wait(qtbot, widget)
    assert np.array_equal(labels.data, (cuboid() > 100).astype(labels.data.dtype) * 3)
    labels.undo()
    assert not labels.data.any()


def test_sam_dock_slice_then_propagation(dock, qtbot):
    viewer, widget, labels = dock
    widget.use_backend(SamBackend(build_tiny_sam(seed=0), model_type="tiny"))
    assert "Segment Anything (tiny" in widget.backend_label.text()
    click_layer(viewer, widget, [world((5, 20, 24))])
    viewer.dims.set_point(0, world((5, 0, 0))[0])
    assert widget.current_axis_and_index(viewer.layers["scan"]) == (0, 5)
    widget.run(volume=False)
    wait(qtbot, widget)
    painted = np.flatnonzero(labels.data.any(axis=(1, 2)))
    assert painted.tolist() == [5]
    widget.run(volume=True)
    wait(qtbot, widget)
    painted = np.flatnonzero(labels.data.any(axis=(1, 2)))
    assert len(painted) >= 3 and 5 in painted
    assert widget.progress.value() == widget.progress.maximum()


class SlowBackend:
    """Waits for the cancel flag, reporting progress, like a long propagation."""

    name = "slow"

    def describe(self) -> str:
        return "slow test backend"

    def segment_volume(self, volume, axis, prompts, window=None, progress=None, cancel=None):
        for step in range(400):
            progress(step, 400, f"slice {step}")
            if cancel():
                raise SegmentationCancelled("segmentation cancelled")
            time.sleep(0.02)
        raise AssertionError("never cancelled")


def test_failure_and_cancel_leave_the_labels_intact(dock, qtbot):
    viewer, widget, labels = dock
    labels.data[:, :5, :5] = 7
    before = labels.data.copy()
    click_layer(viewer, widget, [world((5, 20, 20))])

    widget.checkpoint_edit.setText("/nonexistent/sam_vit_b.pth")
    assert "Segment Anything (vit_b, file sam_vit_b.pth)" in widget.backend_label.text()
    widget.run(volume=True)
    wait(qtbot, widget)
    assert "sam_vit_b.pth" in widget.status.text() and "unchanged" in widget.status.text()
    assert np.array_equal(labels.data, before)

    widget.checkpoint_edit.setText("")
    widget.use_backend(SlowBackend())
    widget.run(volume=True)
    qtbot.waitUntil(lambda: widget.progress.value() >= 2, timeout=10_000)
    bar = widget._pbar  # the same progress in napari's activity dock
    from napari.utils import progress

    assert bar is not None and bar in progress._all_instances and bar.total == 400 and bar.n >= 2
    widget.cancel_btn.click()
    wait(qtbot, widget)
    assert widget._pbar is None and bar not in progress._all_instances  # closed with the run
    assert "cancelled" in widget.status.text()
    assert np.array_equal(labels.data, before)
    assert widget.slice_btn.isEnabled() and not widget.cancel_btn.isEnabled()


def test_click_outside_the_image_is_refused(dock, qtbot):
    viewer, widget, labels = dock
    click_layer(viewer, widget, [world((5, 20, 20)), world((5, 60, 20))])
    assert widget.run(volume=True) is None
    assert "outside the image" in widget.status.text()
    assert not widget.busy and not labels.data.any()


def test_prompt_layers_follow_the_image_geometry(dock):
    viewer, widget, labels = dock
    points, shapes = widget.add_prompt_layers()
    assert np.allclose(points.scale, SCALE) and np.allclose(shapes.translate, TRANSLATE)
    assert np.allclose(labels.scale, SCALE)
    shapes.add_rectangles(np.array([[5, 12, 14], [5, 12, 30], [5, 25, 30], [5, 25, 14]]))
    prompts = widget.collect_prompts(viewer.layers["scan"])
    assert len(prompts.boxes) == 1 and prompts.boxes[0].tolist() == [[5, 12, 14], [5, 25, 30]]


def test_target_defaults_to_a_new_layer_and_listeners_see_the_paint(make_napari_viewer, qtbot):
    """With a mask already open (as the shipped sample is), the dock paints into a new Labels
    layer on the image's grid, leaves the mask alone, and emits the new layer's data event."""
    viewer = make_napari_viewer()
    viewer.add_image(cuboid(), name="scan", scale=SCALE, translate=TRANSLATE, contrast_limits=(0, 255))
    shipped = np.zeros(cuboid().shape, np.uint8)
    shipped[1:3, 1:5, 1:5] = 1
    viewer.add_labels(shipped.copy(), name="mask", scale=SCALE, translate=TRANSLATE)
    widget = SegmentWidget(viewer)
    widget.image_combo.setCurrentText("scan")
    assert widget.labels_combo.currentText() == NEW_LABELS and widget.makes_new_labels
    click_layer(viewer, widget, [world((5, 20, 20))])
    assert widget.labels_combo.currentText() == NEW_LABELS  # adding layers keeps the choice
    seen = []
    viewer.layers.events.inserted.connect(
        lambda e: e.value.events.data.connect(lambda ev: seen.append((ev.source.name, int((ev.value > 0).sum())))))
    widget.run(volume=True)
    wait(qtbot, widget)
    expected = int((cuboid() > 100).sum())
    new = viewer.layers["segmentation"]
    assert int((new.data == 1).sum()) == expected
    assert np.allclose(new.scale, SCALE) and np.allclose(new.translate, TRANSLATE)
    assert np.array_equal(viewer.layers["mask"].data, shipped)  # untouched
    assert ("segmentation", expected) in seen  # the data event came with the painted data
    assert widget.labels_combo.currentText() == "segmentation"  # later runs add to it
    new.undo()
    assert not new.data.any()


def test_failed_run_into_a_new_layer_makes_no_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(cuboid(), name="scan", contrast_limits=(0, 255))
    widget = SegmentWidget(viewer)
    widget.image_combo.setCurrentText("scan")
    click_layer(viewer, widget, [(5, 20, 20)])
    widget.use_backend(SlowBackend())
    n = len(viewer.layers)
    widget.run(volume=True)
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=10_000)
    widget.cancel()
    wait(qtbot, widget)
    assert len(viewer.layers) == n and "segmentation" not in viewer.layers


def test_the_dock_remembers_checkpoint_and_choices(make_napari_viewer, settings_dir):
    viewer = make_napari_viewer()
    first = SegmentWidget(viewer)
    first.checkpoint_edit.setText("/models/medsam_vit_b.pth")
    first.model_type_combo.setCurrentText("vit_l")
    first.label_value.setValue(4)
    first.axis_combo.setCurrentIndex(2)
    first.close()  # closing the dock saves
    second = SegmentWidget(viewer)
    assert second.checkpoint_edit.text() == "/models/medsam_vit_b.pth"
    assert second.model_type_combo.currentText() == "vit_l"
    assert second.label_value.value() == 4 and second.axis_combo.currentIndex() == 2
    assert "medsam_vit_b.pth" in second.backend_label.text()
    (settings_dir / "segment_dock.json").write_text('{"label_value": "x", "axis": 99}')
    third = SegmentWidget(viewer)  # a damaged file: defaults
    assert third.label_value.value() == 1 and third.axis_combo.currentIndex() == 0


def test_grower_gets_the_layers_true_voxel_size_in_mm():
    """The dock hands the region grower the spacing of the layer's full affine: an anisotropic,
    rotated and sheared layer gives the lengths of its affine's columns, not 1 mm."""
    import napari

    from laugen_napari.ui.segment_dock import voxel_spacing_mm

    plain = napari.layers.Image(np.zeros((4, 5, 6), np.float32), scale=(3.0, 1.0, 0.5))
    assert voxel_spacing_mm(plain) == pytest.approx((3.0, 1.0, 0.5))
    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    oblique = napari.layers.Image(np.zeros((4, 5, 6), np.float32), scale=(2.2, 2.0, 2.0), rotate=rot)
    assert voxel_spacing_mm(oblique) == pytest.approx((2.2, 2.0, 2.0))
    sheared = napari.layers.Image(np.zeros((4, 5, 6), np.float32), scale=(1.0, 1.0, 1.0), shear=(0.5, 0.0, 0.0))
    # shear (0.5, 0, 0) maps the y voxel axis to (0.5, 1, 0) in world: 1.118 mm long
    assert voxel_spacing_mm(sheared) == pytest.approx((1.0, np.hypot(0.5, 1.0), 1.0))
