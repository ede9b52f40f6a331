"""The anatomy-informed displacement field and its kinds.

A :class:`UnitField` is the displacement that moves the boundary of the selected labels by at
most 1 mm: the Gaussian-blurred binary mask (sigma in mm, so anisotropic voxels are handled per
axis), differentiated with the real voxel spacing and scaled so that its largest displacement is
exactly 1 mm. The blur extends the mask with its edge values (scipy's ``mode="nearest"``), so a
structure cut by the image or crop edge continues across it: the cut face is no boundary and does
not move. Sampling the image at ``x + z * F(x)`` with ``z > 0`` grows the structure by at most
``z`` mm; ``z < 0`` shrinks it. This follows the anatomy-informed augmentation of Kovacs et al.
(MICCAI 2023), which LAUGEN builds on, with the field normalised so that magnitudes are in mm.

Displacements below 1e-3 of the largest (1 um per mm of magnitude) are set to zero, so the field
is exactly zero farther than about 3.7 sigma from the structure, so it is stored only inside a region of interest (``roi``) of the volume; everything
outside the ROI does not move and needs no resampling.

Arrays are (Z, Y, X); vectors have their components in the same (z, y, x) order; spacing is in mm
per axis.
"""

from __future__ import annotations

import itertools
import math
import mmap
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .device import resolve_device

Spacing = tuple[float, float, float]
TRUNCATE = 4.0  # Gaussian support in sigmas, as scipy.ndimage.gaussian_filter
MAX_SIGMA_VOXELS = 1e4  # the blur's kernel is 8 sigma wide: beyond this a voxel size is surely wrong
NEGLIGIBLE = 1e-3  # displacements below this fraction of the largest one (1 um per mm of z) are set to 0


def _length(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean length over the first axis of a (3, ...) tensor (faster than ``norm(dim=0)``)."""
    return (vectors[0] * vectors[0]).addcmul_(vectors[1], vectors[1]).addcmul_(vectors[2], vectors[2]).sqrt_()


@dataclass(frozen=True)
class UnitField:
    """A displacement field in mm that is non-zero only inside ``roi``.

    Attributes:
        shape: the full volume's shape (Z, Y, X) in voxels.
        spacing: voxel size (z, y, x) in mm.
        roi: the box (three slices) of the volume outside which the field is zero.
        mm: tensor (3, d, h, w): the displacement (z, y, x components, mm) inside ``roi``.
        support: optional bool tensor (d, h, w), True where ``mm`` is non-zero, when already known
            (set by :meth:`normalised`; it saves a pass over the field).
    """

    shape: tuple[int, int, int]
    spacing: Spacing
    roi: tuple[slice, slice, slice]
    mm: torch.Tensor
    support: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def moving(self) -> torch.Tensor:
        """Bool tensor (d, h, w): True where the displacement is non-zero (inside ``roi``)."""
        if self.support is not None:
            return self.support
        mm = self.mm
        return (mm[0] != 0) | (mm[1] != 0) | (mm[2] != 0)

    @property
    def device(self) -> torch.device:
        return self.mm.device

    @property
    def max_mm(self) -> float:
        """Largest displacement length in mm (1 for a unit field)."""
        return float(_length(self.mm).max()) if self.mm.numel() else 0.0

    def voxels(self) -> torch.Tensor:
        """The displacement inside ``roi`` in voxels per axis, shape (3, d, h, w)."""
        s = torch.tensor(self.spacing, dtype=self.mm.dtype, device=self.mm.device).view(3, 1, 1, 1)
        return self.mm / s

    def dense(self) -> np.ndarray:
        """The field over the whole volume as a numpy array (3, Z, Y, X) in mm."""
        out = np.zeros((3,) + tuple(self.shape), np.float32)
        out[(slice(None),) + self.roi] = self.mm.cpu().numpy()
        return out

    def normalised(self) -> UnitField:
        """This field scaled so that its largest displacement is 1 mm, with displacements below
        :data:`NEGLIGIBLE` mm set to zero and the ROI shrunk to the support."""
        return self._normalise(in_place=False)

    def _normalise(self, in_place: bool) -> UnitField:
        """:meth:`normalised`; ``in_place``: the caller gives up ``self.mm``, whose memory then
        holds the result (no fresh (3, d, h, w) volume to fault in)."""
        norm = _length(self.mm)
        peak = float(norm.max()) if norm.numel() else 0.0
        if not math.isfinite(peak) or peak <= 0.0:
            raise ValueError("the displacement field is zero everywhere: nothing would move")
        keep = norm >= NEGLIGIBLE * peak
        del norm
        lo, hi = _bounding_box(keep)
        # keep one voxel of zeros around the support so that finite differences see the edge
        lo = [max(0, a - 1) for a in lo]
        hi = [min(n, b + 1) for n, b in zip(keep.shape, hi)]
        inner = tuple(slice(a, b) for a, b in zip(lo, hi))
        roi = tuple(slice(r.start + s.start, r.start + s.stop) for r, s in zip(self.roi, inner))
        keep = keep[inner]
        if in_place and self.mm.is_contiguous():
            mm = _scale_into_front(self.mm, inner, keep, peak)
        else:
            mm = self.mm[(slice(None),) + inner] * (keep / peak).unsqueeze(0)
        # a kept voxel's length is >= NEGLIGIBLE: no component of it underflows to all zeros
        return UnitField(self.shape, self.spacing, roi, mm, support=keep.contiguous())


def _bounding_box(mask: torch.Tensor, use_numpy: bool | None = None) -> tuple[list[int], list[int]]:
    """(first, last + 1) index per axis of the True voxels of a non-empty (d, h, w) bool tensor
    (numpy's projections on CPU, several times faster than torch's ``any``; torch elsewhere)."""
    if mask.device.type == "cpu" if use_numpy is None else use_numpy:
        hits = _projections(mask.numpy())
    else:
        hits = tuple(h.cpu().numpy() for h in (mask.flatten(1).any(1), mask.any(2).any(0), mask.any(1).any(0)))
    return _extent(hits)


def _extent(hits: Sequence[np.ndarray]) -> tuple[list[int], list[int]]:
    """(first, last + 1) index of the True entries of each of the per-axis projections ``hits``."""
    lo, hi = [], []
    for hit in hits:
        idx = np.flatnonzero(hit)
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    return lo, hi


def _scale_into_front(mm: torch.Tensor, inner: tuple[slice, slice, slice], keep: torch.Tensor,
                      peak: float) -> torch.Tensor:
    """``mm[:, inner] * (keep / peak)`` written, plane by plane, into the front of ``mm``'s own
    memory, as a contiguous (3, d, h, w) tensor (the same numbers as the one-line product).

    Planes are written in memory order (component, then Z); a destination plane never reaches a
    source plane not yet read (each source plane lies at or after its destination, and every later
    one after the destination's end), and each plane goes through a small buffer."""
    d, h, w = (s.stop - s.start for s in inner)
    out = mm.view(-1)[: 3 * d * h * w].view(3, d, h, w)
    tmp = mm.new_empty((h, w))
    for c in range(3):
        for z in range(d):
            torch.mul(mm[c, inner[0].start + z, inner[1], inner[2]], keep[z] / peak, out=tmp)
            out[c, z].copy_(tmp)
    return out


def gaussian_kernel(sigma_vox: float, truncate: float = TRUNCATE) -> np.ndarray:
    """1D Gaussian kernel with ``sigma_vox`` voxels, radius ``int(truncate*sigma+0.5)``, sum 1
    (the same kernel as ``scipy.ndimage.gaussian_filter``)."""
    radius = int(truncate * sigma_vox + 0.5)
    if sigma_vox <= 0 or radius == 0:
        return np.ones(1, np.float64)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    return k / k.sum()


BLUR_BLOCK = 48  # output voxels per block of the blur's band matrices (cost per voxel: block + kernel)
BLUR_CHUNK = 2048  # least lines blurred together on CPU (their inputs, a few hundred KiB, stay in cache)
GRADIENT_SLAB = 1 << 19  # voxels per slab of the unit field's gradient passes (2 MiB a component: measured fastest)
HUGE_PAGES = True
"""Large set-up buffers on CPU in transparent huge pages (as numpy's large arrays): their first touch
costs about a sixth of 4 KiB pages' (92 MB: 5 vs 30 ms). On a virtual machine whose host takes
back freed memory, huge pages never touched before cost more, once: on this project's 2-core VM
the CT set-up measured 0.65-0.72 s per Augmenter after the first in a process, the first ~1.0 s,
against a steady ~0.77 s with 4 KiB pages."""


def _band(n: int, k: np.ndarray, out_lo: int, out_hi: int, in_lo: int, in_hi: int, mode: str) -> np.ndarray:
    """Matrix (in_hi - in_lo, out_hi - out_lo) that maps inputs ``in_lo..in_hi`` of an axis of
    length ``n`` to the blurred outputs ``out_lo..out_hi``: ``mode="nearest"`` folds the replicated
    edge values into the first and last input, ``"constant"`` drops taps outside the axis (zeros)."""
    r = k.size // 2
    out = np.arange(out_lo, out_hi)
    src = out[None, :] + np.arange(-r, r + 1)[:, None]  # (taps, outputs): input index of each tap
    weights = np.broadcast_to(k[:, None], src.shape)
    cols = np.broadcast_to(np.arange(out.size)[None, :], src.shape)
    if mode == "nearest":
        keep = np.ones(src.shape, bool)
        src = np.clip(src, 0, n - 1)
    else:
        keep = (src >= 0) & (src < n)
    flat = (src[keep] - in_lo) * out.size + cols[keep]  # taps folded onto one input add up (np.add.at, faster)
    band = np.bincount(flat, weights=weights[keep], minlength=(in_hi - in_lo) * out.size)
    return band.reshape(in_hi - in_lo, out.size)


def gaussian_blur(volume: torch.Tensor, sigma_vox: Sequence[float], truncate: float = TRUNCATE,
                  mode: str = "nearest", support: Sequence[slice] | None = None) -> torch.Tensor:
    """Separable Gaussian blur of a (Z, Y, X) tensor; sigma per axis in voxels.

    Equal to ``scipy.ndimage.gaussian_filter(volume, sigma_vox, mode=mode, truncate=truncate)``
    within float32 round-off. ``mode="nearest"`` (default) extends the volume with its edge values,
    so a structure cut by the image edge continues across it and gets no false boundary there;
    ``"constant"`` pads with zeros. ``support``: a box (three slices) outside which ``volume`` is
    zero; the passes then read only the inputs that can be non-zero (the first pass only the box,
    the second only the box's X columns), the same numbers for less work.

    Each axis is cut into blocks of :data:`BLUR_BLOCK` outputs; a block is one matrix product of the
    inputs it reaches (block + 2 radius) with its banded blur matrix, a BLAS call on CPU and GPU
    alike, written straight into its columns of the pass's output. The cost per voxel is block +
    kernel size, whatever the axis length. Contracting axis 0 three times brings the axes back in
    their order.
    """
    if mode not in ("nearest", "constant"):
        raise ValueError(f"mode must be 'nearest' or 'constant', got {mode!r}")
    box = [slice(0, n) for n in volume.shape] if support is None else \
        [slice(*sl.indices(n)[:2]) for sl, n in zip(support, volume.shape)]
    return _blur_box(volume[box[0], box[1], box[2]], tuple(volume.shape), [b.start for b in box], sigma_vox,
                     truncate, mode)


def _blur_box(values: torch.Tensor, shape: Sequence[int], first: Sequence[int], sigma_vox: Sequence[float],
              truncate: float, mode: str, into: Sequence[torch.Tensor | None] = (None, None, None)) -> torch.Tensor:
    """:func:`gaussian_blur` of a volume of ``shape`` that is zero outside the box holding ``values``
    (its first voxel at index ``first``): a contiguous (Z, Y, X) tensor of ``shape``.

    Pass 1 reads the box only, pass 2 the box's X columns (all else is zero after pass 1); the
    passes' outputs are (Y, X of the box, Z), (X of the box, Z, Y) and (Z, Y, X) (sizes:
    :func:`_blur_sizes`), each in the memory of the flat tensor ``into[pass]`` when given (fresh
    memory otherwise), which must not overlap the pass's input."""
    out = values.contiguous()  # one copy of a strided box, rather than one per block
    for axis, s in enumerate(sigma_vox):
        size = math.prod(out.shape[1:]) * int(shape[axis])
        where = None if into[axis] is None else into[axis][:size]
        out = _blur_pass(out, int(shape[axis]), int(first[axis]), gaussian_kernel(float(s), truncate), mode, where)
    return out


def _blur_sizes(box: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """The element counts of the three passes' outputs in :func:`_blur_box` for a box of ``box``
    voxels in a volume of ``shape``."""
    return box[1] * box[2] * shape[0], box[2] * shape[0] * shape[1], math.prod(shape)


def _arena(n: int, device: torch.device) -> tuple[torch.Tensor, Callable[[int], None]]:
    """A flat uninitialised float32 tensor of ``n`` elements, and a function ``release(k)`` that
    gives the memory after its first ``k`` elements back to the system (on CPU where the platform
    allows it, in an anonymous map, with transparent huge pages if :data:`HUGE_PAGES`; a no-op
    elsewhere). Nothing may read the released part again."""
    if device.type != "cpu" or not hasattr(mmap, "MADV_DONTNEED") or n <= 0:
        return _empty((n,), torch.float32, device), lambda k: None
    block = mmap.mmap(-1, n * 4, flags=mmap.MAP_PRIVATE)  # anonymous, private to this process (copied on fork)
    if HUGE_PAGES and hasattr(mmap, "MADV_HUGEPAGE"):
        block.madvise(mmap.MADV_HUGEPAGE)

    def release(k: int) -> None:
        start = -(-4 * k // mmap.PAGESIZE) * mmap.PAGESIZE
        if start < len(block):
            block.madvise(mmap.MADV_DONTNEED, start, len(block) - start)

    return torch.from_numpy(np.frombuffer(block, np.float32, count=n)), release


def _empty(shape: Sequence[int], dtype: torch.dtype = torch.float32,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """An uninitialised tensor; on CPU, if :data:`HUGE_PAGES`, in numpy's memory, which numpy gives
    transparent huge pages: the first touch of a large fresh buffer costs several times less than
    in torch's own allocation (a page fault per 4 KiB), and it is the set-up's largest cost."""
    if torch.device(device).type != "cpu" or not HUGE_PAGES:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    kind = torch.empty(0, dtype=dtype).numpy().dtype
    n = math.prod(shape)
    raw = np.empty(n + 64 // kind.itemsize, kind)  # 64-byte aligned as torch's own (BLAS may sum by alignment)
    skip = (-raw.ctypes.data % 64) // kind.itemsize
    return torch.from_numpy(raw[skip : skip + n].reshape(tuple(shape)))


def _blur_pass(x: torch.Tensor, n: int, first: int, k: np.ndarray, mode: str,
               into: torch.Tensor | None = None) -> torch.Tensor:
    """Blur along axis 0 of the contiguous ``x``, which holds inputs ``first .. first + len(x)`` of
    an axis of length ``n`` (the other inputs are zero), into all ``n`` outputs, put last:
    (rest..., n), in the memory of ``into`` (a flat tensor of that size) when given. Each block's
    matrix product is written into its columns of the output."""
    r = k.size // 2
    m = x.shape[0]
    rest = tuple(x.shape[1:])
    out = _empty(rest + (n,), x.dtype, x.device) if into is None else into.view(rest + (n,))
    rows = x.reshape(m, -1)  # (inputs, rest): a block's inputs are consecutive rows
    cols = out.view(-1, n)  # (rest, outputs)
    step = n if n <= 2 * BLUR_BLOCK else BLUR_BLOCK
    blocks = []  # (outputs lo:hi, band matrix or None for all zeros, its inputs' rows in x)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        a, b = max(0, lo - r), min(n, hi + r)  # the inputs this block reaches
        a2, b2 = max(a, first), min(b, first + m)  # of those, the ones that can be non-zero
        if b2 <= a2:
            blocks.append((lo, hi, None, 0, 0))
            continue
        band = _band(n, k, lo, hi, a, b, mode)[a2 - a : b2 - a]
        blocks.append((lo, hi, torch.as_tensor(band, dtype=x.dtype, device=x.device), a2 - first, b2 - first))
    # on CPU the columns of ``rows`` go in chunks that stay in cache while every block reads them;
    # a chunk is a set of whole output rows, and every chunk has at least BLUR_CHUNK of them (BLAS
    # may sum in another order for a handful of rows)
    lines = rows.shape[1]
    parts = max(1, lines // BLUR_CHUNK) if x.device.type == "cpu" else 1
    cuts = [part * lines // parts // 16 * 16 for part in range(parts)] + [lines]  # chunks start 64-byte aligned
    for c0, c1 in itertools.pairwise(cuts):
        for lo, hi, band, i0, i1 in blocks:
            if band is None:
                cols[c0:c1, lo:hi].zero_()
            else:
                torch.mm(rows[i0:i1, c0:c1].t(), band, out=cols[c0:c1, lo:hi])
    return out


def derivative(volume: torch.Tensor, axis: int, h: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Derivative of a (Z, Y, X) tensor (or any tensor, e.g. (3, Z, Y, X) components) along ``axis``
    with voxel size ``h`` mm, in units per mm.

    Central differences inside, one-sided at the edges, the same numbers as
    ``torch.gradient(volume, spacing=h, dim=axis, edge_order=1)`` (``(f[i+1] - f[i-1]) / h / 2``)
    written straight into ``out`` (a tensor of ``volume``'s shape, made if None) in three slices:
    several times faster than ``torch.gradient``. An axis of one voxel has zero derivative.
    """
    out = torch.empty_like(volume) if out is None else out
    n = volume.shape[axis]
    if n < 2:
        return out.zero_()
    h = float(h)
    if n > 2:
        torch.sub(volume.narrow(axis, 2, n - 2), volume.narrow(axis, 0, n - 2), out=out.narrow(axis, 1, n - 2))
        out.narrow(axis, 1, n - 2).div_(2.0 * h)  # (x / h) / 2 == x / (2 h) exactly: a power-of-two scaling
    for at, a, b in ((0, 1, 0), (n - 1, n - 1, n - 2)):
        torch.sub(volume.narrow(axis, a, 1), volume.narrow(axis, b, 1), out=out.narrow(axis, at, 1)).div_(h)
    return out


def z_derivative(volume: torch.Tensor, z0: int, z1: int, h: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Planes ``z0:z1`` of :func:`derivative` of a (D, H, W) tensor along Z (voxel size ``h`` mm),
    in units per mm, reading the planes next to the slab from ``volume`` (central differences
    inside, one-sided on the volume's first and last plane), written into ``out`` (made if None)."""
    depth = volume.shape[0]
    out = volume.new_empty((z1 - z0,) + tuple(volume.shape[1:])) if out is None else out
    if depth < 2:
        return out.zero_()
    h = float(h)
    a, b = max(z0, 1), min(z1, depth - 1)  # planes with a neighbour on both sides
    if b > a:
        torch.sub(volume[a + 1 : b + 1], volume[a - 1 : b - 1], out=out[a - z0 : b - z0]).div_(2.0 * h)
    if z0 == 0:
        torch.sub(volume[1], volume[0], out=out[0]).div_(h)
    if z1 == depth:
        torch.sub(volume[depth - 1], volume[depth - 2], out=out[depth - 1 - z0]).div_(h)
    return out


def spatial_gradient(volume: torch.Tensor, spacing: Sequence[float], out: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of a (Z, Y, X) tensor in units per mm, shape (3, Z, Y, X) (``out`` if given).

    Central differences inside, one-sided at the edges (as ``numpy.gradient``); an axis with a
    single voxel (a 2D image as Z = 1) has zero derivative. See :func:`derivative`.
    """
    out = volume.new_empty((3,) + tuple(volume.shape)) if out is None else out
    for axis, h in enumerate(spacing):
        derivative(volume, axis, h, out[axis])
    return out


def _projections(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whether each plane along Z, Y and X of a bool (Z, Y, X) array holds a True voxel (``any``
    over each Z plane, and over the OR of the Z planes: two streaming passes, about 10x faster
    than ``count_nonzero`` along an axis)."""
    column = np.logical_or.reduce(mask, axis=0)  # (Y, X): some plane has the voxel
    return mask.any(axis=(1, 2)), column.any(1), column.any(0)


def shared_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor sharing ``array``'s memory, for reading only (so a read-only array needs no copy)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(array)


def unit_field(
    mask: np.ndarray,
    spacing: Sequence[float],
    sigma_mm: float = 5.0,
    device: str | torch.device | None = "auto",
) -> UnitField:
    """The unit displacement field of a boolean (Z, Y, X) ``mask``.

    Args:
        mask: the structure that grows (True inside).
        spacing: voxel size (z, y, x) in mm.
        sigma_mm: standard deviation of the Gaussian blur in mm; it sets how far from the boundary
            the deformation reaches (about ``4 * sigma_mm``).
        device: torch device, ``"auto"`` for CUDA when present.

    Returns:
        A :class:`UnitField` whose largest displacement is 1 mm, pointing into the structure
        (sampling at ``x + z * F`` with ``z > 0`` grows it).
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (Z, Y, X), got shape {mask.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive finite numbers in mm, got {spacing}")
    if not (math.isfinite(sigma_mm) and sigma_mm > 0):
        raise ValueError(f"sigma_mm must be a positive finite number, got {sigma_mm}")
    mask = np.asarray(mask, bool)
    hits = _projections(mask) if mask.size else None
    if hits is None or not hits[0].any():
        raise ValueError("the selected structure is empty: no voxel to deform")
    extent = max(n * s for n, s in zip(mask.shape, spacing))
    if sigma_mm > 100 * extent:
        raise ValueError(f"sigma_mm = {sigma_mm:g} mm against an image {extent:.3g} mm across: sigma must be "
                         "at most 100x the image's extent; check sigma_mm and the voxel size "
                         "(a header in the wrong unit?)")
    if sigma_mm / min(spacing) > MAX_SIGMA_VOXELS:  # the blur's kernel would not fit in memory
        raise ValueError(f"sigma_mm = {sigma_mm:g} mm is {sigma_mm / min(spacing):.3g} voxels of "
                         f"{min(spacing):.3g} mm (at most {MAX_SIGMA_VOXELS:g}); check the voxel size "
                         "(a header in the wrong unit?)")
    if all(h.all() for h in hits) and mask.all():  # (the full test only when every plane holds some)
        # its blur is constant: the gradient is float round-off, which normalising would blow up
        raise ValueError("the selected structure fills the whole image: it has no boundary to move (is 0 the "
                         "background of this label map? select fewer labels)")
    dev = resolve_device(device)
    sigma_vox = [sigma_mm / s for s in spacing]
    radius = [int(TRUNCATE * s + 0.5) for s in sigma_vox]
    lo, hi = _extent(hits)  # the structure's box
    roi = tuple(slice(max(0, a - r - 2), min(n, b + r + 2)) for a, b, r, n in zip(lo, hi, radius, mask.shape))
    # where the structure is cut by the volume's edge it continues across it (the blur extends the
    # mask with its edge values): one more plane of that continuation makes the derivative on the
    # edge plane the central difference of the continued structure, as it is everywhere else
    ext = [(int(n > 1 and a == 0), int(n > 1 and b == n)) for a, b, n in zip(lo, hi, mask.shape)]
    shape = tuple(r.stop - r.start + e0 + e1 for r, (e0, e1) in zip(roi, ext))  # the ROI with the continuation
    box = tuple(b - a + e0 + e1 for a, b, (e0, e1) in zip(lo, hi, ext))  # the structure's box, continued
    first = [a - r.start for a, r in zip(lo, roi)]  # the box in the extended ROI (a cut box starts at 0)
    # one buffer holds every step, so that fresh memory is touched once (its first touch is the
    # set-up's largest cost), not once per intermediate: the box as float and pass 2 at its front,
    # pass 1 and then the blurred ROI from ``at``; then the gradient's lengths and the field at its
    # front, which, written plane by plane, stays behind the blurred planes still to be read (see
    # _unit_from_blurred); what the field does not cover is given back
    volume = math.prod(r.stop - r.start for r in roi)
    pass1, pass2, padded = _blur_sizes(box, shape)
    at = -(-max(2 * volume + shape[1] * shape[2], pass2, math.prod(box)) // 1024) * 1024  # 4 KiB-aligned
    arena, release = _arena(at + max(pass1, padded), dev)
    values = arena[: math.prod(box)].view(box)
    inner = tuple(slice(e0, n - e1) for n, (e0, e1) in zip(box, ext))
    values[inner].copy_(shared_tensor(mask[tuple(slice(a, b) for a, b in zip(lo, hi))]))  # 0 and 1
    for axis, (e0, e1) in enumerate(ext):  # the continuation: the edge plane repeated (np.pad's "edge")
        n = box[axis]
        if e0:
            values.narrow(axis, 0, 1).copy_(values.narrow(axis, 1, 1))
        if e1:
            values.narrow(axis, n - 1, 1).copy_(values.narrow(axis, n - 2, 1))
    blurred = _blur_box(values, shape, first, sigma_vox, TRUNCATE, "nearest", into=(arena[at:], arena, arena[at:]))
    # the blurred mask is exactly 0 farther than the blur's radius from the structure along an
    # axis, so its gradient is exactly 0 farther than radius + 1: per Z plane of the structure's
    # box, its rows and columns (the continuation included) bound where the gradient can be non-zero
    piece = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
    reach = _Reach(first, [r + 1 for r in radius], np.pad(piece.any(axis=2), ext[:2], mode="edge"),
                   np.pad(piece.any(axis=1), (ext[0], ext[2]), mode="edge"))
    field = _unit_from_blurred(blurred, tuple(mask.shape), spacing, roi, ext, arena, reach)
    release(field.mm.numel())
    return field


@dataclass(frozen=True)
class _Reach:
    """Where the gradient of a blurred box can be non-zero: ``first``, the box's first voxel in the
    blurred volume; ``step``, the blur's radius + 1 per axis; ``rows`` (box Z, box Y) and ``cols``
    (box Z, box X), whether the box holds a voxel of the structure there."""

    first: Sequence[int]
    step: Sequence[int]
    rows: np.ndarray
    cols: np.ndarray

    def window(self, z0: int, z1: int, ys: slice, xs: slice) -> tuple[slice, slice] | None:
        """The rows and columns, within ``ys`` and ``xs``, of planes ``z0:z1`` of the blurred
        volume outside which the gradient is 0 (None: 0 on all of them)."""
        a, b = max(0, z0 - self.step[0] - self.first[0]), max(0, z1 + self.step[0] - self.first[0])
        y, x = np.flatnonzero(self.rows[a:b].any(0)), np.flatnonzero(self.cols[a:b].any(0))
        if not y.size:
            return None
        y0 = max(ys.start, int(y[0]) + self.first[1] - self.step[1])
        y1 = min(ys.stop, int(y[-1]) + 1 + self.first[1] + self.step[1])
        x0 = max(xs.start, int(x[0]) + self.first[2] - self.step[2])
        x1 = min(xs.stop, int(x[-1]) + 1 + self.first[2] + self.step[2])
        return (slice(y0, y1), slice(x0, x1)) if y1 > y0 and x1 > x0 else None


def _slab_gradient(blurred: torch.Tensor, z0: int, z1: int, spacing: Spacing, ys: slice, xs: slice,
                   buf: torch.Tensor) -> torch.Tensor:
    """Planes ``z0:z1``, rows ``ys`` and columns ``xs`` of ``spatial_gradient(blurred, spacing)``
    (the same numbers: the differences read one voxel beyond the window where there is one),
    computed into the front of ``buf``: (3, z1 - z0, rows, columns)."""
    height, width = blurred.shape[1:]
    ya, yb, xa, xb = max(0, ys.start - 1), min(height, ys.stop + 1), max(0, xs.start - 1), min(width, xs.stop + 1)
    around = blurred[:, ya:yb, xa:xb]
    g = buf[: 3 * (z1 - z0) * (yb - ya) * (xb - xa)].view(3, z1 - z0, yb - ya, xb - xa)
    z_derivative(around, z0, z1, spacing[0], out=g[0])
    derivative(around[z0:z1], 1, spacing[1], out=g[1])
    derivative(around[z0:z1], 2, spacing[2], out=g[2])
    return g[:, :, ys.start - ya : ys.stop - ya, xs.start - xa : xs.stop - xa]


def _unit_from_blurred(blurred: torch.Tensor, full: tuple[int, int, int], spacing: Spacing,
                       roi: tuple[slice, slice, slice], ext: Sequence[tuple[int, int]],
                       arena: torch.Tensor, reach: _Reach) -> UnitField:
    """The unit field from the blurred mask over ``roi`` (extended by the ``ext`` planes, which the
    field does not hold): ``UnitField(full, spacing, roi, G).normalised()`` for ``G`` the gradient
    of ``blurred`` without the ``ext`` planes, the same numbers without ``G`` in memory.

    Two passes over slabs of Z planes whose gradient stays in cache: the first keeps the lengths
    (for the largest one and the support), the second computes the gradient again and writes it,
    scaled, straight into the field of the support's box. ``arena``: a flat tensor whose front
    holds the lengths and then the field; ``blurred`` may lie in it from element ``2 * V + H * W``
    on (V: the ROI's voxels, H * W: a plane of ``blurred``): the field's planes are written behind
    the last one read. ``reach`` bounds, per slab, the rows and columns computed (0 elsewhere)."""
    (z_lo, z_hi), (y_lo, y_hi), (x_lo, x_hi) = ext
    depth = blurred.shape[0] - z_lo - z_hi
    plane = int(blurred.shape[1] * blurred.shape[2])
    slab = max(1, GRADIENT_SLAB // max(1, plane))
    buf = blurred.new_empty(3 * min(slab, depth) * plane)
    squares = blurred.new_empty(min(slab, depth) * plane)
    dims = (depth,) + tuple(s.stop - s.start for s in roi[1:])
    norm = arena[: math.prod(dims)].view(dims)
    rows, cols = slice(y_lo, blurred.shape[1] - y_hi), slice(x_lo, blurred.shape[2] - x_hi)  # the ROI's
    peak = 0.0
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        n = norm[z0:z1]
        window = reach.window(z0 + z_lo, z1 + z_lo, rows, cols)
        if window is None:
            n.zero_()
            continue
        g = _slab_gradient(blurred, z0 + z_lo, z1 + z_lo, spacing, *window, buf)
        # _length, on contiguous memory as before (torch's sqrt may round otherwise elsewhere)
        sq = squares[: g[0].numel()].view(g.shape[1:])
        torch.mul(g[0], g[0], out=sq).addcmul_(g[1], g[1]).addcmul_(g[2], g[2]).sqrt_()
        peak = max(peak, float(sq.max()))  # NaN-free: the mask is 0/1
        if sq.shape != n.shape:
            n.zero_()
        n[:, window[0].start - y_lo : window[0].stop - y_lo, window[1].start - x_lo : window[1].stop - x_lo] = sq
    if not math.isfinite(peak) or peak <= 0.0:
        raise ValueError("the displacement field is zero everywhere: nothing would move")
    keep = _empty(norm.shape, torch.bool, norm.device)
    torch.ge(norm, NEGLIGIBLE * peak, out=keep)
    del norm
    lo, hi = _bounding_box(keep)
    # keep one voxel of zeros around the support so that finite differences see the edge
    lo = [max(0, a - 1) for a in lo]
    hi = [min(n, b + 1) for n, b in zip(keep.shape, hi)]
    inner = tuple(slice(a, b) for a, b in zip(lo, hi))
    box = tuple(slice(r.start + s.start, r.start + s.stop) for r, s in zip(roi, inner))
    keep = keep[inner]
    dims = (3,) + tuple(keep.shape)
    mm = arena[: math.prod(dims)].view(dims)
    rows, cols = (slice(s.start + e, s.stop + e) for s, e in zip(inner[1:], (y_lo, x_lo)))  # in ``blurred``
    for z0 in range(lo[0], hi[0], slab):
        z1 = min(hi[0], z0 + slab)
        out = mm[:, z0 - lo[0] : z1 - lo[0]]
        window = reach.window(z0 + z_lo, z1 + z_lo, rows, cols)
        if window is None:
            out.zero_()
            continue
        g = _slab_gradient(blurred, z0 + z_lo, z1 + z_lo, spacing, *window, buf)
        part = (slice(z0 - lo[0], z1 - lo[0]),) + tuple(slice(w.start - r.start, w.stop - r.start)
                                                         for w, r in zip(window, (rows, cols)))
        scale = keep[part] / peak
        if scale.shape != out.shape[1:]:
            out.zero_()
        for c in range(3):
            torch.mul(g[c], scale, out=out[(c,) + (slice(None),) + part[1:]])
    # a kept voxel's length is >= NEGLIGIBLE: no component of it underflows to all zeros
    return UnitField(full, spacing, box, mm, support=keep.contiguous())


# --------------------------------------------------------------------------------------------
# Kinds (LAUGEN Figure 1): each re-weights the unit field and renormalises it to 1 mm.


class Kind:
    """A way of shaping the unit field. Subclasses implement :meth:`weight`."""

    name = "kind"

    def weight(self, field: UnitField) -> torch.Tensor | None:
        """Per-voxel weight (d, h, w) inside ``field.roi``; None means 1 everywhere."""
        return None

    def apply(self, field: UnitField) -> UnitField:
        """The shaped field, renormalised so that its largest displacement is 1 mm."""
        w = self.weight(field)
        if w is None:
            return field
        shaped = UnitField(field.shape, field.spacing, field.roi, field.mm * w.unsqueeze(0))
        try:
            return shaped._normalise(in_place=True)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {self._empty_message()}") from exc

    def _empty_message(self) -> str:
        return "the shaped field is zero everywhere"

    def params(self) -> dict:
        """Parameters for provenance (JSON-serialisable)."""
        return {}


class Uniform(Kind):
    """The whole boundary moves: the unit field as is."""

    name = "uniform"


class Directional(Kind):
    """Only the side of the boundary that faces ``direction`` moves; the far side stays put.

    The field is weighted by the positive part of (outward normal · direction), where the outward
    normal is the unit vector opposite to the field.

    Args:
        direction: (z, y, x) vector in the array's mm frame (need not be unit length).
    """

    name = "directional"

    def __init__(self, direction: Sequence[float]):
        d = np.asarray(direction, dtype=np.float64)
        if d.shape != (3,) or not np.all(np.isfinite(d)) or np.linalg.norm(d) == 0:
            raise ValueError(f"direction must be three finite numbers, not all zero; got {list(direction)}")
        self.direction = d / np.linalg.norm(d)

    def weight(self, field: UnitField) -> torch.Tensor:
        d = torch.as_tensor(self.direction, dtype=field.mm.dtype, device=field.device).view(3, 1, 1, 1)
        norm = _length(field.mm).clamp_min(1e-12)
        outward_dot = -(field.mm * d).sum(0) / norm
        return outward_dot.clamp_min(0.0)

    def _empty_message(self) -> str:
        return "no part of the boundary faces that direction"

    def params(self) -> dict:
        return {"direction_zyx": [float(v) for v in self.direction]}


class Gaussian(Kind):
    """One localised growth: the field weighted by a Gaussian around ``center``.

    Args:
        center: (z, y, x) position in voxel indices of the volume.
        spread_mm: standard deviation of the weight in mm.
        truncate: the weight is zero beyond ``truncate * spread_mm`` from the centre.
    """

    name = "gaussian"

    def __init__(self, center: Sequence[float], spread_mm: float = 10.0, truncate: float = 3.0):
        c = np.asarray(center, dtype=np.float64)
        if c.shape != (3,) or not np.all(np.isfinite(c)):
            raise ValueError(f"center must be three finite voxel indices (z, y, x); got {list(center)}")
        if not (math.isfinite(spread_mm) and spread_mm > 0):
            raise ValueError(f"spread_mm must be a positive finite number, got {spread_mm}")
        self.center = c
        self.spread_mm = float(spread_mm)
        self.truncate = float(truncate)

    def weight(self, field: UnitField) -> torch.Tensor:
        dev, dt = field.device, field.mm.dtype
        axes = []
        for r, c, s in zip(field.roi, self.center, field.spacing):
            axes.append((torch.arange(r.start, r.stop, device=dev, dtype=dt) - float(c)) * float(s))
        gz, gy, gx = torch.meshgrid(*axes, indexing="ij")
        r2 = gz**2 + gy**2 + gx**2
        w = torch.exp(-0.5 * r2 / self.spread_mm**2)
        return torch.where(r2 <= (self.truncate * self.spread_mm) ** 2, w, torch.zeros_like(w))

    def _empty_message(self) -> str:
        return (
            f"the structure's boundary is farther than {self.truncate:g} x spread "
            f"({self.truncate * self.spread_mm:g} mm) from the centre {self.center.tolist()}"
        )

    def params(self) -> dict:
        return {"center_zyx": [float(v) for v in self.center], "spread_mm": self.spread_mm}


KINDS = ("uniform", "directional", "gaussian")


def make_kind(name: str, direction: Sequence[float] | None = None, center: Sequence[float] | None = None,
              spread_mm: float = 10.0) -> Kind:
    """Build a kind by name; ``direction`` (z, y, x) for directional, ``center`` (z, y, x voxels)
    and ``spread_mm`` for gaussian."""
    if name == "uniform":
        return Uniform()
    if name == "directional":
        if direction is None:
            raise ValueError("kind 'directional' needs a direction")
        return Directional(direction)
    if name == "gaussian":
        if center is None:
            raise ValueError("kind 'gaussian' needs a centre")
        return Gaussian(center, spread_mm)
    raise ValueError(f"unknown kind {name!r}; choose one of {', '.join(KINDS)}")
