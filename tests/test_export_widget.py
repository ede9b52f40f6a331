"""The "LAUGEN export" dock in a real napari viewer (Xvfb): series identical to ``laugen generate``
with the augment dock's settings (no form of its own), movies with every frame, no overwrite without
consent, errors as notifications."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from laugen_napari.cli import main as laugen
from laugen_napari.io.movie import count_frames, render_series_frames
from laugen_napari.settings import GenerationSettings
from laugen_napari.ui import io_hooks
from laugen_napari.ui.augment_widget import AugmentWidget
from laugen_napari.ui.export_widget import ExportWidget

SPACING = (0.8, 0.9, 2.5)
SHAPE = (36, 40, 12)  # file axes i, j, k


@pytest.fixture
def lps_pair(tmp_path):
    """A smooth int16 image with two blobs and their labels (1, 2), LPS, anisotropic."""
    i, j, k = np.indices(SHAPE).astype(np.float64)
    world = np.stack([i * SPACING[0], j * SPACING[1], k * SPACING[2]])
    blob1 = ((world[0] - 10) ** 2 + (world[1] - 14) ** 2 + (world[2] - 14) ** 2) < 30
    blob2 = ((world[0] - 20) ** 2 + (world[1] - 22) ** 2 + (world[2] - 15) ** 2) < 20
    image = (300 + 40 * np.sin(world[0] / 3) + 30 * np.cos(world[1] / 4) + 400 * blob1 + 250 * blob2).astype(np.int16)
    labels = (blob1 * 1 + blob2 * 2).astype(np.uint8)
    affine = np.array([[-SPACING[0], 0, 0, 20.0], [0, -SPACING[1], 0, 30.0], [0, 0, SPACING[2], -9.0], [0, 0, 0, 1]])
    paths = []
    for name, data in (("case_t1.nii.gz", image), ("case_seg.nii.gz", labels)):
        img = nib.Nifti1Image(data, affine)
        img.set_sform(affine, code=2)
        img.set_qform(affine, code=1)
        nib.save(img, str(tmp_path / name))
        paths.append(tmp_path / name)
    return paths


def _open(viewer, *paths):
    from napari.layers import Layer

    return [viewer.add_layer(Layer.create(*ld)) for ld in io_hooks.read_nifti([str(p) for p in paths])]


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


@pytest.fixture(autouse=True)
def _config(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUGEN_SETTINGS_DIR", str(tmp_path / "config"))


@pytest.fixture
def bare(make_napari_viewer, lps_pair):
    """The export dock alone (no augment dock)."""
    viewer = make_napari_viewer()
    image, labels = _open(viewer, *lps_pair)
    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="LAUGEN export")
    return viewer, widget, image, labels


@pytest.fixture
def dock(bare, qtbot):
    """The export dock beside an augment dock (whose settings it uses)."""
    viewer, widget, image, labels = bare
    augment = AugmentWidget(viewer)
    viewer.window.add_dock_widget(augment, name="LAUGEN augment")
    widget.augment = augment
    qtbot.waitUntil(lambda: augment.model is not None and augment.model.augmenter is not None, timeout=30000)
    yield viewer, widget, image, labels
    augment.wait_idle()


def _series_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) or [root]


def test_series_match_laugen_generate(dock, lps_pair, tmp_path, qtbot):
    viewer, widget, image_layer, labels_layer = dock
    assert widget.image.value is image_layer and widget.labels.value is labels_layer
    args = ["--frames", "4", "--slope-range", "0.5", "0.9", "--sigma-mm", "2.5", "--seed", "11", "--series", "2",
            "--trajectory", "sigmoid", "--device", "cpu"]
    assert laugen(["generate", str(lps_pair[0]), str(lps_pair[1]), "-o", str(tmp_path / "cli"), "-q", *args]) == 0

    f = widget.augment.form.fields
    f["trajectory"].value = "sigmoid"
    f["frames"].value = 4
    f["slope_min"].value, f["slope_max"].value = 0.5, 0.9
    f["sigma_mm"].value = 2.5
    f["seed"].value = 11
    f["device"].value = "cpu"
    widget.series.value = 2
    widget.refresh_settings_view()
    text = widget.settings_text.value
    assert "trajectory: sigmoid" in text and "sigma (mm): 2.5" in text and "midpoint" in text
    assert "center" not in text and "direction" not in text and "values" not in text  # ignored fields: not shown
    assert "read-only" in widget.settings_note.value and widget.open_augment.native.isHidden()
    widget.outdir.value = tmp_path / "gui"
    assert widget.export_series() is not None
    _wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 1

    cli_dirs, gui_dirs = _series_dirs(tmp_path / "cli"), _series_dirs(tmp_path / "gui")
    assert [d.name for d in cli_dirs] == [d.name for d in gui_dirs] == ["series_000", "series_001"]
    for cdir, gdir in zip(cli_dirs, gui_dirs):
        assert sorted(p.name for p in cdir.iterdir()) == sorted(p.name for p in gdir.iterdir())
        for name in ("image_series.nii.gz", "mask_series.nii.gz"):
            c, g = nib.load(str(cdir / name)), nib.load(str(gdir / name))
            assert c.get_data_dtype() == g.get_data_dtype()
            cd, gd = np.asarray(c.dataobj), np.asarray(g.dataobj)
            assert cd.shape == gd.shape == SHAPE + (4,)
            assert cd.tobytes() == gd.tobytes()  # byte-for-byte voxel data
            np.testing.assert_array_equal(c.affine, g.affine)
            assert c.header.binaryblock == g.header.binaryblock
        cj = json.loads((cdir / "series.json").read_text())
        gj = json.loads((gdir / "series.json").read_text())
        for role in ("image", "mask"):  # same files cited, by content
            assert cj["inputs"][role]["sha256"] == gj["inputs"][role]["sha256"]
            assert Path(cj["inputs"][role]["path"]).resolve() == Path(gj["inputs"][role]["path"]).resolve()
            cj["inputs"][role].pop("path"), gj["inputs"][role].pop("path")
        assert cj == gj
    # the series really moves the structure: the last frame differs from the input near the blobs
    last = np.asarray(nib.load(str(gui_dirs[0] / "image_series.nii.gz")).dataobj)
    assert np.abs(last[..., -1] - last[..., 0]).max() > 10


def test_options_provider_and_edited_labels(bare, tmp_path, qtbot):
    """A provider replaces the fields; labels painted in napari are exported but not cited as the file."""
    viewer, widget, image_layer, labels_layer = bare
    widget.options_provider = lambda: GenerationSettings(frames=3, slope_range=(0.4, 0.4), sigma_mm=2.0, labels=(2,),
                                                         device="cpu")
    assert "sigma (mm): 2" in widget.settings_text.value and "script" in widget.settings_note.value
    labels_layer.data[labels_layer.data == 1] = 0
    widget.outdir.value = tmp_path / "edited"
    widget.export_series()
    _wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    rec = json.loads((tmp_path / "edited" / "series.json").read_text())
    assert rec["frames"] == 3 and rec["labels"] == [2] and rec["options"]["sigma_mm"] == 2.0
    assert "mask" not in rec["inputs"] and "image" in rec["inputs"]
    mask = np.asarray(nib.load(str(tmp_path / "edited" / "mask_series.nii.gz")).dataobj)
    assert not np.any(mask == 1) and np.any(mask == 2)


def test_overwrite_needs_consent(dock, tmp_path, qtbot):
    viewer, widget, *_ = dock
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    widget.augment.form.fields["frames"].value = 2
    widget.augment.form.fields["sigma_mm"].value = 2.0
    widget.outdir.value = out
    asked = []
    widget.confirm_overwrite = lambda path: asked.append(Path(path)) or False
    assert widget.export_series() is None
    assert asked == [out] and not widget.busy
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    widget.confirm_overwrite = lambda path: True
    assert widget.export_series() is not None
    _wait(qtbot, widget)
    assert widget.last_error is None
    assert sorted(p.name for p in out.iterdir()) == ["image_series.nii.gz", "mask_series.nii.gz", "series.json"]


def test_errors_are_notifications(dock, tmp_path, monkeypatch, qtbot):
    from laugen_napari.ui import export_widget as module

    viewer, widget, image_layer, labels_layer = dock
    shown = []
    monkeypatch.setattr(module, "show_error", lambda msg: shown.append(msg))
    widget.outdir.value = tmp_path / "nope"
    # a failure inside the worker (a gaussian centre outside the image) is reported, nothing written
    widget.augment.form.fields["center"].value = "500, 1, 1"
    widget.augment.form.fields["kind"].value = "gaussian"
    assert widget.export_series() is not None
    _wait(qtbot, widget)
    assert isinstance(widget.last_error, ValueError) and "outside the image" in shown[-1]
    assert widget.series_button.enabled and not (tmp_path / "nope").exists()
    widget.augment.form.fields["kind"].value = "uniform"
    viewer.add_labels(np.zeros((5, 6, 7), np.uint8), name="small")
    widget.labels.value = viewer.layers["small"]
    assert widget.export_series() is None
    assert "not on the same grid" in shown[-1]
    widget.labels.value = labels_layer
    labels_layer.data[:] = 0
    assert widget.export_series() is None and "is empty" in shown[-1]
    viewer.layers.remove(labels_layer)
    assert widget.labels.value is viewer.layers["small"]  # the list follows the layers
    viewer.layers.remove("small")
    assert widget.labels.value is None
    assert widget.export_series() is None and "choose a labels layer" in shown[-1]
    assert widget.export_movie() is None and "choose a series layer" in shown[-1]
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_movie_of_the_current_view(bare, tmp_path, qtbot, suffix):
    viewer, widget, image_layer, labels_layer = bare
    img = np.asarray(image_layer.data, np.float32)
    frames = 5
    series = np.stack([img + 7 * t * (labels_layer.data > 0) for t in range(frames)])
    masks = np.stack([labels_layer.data] * frames)
    from laugen_napari.ui.layers import series_layer_kwargs

    series_layer = viewer.add_image(series, name="series", **series_layer_kwargs(image_layer))
    viewer.add_labels(masks, name="mask series", **series_layer_kwargs(image_layer))
    np.testing.assert_allclose(series_layer.scale[1:], image_layer.scale)
    np.testing.assert_allclose(series_layer.translate[1:], image_layer.translate)
    assert widget.movie_series.value is series_layer and widget.movie_labels.value is viewer.layers["mask series"]
    viewer.dims.set_point(1, series_layer.data_to_world((0, 5, 0, 0))[1])  # slice z = 5
    widget.difference.value = "first"
    path = tmp_path / f"demo{suffix}"
    widget.movie_path.value = path
    assert widget.export_movie() is not None
    _wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert path.is_file() and count_frames(path) == frames
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo")]  # no temporary left

    before = path.read_bytes()
    widget.confirm_overwrite = lambda p: False
    assert widget.export_movie() is None
    assert path.read_bytes() == before


def test_render_difference_is_zero_at_frame_0():
    """The difference panel is neutral at frame 0 and coloured where the structure moved later."""
    rng = np.random.default_rng(0)
    base = rng.normal(100, 5, (40, 50)).astype(np.float32)
    images = np.stack([base, base, base])
    images[1, 10:20, 10:20] += 30
    images[2, 10:20, 10:20] -= 30
    labels = np.zeros(images.shape, np.uint8)
    labels[:, 10:20, 10:20] = 1
    rgb = render_series_frames(images, labels, pixel_mm=(1.0, 1.0), difference="first", panel_px=200)
    assert rgb.shape[0] == 3 and rgb.dtype == np.uint8
    h, w = rgb.shape[1:3]
    right = rgb[:, :, w // 2: w - 90].astype(int)  # the difference panel, without the colour bar
    colour = np.abs(right[..., 0] - right[..., 2])
    assert colour[0].max() < 15  # frame 0: I_0 - I_0 = 0 everywhere, near-white
    # red where the image grew brighter (frame 1), blue where darker (frame 2), in a 10x10 mm square
    red = (right[1, ..., 0] - right[1, ..., 2]) > 50
    blue = (right[2, ..., 2] - right[2, ..., 0]) > 50
    assert not ((right[1, ..., 2] - right[1, ..., 0]) > 50).any() and not ((right[2, ..., 0] - right[2, ..., 2]) > 50).any()
    px_per_mm = 200 / 40
    for region in (red, blue):
        assert region.sum() == pytest.approx((10 * px_per_mm) ** 2, rel=0.15)


def test_without_an_augment_dock_it_says_so_and_opens_one(bare, tmp_path, qtbot, monkeypatch):
    from laugen_napari.ui import export_widget as module

    viewer, widget, *_ = bare
    shown = []
    monkeypatch.setattr(module, "show_error", lambda msg: shown.append(msg))
    assert "no LAUGEN augment dock" in widget.settings_note.value and widget.settings_text.value == ""
    assert not widget.open_augment.native.isHidden()
    widget.outdir.value = tmp_path / "out"
    assert widget.export_series() is None and "open the LAUGEN augment dock" in shown[-1]
    widget.open_augment.changed.emit(None)  # the button
    augment = widget._augment_panel()
    assert isinstance(augment, AugmentWidget)
    qtbot.waitUntil(lambda: augment.model is not None and augment.model.augmenter is not None, timeout=30000)
    widget.refresh_settings_view()
    assert "kind: uniform" in widget.settings_text.value and widget.open_augment.native.isHidden()
    augment.wait_idle()


def test_movie_titles_name_the_slice_in_mm_and_count_frames_from_one(dock, tmp_path, qtbot, monkeypatch):
    from laugen_napari.io import movie
    from laugen_napari.ui import export_widget as module

    viewer, widget, image_layer, _ = dock
    augment = widget.augment
    series = viewer.layers["LAUGEN series"]
    widget.movie_series.value = series
    widget.movie_labels.value = viewer.layers["LAUGEN mask series"]
    viewer.dims.set_point(1, -1.5)  # an axial plane 1.5 mm below the origin
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return movie.series_movie(*args, **kwargs)

    monkeypatch.setattr(module, "series_movie", spy)
    widget.movie_path.value = tmp_path / "m.gif"
    assert widget.export_movie() is not None
    _wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    z_world = float(viewer.dims.point[1])
    assert f"z = {z_world:.1f} mm" in seen["title"] and "axial" in seen["title"]
    np.testing.assert_allclose(seen["z_mm"], augment.model.z_mm)
    assert seen["edge_letters"] == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert count_frames(tmp_path / "m.gif") == augment.model.frames
    assert movie.frame_stamp("LAUGEN series", 7, 8, 2.1) == "LAUGEN series  frame 8 of 8  z_t = +2.10 mm"


def test_the_dock_remembers_its_choices(bare, tmp_path):
    viewer, widget, *_ = bare
    widget.series.value = 3
    widget.fps.value = 7.5
    widget.difference.value = "previous"
    widget.outdir.value = tmp_path / "exports"
    again = ExportWidget(viewer)
    assert again.series.value == 3 and again.fps.value == 7.5 and again.difference.value == "previous"
    assert str(again.outdir.value) == str(tmp_path / "exports")
    assert (tmp_path / "config" / "export.json").is_file()
