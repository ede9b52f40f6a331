"""The "LAUGEN segment" dock on hostile layers: an oblique, sheared file read by the project's
reader, a layer rotated and sheared by hand, a lazy (dask) target, a label value beyond the
target's integer type, and a paint that fails after the run started."""

from __future__ import annotations

import threading

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from napari.layers import Layer

from laugen_napari.segment import Prompts, RegionGrowingBackend, segment
from laugen_napari.ui import io_hooks
from laugen_napari.ui.layers import LAUGEN_VOLUME
from laugen_napari.ui.segment_dock import NEW_LABELS, SegmentWidget, voxel_spacing_mm

from .test_layers import _oblique_sample

VOXELS = [(0, 0, 0), (5, 9, 11), (20, 30, 17), (31, 7, 40)]


@pytest.fixture()
def messages(monkeypatch):
    """The dock's notifications (error/warning), collected instead of shown."""
    from napari.utils import notifications

    got: list[tuple[str, str]] = []
    monkeypatch.setattr(notifications, "show_error", lambda m: got.append(("E", m)))
    monkeypatch.setattr(notifications, "show_warning", lambda m: got.append(("W", m)))
    return got


def _dock(viewer, image):
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="LAUGEN segment")
    widget.image_combo.setCurrentText(image.name)
    return widget


def _click(widget, image, voxel):
    """A click on ``image``'s voxel as napari makes it: the world position of the voxel, stored in the
    Points layer's own data coordinates."""
    points, _ = widget.add_prompt_layers()
    points.add(np.atleast_2d(points.world_to_data(image.data_to_world(np.asarray(voxel, float)))))
    return points


def _same_world(a, b, voxels=VOXELS, atol=1e-4):
    for v in voxels:
        np.testing.assert_allclose(a.data_to_world(np.asarray(v, float)), b.data_to_world(np.asarray(v, float)),
                                   atol=atol, err_msg=f"voxel {v} of {a.name} and {b.name}")


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)


def _grown(image, voxel):
    """What the region grower finds from one click on ``voxel`` of ``image``, called directly."""
    return segment(np.asarray(image.data), Prompts.create(positive=[voxel], ndim=3), RegionGrowingBackend(),
                   window=tuple(image.contrast_limits), spacing=voxel_spacing_mm(image))


def test_new_labels_sit_on_an_oblique_file_and_save_its_geometry(make_napari_viewer, qtbot, tmp_path, sample_pair,
                                                                 messages):
    """On the sample cropped and stored oblique (rotated about two axes, sheared), read by the
    project's reader: the prompt layers and the new Labels layer put every voxel where the image
    does, a click lands on the voxel clicked, the ventricles are found, and the new labels saved
    after the image was closed carry the file's affine."""
    (image_path, mask_path), affine = _oblique_sample(tmp_path, sample_pair)
    viewer = make_napari_viewer()
    image, mask = [viewer.add_layer(Layer.create(*ld)) for ld in io_hooks.read_nifti([str(image_path), str(mask_path)])]
    assert not np.allclose(image.rotate, np.eye(3))  # the reader put the oblique rotation in rotate
    widget = _dock(viewer, image)
    voxel = tuple(int(v) for v in np.argwhere(mask.data > 0)[len(np.argwhere(mask.data > 0)) // 2])
    points = _click(widget, image, voxel)
    _same_world(points, image)
    _same_world(viewer.layers["segment boxes"], image)
    assert np.allclose(points.data[-1], voxel, atol=1e-6)  # the prompt layer's coordinates are voxel indices
    assert widget.collect_prompts(image).positive.tolist() == [list(voxel)]

    assert widget.makes_new_labels and widget.run(volume=True) is not None
    _wait(qtbot, widget)
    labels = viewer.layers["segmentation"]
    _same_world(labels, image)
    _same_world(labels, mask)
    painted = labels.data > 0
    truth = mask.data > 0
    assert np.array_equal(painted, _grown(image, voxel))  # exactly the grown voxels, nothing else
    assert painted[voxel]
    dice = 2 * (painted & truth).sum() / (painted.sum() + truth.sum())
    assert dice > 0.6, dice
    assert not [m for m in messages if m[0] == "E"]
    assert labels.metadata[LAUGEN_VOLUME].spatial_shape == image.data.shape

    viewer.layers.remove(image)  # saved on its own: the geometry travels with the layer
    viewer.layers.remove(mask)
    data, state, _ = labels.as_layer_data_tuple()  # what napari hands a writer
    out = io_hooks.write_labels(str(tmp_path / "seg_out.nii.gz"), data, state)
    saved = nib.load(out[0])
    np.testing.assert_allclose(saved.affine, affine, atol=1e-4)
    on_disk = np.asarray(saved.dataobj) > 0  # in the file's own (i, j, k) order, like the mask file
    assert on_disk.shape == np.asarray(nib.load(str(mask_path)).dataobj).shape and on_disk.sum() == painted.sum()
    clicked_ijk = tuple(round(c) for c in np.linalg.solve(affine, np.r_[image.data_to_world(voxel)[::-1], 1])[:3])
    assert on_disk[clicked_ijk]
    labels.undo()  # one undoable step, on the oblique layer too
    assert not labels.data.any()
    labels.redo()
    assert np.array_equal(labels.data > 0, painted)


def test_prompt_and_new_layers_follow_a_rotated_sheared_layer(make_napari_viewer, qtbot, sample_arrays, messages):
    """A layer rotated and sheared by hand (no file): clicks, boxes and the painted labels sit on
    the image, and a box drawn around the ventricles in world space comes back as voxel indices."""
    t1, seg, _ = sample_arrays
    ijk = np.argwhere(seg > 0)
    lo, hi = np.maximum(ijk.min(0) - 6, 0), ijk.max(0) + 7
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    img, truth = np.ascontiguousarray(t1[box]), seg[box] > 0
    a = np.deg2rad(30)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    viewer = make_napari_viewer()
    image = viewer.add_image(img, name="t1", scale=(1.0, 1.2, 0.9), translate=(4.0, -3.0, 7.0), rotate=rot,
                             shear=[0.2, 0.0, 0.1])
    widget = _dock(viewer, image)
    voxel = tuple(int(v) for v in ijk[len(ijk) // 2] - lo)
    points = _click(widget, image, voxel)
    shapes = viewer.layers["segment boxes"]
    _same_world(points, image)
    _same_world(shapes, image)
    assert np.allclose(points.data[-1], voxel, atol=1e-6)
    corners = [(voxel[0], 2, 3), (voxel[0], 2, 30), (voxel[0], 20, 30), (voxel[0], 20, 3)]
    shapes.add_rectangles(np.array([shapes.world_to_data(image.data_to_world(np.asarray(c, float))) for c in corners]))
    prompts = widget.collect_prompts(image)
    assert prompts.positive.tolist() == [list(voxel)]
    assert [b.tolist() for b in prompts.boxes] == [[[voxel[0], 2, 3], [voxel[0], 20, 30]]]
    shapes.data = []

    assert widget.run(volume=True) is not None
    _wait(qtbot, widget)
    labels = viewer.layers["segmentation"]
    _same_world(labels, image)
    painted = labels.data > 0
    assert np.array_equal(painted, _grown(image, voxel))
    assert painted[voxel] and 2 * (painted & truth).sum() / (painted.sum() + truth.sum()) > 0.6
    assert not [m for m in messages if m[0] == "E"]
    # a hand-rotated layer has no file geometry to carry: none is invented
    assert LAUGEN_VOLUME not in labels.metadata
    # the button makes the same layer
    again = widget.add_labels_layer()
    _same_world(again, image)


def test_a_4d_image_gets_prompt_and_labels_layers_of_its_own_placement(make_napari_viewer):
    """A (T, Z, Y, X) image keeps its time step and offset, and its rotation, on the new layers."""
    a = np.deg2rad(15)
    rot = np.eye(4)
    rot[2:, 2:] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((3, 6, 7, 8), np.float32), name="series", scale=(2.0, 1.0, 1.5, 0.5),
                             translate=(10.0, 1.0, 2.0, 3.0), rotate=rot)
    widget = _dock(viewer, image)
    points, shapes = widget.add_prompt_layers()
    labels = widget.add_labels_layer()
    voxels = [(0, 0, 0, 0), (2, 5, 6, 7), (1, 3, 2, 5)]
    for layer in (points, shapes, labels):
        _same_world(layer, image, voxels)


def test_a_lazy_target_is_refused_in_one_line(make_napari_viewer, qtbot, sample_arrays, messages):
    """napari cannot paint into a dask Labels layer: the dock says so before running."""
    t1, seg, _ = sample_arrays
    box = (slice(60, 136), slice(80, 168), slice(64, 108))
    viewer = make_napari_viewer()
    image = viewer.add_image(np.ascontiguousarray(t1[box]), name="t1")
    lazy = viewer.add_labels(da.zeros(image.data.shape, dtype=np.uint8, chunks=30), name="lazy")
    widget = _dock(viewer, image)
    widget.labels_combo.setCurrentText("lazy")
    _click(widget, image, np.argwhere(seg[box] > 0)[0])
    n = len(viewer.layers)
    assert widget.run(volume=True) is None and not widget.busy
    assert len(messages) == 1 and messages[0][0] == "E" and "lazy" in messages[0][1] and "memory" in messages[0][1]
    assert widget.status.text() == messages[0][1]
    assert len(viewer.layers) == n and isinstance(lazy.data, da.Array) and not np.asarray(lazy.data).any()


def test_a_label_value_beyond_the_targets_type_is_refused(make_napari_viewer, qtbot, sample_arrays, messages):
    """300 does not fit a uint8 Labels layer: refused with the values that fit; 255 paints."""
    t1, seg, _ = sample_arrays
    box = (slice(60, 136), slice(80, 168), slice(64, 108))
    viewer = make_napari_viewer()
    image = viewer.add_image(np.ascontiguousarray(t1[box]), name="t1")
    target = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="u8")
    widget = _dock(viewer, image)
    widget.labels_combo.setCurrentText("u8")
    _click(widget, image, np.argwhere(seg[box] > 0)[0])
    widget.label_value.setValue(300)
    assert widget.run(volume=True) is None and not widget.busy
    assert len(messages) == 1 and "300" in messages[0][1] and "1..255" in messages[0][1]
    assert not target.data.any()
    widget.label_value.setValue(255)
    assert widget.run(volume=True) is not None
    _wait(qtbot, widget)
    assert set(np.unique(target.data)) == {0, 255} and widget.status.text().startswith("painted")


class GatedBackend:
    """Returns ``mask`` once the test opens the gate (the user acts while it runs)."""

    name = "gated"

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.gate = threading.Event()

    def describe(self) -> str:
        return "gated test backend"

    def segment_volume(self, volume, axis, prompts, window=None, progress=None, cancel=None):
        assert self.gate.wait(30)
        return self.mask


def test_a_paint_that_fails_is_reported_and_changes_nothing(make_napari_viewer, qtbot, messages):
    """The target turned lazy while the run went on, and a backend that returns a mask larger than
    the image: one error line each, status updated, the layer as it was and no half-made layer."""
    viewer = make_napari_viewer()
    vol = np.full((10, 12, 14), 10.0, np.float32)
    vol[2:8, 3:9, 4:10] = 200.0
    image = viewer.add_image(vol, name="scan", contrast_limits=(0, 255))
    target = viewer.add_labels(np.zeros(vol.shape, np.uint16), name="mask")
    widget = _dock(viewer, image)
    widget.labels_combo.setCurrentText("mask")
    _click(widget, image, (5, 5, 5))
    backend = GatedBackend(vol > 100)
    widget.use_backend(backend)
    assert widget.run(volume=True) is not None
    target.data = da.zeros(vol.shape, dtype=np.uint16, chunks=5)  # swapped while the run goes on
    backend.gate.set()
    _wait(qtbot, widget)
    assert len(messages) == 1 and messages[0][0] == "E" and "mask" in messages[0][1]
    assert "failed" in widget.status.text() and widget.status.text() == messages[0][1]
    assert isinstance(target.data, da.Array) and not np.asarray(target.data).any()
    assert widget.progress.value() == 0

    messages.clear()
    widget.labels_combo.setCurrentText(NEW_LABELS)
    big = np.zeros((12, 12, 14), bool)
    big[11, 5, 5] = True  # outside the image
    big[5, 5, 5] = True
    backend = GatedBackend(big)
    widget.use_backend(backend)
    n = len(viewer.layers)
    assert widget.run(volume=True) is not None
    backend.gate.set()
    _wait(qtbot, widget)
    assert len(messages) == 1 and messages[0][0] == "E" and "failed" in widget.status.text()
    assert len(viewer.layers) == n and "segmentation" not in viewer.layers
    assert widget.labels_combo.currentText() == NEW_LABELS
