"""Writing series to disk: 4D NIfTI + JSON sidecar, with atomic directory replacement."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.series import Series
from .nifti import Volume, save_volume

IMAGE_SERIES = "image_series.nii.gz"
MASK_SERIES = "mask_series.nii.gz"
SIDECAR = "series.json"


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def series_record(series: Series, extra: dict | None = None) -> dict:
    """The JSON sidecar of a series: ground-truth trajectory and per-frame quality."""
    info = series.info
    record = {
        "kind": info.get("kind"),
        "kind_params": info.get("kind_params", {}),
        "trajectory": series.trajectory.to_json(),
        "z_mm": [float(v) for v in series.z_mm],
        "frames": series.frames,
        "labels": info.get("labels"),
        "sigma_mm": info.get("sigma_mm"),
        "volumes_ml": {str(k): [round(float(x), 6) for x in v] for k, v in series.volumes_ml.items()},
        "jacobian_min": [float(v) for v in series.jacobian_min],
        "folded_fraction": [float(v) for v in series.folded_fraction],
        "device": info.get("device"),
    }
    record.update(extra or {})
    return _jsonable(record)


def write_series(directory: str | os.PathLike, series: Series, image: Volume, mask: Volume, extra: dict | None = None) -> Path:
    """Write ``series`` into ``directory``: image_series.nii.gz (float32, X·Y·Z·T), mask_series.nii.gz
    (the mask's integer dtype) in the input's geometry, and series.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_volume(directory / IMAGE_SERIES, series.images, image, dtype=np.float32)
    save_volume(directory / MASK_SERIES, series.labels, mask, dtype=mask.data.dtype)
    tmp = directory / (SIDECAR + ".tmp")
    tmp.write_text(json.dumps(series_record(series, extra), indent=2) + "\n")
    os.replace(tmp, directory / SIDECAR)
    return directory


def check_output_dir(outdir: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an ``outdir`` that exists and is not an empty directory, unless ``overwrite``, or
    whose nearest existing ancestor is a file. Missing parent folders are created when writing."""
    outdir = Path(outdir)
    if outdir.exists():
        if not outdir.is_dir():
            raise FileExistsError(f"{outdir} exists and is not a directory")
        if any(outdir.iterdir()) and not overwrite:
            raise FileExistsError(f"{outdir} exists and is not empty; pass --overwrite to replace it")
    for parent in outdir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{parent} is not a directory")
            break
    return outdir


@contextmanager
def staged_directory(outdir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``outdir``; on success it replaces ``outdir``, on any
    failure it is removed and ``outdir`` is left as it was."""
    outdir = check_output_dir(outdir, overwrite)
    outdir.parent.mkdir(parents=True, exist_ok=True)  # like mkdir -p: OUTDIR may be nested in new folders
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if outdir.exists():
        old = outdir.parent / f".{outdir.name}.old-{os.getpid()}"
        os.replace(outdir, old)
    os.replace(tmp, outdir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
