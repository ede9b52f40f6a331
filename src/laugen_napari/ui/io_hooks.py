"""npe2 hooks: the NIfTI reader, the Image/Labels writers and the sample data.

- Reader: .nii / .nii.gz. A file opens as **Labels** when its name says so (a word ``seg``,
  ``segmentation``, ``aseg``, ``mask``, ``label(s)``, ``labelmap``, ``gt`` …) and its values are
  integers, or when its values are integers taking few distinct values: at most 64, or at most
  256 spread sparsely (using under half of the range between the smallest and the largest; an
  8-bit scan uses most of its range and stays an Image). Anything else opens as an **Image**.
  Arrays are closest-RAS (…, Z, Y, X), 4D files time first; ``scale`` comes from the voxel sizes,
  ``translate`` from the affine, and the file's affine and header stay in the layer's metadata.
- Writers: Image and Labels layers to .nii/.nii.gz in the file's own orientation, affine and
  header. A layer drawn from scratch takes the geometry of the layer it was drawn on (same shape,
  scale and translate in the current viewer); see :mod:`laugen_napari.ui.layers`.
- Sample data: the shipped MNI152 T1 and its lateral-ventricle segmentation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.labels import integer_labels
from ..io.nifti import Volume, is_nifti, load_volume, save_volume
from .layers import LayerDataTuple, volume_from_layer_data, volume_layer_data

SAMPLE_IMAGE = "mni152_t1.nii.gz"
SAMPLE_LABELS = "mni152_ventricles_seg.nii.gz"

MAX_LABELS = 256
FEW_LABELS = 64
_LABEL_WORDS = re.compile(
    r"(?:^|[^a-z])(?:[ad]?seg|segs|segmentations?|parc|aparc|masks?|labels?|labelmaps?|gt|groundtruth|annotations?)(?:$|[^a-z])"
)

PathOrPaths = str | Sequence[str]


# -- reader --------------------------------------------------------------------------------------
def file_stem(path: str | Path) -> str:
    """The file name without .nii / .nii.gz."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def name_says_labels(path: str | Path) -> bool:
    """Whether the file name contains a word such as seg, mask, label or gt."""
    return bool(_LABEL_WORDS.search(file_stem(path).lower()))


def _as_integer_labels(data: np.ndarray) -> np.ndarray | None:
    """``data`` as integer label values (float whole numbers within the label rounding, 0.9999
    from float32 storage being 1, are rounded), or None when it holds other values."""
    if np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_:
        return data
    if not np.issubdtype(data.dtype, np.floating):
        return None
    try:
        return integer_labels(data)
    except ValueError:
        return None


def distinct_values(data: np.ndarray, limit: int = MAX_LABELS) -> np.ndarray | None:
    """The sorted distinct values of integer-valued ``data``, or None when there are more than
    ``limit`` (checked on a subsample first, so large images are refused quickly)."""
    flat = data.reshape(-1)
    step = max(1, flat.size // 1_000_000)
    if step > 1 and np.unique(flat[::step]).size > limit:
        return None
    if data.dtype.kind in "ui" and data.dtype.itemsize <= 2 or data.dtype == np.bool_:
        lo = int(flat.min())
        counts = np.bincount(flat.astype(np.int64) - lo)
        values = np.flatnonzero(counts) + lo
    else:
        values = np.unique(flat)
    return values if values.size <= limit else None


def looks_like_labels(data: np.ndarray, path: str | Path | None = None) -> bool:
    """The reader's Labels rule (see the module docstring)."""
    data = _as_integer_labels(data) if data.size else None
    if data is None:
        return False
    if path is not None and name_says_labels(path):
        return True
    values = distinct_values(data, MAX_LABELS)
    if values is None:
        return False
    if values.size <= FEW_LABELS:
        return True
    span = float(values[-1]) - float(values[0]) + 1.0
    return values.size < 0.5 * span


def _labels_dtype(data: np.ndarray) -> np.ndarray:
    """Integer data for a Labels layer (float label maps become the smallest fitting integer)."""
    if np.issubdtype(data.dtype, np.integer):
        return data
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    data = integer_labels(data)  # rounded, never truncated (0.9999 is label 1)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return data.astype(dtype)
    raise ValueError("label values do not fit a 64-bit integer")


def volume_to_layer(volume: Volume, path: str | Path | None = None, as_labels: bool | None = None) -> LayerDataTuple:
    """The layer-data tuple the reader gives for a loaded Volume (Labels or Image by the rule)."""
    path = path if path is not None else volume.path
    name = file_stem(path) if path is not None else None
    if as_labels is None:
        as_labels = looks_like_labels(volume.data, path)
    if as_labels:
        if volume.data.dtype.kind not in "ui":
            converted = volume.like(_labels_dtype(volume.data))
            converted.path = volume.path
            volume = converted
        return volume_layer_data(volume, "labels", name=name)
    return volume_layer_data(volume, "image", name=name, colormap="gray")


def read_nifti(path: PathOrPaths) -> list[LayerDataTuple]:
    """Read one or several NIfTI files into napari layer-data tuples."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = []
    for p in paths:
        volume = load_volume(p)
        layer = volume_to_layer(volume, p)
        layers.append(layer)
    return layers


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerDataTuple]] | None:
    """npe2 reader: :func:`read_nifti` for .nii/.nii.gz paths (all of them), else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(is_nifti(p) for p in paths):
        return None
    return read_nifti


# -- writers -------------------------------------------------------------------------------------
def _viewer_layers() -> list[Any] | None:
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no Qt, no viewer
        return None
    return list(viewer.layers) if viewer is not None else None


def _nifti_path(path: str) -> Path:
    p = Path(path)
    if not is_nifti(p):
        p = p.with_name(p.name + ".nii.gz")
    return p


def _time_step(volume: Volume) -> float | None:
    zooms = volume.header.get_zooms()
    if volume.data.ndim == 4 and len(zooms) >= 4 and float(zooms[3]) > 0:
        return float(zooms[3])
    return None


def _smallest_labels_dtype(data: np.ndarray, preferred: np.dtype | None) -> np.dtype:
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    order = ([np.dtype(preferred)] if preferred is not None and np.dtype(preferred).kind in "ui" else [])
    order += [np.dtype(t) for t in (np.uint8, np.int16, np.int32)]
    for dtype in order:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    raise ValueError(f"label values {lo}..{hi} do not fit a 32-bit NIfTI integer type")


def layer_volume_for_writing(data: Any, meta: dict, layers: Sequence[Any] | None = None) -> Volume:
    """The Volume a writer saves: the layer's data with its file geometry, or that of the layer
    it was drawn on (looked up in ``layers``, by default the current viewer's)."""
    return volume_from_layer_data(data, meta, layers=_viewer_layers() if layers is None else layers)


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for Image layers: NIfTI in the original orientation and affine."""
    volume = layer_volume_for_writing(data, meta)
    out = save_volume(_nifti_path(path), volume.data, volume, dtype=volume.data.dtype, time_step=_time_step(volume))
    return [str(out)]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers: integer NIfTI in the original geometry, in the
    source file's integer type when the values fit (else the smallest of uint8/int16/int32)."""
    volume = layer_volume_for_writing(data, meta)
    geometry = (meta.get("metadata") or {}).get("laugen_volume")
    preferred = geometry.data.dtype if isinstance(geometry, Volume) else None
    dtype = _smallest_labels_dtype(volume.data, preferred)
    out = save_volume(_nifti_path(path), volume.data, volume, dtype=dtype, time_step=_time_step(volume))
    return [str(out)]


# -- sample data ---------------------------------------------------------------------------------
def sample_data_dir() -> Path:
    """The package's sample_data folder."""
    import laugen_napari

    return Path(laugen_napari.__file__).resolve().parent / "sample_data"


def make_sample_data() -> list[LayerDataTuple]:
    """The shipped MNI152 T1 (Image) and its lateral-ventricle segmentation (Labels)."""
    folder = sample_data_dir()
    image = load_volume(folder / SAMPLE_IMAGE)
    labels = load_volume(folder / SAMPLE_LABELS)
    return [volume_to_layer(image, folder / SAMPLE_IMAGE, as_labels=False),
            volume_to_layer(labels, folder / SAMPLE_LABELS, as_labels=True)]
