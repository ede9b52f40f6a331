"""Every LAUGEN dock is usable on a 1280x800 screen: the four manifest widgets opened together
(stacked in napari's right dock area, as the Plugins menu does) in a viewer of that size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import laugen_napari

SCREEN = (1280, 800)
WIDGETS = ("LAUGEN augment", "LAUGEN export", "LAUGEN segment", "LAUGEN train")


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUGEN_SETTINGS_DIR", str(tmp_path / "settings"))


@pytest.fixture
def laugen_plugin(npe2pm):
    from npe2 import PluginManifest

    npe2pm.register(PluginManifest.from_file(Path(laugen_napari.__file__).parent / "napari.yaml"))
    return npe2pm


def visible_in(widget, container) -> bool:
    """Whether all of ``widget`` is shown inside ``container``'s rectangle (both on screen)."""
    from qtpy.QtCore import QPoint, QRect

    if not widget.isVisible():
        return False
    top_left = widget.mapTo(container, QPoint(0, 0))
    return QRect(QPoint(0, 0), container.size()).contains(QRect(top_left, widget.size()))


def test_four_docks_fit_a_1280x800_screen(make_napari_viewer, laugen_plugin, qtbot, sample_arrays):
    image, mask, spacing = sample_arrays
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="mni152_t1", scale=spacing)
    viewer.add_labels(mask, name="ventricles", scale=spacing)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    docks = {}
    for name in WIDGETS:
        dock, widget = viewer.window.add_plugin_dock_widget("laugen-napari", name)
        docks[name] = (dock, widget)
    window.resize(*SCREEN)
    qtbot.wait(300)
    sizes = {name: (dock.minimumSizeHint().width(), dock.minimumSizeHint().height()) for name, (dock, _) in
             docks.items()}
    print("dock minimum sizes (px):", sizes, "heights:", {n: d.height() for n, (d, _) in docks.items()})
    area = window.centralWidget().height() if window.centralWidget() else SCREEN[1]
    for name, (dock, widget) in docks.items():
        hint = dock.minimumSizeHint()
        assert hint.width() <= SCREEN[0] // 3, f"{name} needs {hint.width()} px of width"
        assert hint.height() <= area, f"{name} needs {hint.height()} px of height"
        assert dock.isVisible()
        # each dock's content got at least the room it asks for
        assert widget.height() >= widget.minimumSizeHint().height(), (name, widget.height(), widget.minimumSizeHint())
    # stacked together they still fit: the window was not pushed past the screen
    assert window.height() <= SCREEN[1] and window.width() <= SCREEN[0]
    total = sum(h for _, h in sizes.values())
    assert total <= SCREEN[1] - window.menuBar().height() - window.statusBar().height(), \
        f"the four docks need {total} px stacked"
    # the train dock's Start and Stop are on screen without scrolling
    train_dock, train = docks["LAUGEN train"]
    for key in ("start", "stop"):
        assert visible_in(train.w[key].native, train_dock), f"{key} is off the dock"
        assert visible_in(train.w[key].native, window), f"{key} is off the window"
    # its plot keeps a legible size (the form and the plot scroll instead of squashing it)
    assert train.plot.height() >= train.plot.minimumHeight() >= 250
    # the segment dock's run buttons are reachable: in its scroll area, which scrolls to them
    _, seg = docks["LAUGEN segment"]
    area_widget = seg.findChild(type(train.scroll))
    from qtpy.QtCore import QPoint

    for button in (seg.slice_btn, seg.volume_btn, seg.cancel_btn):
        area_widget.verticalScrollBar().setValue(button.mapTo(area_widget.widget(), QPoint(0, 0)).y())
        qtbot.wait(50)
        assert visible_in(button, area_widget.viewport()), (button.text(), button.geometry(), seg.width())
    assert area_widget.horizontalScrollBar().value() == 0  # nothing cut off at the sides
    for _, widget in docks.values():  # no dock's content is wider than the dock
        assert widget.minimumSizeHint().width() <= widget.width(), widget
    shot = os.environ.get("LAUGEN_LAYOUT_SHOT")  # where to save a screenshot, for a person to look at
    if shot:
        window.grab().save(shot)
    for _, widget in docks.values():
        if hasattr(widget, "shutdown"):
            widget.shutdown()
