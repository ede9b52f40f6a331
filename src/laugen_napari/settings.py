"""The one form of LAUGEN's generation settings.

:class:`GenerationSettings` holds every parameter of a series with its unit and default. Every
entry point derives from it, so a new option is one field here (plus, at most, one widget):

- ``laugen generate`` / ``dataset`` / ``sample --then-series``: :func:`add_settings_arguments` and
  :func:`settings_from_args`;
- the napari augment dock builds its widgets from :func:`setting_fields` (the export dock shows the
  augment dock's settings, it has no form of its own);
- :class:`~laugen_napari.transforms.LongitudinalAugment` takes the same names as arguments;
- every ``series.json`` records :meth:`GenerationSettings.to_record`, and
  :meth:`GenerationSettings.from_record` reads it back to reproduce a series.

Validation runs once, in :meth:`GenerationSettings.validate`, and its messages name the field
(``frames: must be an integer >= 2, got 1``), never a command-line flag.

:func:`parse_numbers` is the project's one parser of number lists typed by a user
(``"0, 0.5, 1"``, ``"1;2"``, ``"1 2 3"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .core.field import KINDS
from .core.trajectory import DEFAULT_RATE, TRAJECTORIES, make_trajectory

DEVICES = ("auto", "cpu", "cuda")
LABEL_INTERPOLATIONS = ("linear", "nearest")


class SettingsError(ValueError):
    """An unusable setting; the message starts with the field's name."""


def parse_numbers(text: str | Sequence[float] | None, cast: Callable[[str], Any] = float, name: str = "value",
                  count: int | None = None, allow_empty: bool = False) -> list:
    """Numbers from a user's text: separated by commas, semicolons or spaces (``"0, 0.5;1 2"``).

    Args:
        text: the text, or already a sequence of numbers (checked and cast).
        cast: ``float`` or ``int``.
        name: what the numbers are, for the error message (a field or option name).
        count: the exact number of values required, if any.
        allow_empty: accept no values (returns ``[]``).
    Raises :class:`SettingsError` naming ``name`` for anything that is not a finite number.
    """
    if text is None:
        items: list = []
    elif isinstance(text, str):
        items = [v for v in re.split(r"[,;\s]+", text.strip()) if v]
    else:
        items = list(text)
    kind = "integers" if cast is int else "numbers"
    values = []
    for item in items:
        try:
            f = float(item)
        except (TypeError, ValueError, OverflowError):
            raise SettingsError(f"{name}: expected finite {kind} separated by commas, got {text!r}") from None
        if not math.isfinite(f):
            raise SettingsError(f"{name}: non-finite number {item!r} (inf or nan) in {text!r}")
        if cast is int and f != int(f):
            raise SettingsError(f"{name}: expected {kind} separated by commas, got {text!r}")
        values.append(int(f) if cast is int else cast(item))
    if not values and not allow_empty:
        raise SettingsError(f"{name}: expected at least one number, got {text!r}")
    if count is not None and len(values) != count:
        raise SettingsError(f"{name}: expected {count} {kind}, got {len(values)} ({text!r})")
    return values


@dataclass(frozen=True)
class Param:
    """How one setting is described, parsed and shown.

    Attributes:
        help: one line for users (CLI help, widget tooltip).
        unit: the unit shown beside the value (``"mm"``, ``"mm/frame"``, ``"frames"``, ...).
        choices: the allowed values of a text setting.
        length: fixed number of values of a tuple setting (``None``: any number).
        minimum, maximum, step: widget limits (also checked where marked in ``validate``).
        metavar: CLI placeholder(s).
        scope: ``"series"`` (shapes the series), ``"run"`` (how many, seeds, where computed).
        when: the setting applies only when this field has this value (or one of these values),
            e.g. ``("kind", "gaussian")``.
        unless: the setting does not apply when this field has this value, e.g.
            ``("trajectory", "custom")`` for the slope range, which custom values replace.
    """

    help: str
    unit: str = ""
    choices: tuple | None = None
    length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    metavar: str | tuple[str, ...] | None = None
    scope: str = "series"
    when: tuple[str, Any] | None = None
    unless: tuple[str, Any] | None = None


def _p(default: Any, **meta) -> Any:
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for defaults")
    return field(default=default, metadata={"param": Param(**meta)})


@dataclass
class GenerationSettings:
    """Every parameter of a LAUGEN series (units: mm, frames, voxels).

    ``direction`` is in the image's world axes (RAS+ x, y, z); ``center`` is a voxel index
    (i, j, k) of the input file. For the transform on arrays, ``center`` is a voxel index along
    the host array's spatial axes in their stored order (MONAI/TorchIO: the file's i, j, k), and
    ``direction`` is world RAS+ when the array carries an affine, else along the array axes.
    ``labels`` None means every
    non-zero label. ``rate`` None means the trajectory's own default
    (:data:`~laugen_napari.core.trajectory.DEFAULT_RATE`); ``midpoint`` None the middle frame.
    """

    kind: str = _p("uniform", help="deformation kind: the whole boundary, one side, or one place", choices=KINDS)
    trajectory: str = _p("linear", help="latent trajectory z_t: the paper's linear, or a growth shape",
                         choices=TRAJECTORIES)
    frames: int = _p(8, help="frames per series, the input (frame 0) included", unit="frames", minimum=2,
                     maximum=32_767, step=1, metavar="T")
    slope_range: tuple[float, float] = _p(
        (0.1, 0.4), help="mean boundary displacement per frame, drawn uniformly per series; negative shrinks",
        unit="mm/frame", length=2, minimum=-50.0, maximum=50.0, step=0.05, metavar=("MIN", "MAX"),
        unless=("trajectory", "custom"))
    values: tuple[float, ...] | None = _p(
        None, help="custom trajectory: z_t for every frame, starting with 0", unit="mm", metavar="V,V,...",
        when=("trajectory", "custom"))
    rate: float | None = _p(None, help="steepness (sigmoid) or growth rate (exponential, gompertz); "
                            "default per trajectory", unit="1/frame", minimum=0.001, maximum=100.0, step=0.05,
                            when=("trajectory", ("sigmoid", "exponential", "gompertz")))
    midpoint: float | None = _p(None, help="sigmoid: frame of the steepest change (default: the middle)",
                                unit="frames", minimum=0.0, maximum=100_000.0, step=0.5, when=("trajectory", "sigmoid"))
    labels: tuple[int, ...] | None = _p(None, help="labels that drive the deformation (default: every non-zero label)",
                                        metavar="L,L")
    sigma_mm: float = _p(5.0, help="Gaussian blur of the mask; the deformation reaches about 4 sigma", unit="mm",
                         minimum=0.1, maximum=200.0, step=0.5, metavar="S")
    direction: tuple[float, float, float] | None = _p(
        None, help="directional: growth direction in the image's world axes (RAS+)", length=3,
        metavar=("X", "Y", "Z"), when=("kind", "directional"))
    center: tuple[float, float, float] | None = _p(
        None, help="gaussian: centre as a voxel index of the input file", unit="voxels", length=3,
        metavar=("I", "J", "K"), when=("kind", "gaussian"))
    spread_mm: float = _p(10.0, help="gaussian: spread of the localised growth", unit="mm", minimum=0.1,
                          maximum=500.0, step=1.0, metavar="S", when=("kind", "gaussian"))
    label_interpolation: str = _p("linear", help="label maps: one-hot linear + argmax, or nearest neighbour",
                                  choices=LABEL_INTERPOLATIONS)
    seed: int = _p(0, help="random seed of the slope draw (same seed, same series)", scope="run", minimum=0,
                   maximum=2**31 - 1, step=1, unless=("trajectory", "custom"))
    series: int = _p(1, help="number of independent series", scope="run", minimum=1, maximum=100_000, step=1,
                     metavar="K")
    device: str = _p("auto", help="torch device (auto: CUDA when present)", choices=DEVICES, scope="run")

    # -- checks ----------------------------------------------------------------------------------
    def validate(self) -> "GenerationSettings":
        """Normalise types (tuples, ints, floats) and check every field; returns ``self``.

        Raises :class:`SettingsError` (a ``ValueError``) whose message starts with the field name.
        """
        for f in dataclasses.fields(self):
            p: Param = f.metadata["param"]
            value = getattr(self, f.name)
            if p.choices is not None and value not in p.choices:
                raise SettingsError(f"{f.name}: must be one of {', '.join(map(str, p.choices))}, got {value!r}")
        for name in ("frames", "series", "seed"):
            v = getattr(self, name)
            try:
                ok = not isinstance(v, bool) and float(v) == int(v)
            except (TypeError, ValueError, OverflowError):
                ok = False
            p = _param(name)
            if not ok or int(v) < p.minimum:
                raise SettingsError(f"{name}: must be an integer >= {int(p.minimum)}, got {v!r}")
            setattr(self, name, int(v))
        if self.frames > _param("frames").maximum:
            raise SettingsError(f"frames: at most {int(_param('frames').maximum)} (the longest time axis a NIfTI-1 "
                                f"file holds), got {self.frames}")
        for name in ("sigma_mm", "spread_mm", "rate", "midpoint"):
            v = getattr(self, name)
            if v is None:
                continue
            setattr(self, name, _finite(name, v))
        if self.sigma_mm <= 0:
            raise SettingsError(f"sigma_mm: must be positive, got {self.sigma_mm}")
        if self.spread_mm <= 0:
            raise SettingsError(f"spread_mm: must be positive, got {self.spread_mm}")
        if self.rate is not None and self.rate <= 0:
            raise SettingsError(f"rate: must be positive, got {self.rate}")
        self.slope_range = tuple(parse_numbers(self.slope_range, name="slope_range", count=2))
        if self.slope_range[0] > self.slope_range[1]:
            raise SettingsError(f"slope_range: must be MIN <= MAX, got {self.slope_range[0]} {self.slope_range[1]}")
        for name in ("direction", "center"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, tuple(parse_numbers(v, name=name, count=3)))
        if self.labels is not None:
            labels = tuple(parse_numbers(self.labels, int, name="labels"))
            if any(v == 0 for v in labels):
                raise SettingsError("labels: 0 is the background, not a structure")
            self.labels = labels
        if self.values is not None:
            self.values = tuple(parse_numbers(self.values, name="values"))
        if self.trajectory == "custom":
            if self.values is None:
                raise SettingsError("values: the custom trajectory needs z_t for every frame (mm, starting with 0)")
            if len(self.values) != self.frames:
                raise SettingsError(f"values: {len(self.values)} values for {self.frames} frames")
        elif self.values is not None:
            raise SettingsError(f"values: only used by the custom trajectory (trajectory is {self.trajectory})")
        if self.kind == "directional":
            if self.direction is None:
                raise SettingsError("direction: the directional kind needs a direction X Y Z")
            if not any(self.direction):
                raise SettingsError("direction: must not be the zero vector")
        if self.kind == "gaussian" and self.center is None:
            raise SettingsError("center: the gaussian kind needs a centre I J K (voxel index)")
        try:
            model = self.trajectory_model()
        except ValueError as exc:
            raise SettingsError(f"trajectory: {exc}") from None
        if self.trajectory != "custom":
            try:
                model.shape(self.frames)
            except ValueError as exc:  # the message names the field: "rate: ..." or "midpoint: ..."
                raise SettingsError(str(exc)) from None
        return self

    # -- what the settings make ------------------------------------------------------------------
    def trajectory_model(self):
        """The engine's trajectory (:class:`~laugen_napari.core.trajectory.Trajectory` or custom)."""
        return make_trajectory(self.trajectory, self.slope_range, self.rate, self.midpoint, self.values)

    def effective_rate(self) -> float | None:
        """``rate``, or the trajectory's default rate (None for linear and custom)."""
        if self.rate is not None:
            return float(self.rate)
        return DEFAULT_RATE.get(self.trajectory)

    def replace(self, **changes) -> "GenerationSettings":
        """A copy with some fields changed (not validated)."""
        return dataclasses.replace(self, **changes)

    def to_record(self) -> dict:
        """JSON-able dict of every field (tuples as lists), as stored in series.json."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict, strict: bool = False) -> "GenerationSettings":
        """Settings from :meth:`to_record` output (e.g. ``series.json["options"]``), validated.

        Unknown keys are ignored unless ``strict``; missing keys take the defaults."""
        if not isinstance(record, dict):
            raise SettingsError(f"settings: expected a mapping of field names, got {type(record).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if strict and unknown:
            raise SettingsError(f"{unknown[0]}: not a generation setting")
        values = {}
        for k in names & set(record):
            v = record[k]
            values[k] = tuple(v) if isinstance(v, list) else v
        return cls(**values).validate()

    def applies(self, name: str) -> bool:
        """Whether field ``name`` is used with the current kind and trajectory."""
        p = _param(name)

        def holds(rule: tuple[str, Any]) -> bool:
            other, wanted = rule
            current = getattr(self, other)
            return current in wanted if isinstance(wanted, tuple) else current == wanted

        return (p.when is None or holds(p.when)) and (p.unless is None or not holds(p.unless))


@dataclass(frozen=True)
class SettingField:
    """A field of :class:`GenerationSettings` as the docks and argparse see it."""

    name: str
    default: Any
    param: Param
    optional: bool
    item_type: type

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        """Short label for widgets, with the unit: ``"sigma (mm)"``, ``"frames"`` (not ``"frames (frames)"``)."""
        text = self.name.replace("_mm", "").replace("_", " ")
        unit = self.param.unit
        return f"{text} ({unit})" if unit and unit != text else text


def setting_fields(scope: str | None = None) -> list[SettingField]:
    """The fields of :class:`GenerationSettings` in declaration order (optionally of one scope)."""
    out = []
    for f in dataclasses.fields(GenerationSettings):
        p: Param = f.metadata["param"]
        if scope is not None and p.scope != scope:
            continue
        ann = str(f.type)
        item = int if ("int" in ann and "float" not in ann) else float if "float" in ann else str
        out.append(SettingField(f.name, f.default, p, "None" in ann, item))
    return out


def _param(name: str) -> Param:
    return GenerationSettings.__dataclass_fields__[name].metadata["param"]


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise SettingsError(f"{name}: must be finite, got {value!r}")
    return v


# -- argparse ----------------------------------------------------------------------------------------
def _list_type(sf: SettingField) -> Callable[[str], list]:
    def convert(text: str) -> list:
        try:
            return parse_numbers(text, sf.item_type, name=sf.flag)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def add_settings_arguments(parser: argparse.ArgumentParser, include: Iterable[str] | None = None,
                           exclude: Iterable[str] = (), title: str = "generation options",
                           help_overrides: dict[str, str] | None = None) -> argparse._ArgumentGroup:
    """Add one option per settings field (``--sigma-mm S``, ``--slope-range MIN MAX``, ...) to
    ``parser``; the defaults are the fields' defaults. Returns the argument group."""
    include = None if include is None else set(include)
    exclude = set(exclude)
    helps = help_overrides or {}
    group = parser.add_argument_group(title)
    for sf in setting_fields():
        if (include is not None and sf.name not in include) or sf.name in exclude:
            continue
        p = sf.param
        text = helps.get(sf.name, p.help)
        if p.unit:
            text += f" [{p.unit}]"
        if sf.default is not None and "%(default)" not in text:
            text += " (default: %(default)s)"
        kw: dict[str, Any] = {"dest": sf.name, "help": text}
        if p.choices is not None:
            kw.update(choices=p.choices, default=sf.default)
        elif p.length is not None:
            kw.update(type=float if sf.item_type is float else sf.item_type, nargs=p.length,
                      default=None if sf.default is None else list(sf.default), metavar=p.metavar)
        elif sf.item_type in (int, float) and "tuple" in str(GenerationSettings.__dataclass_fields__[sf.name].type):
            kw.update(type=_list_type(sf), default=sf.default, metavar=p.metavar)
        else:
            kw.update(type=sf.item_type, default=sf.default)
            if p.metavar is not None:
                kw["metavar"] = p.metavar
        group.add_argument(sf.flag, **kw)
    return group


def settings_from_args(args: argparse.Namespace, **fixed) -> GenerationSettings:
    """:class:`GenerationSettings` from options added by :func:`add_settings_arguments`, validated.

    A custom trajectory takes its number of frames from ``--values``. ``fixed`` sets fields the
    command does not expose as options."""
    values = {}
    for sf in setting_fields():
        if hasattr(args, sf.name):
            v = getattr(args, sf.name)
            values[sf.name] = tuple(v) if isinstance(v, list) else v
    values.update(fixed)
    if values.get("trajectory") == "custom" and values.get("values") is not None:
        values["frames"] = len(values["values"])
    return GenerationSettings(**values).validate()
