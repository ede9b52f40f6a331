"""Take the README screenshots of the workbench (run under Xvfb), in anatomical orientation:

- docs/workbench.png: the sample in napari with the LAUGEN augment dock, axial view (anterior up,
  radiological convention, orientation letters), last frame of a series growing the ventricles;
- docs/difference.png: the same view with the difference overlay I_t - I_0 over the anatomy;
- docs/coronal.png: the coronal view (superior up) of the same frame.

Usage: xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshot.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from laugen_napari.ui.orientation import camera

ROOT = Path(__file__).resolve().parents[1]


def pump(app, seconds: float) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def close_toasts(viewer) -> None:
    """Close napari's notification pop-ups (e.g. a Qt-binding deprecation notice) before a shot."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # pragma: no cover
        return
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def main() -> None:
    # never read or overwrite the user's remembered panel settings
    os.environ.setdefault("LAUGEN_NAPARI_CONFIG_DIR", tempfile.mkdtemp(prefix="laugen-screenshot-"))
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    viewer.open_sample("laugen-napari", "mni152")
    _, widget = viewer.window.add_plugin_dock_widget("laugen-napari", "LAUGEN augment")
    app = QApplication.instance()
    t0 = time.time()
    while (widget.model is None or widget.model.augmenter is None or widget.busy) and time.time() - t0 < 120:
        pump(app, 0.05)
    widget.w["slope_min"].value = widget.w["slope_max"].value = 0.45
    widget.w["plane"].value = "axial"
    widget.w["convention"].value = "radiological"
    labels = widget.model.labels
    z = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    step = list(viewer.dims.current_step)
    step[0], step[1] = widget.model.frames - 1, z
    viewer.dims.current_step = tuple(step)
    viewer.reset_view()
    camera(viewer).zoom *= 1.3
    pump(app, 2)
    widget.wait_idle()
    pump(app, 0.5)
    shots = ROOT / "docs"
    close_toasts(viewer)
    pump(app, 0.3)
    viewer.screenshot(str(shots / "workbench.png"), canvas_only=False, flash=False)
    print(f"wrote {shots / 'workbench.png'}")
    widget.w["show_difference"].value = True
    viewer.layers["LAUGEN mask series"].visible = False
    pump(app, 1)
    widget.wait_idle()
    viewer.screenshot(str(shots / "difference.png"), canvas_only=True, flash=False)
    print(f"wrote {shots / 'difference.png'}")
    widget.w["show_difference"].value = False
    viewer.layers["LAUGEN mask series"].visible = True
    widget.w["plane"].value = "coronal"
    y = int(np.argmax((labels > 0).sum(axis=(0, 2))))
    step = list(viewer.dims.current_step)
    step[2] = y
    viewer.dims.current_step = tuple(step)
    viewer.reset_view()
    camera(viewer).zoom *= 1.3
    pump(app, 1.5)
    widget.wait_idle()
    viewer.screenshot(str(shots / "coronal.png"), canvas_only=True, flash=False)
    print(f"wrote {shots / 'coronal.png'}")
    viewer.close()


if __name__ == "__main__":
    main()
