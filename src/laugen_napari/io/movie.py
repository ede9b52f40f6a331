"""Movies for demos: RGB frames (T, H, W, 3) uint8 to MP4 (H.264 through imageio-ffmpeg) or GIF
(through Pillow). Files are written under a temporary name beside the target and moved into place
when complete, so a failed or cancelled write never leaves a half file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

MOVIE_SUFFIXES = (".mp4", ".gif")


def movie_format(path: str | os.PathLike) -> str:
    """``"mp4"`` or ``"gif"`` from the file name; ValueError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in MOVIE_SUFFIXES:
        raise ValueError(f"{Path(path).name}: a movie must end in .mp4 or .gif")
    return suffix[1:]


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:  # grey (T, H, W)
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4) or frames.shape[0] < 1:
        raise ValueError(f"movie frames must be (T, H, W, 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"movie frames must be uint8, got {frames.dtype}")
    return frames[..., :3]


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sizes: pad the last row/column by repetition."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_movie(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 4.0,
    loop: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write RGB ``frames`` (T, H, W, 3) uint8 as an MP4 or GIF (chosen by the suffix of ``path``).

    MP4: H.264, yuv420p, odd sizes padded by one pixel. GIF: one palette per frame, shown
    ``1/fps`` s each, looping forever when ``loop``. ``progress(done, total)`` after every frame.
    Returns the path written.
    """
    import imageio.v2 as iio2
    import imageio.v3 as iio

    path = Path(path)
    fmt = movie_format(path)
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    frames = _check_frames(np.stack(list(frames)) if not isinstance(frames, np.ndarray) else frames)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    total = len(frames)
    try:
        if fmt == "mp4":
            writer = iio2.get_writer(tmp, format="FFMPEG", fps=float(fps), codec="libx264", pixelformat="yuv420p",
                                     quality=8, macro_block_size=1, ffmpeg_log_level="error")
            try:
                for i, frame in enumerate(frames):
                    writer.append_data(_pad_even(frame))
                    if progress is not None:
                        progress(i + 1, total)
            finally:
                writer.close()
        else:
            # Pillow merges identical consecutive frames; callers that need every frame kept
            # make them differ (the export panel stamps the frame number on each).
            extra = {"loop": 0} if loop else {}
            iio.imwrite(tmp, frames, extension=".gif", duration=int(round(1000.0 / fps)), **extra)
            if progress is not None:
                progress(total, total)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames of an MP4 or GIF file (decoded, so it counts what a player shows)."""
    import imageio.v2 as iio2
    import imageio.v3 as iio

    if movie_format(path) == "mp4":
        reader = iio2.get_reader(str(path), format="FFMPEG")
        try:
            return int(reader.count_frames())
        finally:
            reader.close()
    return int(iio.imread(str(path), index=None).shape[0])
