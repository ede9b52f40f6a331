"""LAUGEN: longitudinal augmentation and data generation for 3D medical images.

The engine lives in :mod:`laugen_napari.core` (numbers only), NIfTI in :mod:`laugen_napari.io`,
the command line in :mod:`laugen_napari.cli` and the napari workbench in :mod:`laugen_napari.ui`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("laugen-napari")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
