"""Writing series to disk: 4D NIfTI + JSON sidecar, streamed frame by frame, into folders that
appear only when complete.

:func:`stream_series` writes frames as the engine yields them (memory flat in the number of
frames); :func:`staged_directory` builds an output folder beside its final place and moves it
there at the end, whatever happens: on failure (an exception, Ctrl-C) nothing is left behind, and
leftovers of runs killed outright (SIGKILL, a killed Dask worker) carry their owner's process id
and are removed by the next run into the same folder once that process is gone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..core.series import Frame, Series
from ..core.trajectory import TrajectoryDraw
from .atomic import remove_stale_staging, staging_prefix
from .nifti import Volume, open_series_writer
from .resources import check_writable_folder

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


def folding_summary(folded_fraction: Iterable[float]) -> dict:
    """``{"first_frame": t or None, "max_fraction": f, "frames": n}``: where the warp first folds
    (Jacobian <= 0), the largest folded fraction of the voxels, and in how many frames."""
    folded = [float(v) for v in folded_fraction]
    hits = [t for t, v in enumerate(folded) if v > 0]
    return {"first_frame": hits[0] if hits else None, "max_fraction": max(folded, default=0.0), "frames": len(hits)}


def folding_warning(folding: dict) -> str | None:
    """The one-line warning for a :func:`folding_summary`, or None when the warp never folds."""
    if not folding or folding.get("first_frame") is None:
        return None
    return (f"the warp folds (Jacobian <= 0) from frame {folding['first_frame']} on, in up to "
            f"{folding['max_fraction']:.2e} of the voxels; lower slope_range or raise sigma_mm")


def _record(info: dict, draw: TrajectoryDraw, volumes: dict, jac_min: list, folded: list,
            extra: dict | None) -> dict:
    record = {
        "kind": info.get("kind"),
        "kind_params": info.get("kind_params", {}),
        "trajectory": draw.to_json(),
        "z_mm": [float(v) for v in draw.z_mm],
        "frames": len(draw.z_mm),
        "labels": info.get("labels"),
        "sigma_mm": info.get("sigma_mm"),
        "volumes_ml": {str(k): [round(float(x), 6) for x in v] for k, v in volumes.items()},
        "jacobian_min": [float(v) for v in jac_min],
        "folded_fraction": [float(v) for v in folded],
        "folding": folding_summary(folded),
        "device": info.get("device"),
    }
    record.update(extra or {})
    return _jsonable(record)


def series_record(series: Series, extra: dict | None = None) -> dict:
    """The JSON sidecar of a series: ground-truth trajectory and per-frame quality."""
    return _record(series.info, series.trajectory, series.volumes_ml, series.jacobian_min, series.folded_fraction,
                   extra)


def write_json(path: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` as indented JSON under a temporary name, then move it into place."""
    path = Path(path)
    tmp = path.with_name(staging_prefix(path) + "json")
    try:
        tmp.write_text(json.dumps(_jsonable(record), indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def stream_series(directory: str | os.PathLike, frames: Iterable[Frame], draw: TrajectoryDraw, info: dict,
                  image: Volume, mask: Volume, extra: dict | None = None) -> dict:
    """Write the frames of one series into ``directory`` as they arrive, then its sidecar.

    Args:
        directory: created if missing; gets image_series.nii.gz (float32, X·Y·Z·T),
            mask_series.nii.gz (the mask's integer dtype) in the input's geometry, and series.json.
        frames: the engine's frames (:meth:`Augmenter.iter_frames`), one per value of ``draw``;
            each is written and dropped, so memory does not grow with their number.
        draw: the trajectory the frames follow (recorded in series.json).
        info: ``kind``, ``kind_params``, ``sigma_mm``, ``labels``, ``device`` of the engine.
        image, mask: the input volumes, whose geometry and header the files keep.
        extra: more entries for series.json; a folding warp adds its warning to ``"warnings"``.

    Returns the series.json record.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = len(draw.z_mm)
    volumes: dict = {}
    jac_min: list[float] = []
    folded: list[float] = []
    with open_series_writer(directory / IMAGE_SERIES, image, count, np.float32, frame_shape=image.data.shape) as wi, \
            open_series_writer(directory / MASK_SERIES, mask, count, mask.data.dtype) as wm:
        for frame in frames:
            wi.write(frame.image)
            wm.write(frame.labels)
            for v, ml in frame.volumes_ml.items():
                volumes.setdefault(v, []).append(ml)
            jac_min.append(frame.jacobian_min)
            folded.append(frame.folded_fraction)
    record = _record(info, draw, volumes, jac_min, folded, extra)
    folding = folding_warning(record["folding"])
    if folding:
        record["warnings"] = list(record.get("warnings") or []) + [folding]
    write_json(directory / SIDECAR, record)
    return record


def write_series(directory: str | os.PathLike, series: Series, image: Volume, mask: Volume, extra: dict | None = None) -> Path:
    """Write an in-memory ``series`` into ``directory`` (the files of :func:`stream_series`)."""
    def frames() -> Iterator[Frame]:
        for t in range(series.frames):
            yield Frame(t, float(series.z_mm[t]), series.images[t], series.labels[t],
                        {v: ml[t] for v, ml in series.volumes_ml.items()}, series.jacobian_min[t],
                        series.folded_fraction[t])

    stream_series(directory, frames(), series.trajectory, series.info, image, mask, extra)
    return Path(directory)


# -- output folders ---------------------------------------------------------------------------------
def _contains_cwd(path: Path) -> bool:
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    target = path.resolve()
    return cwd == target or target in cwd.parents


def check_output_dir(outdir: str | os.PathLike, overwrite: bool, overwrite_hint: str | None = None) -> Path:
    """Refuse an ``outdir`` that exists and is not an empty directory, unless ``overwrite``, or
    whose nearest existing ancestor is a file or not writable. Missing parent folders are created when writing.

    ``overwrite_hint`` names the caller's way to overwrite (``"--overwrite"``) for the message;
    callers without one leave it out. The current folder (or one holding it) and mount points are
    refused: they cannot be replaced. A symbolic link to a folder is written through: its target
    is replaced and the link kept.
    """
    outdir = Path(outdir)
    try:
        mode = os.stat(outdir).st_mode  # one look: another run may move it away at any moment
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None:
        if not stat.S_ISDIR(mode):
            raise FileExistsError(f"{outdir} exists and is not a directory")
        if _contains_cwd(outdir):
            raise ValueError(f"{outdir} is the current folder or holds it; name a new folder to write the "
                             "output into")
        if os.path.ismount(outdir.resolve()):
            raise ValueError(f"{outdir} is a mount point and cannot be replaced; name a folder inside it")
        try:
            full = any(outdir.iterdir())
        except FileNotFoundError:  # moved away meanwhile by another run replacing it
            full = False
        if full and not overwrite:
            hint = f"; pass {overwrite_hint} to replace it" if overwrite_hint else ""
            raise FileExistsError(f"{outdir} exists and is not empty{hint}")
    elif outdir.is_symlink():
        raise FileNotFoundError(f"{outdir} is a broken symbolic link (to {os.readlink(outdir)})")
    for parent in Path(os.path.abspath(outdir)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{parent} is not a directory")
            break
    check_writable_folder(Path(os.path.abspath(outdir)).parent, str(outdir))  # staging is made beside outdir
    return outdir


@contextmanager
def staged_directory(outdir: str | os.PathLike, overwrite: bool = False,
                     overwrite_hint: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``outdir``; on success it replaces ``outdir``, on any
    failure it is removed and ``outdir`` is left as it was.

    Concurrent runs into one ``outdir`` end with one complete folder (the last to finish, with
    ``overwrite``) or a one-line refusal (without). ``outdir`` may be a link to a folder: the link
    is kept and its target replaced. Stale temporaries of killed runs in the parent folder are
    removed first (:func:`remove_stale_staging`).
    """
    outdir = check_output_dir(outdir, overwrite, overwrite_hint)
    if outdir.is_symlink():
        outdir = outdir.resolve()
    outdir = Path(os.path.abspath(outdir))
    parent = outdir.parent
    parent.mkdir(parents=True, exist_ok=True)  # like mkdir -p: OUTDIR may be nested in new folders
    remove_stale_staging(parent)
    tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(outdir, "tmp"), dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    olds: list[Path] = []
    try:
        yield tmp
        _commit(tmp, outdir, overwrite, overwrite_hint, olds)
    finally:
        if tmp.exists():
            if olds and olds[-1].exists() and not outdir.exists():
                try:  # interrupted between moving the old folder away and moving ours in
                    os.rename(olds.pop(), outdir)
                except OSError:
                    pass
            shutil.rmtree(tmp, ignore_errors=True)
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)


def _commit(tmp: Path, outdir: Path, overwrite: bool, overwrite_hint: str | None, olds: list[Path]) -> None:
    """Move ``tmp`` to ``outdir``; an existing ``outdir`` is first moved aside (into ``olds``) when
    ``overwrite``. Retries when another run moves folders in between."""
    for _ in range(1000):
        try:
            os.rename(tmp, outdir)  # replaces a missing or empty outdir in one step
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if not overwrite:
            hint = f"; pass {overwrite_hint} to replace it" if overwrite_hint else ""
            raise FileExistsError(f"{outdir} was filled by another run meanwhile{hint}")
        # an empty placeholder with a unique name; renaming outdir onto it replaces it
        old = Path(tempfile.mkdtemp(prefix=staging_prefix(outdir, "old"), dir=outdir.parent))
        try:
            os.rename(outdir, old)
        except FileNotFoundError:  # another run moved it away first: try again
            os.rmdir(old)
            continue
        except OSError:
            os.rmdir(old)
            raise
        olds.append(old)
    raise FileExistsError(f"{outdir}: other runs keep replacing it; try again")  # pragma: no cover
