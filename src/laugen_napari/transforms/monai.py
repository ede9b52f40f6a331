"""LAUGEN as a MONAI dictionary transform (also usable on plain numpy arrays and torch tensors).

:class:`LongitudinalAugment` turns the image and label map of a data dict into a series whose
frames are stacked along the channel axis (``time_dim="channel"``, the default) or along a new
leading axis (``time_dim="leading"``). Its generation arguments are the fields of
:class:`~laugen_napari.settings.GenerationSettings` (same names, same defaults, same validation).
MONAI is optional: when it is installed the transform is a ``monai.transforms.Randomizable`` and
``InvertibleTransform``, and MetaTensors come back as MetaTensors with their affine. The contract
is written out in ``docs/transforms.md``.
"""

from __future__ import annotations

import copy
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..core import Augmenter, Series, TrajectoryDraw, make_kind
from ..core.labels import integer_labels
from ..settings import GenerationSettings, SettingsError, settings_from_args

try:  # MONAI is an optional extra (`laugen-napari[transforms]`)
    from monai.data import MetaTensor
    from monai.transforms import InvertibleTransform, Randomizable
    from monai.utils import TraceKeys

    _MONAI_BASES: tuple[type, ...] = (Randomizable, InvertibleTransform)
except ImportError:  # pragma: no cover - exercised only without the extra
    MetaTensor = None
    TraceKeys = None
    _MONAI_BASES = ()

Array = Any  # numpy.ndarray, torch.Tensor or monai.data.MetaTensor

_DEFAULTS = GenerationSettings()  # the defaults of every generation argument below
TIME_DIMS = ("channel", "leading")
SEED_MODULUS = 2**32


def _to_numpy(x: Array) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def spacing_from_affine(affine: Array) -> tuple[float, float, float]:
    """Voxel size in mm along the array's three spatial axes (in the array's order) from a 4x4
    affine (array index -> world mm), e.g. a MONAI ``MetaTensor.affine`` or ``tio.Image.affine``."""
    a = _to_numpy(affine).astype(np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))


def world_direction_to_array(direction_xyz: Sequence[float], affine: Array, space: str = "RAS"
                             ) -> tuple[float, float, float]:
    """A world direction (RAS+ x, y, z) expressed along the array's spatial axes (mm frame, the
    array's axis order), for an affine mapping array indices to world mm in ``space`` ("RAS" or
    "LPS", MONAI's ``meta["space"]``). Uses the project's one conversion (``io.nifti.Volume``)."""
    from ..io.nifti import Volume

    d = np.asarray(direction_xyz, dtype=np.float64)
    if str(space).upper() == "LPS":
        d = d * np.array([-1.0, -1.0, 1.0])
    a = _to_numpy(affine).astype(np.float64)
    return Volume(np.empty((0, 0, 0)), a, a, None).world_to_array_direction(d)


def split_time(series: Array, frames: int) -> Array:
    """One series ``(T*C, *S)`` (``time_dim="channel"``, frame-major) back to ``(T, C, *S)``."""
    if series.shape[0] % frames:
        raise ValueError(f"{series.shape[0]} channels are not a multiple of {frames} frames")
    return series.reshape((frames, series.shape[0] // frames) + tuple(series.shape[1:]))


class _RandomStream:
    """Where a transform's random numbers come from, process by process.

    - Seeded (``seed`` or ``state``): the transform's own numpy Generator.
    - Not seeded: every draw takes a fresh seed from torch's global generator, so
      ``torch.manual_seed`` / ``monai.utils.set_determinism`` reach it and DataLoader workers
      (whose torch generators torch seeds per worker) draw different numbers.
    - Seeded in one process and used in a DataLoader worker (a forked or pickled copy): on its first
      draw there the worker derives its own Generator from the inherited one and torch's worker
      seed, so workers differ, every epoch differs, and runs repeat when torch's seed does.
    """

    def __init__(self) -> None:
        self.generator: np.random.Generator | None = None
        self.pid = os.getpid()

    def seed(self, seed: int | None = None, state: np.random.Generator | np.random.RandomState | None = None) -> None:
        if seed is not None:
            self.generator = np.random.default_rng(int(seed) % SEED_MODULUS)
        elif isinstance(state, np.random.RandomState):
            self.generator = np.random.default_rng(int(state.randint(SEED_MODULUS, dtype=np.uint64)))
        elif state is not None:
            if not isinstance(state, np.random.Generator):
                raise TypeError(f"state must be a numpy Generator or RandomState, got {type(state).__name__}")
            self.generator = state
        else:
            self.generator = None
        self.pid = os.getpid()

    def next(self) -> np.random.Generator:
        """The generator for the next draw."""
        if self.generator is not None and self.pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            if info is not None:
                inherited = int(self.generator.integers(2**63))
                self.generator = np.random.default_rng([inherited, int(info.seed) % 2**63])
                self.pid = os.getpid()
        if self.generator is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        return self.generator


class LongitudinalAugment(*_MONAI_BASES):
    """Turn the image and label map of a dict into a LAUGEN series (MONAI-style dict transform).

    Generation arguments (defaults, units and checks are those of
    :class:`~laugen_napari.settings.GenerationSettings`; a bad value raises ``SettingsError``
    naming the field):
        kind, trajectory, frames, slope_range (mm/frame), values (mm), rate, midpoint, labels,
        sigma_mm (mm), spread_mm (mm), label_interpolation: as in the settings model. A custom
        trajectory takes its number of frames from ``values`` (as the CLI does).
        direction: ``directional`` kind. With an affine (MetaTensor, TorchIO image) a world
            direction (RAS+ x, y, z; MONAI's LPS space is converted); without one, a direction
            along the array's three spatial axes in their order.
        center: ``gaussian`` kind: a voxel index along the array's three spatial axes, in their
            order (for MONAI/TorchIO images loaded without reorientation, the file's (i, j, k)).
        device: ``"auto"`` (CUDA when present, but CPU inside DataLoader worker processes, where
            CUDA does not survive fork), ``"cpu"`` or ``"cuda"``. Outputs stay on the inputs'
            device.

    Host arguments:
        keys: (image key, label key) of the dict.
        spacing: voxel size in mm along the array's spatial axes; else ``data[spacing_key]``,
            else the image's affine (MetaTensor ``.affine``).
        spacing_key: dict key holding the spacing (3 numbers, mm).
        z_key: dict key the ground-truth z_t (mm, shape (T,)) is written to.
        time_dim: ``"channel"``: frames stacked along the channel axis, frame-major
            (image ``(T*C, *S)``, label ``(T, *S)``), what MONAI/TorchIO spatial transforms
            expect; ``"leading"``: a new first axis (``(T, *input shape)``).
        allow_missing_keys: pass the dict through unchanged when a key is missing.

    Input: image ``(C, *S)`` (channel first) or ``(*S)``; label ``(1, *S)`` or ``(*S)``; ``S`` the
    three spatial axes in whatever order the host stores them (MONAI/TorchIO: (I, J, K) of the
    file; this project's loader: (Z, Y, X)). Images come back float32, labels in their input dtype.
    """

    def __init__(
        self,
        kind: str = _DEFAULTS.kind,
        trajectory: str = _DEFAULTS.trajectory,
        frames: int = _DEFAULTS.frames,
        slope_range: tuple[float, float] = _DEFAULTS.slope_range,
        values: Sequence[float] | None = _DEFAULTS.values,
        rate: float | None = _DEFAULTS.rate,
        midpoint: float | None = _DEFAULTS.midpoint,
        labels: Sequence[int] | None = _DEFAULTS.labels,
        sigma_mm: float = _DEFAULTS.sigma_mm,
        direction: Sequence[float] | None = _DEFAULTS.direction,
        center: Sequence[float] | None = _DEFAULTS.center,
        spread_mm: float = _DEFAULTS.spread_mm,
        label_interpolation: str = _DEFAULTS.label_interpolation,
        device: str = _DEFAULTS.device,
        keys: tuple[str, str] = ("image", "label"),
        spacing: Sequence[float] | None = None,
        spacing_key: str = "spacing",
        z_key: str = "z_mm",
        time_dim: str = "channel",
        allow_missing_keys: bool = False,
    ):
        given = types.SimpleNamespace(
            kind=kind, trajectory=trajectory, frames=frames, slope_range=slope_range, values=values, rate=rate,
            midpoint=midpoint, labels=labels, sigma_mm=sigma_mm, direction=direction, center=center,
            spread_mm=spread_mm, label_interpolation=label_interpolation, device=device)
        self.settings: GenerationSettings = settings_from_args(given)  # validated; names the field
        if len(keys) != 2:
            raise ValueError(f"keys must be (image key, label key), got {keys!r}")
        if time_dim not in TIME_DIMS:
            raise ValueError(f"time_dim must be one of {', '.join(TIME_DIMS)}, got {time_dim!r}")
        self.keys = tuple(keys)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.spacing_key = spacing_key
        self.z_key = z_key
        self.time_dim = time_dim
        self.allow_missing_keys = allow_missing_keys
        self.trajectory = self.settings.trajectory_model()
        self.frames = self.settings.frames
        self._stream = _RandomStream()
        self._draw: TrajectoryDraw | None = None

    @classmethod
    def from_settings(cls, settings: GenerationSettings, **host) -> LongitudinalAugment:
        """The transform for a settings object (e.g. ``GenerationSettings.from_record`` of a
        series.json); ``host`` are the host arguments (keys, time_dim, ...). The run fields
        ``seed`` and ``series`` do not apply: seed with :meth:`set_random_state`."""
        names = [n for n in settings.to_record() if n not in ("seed", "series")]
        return cls(**{n: getattr(settings, n) for n in names}, **host)

    # -- randomness (MONAI Randomizable protocol) -------------------------------------------------
    def set_random_state(self, seed: int | None = None,
                         state: np.random.Generator | np.random.RandomState | None = None) -> LongitudinalAugment:
        """Seed the transform's own generator with ``seed`` or ``state`` (numpy Generator or
        RandomState), as MONAI's ``Compose.set_random_state`` and ``DataLoader`` do; with neither,
        draws come from torch's global generator again. Returns ``self``."""
        self._stream.seed(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw the next trajectory (z_t in mm for every frame)."""
        self._draw = self.trajectory.sample(self.frames, self._stream.next())

    # -- the series ---------------------------------------------------------------------------
    def _device(self) -> str:
        if self.settings.device == "auto" and torch.utils.data.get_worker_info() is not None:
            return "cpu"
        return self.settings.device

    def compute(self, image: np.ndarray, label: np.ndarray, spacing: Sequence[float], draw: TrajectoryDraw,
                affine: Array | None = None, space: str = "RAS") -> Series:
        """The series of an image ``(C, *S)``/``(*S)`` and a label map ``(*S)`` for an already
        drawn trajectory; ``affine`` (array index -> world mm) gives ``direction`` its world meaning."""
        s = self.settings
        direction = center = None
        if s.kind == "directional":
            direction = s.direction if affine is None else world_direction_to_array(s.direction, affine, space)
        if s.kind == "gaussian":
            shape = label.shape[-3:]
            if any(not 0 <= float(c) <= n - 1 for c, n in zip(s.center, shape)):
                raise SettingsError(f"center: {list(s.center)} lies outside the image (voxel indices of shape "
                                    f"{tuple(shape)})")
            center = s.center
        kind = make_kind(s.kind, direction=direction, center=center, spread_mm=s.spread_mm)
        aug = Augmenter(image, label, spacing, selected=s.labels, sigma_mm=s.sigma_mm, kind=kind,
                        device=self._device(), label_interpolation=s.label_interpolation)
        return aug.series_from_values(draw)

    def _spacing(self, data: Mapping, image: Array) -> tuple[float, float, float]:
        if self.spacing is not None:
            return self.spacing
        if self.spacing_key in data:
            return tuple(float(s) for s in _to_numpy(data[self.spacing_key]).reshape(-1))
        affine = getattr(image, "affine", None)
        if affine is not None:
            return spacing_from_affine(affine)
        raise ValueError(f"no voxel spacing: pass spacing=..., put it under data[{self.spacing_key!r}] "
                         "or give an image with an .affine (MONAI MetaTensor)")

    def _layout(self, frames: np.ndarray, input_shape: tuple[int, ...], channels: bool) -> np.ndarray:
        """Series ``(T, *input shape)`` (channel axis dropped for a label) in the output layout."""
        if self.time_dim == "leading":
            return frames.reshape((frames.shape[0],) + tuple(input_shape))
        return frames.reshape((-1,) + tuple(input_shape[-3:])) if channels else frames

    def __call__(self, data: Mapping[str, Any], randomize: bool = True) -> dict:
        """A copy of ``data`` with the image and label replaced by their series and ``z_key`` set
        to z_t (mm). ``randomize=False`` reuses the last drawn trajectory."""
        image_key, label_key = self.keys
        if image_key not in data or label_key not in data:
            if self.allow_missing_keys:
                return dict(data)
            missing = [k for k in self.keys if k not in data]
            raise KeyError(f"LongitudinalAugment: missing key(s) {missing}; the dict has {sorted(data)}")
        if randomize or self._draw is None:
            self.randomize(data)
        image, label = data[image_key], data[label_key]
        img, lab = _to_numpy(image), _to_numpy(label)
        if img.ndim not in (3, 4):
            raise ValueError(f"the image must be (C, *S) or (*S) with 3 spatial axes, got shape {img.shape}")
        if lab.ndim == 4:
            if lab.shape[0] != 1:
                raise ValueError(f"the label map must be (1, *S) or (*S), got shape {lab.shape}")
            lab = lab[0]
        try:
            whole = integer_labels(lab, name=f"{label_key}: the label map")
        except ValueError as exc:
            raise ValueError(f"{exc} (in a lazy MONAI Compose: overrides={{{label_key!r}: {{'mode': 'nearest'}}}})") \
                from None
        meta = getattr(image, "meta", None) or {}
        series = self.compute(img, whole, self._spacing(data, image), self._draw, getattr(image, "affine", None),
                              str(meta.get("space", "RAS")))
        out = dict(data)
        z = np.asarray(series.z_mm, dtype=np.float32)
        images = self._layout(series.images, img.shape, img.ndim == 4)
        labels = self._layout(series.labels.astype(lab.dtype, copy=False), _to_numpy(label).shape,
                              _to_numpy(label).ndim == 4)
        extra = {"frames": len(z), "time_dim": self.time_dim, "z_mm": [float(v) for v in z]}
        out[image_key] = self._wrap(images, image, dict(extra, input_shape=list(img.shape)))
        out[label_key] = self._wrap(labels, label, dict(extra, input_shape=list(_to_numpy(label).shape)))
        out[self.z_key] = torch.from_numpy(z).to(image.device) if isinstance(image, torch.Tensor) else z
        return out

    def _wrap(self, array: np.ndarray, ref: Array, extra: dict) -> Array:
        """``array`` in the type of ``ref``: numpy; a tensor on ``ref``'s device with its dtype for
        labels; a MetaTensor with ``ref``'s metadata and this transform on its applied operations."""
        if not isinstance(ref, torch.Tensor):
            return array
        out = torch.from_numpy(np.ascontiguousarray(array)).to(ref.device)
        if MetaTensor is not None and isinstance(ref, MetaTensor):
            out = MetaTensor(out, meta=copy.deepcopy(ref.meta), applied_operations=list(ref.applied_operations))
            self.push_transform(out, orig_size=list(ref.shape[1:]), extra_info=extra)
        return out

    # -- MONAI InvertibleTransform ----------------------------------------------------------------
    def inverse(self, data: Mapping[str, Any]) -> dict:
        """Undo the transform on a dict it produced (MetaTensors): frame 0 is the input."""
        out = dict(data)
        for key in self.keys:
            if key not in out:
                continue
            x = out[key]
            info = self.pop_transform(x)[TraceKeys.EXTRA_INFO]
            shape = info["input_shape"]
            per_frame = shape[0] if len(shape) == 4 else 1  # channels of one frame
            first = x[0] if info["time_dim"] == "leading" else x[:per_frame]
            out[key] = first.reshape(list(shape[:-3]) + list(x.shape[-3:]))
        out.pop(self.z_key, None)
        return out

    def __repr__(self) -> str:
        s = self.settings
        return (f"{type(self).__name__}(kind={s.kind!r}, trajectory={s.trajectory!r}, frames={s.frames}, "
                f"slope_range={s.slope_range}, sigma_mm={s.sigma_mm}, labels={s.labels}, keys={self.keys}, "
                f"time_dim={self.time_dim!r})")


def longitudinal_augment(
    image: Array,
    label: Array,
    spacing: Sequence[float],
    seed: int | np.random.Generator | None = None,
    **params,
) -> tuple[Array, Array, Array]:
    """Function form of :class:`LongitudinalAugment`: ``(images, labels, z_mm)`` for one image
    and label map (layouts as the class), spacing in mm; ``params`` are the class's arguments.
    ``seed`` an int or numpy Generator."""
    t = LongitudinalAugment(spacing=spacing, **params)
    if isinstance(seed, np.random.Generator):
        t.set_random_state(state=seed)
    else:
        t.set_random_state(seed)
    out = t({"image": image, "label": label})
    return out["image"], out["label"], out["z_mm"]
