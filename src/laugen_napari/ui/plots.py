"""Matplotlib inside napari docks: a small canvas base class, and the series curves drawn off the GUI thread."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

FOREGROUND = "#d6d6d6"
BACKGROUND = "#262930"  # napari's dark theme


class MplCanvas(QWidget):
    """A QWidget holding one matplotlib figure styled for napari's dark theme."""

    def __init__(self, parent: QWidget | None = None, figsize: tuple[float, float] = (4.0, 3.0), nrows: int = 1,
                 ncols: int = 1):
        super().__init__(parent)
        self.figure = Figure(figsize=figsize, facecolor=BACKGROUND, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = [self.figure.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
        for ax in self.axes:
            self.style(ax)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.setMinimumHeight(int(figsize[1] * 60))

    @staticmethod
    def style(ax) -> None:
        ax.set_facecolor(BACKGROUND)
        for spine in ax.spines.values():
            spine.set_color(FOREGROUND)
        ax.tick_params(colors=FOREGROUND, labelsize=7)
        ax.xaxis.label.set_color(FOREGROUND)
        ax.yaxis.label.set_color(FOREGROUND)
        ax.title.set_color(FOREGROUND)

    def redraw(self) -> None:
        self.canvas.draw_idle()


def render_curves(curves: dict, width_px: int = 400, height_px: int = 320, dpi: int = 100) -> np.ndarray:
    """Draw z_t, the volume of each driving label and the lowest Jacobian over frames into an RGBA
    array (H, W, 4). Uses its own Figure and Agg canvas, so it runs on a worker thread and the GUI
    thread only shows the finished image.

    ``curves`` holds ``z_mm`` (list), ``volumes_ml`` ({label: list}) and ``jacobian_min`` (list).
    """
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor=BACKGROUND)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.14, right=0.86, top=0.95, bottom=0.13, hspace=0.3)
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    t = list(range(len(curves.get("z_mm", []))))
    top.plot(t, curves.get("z_mm", []), "o-", color="#f0c040", ms=3)
    top.set_ylabel("z (mm)", fontsize=8)
    twin = top.twinx()
    for label, vols in curves.get("volumes_ml", {}).items():
        twin.plot(t[: len(vols)], vols, "s-", ms=3, label=f"label {label}")
    twin.set_ylabel("volume (mL)", fontsize=8)
    if curves.get("volumes_ml"):
        twin.legend(fontsize=6, loc="upper left", facecolor=BACKGROUND, labelcolor=FOREGROUND)
    jac = curves.get("jacobian_min", [])
    bottom.plot(t[: len(jac)], jac, "o-", color="#60c0f0", ms=3)
    bottom.axhline(0.0, color="#f06060", lw=0.8, ls="--")
    folding = [i for i, j in enumerate(jac) if j <= 0]
    if folding:  # say it in the plot too, not only with the dashed line
        bottom.axvline(folding[0], color="#f06060", lw=0.8)
        bottom.text(folding[0], 0.0, f" folds from frame {folding[0]}", color="#f06060", fontsize=7,
                    va="bottom", ha="left")
    bottom.set_ylabel("min Jacobian", fontsize=8)
    bottom.set_xlabel("frame t", fontsize=8)
    for ax in (top, twin, bottom):
        MplCanvas.style(ax)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


class SeriesCurvesPlot(QLabel):
    """Shows the image made by :func:`render_curves` (drawn off the GUI thread)."""

    def __init__(self, parent: QWidget | None = None, width_px: int = 400, height_px: int = 320):
        super().__init__(parent)
        self.size_px = (width_px, height_px)
        self.setMinimumHeight(height_px // 2)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.rgba: np.ndarray | None = None

    def show_rgba(self, rgba: np.ndarray) -> None:
        """Display an (H, W, 4) uint8 image."""
        self.rgba = np.ascontiguousarray(rgba)
        h, w = self.rgba.shape[:2]
        image = QImage(self.rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
        self.setPixmap(QPixmap.fromImage(image.copy()))
