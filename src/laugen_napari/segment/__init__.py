"""Interactive segmentation: Segment Anything with 3D propagation, and a weightless fallback.

Qt-free. The common entry points are :func:`get_backend` and :func:`segment`; prompts are
:class:`Prompts` of integer (Z, Y, X) array indices. SAM lives in :mod:`.sam` (needs the ``sam``
extra and a checkpoint file), the fallback in :mod:`.fallback`, propagation in :mod:`.propagate`.
"""

from .api import Backend, choose_axis, get_backend, segment
from .fallback import GrowthReport, RegionGrowing, RegionGrowingBackend, grow_region
from .propagate import PropagationReport, PropagationSettings, propagate, propagate_from_prompts
from .prompts import (Prompts, SegmentationCancelled, SlicePrompts, default_window, take_slice,
                      window_to_uint8)

__all__ = [
    "Backend", "GrowthReport", "PropagationReport", "PropagationSettings", "Prompts", "RegionGrowing",
    "RegionGrowingBackend", "SegmentationCancelled", "SlicePrompts", "choose_axis", "default_window", "get_backend",
    "grow_region", "propagate", "propagate_from_prompts", "segment", "take_slice", "window_to_uint8",
]
