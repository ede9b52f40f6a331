"""The "LAUGEN train" dock: train SimVP (next-frame prediction) or an image+mask generator of the
registry (:data:`laugen_napari.training.generators.GENERATORS`: dHVAE, HVAE, VAE, ...) from the
layers on screen or from files, in a separate process, with live plots.

Thin by design. Planning lives in :mod:`laugen_napari.training.plan` (checks, data, factory,
validation sample, status texts), training in a
:class:`~laugen_napari.training.process.TrainingProcess` (a spawned child: torch, the GIL and
every optimizer stay out of the viewer's process; building an optimizer imports Triton, which
crashed the viewer beside Mesa's OpenGL). Here:

- Start reads the widget values, pulls layer data off the GUI thread (a LAUGEN series is lazy and
  computes its frames when read) and starts the child, also off the GUI thread;
- a QTimer polls the child's records every 200 ms and feeds the plot, the status line and a
  progress bar in napari's activity dock (updated on the GUI thread: no Qt thread pool involved);
- for the generators, every time ``RUN_DIR/samples_latest.npz`` changes its image+mask grid is shown
  beside the scan as an Image and a Labels layer;
- Stop sets the child's stop event (it writes ``last.pt`` at the current step and exits);
- "show validation sample" (SimVP) runs the latest checkpoint's network, inference only, in a
  worker thread and adds context, target and prediction of one validation sequence as layers.

The settings are remembered between sessions (:mod:`laugen_napari.ui`'s settings files).
Errors (bad input, a failed child) are napari notifications.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QVBoxLayout, QWidget

from ..training import plan as planning
from ..training.plan import DHVAE_FAMILY, describe_end, describe_record, model_choices, tile  # noqa: F401 (tile: API)
from . import load_settings, save_settings
from .layers import layer_input
from .mpl_dock import PanelPlot, narrow_combo, scroll_area
from .workers import WorkerSet, activity

CHOICES = model_choices()
MODELS = list(CHOICES)
SIMVP_MODELS = {k: c.key for k, c in CHOICES.items() if c.kind == "simvp"}
GENERATORS = {k: c.key for k, c in CHOICES.items() if c.kind == "generator"}
POLL_MS = 200
CHILD_NICENESS = 5  # the training child yields the CPU to the viewer on a machine with few cores
SETTINGS_NAME = "train_dock"
VAL_CONTEXT, VAL_TARGET, VAL_PREDICTION = "LAUGEN val context", "LAUGEN val target", "LAUGEN val prediction"
GEN_IMAGES, GEN_MASKS = "LAUGEN generated images", "LAUGEN generated masks"
WEIGHTS_NOTE = ("Everything here trains from scratch: no pretrained weights are needed. "
                "VGG16 and Inception files are optional (dHVAE): without VGG16 the perceptual term uses "
                "feature matching on the discriminator's features; without Inception there is no FID.")
#: widgets whose values are remembered between sessions
REMEMBERED = ("model", "real_files", "acdc", "pairs", "context", "target", "mix", "axis", "crop", "length",
              "size_preset", "epochs", "steps", "epoch_steps", "size", "warmup", "batch", "lr", "seed", "vgg",
              "inception", "threads")

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
OTHER_PANELS = [("training", [], None, False)]  # lines appear as the records name them


def _input(layer):
    """The layer as the plan takes it (level 0 of multiscale data, the true voxel size), or None."""
    return None if layer is None else layer_input(layer)


class TrainPlot(PanelPlot):
    """Training curves of the dock (see :class:`~laugen_napari.ui.mpl_dock.PanelPlot`)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.configure(SIMVP_PANELS)

    def configure_for(self, choice) -> None:
        """The panels of a model choice."""
        if choice.kind == "simvp":
            self.configure(SIMVP_PANELS)
        elif choice.key in DHVAE_FAMILY:
            self.configure(GENERATOR_PANELS)
        else:
            self.configure(OTHER_PANELS, auto=True)


def _text(edit: FileEdit) -> str:
    """The raw text of a FileEdit (its ``value`` turns an empty field into ``.``)."""
    return edit.line_edit.value.strip()


class TrainWidget(QWidget):
    """Dock widget: Start/Stop and the status on top, then the settings and the live plot, scrolled."""

    def __init__(self, napari_viewer):
        super().__init__()
        import torch

        torch.set_num_threads(1)  # the GUI process keeps its torch work (validation sample) small
        self.viewer = napari_viewer
        self.proc = None
        self.run: dict | None = None  # what the current/last run was started with
        self._seen = 0
        self._starting = False
        self._stopping = False
        self._user_stopped = False
        self._samples_mtime = None
        self._workers = WorkerSet("LAUGEN train")
        self._val_index = 0
        self._val_cache: tuple | None = None
        self._pbar = None
        self._build()
        self.restore_settings()
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

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop a running child (blocking, for closing the viewer) and wait for the workers."""
        self.timer.stop()
        self.save_settings()
        self.wait_idle()
        if self.proc is not None and not self.proc.finished:
            self.proc.stop(timeout)
        self._close_progress()

    # -- construction -----------------------------------------------------------------------
    def _build(self) -> None:
        w = {}
        w["model"] = ComboBox(label="model", choices=MODELS, value=MODELS[0])
        w["model_note"] = Label(value="")
        w["model_note"].native.setWordWrap(True)
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
        for widget in w.values():
            if isinstance(widget, ComboBox):
                narrow_combo(widget.native)
        form_keys = list(w)
        w["start"] = PushButton(text="Start")
        w["stop"] = PushButton(text="Stop")
        w["show_val"] = PushButton(text="show validation sample")
        w["status"] = Label(value="Idle. Choose a model and data, then press Start.")
        w["status"].native.setWordWrap(True)
        # a fixed height: a status line that rewraps would re-layout the dock and resize the plot (a full
        # redraw); two lines keep the dock short enough to stack with the other LAUGEN docks on 800 px
        w["status"].native.setFixedHeight(2 * w["status"].native.fontMetrics().lineSpacing() + 4)
        self.w = w
        self.form = Container(widgets=[w[k] for k in form_keys])
        self.plot = TrainPlot(self)
        # Start/Stop and the status stay on top, always visible; the long form and the plot scroll
        # (the dock fits a 1280x800 screen, stacked with the other LAUGEN docks)
        buttons = QHBoxLayout()
        for key in ("start", "stop", "show_val"):
            buttons.addWidget(w[key].native)
        inner = QWidget()
        inner_layout = QVBoxLayout(inner)
        inner_layout.setContentsMargins(0, 0, 0, 0)
        inner_layout.addWidget(self.plot)
        inner_layout.addWidget(self.form.native)
        self.scroll = scroll_area(inner, min_height=70)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(buttons)
        layout.addWidget(w["status"].native)
        layout.addWidget(self.scroll, 1)
        w["model"].changed.connect(self._on_model)
        w["start"].changed.connect(self.start)
        w["stop"].changed.connect(self.stop)
        w["show_val"].changed.connect(self.show_validation_sample)
        w["stop"].enabled = False
        self._on_model()

    def showEvent(self, event) -> None:
        # a hard minimum once styled (napari's stylesheet makes buttons taller): stacked with other
        # docks, Qt must not squash Start/Stop and the status line
        self.setMinimumHeight(0)
        self.setMinimumHeight(self.minimumSizeHint().height())
        super().showEvent(event)

    def _reset_choices(self, *_) -> None:
        names = [layer.name for layer in self.viewer.layers]
        self.form.reset_choices()
        # a fresh LAUGEN series is the natural default for SimVP
        if self.w["series"].value is None and "LAUGEN series" in names:
            layer = self.viewer.layers["LAUGEN series"]
            if isinstance(layer, Image) and layer.ndim == 4:
                self.w["series"].value = layer

    @property
    def choice(self):
        return CHOICES[self.w["model"].value]

    @property
    def is_simvp(self) -> bool:
        return self.choice.kind == "simvp"

    def _on_model(self, *_) -> None:
        choice = self.choice
        simvp = choice.kind == "simvp"
        for name in ("series", "real_files", "acdc", "context", "target", "mix", "axis", "crop", "length",
                     "size_preset", "epochs", "show_val"):
            self.w[name].visible = simvp
        self.w["steps"].visible = self.w["size"].visible = not simvp
        for name, option in (("epoch_steps", "steps_per_epoch"), ("warmup", "disc_warmup"), ("vgg", "vgg"),
                             ("inception", "inception")):
            self.w[name].visible = choice.has(option)
        self.w["weights_note"].visible = choice.has("vgg")
        self.w["model_note"].value = choice.description
        self.w["model_note"].visible = bool(choice.description)
        lr = self.w["lr"].value.strip()
        defaults = {f"{c.default('lr', '')}" for c in CHOICES.values()} | {"1e-3", "5e-05", "5e-5", "0.001", ""}
        if lr in defaults and choice.default("lr") is not None:
            self.w["lr"].value = f"{choice.default('lr'):g}"
        if choice.has("disc_warmup") and choice.default("disc_warmup") is not None:
            self.w["warmup"].value = int(choice.default("disc_warmup"))
        if self.proc is None:
            self.plot.configure_for(choice)

    def _status(self, text: str) -> None:
        self.w["status"].value = text
        self.w["status"].native.setToolTip(text)

    # -- settings memory --------------------------------------------------------------------
    def settings(self) -> dict:
        """The remembered widgets' values (paths as text)."""
        out = {}
        for key in REMEMBERED:
            widget = self.w[key]
            out[key] = _text(widget) if isinstance(widget, FileEdit) else widget.value
        return out

    def save_settings(self) -> None:
        save_settings(SETTINGS_NAME, self.settings())

    def restore_settings(self) -> None:
        """Put back the last session's values (a value a widget refuses is skipped)."""
        saved = load_settings(SETTINGS_NAME)
        if saved.get("model") in CHOICES:
            self.w["model"].value = saved["model"]
        for key in REMEMBERED:
            if key == "model" or key not in saved:
                continue
            widget = self.w[key]
            try:
                if isinstance(widget, FileEdit):
                    widget.line_edit.value = str(saved[key])
                else:
                    widget.value = saved[key]
            except (ValueError, TypeError):
                pass

    # -- start ------------------------------------------------------------------------------
    def values(self) -> dict:
        """The widgets' values as plain Python (paths as text)."""
        out = {k: (_text(v) if isinstance(v, FileEdit) else v.value) for k, v in self.w.items()
               if k not in ("series", "image", "labels", "start", "stop", "show_val", "status")
               and not k.endswith("_note")}
        return out

    def collect(self) -> dict:
        """The run's plan (:func:`laugen_napari.training.plan.make_plan`) from the widgets (GUI
        thread: cheap, no layer data read yet). Raises ValueError for missing or inconsistent input."""
        w = self.w
        return planning.make_plan(self.values(), series=w["series"].value if self.is_simvp else None,
                                  image=_input(w["image"].value), labels=_input(w["labels"].value),
                                  choices=CHOICES)

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
        self.save_settings()
        self._starting = True
        self._user_stopped = False
        self.w["start"].enabled = False
        self._status("Preparing the data and starting the training process ...")
        self._run_bg(planning.prepare_and_start, plan, CHILD_NICENESS, returned=self._started,
                     errored=self._start_failed)

    def _start_failed(self, exc: Exception) -> None:
        self._starting = False
        self.w["start"].enabled = True
        self._status(f"Not started: {exc}")
        show_error(f"LAUGEN train: {exc}")

    def _started(self, result: tuple) -> None:
        proc, run = result
        self._starting = False
        self.proc, self.run = proc, run
        self._seen = 0
        self._samples_mtime = None
        self._val_cache = None
        self._val_index = 0
        self.plot.configure_for(CHOICES[run["model"]])
        self.w["run_dir"].value = run["run_dir"]
        self.w["stop"].enabled = True
        self._status(f"Training {run['model']} in a separate process; its files go to {run['run_dir']}.")
        self.scroll.ensureWidgetVisible(self.plot)
        total = run["kwargs"]["steps"] if run["kind"] == "generator" else run["kwargs"]["run"]["epochs"]
        self._close_progress()
        self._pbar = activity(int(total), f"LAUGEN train: {run['model']}")
        self._pbar_unit = "step" if run["kind"] == "generator" else "epoch"
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
            self._status(describe_record(new[-1]))
            self._advance_progress(new[-1])
        if self.run is not None and self.run["kind"] == "generator":
            self._check_samples()
        self.plot.refresh()
        if not alive:
            self._finished()

    def _advance_progress(self, rec) -> None:
        bar = self._pbar
        if bar is None:
            return
        done = rec.step if self._pbar_unit == "step" else max(0, rec.epoch - (0 if rec.phase == "val" else 1))
        done = min(int(done), int(bar.total or done))
        if done > bar.n:
            bar.update(done - bar.n)

    def _close_progress(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _finished(self) -> None:
        proc = self.proc
        self.timer.stop()
        self._close_progress()
        self.plot.refresh(force=True)
        self.w["start"].enabled = True
        self.w["stop"].enabled = False
        if self.run is not None and self.run["kind"] == "generator":
            self._check_samples()
        if proc.error and not (self._user_stopped and proc.error == "interrupted"):
            self._status(f"The training failed: {proc.error}")
            show_error(f"LAUGEN train: the training process failed: {proc.error}")
        else:
            step = proc.records[-1].step if proc.records else 0
            self._status(describe_end(self._user_stopped, step, self.run["run_dir"]))
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
        self._status("Stopping after the current step and saving it (last.pt) ...")

        def done():
            self._stopping = False
            self._tick()
            if self.timer.isActive():
                self._finished()

        self._run_bg(proc.stop, 60, finished=done)

    # -- generated samples (generators) --------------------------------------------------------
    def _check_samples(self) -> None:
        path = Path(self.run["run_dir"]) / "samples_latest.npz"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._samples_mtime:
            return
        self._samples_mtime = mtime
        self._run_bg(planning.load_samples, path, returned=self._show_samples)

    def _scan_extent(self) -> np.ndarray | None:
        """World extent of the layers other than the generated grids (None without any)."""
        others = [l for l in self.viewer.layers if l.name not in (GEN_IMAGES, GEN_MASKS)]
        if not others:
            return None
        ext = np.array([l.extent.world for l in others], float)  # (n, 2, ndim) of possibly several ndims
        nd = min(e.shape[-1] for e in ext)
        ext = np.stack([e[:, -nd:] for e in ext])
        return np.stack([ext[:, 0].min(0), ext[:, 1].max(0)])

    def _show_samples(self, grid: tuple) -> None:
        images, masks, step = grid
        extent = self._scan_extent()
        place = {}
        if extent is not None and extent.shape[-1] >= 2:
            translate, scale = planning.beside(extent, images.shape)
            place = {"translate": translate, "scale": scale}
        for name, data, cls in ((GEN_IMAGES, images, Image), (GEN_MASKS, masks, Labels)):
            if name in self.viewer.layers and isinstance(self.viewer.layers[name], cls):
                layer = self.viewer.layers[name]
                layer.data = data
                if place:
                    layer.scale, layer.translate = place["scale"], place["translate"]
            elif cls is Image:
                self.viewer.add_image(data, name=name, contrast_limits=(0.0, 1.0), **place)
            else:
                self.viewer.add_labels(data, name=name, opacity=0.4, **place)
        self._status(f"Generated samples of step {step} are shown beside the scan "
                     f"('{GEN_IMAGES}' and '{GEN_MASKS}').")

    # -- validation sample (SimVP) ------------------------------------------------------------
    def show_validation_sample(self, *_) -> None:
        run = self.run
        if run is None or run["kind"] != "simvp":
            show_error("LAUGEN train: start a SimVP run first")
            return
        index = self._val_index
        self._val_index += 1
        self._status("Loading the latest checkpoint to predict a validation sequence ...")
        self._run_bg(self._validation_sample, run, index, returned=self._show_val)

    def _validation_sample(self, run: dict, index: int):
        """Worker thread: inference only (no optimizer: nothing here imports Triton)."""
        cached = self._val_cache[1] if self._val_cache is not None and self._val_cache[0] is run else None
        sample, val = planning.validation_sample(run, index, cached)
        self._val_cache = (run, val)
        return sample

    def _show_val(self, sample) -> None:
        ctx, tgt, pred = sample.context, sample.target, sample.prediction
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
                self._status(f"Validation sequence {sample.index}: context, target and prediction "
                             f"(from {sample.checkpoint}, step {sample.step}).")

        add_next()
