"""Files that appear only when complete: write to a temporary name beside the target, then move.

Temporary names carry their owner process (:func:`~laugen_napari.io.resources.owner_tag`), so that
:func:`remove_stale_staging` can remove what a killed run left behind and nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .resources import owner_alive, owner_tag

_LEFTOVER = re.compile(r"^\..+\.(tmp|old)-(?P<tag>P\d+S\d+H[0-9a-f]{8}B[0-9a-f]{8})")


def staging_prefix(path: str | os.PathLike, kind: str = "tmp") -> str:
    """The hidden name prefix of a temporary for ``path`` (``.NAME.tmp-<owner>-``)."""
    return f".{Path(path).name}.{kind}-{owner_tag()}-"


def remove_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Remove the hidden temporaries (``.NAME.tmp-*``, ``.NAME.old-*``, files or folders) in
    ``folder`` whose owner process no longer runs on this machine (a run killed by SIGKILL, a
    killed Dask worker). Temporaries of live processes, of other machines and without an owner
    tag are kept. Returns the removed paths."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _LEFTOVER.match(entry.name)
        if m is None or owner_alive(m["tag"]) is not False:
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:  # gone meanwhile (another run cleaned it) or not ours to remove
            continue
        removed.append(path)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` (with the
    permissions a new file would get), on failure it is removed and ``path`` is left as it was."""
    path = Path(path)
    if suffix is None:
        suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    remove_stale_staging(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=staging_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
