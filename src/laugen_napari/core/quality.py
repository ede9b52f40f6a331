"""Quality of a series: label volumes, Jacobian determinant of the warp, difference maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import native
from .field import UnitField, _empty, derivative, z_derivative


def label_volumes_ml(labels: np.ndarray | torch.Tensor, spacing: Sequence[float], values: Sequence[int]) -> dict[int, float]:
    """Volume in mL of each label in ``values`` in a (Z, Y, X) label map with ``spacing`` in mm."""
    lab = torch.as_tensor(labels)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {int(v): float(torch.count_nonzero(lab == int(v))) * voxel_ml for v in values}


class JacobianStats:
    """Jacobian determinant of x -> x + z * F(x) for any magnitude z (mm), from one field.

    det(I + z G) = 1 + z c1 + z^2 c2 + z^3 c3 with G = dF/dx (per mm), c1 = tr G, c2 = the sum of
    G's principal 2x2 minors and c3 = det G, so the coefficients are computed once and every frame
    costs one polynomial evaluation. Outside the field's ROI the determinant is 1.
    """

    def __init__(self, field: UnitField, slab: int | None = None):
        # computed in slabs of ``slab`` planes along Z (default: about 2^18 voxels, measured
        # fastest), so that the nine derivative arrays and the products stay near the core; the Z
        # derivative of a slab reads the planes next to it straight from the field (no halo copies)
        mm = field.mm
        depth, height, width = (int(n) for n in mm.shape[1:])
        if slab is None:
            slab = max(1, (1 << 18) // max(1, height * width))
        hz, hy, hx = (float(h) for h in field.spacing)
        # dF/dx is zero but next to the field's support: per slab only the box of the support in
        # its planes and the planes next to it, grown by 2 voxels (at the box's edge the one-sided
        # difference then reads zeros as the central one would), is computed
        support = field.moving()
        if support.device.type == "cpu":
            m = support.numpy()
            rows, cols = m.any(axis=2), m.any(axis=1)  # (D, H), (D, W)
        else:
            rows, cols = support.any(2).cpu().numpy(), support.any(1).cpu().numpy()
        boxes = []
        for z0 in range(0, depth, slab):
            z1 = min(depth, z0 + slab)
            ys = np.flatnonzero(rows[max(0, z0 - 1) : z1 + 1].any(0))
            xs = np.flatnonzero(cols[max(0, z0 - 1) : z1 + 1].any(0))
            if ys.size:
                boxes.append((z0, z1, slice(max(0, int(ys[0]) - 2), min(height, int(ys[-1]) + 3)),
                              slice(max(0, int(xs[0]) - 2), min(width, int(xs[-1]) + 3))))
        sizes = [(z1 - z0) * (y.stop - y.start) * (x.stop - x.start) for z0, z1, y, x in boxes]
        # the kept coefficients go straight into one buffer, at most every voxel of the boxes (the
        # part never written is never touched, so it takes no memory)
        coef = _empty((3, sum(sizes)), mm.dtype, mm.device)
        self.n_total = int(np.prod(field.shape))
        self.n_roi = int(mm[0].numel())
        lib = native.library() if mm.device.type == "cpu" and mm.dtype == torch.float32 and mm.is_contiguous() \
            and boxes else None
        if lib is not None:  # one compiled pass over the boxes: the same numbers, no temporaries
            table = np.array([(z0, z1, y.start, y.stop, x.start, x.stop) for z0, z1, y, x in boxes], np.int64)
            shape = np.array(mm.shape[1:], np.int64)
            h = np.array([hz, hy, hx], np.float32)  # torch rounds a Python float divisor to float32
            h2 = np.array([2.0 * hz, 2.0 * hy, 2.0 * hx], np.float32)
            at = int(lib.laugen_jacobian(mm.data_ptr(), shape.ctypes.data, table.ctypes.data, len(boxes),
                                         h.ctypes.data, h2.ctypes.data, coef.data_ptr(), coef.shape[1]))
            if at < 0:
                raise RuntimeError("the compiled Jacobian pass overran its buffer")
            self.c1, self.c2, self.c3 = coef[0, :at], coef[1, :at], coef[2, :at]
            return
        grads = mm.new_empty(9 * max(sizes, default=0))
        at = 0
        for (z0, z1, ys, xs), n in zip(boxes, sizes):
            box = mm[:, :, ys, xs]
            g9 = grads[: 9 * n].view((3, 3, z1 - z0, ys.stop - ys.start, xs.stop - xs.start))  # [axis][comp]
            for i in range(3):
                z_derivative(box[i], z0, z1, hz, out=g9[0, i])
            derivative(box[:, z0:z1], 2, hy, out=g9[1])  # Y of the three components at once
            derivative(box[:, z0:z1], 3, hx, out=g9[2])
            g = [[g9[a, i] for a in range(3)] for i in range(3)]  # g[comp][axis]
            c1 = g[0][0] + g[1][1] + g[2][2]
            m0 = (g[1][1] * g[2][2]).sub_(g[1][2] * g[2][1])
            m1 = (g[0][0] * g[2][2]).sub_(g[0][2] * g[2][0])
            c2 = (g[0][0] * g[1][1]).sub_(g[0][1] * g[1][0]).add_(m1).add_(m0)
            c3 = (g[0][0] * m0).sub_(g[0][1] * (g[1][0] * g[2][2]).sub_(g[1][2] * g[2][0])).add_(
                g[0][2] * (g[1][0] * g[2][1]).sub_(g[1][1] * g[2][0]))
            # where dF/dx = 0 the determinant is 1 for every z: keep only the other voxels
            keep = c1 != 0
            keep |= c2 != 0
            keep |= c3 != 0
            idx = torch.nonzero(keep.view(-1)).squeeze(1)
            k = int(idx.numel())
            for row, c in zip(coef, (c1, c2, c3)):
                torch.index_select(c.view(-1), 0, idx, out=row[at : at + k])
            at += k
        self.c1, self.c2, self.c3 = coef[0, :at], coef[1, :at], coef[2, :at]

    def determinant(self, z_mm: float) -> torch.Tensor:
        """Determinant for magnitude ``z_mm`` at every voxel where the field varies (flattened);
        it is 1 everywhere else."""
        z = float(z_mm)
        return 1.0 + z * (self.c1 + z * (self.c2 + z * self.c3))

    def summary(self, z_mm: float) -> tuple[float, float]:
        """(lowest determinant over the volume, fraction of its voxels with determinant <= 0).

        The numbers of :meth:`determinant` in one buffer: with d = det - 1 = z (c1 + z (c2 + z c3))
        (the same roundings), min(det) = 1 + min(d) (rounding is monotonic) and det <= 0 exactly
        when d <= -1 (1 + d is exact there)."""
        z = float(z_mm)
        if z == 0.0 or not self.c1.numel():
            return 1.0, 0.0
        compiled = native.det_summary(self.c1, self.c2, self.c3, z)  # one pass, the same numbers
        if compiled is not None:
            low_d, folded = compiled
            low = float(torch.tensor(low_d, dtype=self.c1.dtype).add_(1.0))  # float32, as det
        else:
            d = torch.mul(self.c3, z).add_(self.c2).mul_(z).add_(self.c1).mul_(z)
            low = float(d.min().add_(1.0))
            folded = int(torch.count_nonzero(d <= -1.0))  # a bool sum() is 8x slower
        if self.c1.numel() < self.n_total:
            low = min(low, 1.0)
        return low, float(folded) / self.n_total

    def minimum(self, z_mm: float) -> float:
        """Lowest determinant over the volume (1 where nothing moves)."""
        return self.summary(z_mm)[0]

    def folded_fraction(self, z_mm: float) -> float:
        """Fraction of the volume's voxels where the warp folds (determinant <= 0)."""
        return self.summary(z_mm)[1]


def difference_maps(frames: np.ndarray | torch.Tensor, reference: str = "first") -> np.ndarray | torch.Tensor:
    """Difference maps of a series (T, ...): ``"first"`` gives I_t - I_0, ``"previous"`` gives
    I_t - I_{t-1} (with frame 0 giving zeros)."""
    if reference == "first":
        return frames - frames[:1]
    if reference == "previous":
        prev = torch.cat([frames[:1], frames[:-1]]) if isinstance(frames, torch.Tensor) else np.concatenate([frames[:1], frames[:-1]])
        return frames - prev
    raise ValueError(f"reference must be 'first' or 'previous', got {reference!r}")
