"""Warping an image and its label map by z * F, only where the field moves anything.

Every frame is warped from the original with the displacement ``z_t * F`` (never frame from frame,
which would blur). Because F is exactly zero outside its ROI, and mostly zero inside it, only the
"moving" voxels (F != 0) are resampled; every other voxel is copied. Images are sampled
trilinearly; label maps by one-hot linear interpolation + argmax (default) or nearest neighbour;
samples outside the volume take the nearest edge value. The same field moves every channel and
every label.

Non-finite image voxels (a NaN background outside the brain, as some pipelines write it) are a
region like any other, never a value to mix: a sample whose cell touches one takes the weighted
mean of its finite corners when they carry more than half the trilinear weight, else the value of
the heaviest non-finite corner. So a NaN background moves with the field and never spreads; every
sample whose 8 corners are finite is the plain trilinear value.

Cost (issue 13): a frame is one copy of the input (converted to float32 on the fly; the image is
kept in its own dtype) plus, per moving voxel, one gather of the 8 corners of its interpolation
cell, shared by the image and the labels. The moving voxels are in raster order (gathers and
scatters walk memory forward) and are processed in blocks of :data:`CPU_BLOCK` on CPU, with
coordinates as (3, n) and corners as (8, n) rows, so that every intermediate stays in cache and
every operation is vectorised. A label cell whose 8 corners agree is looked up as one byte (its
code); only the few mixed cells near a boundary vote, once per frame.

On CPU the whole pass runs as one compiled loop when a C compiler is at hand (:mod:`.native`,
``core/native/warp.c``): per moving voxel its cell, the image's 8 corners, the trilinear value and
the label, in chunks that stay in the L1 cache, with the same float operations as the torch code
(the frames are bit-identical on the shipped sample). It takes about 7 ns per moving voxel-frame at
1 mm and 9.5 ns on a CT-sized volume, against 15-17 ns for the torch code below, which stays the
reference and the path for GPUs, float16 and non-finite images and machines without a compiler.

Measured on one CPU core (bench/scale.py), the torch code costs about 20 ns per moving voxel and
frame, whatever the volume's size: the corners are gathered by ``index_select`` on 8 shifted views of the flat
volume (3x faster than ``take`` with an (8, n) index), the cell needs no clamping when every
sampling position of the frame lies inside the volume, and row subsets use ``index_select`` and
``count_nonzero`` (indexing ``[:, rows]`` and a bool ``sum()`` are several times slower in torch).
"""

from __future__ import annotations

import ctypes
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from . import native
from .field import UnitField, shared_tensor as _shared


# dtypes the image is kept in (gathered, then converted to float32 per sample); others become float32
_WIDEN = (np.uint16, np.uint32, np.uint64, np.bool_)
_KEPT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32, torch.float64)
CPU_BLOCK = 1 << 16  # moving voxels per block on CPU: the intermediates of a block stay in cache (L2/L3)
MIXED = 255  # cell code of a cell whose 8 corners carry different labels


def all_finite(image: np.ndarray | torch.Tensor, block: int = 1 << 22) -> bool:
    """Whether an array holds no NaN or inf, in blocks (no full-size temporary)."""
    if isinstance(image, torch.Tensor):
        return bool(torch.isfinite(image).all()) if image.is_floating_point() else True
    if not np.issubdtype(image.dtype, np.floating):
        return True
    flat = image.reshape(-1)
    return all(np.isfinite(flat[a : a + block].sum(dtype=np.float64)) or np.isfinite(flat[a : a + block]).all()
               for a in range(0, flat.size, block))


def torch_compatible(array: np.ndarray) -> np.ndarray:
    """``array`` itself, or a copy that torch can share: torch takes neither the other byte order
    (a big-endian file read on a little-endian machine) nor negative strides (a flipped view,
    ``a[::-1]``; ``np.ascontiguousarray`` keeps those on an axis of one voxel, so a copy is made)."""
    if array.dtype.byteorder not in "=|":
        return array.astype(array.dtype.newbyteorder("="))
    return array.copy() if any(s < 0 for s in array.strides) else array


def fits_float32(image: np.ndarray, block: int = 1 << 22) -> bool:
    """Whether every finite value of ``image`` lies in float32's range, so that the float32 frames
    hold it (always true for float32 and integer arrays up to 64 bits); in blocks."""
    if not np.issubdtype(image.dtype, np.floating) or np.finfo(image.dtype).max <= np.finfo(np.float32).max:
        return True
    top = float(np.finfo(np.float32).max)
    flat = image.reshape(-1)
    for a in range(0, flat.size, block):
        size = np.abs(flat[a : a + block])
        if np.any((size > top) & (size != np.inf)):
            return False
    return True


def _corner_weights(frac: torch.Tensor) -> torch.Tensor:
    """Trilinear weights (8, n) of the corners (k = 4 bz + 2 by + bx) for fractions (3, n)."""
    z, y, x = frac
    wz, wy, wx = torch.stack([1 - z, z]), torch.stack([1 - y, y]), torch.stack([1 - x, x])
    return (wz.view(2, 1, 1, -1) * wy.view(1, 2, 1, -1) * wx.view(1, 1, 2, -1)).reshape(8, -1)


def _as_channels(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        image = torch_compatible(image)
    t = _shared(image) if not isinstance(image, np.ndarray) or image.dtype.type not in _WIDEN else \
        torch.as_tensor(image.astype(np.float32))
    if t.dtype not in _KEPT_DTYPES:
        t = t.to(torch.float32)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"image must be (Z, Y, X) or (C, Z, Y, X), got shape {tuple(t.shape)}")
    return t


def _moving_voxels(mask: torch.Tensor, use_numpy: bool | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat index, z, y, x), each (P,) int64 in raster order, of the True voxels of a (d, h, w) bool
    tensor, without an integer division: the voxels of every row and plane are counted, and each
    voxel's row and plane repeated that many times. On CPU numpy's nonzero and counts (several
    times faster than torch's); elsewhere (or ``use_numpy=False``) the same in torch."""
    d, h, w = (int(n) for n in mask.shape)
    if mask.device.type == "cpu" if use_numpy is None else use_numpy:
        m = mask.numpy()
        flat = np.flatnonzero(m)
        per_row = np.count_nonzero(m, axis=2).reshape(-1)
        row = np.repeat(np.arange(d * h), per_row)
        z = np.repeat(np.arange(d), per_row.reshape(d, h).sum(1))
        y = row - z * h
        x = flat - row * w
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in (flat, z, y, x))
    flat = torch.nonzero(mask.reshape(-1)).squeeze(1)
    per_row = mask.sum(2, dtype=torch.int64).reshape(-1)
    row = torch.repeat_interleave(torch.arange(d * h, device=mask.device), per_row)
    z = torch.repeat_interleave(torch.arange(d, device=mask.device), per_row.view(d, h).sum(1))
    return flat, z, row - z * h, flat - row * w


# dtype codes of core/native/warp.c
_NATIVE_IMAGE = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4, torch.float32: 5,
                 torch.float64: 6}
_NATIVE_LABELS = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4}
NATIVE_SPLIT = 1 << 17  # moving voxels per thread, at least, when the compiled loop runs on several threads
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (process id, pool): a forked child makes its own


class _WarpArgs(ctypes.Structure):
    """The argument block of ``laugen_warp`` (core/native/warp.c), field for field."""

    _fields_ = [
        ("image", ctypes.c_void_p), ("image_dtype", ctypes.c_int32), ("channels", ctypes.c_int32),
        ("image_out", ctypes.c_void_p), ("labels", ctypes.c_void_p), ("label_dtype", ctypes.c_int32),
        ("nearest", ctypes.c_int32), ("codes", ctypes.c_void_p), ("moving_out", ctypes.c_void_p),
        ("labels_out", ctypes.c_void_p), ("disp", ctypes.c_void_p), ("n_moving", ctypes.c_int64),
        ("run_start", ctypes.c_void_p), ("run_flat", ctypes.c_void_p), ("run_zyx", ctypes.c_void_p),
        ("n_runs", ctypes.c_int64), ("shape", ctypes.c_int64 * 3), ("z", ctypes.c_float), ("inside", ctypes.c_int32),
    ]


def _threads_for(n: int) -> int:
    return max(1, min(torch.get_num_threads(), n // NATIVE_SPLIT))


def _run_native(lib, args: _WarpArgs, n: int) -> None:
    """``laugen_warp`` over the moving voxels 0..n-1, split over torch's thread count (the call
    releases the GIL; the threads write disjoint voxels)."""
    global _pool
    threads = _threads_for(n)
    ref = ctypes.byref(args)
    if threads == 1:
        if lib.laugen_warp(ref, 0, n) != 0:
            raise RuntimeError("the compiled warp refused its arguments")
        return
    if _pool is None or _pool[0] != os.getpid() or _pool[1]._max_workers < threads:
        if _pool is not None and _pool[0] == os.getpid():
            _pool[1].shutdown(wait=False)  # a smaller pool of this process: its threads end once idle
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=threads, thread_name_prefix="laugen-warp"))
    bounds = [n * k // threads for k in range(threads + 1)]
    results = list(_pool[1].map(lambda k: lib.laugen_warp(ref, bounds[k], bounds[k + 1]), range(threads)))
    if any(results):
        raise RuntimeError("the compiled warp refused its arguments")


class Warper:
    """Resamples an image (C, Z, Y, X) and a label map (Z, Y, X) for any magnitude z (mm).

    The image is kept in its own dtype (no float32 copy of the whole volume); frames and samples are
    float32. Each frame costs one copy of the input plus, per moving voxel, one gather of the 8
    corners of its interpolation cell (image and labels share the cell), computed in blocks of
    :data:`CPU_BLOCK` voxels on CPU so that every intermediate stays in cache.

    Args:
        field: the (unit) displacement field.
        image: the original image, (Z, Y, X) or (C, Z, Y, X).
        labels: the original label map (Z, Y, X), any integer dtype; optional.
        label_interpolation: ``"linear"`` (one-hot trilinear + argmax: boundaries move smoothly
            with sub-voxel magnitudes) or ``"nearest"`` (a label changes only once a voxel has
            moved by half a voxel).
    """

    def __init__(
        self,
        field: UnitField,
        image: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor | None = None,
        label_interpolation: str = "linear",
        finite: bool | None = None,
    ):
        if label_interpolation not in ("linear", "nearest"):
            raise ValueError(f"label_interpolation must be 'linear' or 'nearest', got {label_interpolation!r}")
        self.label_interpolation = label_interpolation
        dev = field.device
        img = _as_channels(image)
        if tuple(img.shape[1:]) != tuple(field.shape):
            raise ValueError(f"image shape {tuple(img.shape[1:])} differs from the field's {field.shape}")
        self.field = field
        self.single_channel = len(image.shape) == 3
        self.image = img.to(device=dev).contiguous()
        self._finite = all_finite(img) if finite is None else bool(finite)  # see the module's note
        self._flat_image = self.image.view(self.image.shape[0], -1)
        self.labels = None
        if labels is not None:
            lab = _shared(torch_compatible(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels)
            if tuple(lab.shape) != tuple(field.shape):
                raise ValueError(f"label map shape {tuple(lab.shape)} differs from the field's {field.shape}")
            self.labels = lab.to(dev).contiguous()
            self._flat_labels = self.labels.view(-1)
        shape = torch.tensor(field.shape, device=dev)
        self._shape = shape
        strides = torch.tensor([field.shape[1] * field.shape[2], field.shape[2], 1], device=dev)
        self._strides = strides
        # interpolation cells: the lower corner is at most n - 2 (0 on an axis of one voxel); the
        # 8 corners are the lower one plus these flat offsets (bits z, y, x of the corner number)
        self._max_coord = (shape - 1).to(torch.float32).view(3, 1)
        self._max_cell = (shape - 2).clamp_min(0).to(torch.float32).view(3, 1)
        self._strides_rows = strides.view(3, 1)
        step = [int(st) if n > 1 else 0 for st, n in zip(strides.tolist(), field.shape)]
        offsets = [((k >> 2) & 1) * step[0] + ((k >> 1) & 1) * step[1] + (k & 1) * step[2] for k in range(8)]
        self._corner_offsets = torch.tensor(offsets, device=dev).view(8, 1)
        # corner k of the cell with lower corner b is element b of the flat volume shifted by its
        # offset: 8 index_select calls on these views gather the corners without an (8, n) index
        self._image_corners = [[ch[o:] for o in offsets] for ch in self._flat_image]
        self._label_corners = [self._flat_labels[o:] for o in offsets] if self.labels is not None else None
        self._stride_list = [int(st) for st in strides.tolist()]
        # moving voxels, in raster order (cache-friendly gathers and scatters): flat index in the
        # volume (P,), position (3, P) and displacement in voxels (3, P) as rows (every row
        # contiguous, so the sampling is vectorised)
        self._run_arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # see _runs
        if not self._moving_compiled(field):
            mm = field.mm
            local, zl, yl, xl = _moving_voxels(field.moving())  # inside the ROI
            r0, r1, r2 = (r.start for r in field.roi)
            sz, sy, _ = (int(st) for st in strides.tolist())
            self.flat_index = torch.add(xl, zl, alpha=sz).add_(yl, alpha=sy).add_(r0 * sz + r1 * sy + r2)
            rows = torch.empty((3, local.shape[0]), dtype=torch.float32, device=dev)  # (3, P), exact below 2^24
            for r, v, o in zip(rows, (zl, yl, xl), (r0, r1, r2)):
                r.copy_(v).add_(o)
            self._positions_rows = rows
            del zl, yl, xl
            spacing = torch.tensor(field.spacing, dtype=mm.dtype, device=dev).view(3, 1)
            self._disp_rows = mm.reshape(3, -1).index_select(1, local).div_(spacing)  # (3, P) voxels
            if self.n_moving:
                self._reach = [max(-float(lo), float(hi)) for lo, hi in map(torch.aminmax, self._disp_rows)]
            else:
                self._reach = [0.0, 0.0, 0.0]
        self.displacement = self._disp_rows.T  # (P, 3) view
        self._positions: torch.Tensor | None = None
        self._block = CPU_BLOCK if dev.type == "cpu" else max(1, self.n_moving)
        # cell codes (see _ensure_codes), built on the first frame; reach: voxels per mm of z per axis
        self._codes: torch.Tensor | None = None
        self._codes_box: tuple[list[int], list[int]] | None = None
        self._codes_ok: bool | None = None if self.labels is not None else False
        self._plane_order: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        # the compiled loop (core/native) applies to a finite CPU image of a dtype it knows and
        # integer labels; everything else runs the torch code below
        self._native_ok = (dev.type == "cpu" and self._finite and self.image.dtype in _NATIVE_IMAGE
                           and (self.labels is None or self.labels.dtype in _NATIVE_LABELS)
                           and self._disp_rows.dtype == torch.float32 and self.n_moving > 0)

    def _moving_compiled(self, field: UnitField) -> bool:
        """Set the moving voxels' flat indices, positions, displacements (voxels), runs and reach
        in one compiled pass over the field's support, without the volume-sized temporaries of
        :func:`_moving_voxels` (the same numbers); False when that does not apply (not on CPU, no
        compiled library, a field not float32 and contiguous, nothing moves)."""
        mm = field.mm
        if mm.device.type != "cpu" or mm.dtype != torch.float32 or not mm.is_contiguous():
            return False
        lib = native.library()
        if lib is None:
            return False
        mask = np.ascontiguousarray(field.moving().numpy()).view(np.uint8)
        n = int(np.count_nonzero(mask))
        if n == 0:
            return False
        roi_shape = np.array(mask.shape, np.int64)
        n_runs = int(lib.laugen_count_runs(mask.ctypes.data, roi_shape.ctypes.data))
        flat, pos, disp = np.empty(n, np.int64), np.empty((3, n), np.float32), np.empty((3, n), np.float32)
        runs = (np.empty(n_runs + 1, np.int64), np.empty(n_runs, np.int64), np.empty((n_runs, 3), np.int32))
        reach = np.zeros(3, np.float32)
        start, shape = np.array([r.start for r in field.roi], np.int64), np.array(field.shape, np.int64)
        spacing = np.array(field.spacing, np.float32)  # as torch's float32 spacing tensor
        if lib.laugen_moving_voxels(mask.ctypes.data, roi_shape.ctypes.data, start.ctypes.data, shape.ctypes.data,
                                    mm.data_ptr(), spacing.ctypes.data, n, n_runs, flat.ctypes.data, pos.ctypes.data,
                                    disp.ctypes.data, *(r.ctypes.data for r in runs), reach.ctypes.data) != 0:
            raise RuntimeError("the compiled moving-voxel pass disagrees with the field's support")
        self.flat_index, self._positions_rows, self._disp_rows = (torch.from_numpy(a) for a in (flat, pos, disp))
        self._run_arrays = runs
        self._reach = [float(r) for r in reach]
        return True

    @property
    def n_moving(self) -> int:
        """Number of voxels the field moves."""
        return int(self.flat_index.shape[0])

    @property
    def positions(self) -> torch.Tensor:
        """Voxel indices (P, 3) (z, y, x) of the moving voxels, in raster order (made on first use)."""
        if self._positions is None:
            self._positions = self._positions_rows.T.to(torch.int64).contiguous()
        return self._positions

    def _blocks(self):
        n, b = self.n_moving, self._block
        return [slice(a, min(n, a + b)) for a in range(0, n, b)] if n else []

    # -- the compiled loop ---------------------------------------------------------------------
    def _native(self):
        """The compiled warp (built on first use) when it applies to this warper, else None."""
        return native.library() if self._native_ok else None

    def _native_warp(self, lib, z_mm: float, image_out: torch.Tensor | None = None,
                     moving: torch.Tensor | None = None, labels_out: torch.Tensor | None = None) -> None:
        """Warp every moving voxel for magnitude ``z_mm`` in one compiled pass: the image into
        ``image_out`` (float32, the image's (C, Z, Y, X) shape, contiguous), the labels into
        ``moving`` (P,) and/or ``labels_out`` (the label map's shape), whichever are given."""
        a = _WarpArgs()
        if image_out is not None:
            a.image, a.image_dtype = self.image.data_ptr(), _NATIVE_IMAGE[self.image.dtype]
            a.channels, a.image_out = int(self.image.shape[0]), image_out.data_ptr()
        if moving is not None or labels_out is not None:
            a.labels, a.label_dtype = self.labels.data_ptr(), _NATIVE_LABELS[self.labels.dtype]
            a.nearest = int(self.label_interpolation == "nearest")
            if self._ensure_codes(z_mm):
                a.codes = self._codes.data_ptr()
            a.moving_out = moving.data_ptr() if moving is not None else None
            a.labels_out = labels_out.data_ptr() if labels_out is not None else None
        runs = self._runs()
        a.disp, a.n_moving = self._disp_rows.data_ptr(), self.n_moving
        a.run_start, a.run_flat, a.run_zyx = (r.ctypes.data for r in runs)
        a.n_runs = len(runs[1])
        a.shape[:] = [int(n) for n in self.field.shape]
        a.z, a.inside = float(z_mm), int(self._inside(z_mm))
        _run_native(lib, a, self.n_moving)

    def _runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The moving voxels as runs along X (made once): (first voxel of each run, then P) int64,
        flat index of each run's first voxel int64, and its (z, y, x) (n_runs, 3) int32. A run
        ends where the next moving voxel is not the next voxel of the same row."""
        if self._run_arrays is None:
            flat = self.flat_index.numpy()
            breaks = np.empty(flat.shape[0], bool)
            breaks[0] = True
            np.not_equal(np.diff(flat), 1, out=breaks[1:])
            breaks |= self._positions_rows[2].numpy() == 0  # the next voxel of the row before is in another row
            first = np.flatnonzero(breaks)
            zyx = np.ascontiguousarray(self._positions_rows.numpy()[:, first].T, dtype=np.int32)
            self._run_arrays = (np.append(first, flat.shape[0]).astype(np.int64), np.ascontiguousarray(flat[first]), zyx)
        return self._run_arrays

    @staticmethod
    def _native_target(t: torch.Tensor, dtype: torch.dtype) -> bool:
        return t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu"

    # -- sampling at the moving voxels -------------------------------------------------------
    def _coords(self, z_mm: float, rows: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Sampling positions (3, n) in voxels (z, y, x rows) of the moving voxels ``rows`` (all if None)."""
        if isinstance(rows, torch.Tensor):  # index_select: indexing [:, rows] is several times slower
            return torch.add(self._positions_rows.index_select(1, rows), self._disp_rows.index_select(1, rows),
                             alpha=float(z_mm))
        sel = slice(None) if rows is None else rows
        return torch.add(self._positions_rows[:, sel], self._disp_rows[:, sel], alpha=float(z_mm))

    def _inside(self, z_mm: float) -> bool:
        """Whether every sampling position at magnitude ``z_mm`` lies in [0, n - 2] on every axis, so
        that :meth:`_cells` needs no clamping (the moving voxels are inside the field's ROI and move
        at most ``reach * |z|`` voxels; a margin of 1e-3 voxel plus the float32 round-off of a
        position that large)."""
        for r, reach, n in zip(self.field.roi, self._reach, self.field.shape):
            e = reach * abs(float(z_mm)) + 1e-3 + 1e-6 * n
            if r.start - e < 0 or r.stop - 1 + e > n - 2:
                return False
        return True

    def _cells(self, coords: torch.Tensor, inside: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat index (n,) of the lower corner of the interpolation cell, fractions (3, n)) of
        positions ``coords`` (3, n); positions outside the volume take the nearest edge (clamped).
        ``inside``: every position is known to lie in [0, n - 2] (:meth:`_inside`), where the
        clamps change nothing and are skipped."""
        if inside:
            lo = coords.floor()
            frac = coords - lo
        else:
            c = torch.minimum(coords.clamp_min(0.0), self._max_coord)
            lo = torch.minimum(c.floor(), self._max_cell)
            frac = c.sub_(lo)
        cell = lo.to(torch.int64)
        sz, sy, _ = self._stride_list
        return torch.add(cell[2], cell[0], alpha=sz).add_(cell[1], alpha=sy), frac

    @staticmethod
    def _interpolate(corners: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
        """Trilinear value (n,) from corner values (8, n) (corner k = 4 bz + 2 by + bx) and
        fractions (3, n)."""
        v = corners.view(2, 2, 2, -1)
        x = torch.lerp(v[:, :, 0], v[:, :, 1], frac[2])
        y = torch.lerp(x[:, 0], x[:, 1], frac[1])
        return torch.lerp(y[0], y[1], frac[0])

    def _image_at(self, base: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
        """Trilinear samples (C, n) of the image at cells ``base`` (n,) with fractions (3, n)."""
        out = torch.empty((len(self._image_corners), base.shape[0]), dtype=torch.float32, device=base.device)
        for c, views in enumerate(self._image_corners):
            corners = self._gather(views, base).to(torch.float32)
            out[c] = self._interpolate(corners, frac)
            if not self._finite:
                self._resample_nonfinite(out[c], corners, frac)
        return out

    @staticmethod
    def _resample_nonfinite(values: torch.Tensor, corners: torch.Tensor, frac: torch.Tensor) -> None:
        """Redo, in ``values`` (n,), the samples whose corners (8, n) include a NaN or inf: the
        weighted mean of the finite corners when they carry more than half the weight, else the
        heaviest non-finite corner's value (see the module's note)."""
        bad = ~torch.isfinite(corners)
        rows = bad.any(0).nonzero().squeeze(1)
        if not rows.numel():
            return
        c, b = corners.index_select(1, rows), bad.index_select(1, rows)
        w = _corner_weights(frac.index_select(1, rows))
        good_w = w.masked_fill(b, 0.0)
        weight = good_w.sum(0)
        mean = (good_w * c.masked_fill(b, 0.0)).sum(0) / weight.clamp_min(1e-30)
        heaviest = w.masked_fill(~b, -1.0).argmax(0, keepdim=True)
        values[rows] = torch.where(weight > 0.5, mean, c.gather(0, heaviest).squeeze(0))

    @staticmethod
    def _gather(views: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
        """Values (8, n) of the 8 corners of the cells ``base`` (n,) from the shifted flat views."""
        out = torch.empty((8, base.shape[0]), dtype=views[0].dtype, device=base.device)
        for k, v in enumerate(views):
            torch.index_select(v, 0, base, out=out[k])
        return out

    def _labels_at(self, base: torch.Tensor, frac: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Label samples (n,) at cells ``base`` (n,): nearest, or one-hot linear + argmax."""
        out, pending = self._labels_deferred(base, frac, coords)
        if pending is not None and pending[0].numel():
            out[pending[0]] = self._vote(pending[1], pending[2])
        return out

    def _labels_deferred(self, base: torch.Tensor, frac: torch.Tensor, coords: torch.Tensor, codes: bool = False):
        """Label samples (n,) with the vote of mixed cells left to the caller: returns (labels,
        None) or (labels, (rows of the mixed cells, their corner labels (8, m), fractions (3, m))),
        where the labels of those rows are placeholders. Voting once for many blocks saves the
        per-call overhead of the vote's small arrays. ``codes``: look the cells up in the cell codes
        (:meth:`_ensure_codes` must cover them); the mixed cells keep the code :data:`MIXED`, for
        :meth:`_vote_coded`."""
        flat = self._flat_labels
        if self.label_interpolation == "nearest":
            near = torch.minimum(torch.floor(coords + 0.5).clamp_min(0), self._max_coord).to(torch.int64)
            return flat.take((near * self._strides_rows).sum(0)), None
        # one-hot linear + argmax without building the one-hot volume: a label's interpolated
        # indicator is the summed trilinear weight of the corners that carry it, so the winner is
        # the corner label with the largest such sum. Cells whose 8 corners agree need no vote.
        if codes:  # one byte per cell: its label, or MIXED, voted by _vote_coded once all blocks are done
            return self._codes.index_select(0, base), None
        corners = self._gather(self._label_corners, base)  # (8, n)
        out = corners[0].clone()
        rows = torch.nonzero((corners[1:] != corners[:1]).any(0)).squeeze(1)
        return out, (rows, corners.index_select(1, rows), frac.index_select(1, rows))

    def _ensure_codes(self, z_mm: float) -> bool:
        """Make the cell codes cover every cell that the moving voxels reach at magnitude
        ``z_mm``; False when codes do not apply (labels not uint8, the value 255 used, nearest).

        The code of a cell (its lower corner's flat index) is its label when its 8 corners agree,
        else :data:`MIXED`: one byte looked up per moving voxel instead of 8 corner labels. Codes are
        computed for a box around the field's ROI, grown when a larger magnitude reaches farther.
        """
        if self._codes_ok is None:
            lab = self.labels
            self._codes_ok = (self.label_interpolation == "linear" and lab.dtype == torch.uint8
                              and lab.device.type == "cpu" and lab.numel() > 0 and int(lab.max()) < MIXED)
        if not self._codes_ok or self.n_moving == 0:
            return False
        def bounds(z: float) -> tuple[list[int], list[int]]:
            reach = [r * abs(z) for r in self._reach]
            cells = self._max_cell.view(-1).tolist()
            return ([max(0, r.start - int(math.ceil(e)) - 1) for r, e in zip(self.field.roi, reach)],
                    [min(int(m), r.stop + int(math.ceil(e))) for r, e, m in zip(self.field.roi, reach, cells)])

        lo, hi = bounds(float(z_mm))
        box = self._codes_box
        if box is not None and all(a >= b for a, b in zip(lo, box[0])) and all(a <= b for a, b in zip(hi, box[1])):
            return True
        if box is not None:  # growing: reach 1.5x farther at once, not again at every frame
            lo, hi = bounds(1.5 * float(z_mm))
            lo = [min(a, b) for a, b in zip(lo, box[0])]
            hi = [max(a, b) for a, b in zip(hi, box[1])]
        if self._codes is None:  # lazily zeroed pages: only the box is ever touched
            self._codes = torch.from_numpy(np.zeros(self.labels.numel(), np.uint8))
        lab = self.labels
        lib = self._native()
        if lib is not None:  # one compiled pass over the box
            box = [np.asarray(v, np.int64) for v in (lab.shape, lo, hi)]
            if lib.laugen_cell_codes(lab.data_ptr(), self._codes.data_ptr(), *(b.ctypes.data for b in box)) != 0:
                raise RuntimeError(f"cell codes: box {lo}..{hi} outside the volume {tuple(lab.shape)}")
            self._codes_box = (lo, hi)
            return True
        size = [b - a + 1 for a, b in zip(lo, hi)]
        first = lab[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]]
        same = torch.ones_like(first, dtype=torch.bool)
        for corner in range(1, 8):
            bits = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
            off = [a + (b if n > 1 else 0) for a, b, n in zip(lo, bits, lab.shape)]
            same &= lab[off[0] : off[0] + size[0], off[1] : off[1] + size[1], off[2] : off[2] + size[2]] == first
        self._codes.view(lab.shape)[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = \
            torch.where(same, first, torch.full_like(first, MIXED))
        self._codes_box = (lo, hi)
        return True

    def _settle_votes(self, z_mm: float, labels: torch.Tensor, pending: list, codes: bool, inside: bool) -> None:
        """Vote, in the labels (P,) of all moving voxels, the mixed cells the blocks left open:
        ``pending`` (rows, corner labels (8, m), fractions (3, m)) per block, and with ``codes``
        the cells looked up as :data:`MIXED`."""
        if pending:
            at, corners, frac = (torch.cat([p[k] for p in pending], dim=min(k, 1)) for k in range(3))
            labels[at] = self._vote(corners, frac)
        if codes:
            self._vote_coded(z_mm, labels, inside)

    def _vote_coded(self, z_mm: float, labels: torch.Tensor, inside: bool) -> None:
        """Replace, in the labels (P,) of all moving voxels looked up in the cell codes, the code
        :data:`MIXED` by the vote of the cell: the few mixed voxels' cells are found again from their
        rows (the same numbers as in the blocks), in one pass for the whole frame."""
        mixed = labels == MIXED
        at = torch.from_numpy(np.flatnonzero(mixed.numpy())) if mixed.device.type == "cpu" else \
            torch.nonzero(mixed).squeeze(1)  # numpy's nonzero is 3x faster on CPU
        if at.numel():
            base, frac = self._cells(self._coords(z_mm, at), inside)
            labels.scatter_(0, at, self._vote(self._gather(self._label_corners, base), frac))

    @classmethod
    def _vote(cls, corners: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
        """The corner label (m,) with the largest summed trilinear weight; the first corner wins ties.

        ``corners`` (8, m) are the corner labels (corner k = 4 bz + 2 by + bx), ``frac`` (3, m) the
        fractions. A label's summed weight is the trilinear interpolation of its indicator. Nearly
        every mixed cell holds two labels, that of corner 0 and one other: two interpolations decide.
        Cells with three or more labels score every corner.
        """
        first = corners[0]
        is_first = corners == first
        high, low = first.clone(), first.clone()  # row by row: a reduction over dim 0 is slow
        for row in corners[1:]:
            torch.maximum(high, row, out=high)
            torch.minimum(low, row, out=low)
        other = torch.where(high != first, high, low)  # the other label of a two-label cell
        is_other = corners == other
        s_first = cls._interpolate(is_first.to(frac.dtype), frac)
        s_other = cls._interpolate(is_other.to(frac.dtype), frac)
        out = torch.where(s_other > s_first, other, first)
        many = torch.nonzero(~(is_first | is_other).all(0)).squeeze(1)
        if many.numel():
            lab, f = corners[:, many].T, frac[:, many].T  # (k, 8), (k, 3)
            n = lab.shape[0]
            lo, hi = 1 - f, f
            wz, wy, wx = (torch.stack([lo[:, a], hi[:, a]], 1) for a in range(3))
            weights = (wz.view(n, 2, 1, 1) * wy.view(n, 1, 2, 1) * wx.view(n, 1, 1, 2)).reshape(n, 8)
            same = lab.unsqueeze(2) == lab.unsqueeze(1)  # (k, i, j): corner j carries corner i's label
            score = (same * weights.unsqueeze(1)).sum(2)
            out[many] = lab.gather(1, score.argmax(1, keepdim=True)).squeeze(1)
        return out

    def _sample_image(self, coords: torch.Tensor) -> torch.Tensor:
        """Trilinear samples (C, n) of the image at voxel coordinates (n, 3) (z, y, x)."""
        base, frac = self._cells(coords)
        return self._image_at(base, frac)

    def _sample_labels(self, coords: torch.Tensor) -> torch.Tensor:
        """Label samples (n,) at voxel coordinates (n, 3), nearest or one-hot linear."""
        base, frac = self._cells(coords)
        return self._labels_at(base, frac, coords)

    # -- whole frames ------------------------------------------------------------------------
    @staticmethod
    def _scatter(flat: torch.Tensor, where: torch.Tensor, values: torch.Tensor) -> None:
        """``flat[c, where] = values[c]`` for every channel (``scatter_``: 3x faster than indexing)."""
        for c in range(flat.shape[0]):
            flat[c].scatter_(0, where, values[c])

    def _float_out(self, out: torch.Tensor | None) -> torch.Tensor:
        if out is None:
            return self.image.to(torch.float32, copy=True)
        target = out.view(self.image.shape) if out.ndim == 3 else out
        target.copy_(self.image)
        return target

    def warp(self, z_mm: float, image_out: torch.Tensor | None = None, labels_out: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Image and label frame for ``z_mm`` in one pass over the moving voxels (they share their
        interpolation cells).

        ``image_out`` (float32, the image's shape) and ``labels_out`` (the label map's dtype and
        shape) are filled if given. Returns (image frame, label frame or None, the warped labels at
        the moving voxels (P,) or None).
        """
        if not all(t is None or t.is_contiguous() for t in (image_out, labels_out)):
            # a buffer with no flat view (e.g. transposed): warp into fresh memory, then copy
            img, lab, moving = self.warp(z_mm)
            if image_out is not None:
                image_out.copy_(img.view(image_out.shape))
                img = image_out[0] if self.single_channel and image_out.ndim == 4 else image_out
            if labels_out is not None:
                lab = labels_out.copy_(lab)
            return img, lab, moving
        img = self._float_out(image_out)
        lab = moving = None
        if self.labels is not None:
            lab = self.labels.clone() if labels_out is None else labels_out.copy_(self.labels)
            moving = self.labels.view(-1).index_select(0, self.flat_index) if z_mm == 0.0 else \
                torch.empty_like(self.flat_index, dtype=self.labels.dtype)
        lib = self._native() if z_mm != 0.0 else None
        if lib is not None and self._native_target(img, torch.float32) and \
                (lab is None or self._native_target(lab, self.labels.dtype)):
            self._native_warp(lib, z_mm, img, moving, lab)
        elif z_mm != 0.0:
            flat_img = img.view(img.shape[0], -1)
            pending = []
            codes = lab is not None and self._ensure_codes(z_mm)
            inside = self._inside(z_mm)
            for rows in self._blocks():
                coords = self._coords(z_mm, rows)
                base, frac = self._cells(coords, inside)
                self._scatter(flat_img, self.flat_index[rows], self._image_at(base, frac))
                if lab is not None:
                    moving[rows], votes = self._labels_deferred(base, frac, coords, codes)
                    if votes is not None and votes[0].numel():
                        pending.append((votes[0] + rows.start, votes[1], votes[2]))
            if lab is not None:
                self._settle_votes(z_mm, moving, pending, codes, inside)
                lab.view(-1).scatter_(0, self.flat_index, moving)
        return (img[0] if self.single_channel else img), lab, moving

    def image_frame(self, z_mm: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """The image warped by ``z_mm * F``: (C, Z, Y, X), or (Z, Y, X) for a 3D input, float32.

        ``out``, if given, is a float32 tensor of that shape on the warper's device to fill.
        """
        if out is not None and not out.is_contiguous():  # no flat view: warp into fresh memory, then copy
            return out.copy_(self.image_frame(z_mm).view(out.shape))
        img = self._float_out(out)
        lib = self._native() if z_mm != 0.0 else None
        if lib is not None and self._native_target(img, torch.float32):
            self._native_warp(lib, z_mm, image_out=img)
        elif z_mm != 0.0:
            flat = img.view(img.shape[0], -1)
            inside = self._inside(z_mm)
            for rows in self._blocks():
                base, frac = self._cells(self._coords(z_mm, rows), inside)
                self._scatter(flat, self.flat_index[rows], self._image_at(base, frac))
        return img[0] if self.single_channel else img

    def label_frame(self, z_mm: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """The label map warped by ``z_mm * F``, (Z, Y, X); ``out`` as in :meth:`image_frame`."""
        if self.labels is None:
            raise ValueError("this warper was built without a label map")
        if out is not None and not out.is_contiguous():  # no flat view: warp into fresh memory, then copy
            return out.copy_(self.label_frame(z_mm))
        out = self.labels.clone() if out is None else out.copy_(self.labels)
        if z_mm != 0.0:
            out.view(-1).scatter_(0, self.flat_index, self.moving_labels(z_mm))
        return out

    def prepare(self, z_max_mm: float) -> None:
        """Make ready for magnitudes up to ``|z_max_mm|`` (the label cell codes reach that far), so
        that a series whose magnitude grows frame by frame builds them once."""
        if self.labels is not None:
            self._ensure_codes(float(z_max_mm))

    def moving_labels(self, z_mm: float) -> torch.Tensor:
        """The warped label values at the moving voxels only, shape (P,) (cheap volume counts)."""
        if self.labels is None:
            raise ValueError("this warper was built without a label map")
        if z_mm == 0.0:
            return self.moving_values(self.labels)
        out = torch.empty_like(self.flat_index, dtype=self.labels.dtype)
        lib = self._native()
        if lib is not None:
            self._native_warp(lib, z_mm, moving=out)
            return out
        pending = []
        codes = self._ensure_codes(z_mm)
        inside = self._inside(z_mm)
        for rows in self._blocks():
            coords = self._coords(z_mm, rows)
            base, frac = self._cells(coords, inside)
            out[rows], votes = self._labels_deferred(base, frac, coords, codes)
            if votes is not None and votes[0].numel():
                pending.append((votes[0] + rows.start, votes[1], votes[2]))
        self._settle_votes(z_mm, out, pending, codes, inside)
        return out

    def moving_values(self, frame: torch.Tensor) -> torch.Tensor:
        """The values of a (Z, Y, X) frame at the moving voxels, shape (P,)."""
        return frame.reshape(-1).index_select(0, self.flat_index)

    # -- single planes, for the live preview --------------------------------------------------
    def _plane_rows(self, axis: int, index: int) -> torch.Tensor:
        """Rows of the moving voxels in plane ``index`` along ``axis``: a binary search along Z
        (the voxels are in raster order) or along Y and X once :meth:`index_planes` has sorted
        them; until then one pass over the moving voxels."""
        if axis == 0 and 0 not in self._plane_order:
            self._plane_order[0] = (self.positions[:, 0].contiguous(), None)
        entry = self._plane_order.get(axis)
        if entry is None:
            return torch.nonzero(self.positions[:, axis] == int(index)).squeeze(1)
        keys, order = entry
        probe = torch.tensor([int(index), int(index) + 1], device=keys.device, dtype=keys.dtype)
        a, b = torch.searchsorted(keys, probe).tolist()
        return torch.arange(a, b, device=keys.device) if order is None else order[a:b]

    def index_planes(self) -> None:
        """Build the plane lookups (once; call it from a worker thread): the moving voxels'
        positions, their Z keys and their order along Y and X, so that a preview plane along any
        axis costs only its own moving voxels; and the compiled loop, built here on its first use
        (seconds, once per machine), not on the viewer's thread."""
        self._native()
        if 0 not in self._plane_order:
            self._plane_order[0] = (self.positions[:, 0].contiguous(), None)
        for axis in (1, 2):
            if axis not in self._plane_order:
                keys, order = torch.sort(self.positions[:, axis], stable=True)
                self._plane_order[axis] = (keys, order)

    def _plane_scatter(self, out: torch.Tensor, axis: int, rows: torch.Tensor) -> torch.Tensor:
        keep = [a for a in range(3) if a != axis]
        pos = self.positions[rows][:, keep]
        return pos[:, 0] * out.shape[-1] + pos[:, 1]

    def image_plane(self, z_mm: float, axis: int = 0, index: int = 0) -> torch.Tensor:
        """One plane of :meth:`image_frame`: ``index`` along ``axis`` (0 = Z), shape (C, a, b) or (a, b)."""
        out = self.image.select(axis + 1, int(index)).to(torch.float32, copy=True)
        if z_mm != 0.0:
            rows = self._plane_rows(axis, index)
            if rows.numel():
                flat = out.view(out.shape[0], -1)
                flat[:, self._plane_scatter(out, axis, rows)] = self._sample_image(self._coords(z_mm, rows))
        return out[0] if self.single_channel else out

    def label_plane(self, z_mm: float, axis: int = 0, index: int = 0) -> torch.Tensor:
        """One plane of :meth:`label_frame` (``index`` along ``axis``), shape (a, b)."""
        if self.labels is None:
            raise ValueError("this warper was built without a label map")
        out = self.labels.select(axis, int(index)).clone()
        if z_mm != 0.0:
            rows = self._plane_rows(axis, index)
            if rows.numel():
                out.view(-1)[self._plane_scatter(out, axis, rows)] = self._sample_labels(self._coords(z_mm, rows))
        return out


def warp_series(warper: Warper, z_mm: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All frames for the magnitudes ``z_mm``: images (T, [C,] Z, Y, X) and labels (T, Z, Y, X)."""
    images = torch.stack([warper.image_frame(float(z)) for z in z_mm])
    labels = torch.stack([warper.label_frame(float(z)) for z in z_mm]) if warper.labels is not None else None
    return images, labels
