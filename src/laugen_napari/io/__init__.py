"""File formats: NIfTI in/out with the geometry kept, and exports. The only place that knows NIfTI."""

from .nifti import Volume, check_same_grid, is_nifti, load_volume, save_volume, volume_from_array

__all__ = ["Volume", "check_same_grid", "is_nifti", "load_volume", "save_volume", "volume_from_array"]
