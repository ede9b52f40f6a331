"""A clinician's display, checked on the canvas (Xvfb screenshots): anatomical orientation in the
three planes, radiological / neurological convention, orientation letters, the difference overlay."""

import numpy as np
import pytest

from laugen_napari.ui import orientation
from laugen_napari.ui.augment_widget import DIFF, MASKS, SERIES, AugmentWidget

SHAPE = (40, 48, 44)  # Z (inferior -> superior), Y (posterior -> anterior), X (left -> right)


@pytest.fixture(autouse=True)
def _config(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUGEN_SETTINGS_DIR", str(tmp_path / "config"))


def _phantom():
    """A dim box with three bright markers: anterior (high y), right (high x), superior (high z),
    and a label blob in the middle for the dock."""
    image = np.zeros(SHAPE, np.float32)
    image[4:-4, 4:-4, 4:-4] = 100.0
    z, y, x = (n // 2 for n in SHAPE)
    image[z - 2:z + 3, -10:-6, x - 2:x + 3] = 1000.0  # anterior
    image[z - 2:z + 3, y - 2:y + 3, -10:-6] = 1000.0  # right
    image[-10:-6, y - 2:y + 3, x - 2:x + 3] = 1000.0  # superior
    labels = np.zeros(SHAPE, np.uint8)
    labels[z - 4:z + 4, y - 4:y + 4, x - 10:x - 4] = 1
    return image, labels


@pytest.fixture
def phantom_dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    image, labels = _phantom()
    viewer.add_image(image, name="phantom", contrast_limits=(0, 1000))
    viewer.add_labels(labels, name="phantom_seg")
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.model is not None and widget.model.augmenter is not None, timeout=30000)
    for name in (MASKS, DIFF, "phantom_seg"):
        viewer.layers[name].visible = False
    yield viewer, widget
    widget.wait_idle()


def _bright(viewer, plane, z=None):
    """Centre of mass (row, col) in [0, 1] of the bright pixels of the canvas, in the plane through
    the markers."""
    mid = {"axial": 1, "coronal": 2, "sagittal": 3}[plane]
    step = list(viewer.dims.current_step)
    step[mid] = SHAPE[mid - 1] // 2
    viewer.dims.current_step = tuple(step)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    bright = shot.min(axis=-1) > 200  # white markers; the box is grey, the letters are yellow
    rows, cols = np.nonzero(bright)
    assert rows.size > 20, f"no marker on the canvas in the {plane} view"
    return rows.mean() / shot.shape[0], cols.mean() / shot.shape[1], shot


def test_axial_anterior_up_and_radiological_right_on_the_left(phantom_dock):
    viewer, widget = phantom_dock
    widget.w["plane"].value = "axial"
    widget.w["convention"].value = "radiological"
    image = viewer.layers["phantom"]
    # only the anterior marker in this plane: it lies in the upper half
    image.data[:, :, -10:-6] = np.where(image.data[:, :, -10:-6] > 500, 100, image.data[:, :, -10:-6])
    image.refresh()
    viewer.layers[SERIES].visible = False
    row, col, _ = _bright(viewer, "axial")
    assert row < 0.4 and 0.4 < col < 0.6
    assert widget.letters.letters() == {"top": "A", "bottom": "P", "left": "R", "right": "L"}


def test_right_marker_side_follows_the_convention(phantom_dock):
    viewer, widget = phantom_dock
    viewer.layers[SERIES].visible = False
    image = viewer.layers["phantom"]
    image.data[:, -10:-6, :] = np.where(image.data[:, -10:-6, :] > 500, 100, image.data[:, -10:-6, :])
    image.data[-10:-6] = np.where(image.data[-10:-6] > 500, 100, image.data[-10:-6])
    image.refresh()
    widget.w["plane"].value = "axial"
    widget.w["convention"].value = "radiological"
    _, col, _ = _bright(viewer, "axial")
    assert col < 0.4  # the patient's right on the screen's left
    widget.w["convention"].value = "neurological"
    _, col, _ = _bright(viewer, "axial")
    assert col > 0.6
    assert widget.letters.letters()["right"] == "R"


def test_coronal_and_sagittal_superior_up(phantom_dock):
    viewer, widget = phantom_dock
    viewer.layers[SERIES].visible = False
    image = viewer.layers["phantom"]
    # keep only the superior marker
    keep = np.zeros(SHAPE, bool)
    keep[-10:-6] = True
    image.data[(image.data > 500) & ~keep] = 100
    image.refresh()
    for plane in ("coronal", "sagittal"):
        widget.w["plane"].value = plane
        assert orientation.displayed_plane(viewer) == plane
        row, col, _ = _bright(viewer, plane)
        assert row < 0.4 and 0.35 < col < 0.65, plane
        letters = widget.letters.letters()
        assert letters["top"] == "S" and letters["bottom"] == "I"
    assert widget.letters.letters()["left"] == "A"  # sagittal: anterior on the left


def test_orientation_letters_are_drawn_on_the_canvas(phantom_dock):
    viewer, widget = phantom_dock
    widget.w["plane"].value = "axial"
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    for overlay in widget.letters.overlays.values():
        overlay.visible = False
    bare = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    changed = np.abs(shot - bare).sum(-1) > 60
    h, w = changed.shape
    assert changed[: h // 8, w // 3: 2 * w // 3].any()  # top letter
    assert changed[-h // 8:, w // 3: 2 * w // 3].any()  # bottom letter
    assert changed[h // 3: 2 * h // 3, : w // 8].any() and changed[h // 3: 2 * h // 3, -w // 8:].any()
    viewer.dims.ndisplay = 3
    assert all(not o.visible for o in widget.letters.overlays.values())  # no letters in 3D


def test_difference_overlay_keeps_the_anatomy_visible(make_napari_viewer, sample_pair, qtbot):
    image, mask = sample_pair
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image.data, name="t1", scale=image.spacing, translate=image.origin)
    viewer.add_labels(mask.data, name="seg", scale=image.spacing, translate=image.origin)
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.model is not None and widget.model.augmenter is not None, timeout=30000)
    viewer.layers[MASKS].visible = viewer.layers["seg"].visible = False
    z = int(np.argmax((mask.data > 0).sum(axis=(1, 2))))
    step = list(viewer.dims.current_step)
    step[0], step[1] = 0, z
    viewer.dims.current_step = tuple(step)
    viewer.reset_view()
    anatomy = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    widget.w["show_difference"].value = True
    assert viewer.layers[DIFF].visible
    with_overlay = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert np.abs(with_overlay - anatomy).max() <= 2  # frame 0: difference 0 -> fully transparent
    step[0] = 7
    viewer.dims.current_step = tuple(step)
    widget.w["show_difference"].value = False
    anatomy7 = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    widget.w["show_difference"].value = True
    overlay7 = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    changed = np.abs(overlay7 - anatomy7).sum(-1) > 30
    assert changed.any()  # colour where the ventricles moved...
    assert changed.mean() < 0.05  # ...and the anatomy everywhere else
    widget.wait_idle()


def test_exported_movie_is_in_anatomical_orientation(phantom_dock, tmp_path, qtbot):
    """The movie shows the plane as the viewer does: anterior up, the patient's right on the left
    (radiological), letters at the edges."""
    import imageio.v3 as iio

    from laugen_napari.ui.export_widget import ExportWidget

    viewer, widget = phantom_dock
    image = viewer.layers["phantom"]
    keep = np.zeros(SHAPE, bool)
    keep[:, -10:-6] = True  # the anterior marker only...
    keep[:, :, -10:-6] = True  # ...and the right one
    keep[-10:-6] = False
    image.data[(image.data > 500) & ~keep] = 100
    widget.w["plane"].value = "axial"
    widget.w["convention"].value = "radiological"
    qtbot.waitUntil(lambda: widget.model.augmenter is not None and not widget.busy, timeout=30000)
    step = list(viewer.dims.current_step)
    step[1] = SHAPE[0] // 2
    viewer.dims.current_step = tuple(step)
    export = ExportWidget(viewer)
    export.movie_series.value = viewer.layers[SERIES]
    export.movie_labels.value = None
    export.movie_path.value = tmp_path / "axial.gif"
    assert export.export_movie() is not None
    qtbot.waitUntil(lambda: not export.busy, timeout=60000)
    assert export.last_error is None, export.last_error
    frame = iio.imread(tmp_path / "axial.gif", index=0)[..., :3].astype(int)
    panel = frame[40:-14, 12:-12]  # below the title line, inside the margins
    white = panel.min(axis=-1) > 200
    rows, cols = np.nonzero(white)
    h, w = white.shape
    anterior = cols > 0.35 * w  # the right marker is at the far left; the anterior one near the middle
    right = cols < 0.3 * w
    assert anterior.any() and right.any()
    assert rows[anterior].mean() < 0.4 * h  # anterior up
    assert 0.35 * h < rows[right].mean() < 0.65 * h  # the patient's right: left, at mid height
    yellow = (panel[..., 0] > 200) & (panel[..., 2] < 120)
    assert yellow[: h // 6].any() and yellow[-h // 6:].any()  # letters A (top) and P (bottom)
