"""Widgets for :class:`~laugen_napari.settings.GenerationSettings`, built from its fields.

The docks never declare a generation default, a limit or a label of their own: every widget here
comes from :func:`~laugen_napari.settings.setting_fields` (label and unit, tooltip from ``help``,
choices, minimum/maximum/step, the field's default) and a field that does not apply to the current
kind or trajectory (``Param.when``) is hidden. Values are read back into a validated
:class:`GenerationSettings`, so a problem is a :class:`~laugen_napari.settings.SettingsError` whose
message names the field (``frames: ...``), never a command-line flag.

Also here: :func:`settings_summary` (the read-only text the export dock shows) and the small JSON
store of the panels' last settings (:func:`remembered`, :func:`remember`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtCore import QEvent, QObject

from ..core.trajectory import DEFAULT_RATE
from ..settings import (
    GenerationSettings,
    SettingField,
    SettingsError,
    parse_numbers,
    setting_fields,
)

"""Environment variable naming the folder of the remembered panel settings (tests set it)."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


"""Fields a custom trajectory ignores (its z_t are given, nothing is drawn)."""


def _default_of(name: str, current: GenerationSettings) -> float | None:
    """What an empty optional number means (rate: the trajectory's rate; midpoint: the middle)."""
    if name == "rate":
        return DEFAULT_RATE.get(current.trajectory)
    if name == "midpoint":
        return (current.frames - 1) / 2.0
    return None


def _show_decimals(widget, *values) -> None:
    """Enough decimals for the limits and step of a float spin box (Qt's default of 2 would turn a
    minimum of 0.001 into 0)."""
    decimals = 2
    for v in values:
        if v:
            text = f"{abs(float(v)):.6f}".rstrip("0")
            decimals = max(decimals, len(text.split(".")[1]) if "." in text else 0)
    native = widget.native
    native.setDecimals(decimals)
    if values and values[0] is not None:
        widget.min = values[0]


class _LabelFitter(QObject):
    """Refits a form's label column (:meth:`SettingsForm.fit_labels`) when the form is shown or its
    style or font changes."""

    _EVENTS = (QEvent.Type.Show, QEvent.Type.StyleChange, QEvent.Type.FontChange)

    def __init__(self, form: SettingsForm):
        super().__init__(form.native)
        self._form = form
        form.native.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # Qt's name
        if event.type() in self._EVENTS:
            self._form.fit_labels()
        return False


class SettingsForm(Container):
    """A form of :class:`GenerationSettings` fields (all but ``exclude``).

    ``form.settings()`` gives the validated settings; ``form.set_settings(s)`` shows ``s``;
    ``form.fields[name]`` is the widget of a field (``slope_range`` is a row of two spin boxes,
    also in ``form.fields["slope_min"]`` / ``["slope_max"]``). ``on_change(callback)`` calls
    ``callback(name)`` after any field changed.
    """

    def __init__(self, exclude: Iterable[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.margins = (0, 0, 0, 0)
        self.excluded = set(exclude)
        self.spec: dict[str, SettingField] = {sf.name: sf for sf in setting_fields() if sf.name not in self.excluded}
        self.fields: dict[str, Any] = {}
        self._explicit: dict[str, bool] = {"rate": False, "midpoint": False}
        self._quiet = False
        self._callbacks: list[Callable[[str], None]] = []
        for sf in self.spec.values():
            widget = self._make(sf)
            self.fields[sf.name] = widget
            self.append(widget)
        self._refresh_dependent()
        self._label_fitter = _LabelFitter(self)

    def fit_labels(self) -> int:
        """Size the label column to the labels in the font they are drawn with; returns its width
        (pixels).

        magicgui measures the labels in the application's default font when the form is built;
        napari's style sheet draws them larger, so the longest label ("slope range (mm/frame)") was
        cut at the dock's default width. Here the column is as wide as the widest label *name*
        or *unit*: a label wider than that ("slope range (mm/frame)") breaks before its unit onto a
        second line, so no label is cut and the row of two spin boxes still fits the dock. Called
        again when the form is shown or its style or font changes."""
        labels = []
        for widget in self:
            labeled = widget._labeled_widget() if hasattr(widget, "_labeled_widget") else None
            if labeled is not None:
                labels.append(labeled._label_widget.native)
        if not labels:
            return 0
        column, texts = 0, []
        for label in labels:
            label.ensurePolished()
            text = label.text().replace("\n", " ")
            label.setText(text)
            label.setMinimumWidth(0)  # a QLabel's size hint grows with its minimum width
            label.setMaximumWidth(16777215)
            metrics = label.fontMetrics()
            pad = label.sizeHint().width() - metrics.horizontalAdvance(text)
            name, _, unit = text.partition(" (")
            pieces = [name, "(" + unit] if unit else [text]
            column = max(column, pad + max(metrics.horizontalAdvance(p) for p in pieces))
            texts.append((label, text, name, unit))
        for label, text, name, unit in texts:
            if unit and label.sizeHint().width() > column:
                label.setText(f"{name}\n({unit}")
            label.setFixedWidth(column)
        return column

    def _unify_label_widths(self) -> None:
        super()._unify_label_widths()
        if getattr(self, "_label_fitter", None) is not None:
            self.fit_labels()

    # -- construction ---------------------------------------------------------------------------
    def _make(self, sf: SettingField):
        p = sf.param
        tip = p.help + (f" [{p.unit}]" if p.unit else "")
        opts = {"label": sf.label, "tooltip": tip, "name": sf.name}
        if p.choices is not None:
            w = ComboBox(choices=list(p.choices), value=sf.default, **opts)
        elif p.length == 2:  # a range: two spin boxes in a row
            lo = FloatSpinBox(name=f"{sf.name}_min", label="min", min=p.minimum, max=p.maximum, step=p.step,
                              value=sf.default[0], tooltip=tip)
            hi = FloatSpinBox(name=f"{sf.name}_max", label="max", min=p.minimum, max=p.maximum, step=p.step,
                              value=sf.default[1], tooltip=tip)
            w = Container(widgets=[lo, hi], layout="horizontal", labels=False, **opts)
            w.margins = (0, 0, 0, 0)
            short = sf.name.replace("_range", "")
            self.fields[f"{short}_min"], self.fields[f"{short}_max"] = lo, hi
            def keep_order(moved, other, below):
                # a range widget: dragging one end past the other pushes the other along
                if (moved.value > other.value) if below else (moved.value < other.value):
                    self._quiet, quiet = True, self._quiet
                    try:
                        other.value = moved.value
                    finally:
                        self._quiet = quiet

            lo.changed.connect(lambda *_: keep_order(lo, hi, True))
            hi.changed.connect(lambda *_: keep_order(hi, lo, False))
            for part in (lo, hi):
                part.changed.connect(lambda *_, n=sf.name: self._emit(n))
            return w
        elif p.length is not None or (sf.optional and p.minimum is None):  # vectors, lists: text
            hint = {3: "X, Y, Z" if sf.name == "direction" else "I, J, K"}.get(p.length, "comma-separated")
            w = LineEdit(value="" if sf.default is None else _fmt(sf.default), **opts)
            w.native.setPlaceholderText(hint)
        elif sf.item_type is int:
            w = SpinBox(min=int(p.minimum), max=int(p.maximum), step=int(p.step or 1), value=sf.default, **opts)
        else:
            value = sf.default if sf.default is not None else _default_of(sf.name, GenerationSettings()) or p.minimum
            w = FloatSpinBox(min=p.minimum, max=p.maximum, step=p.step, value=value, **opts)
            _show_decimals(w, p.minimum, p.step)
        w.changed.connect(lambda *_, n=sf.name: self._emit(n))
        return w

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(field_name)`` after a field changed (by the user or :meth:`set_settings`)."""
        self._callbacks.append(callback)

    def _emit(self, name: str) -> None:
        if self._quiet:
            return
        if name in self._explicit:
            current = self._draft()
            self._explicit[name] = abs(float(self.fields[name].value) - float(_default_of(name, current))) > 1e-9
        self._refresh_dependent()
        for cb in list(self._callbacks):
            cb(name)

    # -- state ----------------------------------------------------------------------------------
    def _draft(self) -> GenerationSettings:
        """The choices and counts of the form (not validated), for ``applies`` and defaults."""
        values = {}
        for name in ("kind", "trajectory", "frames", "label_interpolation", "device"):
            if name in self.fields:
                values[name] = self.fields[name].value
        return GenerationSettings(**values)

    def _refresh_dependent(self) -> None:
        """Hide fields that do not apply; optional numbers show their effective default."""
        draft = self._draft()
        self._quiet = True
        try:
            for name, widget in self.fields.items():
                if name in self.spec:
                    widget.visible = draft.applies(name)
            for name, explicit in self._explicit.items():
                if name in self.fields and not explicit:
                    default = _default_of(name, draft)
                    if default is not None:
                        self.fields[name].value = default
                    if name == "rate":
                        self.fields[name].tooltip = (f"{self.spec[name].param.help} [1/frame]; "
                                                     f"{draft.trajectory} default: {_fmt(default)}")
            if "frames" in self.fields and "values" in self.fields:
                custom = draft.trajectory == "custom"
                self.fields["frames"].enabled = not custom
                if custom:
                    try:
                        n = len(parse_numbers(self.fields["values"].value, name="values"))
                    except SettingsError:
                        n = None
                    if n is not None and n >= 2:
                        self.fields["frames"].value = n
        finally:
            self._quiet = False

    def settings(self, **fixed) -> GenerationSettings:
        """The validated settings of the form; ``fixed`` sets fields it does not show (labels,
        series). Raises :class:`SettingsError` naming the field."""
        draft = self._draft()
        values: dict[str, Any] = {}
        for name, sf in self.spec.items():
            if not draft.applies(name):
                continue
            w = self.fields[name]
            if sf.param.length == 2:
                short = name.replace("_range", "")
                values[name] = (float(self.fields[f"{short}_min"].value), float(self.fields[f"{short}_max"].value))
            elif isinstance(w, LineEdit):
                text = w.value.strip()
                values[name] = tuple(parse_numbers(text, sf.item_type, name=name)) if text else None
            elif name in self._explicit:
                values[name] = float(w.value) if self._explicit[name] else None
            else:
                values[name] = w.value
        if values.get("trajectory") == "custom" and values.get("values") is not None:
            values["frames"] = len(values["values"])  # as `laugen generate --values` does
        values.update(fixed)
        return GenerationSettings(**values).validate()

    def set_settings(self, settings: GenerationSettings) -> None:
        """Show ``settings`` (every field of the form; ``rate``/``midpoint`` None: the default)."""
        self._quiet = True
        try:
            for name, sf in self.spec.items():
                value = getattr(settings, name)
                w = self.fields[name]
                if sf.param.length == 2:
                    short = name.replace("_range", "")
                    self.fields[f"{short}_min"].value, self.fields[f"{short}_max"].value = value
                elif isinstance(w, LineEdit):
                    w.value = "" if value is None else _fmt(value)
                elif name in self._explicit:
                    self._explicit[name] = value is not None
                    if value is not None:
                        w.value = value
                else:
                    w.value = value
        finally:
            self._quiet = False
        self._refresh_dependent()
        for cb in list(self._callbacks):
            cb("*")


def settings_summary(settings: GenerationSettings, skip: Iterable[str] = ()) -> str:
    """One line per field that applies: ``label: value`` (what the export dock shows, read-only)."""
    skip = set(skip)
    lines = []
    for sf in setting_fields():
        if sf.name in skip or not settings.applies(sf.name):
            continue
        value = getattr(settings, sf.name)
        if sf.name == "rate" and value is None:
            text = f"{_fmt(settings.effective_rate())} ({settings.trajectory} default)"
        elif sf.name == "midpoint" and value is None:
            text = f"{_fmt((settings.frames - 1) / 2)} (the middle)"
        elif sf.name == "labels" and value is None:
            text = "every non-zero label"
        else:
            text = _fmt(value)
        lines.append(f"{sf.label}: {text}")
    return "\n".join(lines)
