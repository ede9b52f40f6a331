"""LAUGEN as a transform for existing training pipelines (MONAI, TorchIO, plain torch).

- :class:`LongitudinalAugment` (``transforms.monai``): a dict transform on numpy arrays, torch
  tensors or MONAI MetaTensors; a MONAI ``Randomizable``/``InvertibleTransform`` when MONAI is
  installed. Default layout: frames folded into the channel axis, image ``(T*C, *S)``, label
  ``(T, *S)``, ground truth ``z_mm`` (T,) in mm.
- :class:`LongitudinalAugmentTio` (``transforms.torchio``, needs TorchIO): a ``tio.Transform``
  returning a Subject.
- :func:`longitudinal_augment`: the function form.

Generation arguments are the fields of :class:`~laugen_napari.settings.GenerationSettings`
(names, defaults, validation). The contract (shapes, axis order, dtype, seeding, devices) is in
``docs/transforms.md``.

Example::

    from laugen_napari.transforms import LongitudinalAugment
    t = LongitudinalAugment(frames=6, slope_range=(0.2, 0.5), sigma_mm=4.0).set_random_state(0)
    out = t({"image": img, "label": seg, "spacing": (1.0, 1.0, 1.0)})  # img (1, Z, Y, X)
    out["image"].shape  # (6, Z, Y, X): T folded into the channel axis
"""

from __future__ import annotations

from .monai import (
    TIME_DIMS,
    LongitudinalAugment,
    longitudinal_augment,
    spacing_from_affine,
    split_time,
    world_direction_to_array,
)

__all__ = [
    "TIME_DIMS", "LongitudinalAugment", "LongitudinalAugmentTio", "longitudinal_augment", "spacing_from_affine",
    "split_time", "world_direction_to_array",
]


def __getattr__(name: str):
    if name == "LongitudinalAugmentTio":  # imported on demand: TorchIO is an optional extra
        from .torchio import LongitudinalAugmentTio

        return LongitudinalAugmentTio
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
