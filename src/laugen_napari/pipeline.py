"""From files (or loaded volumes) to series directories: what ``laugen generate``, ``laugen dataset``
and the napari export panel all run, so that they write identical files for identical parameters.

Frames are written as the engine computes them (:func:`~laugen_napari.io.export.stream_series`), so
memory does not grow with the number of frames; the disk and memory a run needs are checked before
any work (:func:`check_resources`).
"""

from __future__ import annotations

import errno
import os
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from . import __version__
from .core import Augmenter, make_kind, series_seed
from .core.series import Frame
from .io.export import (
    check_output_dir,
    folding_warning,
    sha256,
    staged_directory,
    stream_series,
)
from .io.nifti import Volume, stored_files
from .io.pairs import read_pair
from .io.resources import available_memory, existing_ancestor, free_disk, human_bytes
from .settings import GenerationSettings

Progress = Callable[[int, int], None]


SHEAR_TOLERANCE = 1e-4  # relative voxel-volume difference from a sheared affine worth a warning
# working memory of a run beyond the loaded interpreter, measured with bench/memory.py and
# independent of T: about 28 bytes per input voxel on the 1 mm MNI152 pair (input, field, warp
# coordinates, one frame and its file-layout copy); 48 leaves room for many labels
MEMORY_BYTES_PER_VOXEL = 48

class LaugenWarning(UserWarning):
    """Something the user should know about a written series (also recorded in series.json)."""


def load_pair(image_path: str | os.PathLike, mask_path: str | os.PathLike) -> tuple[Volume, Volume]:
    """Read a 3D image and its label map (see :func:`laugen_napari.io.pairs.read_pair`)."""
    return read_pair(image_path, mask_path)


# -- geometry ------------------------------------------------------------------------------------
def voxel_volume_ml(volume: Volume) -> float:
    """The true volume of one voxel in mL: |det| of the affine's 3x3 part (shear included)."""
    return float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0


def shear_warning(volume: Volume) -> str | None:
    """A one-line warning when the affine is sheared (voxel axes not perpendicular), else None.

    The engine measures mm along the voxel axes (spacing = column lengths), which is exact only
    for perpendicular axes; label volumes always use the true voxel volume :func:`voxel_volume_ml`."""
    box = float(np.prod(volume.spacing)) / 1000.0
    true = voxel_volume_ml(volume)
    if box <= 0 or abs(1.0 - true / box) <= SHEAR_TOLERANCE:
        return None
    axes = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    cosines = np.abs(axes.T @ axes)[np.triu_indices(3, 1)]
    angle = float(np.degrees(np.arcsin(np.clip(cosines.max(), 0.0, 1.0))))
    name = volume.path.name if volume.path else "the image"
    return (f"{name}: the affine is sheared (voxel axes {angle:.2f} degrees from perpendicular); "
            f"distances follow the voxel axes, volumes use the true voxel volume ({true * 1000:.4g} mm^3, "
            f"not {box * 1000:.4g}); resample to a perpendicular grid for exact mm")


def _scaled_volumes(frames: Iterable[Frame], scale: float) -> Iterator[Frame]:
    for frame in frames:
        frame.volumes_ml = {k: v * scale for k, v in frame.volumes_ml.items()}
        yield frame


# -- resources -----------------------------------------------------------------------------------
def _compression_ratio(volume: Volume, dtype: np.dtype, sample_bytes: int = 4 << 20) -> float:
    """Compressed/raw size of a slab of ``volume`` (the middle slices, as written), gzip level 1."""
    data = volume.data
    slab = max(1, min(data.shape[-3], sample_bytes // max(1, data[..., 0, :, :].size * dtype.itemsize)))
    mid = data.shape[-3] // 2
    lo = max(0, mid - slab // 2)
    raw = np.ascontiguousarray(data[..., lo:lo + slab, :, :], dtype=dtype).tobytes()
    return len(zlib.compress(raw, 1)) / max(1, len(raw))


def estimate_output_bytes(image: Volume, mask: Volume, options: GenerationSettings) -> int:
    """Estimated size in bytes of everything ``options`` writes for ``image``/``mask`` (gzip'd
    NIfTI from the compression of the input's middle slices, plus the sidecars)."""
    frames_total = int(options.frames) * int(options.series)
    total = 0.0
    for vol, dtype in ((image, np.dtype(np.float32)), (mask, np.dtype(mask.data.dtype))):
        raw = float(vol.data.size) * dtype.itemsize
        total += raw * min(1.0, _compression_ratio(vol, dtype) * 1.15 + 0.01) * frames_total
    labels = len(np.unique(mask.data)) if mask.data.size < 50_000_000 else 16
    total += frames_total * (120 + 24 * labels) + options.series * (16 << 10)
    return int(total)


def estimate_memory_bytes(image: Volume) -> int:
    """Estimated working memory in bytes of a run on ``image`` (beyond the running interpreter),
    whatever the number of frames."""
    return int(MEMORY_BYTES_PER_VOXEL * image.data.size)


def check_resources(image: Volume, mask: Volume, outdir: str | os.PathLike, options: GenerationSettings) -> None:
    """Refuse (one-line ``ValueError``) a run whose output cannot fit on the disk of ``outdir`` or
    whose working memory exceeds what the machine has available."""
    need = estimate_output_bytes(image, mask, options)
    free = free_disk(outdir)
    if need > free:
        where = existing_ancestor(Path(outdir).parent if not Path(outdir).exists() else outdir)
        raise ValueError(f"frames: {options.frames} frames x {options.series} series need about {human_bytes(need)} "
                         f"(estimated, compressed) in {where}, which has {human_bytes(free)} free; "
                         "lower frames/series or choose another output folder")
    mem = estimate_memory_bytes(image)
    have = available_memory()
    if have is not None and mem > have:
        name = image.path.name if image.path else "the image"
        raise ValueError(f"{name}: generating from {image.data.size} voxels needs about {human_bytes(mem)} of memory, "
                         f"{human_bytes(have)} is available; crop or downsample the image")


# -- the engine ----------------------------------------------------------------------------------
def build_augmenter(image: Volume, mask: Volume, options: GenerationSettings) -> Augmenter:
    """The engine for a pair of volumes, with world/file coordinates turned into array ones."""
    direction = center = None
    if options.kind == "directional":
        direction = image.world_to_array_direction(options.direction)
    if options.kind == "gaussian":
        ijk = options.center
        if any(not (0 <= float(v) <= n - 1) for v, n in zip(ijk, image.file_shape)):
            raise ValueError(f"center: {list(ijk)} lies outside the image (voxel indices of shape {image.file_shape})")
        center = image.file_to_array_index(ijk)
    kind = make_kind(options.kind, direction=direction, center=center, spread_mm=options.spread_mm)
    return Augmenter(
        image.data,
        mask.data,
        image.spacing,
        selected=options.labels,
        sigma_mm=options.sigma_mm,
        kind=kind,
        device=options.device,
        label_interpolation=options.label_interpolation,
    )


def generate_to_directory(
    image: Volume,
    mask: Volume,
    outdir: str | os.PathLike,
    options: GenerationSettings,
    overwrite: bool = False,
    progress: Progress | None = None,
    augmenter: Augmenter | None = None,
) -> list[Path]:
    """Generate ``options.series`` series and write them into ``outdir`` (or ``outdir/series_NNN``
    when more than one). Nothing appears in ``outdir`` unless every series was written.

    Frames are written to disk as they are computed: memory stays flat in ``options.frames``.
    Disk space and memory are checked first (one-line ``ValueError``). Warnings (a sheared affine,
    a folding warp) are recorded in each series.json under ``"warnings"`` and issued as
    :class:`LaugenWarning`. ``progress(done, total)`` counts frames over all series. Returns the
    series directories.
    """
    options.validate()
    outdir = check_output_dir(outdir, overwrite)  # a file, a folder not writable: said before the space check
    check_resources(image, mask, outdir, options)
    geometry_notes = [w for w in (shear_warning(image),) if w]
    for note in geometry_notes:
        warnings.warn(note, LaugenWarning, stacklevel=2)
    scale = 1.0
    if geometry_notes:
        scale = voxel_volume_ml(image) / (float(np.prod(image.spacing)) / 1000.0)
    try:
        aug = augmenter or build_augmenter(image, mask, options)
    except MemoryError:
        raise ValueError(f"not enough memory for the engine on {image.data.size} voxels; crop or downsample "
                         "the image") from None
    trajectory = options.trajectory_model()
    total = options.series * options.frames
    inputs = {}
    for role, vol in (("image", image), ("mask", mask)):
        if vol.path is not None:
            inputs[role] = {"path": str(vol.path), "sha256": sha256(vol.path)}
            files = stored_files(vol.path)
            if len(files) > 1:  # a .hdr/.img pair: the voxel data's hash too
                inputs[role]["files"] = [{"path": str(f), "sha256": sha256(f)} for f in files]
    common = {
        "inputs": inputs,
        "seed": options.seed,
        "options": options.to_record(),
        "spacing_mm_zyx": list(image.spacing),
        "voxel_volume_mm3": voxel_volume_ml(image) * 1000.0,
        "laugen_napari_version": __version__,
    }
    info = aug.info
    written = []
    try:
        with staged_directory(outdir, overwrite) as tmp:
            for k in range(options.series):
                def frame_done(done: int, _: int, k=k) -> None:
                    if progress is not None:
                        progress(k * options.frames + done, total)

                draw = trajectory.sample(options.frames, series_seed(options.seed, k))
                frames = aug.iter_frames(draw, progress=frame_done)
                if scale != 1.0:
                    frames = _scaled_volumes(frames, scale)
                sub = tmp if options.series == 1 else tmp / f"series_{k:03d}"
                final = outdir if options.series == 1 else outdir / f"series_{k:03d}"
                record = stream_series(sub, frames, draw, info, image, mask,
                                       {**common, "series_index": k, "warnings": list(geometry_notes)})
                folding = folding_warning(record["folding"])
                if folding:
                    warnings.warn(f"{final}: {folding}", LaugenWarning, stacklevel=2)
                written.append(final)
    except MemoryError:
        raise ValueError(f"not enough memory to write {outdir}; crop or downsample the image") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ValueError(f"{outdir}: the disk filled up while writing ({exc.strerror}); nothing was kept; "
                             "lower frames/series or choose another output folder") from None
        raise
    return written


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def generate_from_files(
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    outdir: str | os.PathLike,
    options: GenerationSettings | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Read the pair and run :func:`generate_to_directory`; inputs are checked before anything is written."""
    options = options or GenerationSettings()
    options.validate()
    check_output_dir(outdir, overwrite)
    if overwrite and Path(outdir).is_dir():
        for role, p in (("image", image_path), ("mask", mask_path)):
            if _inside(Path(p), Path(outdir)):
                raise ValueError(f"{outdir} holds the input {role} {p}; replacing it would delete the input")
    image, mask = load_pair(image_path, mask_path)
    return generate_to_directory(image, mask, outdir, options, overwrite, progress)
