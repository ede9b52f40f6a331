"""From files (or loaded volumes) to series directories: what ``laugen generate`` and the napari
export panel both run, so that they write identical files for identical parameters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .core import Augmenter, make_kind, series_seed
from .io.export import sha256, staged_directory, write_series
from .io.nifti import Volume, check_same_grid, load_volume
from .settings import GenerationSettings

Progress = Callable[[int, int], None]


# The generation settings have one form, :class:`~laugen_napari.settings.GenerationSettings`;
# ``GenerateOptions`` is kept as its old name for scripts written against version 0.1.
GenerateOptions = GenerationSettings


def load_pair(image_path: str | os.PathLike, mask_path: str | os.PathLike) -> tuple[Volume, Volume]:
    """Read an image and its label map, checking they are 3D and share shape and affine."""
    image = load_volume(image_path, ndim=3)
    mask = load_volume(mask_path, ndim=3)
    check_same_grid(image, mask)
    if not np.issubdtype(mask.data.dtype, np.integer):
        if not np.all(np.isfinite(mask.data)) or not np.all(np.mod(mask.data, 1) == 0):
            raise ValueError(f"{mask.path}: a label map must hold integer values")
        mask.data = mask.data.astype(np.int32)
    return image, mask


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

    ``progress(done, total)`` counts frames over all series. Returns the series directories.
    """
    options.validate()
    outdir = Path(outdir)
    aug = augmenter or build_augmenter(image, mask, options)
    trajectory = options.trajectory_model()
    total = options.series * options.frames
    inputs = {}
    for role, vol in (("image", image), ("mask", mask)):
        if vol.path is not None:
            inputs[role] = {"path": str(vol.path), "sha256": sha256(vol.path)}
    common = {
        "inputs": inputs,
        "seed": options.seed,
        "options": options.to_record(),
        "spacing_mm_zyx": list(image.spacing),
        "laugen_napari_version": __version__,
    }
    written = []
    with staged_directory(outdir, overwrite) as tmp:
        for k in range(options.series):
            def frame_done(done: int, _: int, k=k) -> None:
                if progress is not None:
                    progress(k * options.frames + done, total)

            series = aug.series(trajectory, options.frames, seed=series_seed(options.seed, k), progress=frame_done)
            sub = tmp if options.series == 1 else tmp / f"series_{k:03d}"
            write_series(sub, series, image, mask, {**common, "series_index": k})
            written.append(outdir if options.series == 1 else outdir / f"series_{k:03d}")
    return written


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
    from .io.export import check_output_dir

    check_output_dir(outdir, overwrite)
    image, mask = load_pair(image_path, mask_path)
    return generate_to_directory(image, mask, outdir, options, overwrite, progress)
