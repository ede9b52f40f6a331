"""The "LAUGEN export" dock: series for training (exactly what ``laugen generate`` writes) and
movies for demos.

This dock has no generation form of its own. The settings are those of the LAUGEN augment dock
(shown here read-only, only the fields that apply); without an augment dock it says so and offers
to open one. Only what the export alone uses is set here: the layers, the output folder and the
number of series (a widget built from the ``series`` field of the settings model). A script can set
:attr:`ExportWidget.options_provider` to a callable returning
:class:`~laugen_napari.settings.GenerationSettings` instead.

Work runs on a worker thread (ui/workers.py) with a progress bar; nothing is overwritten without
asking (:meth:`ExportWidget.confirm_overwrite`, a question box that tests override); every
problem is a napari notification. Movies show the plane on screen as the viewer orients it
(anatomical orientation, letters at the edges), assembled by :func:`laugen_napari.io.movie.series_movie`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import QFrame, QMessageBox, QProgressBar, QScrollArea, QVBoxLayout, QWidget

from ..core.labels import label_values
from ..io.movie import movie_format, series_movie, write_movie
from ..pipeline import generate_to_directory
from ..settings import GenerationSettings, setting_fields
from . import load_settings, orientation, save_settings
from .layers import PlaneOnScreen, check_layers_on_one_grid, cheap_to_read, source_unchanged, volume_reader
from .settings_form import SettingsForm, settings_summary
from .workers import ThreadWorker

OptionsProvider = Callable[[], GenerationSettings]

_DIFFERENCE_CHOICES = [("no difference map", "none"), ("difference I_t - I_0", "first"),
                       ("difference I_t - I_(t-1)", "previous")]
Z_MM_KEYS = ("laugen_z_mm", "z_mm")
"""Series layer metadata keys whose value (z_t in mm) is stamped on the movie frames."""


def _check_labels(mask: np.ndarray, name: str, labels: Sequence[int] | None) -> None:
    """Raise ``ValueError`` when the labels layer ``name`` is empty or lacks a chosen label."""
    if not np.any(mask):
        raise ValueError(f"labels layer {name!r} is empty")
    if labels is not None:
        present = set(label_values(mask))
        missing = [v for v in labels if v not in present]
        if missing:
            raise ValueError(f"labels {missing} do not occur in {name!r}")


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
        # -- inputs
        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self.labels = ComboBox(label="labels", choices=self._labels_choices, nullable=True)
        self.outdir = FileEdit(label="output folder", mode="d")
        # -- settings: the augment dock's, read-only; the number of series is the export's own
        self.settings_note = Label(value="")
        self.settings_note.native.setWordWrap(True)
        self.settings_text = Label(value="")
        self.settings_text.native.setWordWrap(True)
        self.open_augment = PushButton(text="open the LAUGEN augment dock")
        self.run_form = SettingsForm(exclude=[sf.name for sf in setting_fields() if sf.name != "series"])
        self.series = self.run_form.fields["series"]
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
            self.settings_note, self.settings_text, self.open_augment, self.run_form, self.series_button,
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
        self.open_augment.changed.connect(self._open_augment)
        self._summary_timer = QTimer(self, interval=500)
        self._summary_timer.timeout.connect(self.refresh_settings_view)
        self._summary_timer.start()
        self._restore()
        for widget in (self.series, self.outdir, self.difference, self.fps, self.movie_path):
            widget.changed.connect(self.remember_settings)
        self.progress_changed.connect(self._on_progress)
        events = self.viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered):
            emitter.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        self._on_layers_changed()
        self.refresh_settings_view()

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
        panel = self._augment_panel()
        preferred = {}
        if panel is not None:  # the layers the augment dock works on come first
            preferred = {id(self.image): panel.w["image"].value, id(self.labels): panel.w["labels"].value}
        for combo, choices in ((self.image, self._image_choices()), (self.labels, self._labels_choices()),
                               (self.movie_series, self._series_choices()),
                               (self.movie_labels, self._mask_series_choices())):
            if combo.value is None and choices:
                wanted = preferred.get(id(combo))
                layers = [layer for _, layer in choices]
                combo.value = wanted if any(wanted is layer for layer in layers) else choices[0][1]

    # -- settings -----------------------------------------------------------------------------
    @property
    def options_provider(self) -> OptionsProvider | None:
        """Callable giving the generation settings; None: the augment dock's."""
        return self._options_provider

    @options_provider.setter
    def options_provider(self, provider: OptionsProvider | None) -> None:
        self._options_provider = provider
        self.refresh_settings_view()

    # -- remembered settings (the user's config folder; see ui.settings_dir) -----------
    def remember_settings(self, *_: Any) -> None:
        """Store this dock's own choices: number of series, folders, movie options."""
        save_settings("export", {"series": int(self.series.value), "outdir": str(self.outdir.value),
                            "difference": self.difference.value, "fps": float(self.fps.value),
                            "movie_path": str(self.movie_path.value)})

    def _restore(self) -> None:
        data = load_settings("export")
        try:
            if "series" in data:
                self.series.value = int(data["series"])
            if data.get("difference") in [v for _, v in _DIFFERENCE_CHOICES]:
                self.difference.value = data["difference"]
            if "fps" in data:
                self.fps.value = float(data["fps"])
            for key, widget in (("outdir", self.outdir), ("movie_path", self.movie_path)):
                if data.get(key) and data[key] != ".":
                    widget.value = data[key]
        except (TypeError, ValueError):
            pass

    def _augment_panel(self):
        from .augment_widget import augment_panel

        return augment_panel(self.viewer)

    def _open_augment(self, *_: Any) -> None:
        if self._augment_panel() is None:
            self.viewer.window.add_plugin_dock_widget("laugen-napari", "LAUGEN augment")
        self.refresh_settings_view()

    def generate_options(self) -> GenerationSettings:
        """The settings an export uses: the provider's, else the augment dock's, with this dock's
        number of series. ValueError when there is neither (or the settings are unusable)."""
        provider = self._options_provider
        if provider is None:
            panel = self._augment_panel()
            if panel is None:
                raise ValueError("open the LAUGEN augment dock: the export uses its settings")
            provider = panel.generate_options
        options = provider()
        if not isinstance(options, GenerationSettings):
            raise TypeError(f"options_provider returned {type(options).__name__}, not GenerationSettings")
        return options.replace(series=int(self.series.value)).validate()

    def refresh_settings_view(self) -> None:
        """Show the settings the export will use (read-only), or say where they come from."""
        try:
            source = "the script's settings" if self._options_provider is not None else None
            panel = None if source else self._augment_panel()
            if source is None and panel is None:
                self.settings_note.value = ("no LAUGEN augment dock is open: the export uses its settings. "
                                            "Open it, set the deformation there, then export.")
                self.settings_text.value = ""
                self.open_augment.visible = True
                return
            self.open_augment.visible = False
            source = source or "the LAUGEN augment dock"
            try:
                text = settings_summary(self.generate_options(), skip=("series",))
                self.settings_note.value = f"settings of {source} (read-only; change them there):"
            except (ValueError, TypeError) as exc:
                text = ""
                self.settings_note.value = f"the settings of {source} are not usable: {exc}"
            self.settings_text.value = text
        except RuntimeError:  # the Qt side is gone
            self._summary_timer.stop()

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
            # the layers' geometry here (no data read); a lazy or large layer is read on the worker
            image_geo, _ = check_layers_on_one_grid(image_layer, labels_layer, viewer=self.viewer)
            read_image = volume_reader(image_layer, viewer=self.viewer)
            read_mask = volume_reader(labels_layer, reference=image_geo, viewer=self.viewer)
            mask = None
            if cheap_to_read(labels_layer.data):
                # the worker gets its own copy: painting on the layer meanwhile changes nothing
                mask = read_mask()
                mask.data = np.array(mask.data, copy=True)
                _check_labels(mask.data, labels_layer.name, options.labels)
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
        labels_name = labels_layer.name

        def work() -> list[Path]:
            image = read_image()
            image.data = np.array(image.data, copy=True)
            if mask is None:
                vol = read_mask()
                vol.data = np.array(vol.data, copy=True)
                _check_labels(vol.data, labels_name, options.labels)
            else:
                vol = mask
            for v in (image, vol):
                if not source_unchanged(v):
                    v.path = None  # edited or made in napari: do not cite a file that differs
            return generate_to_directory(image, vol, outdir, options, overwrite=overwrite,
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
        z_mm = next((series.metadata[k] for k in Z_MM_KEYS if k in series.metadata), None)
        if z_mm is None and series.name == "LAUGEN series":
            panel = self._augment_panel()
            if panel is not None and panel.model is not None and panel.model.frames == frames:
                z_mm = [float(v) for v in panel.model.z_mm]
        title = f"{series.name}  {self._slice_text(plane)}".strip()
        letters = orientation.OrientationLetters.letters_of(self.viewer)
        data, mask_data = series.data, (masks.data if masks is not None else None)
        options = {
            "pixel_mm": plane.pixel_mm, "contrast_limits": (lo, hi), "colormap": series.colormap.map,
            "gamma": float(series.gamma), "difference": self.difference.value, "flip_rows": plane.flip_rows,
            "flip_cols": plane.flip_cols, "title": title, "z_mm": z_mm, "edge_letters": letters,
        }
        label_colormap = masks.colormap if masks is not None else None
        fps = float(self.fps.value)

        def work() -> Path:
            rgb = series_movie(
                lambda t: plane.take(data, t), frames,
                (lambda t: mask_plane.take(mask_data, t)) if mask_data is not None else None,
                label_color=(lambda v: tuple(float(c) for c in np.asarray(label_colormap.map(np.array([v]))).reshape(-1)[:4]))
                if label_colormap is not None else None,
                progress=lambda d, total: self._emit_progress(d, total + frames), **options)
            return write_movie(path, rgb, fps=fps, progress=lambda d, _t: self._emit_progress(2 * frames + d, 3 * frames))

        return self._start(work, "movie export", lambda p: f"LAUGEN export: movie of {frames} frames in {p}")

    def _slice_text(self, plane: PlaneOnScreen) -> str:
        """Where the plane lies, in world mm: ``"axial plane, z = 12.0 mm"``."""
        dims = self.viewer.dims
        view = orientation.displayed_plane(self.viewer)
        parts = []
        names = ("z", "y", "x")
        for axis in dims.order[:-2]:
            k = int(axis) - (int(dims.ndim) - 3)
            if k >= 0:
                parts.append(f"{names[k]} = {float(dims.point[axis]):.1f} mm")
        where = ", ".join(parts)
        return f"({view + ' plane, ' if view else ''}{where})" if where else ""
