"""The "LAUGEN export" dock: series for training (exactly what ``laugen generate`` writes) and
movies for demos.

Generation parameters come from :attr:`ExportWidget.options_provider`, a callable returning a
:class:`~laugen_napari.pipeline.GenerateOptions`. By default it reads this panel's own fields, so
the dock works on its own; the augment panel can set it to hand over its current settings
(``export.options_provider = augment.generate_options``), which hides those fields.

Work runs on a worker thread (ui/workers.py) with a progress bar; nothing is overwritten without
asking (:meth:`ExportWidget.confirm_overwrite`, a question box that tests override); every
problem is a napari notification.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFrame, QMessageBox, QProgressBar, QScrollArea, QVBoxLayout, QWidget

from ..core import KINDS, TRAJECTORIES
from ..io.movie import movie_format, render_series_frames, write_movie
from ..io.nifti import check_same_grid
from ..pipeline import GenerateOptions, generate_to_directory
from .layers import PlaneOnScreen, source_unchanged, volume_from_layer
from .workers import ThreadWorker

OptionsProvider = Callable[[], GenerateOptions]

_DIFFERENCE_CHOICES = [("no difference map", "none"), ("difference I_t - I_0", "first"),
                       ("difference I_t - I_(t-1)", "previous")]
Z_MM_KEYS = ("laugen_z_mm", "z_mm")
"""Series layer metadata keys whose value (z_t in mm) is stamped on the movie frames."""


def _numbers(text: str, what: str, count: int | None = None, integer: bool = False) -> list[float] | None:
    """Comma/space separated numbers, or None for an empty field."""
    parts = [p for p in text.replace(";", ",").replace(",", " ").split() if p]
    if not parts:
        return None
    try:
        values = [int(p) if integer else float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what}: expected numbers, got {text!r}") from None
    if count is not None and len(values) != count:
        raise ValueError(f"{what}: expected {count} numbers, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what}: numbers must be finite")
    return values


class ExportWidget(QWidget):
    """Dock widget writing LAUGEN series (4D NIfTI + sidecar) and movies (MP4/GIF)."""

    progress_changed = Signal(int, int)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._options_provider: OptionsProvider | None = None
        self.worker: Any = None
        self.last_result: Any = None
        self.last_error: BaseException | None = None
        d = GenerateOptions()

        # -- inputs
        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self.labels = ComboBox(label="labels", choices=self._labels_choices, nullable=True)
        self.outdir = FileEdit(label="output folder", mode="d")
        # -- parameters (used when no options_provider is set)
        self.kind = ComboBox(label="kind", choices=list(KINDS), value=d.kind)
        self.trajectory = ComboBox(label="trajectory", choices=list(TRAJECTORIES), value=d.trajectory)
        self.frames = SpinBox(label="frames", min=2, max=1000, value=d.frames)
        self.slope_min = FloatSpinBox(label="slope min (mm/frame)", min=-50, max=50, step=0.05, value=d.slope_range[0])
        self.slope_max = FloatSpinBox(label="slope max (mm/frame)", min=-50, max=50, step=0.05, value=d.slope_range[1])
        self.rate = LineEdit(label="rate (blank: default)", value="")
        self.midpoint = LineEdit(label="midpoint (blank: middle)", value="")
        self.values = LineEdit(label="custom z_t (mm)", value="")
        self.label_values = LineEdit(label="driving labels (blank: all)", value="")
        self.sigma = FloatSpinBox(label="sigma (mm)", min=0.1, max=200, step=0.5, value=d.sigma_mm)
        self.direction = LineEdit(label="direction X Y Z (RAS)", value="1 0 0")
        self.center = LineEdit(label="centre I J K (voxel)", value="")
        self.spread = FloatSpinBox(label="spread (mm)", min=0.1, max=500, step=1.0, value=d.spread_mm)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=d.seed)
        self.series = SpinBox(label="series", min=1, max=100000, value=d.series)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value=d.device)
        self.params = Container(widgets=[
            self.kind, self.trajectory, self.frames, self.slope_min, self.slope_max, self.rate, self.midpoint,
            self.values, self.label_values, self.sigma, self.direction, self.center, self.spread, self.seed,
            self.series, self.device,
        ])
        self.params.margins = (0, 0, 0, 0)
        self.params_note = Label(value="parameters: from the LAUGEN augment panel")
        self.params_note.visible = False
        self.series_button = PushButton(text="Export series")
        # -- movie
        self.movie_series = ComboBox(label="series layer (T,Z,Y,X)", choices=self._series_choices, nullable=True)
        self.movie_labels = ComboBox(label="mask series", choices=self._mask_series_choices, nullable=True)
        self.difference = ComboBox(label="difference", choices=_DIFFERENCE_CHOICES, value="none")
        self.fps = FloatSpinBox(label="frames per second", min=0.5, max=60, step=0.5, value=4.0)
        self.movie_path = FileEdit(label="movie file", mode="w", filter="Movies (*.mp4 *.gif)")
        self.movie_button = PushButton(text="Export movie")
        self.status = Label(value="")

        self.form = Container(widgets=[
            Label(value="<b>Series</b> (as <tt>laugen generate</tt>)"), self.image, self.labels, self.outdir,
            self.params_note, self.params, self.series_button,
            Label(value="<b>Movie</b> of the current view"), self.movie_series, self.movie_labels, self.difference,
            self.fps, self.movie_path, self.movie_button,
        ])
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self.form.native)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status.native)

        self.series_button.changed.connect(self.export_series)
        self.movie_button.changed.connect(self.export_movie)
        self.progress_changed.connect(self._on_progress)
        events = self.viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered):
            emitter.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        self._on_layers_changed()

    # -- layer lists --------------------------------------------------------------------------
    def _layers(self, kind: type, ndim: Sequence[int]) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, kind) and layer.ndim in ndim and not getattr(layer, "rgb", False)]

    def _image_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return self._layers(Image, (3,))

    def _labels_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return self._layers(Labels, (3,))

    def _series_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return self._layers(Image, (4,))

    def _mask_series_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return self._layers(Labels, (4,))

    def _on_layers_changed(self, event: Any = None) -> None:
        """Follow layers being added, removed, renamed or reordered."""
        layer = getattr(event, "value", None)
        if event is not None and getattr(event, "type", "") == "inserted" and layer is not None:
            layer.events.name.connect(self._on_layers_changed)
        try:
            self.form.reset_choices()
        except RuntimeError:  # the Qt side is gone (dock closed)
            return
        for combo, choices in ((self.image, self._image_choices()), (self.labels, self._labels_choices()),
                               (self.movie_series, self._series_choices()),
                               (self.movie_labels, self._mask_series_choices())):
            if combo.value is None and choices:
                combo.value = choices[0][1]

    # -- parameters ---------------------------------------------------------------------------
    @property
    def options_provider(self) -> OptionsProvider | None:
        """Callable giving the generation parameters; None: this panel's own fields."""
        return self._options_provider

    @options_provider.setter
    def options_provider(self, provider: OptionsProvider | None) -> None:
        self._options_provider = provider
        self.params.visible = provider is None
        self.params_note.visible = provider is not None

    def options_from_fields(self) -> GenerateOptions:
        """:class:`GenerateOptions` from this panel's fields (ValueError for unusable input)."""
        rate = _numbers(self.rate.value, "rate", 1)
        midpoint = _numbers(self.midpoint.value, "midpoint", 1)
        values = _numbers(self.values.value, "custom z_t") if self.trajectory.value == "custom" else None
        labels = _numbers(self.label_values.value, "driving labels", integer=True)
        options = GenerateOptions(
            kind=self.kind.value,
            trajectory=self.trajectory.value,
            frames=int(self.frames.value),
            slope_range=(float(self.slope_min.value), float(self.slope_max.value)),
            values=values,
            rate=rate[0] if rate else None,
            midpoint=midpoint[0] if midpoint else None,
            labels=[int(v) for v in labels] if labels else None,
            sigma_mm=float(self.sigma.value),
            direction=_numbers(self.direction.value, "direction", 3) if self.kind.value == "directional" else None,
            center=_numbers(self.center.value, "centre", 3) if self.kind.value == "gaussian" else None,
            spread_mm=float(self.spread.value),
            seed=int(self.seed.value),
            series=int(self.series.value),
            device=self.device.value,
        )
        if options.trajectory == "custom" and values is None:
            raise ValueError("trajectory custom needs the z_t values (mm, starting with 0)")
        if values is not None:
            options.frames = len(values)  # as `laugen generate --values` does
        return options

    def generate_options(self) -> GenerateOptions:
        """The parameters an export uses: the provider's, else the augment panel's when one is
        open in the viewer, else this panel's own fields."""
        if self._options_provider is None:
            from .augment_widget import augment_panel

            panel = augment_panel(self.viewer)
            if panel is not None:
                self.options_provider = panel.generate_options
        provider = self._options_provider or self.options_from_fields
        options = provider()
        if not isinstance(options, GenerateOptions):
            raise TypeError(f"options_provider returned {type(options).__name__}, not GenerateOptions")
        return options

    # -- questions and progress -----------------------------------------------------------------
    def confirm_overwrite(self, path: Path) -> bool:
        """Ask before replacing ``path``; tests override this."""
        answer = QMessageBox.question(
            self, "Replace existing output?", f"{path} already exists.\nReplace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    @property
    def busy(self) -> bool:
        """Whether an export is running."""
        return self.worker is not None

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(1, int(total)))
        self.progress_bar.setValue(int(done))

    def _emit_progress(self, done: int, total: int) -> None:
        self.progress_changed.emit(int(done), int(total))

    def _start(self, work: Callable[[], Any], what: str, on_done: Callable[[Any], str]) -> Any:
        self.last_result = None
        self.last_error = None
        self.series_button.enabled = self.movie_button.enabled = False
        self.progress_bar.setRange(0, 0)  # busy until the first progress report
        self.status.value = f"{what}…"
        # errors are reported by `errored` below, not re-raised in the GUI thread
        worker = ThreadWorker(work)

        def returned(result: Any) -> None:
            self.last_result = result
            message = on_done(result)
            self.status.value = message
            show_info(message)

        def errored(exc: BaseException) -> None:
            self.last_error = exc
            self.status.value = f"{what} failed"
            show_error(f"LAUGEN export: {what} failed: {exc}")

        def finished() -> None:
            self.worker = None
            self.series_button.enabled = self.movie_button.enabled = True
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1 if self.last_error is None else 0)

        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        self.worker = worker
        worker.start()
        return worker

    @staticmethod
    def _error(message: str) -> None:
        show_error(f"LAUGEN export: {message}")

    # -- series -------------------------------------------------------------------------------
    def export_series(self) -> Any:
        """Write the series of the chosen layers into the output folder, as ``laugen generate``
        does for the same parameters. Returns the worker, or None when nothing was started."""
        if self.busy:
            show_info("LAUGEN export: an export is already running")
            return None
        try:
            image_layer, labels_layer = self.image.value, self.labels.value
            if image_layer is None:
                raise ValueError("choose an image layer (3D)")
            if labels_layer is None:
                raise ValueError("choose a labels layer (3D) on the image's grid")
            if not str(self.outdir.value).strip() or str(self.outdir.value) in (".", ""):
                raise ValueError("choose an output folder")
            outdir = Path(self.outdir.value).expanduser()
            options = self.generate_options()
            options.validate()
            image = volume_from_layer(image_layer, viewer=self.viewer)
            mask = volume_from_layer(labels_layer, reference=image, viewer=self.viewer)
            try:
                check_same_grid(image, mask)
            except ValueError:
                raise ValueError(f"{image_layer.name!r} {image.spatial_shape} and {labels_layer.name!r} "
                                 f"{mask.spatial_shape} are not on the same grid (shape, scale, translate)") from None
            if not np.any(mask.data):
                raise ValueError(f"labels layer {labels_layer.name!r} is empty")
            if options.labels is not None:
                missing = [v for v in options.labels if not np.any(mask.data == v)]
                if missing:
                    raise ValueError(f"labels {missing} do not occur in {labels_layer.name!r}")
            if outdir.exists() and not outdir.is_dir():
                raise ValueError(f"{outdir} exists and is not a folder")
            if not outdir.parent.is_dir():
                raise ValueError(f"{outdir.parent}: no such folder")
        except (ValueError, TypeError) as exc:
            self._error(str(exc))
            return None
        overwrite = False
        if outdir.exists() and any(outdir.iterdir()):
            if not self.confirm_overwrite(outdir):
                show_info(f"LAUGEN export: {outdir} kept; nothing written")
                return None
            overwrite = True
        # the worker gets its own copies: painting on the layers meanwhile changes nothing
        image.data = np.array(image.data, copy=True)
        mask.data = np.array(mask.data, copy=True)

        def work() -> list[Path]:
            for vol in (image, mask):
                if not source_unchanged(vol):
                    vol.path = None  # edited or made in napari: do not cite a file that differs
            return generate_to_directory(image, mask, outdir, options, overwrite=overwrite,
                                         progress=self._emit_progress)

        return self._start(work, "series export",
                           lambda dirs: f"LAUGEN export: {len(dirs)} series of {options.frames} frames in {outdir}")

    # -- movie --------------------------------------------------------------------------------
    def export_movie(self) -> Any:
        """Write an MP4 or GIF of the plane on screen across the frames of the series layer,
        with the mask contours and optionally a difference map. Returns the worker or None."""
        if self.busy:
            show_info("LAUGEN export: an export is already running")
            return None
        try:
            series, masks = self.movie_series.value, self.movie_labels.value
            if series is None:
                raise ValueError("choose a series layer (T, Z, Y, X)")
            if masks is not None and tuple(masks.data.shape) != tuple(series.data.shape):
                raise ValueError(f"mask series {masks.name!r} {tuple(masks.data.shape)} does not match "
                                 f"{series.name!r} {tuple(series.data.shape)}")
            if not str(self.movie_path.value).strip() or str(self.movie_path.value) in (".", ""):
                raise ValueError("choose a movie file (.mp4 or .gif)")
            path = Path(self.movie_path.value).expanduser()
            movie_format(path)
            if not path.parent.is_dir():
                raise ValueError(f"{path.parent}: no such folder")
            if path.is_dir():
                raise ValueError(f"{path} is a folder")
            plane = PlaneOnScreen(series, self.viewer, leading=1)
            mask_plane = PlaneOnScreen(masks, self.viewer, leading=1) if masks is not None else None
        except ValueError as exc:
            self._error(str(exc))
            return None
        if path.exists() and not self.confirm_overwrite(path):
            show_info(f"LAUGEN export: {path} kept; nothing written")
            return None
        frames = int(series.data.shape[0])
        lo, hi = (float(v) for v in series.contrast_limits)
        colormap = series.colormap.map
        gamma = float(series.gamma)
        difference = self.difference.value
        fps = float(self.fps.value)
        z_mm = next((series.metadata[k] for k in Z_MM_KEYS if k in series.metadata), None)
        names = ("z", "y", "x")
        fixed = ", ".join(f"{names[a - 1] if 1 <= a <= 3 else f'axis {a}'} = {i}" for a, i in plane.fixed().items())
        title = f"{series.name} ({fixed})" if fixed else series.name
        data, mask_data = series.data, (masks.data if masks is not None else None)
        label_colormap = masks.colormap if masks is not None else None

        def work() -> Path:
            total = 3 * frames
            images = np.empty((frames,) + plane.take(data, 0).shape, np.float32)
            labels = None
            for t in range(frames):
                images[t] = plane.take(data, t)
                self._emit_progress(t + 1, total)
            if mask_data is not None:
                labels = np.stack([mask_plane.take(mask_data, t) for t in range(frames)])
            colors = None
            if labels is not None and label_colormap is not None:
                colors = {}
                for v in np.unique(labels):
                    if v != 0:
                        colors[int(v)] = tuple(float(c) for c in np.asarray(label_colormap.map(np.array([v]))).reshape(-1)[:4])
            rgb = render_series_frames(
                images, labels, pixel_mm=plane.pixel_mm, contrast_limits=(lo, hi), colormap=colormap, gamma=gamma,
                label_colors=colors, difference=difference, flip_rows=plane.flip_rows, flip_cols=plane.flip_cols,
                title=title, z_mm=z_mm, progress=lambda d, _t: self._emit_progress(frames + d, total),
            )
            return write_movie(path, rgb, fps=fps, progress=lambda d, _t: self._emit_progress(2 * frames + d, total))

        return self._start(work, "movie export", lambda p: f"LAUGEN export: movie of {frames} frames in {p}")
