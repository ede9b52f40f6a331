"""The "LAUGEN augment" dock: pick a scan, its labels and the deformation; watch the series live.

Thin by design: the numbers come from :mod:`laugen_napari.core` (the engine and the lazy preview
arrays); this module only turns widget values into engine parameters, runs the field computation
in a worker thread, and refreshes three layers that keep the same lazy arrays:
``LAUGEN series`` (T, Z, Y, X), ``LAUGEN mask series`` and ``LAUGEN difference``.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, PushButton, Select, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import QProgressBar, QVBoxLayout, QWidget

from ..core import KINDS, TRAJECTORIES, Augmenter, make_kind, make_trajectory, series_seed
from ..core.field import label_values
from ..core.preview import LazyDifference, PreviewModel, preview_arrays
from ..pipeline import GenerateOptions
from .layers import volume_from_layer
from .plots import SeriesCurvesPlot, render_curves
from .workers import WorkerSet

SERIES, MASKS, DIFF = "LAUGEN series", "LAUGEN mask series", "LAUGEN difference"
FIELD_DEBOUNCE_MS = 150
_PANELS: "weakref.WeakValueDictionary[int, AugmentWidget]" = weakref.WeakValueDictionary()


def augment_panel(viewer) -> "AugmentWidget | None":
    """The augment panel open in ``viewer``, if any (the export panel takes its parameters)."""
    return _PANELS.get(_viewer_id(viewer))


def _viewer_id(viewer) -> int:
    # napari hands plugin widgets a proxy of the viewer; key by the viewer itself
    return id(getattr(viewer, "__wrapped__", viewer))


class AugmentWidget(QWidget):
    """Dock widget: parameters on top, a progress bar and status, the curves plot below."""

    # emitted (from any thread) when the viewer asked for a full frame that is not computed yet
    frame_needed = Signal()

    def __init__(self, napari_viewer):
        super().__init__()
        # torch work runs on the GUI thread (planes) and on worker threads (field, curves): one
        # torch thread keeps them from competing for OpenMP teams and leaves a core to napari.
        torch.set_num_threads(1)
        self.viewer = napari_viewer
        _PANELS[_viewer_id(napari_viewer)] = self
        self.model: PreviewModel | None = None
        self._arrays = None
        self._worker = None
        self._field_pending = False
        self._key = None  # identity of the (image, labels) pair behind the model
        self._label_values: list[int] = []
        self._build()
        self._field_timer = QTimer(self, singleShot=True, interval=FIELD_DEBOUNCE_MS)
        self._field_timer.timeout.connect(self._start_field_worker)
        self._curves_timer = QTimer(self, singleShot=True, interval=60)
        self._curves_timer.timeout.connect(self._start_curves_worker)
        self._workers = WorkerSet("LAUGEN")
        self._curves_pending = False
        napari_viewer.layers.events.inserted.connect(self._reset_choices)
        napari_viewer.layers.events.removed.connect(self._reset_choices)
        napari_viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        napari_viewer.dims.events.current_step.connect(self._on_step)
        self.frame_needed.connect(self._warm_current_frame, Qt.ConnectionType.QueuedConnection)
        self._reset_choices()

    # -- workers --------------------------------------------------------------------------
    def _run(self, fn, *args, **kwargs):
        """Run ``fn`` on a worker thread (see :class:`~laugen_napari.ui.workers.WorkerSet`)."""
        return self._workers.run(fn, *args, **kwargs)

    @property
    def busy(self) -> bool:
        """Whether a field, curves or frame computation is running."""
        return bool(self._workers)

    def wait_idle(self, timeout_ms: int = 30000) -> None:
        """Block until every worker of this panel has finished (for shutdown and tests)."""
        self._workers.wait_idle(timeout_ms)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.wait_idle()
        super().closeEvent(event)

    # -- construction ---------------------------------------------------------------------
    def _build(self) -> None:
        w = {}
        w["image"] = ComboBox(label="image", choices=lambda _: self._input_layers(Image))
        w["labels"] = ComboBox(label="labels", choices=lambda _: self._input_layers(Labels))
        w["driving"] = Select(label="driving labels", choices=lambda _: self._label_values, allow_multiple=True)
        w["kind"] = ComboBox(label="kind", choices=list(KINDS), value="uniform")
        w["sigma"] = FloatSpinBox(label="sigma (mm)", value=5.0, min=0.5, max=50.0, step=0.5)
        w["direction"] = LineEdit(label="direction X,Y,Z (world)", value="1, 0, 0")
        w["view_axis"] = PushButton(text="along the current view axis")
        w["centre"] = LineEdit(label="centre z,y,x (voxels)", value="")
        w["pick"] = PushButton(text="click in the viewer to set the centre")
        w["spread"] = FloatSpinBox(label="spread (mm)", value=10.0, min=0.5, max=200.0, step=0.5)
        w["trajectory"] = ComboBox(label="trajectory", choices=list(TRAJECTORIES), value="linear")
        w["slope_min"] = FloatSpinBox(label="slope min (mm/frame)", value=0.1, min=-5, max=5, step=0.05)
        w["slope_max"] = FloatSpinBox(label="slope max (mm/frame)", value=0.4, min=-5, max=5, step=0.05)
        w["rate"] = FloatSpinBox(label="rate (1/frame)", value=1.0, min=0.01, max=10, step=0.05)
        w["values"] = LineEdit(label="custom z_t (mm)", value="0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5")
        w["frames"] = SpinBox(label="frames", value=8, min=2, max=64)
        w["seed"] = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        w["device"] = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        w["difference"] = ComboBox(label="difference", choices=["I_t - I_0", "I_t - I_(t-1)"], value="I_t - I_0")
        w["show_difference"] = CheckBox(label="show the difference layer", value=False)
        w["status"] = Label(value="pick an image and a labels layer")
        self.form = Container(widgets=list(w.values()))
        self.w = w
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        self.plot = SeriesCurvesPlot(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot)
        for name in ("image", "labels"):
            w[name].changed.connect(self._on_layers_changed)
        for name in ("driving", "kind", "sigma", "direction", "centre", "spread", "device"):
            w[name].changed.connect(self._schedule_field)
        for name in ("trajectory", "slope_min", "slope_max", "rate", "values", "frames", "seed"):
            w[name].changed.connect(self._on_trajectory_changed)
        w["difference"].changed.connect(self._on_difference_changed)
        w["show_difference"].changed.connect(self._on_difference_changed)
        w["view_axis"].changed.connect(self._direction_from_view)
        w["pick"].changed.connect(self._toggle_pick)
        w["kind"].changed.connect(self._show_kind_fields)
        w["trajectory"].changed.connect(self._show_trajectory_fields)
        self._show_kind_fields()
        self._show_trajectory_fields()

    def _show_kind_fields(self, *_) -> None:
        kind = self.w["kind"].value
        for name in ("direction", "view_axis"):
            self.w[name].visible = kind == "directional"
        for name in ("centre", "pick", "spread"):
            self.w[name].visible = kind == "gaussian"

    def _show_trajectory_fields(self, *_) -> None:
        name = self.w["trajectory"].value
        for key in ("slope_min", "slope_max", "seed"):
            self.w[key].visible = name != "custom"
        self.w["rate"].visible = name in ("sigmoid", "exponential", "gompertz")
        self.w["values"].visible = name == "custom"
        self.w["frames"].visible = name != "custom"

    def _input_layers(self, kind) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, kind) and layer.name not in (SERIES, MASKS, DIFF)]

    def _reset_choices(self, *_) -> None:
        self.form.reset_choices()
        self._on_layers_changed()

    # -- parameters -----------------------------------------------------------------------
    def _status(self, text: str) -> None:
        self.w["status"].value = text

    @staticmethod
    def _numbers(text: str, n: int | None, what: str) -> list[float]:
        try:
            vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from None
        if n is not None and len(vals) != n:
            raise ValueError(f"{what}: expected {n} numbers, got {len(vals)}")
        if not np.all(np.isfinite(vals)):
            raise ValueError(f"{what}: values must be finite")
        return vals

    def trajectory_values(self) -> np.ndarray:
        """z_t in mm for the current trajectory widgets (the slope drawn with the seed)."""
        w = self.w
        name = w["trajectory"].value
        if name == "custom":
            traj = make_trajectory("custom", values=self._numbers(w["values"].value, None, "custom z_t"))
            return traj.sample(len(traj.values)).z_mm
        rate = w["rate"].value if name != "linear" else None
        lo, hi = sorted((w["slope_min"].value, w["slope_max"].value))  # a range whichever end moved first
        traj = make_trajectory(name, (lo, hi), rate)
        # the same stream as series 0 of `laugen generate --seed`: the preview is what gets exported
        return traj.sample(w["frames"].value, series_seed(w["seed"].value, 0)).z_mm

    def _centre_zyx(self) -> list[float]:
        text = self.w["centre"].value
        if not text.strip():
            raise ValueError("gaussian: set a centre (click in the viewer or type z, y, x)")
        return self._numbers(text, 3, "centre")

    def generate_options(self) -> GenerateOptions:
        """The panel's parameters as ``laugen generate`` options (world direction, file voxel centre)."""
        w = self.w
        name, kind = w["trajectory"].value, w["kind"].value
        image = w["image"].value
        centre = None
        if kind == "gaussian":
            if image is None:
                raise ValueError("pick an image layer first")
            centre = list(volume_from_layer(image, viewer=self.viewer).array_to_file_index(self._centre_zyx()))
        values = self._numbers(w["values"].value, None, "custom z_t") if name == "custom" else None
        return GenerateOptions(
            kind=kind, trajectory=name, frames=len(values) if values else w["frames"].value,
            slope_range=tuple(sorted((w["slope_min"].value, w["slope_max"].value))), values=values,
            rate=w["rate"].value if name in ("sigmoid", "exponential", "gompertz") else None,
            labels=list(w["driving"].value) or None, sigma_mm=w["sigma"].value,
            direction=self._numbers(w["direction"].value, 3, "direction") if kind == "directional" else None,
            center=centre, spread_mm=w["spread"].value, seed=w["seed"].value, device=w["device"].value,
        )

    def engine_kwargs(self, image: Image) -> dict:
        """Keyword arguments of :class:`Augmenter` for the current widgets, with the image layer's
        geometry (spacing in mm, world direction to array axes) as the export uses it."""
        w = self.w
        kind = w["kind"].value
        volume = volume_from_layer(image, viewer=self.viewer)
        direction = centre = None
        if kind == "directional":
            direction = volume.world_to_array_direction(self._numbers(w["direction"].value, 3, "direction"))
        if kind == "gaussian":
            centre = self._centre_zyx()
        return {
            "spacing": volume.spacing,
            "selected": list(w["driving"].value) or None,
            "sigma_mm": w["sigma"].value,
            "kind": make_kind(kind, direction=direction, center=centre, spread_mm=w["spread"].value),
            "device": w["device"].value,
        }

    # -- layers ---------------------------------------------------------------------------
    def _on_layers_changed(self, *_) -> None:
        image, labels = self.w["image"].value, self.w["labels"].value
        if image is None or labels is None:
            return
        img = np.asarray(image.data)
        lab = np.asarray(labels.data)
        if img.ndim != 3 or lab.ndim != 3:
            show_error("LAUGEN: the image and the labels must be 3D layers (Z, Y, X)")
            return
        if img.shape != lab.shape:
            show_error(f"LAUGEN: image {img.shape} and labels {lab.shape} differ in shape")
            return
        key = (id(image), id(labels))
        if key == self._key:
            return
        self._key = key
        values = label_values(lab) if np.issubdtype(lab.dtype, np.integer) else []
        if not values:
            show_error(f"LAUGEN: the labels layer '{labels.name}' is empty")
            return
        self._label_values = values
        self.w["driving"].reset_choices()
        self.w["driving"].value = values
        self.model = PreviewModel(img, lab)
        self.model.on_missing_frame = lambda z: self.frame_needed.emit()
        self._ensure_layers(image)
        self._on_trajectory_changed()
        self._schedule_field()

    def _ensure_layers(self, image: Image) -> None:
        scale = (1.0,) + tuple(image.scale[-3:])
        translate = (0.0,) + tuple(image.translate[-3:])
        series, masks, diff = preview_arrays(self.model)
        self._arrays = (series, masks, diff)
        lo, hi = (float(v) for v in image.contrast_limits)
        span = max(hi - lo, 1e-6)
        for name in (SERIES, MASKS, DIFF):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.viewer.add_image(series, name=SERIES, scale=scale, translate=translate, contrast_limits=(lo, hi),
                              colormap="gray")
        self.viewer.add_image(diff, name=DIFF, scale=scale, translate=translate, colormap="PiYG",
                              contrast_limits=(-0.25 * span, 0.25 * span), visible=False)
        layer = self.viewer.add_labels(masks, name=MASKS, scale=scale, translate=translate, opacity=0.35)
        layer.editable = False
        self._on_difference_changed()

    def _layers(self):
        return [self.viewer.layers[n] for n in (SERIES, MASKS, DIFF) if n in self.viewer.layers]

    def refresh_layers(self) -> None:
        """Redraw the series layers from the model (the lazy arrays stay the same objects)."""
        for layer in self._layers():
            layer.refresh()

    def _on_difference_changed(self, *_) -> None:
        if self._arrays is None:
            return
        diff: LazyDifference = self._arrays[2]
        diff.reference = "first" if self.w["difference"].value == "I_t - I_0" else "previous"
        if DIFF in self.viewer.layers:
            layer = self.viewer.layers[DIFF]
            layer.visible = self.w["show_difference"].value
            layer.refresh()

    # -- trajectory: cheap, on the GUI thread -----------------------------------------------------
    def _on_trajectory_changed(self, *_) -> None:
        if self.model is None:
            return
        try:
            z = self.trajectory_values()
        except ValueError as exc:
            self._status(str(exc))
            return
        if self.model.augmenter is not None:
            self._status(self._ready_text(self.model.augmenter))
        frames_changed = len(z) != self.model.frames
        self.model.set_trajectory(z)
        if frames_changed:
            for layer in self._layers():
                layer.data = layer.data  # new shape: napari re-reads the extent
        self.refresh_layers()
        self._curves_timer.start()

    # -- field: in a worker thread ----------------------------------------------------------
    def _schedule_field(self, *_) -> None:
        if self.model is not None:
            self._field_timer.start()

    def _start_field_worker(self) -> None:
        if self.model is None:
            return
        if self._worker is not None:
            self._field_pending = True
            return
        try:
            kwargs = self.engine_kwargs(self.w["image"].value)
        except ValueError as exc:
            self._status(str(exc))
            return
        model = self.model
        self.progress.setRange(0, 0)  # busy
        self._status("computing the displacement field…")
        self._worker = self._run(Augmenter, model.image, model.labels, **kwargs,
                                 returned=lambda aug, model=model: self._field_ready(model, aug),
                                 errored=self._field_failed, finished=self._worker_finished)

    def _field_ready(self, model: PreviewModel, aug: Augmenter) -> None:
        if model is not self.model:
            return
        model.set_augmenter(aug)
        self._status(self._ready_text(aug))
        self.refresh_layers()
        self._curves_timer.start()
        if self.viewer.dims.ndisplay == 3:
            self._warm_current_frame()

    @staticmethod
    def _ready_text(aug: Augmenter) -> str:
        return f"{aug.kind.name} field ready: {aug.warper.n_moving:,} moving voxels"

    def _field_failed(self, exc: Exception) -> None:
        self._status(f"field not computed: {exc}")
        show_error(f"LAUGEN: {exc}")

    def _worker_finished(self) -> None:
        self._worker = None
        self.progress.setRange(0, 1)
        if self._field_pending:
            self._field_pending = False
            self._start_field_worker()

    # -- curves and 3D frames: in worker threads ----------------------------------------------
    def _start_curves_worker(self) -> None:
        if self.model is None or self.model.augmenter is None:
            return
        if getattr(self, "_curves_worker", None) is not None:
            self._curves_pending = True  # one at a time; rerun with the latest values after
            return

        def finished():
            self._curves_worker = None
            if self._curves_pending:
                self._curves_pending = False
                self._curves_timer.start()

        model, size = self.model, self.plot.size_px

        def curves_image():
            return render_curves(model.curves(), *size)

        self._curves_worker = self._run(curves_image, returned=self.plot.show_rgba, finished=finished,
                                        errored=lambda exc: show_error(f"LAUGEN curves: {exc}"))

    def _current_frame(self) -> int:
        return int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim >= 4 else 0

    def _warm_current_frame(self) -> None:
        """Compute the full frame on screen on a worker thread, then redraw (3D display)."""
        if self.model is None or self.model.augmenter is None:
            return
        if getattr(self, "_warm_worker", None) is not None:
            self._warm_pending = True
            return

        def finished():
            self._warm_worker = None
            if getattr(self, "_warm_pending", False):
                self._warm_pending = False
                self._warm_current_frame()
            else:
                self.refresh_layers()

        self._warm_worker = self._run(self.model.warm_frame, self._current_frame(), finished=finished)

    def _on_ndisplay(self, event) -> None:
        if self.viewer.dims.ndisplay == 3:
            self._warm_current_frame()

    def _on_step(self, event) -> None:
        if self.viewer.dims.ndisplay == 3:
            self._warm_current_frame()

    # -- direction and centre helpers ---------------------------------------------------------
    def _direction_from_view(self, *_) -> None:
        """Set the direction to the axis perpendicular to the screen (2D view)."""
        order = self.viewer.dims.order
        spatial_hidden = [a for a in order[:-2] if a >= self.viewer.dims.ndim - 3]
        if not spatial_hidden:
            show_info("LAUGEN: switch to a 2D view to take its axis")
            return
        axis = spatial_hidden[-1] - (self.viewer.dims.ndim - 3)  # 0 = z, 1 = y, 2 = x
        xyz = [0.0, 0.0, 0.0]
        xyz[2 - axis] = 1.0
        self.w["direction"].value = ", ".join(f"{v:g}" for v in xyz)

    def _toggle_pick(self, *_) -> None:
        image = self.w["image"].value
        if image is None:
            show_error("LAUGEN: pick an image layer first")
            return
        if self._pick_centre in image.mouse_drag_callbacks:
            image.mouse_drag_callbacks.remove(self._pick_centre)
            self._status("centre picking off")
            return
        image.mouse_drag_callbacks.append(self._pick_centre)
        self._status("click on the image to set the centre")

    def _pick_centre(self, layer, event) -> None:
        zyx = np.round(np.asarray(layer.world_to_data(event.position))[-3:]).astype(int)
        if np.any(zyx < 0) or np.any(zyx >= np.asarray(layer.data.shape[-3:])):
            show_error("LAUGEN: the click lies outside the image")
            return
        self.w["centre"].value = ", ".join(str(int(v)) for v in zyx)
        if self._pick_centre in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._pick_centre)
