"""From files (or loaded volumes) to series directories: what ``laugen generate`` and the napari
export panel both run, so that they write identical files for identical parameters."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .core import Augmenter, make_kind, make_trajectory, series_seed
from .io.export import sha256, staged_directory, write_series
from .io.nifti import Volume, check_same_grid, load_volume

Progress = Callable[[int, int], None]


@dataclass
class GenerateOptions:
    """Parameters of ``laugen generate`` (units: mm, frames, voxels).

    ``direction`` is in the image's world axes (RAS+ x, y, z); ``center`` is a voxel index
    (i, j, k) of the input file. ``labels`` None means every non-zero label.
    """

    kind: str = "uniform"
    trajectory: str = "linear"
    frames: int = 8
    slope_range: tuple[float, float] = (0.1, 0.4)
    values: Sequence[float] | None = None
    rate: float | None = None
    midpoint: float | None = None
    labels: Sequence[int] | None = None
    sigma_mm: float = 5.0
    direction: Sequence[float] | None = None
    center: Sequence[float] | None = None
    spread_mm: float = 10.0
    seed: int = 0
    series: int = 1
    device: str = "auto"
    label_interpolation: str = "linear"

    def validate(self) -> None:
        """Raise ``ValueError`` with one clear line for any unusable parameter."""
        if int(self.frames) != self.frames or self.frames < 2:
            raise ValueError(f"--frames must be an integer >= 2, got {self.frames}")
        if int(self.series) != self.series or self.series < 1:
            raise ValueError(f"--series must be an integer >= 1, got {self.series}")
        numbers = {"--sigma-mm": self.sigma_mm, "--spread-mm": self.spread_mm}
        numbers.update({f"--slope-range[{i}]": v for i, v in enumerate(self.slope_range)})
        for name, group in (("--direction", self.direction), ("--center", self.center), ("--values", self.values)):
            for i, v in enumerate(group or ()):
                numbers[f"{name}[{i}]"] = v
        for name, v in numbers.items():
            if not math.isfinite(float(v)):
                raise ValueError(f"{name} must be finite, got {v}")
        if self.sigma_mm <= 0:
            raise ValueError(f"--sigma-mm must be positive, got {self.sigma_mm}")
        if self.trajectory == "custom" and self.values is not None and len(self.values) != self.frames:
            raise ValueError(f"--values has {len(self.values)} values but --frames is {self.frames}")
        if self.direction is not None and len(self.direction) != 3:
            raise ValueError("--direction takes three numbers X Y Z")
        if self.center is not None and len(self.center) != 3:
            raise ValueError("--center takes three voxel indices I J K")
        make_trajectory(self.trajectory, self.slope_range, self.rate, self.midpoint, self.values)  # raises on bad values
        if self.kind == "directional" and self.direction is None:
            raise ValueError("--kind directional needs --direction X Y Z")
        if self.kind == "gaussian" and self.center is None:
            raise ValueError("--kind gaussian needs --center I J K")


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


def build_augmenter(image: Volume, mask: Volume, options: GenerateOptions) -> Augmenter:
    """The engine for a pair of volumes, with world/file coordinates turned into array ones."""
    direction = center = None
    if options.kind == "directional":
        direction = image.world_to_array_direction(options.direction)
    if options.kind == "gaussian":
        ijk = options.center
        if any(not (0 <= float(v) <= n - 1) for v, n in zip(ijk, image.file_shape)):
            raise ValueError(f"--center {list(ijk)} lies outside the image (shape {image.file_shape})")
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
    options: GenerateOptions,
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
    trajectory = make_trajectory(options.trajectory, options.slope_range, options.rate, options.midpoint, options.values)
    total = options.series * options.frames
    inputs = {}
    for role, vol in (("image", image), ("mask", mask)):
        if vol.path is not None:
            inputs[role] = {"path": str(vol.path), "sha256": sha256(vol.path)}
    common = {
        "inputs": inputs,
        "seed": options.seed,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
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
    options: GenerateOptions | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Read the pair and run :func:`generate_to_directory`; inputs are checked before anything is written."""
    options = options or GenerateOptions()
    options.validate()
    from .io.export import check_output_dir

    check_output_dir(outdir, overwrite)
    image, mask = load_pair(image_path, mask_path)
    return generate_to_directory(image, mask, outdir, options, overwrite, progress)
