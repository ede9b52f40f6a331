"""LAUGEN as a MONAI/TorchIO-style transform, for existing training pipelines.

:class:`LongitudinalAugment` takes a dict with an image (``(C, Z, Y, X)`` or ``(Z, Y, X)``) and a
label map (``(Z, Y, X)`` or ``(1, Z, Y, X)``), numpy arrays or torch tensors, and returns the dict
with both replaced by a series (time first: ``(T, C, Z, Y, X)`` / ``(T, Z, Y, X)``) and the
ground-truth latent ``z_mm`` (boundary displacement per frame in mm, ``(T,)``). Frame 0 is the
input. The three spatial axes are those of the array, whatever they are called; ``spacing`` gives
the voxel size along them in mm.

Randomness (the trajectory's slope) comes from the transform's own generator, seeded with
:meth:`LongitudinalAugment.set_random_state` as MONAI's ``Randomizable``. In a DataLoader with
several workers, seed each worker (``worker_init_fn``) or MONAI's ``set_determinism`` does it.

Example::

    from laugen_napari.transforms import LongitudinalAugment
    t = LongitudinalAugment(frames=6, slope_range=(0.2, 0.5), sigma_mm=4.0).set_random_state(0)
    out = t({"image": img, "label": seg, "spacing": (1.0, 1.0, 1.0)})
    out["image"].shape  # (6, Z, Y, X)

or the function form ``longitudinal_augment(image, label, spacing, seed=0, frames=6)``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .core import Augmenter, make_kind, make_trajectory
from .core.trajectory import TrajectoryDraw

Array = Any  # numpy.ndarray or torch.Tensor


def _to_numpy(x: Array) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _like(x: np.ndarray, ref: Array) -> Array:
    """``x`` as a torch tensor on ``ref``'s device when ``ref`` is one, else as numpy."""
    if isinstance(ref, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(x)).to(ref.device)
    return x


def spacing_from_affine(affine: Array) -> tuple[float, float, float]:
    """Voxel size in mm along the array's three spatial axes from a 4x4 affine (index -> world mm),
    e.g. a MONAI ``MetaTensor.affine``."""
    a = _to_numpy(affine).astype(np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))


class LongitudinalAugment:
    """Turn one image and label map into a LAUGEN series (dict transform).

    Args:
        kind: ``"uniform"``, ``"directional"`` or ``"gaussian"`` deformation.
        trajectory: ``"linear"``, ``"sigmoid"``, ``"exponential"``, ``"gompertz"`` or ``"custom"``.
        frames: frames T per series, including the input (frame 0); >= 2.
        slope_range: (min, max) mean boundary displacement per frame in mm, drawn uniformly per
            call; negative shrinks.
        sigma_mm: Gaussian blur of the mask in mm; the deformation reaches about 4 sigma.
        labels: label values that drive the deformation (default: every non-zero label).
        keys: (image key, label key) of the dict.
        spacing: voxel size in mm along the array's spatial axes. If None, read from
            ``data[spacing_key]``, else from the image's ``.affine`` (MONAI MetaTensor).
        spacing_key: dict key holding the spacing (3 numbers in mm).
        z_key: dict key the ground-truth z_t (mm, shape (T,)) is written to.
        values: ``custom`` trajectory: z_t in mm, starting with 0 (then ``frames`` is their count).
        rate, midpoint: trajectory shape parameters (per frame; frame index), see ``core.trajectory``.
        direction: ``directional``: growth direction along the array axes (mm frame, axis order).
        center: ``gaussian``: centre voxel index along the array axes; ``spread_mm`` its spread in mm.
        label_interpolation: ``"linear"`` (one-hot + argmax) or ``"nearest"``.
        device: torch device of the computation (``"cpu"``, ``"cuda"``, ``"auto"``); outputs are
            returned on the inputs' device.
        allow_missing_keys: pass the dict through unchanged when a key is missing.
    """

    def __init__(
        self,
        kind: str = "uniform",
        trajectory: str = "linear",
        frames: int = 8,
        slope_range: tuple[float, float] = (0.1, 0.4),
        sigma_mm: float = 5.0,
        labels: Sequence[int] | None = None,
        keys: tuple[str, str] = ("image", "label"),
        spacing: Sequence[float] | None = None,
        spacing_key: str = "spacing",
        z_key: str = "z_mm",
        values: Sequence[float] | None = None,
        rate: float | None = None,
        midpoint: float | None = None,
        direction: Sequence[float] | None = None,
        center: Sequence[float] | None = None,
        spread_mm: float = 10.0,
        label_interpolation: str = "linear",
        device: str = "cpu",
        allow_missing_keys: bool = False,
    ):
        if len(keys) != 2:
            raise ValueError(f"keys must be (image key, label key), got {keys!r}")
        self.keys = tuple(keys)
        self.trajectory = make_trajectory(trajectory, tuple(slope_range), rate, midpoint, values)
        if trajectory != "custom" and (int(frames) != frames or frames < 2):
            raise ValueError(f"frames must be an integer >= 2, got {frames}")
        self.frames = len(self.trajectory.values) if trajectory == "custom" else int(frames)
        self.kind = make_kind(kind, direction=direction, center=center, spread_mm=spread_mm)
        if not float(sigma_mm) > 0:
            raise ValueError(f"sigma_mm must be positive, got {sigma_mm}")
        self.sigma_mm = float(sigma_mm)
        self.labels = None if labels is None else [int(v) for v in labels]
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.spacing_key = spacing_key
        self.z_key = z_key
        self.label_interpolation = label_interpolation
        self.device = device
        self.allow_missing_keys = allow_missing_keys
        self.R = np.random.default_rng()
        self._draw: TrajectoryDraw | None = None

    # -- randomness (MONAI Randomizable protocol) -------------------------------------------------
    def set_random_state(self, seed: int | None = None, state: np.random.Generator | np.random.RandomState | None = None
                         ) -> "LongitudinalAugment":
        """Seed the transform's generator with ``seed``, or use ``state`` (a numpy Generator or
        RandomState); returns ``self`` for chaining."""
        if seed is not None:
            self.R = np.random.default_rng(int(seed) % 2 ** 32)
        elif isinstance(state, np.random.RandomState):
            self.R = np.random.default_rng(state.randint(2 ** 32, dtype=np.uint64))
        elif state is not None:
            if not isinstance(state, np.random.Generator):
                raise TypeError(f"state must be a numpy Generator or RandomState, got {type(state).__name__}")
            self.R = state
        else:
            self.R = np.random.default_rng()
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw the next trajectory (z_t in mm for every frame) from the generator."""
        self._draw = self.trajectory.sample(self.frames, self.R)

    # -- application ------------------------------------------------------------------------------
    def _spacing(self, data: Mapping, image: Array) -> tuple[float, float, float]:
        if self.spacing is not None:
            return self.spacing
        if self.spacing_key in data:
            return tuple(float(s) for s in _to_numpy(data[self.spacing_key]).reshape(-1))
        affine = getattr(image, "affine", None)
        if affine is not None:
            return spacing_from_affine(affine)
        raise ValueError(f"no voxel spacing: pass spacing=..., put it under data[{self.spacing_key!r}] "
                         "or give an image with an .affine")

    def apply(self, image: Array, label: Array, spacing: Sequence[float], draw: TrajectoryDraw
              ) -> tuple[Array, Array, Array]:
        """The series for an already drawn trajectory: (images, labels, z_mm), same array type as
        ``image``/``label`` (torch tensors come back as tensors on their device)."""
        img = _to_numpy(image)
        lab = _to_numpy(label)
        channel_label = lab.ndim == 4
        if channel_label:
            if lab.shape[0] != 1:
                raise ValueError(f"the label map must be (Z, Y, X) or (1, Z, Y, X), got shape {lab.shape}")
            lab = lab[0]
        aug = Augmenter(img, lab, spacing, selected=self.labels, sigma_mm=self.sigma_mm, kind=self.kind,
                        device=self.device, label_interpolation=self.label_interpolation)
        series = aug.series_from_values(draw)
        labels = series.labels[:, None] if channel_label else series.labels
        z = np.asarray(series.z_mm, dtype=np.float32)
        return _like(series.images, image), _like(labels, label), _like(z, image)

    def __call__(self, data: Mapping[str, Any], randomize: bool = True) -> dict:
        """Return a copy of ``data`` with the image and label replaced by their series and
        ``z_key`` set to z_t (mm). ``randomize=False`` reuses the last drawn trajectory."""
        image_key, label_key = self.keys
        if image_key not in data or label_key not in data:
            if self.allow_missing_keys:
                return dict(data)
            missing = [k for k in self.keys if k not in data]
            raise KeyError(f"LongitudinalAugment: missing key(s) {missing}; the dict has {sorted(data)}")
        if randomize or self._draw is None:
            self.randomize(data)
        out = dict(data)
        spacing = self._spacing(data, data[image_key])
        out[image_key], out[label_key], out[self.z_key] = self.apply(data[image_key], data[label_key], spacing,
                                                                     self._draw)
        return out

    def __repr__(self) -> str:
        traj = self.trajectory
        return (f"{type(self).__name__}(kind={self.kind.name!r}, trajectory={traj.name!r}, frames={self.frames}, "
                f"slope_range={getattr(traj, 'slope_range', None)}, sigma_mm={self.sigma_mm}, labels={self.labels}, "
                f"keys={self.keys})")


def longitudinal_augment(
    image: Array,
    label: Array,
    spacing: Sequence[float],
    seed: int | np.random.Generator | None = None,
    **params,
) -> tuple[Array, Array, Array]:
    """Function form of :class:`LongitudinalAugment`: ``(images, labels, z_mm)`` for one image
    ((C, Z, Y, X) or (Z, Y, X)) and label map, spacing in mm; ``params`` as the class (kind,
    trajectory, frames, slope_range, sigma_mm, labels, ...). ``seed`` an int or numpy Generator."""
    t = LongitudinalAugment(spacing=spacing, **params)
    if isinstance(seed, np.random.Generator):
        t.set_random_state(state=seed)
    else:
        t.set_random_state(seed)
    out = t({"image": image, "label": label})
    return out["image"], out["label"], out["z_mm"]
