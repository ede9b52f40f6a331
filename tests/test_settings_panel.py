"""One settings model: the augment panel, `laugen generate` and the API agree on every default,
and the panel's widgets carry the model's labels, limits and choices."""


import pytest

from laugen_napari.cli import build_parser
from laugen_napari.settings import (
    GenerationSettings,
    setting_fields,
    settings_from_args,
)
from laugen_napari.ui.settings_form import SettingsForm, settings_summary


@pytest.fixture(autouse=True)
def _config(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUGEN_SETTINGS_DIR", str(tmp_path / "config"))


def _cli_defaults() -> GenerationSettings:
    args = build_parser().parse_args(["generate", "image.nii.gz", "mask.nii.gz", "-o", "out"])
    return settings_from_args(args)


def test_panel_default_equals_cli_default_equals_api_default(qtbot):
    api = GenerationSettings().validate()
    cli = _cli_defaults()
    form = SettingsForm(exclude=())
    qtbot.addWidget(form.native)
    panel = form.settings()
    for sf in setting_fields():
        assert getattr(panel, sf.name) == getattr(cli, sf.name) == getattr(api, sf.name) == sf.default, sf.name


def test_widgets_carry_the_model_limits_choices_and_units(qtbot):
    form = SettingsForm(exclude=())
    qtbot.addWidget(form.native)
    for sf in setting_fields():
        p = sf.param
        w = form.fields[sf.name]
        assert w.label == sf.label
        if p.choices is not None:
            assert tuple(w.choices) == tuple(p.choices)
        elif p.length == 2:
            lo = form.fields[sf.name.replace("_range", "") + "_min"]
            assert (lo.min, lo.max, lo.step) == (p.minimum, p.maximum, p.step)
        elif p.minimum is not None and p.length is None:
            assert (w.min, w.max) == (p.minimum, p.maximum), sf.name
    assert form.fields["sigma_mm"].label == "sigma (mm)" and form.fields["slope_range"].label == "slope range (mm/frame)"


@pytest.mark.parametrize("trajectory, rate", [("sigmoid", 1.0), ("exponential", 0.3), ("gompertz", 0.5)])
def test_rate_shows_the_trajectory_default_and_stays_unset(qtbot, trajectory, rate):
    form = SettingsForm(exclude=())
    qtbot.addWidget(form.native)
    form.fields["trajectory"].value = trajectory
    assert form.fields["rate"].value == pytest.approx(rate)
    s = form.settings()
    assert s.rate is None and s.effective_rate() == pytest.approx(rate)
    cli = settings_from_args(build_parser().parse_args(["generate", "i.nii", "m.nii", "-o", "o", "--trajectory", trajectory]))
    assert s == cli
    form.fields["rate"].value = rate + 0.25
    assert form.settings().rate == pytest.approx(rate + 0.25)


def test_errors_name_the_field_never_a_flag(qtbot):
    form = SettingsForm(exclude=())
    qtbot.addWidget(form.native)
    form.fields["kind"].value = "gaussian"
    with pytest.raises(ValueError, match=r"^center: ") as err:
        form.settings()
    assert "--" not in str(err.value)
    form.fields["center"].value = "1, 2"
    with pytest.raises(ValueError, match=r"^center: expected 3"):
        form.settings()
    form.fields["kind"].value = "uniform"
    form.fields["trajectory"].value = "custom"
    form.fields["values"].value = "0, 1, 2 mm"
    with pytest.raises(ValueError, match=r"^values: ") as err:
        form.settings()
    assert "--" not in str(err.value)


def test_the_slope_range_is_a_range(qtbot):
    """Dragging one end of the range past the other pushes the other along (never MIN > MAX)."""
    form = SettingsForm(exclude=())
    qtbot.addWidget(form.native)
    lo, hi = form.fields["slope_min"], form.fields["slope_max"]
    lo.value = 0.5
    assert hi.value == 0.5 and form.settings().slope_range == (0.5, 0.5)
    hi.value = 0.2
    assert lo.value == 0.2 and form.settings().slope_range == (0.2, 0.2)
    lo.value, hi.value = -0.3, 0.7
    assert form.settings().slope_range == (-0.3, 0.7)


def test_set_settings_round_trip_and_summary_shows_only_what_applies(qtbot):
    form = SettingsForm(exclude=())
    qtbot.addWidget(form.native)
    s = GenerationSettings(kind="directional", direction=(0, 1, 0), trajectory="sigmoid", midpoint=2.5, frames=6,
                           rate=2.0, labels=(1, 3), label_interpolation="nearest", series=3).validate()
    form.set_settings(s)
    assert form.settings() == s
    text = settings_summary(s)
    assert "direction: 0, 1, 0" in text and "midpoint (frames): 2.5" in text and "rate (1/frame): 2" in text
    assert "center" not in text and "spread" not in text and "values" not in text
    assert form.fields["center"].native.isHidden() and not form.fields["direction"].native.isHidden()


def test_a_custom_trajectory_hides_what_it_ignores(qtbot):
    form = SettingsForm(exclude=())
    qtbot.addWidget(form.native)
    form.fields["trajectory"].value = "custom"
    form.fields["values"].value = "0, 0.5, 2"
    assert form.fields["slope_range"].native.isHidden() and form.fields["seed"].native.isHidden()
    assert not form.fields["frames"].enabled and form.fields["frames"].value == 3
    s = form.settings()
    assert s.frames == 3 and s.values == (0.0, 0.5, 2.0) and s.slope_range == GenerationSettings().slope_range
    text = settings_summary(s)
    assert "slope range" not in text and "seed" not in text and "values (mm): 0, 0.5, 2" in text


def test_no_label_is_cut_in_the_augment_dock_at_its_default_width(make_napari_viewer, qtbot):
    """napari's style sheet draws labels larger than the font magicgui measured them in: every
    label of the form, line by line, fits the width it is given in the real dock, and the dock
    does not need a horizontal scroll bar (the slope range was cut to "slope range (mm/fram")."""
    from qtpy.QtWidgets import QScrollArea

    from laugen_napari.ui.augment_widget import AugmentWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    _, dock = viewer.window.add_plugin_dock_widget("laugen-napari", "LAUGEN augment")
    assert isinstance(dock, AugmentWidget)
    qtbot.wait(300)
    labels = [w._labeled_widget()._label_widget.native for w in dock.form if w._labeled_widget() is not None]
    assert len(labels) >= 10
    for label in labels:
        metrics = label.fontMetrics()
        needed = max(metrics.horizontalAdvance(line) for line in label.text().split("\n"))
        assert needed <= label.contentsRect().width(), (label.text(), needed, label.contentsRect().width())
    slope = dock.form.fields["slope_range"]._labeled_widget()._label_widget.native
    assert slope.text().replace("\n", " ") == "slope range (mm/frame)"
    assert dock.form.fields["slope_range"].label == "slope range (mm/frame)"  # the model's label is unchanged
    scroll = dock.findChild(QScrollArea)
    assert not scroll.horizontalScrollBar().isVisible()
    widths = {label.width() for label in labels if label.isVisible()}
    assert len(widths) == 1  # one label column: the fields stay aligned
    dock.wait_idle()
