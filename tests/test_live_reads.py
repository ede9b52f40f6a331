"""The augment dock's screen never reads a whole lazy layer on the viewer's thread (issue 13).

A 2D view shows one plane; napari asks the lazy layers for that plane only. Whole frames are
computed only on the dock's background worker (the frame on screen, ahead of a switch to 3D) and
never for anything else. Counted at the engine: every full image or label frame the warper
computes, every float32 conversion of the whole input, every ``np.asarray`` of a lazy layer, with the
thread it ran on.
"""

import threading

import numpy as np
import pytest

from laugen_napari.core import preview as preview_module
from laugen_napari.core.warp import Warper
from laugen_napari.ui.augment_widget import DIFF, MASKS, SERIES, AugmentWidget


class FullReads:
    """Records (what, z in mm, on the GUI thread?) for every whole-volume computation."""

    def __init__(self, monkeypatch):
        self.gui = threading.get_ident()
        self.events: list[tuple[str, float, bool]] = []
        self._lock = threading.Lock()
        for name in ("image_frame", "label_frame"):
            original = getattr(Warper, name)

            def counted(warper, z_mm, *a, _original=original, _name=name, **k):
                self._add(_name, float(z_mm))
                return _original(warper, z_mm, *a, **k)

            monkeypatch.setattr(Warper, name, counted)
        original_input = preview_module.PreviewModel.input_image

        def input_image(model):
            if model._image_f32 is None and model.image.dtype != np.float32:
                self._add("input in float32", 0.0)
            return original_input(model)

        monkeypatch.setattr(preview_module.PreviewModel, "input_image", input_image)
        original_array = preview_module._LazySeries.__array__

        def whole(series, *a, **k):
            self._add(f"np.asarray({type(series).__name__})", float("nan"))
            return original_array(series, *a, **k)

        monkeypatch.setattr(preview_module._LazySeries, "__array__", whole)
        original_frame = preview_module.PreviewModel._frame

        def frame(model, what, z):
            if what == "difference" and (what, z, id(model.augmenter)) not in model._cache:
                self._add("difference", float(z[0]))
            return original_frame(model, what, z)

        monkeypatch.setattr(preview_module.PreviewModel, "_frame", frame)

    def _add(self, what: str, z: float) -> None:
        with self._lock:
            self.events.append((what, z, threading.get_ident() == self.gui))

    def clear(self) -> None:
        with self._lock:
            self.events.clear()

    def on_gui(self) -> list:
        return [e for e in self.events if e[2]]

    def on_workers(self) -> list:
        return [e for e in self.events if not e[2]]


def _ready(widget):
    return widget.model is not None and widget.model.augmenter is not None and not widget.busy


def _settle(qtbot, widget):
    qtbot.wait(200)  # debounce timers
    qtbot.waitUntil(lambda: _ready(widget) and not widget._field_timer.isActive(), timeout=30000)
    qtbot.wait(600)  # past the idle delay after which the frame on screen is computed ahead
    qtbot.waitUntil(lambda: _ready(widget), timeout=30000)


@pytest.fixture
def counted_dock(make_napari_viewer, sample_pair, qtbot, monkeypatch):
    reads = FullReads(monkeypatch)  # before the dock exists: its first layers are counted too
    image, mask = sample_pair
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image.data, name="t1", scale=image.spacing, translate=image.origin)
    viewer.add_labels(mask.data.copy(), name="seg", scale=image.spacing, translate=image.origin)
    _, widget = viewer.window.add_plugin_dock_widget("laugen-napari", "LAUGEN augment")
    assert isinstance(widget, AugmentWidget)
    qtbot.waitUntil(lambda: _ready(widget) and SERIES in viewer.layers, timeout=30000)
    widget.w["show_difference"].value = True  # the overlay is read as well
    yield viewer, widget, reads
    widget.wait_idle()


def _only_frame_on_screen(reads: FullReads, z_t: float) -> None:
    kinds = [e[0] for e in reads.on_workers()]
    assert set(kinds) <= {"image_frame", "label_frame", "difference", "input in float32"}, kinds
    assert all(kinds.count(k) == 1 for k in ("image_frame", "label_frame", "difference")), kinds
    assert all(e[1] == z_t for e in reads.on_workers() if e[0] != "input in float32")


def _shown(viewer, name):
    return np.asarray(viewer.layers[name]._slice.image.raw)


def test_plane_views_and_trajectory_changes_compute_no_whole_frame_on_screen(counted_dock, qtbot, sample_pair):
    viewer, widget, reads = counted_dock
    _, mask = sample_pair
    z = int(np.argmax((mask.data > 0).sum(axis=(1, 2))))
    _settle(qtbot, widget)
    # adding the layers and showing the first plane: nothing whole on the viewer's thread
    assert reads.on_gui() == []
    assert all(e[0] != "np.asarray(LazyImageSeries)" for e in reads.events)

    for t, plane in ((5, z), (7, z - 10), (3, z + 4)):
        reads.clear()
        step = list(viewer.dims.current_step)
        step[0], step[1] = t, plane
        viewer.dims.current_step = tuple(step)
        model = widget.model
        np.testing.assert_array_equal(_shown(viewer, SERIES), model.image_plane(t, 0, plane))
        np.testing.assert_array_equal(_shown(viewer, MASKS), model.label_plane(t, 0, plane))
        assert reads.on_gui() == [], f"plane t={t} z={plane}: whole volumes computed on the GUI thread"
        _settle(qtbot, widget)
        # on the worker: the frame on screen only (image, labels, difference overlay), once each
        _only_frame_on_screen(reads, float(model.z_mm[t]))

    for slope in (0.6, 0.3, 0.5):
        reads.clear()
        before = np.array(_shown(viewer, SERIES))
        widget.w["slope_max"].value = slope
        assert reads.on_gui() == [], f"slope max {slope}: whole volumes computed on the GUI thread"
        now = _shown(viewer, SERIES)
        assert not np.array_equal(now, before)  # the plane on screen changed with the trajectory
        np.testing.assert_array_equal(now, widget.model.image_plane(3, 0, z + 4))
        _settle(qtbot, widget)
        _only_frame_on_screen(reads, float(widget.model.z_mm[3]))

    # fewer frames: napari re-reads the shape of every layer, never the data
    reads.clear()
    widget.w["frames"].value = 5
    qtbot.waitUntil(lambda: viewer.layers[SERIES].data.shape[0] == 5, timeout=10000)
    assert reads.on_gui() == []
    assert not any(e[0].startswith("np.asarray") for e in reads.events)
    assert viewer.layers[DIFF].data.shape[0] == 5


def test_a_field_change_reads_the_layers_on_the_worker(counted_dock, qtbot):
    """The field recompute reads the input layers and builds the engine on the worker; the GUI
    thread only swaps the engine in and redraws the plane."""
    viewer, widget, reads = counted_dock
    _settle(qtbot, widget)
    reads.clear()
    old = widget.model.augmenter
    widget.w["sigma"].value = 6.0
    qtbot.waitUntil(lambda: widget.model.augmenter is not old and not widget.busy, timeout=30000)
    assert reads.on_gui() == []
    assert not any(e[0].startswith("np.asarray") for e in reads.events)
    # the input image is shared, not copied to float32: the engine reads the layer's own array
    assert widget.model.image is viewer.layers["t1"].data
    assert widget.model.augmenter.warper.image.dtype.is_floating_point is False


def test_3d_display_finds_every_whole_frame_computed_ahead(counted_dock, qtbot):
    """In 3D napari reads whole frames of every shown layer on the viewer's thread: the series,
    the masks and the difference overlay (I_t - I_0) are all computed ahead on the worker."""
    viewer, widget, reads = counted_dock
    _settle(qtbot, widget)
    step = list(viewer.dims.current_step)
    step[0] = 5
    viewer.dims.current_step = tuple(step)
    _settle(qtbot, widget)
    model = widget.model
    assert model.is_cached(5) and model.is_difference_cached(5, 0)
    reads.clear()
    viewer.dims.ndisplay = 3
    assert reads.on_gui() == [], "3D display computed whole volumes on the GUI thread"
    shown = np.asarray(viewer.layers[DIFF]._slice.image.raw).reshape(model.spatial_shape)
    expected = model.image_frame(5) - model.image_frame(0)
    np.testing.assert_array_equal(shown, expected)
    assert np.abs(expected).max() > 0
    assert np.shares_memory(shown, model.difference_frame(5, 0))  # the cached difference, not a new subtraction
    # stepping in 3D: the neighbours were computed ahead, on the worker
    qtbot.waitUntil(lambda: model.is_cached(6) and model.is_cached(4) and model.is_difference_cached(6, 0)
                    and not widget.busy, timeout=60000)
    assert all(not on_gui for *_, on_gui in reads.events)
    reads.clear()
    step[0] = 6
    viewer.dims.current_step = tuple(step)
    assert reads.on_gui() == []
    np.testing.assert_array_equal(np.asarray(viewer.layers[SERIES]._slice.image.raw).reshape(model.spatial_shape),
                                  model.image_frame(6))
    viewer.dims.ndisplay = 2
