"""Lazy series for a live preview: arrays of shape (T, Z, Y, X) that compute only what is indexed.

A viewer showing one plane of one frame asks for ``series[t, z]`` (or ``series[t, :, y]`` for
another view axis); only the moving voxels of that plane are resampled. The arrays read their
trajectory and engine from a shared :class:`PreviewModel`, so changing the trajectory changes what
they return without replacing them — a display only needs to redraw.

Nothing here knows napari or Qt; anything with ``shape``, ``dtype`` and ``__getitem__`` semantics
of numpy can use these arrays.
"""

from __future__ import annotations

import atexit
import queue
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .series import Augmenter


class PreviewModel:
    """The state behind a live preview: an :class:`Augmenter` (or None) and the values z_t in mm.

    Every read returns computed data: a plane is resampled on demand, a full frame is computed
    on demand and cached (up to ``cache_bytes`` of frames), so switching to 3D, playing the time
    axis or reading the whole array (``np.asarray``, a writer) does not resample twice. Two
    threads asking for the same uncached frame compute it once (the second waits for the first).
    A viewer keeps itself responsive by computing frames on a worker (:meth:`warm_frame`) before
    it displays them, never by being handed something else.
    """

    def __init__(self, image: np.ndarray, labels: np.ndarray, frames: int = 8, cache_bytes: int = 1 << 30):
        self.image = np.asarray(image)  # the input as given; frame 0 in float32 is made on demand
        self._image_f32: np.ndarray | None = None
        self.labels = np.asarray(labels)
        self.augmenter: Augmenter | None = None
        self.z_mm = np.zeros(frames)
        self._cache: dict[tuple, np.ndarray] = {}
        self._cache_bytes = int(cache_bytes)
        self._lock = threading.Lock()
        self._inflight: dict[tuple, threading.Event] = {}

    @property
    def frames(self) -> int:
        return len(self.z_mm)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)

    def set_augmenter(self, augmenter: Augmenter | None, image: np.ndarray | None = None,
                      labels: np.ndarray | None = None) -> None:
        """Use a new engine (after the field was recomputed), with new inputs if given (frame 0:
        the labels as they were when the engine was built); clears the frame cache."""
        with self._lock:
            dropped = [self._cache, self.augmenter]
            if image is not None:  # no float32 copy here: this runs on the viewer's thread
                self.image = np.asarray(image)
                dropped.append(self._image_f32)
                self._image_f32 = None
            if labels is not None:
                self.labels = np.asarray(labels)
            self.augmenter = augmenter
            self._cache = {}
            self._full_counts_for = None
        release(dropped)
        if augmenter is not None:
            # planes along Y and X cost only their own moving voxels once these are sorted: done
            # off the caller's (GUI) thread; until then a plane costs one pass over the moving voxels
            BACKGROUND_THREADS.submit(augmenter.warper.index_planes)

    def release(self) -> None:
        """Drop the engine and the cached frames (their memory is returned on a thread)."""
        with self._lock:
            dropped = [self._cache, self.augmenter, self._image_f32]
            self._cache, self.augmenter, self._image_f32 = {}, None, None
            self._full_counts_for = None
        release(dropped)

    def set_trajectory(self, z_mm: Sequence[float]) -> None:
        """New values z_t (mm); the frame count may change."""
        z = np.asarray(z_mm, dtype=np.float64)
        if z.ndim != 1 or len(z) < 1 or not np.all(np.isfinite(z)):
            raise ValueError("trajectory values must be a finite 1D sequence")
        self.z_mm = z

    def magnitude(self, t: int) -> float:
        """z_t in mm for frame ``t`` (0 when no engine is ready: the input is shown)."""
        if self.augmenter is None:
            return 0.0
        return float(self.z_mm[int(t)])

    # -- planes and frames --------------------------------------------------------------------
    def image_plane(self, t: int, axis: int, index: int) -> np.ndarray:
        z = self.magnitude(t)
        if z == 0.0:
            return np.take(self.image, index, axis=axis).astype(np.float32, copy=False)
        cached = self._cached("image", z)
        if cached is not None:
            return np.take(cached, index, axis=axis)
        return self.augmenter.warper.image_plane(z, axis, index).cpu().numpy()

    def label_plane(self, t: int, axis: int, index: int) -> np.ndarray:
        z = self.magnitude(t)
        if z == 0.0:
            return np.take(self.labels, index, axis=axis)
        cached = self._cached("labels", z)
        if cached is not None:
            return np.take(cached, index, axis=axis)
        return self.augmenter.warper.label_plane(z, axis, index).cpu().numpy().astype(self.labels.dtype, copy=False)

    def image_frame(self, t: int) -> np.ndarray:
        z = self.magnitude(t)
        if z == 0.0:
            return self.input_image()
        return self._frame("image", z)

    def input_image(self) -> np.ndarray:
        """Frame 0, the input image as float32 (converted once, on first use)."""
        out = self._image_f32
        if out is None:
            image = self.image
            out = image if image.dtype == np.float32 else image.astype(np.float32)
            with self._lock:
                if self.image is image:
                    self._image_f32 = out
        return out

    def label_frame(self, t: int) -> np.ndarray:
        z = self.magnitude(t)
        if z == 0.0:
            return self.labels
        return self._frame("labels", z)

    def _cached(self, what: str, z: float) -> np.ndarray | None:
        return self._cache.get((what, z, id(self.augmenter)))

    def is_cached(self, t: int) -> bool:
        """Whether the full image and label frames ``t`` are ready (frame 0: once the input is in
        float32, which is immediate for a float32 input)."""
        z = self.magnitude(t)
        if z == 0.0:
            return self._image_f32 is not None or self.image.dtype == np.float32
        key = id(self.augmenter)
        with self._lock:
            return ("image", z, key) in self._cache and ("labels", z, key) in self._cache

    def difference_frame(self, t: int, ref: int) -> np.ndarray:
        """I_t - I_ref (float32), computed once and cached like the frames (3D display of the
        difference overlay reads it on the viewer's thread; :meth:`warm_difference` makes it ahead)."""
        return self._frame("difference", (self.magnitude(t), self.magnitude(ref)))

    def is_difference_cached(self, t: int, ref: int) -> bool:
        """Whether :meth:`difference_frame` ``(t, ref)`` is ready."""
        key = ("difference", (self.magnitude(t), self.magnitude(ref)), id(self.augmenter))
        with self._lock:
            return key in self._cache

    def warm_difference(self, t: int, ref: int) -> None:
        """Compute and cache :meth:`difference_frame` ``(t, ref)`` (call from a worker thread)."""
        self.difference_frame(t, ref)

    def _image_at(self, z: float) -> np.ndarray:
        return self.input_image() if z == 0.0 else self._frame("image", z)

    def _frame(self, what: str, z) -> np.ndarray:
        aug = self.augmenter
        key = (what, z, id(aug))
        while True:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    return hit
                busy = self._inflight.get(key)
                if busy is None:
                    busy = self._inflight[key] = threading.Event()
                    break
            busy.wait()  # another thread computes this frame: take its result
        try:
            if what == "difference":
                out = self._image_at(z[0]) - self._image_at(z[1])
            else:
                out = _host_frame(aug.warper, what, z)
            if what == "labels":
                out = out.astype(self.labels.dtype, copy=False)
            with self._lock:
                if key[2] == id(self.augmenter):
                    budget = max(self._cache_bytes, 2 * out.nbytes)
                    while self._cache and sum(a.nbytes for a in self._cache.values()) + out.nbytes > budget:
                        self._cache.pop(next(iter(self._cache)))
                    self._cache[key] = out
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            busy.set()
        return out

    def warm_frame(self, t: int) -> None:
        """Compute and cache the full image and label frame ``t`` (call from a worker thread)."""
        z = self.magnitude(t)
        if z != 0.0:
            self._frame("image", z)
            self._frame("labels", z)
        else:
            self.input_image()

    # -- summaries for plots ------------------------------------------------------------------
    def curves(self) -> dict:
        """z_t, label volumes (mL) per frame and lowest Jacobian per frame, from the moving voxels."""
        aug = self.augmenter
        out = {"z_mm": self.z_mm.tolist(), "volumes_ml": {}, "jacobian_min": []}
        if aug is None:
            return out
        w = aug.warper
        voxel_ml = float(np.prod(aug.spacing)) / 1000.0
        base_moving = w.moving_labels(0.0)
        if getattr(self, "_full_counts_for", None) is not aug:
            self._full_counts = {v: int((self.labels == v).sum()) for v in aug.selected}
            self._full_counts_for = aug
        full = self._full_counts
        for v in aug.selected:
            out["volumes_ml"][v] = []
        for z in self.z_mm:
            moved = w.moving_labels(float(z))
            for v in aug.selected:
                n = full[v] - int((base_moving == v).sum()) + int((moved == v).sum())
                out["volumes_ml"][v].append(n * voxel_ml)
            out["jacobian_min"].append(aug.jacobian.minimum(float(z)))
        return out


def _host_frame(warper, what: str, z: float) -> np.ndarray:
    """Full image (float32) or label frame for ``z`` mm in a numpy-owned array.

    The warper fills an array numpy allocated (on the CPU in place, from another device by one
    copy): numpy asks for huge pages for large arrays, so a CT-sized frame is first touched faster
    and freed in about a millisecond, where memory torch allocated takes tens of milliseconds to
    free (the cached frames are dropped whenever the field or trajectory changes)."""
    if what == "image":
        image = warper.image
        shape, dtype, fill = tuple(image.shape[1:] if warper.single_channel else image.shape), np.float32, \
            warper.image_frame
    else:
        shape, dtype, fill = tuple(warper.labels.shape), torch.empty((), dtype=warper.labels.dtype).numpy().dtype, \
            warper.label_frame
    out = np.empty(shape, dtype)
    if warper.image.device.type == "cpu":
        fill(z, out=torch.from_numpy(out))
    else:
        torch.from_numpy(out).copy_(fill(z))
    return out


class _Background:
    """Reusable daemon threads for background jobs (plane indexing, freeing memory, the docks'
    workers).

    Starting a thread blocks the caller until the new thread runs: tens of milliseconds when the
    cores are busy, on the viewer's thread. A job is handed to an idle thread when there is one
    (no waiting) and to a new thread otherwise, so jobs never queue behind one another.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._idle = 0
        self._busy = 0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> None:
        """Run ``fn(*args, **kwargs)`` on a background thread; an exception is printed."""
        with self._lock:
            self._busy += 1
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
        self._jobs.put((fn, args, kwargs))
        if not reuse:
            try:
                threading.Thread(target=self._loop, name="laugen-background", daemon=True).start()
            except RuntimeError:  # interpreter shutting down: no new threads, run it here
                self._run_one()

    def _run_one(self) -> None:
        fn, args, kwargs = self._jobs.get()
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a job's own error handling comes first (the docks relay theirs)
            traceback.print_exc()
        finally:
            del fn, args, kwargs  # a release job's objects go now, not at the next job
            with self._lock:
                self._busy -= 1
                self._idle += 1
                self._changed.notify_all()

    def _loop(self) -> None:
        while True:
            self._run_one()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no job runs; False on timeout."""
        with self._lock:
            return self._changed.wait_for(lambda: self._busy == 0, timeout_s)


BACKGROUND_THREADS = _Background()
"""The background threads of the preview and the docks."""
atexit.register(BACKGROUND_THREADS.wait_idle, 10.0)  # no torch work torn down under a running job at exit


def prepare_planes(augmenter: Augmenter) -> None:
    """Build what a plane of the new engine needs before the viewer asks for one (call it on the
    worker that built the engine): the first plane otherwise builds the warper's lazily made
    lookups (moving-voxel positions, their Z keys; hundreds of ms for a CT-sized field) on the
    viewer's thread, and sorting the moving voxels along Y and X (about a second for a CT-sized
    field) would compete for the cores with the viewer's first draw of the new field."""
    augmenter.warper.index_planes()


def release(objects: list) -> None:
    """Drop the references in ``objects`` (a list nobody else holds) on a short-lived thread.

    Returning the memory of a CT-sized engine (hundreds of MB of torch storage) takes tens of
    milliseconds; torch frees without the GIL, so in the background the viewer does not wait."""
    if any(o is not None and (not isinstance(o, dict) or o) for o in objects):
        BACKGROUND_THREADS.submit(objects.clear)


def _normalise_key(key, ndim: int) -> tuple:
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    return key + (slice(None),) * (ndim - len(key))


class _LazySeries:
    """Base of the lazy (T, Z, Y, X) arrays: index parsing and numpy fallbacks."""

    def __init__(self, model: PreviewModel, dtype):
        self.model = model
        self.dtype = np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.model.frames,) + self.model.spatial_shape

    @property
    def ndim(self) -> int:
        return 4

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def _plane(self, t: int, axis: int, index: int) -> np.ndarray:
        raise NotImplementedError

    def _frame(self, t: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, key):
        key = _normalise_key(key, 4)
        if any(not isinstance(k, (int, np.integer, slice)) for k in key):
            return np.asarray(self)[key]  # fancy indexing: materialise (rare)
        t_key, spatial = key[0], key[1:]
        if isinstance(t_key, slice):
            frames = range(*t_key.indices(self.shape[0]))
            if len(frames) == 1:  # napari's 3D view asks for data[t:t+1]: no copy of the frame
                return self[(frames[0],) + spatial][None]
            return np.stack([self[(t,) + spatial] for t in frames])
        t = int(t_key) % self.shape[0]
        for axis, k in enumerate(spatial):
            n = self.shape[1 + axis]
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if len(range(start, stop, step)) != 1:
                    continue
                index, keep_axis = start, True  # napari asks data[t, z:z+1, :, :]
            else:
                index, keep_axis = int(k) % n, False
            plane = self._plane(t, axis, index)
            rest = tuple(kk for a, kk in enumerate(spatial) if a != axis)
            out = np.asarray(plane[rest])
            return np.expand_dims(out, axis) if keep_axis else out
        return np.asarray(self._frame(t)[spatial])

    def __array__(self, dtype=None, copy=None):
        out = np.stack([self._frame(t) for t in range(self.shape[0])])
        return out.astype(dtype) if dtype is not None else out


class LazyImageSeries(_LazySeries):
    """The image series (T, Z, Y, X), float32."""

    def __init__(self, model: PreviewModel):
        super().__init__(model, np.float32)

    def _plane(self, t, axis, index):
        return self.model.image_plane(t, axis, index)

    def _frame(self, t):
        return self.model.image_frame(t)


class LazyLabelSeries(_LazySeries):
    """The label series (T, Z, Y, X), the label map's dtype."""

    def __init__(self, model: PreviewModel):
        super().__init__(model, model.labels.dtype)

    def _plane(self, t, axis, index):
        return self.model.label_plane(t, axis, index)

    def _frame(self, t):
        return self.model.label_frame(t)


class LazyDifference(_LazySeries):
    """Difference maps (T, Z, Y, X): I_t - I_0 (``reference="first"``) or I_t - I_{t-1}."""

    def __init__(self, model: PreviewModel, reference: str = "first"):
        super().__init__(model, np.float32)
        self.reference = reference

    def _ref(self, t: int) -> int:
        if self.reference not in ("first", "previous"):
            raise ValueError(f"reference must be 'first' or 'previous', got {self.reference!r}")
        return 0 if self.reference == "first" else max(t - 1, 0)

    def _plane(self, t, axis, index):
        return self.model.image_plane(t, axis, index) - self.model.image_plane(self._ref(t), axis, index)

    def _frame(self, t):
        return self.model.difference_frame(t, self._ref(t))


def preview_arrays(model: PreviewModel) -> tuple[LazyImageSeries, LazyLabelSeries, LazyDifference]:
    """The three lazy arrays a preview shows: image series, label series, difference maps."""
    return LazyImageSeries(model), LazyLabelSeries(model), LazyDifference(model)


__all__ = ["BACKGROUND_THREADS", "LazyDifference", "LazyImageSeries", "LazyLabelSeries", "PreviewModel",
           "prepare_planes", "preview_arrays", "release"]
