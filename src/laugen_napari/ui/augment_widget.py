"""The "LAUGEN augment" dock: pick a scan, its labels and the deformation; watch the series live.

Thin by design. The generation widgets are built from the one settings model
(:class:`~laugen_napari.settings.GenerationSettings`, see :mod:`.settings_form`); the engine is
built by :func:`laugen_napari.pipeline.build_augmenter`, the function ``laugen generate`` and the
export dock use, in a worker thread; the layers show lazy arrays of
:mod:`laugen_napari.core.preview` that always hand out computed frames:
``LAUGEN series`` (T, Z, Y, X), ``LAUGEN mask series`` and ``LAUGEN difference`` (an overlay:
diverging colours, transparent at zero). They take the input layer's whole transform.

Display: anatomical orientation (axial anterior up, coronal/sagittal superior up, radiological or
neurological convention) with L/R/A/P/S/I letters on the canvas; keybindings (docs/keybindings.md):
Alt+P play/pause the frames, Shift+Right / Shift+Left next / previous frame, Alt+D show/hide the
difference overlay. The panel remembers its last settings and can load a ``series.json``.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import torch
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, Select
from napari.layers import Image, Labels
from napari.utils.colormaps import Colormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QFileDialog, QFrame, QProgressBar, QScrollArea, QVBoxLayout, QWidget

from ..core import Augmenter, series_seed  # noqa: F401 (Augmenter: scripts used to time the field here)
from ..core.labels import centroid, label_values
from ..core.preview import LazyDifference, PreviewModel, prepare_planes, preview_arrays
from ..pipeline import build_augmenter
from ..settings import GenerationSettings, SettingsError
from . import load_settings, orientation, save_settings
from .layers import check_layers_on_one_grid, cheap_to_read, geometry_of_layer, series_layer_kwargs, volume_reader
from .plots import SeriesCurvesPlot, render_curves
from .settings_form import SettingsForm
from .workers import WorkerSet

SERIES, MASKS, DIFF = "LAUGEN series", "LAUGEN mask series", "LAUGEN difference"
OUTPUTS = (SERIES, MASKS, DIFF)
FIELD_DEBOUNCE_MS = 150
PLAY_FPS = 4.0
WARM_DELAY_MS = 400  # idle time before the full frame on screen is computed ahead
# settings that change the displacement field (the rest only change z_t)
FIELD_SETTINGS = ("kind", "sigma_mm", "direction", "center", "spread_mm", "label_interpolation", "device", "labels")
DIFFERENCE_COLORMAP = Colormap(
    colors=[[0.13, 0.40, 1.0, 1.0], [0.55, 0.75, 1.0, 0.0], [1.0, 0.6, 0.5, 0.0], [1.0, 0.25, 0.1, 1.0]],
    controls=[0.0, 0.5, 0.5, 1.0], name="laugen_difference", interpolation="linear",
)
"""Blue (darker) - transparent at zero - red (brighter): the difference overlay never hides anatomy
where nothing changed."""
KEYBINDINGS = {
    "Alt-P": "play / pause the frames",
    "Shift-Right": "next frame",
    "Shift-Left": "previous frame",
    "Alt-D": "show / hide the difference overlay",
}
KEYS = ("Alt-P", "Shift-Right", "Shift-Left", "Alt-D")
"""The viewer keys the augment dock binds: play, next frame, previous frame, difference overlay."""
_PANELS: "weakref.WeakValueDictionary[int, AugmentWidget]" = weakref.WeakValueDictionary()


def augment_panel(viewer) -> "AugmentWidget | None":
    """The augment panel open in ``viewer``, if any (the export panel takes its settings)."""
    return _PANELS.get(_viewer_id(viewer))


def _viewer_id(viewer) -> int:
    # napari hands plugin widgets a proxy of the viewer; key by the viewer itself
    return id(getattr(viewer, "__wrapped__", viewer))


def _build_engine(read_image, read_mask, settings):
    """The input volumes and the engine built from them as ``laugen generate`` builds it; run on a
    worker thread (reading a layer's data may copy it; the field takes seconds on a CT volume).

    The image stays in its own dtype: the engine gathers the corners of each moving voxel's cell in
    that dtype and interpolates in float32, as ``laugen generate`` does with the file's data, so a
    float32 copy of the whole input (400 MB for a CT volume) would change nothing but the memory.
    The labels are copied: the user may paint on the layer meanwhile (a stroke during the copy is
    followed by another field computation, from the labels-edited timer)."""
    image, mask = read_image(), read_mask()
    mask.data = np.array(mask.data)
    aug = build_augmenter(image, mask, settings)
    prepare_planes(aug)
    return aug, image, mask


def _values_of(data) -> list[int]:
    """The non-zero values of a labels layer's data (none for non-integer data)."""
    lab = np.asarray(data)
    return label_values(lab) if np.issubdtype(lab.dtype, np.integer) else []


def _centre_of(data, values) -> np.ndarray | None:
    """The mean (z, y, x) voxel index of the voxels of a labels layer's data whose label is in
    ``values``; None when there are none."""
    lab = np.asarray(data)
    return centroid(np.isin(lab, np.asarray(list(values), dtype=lab.dtype))) if lab.ndim == 3 else None


class _SeriesImage(Image):
    """An Image layer whose thumbnail in 3D display reads a sample of the frame.

    napari draws a 3D layer's thumbnail from the maximum over the first displayed axis of the whole
    frame: for a CT-sized frame 420 MB read on the viewer's thread for a 32x32 icon. Here the
    maximum runs over every plane but only on a grid of rows and columns as fine as the icon."""

    @property
    def _type_string(self) -> str:  # napari's writers, menus and layer copies know it as an image
        return "image"

    def _update_thumbnail(self) -> None:
        sl = self._slice
        raw = sl.thumbnail.raw
        if self._slice_input.ndisplay != 3 or sl.empty or self.rgb or getattr(raw, "ndim", 0) != 3:
            super()._update_thumbnail()
            return
        step = max(1, -(-max(raw.shape[1:]) // max(self._thumbnail_shape[:2])))  # one step: keeps the aspect
        image = np.max(np.asarray(raw[:, ::step, ::step], dtype=np.float32), axis=0)
        lo, hi = (float(v) for v in self.contrast_limits)
        scaled = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0) ** self.gamma
        rgba = self.colormap.map(scaled.ravel()).reshape(scaled.shape + (4,))
        rgba[..., 3] *= self.opacity
        self.thumbnail = rgba


class AugmentWidget(QWidget):
    """Dock widget: layers, the generation settings, display options; progress, status, curves."""

    def __init__(self, napari_viewer):
        super().__init__()
        # torch work runs on the GUI thread (planes) and on worker threads (field, curves): one
        # torch thread keeps them from competing for OpenMP teams and leaves a core to napari.
        torch.set_num_threads(1)
        self.viewer = napari_viewer
        _PANELS[_viewer_id(napari_viewer)] = self
        self.model: PreviewModel | None = None
        self._arrays = None
        self._source = None  # (image layer, labels layer) behind the model
        self._volumes = None  # (image Volume, mask Volume) the model was built from
        self._field_key = None
        self._worker = None
        self._field_pending = False
        self._labels_version = 0
        self._geometry_version = 0  # bumped when the image or labels layer's transform changes
        self._dropped_why = ""  # why the LAUGEN layers were last removed, kept until a pair is chosen
        self._placed_geometry = -1
        self._values_for, self._values = None, []  # (labels layer id, version) -> its non-zero values
        self._reading: dict[str, object] = {}  # what a worker is reading from a layer ("values", "centre") -> its key
        self._label_values: list[int] = []
        self._last_error = ""
        self.folding_frame: int | None = None
        self._watched: set[int] = set()
        self._workers = WorkerSet("LAUGEN")
        self._closed = False
        self._build()
        self._field_timer = QTimer(self, singleShot=True, interval=FIELD_DEBOUNCE_MS)
        self._field_timer.timeout.connect(self._start_field_worker)
        self._curves_timer = QTimer(self, singleShot=True, interval=60)
        self._curves_timer.timeout.connect(self._start_curves_worker)
        self._labels_timer = QTimer(self, singleShot=True, interval=300)
        self._labels_timer.timeout.connect(self._on_labels_edited)
        self._warm_timer = QTimer(self, singleShot=True, interval=WARM_DELAY_MS)
        self._warm_timer.timeout.connect(self._warm_ahead)
        self._play_timer = QTimer(self, interval=int(1000 / PLAY_FPS))
        self._play_timer.timeout.connect(self._play_tick)
        self._curves_pending = False
        self._connections = [
            (napari_viewer.layers.events.inserted, self._on_layer_inserted),
            (napari_viewer.layers.events.removed, self._on_layer_removed),
            (napari_viewer.dims.events.ndisplay, self._on_ndisplay),
            (napari_viewer.dims.events.current_step, self._on_step),
            (napari_viewer.dims.events.order, self._on_order),
            (orientation.camera(napari_viewer).events.orientation, self._on_camera_orientation),
        ]
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self._docked = False
        self.letters = orientation.OrientationLetters(napari_viewer)
        for layer in napari_viewer.layers:
            self._watch(layer)
        self._bind_keys()
        self._restore()
        self._reset_choices()

    # -- workers --------------------------------------------------------------------------
    def _run(self, fn, *args, **kwargs):
        """Run ``fn`` on a worker thread (see :class:`~laugen_napari.ui.workers.WorkerSet`); its
        callbacks are skipped once the dock is gone (closed while the worker ran)."""
        for name in ("returned", "errored", "finished"):
            if kwargs.get(name) is not None:
                kwargs[name] = self._guarded(kwargs[name])
        return self._workers.run(fn, *args, **kwargs)

    def _guarded(self, callback):
        def call(*args):
            if self._closed:
                return None
            try:
                return callback(*args)
            except RuntimeError as exc:  # the Qt side was deleted meanwhile
                if "deleted" not in str(exc):
                    raise
                self._closed = True
                return None

        return call

    @property
    def busy(self) -> bool:
        """Whether a field, curves or frame computation is running."""
        return bool(self._workers)

    def wait_idle(self, timeout_ms: int = 30000) -> None:
        """Block until every worker of this panel has finished (for shutdown and tests)."""
        self._workers.wait_idle(timeout_ms)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.shut_down()
        super().closeEvent(event)

    def event(self, event) -> bool:  # noqa: D102 (Qt)
        if event.type() == QEvent.ParentChange:
            # napari's remove_dock_widget takes the panel out of its dock without closing it
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.shut_down()
        return super().event(event)

    def shut_down(self) -> None:
        """Stop following the viewer (the dock was closed or removed): timers stopped, settings
        remembered, workers finished and their results dropped, viewer events and keys released.
        The LAUGEN layers stay as they are."""
        if self._closed:
            return
        for timer in (self._play_timer, self._warm_timer, self._field_timer, self._curves_timer, self._labels_timer):
            timer.stop()
        self.remember_settings()
        self.wait_idle()
        self._closed = True
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        for layer in self.viewer.layers:
            for name in ("paint", "data", "labels_update", "scale", "translate", "rotate", "shear", "affine"):
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    emitter.disconnect(self._labels_touched)
                    emitter.disconnect(self._transform_touched)
        self._watched.clear()
        for key in KEYS:
            self.viewer.bind_key(key, None)  # unbind
        if _PANELS.get(_viewer_id(self.viewer)) is self:
            del _PANELS[_viewer_id(self.viewer)]

    def _on_camera_orientation(self, *_) -> None:
        self.letters.update()

    # -- construction ---------------------------------------------------------------------
    def _build(self) -> None:
        w = {}
        w["image"] = ComboBox(label="image", choices=lambda _: self._input_layers(Image))
        w["labels"] = ComboBox(label="labels", choices=lambda _: self._input_layers(Labels))
        w["driving"] = Select(label="driving labels", choices=lambda _: self._label_values, allow_multiple=True,
                              tooltip="labels that drive the deformation; none selected: every non-zero label")
        w["driving"].native.setMaximumHeight(72)  # a few rows; it scrolls for many labels
        w["hint"] = Label(value="")
        self.form = SettingsForm(exclude=("series", "labels"))
        f = self.form.fields
        w["view_axis"] = PushButton(text="direction: along the current view axis")
        w["pick"] = PushButton(text="centre: click in the viewer")
        w["load"] = PushButton(text="load settings from a series.json…")
        w["plane"] = ComboBox(label="view", choices=list(orientation.PLANES), value="axial")
        w["convention"] = ComboBox(label="left-right", choices=list(orientation.CONVENTIONS), value="radiological",
                                   tooltip="radiological: the patient's right on the screen's left")
        w["difference"] = ComboBox(label="difference", choices=["I_t - I_0", "I_t - I_(t-1)"], value="I_t - I_0")
        w["show_difference"] = CheckBox(label="show the difference overlay (Alt+D)", value=False)
        w["status"] = Label(value="pick an image and a labels layer")
        w["warning"] = Label(value="")
        w["warning"].native.setStyleSheet("color: #ff9a4a")
        w["warning"].native.setWordWrap(True)
        w["status"].native.setWordWrap(True)
        w["hint"].native.setWordWrap(True)
        layers_box = Container(widgets=[w["image"], w["labels"], w["driving"], w["hint"]])
        display = Container(widgets=[w["plane"], w["convention"], w["difference"], w["show_difference"]])
        self.container = Container(widgets=[layers_box, self.form, w["view_axis"], w["pick"], w["load"], display,
                                            w["status"], w["warning"]])
        for c in (layers_box, display, self.container):
            c.margins = (0, 0, 0, 0)
        # every widget by name; old short names kept for scripts (bench/live.py)
        self.w = {**w, **f, "sigma": f["sigma_mm"], "spread": f["spread_mm"], "centre": f["center"]}
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        self.plot = SeriesCurvesPlot(self)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.container.native)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll, 3)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot, 2)
        for name in ("image", "labels"):
            w[name].changed.connect(self._on_pair_changed)
        w["driving"].changed.connect(self._on_driving_changed)
        self.form.on_change(self._on_setting_changed)
        w["difference"].changed.connect(self._on_difference_changed)
        w["show_difference"].changed.connect(self._on_difference_changed)
        w["view_axis"].changed.connect(self._direction_from_view)
        w["pick"].changed.connect(self._toggle_pick)
        w["load"].changed.connect(lambda *_: self.load_series_json())
        w["plane"].changed.connect(self._apply_orientation)
        w["convention"].changed.connect(self._apply_orientation)
        self._show_helpers()

    def _show_helpers(self) -> None:
        f = self.form.fields
        self.w["view_axis"].visible = not f["direction"].native.isHidden()
        self.w["pick"].visible = not f["center"].native.isHidden()

    def _input_layers(self, kind) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, kind) and layer.ndim == 3
                and not getattr(layer, "rgb", False) and layer.name not in OUTPUTS]

    def _reset_choices(self, *_) -> None:
        self.container.reset_choices()
        self._on_pair_changed()

    # -- keybindings ------------------------------------------------------------------------
    def _bind_keys(self) -> None:
        actions = dict(zip(KEYS, (self.toggle_play, lambda: self.step_frame(1), lambda: self.step_frame(-1),
                                  self.toggle_difference)))
        for key, action in actions.items():
            self.viewer.bind_key(key, lambda _viewer, action=action: action(), overwrite=True)

    def step_frame(self, delta: int) -> None:
        """Show the next (``delta`` = 1) or previous frame, wrapping around."""
        if self.model is None or self.viewer.dims.ndim < 4:
            return
        step = list(self.viewer.dims.current_step)
        step[0] = (int(step[0]) + delta) % self.model.frames
        self.viewer.dims.current_step = tuple(step)

    def toggle_play(self) -> None:
        """Play the frames in a loop (in 3D, a frame is shown once it is computed), or stop."""
        if self._play_timer.isActive():
            self._play_timer.stop()
            self._status("stopped")
        elif self.model is not None:
            self._play_timer.start()
            self._status(f"playing the frames ({PLAY_FPS:g} per second; Alt+P stops)")

    @property
    def playing(self) -> bool:
        return self._play_timer.isActive()

    def _play_tick(self) -> None:
        if self.model is None or self.viewer.dims.ndim < 4:
            self._play_timer.stop()
            return
        nxt = (self._current_frame() + 1) % self.model.frames
        if self.viewer.dims.ndisplay == 3 and not self._frame_ready(nxt):
            self._warm(self._frames_for(nxt))  # wait for it rather than block the viewer
            return
        self.step_frame(1)

    def _frame_ready(self, t: int) -> bool:
        """Whether everything shown of frame ``t`` in 3D is computed (frames, and the difference
        when the overlay is shown)."""
        if not self.model.is_cached(t):
            return False
        if self._arrays is None or not self.w["show_difference"].value:
            return True
        return self.model.is_difference_cached(t, self._arrays[2]._ref(t))

    def toggle_difference(self) -> None:
        """Show or hide the difference overlay."""
        self.w["show_difference"].value = not self.w["show_difference"].value

    # -- remembered settings and series.json ---------------------------------------------------
    def remember_settings(self) -> None:
        """Store the current settings as this panel's last ones (the user's config folder)."""
        try:
            record = self.form.settings().to_record()
        except SettingsError:
            return
        save_settings("augment", {"options": record, "plane": self.w["plane"].value,
                             "convention": self.w["convention"].value})

    def _restore(self) -> None:
        data = load_settings("augment") or None
        if not data:
            return
        options = dict(data.get("options") or {})
        options.pop("center", None)  # a voxel index of the last image, not of the next one
        try:
            if options.get("kind") == "gaussian":
                options["kind"] = "uniform"  # back to gaussian once a labels layer gives a centre
                self._restore_kind = "gaussian"
            self.form.set_settings(GenerationSettings.from_record(options))
        except (SettingsError, TypeError):
            return
        for key in ("plane", "convention"):
            if data.get(key) in self.w[key].choices:
                self.w[key].value = data[key]

    def load_series_json(self, path: str | Path | None = None) -> GenerationSettings | None:
        """Load the settings recorded in a ``series.json`` (``laugen generate`` or the export dock)
        into the panel, so that the preview shows that series. Asks for the file if ``path`` is None."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "series.json of a LAUGEN series", "", "series.json (*.json)")
            if not path:
                return None
        try:
            record = json.loads(Path(path).read_text())
            options = record["options"] if isinstance(record, dict) and "options" in record else record
            settings = GenerationSettings.from_record(options)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            show_error(f"LAUGEN: {Path(path).name}: not a LAUGEN series.json ({exc})")
            return None
        self.form.set_settings(settings)
        if settings.labels is not None:
            self._select_driving(settings.labels)
        seed_note = ""
        index = record.get("series_index", 0) if isinstance(record, dict) else 0
        if index:
            seed_note = f"; the preview shows series 0 of seed {settings.seed}, the file was series {index}"
        self._status(f"settings loaded from {Path(path).name}{seed_note}")
        return settings

    # -- settings ---------------------------------------------------------------------------
    def _status(self, text: str) -> None:
        self.w["status"].value = text

    def _driving(self) -> tuple[int, ...] | None:
        chosen = sorted(int(v) for v in (self.w["driving"].value or []))
        if not chosen or set(chosen) == set(self._label_values):
            return None  # every label: as `laugen generate` without --labels
        return tuple(chosen)

    def _select_driving(self, labels) -> None:
        present = [v for v in labels if v in self._label_values]
        self.w["driving"].value = present

    def current_settings(self) -> GenerationSettings:
        """The panel's generation settings, validated (SettingsError naming the field)."""
        return self.form.settings(labels=self._driving())

    def generate_options(self) -> GenerationSettings:
        """The settings for ``laugen generate`` / the export dock (same as :meth:`current_settings`)."""
        return self.current_settings()

    def _report(self, exc: Exception) -> None:
        """A settings problem: a notification naming the field (once per message) and the status."""
        message = str(exc)
        self._status(f"not updated: {message}")
        if message != self._last_error:
            self._last_error = message
            show_error(f"LAUGEN: {message}")

    def _on_setting_changed(self, name: str) -> None:
        self._show_helpers()
        if name in ("kind", "*"):
            self._suggest_kind_fields()
        if name != "*":
            self.remember_settings()
        if name in FIELD_SETTINGS or name == "*":
            self._schedule_field()
        if name not in FIELD_SETTINGS or name == "*":
            self._on_trajectory_changed()

    def _on_driving_changed(self, *_) -> None:
        if self._label_values and not self.w["driving"].value:
            self.w["hint"].value = "no driving label selected: every non-zero label drives the deformation"
        elif not self.w["hint"].value.startswith("the labels layer"):
            self.w["hint"].value = ""
        self._schedule_field()

    # -- layers ---------------------------------------------------------------------------
    def _watch(self, layer) -> None:
        if not isinstance(layer, (Image, Labels)) or id(layer) in self._watched or layer.name in OUTPUTS:
            return
        self._watched.add(id(layer))
        if isinstance(layer, Labels):
            for name in ("paint", "data", "labels_update"):
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    emitter.connect(self._labels_touched)
        for name in ("scale", "translate", "rotate", "shear", "affine"):  # the voxel grid in the world moved
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(self._transform_touched)

    def _transform_touched(self, event=None) -> None:
        source = getattr(event, "source", None)
        if source is not None and source in (self.w["image"].value, self.w["labels"].value):
            self._geometry_version += 1
            self._schedule_field()

    def _labels_touched(self, event=None) -> None:
        source = getattr(event, "source", None)
        if source is not None and source is self.w["labels"].value:
            self._labels_timer.start()

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        self._watch(layer)
        self._reset_choices()
        image = self.w["image"].value
        if (isinstance(layer, Labels) and layer.name not in OUTPUTS and image is not None
                and tuple(layer.data.shape) == tuple(image.data.shape) and layer is not self.w["labels"].value):
            # a labels layer made for this image (drawn, or filled by the segment dock): use it
            self.w["labels"].value = layer
            if self._label_values:
                self._status(f"using the new labels layer '{layer.name}'")

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        self._watched.discard(id(layer))
        if self._source is not None and any(layer is s for s in self._source):
            self._drop_outputs(f"the {'labels' if isinstance(layer, Labels) else 'image'} layer "
                               f"'{layer.name}' was removed: its LAUGEN layers were removed too")
        self._reset_choices()

    def _drop_outputs(self, why: str) -> None:
        self._source = self._volumes = self._field_key = None
        if self.model is not None:
            self.model.release()
        self.model = None
        self._arrays = None
        for name in OUTPUTS:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.w["warning"].value = ""
        self._dropped_why = why
        self._status(why)

    def _on_pair_changed(self, *_) -> None:
        image, labels = self.w["image"].value, self.w["labels"].value
        if image is None or labels is None:
            why = self._dropped_why
            self._status(f"{why}; pick an image and a labels layer (3D)" if why else "pick an image and a labels layer (3D)")
            return
        self._dropped_why = ""
        if tuple(image.data.shape) != tuple(labels.data.shape):
            self._report(ValueError(f"image {tuple(image.data.shape)} and labels {tuple(labels.data.shape)} "
                                    "differ in shape"))
            return
        self._refresh_label_values(labels, then=self._label_values_known)

    def _label_values_known(self) -> None:
        if getattr(self, "_restore_kind", None) and self._label_values:
            self.form.fields["kind"].value, self._restore_kind = self._restore_kind, None
        self._schedule_field()

    def _refresh_label_values(self, labels, then) -> None:
        """Show the non-zero values of ``labels`` in 'driving labels', then call ``then()``.

        The values are counted over the whole volume (300 ms for a CT-sized one): once per layer
        and edit, not at every layer added or removed (the dock's own three); a lazy or large layer
        is counted on a worker (see :func:`~.layers.cheap_to_read`), and no field is computed meanwhile."""
        key = (id(labels), self._labels_version)
        if self._values_for == key or cheap_to_read(labels.data):
            self._reading.pop("values", None)
            if self._values_for != key:
                self._values_for, self._values = key, _values_of(labels.data)
            self._show_label_values(labels, self._values)
            then()
            return

        def counted(values):
            if self._reading.get("values") != key:
                return  # another edit or another layer meanwhile: its own count follows
            del self._reading["values"]
            self._values_for, self._values = key, values
            self._show_label_values(labels, values)
            then()

        def failed(exc):
            if self._reading.get("values") == key:
                del self._reading["values"]
                self._report(ValueError(f"labels layer '{labels.name}' could not be read: {exc}"))

        self._reading["values"] = key
        self._status(f"reading the labels layer '{labels.name}'…")
        self._run(_values_of, labels.data, returned=counted, errored=failed)

    def _show_label_values(self, labels, values: list[int]) -> None:
        old, selected = self._label_values, set(self.w["driving"].value or [])
        self._label_values = values
        self.w["driving"].reset_choices()
        if old != values:
            # keep the selection; a new label joins when every old label was selected
            everything = not old or set(old) <= selected
            keep = [v for v in values if v in selected or (everything and v not in old)]
            self.w["driving"].value = keep if keep else values
        if not values:
            self.w["hint"].value = (f"the labels layer '{labels.name}' is empty: paint a structure (or use the "
                                    "LAUGEN segment dock) and the preview starts")
        elif self.w["hint"].value.startswith("the labels layer"):
            self.w["hint"].value = ""

    def _on_labels_edited(self) -> None:
        labels = self.w["labels"].value
        if labels is None:
            return
        self._labels_version += 1
        self._refresh_label_values(labels, then=self._schedule_field)

    def _ensure_layers(self, image_layer) -> None:
        series, masks, diff = preview_arrays(self.model)
        self._arrays = (series, masks, diff)
        lo, hi = (float(v) for v in image_layer.contrast_limits)
        span = max(hi - lo, 1e-6)
        kwargs = series_layer_kwargs(image_layer)
        if "axis_labels" in getattr(Image, "__init__").__code__.co_varnames:
            kwargs["axis_labels"] = ("frame", "z", "y", "x")  # the time slider reads "frame"
        for name in OUTPUTS:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        # contrast limits given: napari would otherwise read every frame to find the data range
        self.viewer.add_layer(_SeriesImage(series, name=SERIES, contrast_limits=(lo, hi), colormap="gray", **kwargs))
        self.viewer.add_layer(_SeriesImage(diff, name=DIFF, colormap=DIFFERENCE_COLORMAP,
                                           contrast_limits=(-0.25 * span, 0.25 * span), blending="translucent",
                                           opacity=0.9, visible=False, **kwargs))
        layer = self.viewer.add_labels(masks, name=MASKS, opacity=0.35, **kwargs)
        layer.editable = False
        self._on_difference_changed()
        self._apply_orientation()

    def _layers(self):
        return [self.viewer.layers[n] for n in OUTPUTS if n in self.viewer.layers]

    def _reshape_layers(self) -> None:
        """After the number of frames changed: napari re-reads the shape and extent of every
        LAUGEN layer, hidden ones too (the time slider shrinks or grows)."""
        layers = self._layers()
        for layer in layers:
            clear = getattr(layer, "_clear_extent", None)  # a hidden layer keeps its cached extent
            if clear is not None:
                clear()
        for layer in layers:
            layer.data = layer.data

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
            if layer.visible:
                self._schedule_warm()

    # -- orientation ----------------------------------------------------------------------------
    def _apply_orientation(self, *_) -> None:
        self.remember_settings()
        if self.viewer.dims.ndim >= 3:
            orientation.show_plane(self.viewer, self.w["plane"].value, self.w["convention"].value)
        self.letters.update()

    def _on_order(self, *_) -> None:
        plane = orientation.displayed_plane(self.viewer)
        if plane is not None and plane != self.w["plane"].value:
            self.w["plane"].value = plane  # napari's roll/transpose buttons: follow, then orient
        else:
            self.letters.update()

    # -- trajectory: cheap, on the GUI thread -----------------------------------------------------
    def trajectory_values(self) -> np.ndarray:
        """z_t in mm for the current settings (series 0 of ``laugen generate --seed``)."""
        s = self.current_settings()
        return s.trajectory_model().sample(s.frames, series_seed(s.seed, 0)).z_mm

    def _on_trajectory_changed(self, *_) -> None:
        try:
            z = self.trajectory_values()
        except (SettingsError, ValueError) as exc:
            self._report(exc)
            return
        self._last_error = ""
        if self.model is None:
            return
        if self.model.augmenter is not None and self._worker is None:
            self._status(self._ready_text(self.model.augmenter))
        frames_changed = len(z) != self.model.frames
        self.model.set_trajectory(z)
        if frames_changed:
            self._reshape_layers()
            step = list(self.viewer.dims.current_step)
            if step and step[0] >= len(z):
                step[0] = len(z) - 1
                self.viewer.dims.current_step = tuple(step)
        self.refresh_layers()
        self._curves_timer.start()
        self._schedule_warm()

    # -- field: in a worker thread ----------------------------------------------------------
    def _schedule_field(self, *_) -> None:
        self._field_timer.start()

    def _start_field_worker(self) -> None:
        if self._worker is not None:
            self._field_pending = True
            return
        image, labels = self.w["image"].value, self.w["labels"].value
        if image is None or labels is None or tuple(image.data.shape) != tuple(labels.data.shape):
            return
        if not self._label_values or self._reading:
            return  # an empty labels layer (the hint says what to do), or a worker still reading it
        try:
            settings = self.current_settings()
        except (SettingsError, ValueError) as exc:
            self._report(exc)
            return
        self._last_error = ""
        key = (id(image), id(labels), self._labels_version, self._geometry_version) + tuple(getattr(settings, n) for n in FIELD_SETTINGS)
        if key == self._field_key and self.model is not None:
            return
        try:  # the layers' state and geometry here; their data are read on the worker
            check_layers_on_one_grid(image, labels, viewer=self.viewer)
            read_image = volume_reader(image, viewer=self.viewer)
            read_mask = volume_reader(labels, reference=image, viewer=self.viewer)
        except ValueError as exc:
            self._report(exc)
            return
        self.progress.setRange(0, 0)  # busy
        self._status("computing the displacement field…")
        job = (image, labels, key)
        self._worker = self._run(_build_engine, read_image, read_mask, settings,
                                 returned=lambda result, job=job: self._field_ready(job, *result),
                                 errored=self._field_failed, finished=self._worker_finished)

    def _field_ready(self, job, aug, image_vol, mask_vol) -> None:
        image, labels, key = job
        if image not in self.viewer.layers or labels not in self.viewer.layers:
            return
        self._field_key = key
        same_pair = (self.model is not None and self._source is not None and self._source[0] is image
                     and self._source[1] is labels and self.model.spatial_shape == mask_vol.spatial_shape
                     and SERIES in self.viewer.layers and self._placed_geometry == key[3])
        frames_before = self.model.frames if same_pair else None
        if same_pair:
            self.model.set_augmenter(aug, image=image_vol.data, labels=mask_vol.data)
        else:
            if self.model is not None:
                self.model.release()
            self.model = PreviewModel(image_vol.data, mask_vol.data)
            self.model.set_augmenter(aug)
        self._source, self._volumes = (image, labels), (image_vol, mask_vol)
        try:
            self.model.set_trajectory(self.trajectory_values())
        except (SettingsError, ValueError) as exc:
            self._report(exc)
        if not same_pair:
            self._ensure_layers(image)
            self._placed_geometry = key[3]  # the LAUGEN layers carry the image's transform of this version
        elif self.model.frames != frames_before:
            self._reshape_layers()
        self._status(self._ready_text(aug))
        self.refresh_layers()
        self._curves_timer.start()
        self._schedule_warm()

    @staticmethod
    def _ready_text(aug) -> str:
        return f"ready: {aug.kind.name} deformation, {aug.warper.n_moving:,} voxels move"

    def _field_failed(self, exc: Exception) -> None:
        self._report(exc)

    def _worker_finished(self) -> None:
        self._worker = None
        self.progress.setRange(0, 1)
        if self._field_pending:
            self._field_pending = False
            self._start_field_worker()

    # -- curves, folding notice ---------------------------------------------------------------
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
            curves = model.curves()
            return curves, render_curves(curves, *size)

        def returned(result):
            curves, rgba = result
            self.plot.show_rgba(rgba)
            if model is self.model:
                self._show_folding(curves.get("jacobian_min", []))

        self._curves_worker = self._run(curves_image, returned=returned, finished=finished,
                                        errored=lambda exc: show_error(f"LAUGEN curves: {exc}"))

    def _show_folding(self, jacobian_min) -> None:
        """Say so when the warp folds (Jacobian <= 0), as ``laugen generate`` warns, with the first
        folding frame."""
        folding = [t for t, j in enumerate(jacobian_min) if j <= 0]
        previous = self.folding_frame
        self.folding_frame = folding[0] if folding else None
        if self.folding_frame is None:
            self.w["warning"].value = ""
            return
        t = self.folding_frame
        text = (f"the warp folds (Jacobian <= 0) from frame {t} of {len(jacobian_min)} "
                f"(lowest Jacobian {min(jacobian_min):.2f}): lower the slope range or raise sigma")
        self.w["warning"].value = text
        if previous != t:
            show_warning(f"LAUGEN: {text}")

    # -- full frames: computed on a worker before 3D display needs them --------------------------
    # napari slices a 3D view on the GUI thread, before any plugin hears of the switch, and a
    # full frame takes a while to compute. So the frame on screen (and, in 3D, its neighbours) is
    # computed ahead on a worker whenever the viewer has been idle for a moment: switching to 3D,
    # stepping or playing then finds it ready. Nothing else is ever handed out for a frame.
    def _current_frame(self) -> int:
        return int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim >= 4 else 0

    def _frames_for(self, t: int) -> list[int]:
        frames = [t]
        if self._arrays is not None and self.w["show_difference"].value and self._arrays[2].reference == "previous":
            frames.append(max(t - 1, 0))
        return frames

    def _schedule_warm(self, *_) -> None:
        self._warm_timer.start()

    def _warm_ahead(self) -> None:
        t = self._current_frame()
        frames = self._frames_for(t)
        if self.viewer.dims.ndisplay == 3 and self.model is not None:
            n = self.model.frames
            frames += [(t + 1) % n, (t - 1) % n]
        self._warm(frames)

    def _warm(self, frames) -> None:
        """Compute the full frames ``frames`` on one worker, one after the other."""
        model = self.model
        if model is None or model.augmenter is None:
            return
        if getattr(self, "_warm_worker", None) is not None:
            self._warm_pending = True
            return
        diff = self._arrays[2] if self._arrays is not None and self.w["show_difference"].value else None
        frames = [f for f in dict.fromkeys(frames) if 0 <= f < model.frames]
        needed = [f for f in frames if not model.is_cached(f)]
        differences = [] if diff is None else [(f, diff._ref(f)) for f in frames
                                               if not model.is_difference_cached(f, diff._ref(f))]
        if not needed and not differences:
            return

        def work():
            for f in needed:
                if model is not self.model or f >= model.frames:
                    return
                model.warm_frame(f)
            for f, ref in differences:  # the overlay in 3D shows I_t - I_ref: ready before it is asked for
                if model is not self.model or f >= model.frames:
                    return
                model.warm_difference(f, ref)

        def finished():
            self._warm_worker = None
            if getattr(self, "_warm_pending", False):
                self._warm_pending = False
                self._warm_timer.start()

        self._warm_worker = self._run(work, finished=finished)

    def _warm_current_frame(self) -> None:
        self._warm(self._frames_for(self._current_frame()))

    def _on_ndisplay(self, event) -> None:
        self.letters.update()
        self._schedule_warm()

    def _on_step(self, event) -> None:
        if self.model is not None:
            if self.viewer.dims.ndisplay == 3:
                self._warm_ahead()
            else:
                self._schedule_warm()

    # -- direction and centre helpers ---------------------------------------------------------
    def _suggest_kind_fields(self) -> None:
        """A kind that needs a direction or a centre starts from one the user can see: the axis
        through the screen (2D view), or the middle of the driving labels; the status says so."""
        f = self.form.fields
        kind = f["kind"].value
        if kind == "directional" and not f["direction"].value.strip():
            if self.viewer.dims.ndisplay == 2 and self.viewer.dims.ndim >= 3:
                self._direction_from_view()
                self._status(f"direction set to the axis through the screen ({f['direction'].value}); change it "
                             "or press the button in another view")
        elif kind == "gaussian" and not f["center"].value.strip():
            image, labels = self.w["image"].value, self.w["labels"].value
            if image is None or labels is None or not self._label_values:
                return
            chosen = self._driving() or self._label_values
            geometry = geometry_of_layer(image, viewer=self.viewer)  # the settings' frame, no data read
            key = (id(labels), self._labels_version, tuple(chosen))

            def place(zyx):
                if self._reading.get("centre") == key:
                    del self._reading["centre"]
                if zyx is None or f["kind"].value != "gaussian" or f["center"].value.strip():
                    self._schedule_field()
                    return
                f["center"].value = ", ".join(f"{v:g}" for v in geometry.array_to_file_index(np.round(zyx)))
                self._status("centre set to the middle of the driving labels; click in the viewer to move it")

            if cheap_to_read(labels.data):
                place(_centre_of(labels.data, chosen))
                return
            self._reading["centre"] = key
            self._status("finding the middle of the driving labels…")
            self._run(_centre_of, labels.data, chosen, returned=place,
                      errored=lambda exc: (self._reading.pop("centre", None), self._report(exc)))

    def _direction_from_view(self, *_) -> None:
        """Set the direction (world x, y, z) to the axis perpendicular to the screen (2D view)."""
        if self.viewer.dims.ndisplay != 2 or self.viewer.dims.ndim < 3:
            show_info("LAUGEN: switch to a 2D view to take its axis")
            return
        ndim = self.viewer.dims.ndim
        sliced = self.viewer.dims.order[-3]
        axis = sliced - (ndim - 3)  # 0 = z, 1 = y, 2 = x
        if axis < 0:
            show_info("LAUGEN: the view does not slice a spatial axis")
            return
        xyz = [0.0, 0.0, 0.0]
        xyz[2 - axis] = 1.0
        self.form.fields["direction"].value = ", ".join(f"{v:g}" for v in xyz)

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
        ijk = geometry_of_layer(layer, viewer=self.viewer).array_to_file_index(zyx)  # the settings' frame, no data read
        self.form.fields["center"].value = ", ".join(f"{v:g}" for v in ijk)
        if self._pick_centre in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._pick_centre)
