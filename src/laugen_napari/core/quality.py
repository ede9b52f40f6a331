"""Quality of a series: label volumes, Jacobian determinant of the warp, difference maps."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .field import UnitField, derivative


def label_volumes_ml(labels: np.ndarray | torch.Tensor, spacing: Sequence[float], values: Sequence[int]) -> dict[int, float]:
    """Volume in mL of each label in ``values`` in a (Z, Y, X) label map with ``spacing`` in mm."""
    lab = torch.as_tensor(labels)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {int(v): float(torch.count_nonzero(lab == int(v))) * voxel_ml for v in values}


def _z_derivative(volume: torch.Tensor, z0: int, z1: int, h: float) -> torch.Tensor:
    """Planes ``z0:z1`` of :func:`~laugen_napari.core.field.derivative` of ``volume`` (D, H, W) along Z,
    reading the planes next to the slab from ``volume`` (central inside, one-sided at the ends)."""
    depth = volume.shape[0]
    out = volume.new_empty((z1 - z0,) + tuple(volume.shape[1:]))
    if depth < 2:
        return out.zero_()
    a, b = max(z0, 1), min(z1, depth - 1)  # planes with a neighbour on both sides
    if b > a:
        torch.sub(volume[a + 1 : b + 1], volume[a - 1 : b - 1], out=out[a - z0 : b - z0]).div_(2.0 * h)
    if z0 == 0:
        torch.sub(volume[1], volume[0], out=out[0]).div_(h)
    if z1 == depth:
        torch.sub(volume[depth - 1], volume[depth - 2], out=out[depth - 1 - z0]).div_(h)
    return out


class JacobianStats:
    """Jacobian determinant of x -> x + z * F(x) for any magnitude z (mm), from one field.

    det(I + z G) = 1 + z c1 + z^2 c2 + z^3 c3 with G = dF/dx (per mm), c1 = tr G, c2 = the sum of
    G's principal 2x2 minors and c3 = det G, so the coefficients are computed once and every frame
    costs one polynomial evaluation. Outside the field's ROI the determinant is 1.
    """

    def __init__(self, field: UnitField, slab: int | None = None):
        # computed in slabs of ``slab`` planes along Z (default: about 2^17 voxels), so that the
        # nine derivative arrays and the products stay in cache; the Z derivative of a slab reads
        # the planes next to it straight from the field (no halo copies)
        mm = field.mm
        depth, plane = mm.shape[1], int(mm[0, 0].numel())
        if slab is None:
            slab = max(1, (1 << 17) // max(1, plane))
        hz = float(field.spacing[0])
        # dF/dx is zero but next to the field's support: per slab only the box of the support in
        # its planes and the planes next to it, grown by 2 voxels (at the box's edge the one-sided
        # difference then reads zeros as the central one would), is computed
        support = field.moving()
        if support.device.type == "cpu":
            m = support.numpy()
            rows, cols = np.count_nonzero(m, axis=2) > 0, m.any(axis=1)  # (D, H), (D, W)
        else:
            rows, cols = support.any(2).cpu().numpy(), support.any(1).cpu().numpy()
        height, width = mm.shape[2], mm.shape[3]
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for z0 in range(0, depth, slab):
            z1 = min(depth, z0 + slab)
            ys = np.flatnonzero(rows[max(0, z0 - 1) : z1 + 1].any(0))
            xs = np.flatnonzero(cols[max(0, z0 - 1) : z1 + 1].any(0))
            if not ys.size:
                continue
            box = mm[:, :, max(0, int(ys[0]) - 2) : min(height, int(ys[-1]) + 3),
                     max(0, int(xs[0]) - 2) : min(width, int(xs[-1]) + 3)]
            g = [[_z_derivative(box[i], z0, z1, hz)] + [derivative(box[i, z0:z1], axis, field.spacing[axis])
                                                       for axis in (1, 2)] for i in range(3)]  # g[comp][axis]
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
            parts.append(tuple(c.view(-1).index_select(0, idx) for c in (c1, c2, c3)))
        self.n_total = int(np.prod(field.shape))
        self.n_roi = int(mm[0].numel())
        empty = mm.new_zeros(0)
        self.c1, self.c2, self.c3 = (torch.cat([p[k] for p in parts]) if parts else empty for k in range(3))

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
        d = torch.mul(self.c3, z).add_(self.c2).mul_(z).add_(self.c1).mul_(z)
        low = float(d.min().add_(1.0))  # float32, as det
        if d.numel() < self.n_total:
            low = min(low, 1.0)
        return low, float(torch.count_nonzero(d <= -1.0)) / self.n_total  # a bool sum() is 8x slower

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
