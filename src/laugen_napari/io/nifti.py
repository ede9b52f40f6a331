"""NIfTI in and out, keeping the geometry.

Volumes are reoriented to the closest canonical orientation (RAS+) and transposed so that arrays
are (Z, Y, X) — or (T, Z, Y, X) for 4D files, time first — as napari and the engine expect.
:class:`Volume` remembers the file's own affine, header and orientation, so that anything computed
on the array is written back in the file's orientation with the file's affine and header, and other
tools overlay it on the original scan.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from .atomic import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
GRID_TOLERANCE_VOXELS = 0.05
"""How far (in voxels of the smallest size) an image's and its mask's affines may place the same
voxel apart and still be one grid, beyond float32 round-off: what tools that rewrite a header (e.g.
orthonormalising a slightly sheared one) change, far below what moves a label."""


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a NIfTI file by its suffix."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


PAIR_SUFFIXES = ((".hdr", ".img"), (".hdr.gz", ".img.gz"))
"""The two files of a NIfTI pair: the header and the voxel data."""


def stored_files(path: str | os.PathLike) -> list[Path]:
    """The files that hold the volume named by ``path``: the file itself, and for a .hdr/.img pair
    both files, header first (when the partner exists), so that provenance covers the voxel data."""
    p = Path(path)
    name = p.name.lower()
    for hdr, img in sorted(PAIR_SUFFIXES, key=lambda s: -len(s[0])):
        for mine, other in ((hdr, img), (img, hdr)):
            if name.endswith(mine):
                stem = p.name[: len(p.name) - len(mine)]
                tail = p.name[len(stem):]
                partner = p.with_name(stem + (other.upper() if tail.isupper() else other))
                if not partner.exists():
                    return [p]
                return [p, partner] if mine == hdr else [partner, p]
    return [p]


@dataclass
class Volume:
    """A NIfTI volume as an array in (Z, Y, X) order (time or channels first for 4D files).

    Attributes:
        data: the voxel values, closest-canonical (RAS+) orientation, axes (…, Z, Y, X).
        affine: 4x4 matrix from array indices (z, y, x) to world RAS+ mm.
        file_affine: the file's own affine (its voxel order I, J, K).
        header: the file's NIfTI header.
        path: where it was read from (None for volumes made in memory).
    """

    data: np.ndarray
    affine: np.ndarray
    file_affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    # -- geometry ----------------------------------------------------------------------------
    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) in voxels."""
        return tuple(int(n) for n in self.data.shape[-3:])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, float, float]:
        """World position (RAS+ mm) of voxel (0, 0, 0), in (z, y, x) order for napari's translate."""
        return tuple(float(v) for v in self.affine[:3, 3][::-1])

    @property
    def _transform(self) -> np.ndarray:
        return ornt.ornt_transform(ornt.io_orientation(self.file_affine), ornt.axcodes2ornt("RAS"))

    def file_to_array_index(self, ijk: Sequence[float]) -> tuple[float, float, float]:
        """Array index (z, y, x) of the file's voxel index (i, j, k)."""
        shape_file = self.file_shape
        tr = self._transform
        out = [0.0, 0.0, 0.0]
        for src_axis, (dst_axis, flip) in enumerate(tr):
            v = float(ijk[src_axis])
            if flip < 0:
                v = shape_file[src_axis] - 1 - v
            out[int(dst_axis)] = v
        return tuple(out[::-1])

    def array_to_file_index(self, zyx: Sequence[float]) -> tuple[float, float, float]:
        """The file's voxel index (i, j, k) of the array index (z, y, x)."""
        ras = list(zyx)[::-1]
        shape_file = self.file_shape
        out = [0.0, 0.0, 0.0]
        for src_axis, (dst_axis, flip) in enumerate(self._transform):
            v = float(ras[int(dst_axis)])
            if flip < 0:
                v = shape_file[src_axis] - 1 - v
            out[src_axis] = v
        return tuple(out)

    @property
    def file_shape(self) -> tuple[int, int, int]:
        """Spatial shape in the file's own voxel order (I, J, K); a 2D or 1D file has K (and J) 1."""
        shape = tuple(int(n) for n in self.header.get_data_shape()[:3])
        return shape + (1,) * (3 - len(shape))

    def world_to_array_direction(self, xyz: Sequence[float]) -> tuple[float, float, float]:
        """A world direction (RAS+ x, y, z) expressed in the array's mm frame (z, y, x)."""
        d = np.asarray(xyz, dtype=np.float64)
        axes = self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)  # columns: unit world vectors
        return tuple(float(v) for v in axes.T @ d)

    # -- conversion back to the file's layout -----------------------------------------------------
    def to_file_layout(self, array: np.ndarray) -> np.ndarray:
        """Array (…, Z, Y, X) in this volume's geometry → the file's layout (I, J, K, …)."""
        if tuple(array.shape[-3:]) != self.spatial_shape:
            raise ValueError(f"array of shape {array.shape} does not match the volume's {self.spatial_shape}")
        ras = np.moveaxis(array, list(range(array.ndim)), list(range(array.ndim))[::-1])  # (X, Y, Z, …)
        return np.ascontiguousarray(ornt.apply_orientation(ras, _ras_to_file(self)))

    def like(self, data: np.ndarray) -> "Volume":
        """A volume with new data (…, Z, Y, X) and this volume's geometry."""
        if tuple(data.shape[-3:]) != self.spatial_shape:
            raise ValueError(f"array of shape {data.shape} does not match the volume's {self.spatial_shape}")
        return Volume(data, self.affine, self.file_affine, self.header, None)


def _reorient(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """File layout (I, J, K, …) → closest-RAS array (…, Z, Y, X) and its (z, y, x) affine."""
    tr = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt("RAS"))
    ras = ornt.apply_orientation(data, tr)
    ras_affine = affine @ ornt.inv_ornt_aff(tr, data.shape[:3])
    from ..core.warp import torch_compatible  # native byte order, no negative strides (torch takes no other)

    arr = torch_compatible(np.ascontiguousarray(np.moveaxis(ras, list(range(ras.ndim)), list(range(ras.ndim))[::-1])))
    zyx_affine = ras_affine.copy()
    zyx_affine[:, :3] = ras_affine[:, [2, 1, 0]]
    return arr, zyx_affine


def _declared_bytes(img) -> int:
    return int(np.prod([int(n) for n in img.shape], dtype=object)) * img.get_data_dtype().itemsize


def _size_text(img) -> str:
    from .resources import human_bytes

    dims = "x".join(str(int(n)) for n in img.shape)
    return f"{dims} {img.get_data_dtype().name} voxels ({human_bytes(_declared_bytes(img))})"


def _check_declared_size(p: Path, img) -> None:
    """Refuse a header whose voxel data cannot be in the file (uncompressed) or in memory."""
    from .resources import available_memory, human_bytes

    need = _declared_bytes(img)
    if str(p).lower().endswith(".nii"):  # uncompressed: the size of the voxel data is known
        have = p.stat().st_size - int(img.header.get_data_offset())
        if have < need:
            raise ValueError(f"{p}: the header declares {_size_text(img)} but the file holds {max(have, 0)} bytes of "
                             "voxel data (truncated file or wrong header)")
    memory = available_memory()
    # the data are read once and reoriented once: two copies at most
    if memory is not None and 2 * need > memory:
        raise ValueError(f"{p}: the header declares {_size_text(img)}, more than the {human_bytes(memory)} of memory "
                         "available (wrong header, or crop the image first)")


def load_volume(path: str | os.PathLike, ndim: int | None = None) -> Volume:
    """Read a NIfTI file as a :class:`Volume` (closest-RAS, (…, Z, Y, X) order).

    Args:
        path: a .nii or .nii.gz file.
        ndim: 3 to require a 3D volume (a 4D file is then refused with a clear message).

    Integer data keep their dtype; scaled data become float. The header problems nibabel logs
    while reading (e.g. a negative pixdim it repairs) are shown once each when the file is read,
    and not at all when it cannot be: the ``ValueError`` is then the one message.
    """
    with _nibabel_messages_held():
        return _load_volume(Path(path), ndim)


class _HeldInThread(logging.Filter):
    """A filter on nibabel's logger: records logged by a thread that holds its messages are kept
    in that thread's list instead of being shown; other threads' records pass."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[int, list[logging.LogRecord]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        held = self.held.get(record.thread)
        if held is None:
            return True
        held.append(record)
        return False


_NIBABEL_HOLD = _HeldInThread()


@contextmanager
def _nibabel_messages_held() -> Iterator[None]:
    """Hold what nibabel logs (its ``nibabel.global`` logger) in this thread inside the block:
    replayed once per message when the block succeeds, dropped when it raises. Other threads'
    messages are not touched (the napari dock and Dask read files in threads)."""
    logger = logging.getLogger("nibabel.global")
    if _NIBABEL_HOLD not in logger.filters:
        logger.addFilter(_NIBABEL_HOLD)
    me = threading.get_ident()
    outer = _NIBABEL_HOLD.held.get(me)
    held = _NIBABEL_HOLD.held[me] = []
    try:
        yield
    finally:
        if outer is None:
            del _NIBABEL_HOLD.held[me]
        else:
            _NIBABEL_HOLD.held[me] = outer
    seen = set()
    for record in held:
        if record.getMessage() not in seen:
            seen.add(record.getMessage())
            logger.handle(record)


def _load_volume(p: Path, ndim: int | None) -> Volume:
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if not p.is_file():
        raise ValueError(f"{p}: not a file")
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises many kinds for unreadable files
        raise ValueError(f"{p}: cannot be read as NIfTI ({exc})") from exc
    if not isinstance(img, nib.Nifti1Pair):  # NIfTI-1/-2, one file (.nii) or a .hdr/.img pair
        what = ("an Analyze 7.5 image, which stores no orientation (left and right are a guess); convert it to NIfTI "
                "with its true orientation first") if isinstance(img, nib.AnalyzeImage) else \
            f"not a NIfTI image ({type(img).__name__.replace('Image', '')} format); convert it to NIfTI (.nii.gz) first"
        raise ValueError(f"{p}: {what}")
    shape = img.shape
    if len(shape) == 0 or 0 in shape:
        raise ValueError(f"{p}: the header declares no voxels (shape {tuple(int(n) for n in shape)}); damaged header")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3:
        shape = tuple(shape) + (1,) * (3 - len(shape))
    if len(shape) > 3 and (ndim == 3 or len(shape) > 4):
        raise ValueError(f"{p}: {_extra_dims_text(img, shape)}")
    stored = np.dtype(img.get_data_dtype())
    if stored.fields is not None or stored.kind not in "biuf":
        colour = stored.fields is not None
        raise ValueError(f"{p}: holds {'colour (RGB)' if colour else stored} voxels; a scan or label map of real "
                         f"numbers is expected ({'convert it to one grey-level channel' if colour else 'take its magnitude'}"
                         " first)")
    _check_declared_size(p, img)
    try:
        data = np.asarray(img.dataobj).reshape(shape)
    except MemoryError:
        raise ValueError(f"{p}: not enough memory for its {_size_text(img)} of voxel data") from None
    except Exception as exc:
        raise ValueError(f"{p}: the voxel data cannot be read ({' '.join(str(exc).split()) or type(exc).__name__})"
                         ) from exc
    affine = _affine_in_mm(img)
    _check_affine(p, affine)
    arr, affine = _reorient(data, affine)
    return Volume(arr, affine, img.affine.copy(), img.header.copy(), p)


VECTOR_INTENTS = (1004, 1005, 1006, 1007, 1008, 1009, 1010, 2003, 2004)
"""NIfTI intent codes whose 5th dimension holds several values per voxel (matrices, vectors such
as a displacement field, points, quaternions, colours): never a scan or a label map."""


def _extra_dims_text(img, shape: tuple[int, ...]) -> str:
    """Why a file with more than 3 (non-singleton) dimensions is not one 3D volume."""
    code = int(img.header["intent_code"])
    where = f"shape {tuple(int(n) for n in img.shape)}"
    if code in VECTOR_INTENTS:
        name = nib.nifti1.intent_codes.label[code]
        return (f"holds a {name} per voxel ({where}, NIfTI intent {nib.nifti1.intent_codes.niistring[code]}; e.g. a "
                "displacement field), not a scan or label map")
    if len(img.shape) >= 5 and img.shape[3] == 1:
        return (f"holds {int(np.prod(img.shape[4:]))} values per voxel along NIfTI's 5th dimension ({where}: a vector "
                "or matrix field), not a scan or label map")
    if len(shape) > 4:
        return f"a {len(shape)}D image ({where}); 3D or 4D images only"
    return f"a 4D image of {where} where a 3D volume is expected; extract one volume first (e.g. the first time point)"


def _check_affine(p: Path, affine: np.ndarray) -> None:
    """Refuse a voxel-to-world affine that places no usable grid: NaN or infinite entries (e.g.
    a NaN pixdim), or a zero-length or collapsed voxel axis."""
    if not np.all(np.isfinite(affine)):
        raise ValueError(f"{p}: the header's voxel-to-world geometry is not finite (NaN or infinite voxel size or "
                         "position in pixdim, qform or sform); fix the header first")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(zooms > 0) or abs(np.linalg.det(affine[:3, :3])) <= 1e-6 * float(np.prod(zooms)):
        raise ValueError(f"{p}: the header's voxel-to-world geometry collapses a voxel axis (voxel size "
                         f"{', '.join(f'{z:g}' for z in zooms)} mm, or two axes parallel); fix the header first")


MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}
"""Millimetres per spatial unit a NIfTI header may declare (``unknown``, the code 0 many tools
write, is taken as mm, as those tools mean it)."""


def _affine_in_mm(img) -> np.ndarray:
    """The image's affine in mm: a header that declares metres or microns has its affine (and
    voxel sizes) in that unit. The file's own affine is kept as it is for writing: written headers
    keep the unit too."""
    unit = img.header.get_xyzt_units()[0] if hasattr(img.header, "get_xyzt_units") else "unknown"
    affine = np.array(img.affine, dtype=np.float64)
    affine[:3, :] *= MM_PER_UNIT.get(unit, 1.0)
    return affine


def check_same_grid(image: Volume, labels: Volume) -> None:
    """Raise ``ValueError`` unless ``image`` and ``labels`` put their voxels at the same world
    positions: the same (Z, Y, X) array shape and array affine. The two files may store that grid
    in different voxel orders (e.g. the image RAS, the mask LPS, as ITK tools write it): their
    arrays are both in the closest-RAS order, voxel for voxel the same place."""
    name_i = image.path.name if image.path else "image"
    name_l = labels.path.name if labels.path else "labels"
    if image.spatial_shape != labels.spatial_shape:
        raise ValueError(f"{name_i} and {name_l} differ in shape: {image.file_shape} vs {labels.file_shape}")
    apart, tolerance = grid_offset_mm(image, labels)
    if not apart <= tolerance:
        raise ValueError(f"{name_i} and {name_l} differ in affine (voxel-to-world geometry: voxels up to {apart:.3g} mm "
                         "apart); resample the mask first")


def grid_offset_mm(a: Volume, b: Volume) -> tuple[float, float]:
    """How far apart (mm) the affines of ``a`` and ``b`` put the same voxel of their (equal)
    array shape, at worst (a grid corner), and how far counts as the same place:
    :data:`GRID_TOLERANCE_VOXELS` of the smallest voxel plus float32 round-off of the coordinates
    (headers store them in float32; it grows with the distance from the origin).

    Every voxel is compared, not the affine's entries with a relative tolerance, so a grid far
    from the origin or long along an axis is refused when shifted by a fraction of a voxel."""
    shape = a.spatial_shape
    corners = np.array([[z, y, x, 1.0] for z in (0, shape[0] - 1) for y in (0, shape[1] - 1)
                        for x in (0, shape[2] - 1)]).T
    apart = float(np.max(np.linalg.norm(((a.affine - b.affine) @ corners)[:3], axis=0)))
    world = np.abs(a.affine @ corners)[:3]
    extent = float(np.max(np.linalg.norm(a.affine[:3, :3] @ (corners[:3] - corners[:3, :1]), axis=0)))
    roundoff = 8 * float(np.finfo(np.float32).eps) * (float(world.max()) + extent)
    smallest = float(min(min(a.spacing), min(b.spacing)))
    return apart, GRID_TOLERANCE_VOXELS * smallest + roundoff


def _atomic_save(img: nib.Nifti1Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _output_dtype(dtype: np.dtype | type) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.dtype(np.float32)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    return dtype


def _output_class(reference: Volume) -> type:
    """NIfTI-2 for a NIfTI-2 reference (dimensions beyond NIfTI-1's 32767 stay writable), else
    NIfTI-1; always one file (a .hdr/.img pair is written as .nii[.gz])."""
    return nib.Nifti2Image if isinstance(reference.header, nib.Nifti2Header) else nib.Nifti1Image


def _output_image(dataobj, reference: Volume, dtype: np.dtype, time_step: float | None) -> nib.Nifti1Image:
    """The NIfTI image of ``dataobj`` (already in the file's layout, I·J·K[·T]) with the reference's
    affine and header: the one place that decides what a written header holds.

    Kept from the reference: geometry (affine, qform/sform codes: a file with both codes 0 stays
    so, so that every tool reads the output as it reads the input), units, description, intent of
    a scalar volume. Dropped: scaling, header extensions (they describe the input file, e.g. its
    DICOM header or AFNI attributes), and an intent of several values per voxel (a vector)."""
    cls = _output_class(reference)
    header = cls.header_class.from_header(reference.header)
    header.set_data_dtype(dtype)
    header.set_slope_inter(None, None)
    del header.extensions[:]
    if int(header["intent_code"]) in VECTOR_INTENTS:
        header.set_intent("none")
    img = cls(dataobj, reference.file_affine, header)
    if len(dataobj.shape) >= 4:
        spatial = tuple(header.get_zooms()[:3])
        spatial = spatial + (1.0,) * (3 - len(spatial))  # a 2D file's header has two zooms
        zooms = spatial + (float(time_step) if time_step else 1.0,) + (1.0,) * (len(dataobj.shape) - 4)
        img.header.set_zooms(zooms)
    codes = int(header["qform_code"]), int(header["sform_code"])
    if codes == (0, 0) and np.allclose(reference.header.get_base_affine(), reference.file_affine):
        return img  # a file without qform/sform: its affine comes from pixdim, as the output's will
    img.set_qform(reference.file_affine, code=codes[0] or 1)
    img.set_sform(reference.file_affine, code=codes[1] or 1)
    return img


def save_volume(path: str | os.PathLike, data: np.ndarray, reference: Volume, dtype: np.dtype | type | None = None,
                time_step: float | None = None) -> Path:
    """Write ``data`` (…, Z, Y, X) in the geometry of ``reference``: the file's orientation, affine
    and header are restored. 4D data (T, Z, Y, X) are written with time last, as NIfTI stores it.

    The file is written under a temporary name and moved into place when complete.
    """
    path = Path(path)
    dtype = _output_dtype(dtype or data.dtype)
    out = reference.to_file_layout(np.asarray(data).astype(dtype, copy=False))
    _atomic_save(_output_image(out, reference, dtype, time_step), path)
    return path


def _ras_to_file(reference: Volume) -> np.ndarray:
    """The orientation transform from an array (…, Z, Y, X) with its axes reversed (X, Y, Z, …) to
    the file's layout (I, J, K, …), as :meth:`Volume.to_file_layout` applies it."""
    return ornt.ornt_transform(ornt.axcodes2ornt("RAS"), ornt.io_orientation(reference.file_affine))


class SeriesWriter:
    """A 4D NIfTI written frame by frame: the header first, then each frame's voxels through the
    (gzip) stream, so memory does not grow with the number of frames.

    The file is identical to :func:`save_volume` of the stacked frames (same header, same bytes
    before compression, same compression settings). Use :func:`open_series_writer`.
    """

    def __init__(self, fileobj, reference: Volume, frame_shape: tuple[int, ...], frames: int, dtype: np.dtype):
        self._f = fileobj
        self.reference = reference
        self.frame_shape = tuple(frame_shape)
        self.frames = int(frames)
        self.written = 0
        self.dtype = dtype
        self._back = _ras_to_file(reference)  # computed once

    def write(self, frame: np.ndarray) -> None:
        """Append one frame (…, Z, Y, X) in the reference's array geometry."""
        frame = np.asarray(frame)
        if tuple(frame.shape) != self.frame_shape:
            raise ValueError(f"frame of shape {frame.shape}, expected {self.frame_shape}")
        if self.written >= self.frames:
            raise ValueError(f"all {self.frames} frames are written already")
        frame = frame.astype(self.dtype, copy=False)
        axes = list(range(frame.ndim))
        file_layout = ornt.apply_orientation(np.moveaxis(frame, axes, axes[::-1]), self._back)  # a view
        # the file's layout (I, J, K, …) in Fortran order is (…, K, J, I) in C order: one copy
        block = np.ascontiguousarray(file_layout.T)
        self._f.write(memoryview(block).cast("B"))
        self.written += 1


@contextmanager
def open_series_writer(path: str | os.PathLike, reference: Volume, frames: int, dtype: np.dtype | type,
                       frame_shape: Sequence[int] | None = None, time_step: float | None = None
                       ) -> Iterator[SeriesWriter]:
    """Write a (T, …, Z, Y, X) series of ``frames`` frames into ``path`` one frame at a time.

    Args:
        path: .nii or .nii.gz; written under a temporary name, moved into place only when all
            ``frames`` frames were written (otherwise removed).
        reference: the geometry (affine, header, orientation) of the frames.
        frames: the number of frames T the file will hold.
        dtype: stored type (float64 is stored as float32, bool as uint8).
        frame_shape: (…, Z, Y, X) of one frame (default: the reference's spatial shape).
        time_step: the 4th zoom (default 1).
    """
    from nibabel.openers import ImageOpener
    from nibabel.volumeutils import seek_tell

    path = Path(path)
    frame_shape = tuple(int(n) for n in (frame_shape or reference.spatial_shape))
    if frame_shape[-3:] != reference.spatial_shape:
        raise ValueError(f"frames of shape {frame_shape} do not match the volume's {reference.spatial_shape}")
    dtype = _output_dtype(dtype)
    back = _ras_to_file(reference)
    # one frame in the file's layout (I, J, K, …): the file's own axis order, which differs from
    # (X, Y, Z) when the file stores its axes permuted (e.g. a sagittal scan stored as PIR)
    frame_in_file = ornt.apply_orientation(np.broadcast_to(np.zeros((), np.uint8), frame_shape[::-1]), back).shape
    file_shape = tuple(int(n) for n in frame_in_file) + (int(frames),)
    # a zero-stride stand-in of the full series: nibabel sets the header from its shape and dtype
    stand_in = np.broadcast_to(np.zeros((), dtype), file_shape)
    img = _output_image(stand_in, reference, dtype, time_step)
    img.update_header()
    header = img.header
    header.set_slope_inter(1.0, 0.0)  # what nibabel stores when the data need no scaling
    out_dtype = header.get_data_dtype()  # with the header's byte order
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with ImageOpener(str(tmp), "wb") as f:
            header.write_to(f)
            seek_tell(f, header.get_data_offset(), write0=True)
            writer = SeriesWriter(f, reference, frame_shape, frames, out_dtype)
            yield writer
            if writer.written != writer.frames:
                raise ValueError(f"{path.name}: {writer.written} of {writer.frames} frames were written")


def series_nbytes(reference: Volume, frames: int, dtype: np.dtype | type,
                  frame_shape: Sequence[int] | None = None) -> int:
    """Uncompressed size in bytes of a (T, …, Z, Y, X) series file (header included)."""
    shape = tuple(frame_shape or reference.spatial_shape)
    header = int(_output_class(reference).header_class.single_vox_offset)
    return header + int(np.prod(shape, dtype=np.int64)) * int(frames) * _output_dtype(dtype).itemsize


def geometry_from_affine(shape: Sequence[int], affine: np.ndarray) -> Volume:
    """The geometry-only Volume (zero-strided data, no memory) of an array of spatial ``shape``
    (Z, Y, X) that ``affine`` (4x4, array z, y, x -> world RAS mm) places, written with file axes
    (I, J, K) = (X, Y, Z) and that affine (oblique or sheared as given). Raises ``ValueError`` unless
    the array is in the closest-RAS order every Volume holds: no axis flipped, none turned by 45
    degrees or more, none collapsed."""
    shape = tuple(int(n) for n in shape)
    affine = np.asarray(affine, dtype=np.float64)
    file_affine = affine[:, [2, 1, 0, 3]]
    zooms = np.linalg.norm(file_affine[:3, :3], axis=0)
    if not np.all(np.isfinite(file_affine)) or not np.all(zooms > 0) or \
            abs(np.linalg.det(file_affine[:3, :3])) < 1e-9 * float(np.prod(zooms)) or \
            not np.array_equal(ornt.io_orientation(file_affine), [[0, 1], [1, 1], [2, 1]]):
        raise ValueError("its voxel axes are flipped, collapsed or turned by 45 degrees or more")
    header = nib.Nifti1Header()
    header.set_data_shape(shape[::-1])
    header.set_zooms(tuple(float(v) for v in zooms))
    header.set_xyzt_units("mm", "sec")
    return Volume(np.broadcast_to(np.zeros((), np.uint8), shape), affine.copy(), file_affine, header, None)


def volume_from_array(data: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                      origin: Sequence[float] = (0.0, 0.0, 0.0)) -> Volume:
    """A RAS+ :class:`Volume` for an array (…, Z, Y, X) with ``spacing`` and ``origin`` (z, y, x) in mm."""
    sz, sy, sx = (float(v) for v in spacing)
    oz, oy, ox = (float(v) for v in origin)
    file_affine = np.array([[sx, 0, 0, ox], [0, sy, 0, oy], [0, 0, sz, oz], [0, 0, 0, 1]], dtype=np.float64)
    header = nib.Nifti1Header()
    header.set_data_shape(tuple(data.shape[-3:][::-1]))
    header.set_zooms((sx, sy, sz))
    header.set_xyzt_units("mm", "sec")
    arr, affine = _reorient(np.moveaxis(data, list(range(data.ndim)), list(range(data.ndim))[::-1]), file_affine)
    return Volume(arr, affine, file_affine, header, None)
