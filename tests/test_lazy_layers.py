"""Lazy layers (dask, zarr, a memory map: anything napari reads plane by plane) are never read
whole on the viewer's thread by the augment dock: not to list the labels, not for the gaussian
kind's centre, not for a click that picks it, not after an edit. Only workers read them whole."""

import threading
from types import SimpleNamespace

import numpy as np
from napari.layers import Image, Layer
from test_export_widget import _open, lps_pair  # noqa: F401 (a fixture)
from test_layers import _oblique_file

from laugen_napari.io.nifti import load_volume
from laugen_napari.ui.augment_widget import SERIES, AugmentWidget
from laugen_napari.ui.layers import geometry_of_layer, volume_from_layer, volume_layer_data


class ThreadedReads:
    """Array-like layer data that records every whole read (``np.asarray``) with its thread."""

    def __init__(self, array: np.ndarray, log: list):
        self._a, self._log = array, log
        self.shape, self.dtype, self.ndim, self.size = array.shape, array.dtype, array.ndim, array.size

    def __getitem__(self, key):
        return self._a[key]

    def __array__(self, dtype=None, copy=None):
        self._log.append(threading.current_thread() is threading.main_thread())
        return self._a if dtype is None else self._a.astype(dtype)


def test_geometry_of_a_layer_reads_no_data_and_equals_volume_from_layer(tmp_path):
    """The oblique file's geometry for a loaded layer, a RAS one for a layer drawn without a file
    (3 mm slices), and the image's for labels drawn on it: as volume_from_layer, with no read."""
    path, _, _ = _oblique_file(tmp_path)
    log: list = []
    loaded = Layer.create(*volume_layer_data(load_volume(path), "image"))
    loaded.data = ThreadedReads(np.asarray(loaded.data), log)
    drawn = Image(ThreadedReads(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8), log),
                  scale=(3.0, 0.8, 0.8), translate=(-5.0, 2.0, 10.0))
    labels = Layer.create(ThreadedReads(np.zeros((6, 7, 8), np.uint8), log),
                          {"scale": drawn.scale, "translate": drawn.translate}, "labels")
    log.clear()
    got = [geometry_of_layer(loaded), geometry_of_layer(drawn), geometry_of_layer(labels, reference=drawn)]
    assert log == []
    want = [volume_from_layer(loaded), volume_from_layer(drawn), volume_from_layer(labels, reference=drawn)]
    for g, w in zip(got, want):
        assert g.spatial_shape == w.spatial_shape and g.data.strides == (0, 0, 0)
        np.testing.assert_allclose(g.affine, w.affine)
        np.testing.assert_allclose(g.file_affine, w.file_affine)
        for zyx in [(0, 0, 0), (2, 3, 4), (5, 6, 7)]:
            assert g.array_to_file_index(zyx) == w.array_to_file_index(zyx)
    assert got[1].spacing == (3.0, 0.8, 0.8)


def test_the_augment_dock_reads_lazy_layers_only_on_workers(make_napari_viewer, sample_pair, qtbot):
    image, mask = sample_pair
    log: list = []
    labels_array = mask.data.copy()
    viewer = make_napari_viewer(show=True)
    img = viewer.add_image(ThreadedReads(image.data, log), name="t1", scale=image.spacing, translate=image.origin,
                           contrast_limits=(0.0, float(image.data.max())))
    lab = viewer.add_labels(ThreadedReads(labels_array, log), name="seg", scale=image.spacing,
                            translate=image.origin)
    log.clear()  # napari's own reads while adding the layers are not the dock's
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.model is not None and widget.model.augmenter is not None and not widget.busy
                    and SERIES in viewer.layers, timeout=60000)
    assert widget._label_values == [int(v) for v in np.unique(labels_array) if v]
    assert log and not any(log), "a lazy layer was read whole on the viewer's thread"

    # the gaussian kind starts from the middle of the driving labels, found on a worker
    log.clear()
    f = widget.form.fields
    f["kind"].value = "gaussian"
    qtbot.waitUntil(lambda: f["center"].value.strip() != "" and widget.model.augmenter.kind.name == "gaussian"
                    and not widget.busy and not widget._field_timer.isActive(), timeout=60000)
    middle = np.round(np.argwhere(labels_array > 0).mean(axis=0))
    np.testing.assert_allclose([float(v) for v in f["center"].value.split(",")], image.array_to_file_index(middle))
    np.testing.assert_allclose(widget.model.augmenter.kind.center, middle)
    assert "not updated" not in widget.w["status"].value
    assert log and not any(log)

    # a click that picks the centre maps the voxel from the layer's geometry alone
    log.clear()
    widget._toggle_pick()
    target = (40, 110, 100)
    widget._pick_centre(img, SimpleNamespace(position=img.data_to_world(target)))
    np.testing.assert_allclose([float(v) for v in f["center"].value.split(",")], image.array_to_file_index(target))
    assert log == []

    # an edit of the labels (a new label 5) is counted on a worker, then drives the field
    log.clear()
    old = widget.model.augmenter
    labels_array[60:70, 100:110, 90:100] = 5
    lab.events.data(value=lab.data, action="changed", data_indices=(), vertex_indices=())
    qtbot.waitUntil(lambda: 5 in widget._label_values and widget.model.augmenter is not old and not widget.busy,
                    timeout=60000)
    assert 5 in widget.model.augmenter.label_values
    assert log and not any(log)
    widget.wait_idle()


def test_centroid_equals_the_mean_voxel_index(sample_arrays):
    from laugen_napari.core.labels import centroid

    _, labels, _ = sample_arrays
    for mask in (labels > 0, labels == 1, labels[:, :, :60] > 0, np.zeros((3, 4, 5), bool)):
        got, pts = centroid(mask), np.argwhere(mask)
        if len(pts):
            np.testing.assert_allclose(got, pts.mean(axis=0), rtol=0, atol=1e-9)
        else:
            assert got is None


def test_the_export_dock_reads_lazy_layers_on_its_worker(make_napari_viewer, lps_pair, tmp_path, qtbot, monkeypatch):
    """Exporting lazy layers: the same bytes as `laugen generate` on the files, every whole read on
    the worker; an empty lazy labels layer is reported from the worker, nothing written."""
    import nibabel as nib

    from laugen_napari.cli import main as laugen
    from laugen_napari.settings import GenerationSettings
    from laugen_napari.ui import export_widget as module

    monkeypatch.setenv("LAUGEN_SETTINGS_DIR", str(tmp_path / "config"))
    shown: list = []
    monkeypatch.setattr(module, "show_error", shown.append)
    log: list = []
    viewer = make_napari_viewer()
    image, labels = _open(viewer, *lps_pair)
    labels_array = np.asarray(labels.data).copy()
    image.data = ThreadedReads(np.asarray(image.data), log)
    labels.data = ThreadedReads(labels_array, log)
    widget = module.ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="LAUGEN export")
    widget.options_provider = lambda: GenerationSettings(frames=3, slope_range=(0.6, 0.6), sigma_mm=2.5, seed=4,
                                                         device="cpu")
    widget.image.value, widget.labels.value = image, labels
    widget.outdir.value = tmp_path / "gui"
    log.clear()
    assert widget.export_series() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.last_error is None, widget.last_error
    assert log and not any(log), "a lazy layer was read whole on the viewer's thread"
    assert laugen(["generate", str(lps_pair[0]), str(lps_pair[1]), "-o", str(tmp_path / "cli"), "-q", "--frames", "3",
                   "--slope-range", "0.6", "0.6", "--sigma-mm", "2.5", "--seed", "4", "--device", "cpu"]) == 0
    for name in ("image_series.nii.gz", "mask_series.nii.gz"):
        gui, cli = nib.load(str(tmp_path / "gui" / name)), nib.load(str(tmp_path / "cli" / name))
        assert np.asarray(gui.dataobj).tobytes() == np.asarray(cli.dataobj).tobytes()
        np.testing.assert_array_equal(gui.affine, cli.affine)

    labels_array[:] = 0
    log.clear()
    widget.outdir.value = tmp_path / "empty"
    assert widget.export_series() is not None  # the emptiness of a lazy layer is found on the worker
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert isinstance(widget.last_error, ValueError) and "is empty" in shown[-1]
    assert not (tmp_path / "empty").exists() and not any(log)


def test_the_segment_dock_reads_a_lazy_image_on_its_worker(make_napari_viewer, qtbot):
    from test_segment_dock import SCALE, TRANSLATE, click_layer, cuboid, wait, world

    from laugen_napari.ui.segment_dock import SegmentWidget

    log: list = []
    viewer = make_napari_viewer()
    viewer.add_image(ThreadedReads(cuboid(), log), name="scan", scale=SCALE, translate=TRANSLATE,
                     contrast_limits=(0, 255))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="LAUGEN segment")
    widget.image_combo.setCurrentText("scan")
    labels = widget.add_labels_layer()
    click_layer(viewer, widget, [world((5, 20, 20))])
    log.clear()
    assert widget.run(volume=True) is not None
    wait(qtbot, widget)
    assert np.array_equal(labels.data, (cuboid() > 100).astype(labels.data.dtype))
    assert log and not any(log), "the lazy image was read whole on the viewer's thread"
