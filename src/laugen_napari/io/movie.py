"""Movies for demos: RGB frames (T, H, W, 3) uint8 to MP4 (H.264 through imageio-ffmpeg) or GIF
(through Pillow). Files are written under a temporary name beside the target and moved into place
when complete, so a failed or cancelled write never leaves a half file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .atomic import atomic_path

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
    total = len(frames)
    with atomic_path(path) as tmp:
        if fmt == "mp4":
            writer = iio2.get_writer(str(tmp), format="FFMPEG", fps=float(fps), codec="libx264", pixelformat="yuv420p",
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


# -- rendering -----------------------------------------------------------------------------------
DIFFERENCES = ("none", "first", "previous")
"""Difference panel beside the frames: none, I_t - I_0, or I_t - I_{t-1}."""


def _grey(values: np.ndarray) -> np.ndarray:
    v = np.clip(values, 0.0, 1.0)
    return np.stack([v, v, v, np.ones_like(v)], axis=-1)


def frame_stamp(title: str, t: int, frames: int, z_mm: float | None = None) -> str:
    """The text on movie frame ``t`` (counted from 0) of ``frames``: ``"title  frame 8 of 8
    z_t = +2.10 mm"`` (frames counted from 1; z_t the deformation magnitude, not a position)."""
    stamp = f"{title}  frame {t + 1} of {frames}".strip()
    if z_mm is not None:
        stamp += f"  z_t = {z_mm:+.2f} mm"
    return stamp


def render_series_frames(
    images: np.ndarray,
    labels: np.ndarray | None = None,
    pixel_mm: tuple[float, float] = (1.0, 1.0),
    contrast_limits: tuple[float, float] | None = None,
    colormap: Callable[[np.ndarray], np.ndarray] | None = None,
    gamma: float = 1.0,
    label_colors: dict[int, tuple[float, ...]] | None = None,
    difference: str = "none",
    flip_rows: bool = False,
    flip_cols: bool = False,
    title: str = "",
    z_mm: Iterable[float] | None = None,
    panel_px: int = 360,
    progress: Callable[[int, int], None] | None = None,
    edge_letters: dict[str, str] | None = None,
) -> np.ndarray:
    """Render one plane across the frames of a series as RGB movie frames (T, H, W, 3) uint8.

    Args:
        images: (T, rows, cols) image planes, row 0 at the top as napari shows it.
        labels: (T, rows, cols) label planes drawn as contours (one colour per label), or None.
        pixel_mm: size of a pixel (row, column) in mm, so anisotropic planes keep their aspect.
        contrast_limits: grey window (default: the range of ``images``).
        colormap: maps values in [0, 1] to RGBA (napari's ``Colormap.map``); default grey.
        gamma: applied to the windowed values before the colormap, as napari does.
        label_colors: label value -> RGBA in [0, 1]; default matplotlib's tab10.
        difference: ``"first"`` (I_t - I_0) or ``"previous"`` (I_t - I_{t-1}) adds a panel with a
            diverging colormap and symmetric limits; ``"none"`` does not.
        flip_rows / flip_cols: mirror the planes (napari camera pointing up / left).
        title: text before the frame number on every frame ("frame t of T", counted from 1).
        z_mm: the trajectory, shown with the frame number when given.
        edge_letters: anatomical letters at the panel edges (``top``, ``bottom``, ``left``,
            ``right``), as the viewer shows them.
        panel_px: height of a panel in pixels.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[0] < 1:
        raise ValueError(f"image planes must be (T, rows, cols), got shape {images.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != images.shape:
            raise ValueError(f"label planes {labels.shape} do not match the image planes {images.shape}")
    if difference not in DIFFERENCES:
        raise ValueError(f"difference must be one of {', '.join(DIFFERENCES)}, got {difference!r}")
    if flip_rows:
        images = images[:, ::-1]
        labels = labels[:, ::-1] if labels is not None else None
    if flip_cols:
        images = images[:, :, ::-1]
        labels = labels[:, :, ::-1] if labels is not None else None
    frames, rows, cols = images.shape
    z_list = [float(v) for v in z_mm] if z_mm is not None else None

    lo, hi = contrast_limits if contrast_limits is not None else (float(images.min()), float(images.max()))
    span = (hi - lo) or 1.0
    cmap = colormap or _grey
    diffs = None
    if difference != "none":
        ref = images[:1] if difference == "first" else np.concatenate([images[:1], images[:-1]])
        diffs = images - ref
        dlim = float(np.abs(diffs).max()) or 1.0
    values = sorted(int(v) for v in np.unique(labels) if v != 0) if labels is not None else []
    tab10 = colormaps["tab10"]
    colors = {v: (label_colors or {}).get(v, tab10(i % 10)) for i, v in enumerate(values)}

    height_mm, width_mm = rows * pixel_mm[0], cols * pixel_mm[1]
    scale = panel_px / height_mm
    panel_w = max(64, int(round(width_mm * scale)))
    if panel_w > 2 * panel_px:  # very wide planes: shrink
        scale *= 2 * panel_px / panel_w
        panel_w = 2 * panel_px
    panel_h = max(64, int(round(height_mm * scale)))
    top, gap, bar = 34, 12, 70
    n_panels = 1 if diffs is None else 2
    width_px = n_panels * panel_w + (n_panels - 1) * gap + (bar if diffs is not None else 0) + 2 * gap
    height_px = panel_h + top + gap
    dpi = 100.0
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    extent = (0.0, width_mm, height_mm, 0.0)

    def axes_at(x_px: float, w_px: float) -> "object":
        ax = fig.add_axes((x_px / width_px, gap / height_px, w_px / width_px, panel_h / height_px))
        ax.set_axis_off()
        return ax

    ax = axes_at(gap, panel_w)
    first = np.zeros((rows, cols, 3), np.float32)
    image_artist = ax.imshow(first, extent=extent, interpolation="nearest", aspect="equal")
    ax.set_xlim(0, width_mm)
    ax.set_ylim(height_mm, 0)
    diff_artist = None
    if diffs is not None:
        dax = axes_at(gap + panel_w + gap, panel_w)
        diff_artist = dax.imshow(diffs[0], extent=extent, cmap="RdBu_r", vmin=-dlim, vmax=dlim,
                                 interpolation="nearest", aspect="equal")
        cax = fig.add_axes(((2 * gap + 2 * panel_w + 8) / width_px, gap / height_px, 12 / width_px,
                            panel_h / height_px))
        cb = fig.colorbar(diff_artist, cax=cax)
        cb.ax.tick_params(colors="white", labelsize=7)
        label = "I_t - I_0" if difference == "first" else "I_t - I_(t-1)"
        fig.text((gap + panel_w + gap) / width_px, 1 - 6 / height_px, label, color="white", fontsize=9,
                 ha="left", va="top")
    if edge_letters:
        x0, x1 = gap / width_px, (gap + panel_w) / width_px
        y0, y1 = gap / height_px, (gap + panel_h) / height_px
        style = {"color": "#ffd24a", "fontsize": 11, "fontweight": "bold"}
        for edge, (x, y, ha, va) in {"top": ((x0 + x1) / 2, y1 - 0.01, "center", "top"),
                                     "bottom": ((x0 + x1) / 2, y0 + 0.01, "center", "bottom"),
                                     "left": (x0 + 0.01, (y0 + y1) / 2, "left", "center"),
                                     "right": (x1 - 0.01, (y0 + y1) / 2, "right", "center")}.items():
            if edge in edge_letters:
                fig.text(x, y, edge_letters[edge], ha=ha, va=va, **style)
    stamp_artist = fig.text(gap / width_px, 1 - 6 / height_px, "", color="white", fontsize=10, ha="left", va="top")

    out = np.empty((frames, height_px, width_px, 3), np.uint8)
    contours: list = []
    for t in range(frames):
        windowed = np.clip((images[t] - lo) / span, 0.0, 1.0) ** float(gamma)
        rgba = np.asarray(cmap(windowed.reshape(-1)), dtype=np.float32).reshape(rows, cols, -1)
        image_artist.set_data(rgba[..., :3])
        for c in contours:
            c.remove()
        contours = []
        for v in values:
            inside = labels[t] == v
            if inside.any() and not inside.all():
                contours.append(ax.contour(inside.astype(np.float32), levels=[0.5], colors=[colors[v]],
                                           linewidths=1.2, origin="upper", extent=extent))
        if diff_artist is not None:
            diff_artist.set_data(diffs[t])
        stamp_artist.set_text(frame_stamp(title, t, frames, z_list[t] if z_list is not None and t < len(z_list) else None))
        canvas.draw()
        out[t] = np.asarray(canvas.buffer_rgba())[..., :3]
        if progress is not None:
            progress(t + 1, frames)
    return out


def series_movie(
    take_image: Callable[[int], np.ndarray],
    frames: int,
    take_labels: Callable[[int], np.ndarray] | None = None,
    label_color: Callable[[int], tuple[float, ...]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **render: object,
) -> np.ndarray:
    """The movie frames (T, H, W, 3) uint8 of one plane across a series (no Qt, no napari).

    ``take_image(t)`` / ``take_labels(t)`` give the (rows, cols) planes of frame ``t`` as the
    viewer shows them (row 0 on top); ``label_color(value)`` the RGBA of a label (default tab10).
    ``render`` goes to :func:`render_series_frames` (pixel size, window, colormap, difference,
    flips, title, z_mm, edge letters). ``progress(done, 2 * frames)``: gathering, then rendering.
    """
    if frames < 1:
        raise ValueError(f"a movie needs at least one frame, got {frames}")
    first = np.asarray(take_image(0), np.float32)
    images = np.empty((frames,) + first.shape, np.float32)
    images[0] = first
    labels = None
    if take_labels is not None:
        plane = np.asarray(take_labels(0))
        labels = np.empty((frames,) + plane.shape, plane.dtype)
        labels[0] = plane
    for t in range(frames):
        if t:
            images[t] = take_image(t)
            if labels is not None:
                labels[t] = take_labels(t)
        if progress is not None:
            progress(t + 1, 2 * frames)
    colors = None
    if labels is not None and label_color is not None:
        colors = {int(v): tuple(label_color(int(v))) for v in np.unique(labels) if v != 0}
    done = (lambda d, _n: progress(frames + d, 2 * frames)) if progress is not None else None
    return render_series_frames(images, labels, label_colors=colors, progress=done, **render)
