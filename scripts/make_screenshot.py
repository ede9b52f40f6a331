"""Take docs/workbench.png: the sample in napari with the LAUGEN augment panel (run under Xvfb).

Usage: xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshot.py
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    viewer.open_sample("laugen-napari", "mni152")
    _, widget = viewer.window.add_plugin_dock_widget("laugen-napari", "LAUGEN augment")
    app = QApplication.instance()
    t0 = time.time()
    while (widget.model is None or widget.model.augmenter is None or widget.busy) and time.time() - t0 < 60:
        app.processEvents()
        time.sleep(0.02)
    widget.w["slope_min"].value = widget.w["slope_max"].value = 0.45
    labels = widget.model.labels
    z = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    step = list(viewer.dims.current_step)
    step[0], step[1] = 7, z
    viewer.dims.current_step = tuple(step)
    viewer.reset_view()
    viewer.camera.zoom *= 1.6
    for _ in range(100):
        app.processEvents()
        time.sleep(0.02)
    widget.wait_idle()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    out = ROOT / "docs" / "workbench.png"
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    viewer.close()


if __name__ == "__main__":
    main()
