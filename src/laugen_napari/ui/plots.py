"""Matplotlib inside napari docks: a small canvas base class and the series curves plot."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QVBoxLayout, QWidget

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


class SeriesCurvesPlot(MplCanvas):
    """z_t, the volume of each driving label, and the lowest Jacobian determinant, over frames."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, figsize=(4.0, 3.2), nrows=2)

    def show_curves(self, curves: dict) -> None:
        """Plot a dict with ``z_mm`` (list), ``volumes_ml`` ({label: list}) and ``jacobian_min`` (list)."""
        top, bottom = self.axes
        top.clear()
        bottom.clear()
        t = list(range(len(curves.get("z_mm", []))))
        top.plot(t, curves.get("z_mm", []), "o-", color="#f0c040", ms=3, label="z_t (mm)")
        top.set_ylabel("z (mm)", fontsize=8)
        twin = getattr(self, "_twin", None)
        if twin is None:
            twin = self._twin = top.twinx()
        twin.clear()
        twin.yaxis.tick_right()
        twin.yaxis.set_label_position("right")
        self.style(twin)
        for label, vols in curves.get("volumes_ml", {}).items():
            twin.plot(t[: len(vols)], vols, "s-", ms=3, label=f"label {label}")
        twin.set_ylabel("volume (mL)", fontsize=8)
        if curves.get("volumes_ml"):
            twin.legend(fontsize=6, loc="upper left", facecolor=BACKGROUND, labelcolor=FOREGROUND)
        jac = curves.get("jacobian_min", [])
        bottom.plot(t[: len(jac)], jac, "o-", color="#60c0f0", ms=3)
        bottom.axhline(0.0, color="#f06060", lw=0.8, ls="--")
        bottom.set_ylabel("min Jacobian", fontsize=8)
        bottom.set_xlabel("frame t", fontsize=8)
        for ax in (top, bottom):
            self.style(ax)
        self.redraw()
