"""The "LAUGEN train" dock: train SimVP (next-frame prediction) or a dHVAE / HVAE / VAE (image+mask
generator) from the layers on screen or from files, in a separate process, with live plots.

Thin by design. Data preparation and training live in :mod:`laugen_napari.training`
(:func:`~laugen_napari.training.simvp.simvp_factory`, :func:`~laugen_napari.training.dhvae.make_training`);
the run itself is a :class:`~laugen_napari.training.process.TrainingProcess` (a spawned child, so
torch and the GIL stay out of the viewer's way). Here:

- Start reads the widget values, pulls layer data off the GUI thread (a LAUGEN series is lazy and
  computes its frames when read) and starts the child, also off the GUI thread (pickling the data
  to the child can take a while);
- a QTimer polls the child's records every 200 ms and feeds :class:`TrainPlot`;
- for the generators, every time ``RUN_DIR/samples_latest.npz`` changes its image+mask grid is shown
  as an Image and a Labels layer;
- Stop sets the child's stop event (it writes ``last.pt`` at the current step and exits);
- "show validation sample" (SimVP) loads the latest checkpoint in a worker thread and adds context,
  target and prediction of one validation sequence as layers.

Errors (bad input, a failed child) are napari notifications.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox
from matplotlib.ticker import NullFormatter
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..training.datasets import SliceSpec, SyntheticSource, build_data
from ..training.dhvae import find_pairs, make_training, slices_from_arrays
from ..training.loop import load_checkpoint
from ..training.process import TrainingProcess
from ..training.simvp import build_task, simvp_factory
from .plots import BACKGROUND, FOREGROUND, MplCanvas
from .workers import WorkerSet

SIMVP_MODELS = {"SimVP (gSTA)": "gsta", "SimVP (IncepU)": "incepu"}
GENERATORS = {"dHVAE": "dhvae", "HVAE": "hvae", "VAE": "vae"}
MODELS = list(SIMVP_MODELS) + list(GENERATORS)
POLL_MS = 200
REDRAW_S = 1.0  # the plot is redrawn at most this often (a redraw is ~100 ms of GUI thread on a slow CPU)
CHILD_NICENESS = 5  # the training child yields the CPU to the viewer on a machine with few cores
VAL_CONTEXT, VAL_TARGET, VAL_PREDICTION = "LAUGEN val context", "LAUGEN val target", "LAUGEN val prediction"
GEN_IMAGES, GEN_MASKS = "LAUGEN generated images", "LAUGEN generated masks"
WEIGHTS_NOTE = ("Everything here trains from scratch: no pretrained weights are needed. "
                "VGG16 and Inception files are optional (dHVAE): without VGG16 the perceptual term uses "
                "feature matching on the discriminator's features; without Inception there is no FID.")

# panels of the plot: (title, [(phase, value key, legend)], baseline key or None, log scale)
SIMVP_PANELS = [
    ("loss (normalised MSE)", [("train", "loss", "train"), ("val", "loss", "val")], None, True),
    ("val RMSE", [("val", "rmse", "SimVP")], "baseline_rmse", False),
    ("val SSIM", [("val", "ssim", "SimVP")], "baseline_ssim", False),
    ("val PSNR (dB)", [("val", "psnr", "SimVP")], "baseline_psnr", False),
]
GENERATOR_PANELS = [
    ("-ELBO (nats / slice)", [("train", "nelbo", "train"), ("val", "loss", "val")], None, True),
    ("reconstruction", [("train", "l1", "L1"), ("train", "perc", "perceptual")], None, False),
    ("adversarial", [("train", "disc", "discriminator"), ("train", "gen", "generator")], None, False),
    ("val PSNR (dB)", [("val", "psnr", "PSNR")], None, False),
    ("val SSIM / Dice", [("val", "ssim", "SSIM"), ("val", "dice", "Dice")], None, False),
    ("samples", [("sample", "jsd", "mask JSD (bits)"), ("sample", "nonempty", "non-empty")], None, False),
]


class TrainPlot(MplCanvas):
    """Training curves: one panel per metric group, lines keyed ``"phase/key"`` in :attr:`lines`,
    the last-image baseline as a horizontal line per panel (:attr:`baselines`).

    Drawing runs on the GUI thread, and a full draw of four to six panels costs ~100-200 ms on a
    slow CPU; so after the first full draw, :meth:`refresh` redraws one changed panel per call
    (its grid cell is cleared, the axes drawn and only that cell blitted): short stalls only."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, figsize=(4.0, 4.4), nrows=2, ncols=2)
        # fixed margins: a layout engine would move every panel on every draw
        self.figure.set_layout_engine("none")
        self.lines: dict = {}
        self.baselines: dict = {}
        self._data: dict[str, tuple[list, list]] = {}
        self._panel_of: dict[str, int] = {}
        self.panels: list = []
        self._dirty: list[int] = []  # panels to redraw, in order
        self._full = True  # the next refresh draws the whole figure
        self._last_draw = 0.0
        self.canvas.mpl_connect("draw_event", self._on_full_draw)
        self.configure(SIMVP_PANELS)

    def configure(self, panels: list) -> None:
        """Start over with the given panels (empty lines; the axes are kept when the panels are the same)."""
        if panels is self.panels:
            for xs, ys in self._data.values():
                xs.clear()
                ys.clear()
            for line in self.baselines.values():
                line.set_ydata([np.nan, np.nan])
            self._mark(range(len(self.axes)))
            return
        self.panels = panels
        self.figure.clear()
        self.ncols = 2
        self.nrows = math.ceil(len(panels) / self.ncols)
        grid = self.figure.add_gridspec(self.nrows, self.ncols, left=0.13, right=0.97, bottom=0.08, top=0.94,
                                        wspace=0.4, hspace=0.5)
        self.axes = [self.figure.add_subplot(grid[i // self.ncols, i % self.ncols]) for i in range(len(panels))]
        self.lines, self.baselines, self._data, self._panel_of = {}, {}, {}, {}
        for i, (ax, (title, series, baseline, log)) in enumerate(zip(self.axes, panels)):
            self.style(ax)
            ax.set_title(title, fontsize=8, color=FOREGROUND)
            for phase, key, label in series:
                marker = "" if phase == "train" else "o"
                (line,) = ax.plot([], [], marker=marker, ms=3, lw=1.0, label=label)
                self.lines[f"{phase}/{key}"] = line
                self._data[f"{phase}/{key}"] = ([], [])
                self._panel_of[f"{phase}/{key}"] = i
            if baseline is not None:
                self.baselines[baseline] = ax.axhline(np.nan, color="#f06060", lw=1.0, ls="--", label="last image")
                self._panel_of[baseline] = i
            if log:
                ax.set_yscale("log")
                ax.yaxis.set_minor_formatter(NullFormatter())  # minor labels crowd the small panel
            # a fixed place: loc="best" searches for a spot on every draw
            ax.legend(fontsize=6, loc="upper right", facecolor=BACKGROUND, labelcolor=FOREGROUND)
        for ax in self.axes[-2:]:
            ax.set_xlabel("step", fontsize=7)
        self._full = True
        self._dirty = list(range(len(self.axes)))
        self.refresh(force=True)

    def _mark(self, panels) -> None:
        for i in panels:
            if i not in self._dirty:
                self._dirty.append(i)

    def add(self, records) -> None:
        """Append records (``Record`` objects) to the lines; drawn by :meth:`refresh`."""
        for rec in records:
            for key, value in rec.values.items():
                name = f"{rec.phase}/{key}"
                if name in self._data:
                    xs, ys = self._data[name]
                    xs.append(rec.step)
                    ys.append(value)
                    self._mark([self._panel_of[name]])
                if rec.phase == "val" and key in self.baselines:
                    self.baselines[key].set_ydata([value, value])
                    self._mark([self._panel_of[key]])

    def _push(self, i: int) -> None:
        """Move panel ``i``'s data into its lines and rescale it."""
        for name, (xs, ys) in self._data.items():
            if self._panel_of[name] == i:
                self.lines[name].set_data(xs, ys)
        ax = self.axes[i]
        ax.relim()
        ax.autoscale_view()

    def _on_full_draw(self, event) -> None:
        self._full = False  # any full draw (resize, first show) brings every panel up to date

    def refresh(self, force: bool = False) -> None:
        """Redraw: everything when ``force`` or before the first full draw, else one changed panel
        (at most every :data:`REDRAW_S` seconds per full round)."""
        if not self._dirty:
            return
        now = time.monotonic()
        if force or self._full:
            for i in range(len(self.axes)):
                self._push(i)
            self._dirty.clear()
            self._last_draw = now
            self.canvas.draw()
            return
        if now - self._last_draw < REDRAW_S / max(1, len(self.axes)):
            return
        i = self._dirty.pop(0)
        self._push(i)
        self._last_draw = now
        self._draw_panel(i)

    def _draw_panel(self, i: int) -> None:
        """Clear panel ``i``'s grid cell, draw its axes there and blit only that cell."""
        from matplotlib.patches import Rectangle
        from matplotlib.transforms import Bbox

        r, c = divmod(i, self.ncols)
        cell = Bbox.from_extents(c / self.ncols, 1 - (r + 1) / self.nrows, (c + 1) / self.ncols, 1 - r / self.nrows)
        renderer = self.canvas.get_renderer()
        clear = Rectangle((cell.x0, cell.y0), cell.width, cell.height, transform=self.figure.transFigure,
                          facecolor=self.figure.get_facecolor(), edgecolor="none")
        clear.set_figure(self.figure)
        clear.draw(renderer)
        self.axes[i].draw(renderer)
        self.canvas.blit(cell.transformed(self.figure.transFigure))

def tile(stack: np.ndarray, columns: int | None = None) -> np.ndarray:
    """(N, H, W) -> one (rows*H, columns*W) grid image, row-major, empty cells zero."""
    n, h, w = stack.shape
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    out = np.zeros((rows * h, columns * w), stack.dtype)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = stack[i]
    return out


def _text(edit: FileEdit) -> str:
    """The raw text of a FileEdit (its ``value`` turns an empty field into ``.``)."""
    return edit.line_edit.value.strip()


class TrainWidget(QWidget):
    """Dock widget: model, data, hyperparameters, Start/Stop, the live plot."""

    def __init__(self, napari_viewer):
        super().__init__()
        torch.set_num_threads(1)  # the GUI process keeps its torch work (validation sample) small
        self.viewer = napari_viewer
        self.proc: TrainingProcess | None = None
        self.run: dict | None = None  # what the current/last run was started with
        self._seen = 0
        self._starting = False
        self._stopping = False
        self._user_stopped = False
        self._samples_mtime = None
        self._workers = WorkerSet("LAUGEN train")
        self._val_index = 0
        self._val_cache: tuple | None = None
        self._build()
        self.timer = QTimer(self, interval=POLL_MS)
        self.timer.timeout.connect(self._tick)
        napari_viewer.layers.events.inserted.connect(self._reset_choices)
        napari_viewer.layers.events.removed.connect(self._reset_choices)
        self._reset_choices()

    # -- workers ----------------------------------------------------------------------------
    def _run_bg(self, fn, *args, returned=None, errored=None, finished=None):
        return self._workers.run(fn, *args, returned=returned, errored=errored, finished=finished)

    def wait_idle(self, timeout_ms: int = 30000) -> None:
        """Process events until every worker thread of this dock has finished."""
        self._workers.wait_idle(timeout_ms)

    @property
    def running(self) -> bool:
        """Whether a training process is starting, running or stopping."""
        return self._starting or (self.proc is not None and self.timer.isActive())

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop a running child (blocking, for closing the viewer) and wait for the workers."""
        self.timer.stop()
        self.wait_idle()
        if self.proc is not None and not self.proc.finished:
            self.proc.stop(timeout)

    # -- construction -----------------------------------------------------------------------
    def _build(self) -> None:
        w = {}
        w["model"] = ComboBox(label="model", choices=MODELS, value=MODELS[0])
        w["data_note"] = Label(value="data: layers on screen and/or files")
        w["series"] = ComboBox(label="4D series layer", nullable=True,
                               choices=lambda _: [l for l in self.viewer.layers if isinstance(l, Image) and l.ndim == 4])
        w["image"] = ComboBox(label="image layer", nullable=True,
                              choices=lambda _: [l for l in self.viewer.layers if isinstance(l, Image) and l.ndim == 3])
        w["labels"] = ComboBox(label="labels layer", nullable=True,
                               choices=lambda _: [l for l in self.viewer.layers if isinstance(l, Labels) and l.ndim == 3])
        w["real_files"] = FileEdit(label="real 4D NIfTI files", mode="rm", filter="*.nii *.nii.gz")
        w["acdc"] = FileEdit(label="ACDC folder", mode="d")
        w["pairs"] = FileEdit(label="image/mask pairs folder", mode="d")
        w["context"] = SpinBox(label="context frames", value=4, min=1, max=32)
        w["target"] = SpinBox(label="target frames", value=4, min=1, max=32)
        w["mix"] = FloatSpinBox(label="mix ratio (synthetic)", value=0.1, min=0.0, max=1.0, step=0.05)
        w["axis"] = ComboBox(label="slice axis", choices=[("z (axial)", 0), ("y", 1), ("x", 2)], value=0)
        w["crop"] = SpinBox(label="crop H=W (0: whole plane)", value=0, min=0, max=1024)
        w["length"] = SpinBox(label="samples / epoch (0: auto)", value=0, min=0, max=1_000_000)
        w["size_preset"] = ComboBox(label="SimVP size", choices=["cpu", "mmnist"], value="cpu")
        w["epochs"] = SpinBox(label="epochs", value=20, min=1, max=100_000)
        w["steps"] = SpinBox(label="steps", value=1000, min=1, max=10_000_000)
        w["epoch_steps"] = SpinBox(label="validate every (steps)", value=50, min=1, max=100_000)
        w["size"] = ComboBox(label="slice size", choices=[32, 64, 128], value=64)
        w["warmup"] = SpinBox(label="discriminator warm-up", value=500, min=0, max=10_000_000)
        w["batch"] = SpinBox(label="batch size", value=8, min=1, max=1024)
        w["lr"] = LineEdit(label="learning rate", value="1e-3")
        w["seed"] = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        w["vgg"] = FileEdit(label="VGG16 weights (optional)", mode="r")
        w["inception"] = FileEdit(label="Inception for FID (optional)", mode="r")
        w["run_dir"] = FileEdit(label="run directory", mode="d")
        w["resume"] = CheckBox(label="resume the run in this directory", value=False)
        w["threads"] = SpinBox(label="torch threads (child)", value=max(1, (os.cpu_count() or 2) - 1), min=1, max=256)
        w["weights_note"] = Label(value=WEIGHTS_NOTE)
        w["weights_note"].native.setWordWrap(True)
        w["start"] = PushButton(text="Start")
        w["stop"] = PushButton(text="Stop")
        w["show_val"] = PushButton(text="show validation sample")
        w["status"] = Label(value="idle")
        w["status"].native.setWordWrap(True)
        # a fixed height: a status line that rewraps would re-layout the dock and resize the plot (a full redraw)
        w["status"].native.setFixedHeight(3 * w["status"].native.fontMetrics().lineSpacing() + 4)
        self.w = w
        self.form = Container(widgets=list(w.values()))
        self.plot = TrainPlot(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.plot)
        w["model"].changed.connect(self._on_model)
        w["start"].changed.connect(self.start)
        w["stop"].changed.connect(self.stop)
        w["show_val"].changed.connect(self.show_validation_sample)
        w["stop"].enabled = False
        self._on_model()

    def _reset_choices(self, *_) -> None:
        names = [layer.name for layer in self.viewer.layers]
        self.form.reset_choices()
        # a fresh LAUGEN series is the natural default for SimVP
        if self.w["series"].value is None and "LAUGEN series" in names:
            layer = self.viewer.layers["LAUGEN series"]
            if isinstance(layer, Image) and layer.ndim == 4:
                self.w["series"].value = layer

    @property
    def is_simvp(self) -> bool:
        return self.w["model"].value in SIMVP_MODELS

    def _on_model(self, *_) -> None:
        simvp = self.is_simvp
        for name in ("series", "real_files", "acdc", "context", "target", "mix", "axis", "crop", "length",
                     "size_preset", "epochs", "show_val"):
            self.w[name].visible = simvp
        for name in ("steps", "epoch_steps", "size", "warmup", "vgg", "inception"):
            self.w[name].visible = not simvp
        lr = self.w["lr"].value.strip()
        if lr in ("1e-3", "5e-05", "5e-5", ""):
            self.w["lr"].value = "1e-3" if simvp else "5e-5"
        if self.proc is None:
            self.plot.configure(SIMVP_PANELS if simvp else GENERATOR_PANELS)

    def _status(self, text: str) -> None:
        self.w["status"].value = text

    # -- start ------------------------------------------------------------------------------
    def collect(self) -> dict:
        """The run's settings from the widgets (GUI thread: cheap, no layer data read yet).

        Raises ValueError for missing or inconsistent input."""
        w = self.w
        try:
            lr = float(w["lr"].value)
        except ValueError:
            raise ValueError(f"learning rate {w['lr'].value!r} is not a number") from None
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"the learning rate must be a positive number, got {lr}")
        run_dir = _text(w["run_dir"])
        model = w["model"].value
        if not run_dir:
            run_dir = str(Path.home() / "laugen_runs" / f"{model.split()[0].lower()}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir_p = Path(run_dir).expanduser()
        if (run_dir_p / "last.pt").exists() and not w["resume"].value:
            raise ValueError(f"{run_dir_p} already holds a run (last.pt): tick 'resume' or choose another run directory")
        if w["resume"].value and not (run_dir_p / "last.pt").exists():
            raise ValueError(f"nothing to resume: no last.pt in {run_dir_p}")
        image, labels = w["image"].value, w["labels"].value
        if (image is None) != (labels is None):
            raise ValueError("give both an image layer and a labels layer (or neither)")
        pairs = _text(w["pairs"])
        if pairs and not Path(pairs).is_dir():
            raise ValueError(f"no such folder: {pairs}")
        plan = {"model": model, "run_dir": str(run_dir_p), "lr": lr, "seed": int(w["seed"].value),
                "batch": int(w["batch"].value), "resume": bool(w["resume"].value), "threads": int(w["threads"].value),
                "image": None if image is None else (image.data, tuple(float(s) for s in image.scale[-3:]), image.name),
                "labels": None if labels is None else labels.data, "pairs": pairs or None}
        if self.is_simvp:
            series = w["series"].value
            real_files = [t.strip() for t in _text(w["real_files"]).split(",") if t.strip()] if _text(w["real_files"]) else []
            for f in real_files:
                if not Path(f).is_file():
                    raise ValueError(f"no such file: {f}")
            acdc = _text(w["acdc"]) or None
            if acdc and not Path(acdc).is_dir():
                raise ValueError(f"no such folder: {acdc}")
            if series is None and not real_files and not acdc and image is None and not pairs:
                raise ValueError("no data: choose a 4D series layer, an image + labels pair, or files/folders")
            frames = int(w["context"].value) + int(w["target"].value)
            if series is not None and series.data.shape[0] < frames:
                raise ValueError(f"the series '{series.name}' has {series.data.shape[0]} frames; "
                                 f"context + target needs at least {frames}")
            crop = int(w["crop"].value)
            plan.update(series=None if series is None else (series.data, series.name), real_files=real_files,
                        acdc=acdc, context=int(w["context"].value), target=int(w["target"].value),
                        mix=float(w["mix"].value), axis=int(w["axis"].value), crop=(crop, crop) if crop else None,
                        length=int(w["length"].value) or None, size_preset=w["size_preset"].value,
                        epochs=int(w["epochs"].value))
        else:
            if image is None and not pairs:
                raise ValueError("no data: choose an image + labels layer pair or a folder of image/mask pairs")
            for name in ("vgg", "inception"):
                path = _text(w[name])
                if path and not Path(path).is_file():
                    raise ValueError(f"no such {name} weights file: {path}")
            plan.update(steps=int(w["steps"].value), epoch_steps=int(w["epoch_steps"].value), size=int(w["size"].value),
                        warmup=int(w["warmup"].value), vgg=_text(w["vgg"]) or None,
                        inception=_text(w["inception"]) or None)
        return plan

    def start(self, *_) -> None:
        """Start button: validate, then prepare the data and start the child off the GUI thread."""
        if self.running:
            show_info("LAUGEN train: a run is already going; stop it first")
            return
        try:
            plan = self.collect()
        except ValueError as exc:
            show_error(f"LAUGEN train: {exc}")
            return
        self._starting = True
        self._user_stopped = False
        self.w["start"].enabled = False
        self._status("preparing the data and starting the training process ...")
        self._run_bg(_prepare_and_start, plan, returned=self._started, errored=self._start_failed)

    def _start_failed(self, exc: Exception) -> None:
        self._starting = False
        self.w["start"].enabled = True
        self._status(f"not started: {exc}")
        show_error(f"LAUGEN train: {exc}")

    def _started(self, result: tuple) -> None:
        proc, run = result
        self._starting = False
        self.proc, self.run = proc, run
        self._seen = 0
        self._samples_mtime = None
        self._val_cache = None
        self._val_index = 0
        self.plot.configure(SIMVP_PANELS if run["kind"] == "simvp" else GENERATOR_PANELS)
        self.w["run_dir"].value = run["run_dir"]
        self.w["stop"].enabled = True
        self._status(f"training {run['model']} in a separate process; run directory {run['run_dir']}")
        self.timer.start()

    # -- following the run ------------------------------------------------------------------
    def _tick(self) -> None:
        proc = self.proc
        if proc is None:
            return
        alive = True
        if not self._stopping:
            proc.poll()
            alive = proc.running
        new = proc.records[self._seen:]
        self._seen += len(new)
        if new:
            self.plot.add(new)
            last = new[-1]
            text = ", ".join(f"{k} {v:.4g}" for k, v in list(last.values.items())[:4])
            self._status(f"step {last.step}, epoch {last.epoch} ({last.phase}): {text}")
        if self.run is not None and self.run["kind"] == "generator":
            self._check_samples()
        self.plot.refresh()
        if not alive:
            self._finished()

    def _finished(self) -> None:
        proc = self.proc
        self.timer.stop()
        self.plot.refresh(force=True)
        self.w["start"].enabled = True
        self.w["stop"].enabled = False
        if self.run is not None and self.run["kind"] == "generator":
            self._check_samples()
        if proc.error and not (self._user_stopped and proc.error == "interrupted"):
            self._status(f"failed: {proc.error}")
            show_error(f"LAUGEN train: the training process failed: {proc.error}")
        else:
            how = "stopped" if self._user_stopped else "finished"
            self._status(f"{how} at step {proc.records[-1].step if proc.records else 0}; "
                         f"checkpoints in {self.run['run_dir']} (last.pt, best.pt)")
        if proc.exitcode is None:
            self._run_bg(proc.join, 30)  # reap the child without blocking the GUI

    def stop(self, *_) -> None:
        """Stop button: the child finishes its step, writes last.pt and exits (waited on off the GUI thread)."""
        proc = self.proc
        if proc is None or proc.finished or self._stopping:
            return
        self._stopping = True
        self._user_stopped = True
        self.w["stop"].enabled = False
        self._status("stopping after the current step (writing last.pt) ...")

        def done():
            self._stopping = False
            self._tick()
            if self.timer.isActive():
                self._finished()

        self._run_bg(proc.stop, 60, finished=done)

    # -- generated samples (dHVAE) --------------------------------------------------------------
    def _check_samples(self) -> None:
        path = Path(self.run["run_dir"]) / "samples_latest.npz"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._samples_mtime:
            return
        self._samples_mtime = mtime
        self._run_bg(_load_samples, path, returned=self._show_samples)

    def _show_samples(self, grid: tuple) -> None:
        images, masks, step = grid
        for name, data, cls in ((GEN_IMAGES, images, Image), (GEN_MASKS, masks, Labels)):
            if name in self.viewer.layers and isinstance(self.viewer.layers[name], cls):
                self.viewer.layers[name].data = data
            elif cls is Image:
                self.viewer.add_image(data, name=name, contrast_limits=(0.0, 1.0))
            else:
                self.viewer.add_labels(data, name=name, opacity=0.4)
        self._status(f"generated samples of step {step} shown as '{GEN_IMAGES}' and '{GEN_MASKS}'")

    # -- validation sample (SimVP) ------------------------------------------------------------
    def show_validation_sample(self, *_) -> None:
        run = self.run
        if run is None or run["kind"] != "simvp":
            show_error("LAUGEN train: start a SimVP run first")
            return
        index = self._val_index
        self._val_index += 1
        self._status("loading the latest checkpoint for a validation sample ...")
        self._run_bg(self._validation_sample, run, index, returned=self._show_val)

    def _validation_sample(self, run: dict, index: int) -> tuple:
        """Worker thread: context, target and prediction of validation sequence ``index``."""
        run_dir = Path(run["run_dir"])
        ckpt_path = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
        if not ckpt_path.is_file():
            raise ValueError(f"no checkpoint yet in {run_dir}: wait for the first epoch to finish")
        kw = run["kwargs"]
        if self._val_cache is None or self._val_cache[0] is not run:
            bundle = build_data(**kw["data"], seed=kw["seed"])
            self._val_cache = (run, bundle)
        bundle = self._val_cache[1]
        task = build_task(bundle, seed=kw["seed"], **kw["model"])
        ckpt = load_checkpoint(ckpt_path)
        task.load_state_dict(ckpt["task"])
        task.model.eval()
        i = index % len(bundle.val)
        seq = bundle.val[i:i + 1]
        with torch.no_grad():
            pred = task.predict_raw(seq[:, :task.context])[0]
        return seq[0, :task.context], seq[0, task.context:], pred.astype(np.float32), i, ckpt_path.name, int(ckpt["step"])

    def _show_val(self, result: tuple) -> None:
        ctx, tgt, pred, i, ckpt_name, step = result
        lo, hi = float(min(ctx.min(), tgt.min())), float(max(ctx.max(), tgt.max()))
        limits = (lo, hi if hi > lo else lo + 1.0)
        todo = [(VAL_CONTEXT, ctx), (VAL_TARGET, tgt), (VAL_PREDICTION, pred)]

        def add_next():  # one layer per event-loop turn: each addition is a GUI-thread stall of its own
            name, data = todo.pop(0)
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
                self.viewer.layers[name].contrast_limits = limits
            else:
                self.viewer.add_image(data, name=name, contrast_limits=limits)
            if todo:
                QTimer.singleShot(30, add_next)
            else:
                self._status(f"validation sequence {i}: context, target and prediction ({ckpt_name}, step {step})")

        add_next()


# -- worker-thread functions (no Qt) ----------------------------------------------------------------

def _sources(plan: dict) -> list[SyntheticSource]:
    if plan["image"] is None:
        return []
    data, spacing, name = plan["image"]
    image = np.asarray(data, np.float32)
    labels = np.asarray(plan["labels"])
    if image.shape != labels.shape:
        raise ValueError(f"image '{name}' {image.shape} and labels {labels.shape} differ in shape")
    return [SyntheticSource(image, labels.astype(np.int32), spacing, name=name)]


def prepare(plan: dict) -> tuple:
    """``(factory, kwargs, run)`` for :class:`TrainingProcess` from :meth:`TrainWidget.collect`'s plan.

    Reads layer data (a lazy LAUGEN series computes its frames here), so call it off the GUI thread."""
    run = {"model": plan["model"], "run_dir": plan["run_dir"]}
    if plan["model"] in SIMVP_MODELS:
        real_arrays = []
        if plan["series"] is not None:
            data, name = plan["series"]
            arr = np.asarray(data, np.float32)
            if arr.ndim != 4:
                raise ValueError(f"the series '{name}' must be (T, Z, Y, X), got {arr.shape}")
            real_arrays.append(arr)
        synthetic = [tuple(str(p) for p in pair) for pair in find_pairs(plan["pairs"])] if plan["pairs"] else []
        sources = _sources(plan)
        has_real = bool(real_arrays or plan["real_files"] or plan["acdc"])
        has_syn = bool(sources or synthetic or plan["acdc"])
        data = dict(real=list(plan["real_files"]), acdc=plan["acdc"], synthetic=synthetic, sources=sources,
                    real_arrays=real_arrays, mix=plan["mix"] if (has_real and has_syn) else None,
                    context=plan["context"], target=plan["target"],
                    spec=SliceSpec(plan["axis"], None, None, plan["crop"]), length=plan["length"])
        from ..models.simvp import CPU_DEFAULT, MMNIST

        size = dict(MMNIST if plan["size_preset"] == "mmnist" else CPU_DEFAULT)
        model = {"translator": SIMVP_MODELS[plan["model"]], "size": size, "lr": plan["lr"]}
        runkw = {"epochs": plan["epochs"], "out_dir": plan["run_dir"], "resume": plan["resume"]}
        kwargs = {"data": data, "model": model, "run": runkw, "batch_size": plan["batch"], "seed": plan["seed"]}
        run.update(kind="simvp", kwargs=kwargs)
        return simvp_factory, kwargs, run
    kwargs = dict(size=plan["size"], model=GENERATORS[plan["model"]], steps=plan["steps"], out=plan["run_dir"],
                  resume=plan["resume"], vgg=plan["vgg"], inception=plan["inception"], batch_size=plan["batch"],
                  steps_per_epoch=plan["epoch_steps"], seed=plan["seed"], lr=plan["lr"], disc_warmup=plan["warmup"])
    if plan["image"] is not None:
        data, _, name = plan["image"]
        kwargs["slices"] = slices_from_arrays(np.asarray(data, np.float32), np.asarray(plan["labels"]), plan["size"],
                                              name=name)
    else:
        find_pairs(plan["pairs"])  # a folder without pairs fails here, with a clear message
        kwargs["pairs"] = plan["pairs"]
    run.update(kind="generator", kwargs=kwargs)
    return make_training, kwargs, run


def _prepare_and_start(plan: dict) -> tuple:
    factory, kwargs, run = prepare(plan)
    Path(run["run_dir"]).mkdir(parents=True, exist_ok=True)
    proc = TrainingProcess(factory, kwargs, threads=plan["threads"]).start()
    pid = proc.pid
    if pid is not None and hasattr(os, "setpriority"):
        try:  # lower the child's priority (raising niceness needs no privilege)
            os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + CHILD_NICENESS)
        except OSError:
            pass
    return proc, run


def _load_samples(path: Path) -> tuple:
    with np.load(path) as z:
        images, masks, step = z["images"], z["masks"], int(z["step"])
    return tile(images.astype(np.float32)), tile(masks.astype(np.uint8)), step
