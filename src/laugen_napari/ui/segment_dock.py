"""The "LAUGEN segment" dock: clicks and boxes → a mask painted into a Labels layer.

Thin: it turns layers into :class:`~laugen_napari.segment.Prompts` (world → data coordinates, so
layers with any transform land on the right voxel), runs a backend from
:mod:`laugen_napari.segment` in a napari thread worker (progress, cancel) and paints the result
in one step of the layer's undo history, then emits the layer's ``data`` event so other docks
(the augment dock's driving labels) update at once. The target defaults to a new Labels layer on
the image's grid (its whole transform, rotation and shear included, and its file geometry), made
only when there is something to paint: the shipped mask is never overwritten by accident. The
Labels layer is only written after a successful run: a failure or a cancel leaves it as it was; a
target it cannot paint (lazy, read-only, a label value its type cannot hold) is refused before
the run. Progress shows in the dock and in napari's activity dock (updated on the GUI thread).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..segment import Prompts, RegionGrowingBackend, SegmentationCancelled, segment
from . import load_settings, save_settings
from .layers import LAUGEN_VOLUME, layer_transform_kwargs, series_layer_kwargs, voxel_spacing_mm
from .mpl_dock import narrow_combo, scroll_area
from .workers import ThreadWorker, activity

POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"
FALLBACK_TEXT = "Fallback: region growing (no weights)"
AXES = ("viewer's slice axis", "axis 0 (z)", "axis 1 (y)", "axis 2 (x)")
NEW_LABELS = "(new layer on the image's grid)"
NEW_LABELS_NAME = "segmentation"
SETTINGS_NAME = "segment_dock"



def placement_kwargs(image: Any, with_file_geometry: bool = False) -> dict[str, Any]:
    """Layer keyword arguments that put a new layer of ``image``'s shape exactly on ``image``: its
    whole data-to-world transform (scale, translate, rotate, shear, extra affine), so the oblique
    rotation the reader puts in ``rotate`` is kept; leading (time) axes keep the image's own scale
    and translate. ``with_file_geometry``: also the image's file geometry in the metadata, so that
    saving the new layer writes the image's affine and header (when the image has one)."""
    leading = max(int(image.ndim) - 3, 0)
    kwargs = layer_transform_kwargs(image, leading)
    if with_file_geometry and LAUGEN_VOLUME in (image.metadata or {}):  # an image read from a file
        try:
            kwargs = series_layer_kwargs(image, leading)
        except ValueError:  # no volume geometry (e.g. a flipped axis): the placement alone
            pass
    if leading:
        kwargs["scale"] = tuple(float(v) for v in image.scale[:leading]) + tuple(kwargs["scale"][leading:])
        kwargs["translate"] = tuple(float(v) for v in image.translate[:leading]) + tuple(kwargs["translate"][leading:])
    return kwargs


def label_values_fit(dtype: Any, value: int) -> str | None:
    """None when label ``value`` fits a Labels array of ``dtype``, else the range that does
    (e.g. "1..255" for uint8)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return None if value in (0, 1) else "1"
    if dtype.kind not in "ui":
        return None  # napari keeps Labels integer; anything else is left to the paint's own check
    info = np.iinfo(dtype)
    return None if info.min <= value <= info.max else f"1..{info.max}"


def _paint_undoably(labels: Any, target: np.ndarray, value: int) -> None:
    """Set ``value`` where ``target`` is set in the in-memory array of ``labels``, as one step of
    the layer's undo history, then redraw the layer.

    Not ``Labels.data_setitem``: on a layer rotated or sheared out of the plane on screen (an
    oblique file) napari's slice there is not the plane it updates, and since the slice of a numpy
    layer is a view of its data, it wrote the label into voxels outside ``target`` or raised an
    IndexError (napari 0.9.2). The history atom is the one ``data_setitem`` records (indices, old
    values, new value), which napari's undo and redo replay by plain assignment."""
    data = labels.data
    value = data.dtype.type(value)  # OverflowError here, before anything is written, if it does not fit
    indices = np.nonzero(target & (data != value))
    if not indices[0].size:
        return
    save_history = getattr(labels, "_save_history", None)  # private in napari: fall back if it moves
    if save_history is None:
        labels.data_setitem(indices, value)
        return
    save_history((indices, np.array(data[indices], copy=True), value))
    data[indices] = value
    labels.refresh()


class SegmentWidget(QWidget):
    """Dock widget: pick image, prompt layers, target labels; segment a slice or the whole volume."""

    progressed = Signal(int, int, str)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self._cancel = threading.Event()
        self._backend_override = None
        self._sam_cache: dict[tuple[str, str], Any] = {}
        self._succeeded = False
        self._pbar = None
        self._build_ui()
        self.progressed.connect(self._on_progress)
        for name in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, name).connect(self._refresh_layers)
        self._refresh_layers()
        self.restore_settings()
        self._update_backend_label()

    # -- settings memory (the SAM checkpoint need not be picked again each session) ----------------
    def settings(self) -> dict[str, Any]:
        """The remembered values: checkpoint file, model type, label value, slice axis, overwrite."""
        return {"checkpoint": self.checkpoint_edit.text().strip(), "model_type": self.model_type_combo.currentText(),
                "label_value": int(self.label_value.value()), "axis": self.axis_combo.currentIndex(),
                "overwrite": bool(self.overwrite_check.isChecked())}

    def save_settings(self) -> None:
        save_settings(SETTINGS_NAME, self.settings())

    def restore_settings(self) -> None:
        saved = load_settings(SETTINGS_NAME)
        try:
            if isinstance(saved.get("checkpoint"), str):
                self.checkpoint_edit.setText(saved["checkpoint"])
            types = [self.model_type_combo.itemText(i) for i in range(self.model_type_combo.count())]
            if saved.get("model_type") in types:
                self.model_type_combo.setCurrentText(saved["model_type"])
            if "label_value" in saved:
                self.label_value.setValue(int(saved["label_value"]))
            if "axis" in saved and 0 <= int(saved["axis"]) < self.axis_combo.count():
                self.axis_combo.setCurrentIndex(int(saved["axis"]))
            if "overwrite" in saved:
                self.overwrite_check.setChecked(bool(saved["overwrite"]))
        except (TypeError, ValueError):  # a damaged file: the defaults stay
            pass

    def closeEvent(self, event: Any) -> None:
        self.save_settings()
        super().closeEvent(event)

    def showEvent(self, event: Any) -> None:
        # a hard minimum once styled: stacked with other docks, Qt must not squash the form below it
        self.setMinimumHeight(0)
        self.setMinimumHeight(self.minimumSizeHint().height())
        super().showEvent(event)

    # -- UI --------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        inner = QWidget()
        layout = QVBoxLayout(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll_area(inner, min_height=80))  # fits a short dock: the form scrolls
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.points_combo = QComboBox()
        self.shapes_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.label_value = QSpinBox()
        self.label_value.setRange(1, 65535)
        self.label_value.setValue(1)
        self.axis_combo = QComboBox()
        self.axis_combo.addItems(AXES)
        for combo in (self.image_combo, self.points_combo, self.shapes_combo, self.labels_combo, self.axis_combo):
            narrow_combo(combo)
        form.addRow("image", self.image_combo)
        form.addRow("clicks (Points)", self.points_combo)
        form.addRow("boxes (Shapes)", self.shapes_combo)
        form.addRow("target Labels", self.labels_combo)
        form.addRow("label value", self.label_value)
        form.addRow("slice axis", self.axis_combo)
        layout.addLayout(form)

        row = QHBoxLayout()
        self.new_prompts_btn = QPushButton("new click/box layers")
        self.new_labels_btn = QPushButton("new Labels layer")
        row.addWidget(self.new_prompts_btn)
        row.addWidget(self.new_labels_btn)
        layout.addLayout(row)

        mode = QHBoxLayout()
        self.positive_btn = QRadioButton("positive click")
        self.negative_btn = QRadioButton("negative click")
        self.positive_btn.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.positive_btn)
        group.addButton(self.negative_btn)
        mode.addWidget(self.positive_btn)
        mode.addWidget(self.negative_btn)
        layout.addLayout(mode)

        ckpt = QHBoxLayout()
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("SAM / MedSAM checkpoint (.pth); empty: region growing")
        self.browse_btn = QPushButton("…")
        self.model_type_combo = QComboBox()
        self.model_type_combo.addItems(["vit_b", "vit_l", "vit_h"])
        ckpt.addWidget(self.checkpoint_edit)
        ckpt.addWidget(self.browse_btn)
        ckpt.addWidget(self.model_type_combo)
        layout.addLayout(ckpt)
        self.backend_label = QLabel(FALLBACK_TEXT)
        self.backend_label.setWordWrap(True)
        layout.addWidget(self.backend_label)
        self.overwrite_check = QCheckBox("overwrite other labels")
        layout.addWidget(self.overwrite_check)

        runs = QGridLayout()  # two rows: the dock stays narrow
        self.slice_btn = QPushButton("segment this slice")
        self.volume_btn = QPushButton("propagate through the volume")
        self.cancel_btn = QPushButton("cancel")
        self.cancel_btn.setEnabled(False)
        runs.addWidget(self.slice_btn, 0, 0)
        runs.addWidget(self.cancel_btn, 0, 1)
        runs.addWidget(self.volume_btn, 1, 0, 1, 2)
        layout.addLayout(runs)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.new_prompts_btn.clicked.connect(self.add_prompt_layers)
        self.new_labels_btn.clicked.connect(self.add_labels_layer)
        self.positive_btn.toggled.connect(self._apply_mode)
        self.points_combo.currentTextChanged.connect(self._apply_mode)
        self.browse_btn.clicked.connect(self._browse)
        self.checkpoint_edit.textChanged.connect(self._update_backend_label)
        self.model_type_combo.currentTextChanged.connect(self._update_backend_label)
        self.slice_btn.clicked.connect(lambda: self.run(volume=False))
        self.volume_btn.clicked.connect(lambda: self.run(volume=True))
        self.cancel_btn.clicked.connect(self.cancel)

    def _layers_of(self, kind: str) -> list[Any]:
        return [layer for layer in self.viewer.layers if type(layer).__name__ == kind]

    def _refresh_layers(self, event: Any = None) -> None:
        for combo, kind in ((self.image_combo, "Image"), (self.points_combo, "Points"),
                            (self.shapes_combo, "Shapes"), (self.labels_combo, "Labels")):
            current = combo.currentText()
            names = [layer.name for layer in self._layers_of(kind)]
            combo.blockSignals(True)
            combo.clear()
            if kind == "Shapes":
                combo.addItem("")
            if kind == "Labels":
                combo.addItem(NEW_LABELS)  # the default: never paint into a layer the user did not pick
            combo.addItems(names)
            if current in names or (kind == "Labels" and current == NEW_LABELS):
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self._apply_mode()

    def _layer(self, combo: QComboBox) -> Any:
        name = combo.currentText()
        if combo is self.labels_combo and name == NEW_LABELS:
            return None
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    @property
    def makes_new_labels(self) -> bool:
        """Whether the next run paints into a new Labels layer (the default)."""
        return self.labels_combo.currentText() == NEW_LABELS

    def _apply_mode(self, *_: Any) -> None:
        """Make the next click on the Points layer positive or negative (feature + colour)."""
        layer = self._layer(self.points_combo)
        if layer is None:
            return
        positive = self.positive_btn.isChecked()
        if "positive" not in layer.features:
            layer.features = {"positive": np.ones(len(layer.data), dtype=bool)}
        layer.feature_defaults = {"positive": positive}
        layer.selected_data = set()
        layer.current_face_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR

    def _browse(self) -> None:  # pragma: no cover - needs a user
        path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "PyTorch checkpoints (*.pth *.pt);;All (*)")
        if path:
            self.checkpoint_edit.setText(path)

    def _update_backend_label(self, *_: Any) -> None:
        self.backend_label.setText("backend: " + self.backend_description())

    # -- layers ----------------------------------------------------------------------------------
    def add_prompt_layers(self) -> tuple[Any, Any]:
        """Add a Points layer for clicks and a Shapes layer for boxes with the image's geometry, so
        their data coordinates are the image's voxel indices (clicks still go through world)."""
        image = self._layer(self.image_combo)
        geo = placement_kwargs(image) if image is not None else {}
        ndim = image.ndim if image is not None else 3
        points = self.viewer.add_points(np.zeros((0, ndim)), name="segment clicks", ndim=ndim, size=3,
                                        features={"positive": np.zeros(0, dtype=bool)},
                                        face_color=POSITIVE_COLOR, **geo)
        shapes = self.viewer.add_shapes(name="segment boxes", ndim=ndim, edge_color="yellow",
                                        face_color="transparent", **geo)
        self.points_combo.setCurrentText(points.name)
        self.shapes_combo.setCurrentText(shapes.name)
        self._apply_mode()
        points.mode = "add"
        self.viewer.layers.selection.active = points
        return points, shapes

    def add_labels_layer(self) -> Any:
        """Add an empty Labels layer on the image's grid and select it as the target."""
        image = self._layer(self.image_combo)
        if image is None:
            self._error("pick an image first")
            return None
        return self._new_labels(image)

    def _new_labels(self, image: Any) -> Any:
        labels = self.viewer.add_labels(np.zeros(image.data.shape, dtype=np.uint16), name=NEW_LABELS_NAME,
                                        **placement_kwargs(image, with_file_geometry=True))
        self.labels_combo.setCurrentText(labels.name)
        return labels

    # -- backend ---------------------------------------------------------------------------------
    def use_backend(self, backend: Any | None) -> None:
        """Run ``backend`` instead of the checkpoint/fallback choice (None: back to the choice)."""
        self._backend_override = backend
        self._update_backend_label()

    def backend_description(self) -> str:
        """What will run: the injected backend, SAM from the checkpoint field, or the fallback."""
        if self._backend_override is not None:
            return self._backend_override.describe()
        path = self.checkpoint_edit.text().strip()
        if path:
            return f"Segment Anything ({self.model_type_combo.currentText()}, file {os.path.basename(path)})"
        return FALLBACK_TEXT

    def _resolve_backend(self) -> Any:
        """Called in the worker: a loaded SAM (cached per file and type) or the fallback."""
        if self._backend_override is not None:
            return self._backend_override
        path = self.checkpoint_edit.text().strip()
        if not path:
            return RegionGrowingBackend()
        key = (path, self.model_type_combo.currentText())
        if key not in self._sam_cache:
            from ..segment.sam import SamBackend

            self._sam_cache[key] = SamBackend.from_checkpoint(path, key[1])
        return self._sam_cache[key]

    # -- prompts ---------------------------------------------------------------------------------
    def _to_image_index(self, layer: Any, coords: np.ndarray, image: Any) -> np.ndarray:
        """Data coordinates of ``layer`` → rounded data (array) indices of ``image``, via world."""
        out = [np.asarray(image.world_to_data(layer.data_to_world(c)), dtype=float) for c in np.atleast_2d(coords)]
        return np.rint(np.array(out).reshape(-1, image.ndim)).astype(np.int64)

    def collect_prompts(self, image: Any) -> Prompts:
        """Clicks and boxes as :class:`Prompts` in the image's array indices."""
        pos, neg, boxes = [], [], []
        points = self._layer(self.points_combo)
        if points is not None and len(points.data):
            idx = self._to_image_index(points, points.data, image)
            flags = (np.asarray(points.features["positive"], dtype=bool) if "positive" in points.features
                     else np.ones(len(idx), dtype=bool))
            pos, neg = idx[flags], idx[~flags]
        shapes = self._layer(self.shapes_combo)
        if shapes is not None:
            for verts, kind in zip(shapes.data, shapes.shape_type):
                if kind in ("rectangle", "polygon"):
                    corners = self._to_image_index(shapes, verts, image)
                    boxes.append((corners.min(axis=0), corners.max(axis=0)))
        return Prompts.create(positive=pos, negative=neg, boxes=boxes, ndim=image.ndim)

    def current_axis_and_index(self, image: Any) -> tuple[int, int]:
        """The slice axis (array axis of the image) and the index of the slice on screen."""
        choice = self.axis_combo.currentIndex()
        if choice > 0:
            axis = choice - 1
        else:
            hidden = [a for a in self.viewer.dims.not_displayed if a >= self.viewer.dims.ndim - image.ndim]
            axis = (hidden[-1] - (self.viewer.dims.ndim - image.ndim)) if hidden else 0
        index = int(np.rint(image.world_to_data(self.viewer.dims.point)[axis]))
        return axis, index

    # -- running ---------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a segmentation is running."""
        return self.worker is not None

    def cancel(self) -> None:
        """Ask the running segmentation to stop; the Labels layer is left untouched."""
        self._cancel.set()
        self.status.setText("cancelling…")

    def run(self, volume: bool = True) -> Any:
        """Start "segment this slice" (``volume=False``) or "propagate through the volume"; returns the worker."""
        if self.busy:
            self._warn("a segmentation is already running")
            return None
        image, labels = self._layer(self.image_combo), self._layer(self.labels_combo)
        if image is None or (labels is None and not self.makes_new_labels):
            self._error("pick an image and a target Labels layer (or 'new layer')")
            return None
        if image.ndim != 3 or getattr(image, "rgb", False):
            self._error(f"segmentation needs a 3D grey-level image; {image.name} has {image.ndim} dimensions")
            return None
        if labels is not None and not isinstance(labels.data, np.ndarray):
            self._error(f"the Labels layer {labels.name} is not an array in memory ({type(labels.data).__name__}; "
                        f"napari cannot paint into it either): pick another target or 'new layer'")
            return None
        if labels is not None and not labels.data.flags.writeable:
            self._error(f"the Labels layer {labels.name} is read-only: pick another target or 'new layer'")
            return None
        if labels is not None and tuple(labels.data.shape) != tuple(image.data.shape):
            self._error(f"the Labels layer {labels.name} {labels.data.shape} does not match the image "
                        f"{image.name} {image.data.shape}")
            return None
        if labels is not None:
            fits = label_values_fit(labels.data.dtype, int(self.label_value.value()))
            if fits is not None:
                self._error(f"label value {int(self.label_value.value())} does not fit the {labels.data.dtype} Labels "
                            f"layer {labels.name}: use {fits}, or 'new layer'")
                return None
        try:
            prompts = self.collect_prompts(image)
            prompts.check_inside(image.data.shape)
        except ValueError as exc:
            self._error(f"{exc}: click inside the image")
            return None
        if prompts.is_empty:
            self._warn("add a positive click (Points layer) or a box (Shapes layer) first")
            return None
        axis, index = self.current_axis_and_index(image)
        if not volume:
            on_slice = prompts.on_slice(axis, index)
            if on_slice.is_empty:
                self._warn(f"no positive click or box on the slice on screen (axis {axis}, slice {index})")
                return None
        data = image.data  # read whole (np.asarray) by segment() on the worker: a lazy layer never on this thread
        window = tuple(float(v) for v in image.contrast_limits)
        value = int(self.label_value.value())
        spacing = voxel_spacing_mm(image)
        self._cancel.clear()

        def job() -> np.ndarray:
            backend = self._resolve_backend()
            return segment(data, prompts, backend, axis=axis, index=None if volume else index, window=window,
                           spacing=spacing, progress=self.progressed.emit, cancel=self._cancel.is_set)

        self.save_settings()
        worker = ThreadWorker(job)
        self._succeeded = False
        worker.returned.connect(lambda mask: self._paint(labels, mask, value, image))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_running(True)
        self.status.setText(f"running {self.backend_description()}…")
        self._open_progress("LAUGEN segment: " + ("propagating through the volume" if volume else "this slice"))
        worker.start()
        return worker

    def _set_running(self, running: bool) -> None:
        self.slice_btn.setEnabled(not running)
        self.volume_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        if running:
            self.progress.setRange(0, 0)

    def _open_progress(self, desc: str) -> None:
        """A progress bar in napari's activity dock (driven from the GUI thread only)."""
        self._close_progress()
        self._pbar = activity(0, desc)

    def _close_progress(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(done, total))
        self.status.setText(message)
        bar = self._pbar
        if bar is not None and total > 0:
            if bar.total != total:
                bar.total = total
            step = min(done, total) - bar.n
            if step > 0:
                bar.update(step)
            bar.set_description(message[:60])

    def _on_finished(self) -> None:
        self._close_progress()
        self.worker = None
        self._set_running(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self._succeeded else 0)

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, SegmentationCancelled):
            self.status.setText("cancelled; the Labels layer is unchanged")
            self._warn("segmentation cancelled; the Labels layer is unchanged")
            return
        self.status.setText(f"failed: {exc}")
        self._error(f"segmentation failed, the Labels layer is unchanged: {exc}")

    def _paint(self, labels: Any, mask: np.ndarray, value: int, image: Any = None) -> None:
        """Write ``value`` where ``mask`` is set, as one undoable step of the Labels layer (a new
        layer on ``image``'s grid when ``labels`` is None), then emit the layer's data event. A
        failure to paint is reported in one line (status and notification): the layer is left as it
        was and a new layer made for this run is removed."""
        before = list(self.viewer.layers)
        try:
            painted = self._paint_into(labels, mask, value, image)
        except Exception as exc:  # noqa: BLE001 - a slot: nothing may escape into Qt's event loop
            for layer in list(self.viewer.layers):
                if layer not in before:  # the new layer of this run, half made
                    self.viewer.layers.remove(layer)
            name = f"the Labels layer {labels.name}" if labels is not None else "a new Labels layer"
            self._error(f"painting into {name} failed, nothing painted: {type(exc).__name__}: {exc}")
            return
        if painted is None:
            return
        labels, count = painted
        self._succeeded = True
        self.status.setText(f"painted {count} voxels with label {value} ({self.backend_description()})")
        labels.events.data(value=labels.data)  # listeners (the augment dock) see the new labels now

    def _paint_into(self, labels: Any, mask: np.ndarray, value: int, image: Any) -> tuple[Any, int] | None:
        """The painting itself: (the layer painted, voxels painted), or None when nothing was."""
        if labels is not None and labels not in self.viewer.layers:
            self._error("the target Labels layer was removed; nothing painted")
            return None
        target = mask
        if labels is not None and not self.overwrite_check.isChecked():
            current = np.asarray(labels.data)
            target = mask & ((current == 0) | (current == value))
        if not target.any():
            self.status.setText("nothing found from these prompts; the Labels layer is unchanged")
            self._warn("the segmentation is empty; nothing painted")
            return None
        if labels is None:
            if image is None or image not in self.viewer.layers:
                self._error("the image was removed; nothing painted")
                return None
            labels = self._new_labels(image)
        _paint_undoably(labels, target, value)
        return labels, int(target.sum())

    # -- notifications ----------------------------------------------------------------------------
    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(message)
        show_error(message)

    def _warn(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        self.status.setText(message)
        show_warning(message)
