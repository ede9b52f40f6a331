"""The LAUGEN augment dock in a real napari viewer (under Xvfb)."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from laugen_napari.cli import main as laugen
from laugen_napari.io.nifti import load_volume
from laugen_napari.settings import GenerationSettings, setting_fields
from laugen_napari.ui.augment_widget import DIFF, MASKS, SERIES, AugmentWidget

from .conftest import SAMPLE_IMAGE, SAMPLE_MASK


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    """Remembered panel settings go to a temporary folder."""
    folder = tmp_path / "config"
    monkeypatch.setenv("LAUGEN_SETTINGS_DIR", str(folder))
    return folder


def _ready(widget):
    return widget.model is not None and widget.model.augmenter is not None and not widget.busy


@pytest.fixture
def dock(make_napari_viewer, sample_pair, qtbot):
    image, mask = sample_pair
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image.data.copy(), name="t1", scale=image.spacing, translate=image.origin)
    viewer.add_labels(mask.data.copy(), name="seg", scale=image.spacing, translate=image.origin)  # painted below
    _, widget = viewer.window.add_plugin_dock_widget("laugen-napari", "LAUGEN augment")
    assert isinstance(widget, AugmentWidget)
    qtbot.waitUntil(lambda: _ready(widget), timeout=30000)
    yield viewer, widget
    widget.wait_idle()


def _show_plane(viewer, t, z):
    step = list(viewer.dims.current_step)
    step[0], step[1] = t, z
    viewer.dims.current_step = tuple(step)


def _settle(qtbot, widget, key=None):
    qtbot.wait(200)  # debounce timers
    qtbot.waitUntil(lambda: _ready(widget) and not widget._field_timer.isActive(), timeout=30000)
    qtbot.wait(100)
    qtbot.waitUntil(lambda: _ready(widget), timeout=30000)


def test_series_layers_overlay_the_image(dock, sample_pair):
    viewer, widget = dock
    image, _ = sample_pair
    for name in (SERIES, MASKS, DIFF):
        layer = viewer.layers[name]
        assert layer.data.shape == (8,) + image.data.shape
        np.testing.assert_allclose(layer.scale, (1.0,) + image.spacing)
        np.testing.assert_allclose(layer.translate, (0.0,) + image.origin)


def test_widgets_come_from_the_settings_model(dock):
    """Every generation field has a widget with the field's label, tooltip and default; fields that
    do not apply are hidden; rate shows the trajectory's own default."""
    viewer, widget = dock
    form = widget.form
    for sf in setting_fields():
        if sf.name in ("series", "labels"):
            continue
        w = form.fields[sf.name]
        assert w.label == sf.label and sf.param.help in (w.tooltip or "")
    defaults = GenerationSettings()
    shown = widget.current_settings()
    for sf in setting_fields():
        assert getattr(shown, sf.name) == getattr(defaults, sf.name), sf.name  # panel default == API default
    assert form.fields["rate"].native.isHidden() and form.fields["midpoint"].native.isHidden()
    assert form.fields["center"].native.isHidden() and form.fields["direction"].native.isHidden()
    form.fields["trajectory"].value = "gompertz"
    assert not form.fields["rate"].native.isHidden() and form.fields["rate"].value == 0.5
    assert widget.current_settings().rate is None  # the default: as `laugen generate` without --rate
    form.fields["trajectory"].value = "exponential"
    assert form.fields["rate"].value == pytest.approx(0.3)
    form.fields["trajectory"].value = "sigmoid"
    assert not form.fields["midpoint"].native.isHidden() and form.fields["midpoint"].value == 3.5
    form.fields["kind"].value = "gaussian"
    assert not form.fields["center"].native.isHidden() and not widget.w["pick"].native.isHidden()


def test_full_reads_and_the_writer_equal_laugen_generate(dock, tmp_path, qtbot):
    """np.asarray(layer.data), layer.data[t] and the plugin's writer give computed frames, equal to
    the files `laugen generate` writes for the same settings."""
    from laugen_napari.ui.io_hooks import write_image, write_labels

    viewer, widget = dock
    f = widget.form.fields
    f["frames"].value = 4
    f["seed"].value = 7
    f["trajectory"].value = "sigmoid"
    f["slope_min"].value, f["slope_max"].value = 0.6, 0.9
    f["device"].value = "cpu"
    _settle(qtbot, widget)
    assert laugen(["generate", str(SAMPLE_IMAGE), str(SAMPLE_MASK), "-o", str(tmp_path / "cli"), "-q", "--frames", "4",
                   "--seed", "7", "--trajectory", "sigmoid", "--slope-range", "0.6", "0.9", "--device", "cpu"]) == 0
    cli_img = load_volume(tmp_path / "cli" / "image_series.nii.gz").data  # (T, Z, Y, X)
    cli_lab = load_volume(tmp_path / "cli" / "mask_series.nii.gz").data
    series, masks = viewer.layers[SERIES], viewer.layers[MASKS]
    full = np.asarray(series.data)
    assert full.shape == cli_img.shape
    np.testing.assert_array_equal(full, cli_img)
    np.testing.assert_array_equal(np.asarray(masks.data), cli_lab)
    for t in range(4):
        np.testing.assert_array_equal(np.asarray(series.data[t]), cli_img[t])
        assert (np.asarray(masks.data[t]) > 0).sum() == (cli_lab[t] > 0).sum()
    assert (cli_lab[3] > 0).sum() > (cli_lab[0] > 0).sum()  # the structure really grew
    # the plugin's writers write computed frames too
    out_img = write_image(str(tmp_path / "written.nii.gz"), series.data, series._get_state())[0]
    out_lab = write_labels(str(tmp_path / "written_seg.nii.gz"), masks.data, masks._get_state())[0]
    np.testing.assert_array_equal(load_volume(out_img).data, cli_img)
    np.testing.assert_array_equal(load_volume(out_lab).data, cli_lab)


def test_fewer_frames_shrink_the_slider_and_every_layer(dock, qtbot):
    viewer, widget = dock
    widget.w["show_difference"].value = False
    widget.form.fields["frames"].value = 4
    assert viewer.dims.nsteps[0] == 4
    for name in (SERIES, MASKS, DIFF):
        assert viewer.layers[name].data.shape[0] == 4
        assert viewer.layers[name].extent.data[1][0] == 3
    widget.form.fields["trajectory"].value = "custom"
    widget.form.fields["values"].value = "0, 1, 2"
    assert viewer.dims.nsteps[0] == 3 and viewer.layers[DIFF].data.shape[0] == 3
    np.testing.assert_allclose(widget.model.z_mm, [0, 1, 2])


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
    rgba = diff.colormap.map(np.array([0.0, 0.5, 1.0]))
    assert rgba[1, 3] == 0 and rgba[0, 3] == 1 and rgba[2, 3] == 1  # transparent at zero, opaque at the ends
    assert rgba[0, 2] > rgba[0, 0] and rgba[2, 0] > rgba[2, 2]  # diverging: blue below, red above
    widget.w["show_difference"].value = True
    assert diff.visible


def test_3d_display_finds_the_frame_computed_on_a_worker(dock, qtbot, sample_pair):
    """The frame on screen is computed ahead on a worker, so that napari's 3D slicing (on the GUI
    thread) finds it ready; what it shows is the warped frame."""
    import threading

    viewer, widget = dock
    image, _ = sample_pair
    gui = threading.get_ident()
    computed_on = []
    model = widget.model
    original = model.warm_frame

    def spy(t):
        computed_on.append(threading.get_ident())
        return original(t)

    model.warm_frame = spy
    _show_plane(viewer, 6, 90)
    assert not model.is_cached(6)
    qtbot.waitUntil(lambda: model.is_cached(6) and not widget.busy, timeout=30000)
    assert computed_on and gui not in computed_on  # on a worker, while the 2D plane was shown
    viewer.dims.ndisplay = 3
    layer = viewer.layers[SERIES]
    shown = np.asarray(layer._slice.image.raw)
    assert shown.shape[-3:] == image.data.shape
    frame = np.asarray(layer.data[6])
    assert np.array_equal(shown.reshape(image.data.shape), frame)  # the warped frame
    assert not np.array_equal(frame, image.data)
    # in 3D the neighbours are computed ahead for stepping and playing
    qtbot.waitUntil(lambda: model.is_cached(7) and model.is_cached(5) and not widget.busy, timeout=60000)
    assert gui not in computed_on


def test_kind_change_recomputes_the_field_in_a_worker(dock, qtbot, sample_pair):
    viewer, widget = dock
    image, mask = sample_pair
    old = widget.model.augmenter
    zyx = np.argwhere(mask.data == 1)[len(np.argwhere(mask.data == 1)) // 2]
    ijk = image.array_to_file_index(zyx)  # the settings hold a voxel index of the file
    widget.w["centre"].value = ", ".join(f"{v:g}" for v in ijk)
    widget.w["kind"].value = "gaussian"
    qtbot.waitUntil(lambda: widget.model.augmenter is not old, timeout=30000)
    assert widget.model.augmenter.kind.name == "gaussian"
    np.testing.assert_allclose(widget.model.augmenter.kind.center, zyx)
    assert widget.model.augmenter.warper.n_moving < old.warper.n_moving


def test_errors_name_the_field_and_empty_labels_give_a_hint(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    errors = []
    monkeypatch.setattr("laugen_napari.ui.augment_widget.show_error", errors.append)
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="img")
    viewer.add_labels(np.zeros((4, 8, 9), np.uint8), name="lab")
    widget = AugmentWidget(viewer)
    assert errors and "differ in shape" in errors[-1]
    viewer.layers.remove("lab")
    n = len(errors)
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="empty")
    assert len(errors) == n  # a new empty layer is not an error...
    assert "empty" in widget.w["hint"].value and "paint" in widget.w["hint"].value  # ...but a hint
    widget.form.fields["trajectory"].value = "custom"
    widget.form.fields["values"].value = "0, 1, x"
    assert errors[-1].startswith("LAUGEN: values:") and "--" not in errors[-1]
    widget.form.fields["values"].value = "0, 1, 2"
    widget.form.fields["kind"].value = "directional"
    qtbot.wait(250)
    widget.form.fields["direction"].value = "0, 0, 0"
    widget._start_field_worker()
    assert all("--" not in e for e in errors)


def test_paint_and_new_labels_reach_the_dock(dock, qtbot, sample_pair):
    """Painting a new label adds it to 'driving labels' and recomputes the field; removing the
    mask layer removes the stale LAUGEN layers; deselecting every label says what it does."""
    viewer, widget = dock
    seg = viewer.layers["seg"]
    assert widget.w["driving"].value == [1, 2] or list(widget.w["driving"].value) == widget._label_values
    old = widget.model.augmenter
    data = seg.data
    data[60:70, 100:110, 90:100] = 5
    seg.data = data  # as the segment dock fills a layer
    qtbot.waitUntil(lambda: 5 in widget._label_values and widget.model.augmenter is not old, timeout=30000)
    assert 5 in widget.w["driving"].value
    assert 5 in widget.model.augmenter.label_values
    # a brand-new empty labels layer on the image's grid: the dock takes it, with a hint, no error
    new = viewer.add_labels(np.zeros_like(data), name="drawn", scale=seg.scale, translate=seg.translate)
    assert widget.w["labels"].value is new
    assert "empty" in widget.w["hint"].value
    new.data[80:90, 100:110, 90:100] = 1
    new.events.paint()
    new.data = new.data
    qtbot.waitUntil(lambda: widget._label_values == [1] and _ready(widget) and widget._source[1] is new, timeout=60000)
    assert (np.asarray(viewer.layers[MASKS].data[0]) > 0).sum() == 1000
    widget.w["driving"].value = []
    assert "every non-zero label" in widget.w["hint"].value
    viewer.layers.remove(new)
    assert SERIES not in viewer.layers and MASKS not in viewer.layers and DIFF not in viewer.layers
    assert "removed" in widget.w["status"].value


def test_folding_is_reported_with_the_first_frame(dock, qtbot, monkeypatch):
    viewer, widget = dock
    warnings = []
    monkeypatch.setattr("laugen_napari.ui.augment_widget.show_warning", warnings.append)
    f = widget.form.fields
    f["sigma_mm"].value = 1.0
    f["slope_min"].value = f["slope_max"].value = 3.0
    _settle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.folding_frame is not None, timeout=30000)
    curves = widget.model.curves()
    first = next(t for t, j in enumerate(curves["jacobian_min"]) if j <= 0)
    assert widget.folding_frame == first
    assert f"from frame {first} of 8" in widget.w["warning"].value and "folds" in warnings[-1]
    f["slope_min"].value = f["slope_max"].value = 0.05
    _settle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.folding_frame is None, timeout=30000)
    assert widget.w["warning"].value == ""


def test_series_json_reproduces_a_series_and_settings_are_remembered(dock, tmp_path, qtbot, config_dir):
    viewer, widget = dock
    assert laugen(["generate", str(SAMPLE_IMAGE), str(SAMPLE_MASK), "-o", str(tmp_path / "cli"), "-q", "--frames", "5",
                   "--seed", "3", "--trajectory", "gompertz", "--rate", "0.8", "--sigma-mm", "4",
                   "--labels", "1", "--device", "cpu"]) == 0
    loaded = widget.load_series_json(tmp_path / "cli" / "series.json")
    assert loaded is not None
    _settle(qtbot, widget)
    record = json.loads((tmp_path / "cli" / "series.json").read_text())
    assert widget.current_settings().to_record() == record["options"]
    np.testing.assert_allclose(widget.model.z_mm, record["z_mm"])
    cli = load_volume(tmp_path / "cli" / "mask_series.nii.gz").data
    np.testing.assert_array_equal(np.asarray(viewer.layers[MASKS].data[4]), cli[4])
    # the panel remembers: a new dock starts with these settings
    widget.remember_settings()
    assert (config_dir / "augment.json").is_file()
    other = AugmentWidget(viewer)
    assert other.current_settings().to_record() == {**record["options"], "labels": None}
    other.wait_idle()
    other.close()
    assert widget.load_series_json(tmp_path / "cli" / "image_series.nii.gz") is None  # not JSON: a notification


def test_keybindings_step_play_and_toggle_the_difference(dock, qtbot):
    viewer, widget = dock
    keymap = viewer.keymap
    names = {str(k) for k in keymap}
    for key in ("Alt-P", "Shift-Right", "Shift-Left", "Alt-D"):
        assert any(key.replace("-", "+").lower() in n.replace("-", "+").lower() for n in names), (key, names)
    _show_plane(viewer, 2, 90)
    widget.step_frame(1)
    assert viewer.dims.current_step[0] == 3
    widget.step_frame(-1)
    widget.step_frame(-1)
    assert viewer.dims.current_step[0] == 1
    visible = viewer.layers[DIFF].visible
    widget.toggle_difference()
    assert viewer.layers[DIFF].visible != visible
    widget.toggle_play()
    assert widget.playing
    qtbot.waitUntil(lambda: viewer.dims.current_step[0] >= 3, timeout=20000)  # 2 ticks at 4 per second
    widget.toggle_play()
    assert not widget.playing


def test_directional_and_gaussian_start_from_what_the_user_sees(dock, qtbot, sample_pair):
    """Switching to directional takes the axis through the screen; gaussian the middle of the
    driving labels (as a voxel index of the file) — no error for a field the user has not set yet."""
    viewer, widget = dock
    image, mask = sample_pair
    f = widget.form.fields
    f["kind"].value = "directional"
    assert f["direction"].value == "0, 0, 1"  # axial view: the superior-inferior axis
    qtbot.waitUntil(lambda: widget.model.augmenter.kind.name == "directional" and not widget.busy, timeout=30000)
    f["kind"].value = "gaussian"
    middle = np.argwhere(mask.data > 0).mean(axis=0)
    ijk = [float(v) for v in f["center"].value.split(",")]
    np.testing.assert_allclose(ijk, image.array_to_file_index(np.round(middle)))
    qtbot.waitUntil(lambda: widget.model.augmenter.kind.name == "gaussian" and not widget.busy, timeout=30000)
    np.testing.assert_allclose(widget.model.augmenter.kind.center, np.round(middle))
    assert "not updated" not in widget.w["status"].value


def test_a_remembered_gaussian_centre_is_not_carried_to_another_image(make_napari_viewer, sample_pair, qtbot,
                                                                      config_dir):
    """The last settings come back, but a centre is a voxel of the last image: the next image gets
    the middle of its driving labels instead."""
    image, mask = sample_pair
    config_dir.mkdir(parents=True, exist_ok=True)
    record = GenerationSettings(kind="gaussian", center=(999, 999, 999), sigma_mm=4.0, frames=5).validate().to_record()
    (config_dir / "augment.json").write_text(json.dumps({"options": record, "plane": "coronal"}))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image.data, name="t1", scale=image.spacing, translate=image.origin)
    viewer.add_labels(mask.data, name="seg", scale=image.spacing, translate=image.origin)
    widget = AugmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: _ready(widget) and widget.model.augmenter.kind.name == "gaussian", timeout=30000)
    s = widget.current_settings()
    assert s.frames == 5 and s.sigma_mm == 4.0 and s.kind == "gaussian"
    assert all(0 <= c < n for c, n in zip(s.center, image.file_shape))
    assert widget.w["plane"].value == "coronal"
    widget.wait_idle()


def test_preview_model_reads_are_computed_once_and_never_the_input(sample_arrays):
    """Qt-free: a full read of an uncached frame computes it (never the input); two threads asking
    for the same frame compute it once."""
    import threading

    from laugen_napari.core import Augmenter
    from laugen_napari.core.preview import PreviewModel, preview_arrays

    image, labels, spacing = sample_arrays
    crop = (slice(70, 110), slice(90, 150), slice(70, 130))
    aug = Augmenter(image[crop], labels[crop], spacing, device="cpu")
    model = PreviewModel(image[crop], labels[crop])
    model.set_augmenter(aug)
    model.set_trajectory([0.0, 1.5, 3.0])
    calls = []
    original = aug.warper.image_frame

    def counted(z, *a, **k):
        calls.append(z)
        return original(z, *a, **k)

    aug.warper.image_frame = counted
    series, masks, _ = preview_arrays(model)
    threads = [threading.Thread(target=lambda: np.asarray(series[2])) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert calls == [3.0]  # one computation for four readers
    full = np.asarray(series)
    assert calls == [3.0, 1.5]
    np.testing.assert_array_equal(full[0], image[crop])
    np.testing.assert_array_equal(full[2], original(3.0).numpy())
    assert not np.array_equal(full[1], image[crop]) and not np.array_equal(np.asarray(masks[2]), labels[crop])
