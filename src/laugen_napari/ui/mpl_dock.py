"""Pieces the docks share for fitting on a small screen: a scroll area for long forms, and a
matplotlib plot of panels that stays legible in a narrow, short dock.

:class:`PanelPlot` draws panels of curves fed by training records. Only panels that hold data
take a place in the grid (a validation panel waits for the first validation instead of
standing empty), the margins are in pixels (titles and tick labels are never clipped however
small the dock), and after the first full draw each refresh redraws one changed panel and blits
its cell only, so the GUI thread stalls briefly (a full draw of six panels is ~100-200 ms on a
slow CPU).
"""

from __future__ import annotations

import math
import time

import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QWidget

from .plots import BACKGROUND, FOREGROUND, MplCanvas

REDRAW_S = 1.0  # a full round of panel redraws takes at least this long
#: margins in pixels: titles above, tick labels and x label below, y tick labels left
MARGIN_PX = {"left": 44, "right": 8, "top": 20, "bottom": 30, "wspace": 46, "hspace": 46}


class _VerticalScroll(QScrollArea):
    """Scrolls vertically only; as wide as its content needs (nothing is cut off at the sides)."""

    def __init__(self, min_height: int):
        super().__init__()
        self._min_height = int(min_height)

    def setWidget(self, widget: QWidget) -> None:
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        from qtpy.QtCore import QEvent

        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's minimum width may have changed: ask the dock again
        return super().eventFilter(obj, event)

    def minimumSizeHint(self):
        from qtpy.QtCore import QSize

        inner = self.widget()
        width = inner.minimumSizeHint().width() if inner is not None else 0
        return QSize(width + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth(), self._min_height)


def narrow_combo(combo, chars: int = 14) -> None:
    """Let a QComboBox shrink to ``chars`` characters instead of its longest item (long layer
    names must not widen a dock past the screen)."""
    from qtpy.QtWidgets import QComboBox

    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)


def scroll_area(inner: QWidget, min_height: int = 120) -> QScrollArea:
    """``inner`` in a vertical scroll area without a frame (a long form in a short dock), at least
    ``min_height`` pixels tall and as wide as ``inner`` needs."""
    area = _VerticalScroll(min_height)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(inner)
    return area


class PanelPlot(MplCanvas):
    """Curves in panels: ``configure(panels)`` with ``(title, [(phase, key, legend)], baseline key
    or None, log scale)`` per panel; :meth:`add` takes records (``.step``, ``.phase``,
    ``.values``); lines are in :attr:`lines` keyed ``"phase/key"``, baselines in :attr:`baselines`.

    With ``auto=True`` in :meth:`configure`, every record key without a line gets one, in a panel
    per phase (for models whose record keys are not known in advance)."""

    def __init__(self, parent: QWidget | None = None, min_height: int = 300):
        super().__init__(parent, figsize=(4.0, 4.4), nrows=1, ncols=1)
        self.figure.set_layout_engine("none")  # fixed margins: a layout engine moves panels on every draw
        self.setMinimumHeight(min_height)
        self.lines: dict = {}
        self.baselines: dict = {}
        self.panels: list = []
        self._source: list | None = None  # the list given to configure (panels is a copy, auto adds to it)
        self.shown: list[int] = []  # panels with a place in the grid, in order
        self._data: dict[str, tuple[list, list]] = {}
        self._panel_of: dict[str, int] = {}
        self._dirty: list[int] = []
        self._full = True
        self._auto = False
        self._clear_all = False  # the layout changed: clear the canvas before drawing panels
        self._last_draw = 0.0
        self.ncols, self.nrows = 2, 1
        self.canvas.mpl_connect("draw_event", self._on_full_draw)
        self.canvas.mpl_connect("resize_event", lambda _e: self._place())

    # -- panels --------------------------------------------------------------------------------
    def configure(self, panels: list, auto: bool = False) -> None:
        """Start over with ``panels`` (empty lines; the axes are kept when the panels are the same)."""
        if panels is self._source and auto == self._auto and not auto:
            had = {i for i in range(len(self.axes)) if self._has_data(i)}
            had |= {self._panel_of[k] for k, line in self.baselines.items() if np.isfinite(line.get_ydata()).any()}
            for xs, ys in self._data.values():
                xs.clear()
                ys.clear()
            for line in self.baselines.values():
                line.set_ydata([np.nan, np.nan])
            self._mark(sorted(had))  # only panels that showed something need a redraw
            self._select()
            return
        self._auto = auto
        self._source = panels
        self._full = True  # new axes: the next refresh draws the whole figure
        self.panels = list(panels)
        self.figure.clear()
        self.axes, self.lines, self.baselines, self._data, self._panel_of = [], {}, {}, {}, {}
        self.shown = []
        for panel in self.panels:
            self._new_axes(panel)
        self._select()
        self.canvas.draw_idle()  # new axes: one full draw when the event loop gets to it

    def _new_axes(self, panel) -> None:
        title, series, baseline, log = panel
        i = len(self.axes)
        ax = self.figure.add_subplot(1, 1, 1, label=f"panel{i}")
        self.axes.append(ax)
        self.style(ax)
        ax.set_title(title, fontsize=8, color=FOREGROUND, pad=3)
        ax.xaxis.set_major_locator(MaxNLocator(4, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        for phase, key, label in series:
            self._new_line(i, phase, key, label)
        if baseline is not None:
            self.baselines[baseline] = ax.axhline(np.nan, color="#f06060", lw=1.0, ls="--", label="last image")
            self._panel_of[baseline] = i
        if log:
            ax.set_yscale("log")
            # linear-spaced ticks with short labels: a loss often spans less than a decade, where
            # the log scale's own ticks leave the axis without a single label
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())  # minor labels crowd the small panel
        self._legend(ax)

    def _new_line(self, i: int, phase: str, key: str, label: str) -> None:
        marker = "" if phase == "train" else "o"
        (line,) = self.axes[i].plot([], [], marker=marker, ms=3, lw=1.0, label=label)
        self.lines[f"{phase}/{key}"] = line
        self._data[f"{phase}/{key}"] = ([], [])
        self._panel_of[f"{phase}/{key}"] = i

    @staticmethod
    def _legend(ax) -> None:
        if ax.get_legend_handles_labels()[0]:
            # a fixed place: loc="best" searches for a spot on every draw
            ax.legend(fontsize=6, loc="upper right", facecolor=BACKGROUND, labelcolor=FOREGROUND)

    def _has_data(self, i: int) -> bool:
        return any(self._panel_of[n] == i and xs for n, (xs, _) in self._data.items())

    def _select(self) -> None:
        """Give a grid cell to the first panel and to every panel holding data. A new layout is
        drawn panel by panel too (the canvas is cleared, then one panel per :meth:`refresh`)."""
        shown = [i for i in range(len(self.axes)) if i == 0 or self._has_data(i)]
        if shown != self.shown:
            self.shown = shown
            for i, ax in enumerate(self.axes):
                ax.set_visible(i in self.shown)
            self.nrows = max(1, math.ceil(len(self.shown) / self.ncols))
            self._place()
            self._clear_all = True
            self._mark(self.shown)

    def _place(self) -> None:
        """Put the shown panels in a grid with margins fixed in pixels."""
        w, h = self.figure.get_size_inches() * self.figure.dpi
        w, h = max(w, 120.0), max(h, 120.0)
        m = MARGIN_PX
        left, right, top, bottom = m["left"] / w, 1 - m["right"] / w, 1 - m["top"] / h, m["bottom"] / h
        cols = min(self.ncols, max(1, len(self.shown)))
        cw = (right - left - (cols - 1) * m["wspace"] / w) / cols
        rh = (top - bottom - (self.nrows - 1) * m["hspace"] / h) / self.nrows
        for k, i in enumerate(self.shown):
            r, c = divmod(k, cols)
            x0 = left + c * (cw + m["wspace"] / w)
            y0 = top - (r + 1) * rh - r * m["hspace"] / h
            self.axes[i].set_position([x0, y0, max(cw, 0.01), max(rh, 0.01)])
        for k, i in enumerate(self.shown):
            self.axes[i].set_xlabel("step" if k >= len(self.shown) - cols else "", fontsize=7, labelpad=1)

    def _cell(self, i: int):
        """The figure-fraction box of panel ``i``'s grid cell (margins included)."""
        from matplotlib.transforms import Bbox

        cols = min(self.ncols, max(1, len(self.shown)))
        k = self.shown.index(i)
        r, c = divmod(k, cols)
        return Bbox.from_extents(c / cols, 1 - (r + 1) / self.nrows, (c + 1) / cols, 1 - r / self.nrows)

    # -- data ----------------------------------------------------------------------------------
    def add(self, records) -> None:
        """Append records to the lines; drawn by :meth:`refresh`."""
        new_panels = False
        for rec in records:
            for key, value in rec.values.items():
                name = f"{rec.phase}/{key}"
                if name not in self._data and self._auto and not key.startswith("baseline_") and key != "lr":
                    self._auto_line(rec.phase, key)
                if name in self._data:
                    xs, ys = self._data[name]
                    i = self._panel_of[name]
                    if not xs and i not in self.shown:
                        new_panels = True
                    xs.append(rec.step)
                    ys.append(value)
                    self._mark([i])
                if rec.phase == "val" and key in self.baselines:
                    self.baselines[key].set_ydata([value, value])
                    self._mark([self._panel_of[key]])
        if new_panels:
            self._select()

    def _auto_line(self, phase: str, key: str) -> None:
        title = {"train": "training", "val": "validation", "sample": "samples"}.get(phase, phase)
        for i, panel in enumerate(self.panels):
            if panel[0] == title:
                break
        else:
            self.panels.append((title, [], None, False))
            self._new_axes(self.panels[-1])
            i = len(self.axes) - 1
            self.axes[i].set_visible(False)
        self._new_line(i, phase, key, key.replace("_", " "))
        self._legend(self.axes[i])

    def _mark(self, panels) -> None:
        for i in panels:
            if i not in self._dirty:
                self._dirty.append(i)

    def _push(self, i: int) -> None:
        for name, (xs, ys) in self._data.items():
            if self._panel_of[name] == i:
                self.lines[name].set_data(xs, ys)
        ax = self.axes[i]
        ax.relim()
        ax.autoscale_view()

    def _on_full_draw(self, event) -> None:
        # any full draw (resize, first show) brings every panel up to date
        self._full = False
        self._clear_all = False

    def refresh(self, force: bool = False) -> None:
        """Redraw: everything when ``force`` or before the first full draw, else one changed panel
        (at most every ``REDRAW_S / panels`` seconds)."""
        if not self._dirty and not (force and self._clear_all):
            return
        now = time.monotonic()
        if force or self._full:
            for i in range(len(self.axes)):
                self._push(i)
            self._dirty.clear()
            self._last_draw = now
            self.canvas.draw()
            return
        if self._clear_all:
            from matplotlib.transforms import Bbox

            self._clear_all = False
            self._blank(Bbox.unit())
            self.canvas.blit(self.figure.bbox)
        elif now - self._last_draw < REDRAW_S / max(1, len(self.shown)):
            return
        i = self._dirty.pop(0)
        self._push(i)
        if i not in self.shown:
            return
        self._last_draw = now
        self._draw_panel(i)

    def _draw_panel(self, i: int) -> None:
        """Clear panel ``i``'s grid cell, draw its axes there and blit only that cell."""
        cell = self._cell(i)
        self._blank(cell)
        self.axes[i].draw(self.canvas.get_renderer())
        self.canvas.blit(cell.transformed(self.figure.transFigure))

    def _blank(self, cell) -> None:
        """Paint the figure's background over ``cell`` (figure fractions) in the canvas buffer."""
        from matplotlib.patches import Rectangle

        clear = Rectangle((cell.x0, cell.y0), cell.width, cell.height, transform=self.figure.transFigure,
                          facecolor=self.figure.get_facecolor(), edgecolor="none")
        clear.set_figure(self.figure)
        clear.draw(self.canvas.get_renderer())
