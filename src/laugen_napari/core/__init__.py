"""The LAUGEN engine: numbers only (torch/numpy), no Qt, no napari, no file formats.

- :mod:`.field` — the unit displacement field and its kinds (uniform, directional, gaussian)
- :mod:`.labels` — label maps: values, counts, the float-to-integer rule, the selection, centres
- :mod:`.trajectory` — latent trajectories z_t in mm
- :mod:`.warp` — resampling of images and label maps, whole frames or single planes
- :mod:`.quality` — label volumes, Jacobian determinant, difference maps
- :mod:`.series` — :class:`Augmenter`, one image + segmentation to a series
- :mod:`.native` — the optional compiled loops (C) for the CPU engine
"""

from .device import resolve_device
from .field import KINDS, Directional, Gaussian, Kind, Uniform, UnitField, make_kind, unit_field
from .labels import selection_mask
from .quality import JacobianStats, difference_maps, label_volumes_ml
from .series import Augmenter, Frame, Series, generate_series, series_seed
from .trajectory import TRAJECTORIES, CustomTrajectory, Trajectory, TrajectoryDraw, make_trajectory
from .warp import Warper

__all__ = [
    "KINDS", "TRAJECTORIES", "Augmenter", "CustomTrajectory", "Directional", "Frame", "Gaussian", "JacobianStats", "Kind",
    "Series", "Trajectory", "TrajectoryDraw", "Uniform", "UnitField", "Warper", "difference_maps", "generate_series",
    "label_volumes_ml", "make_kind", "make_trajectory", "resolve_device", "selection_mask", "series_seed", "unit_field",
]
