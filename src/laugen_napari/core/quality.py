"""Quality of a series: label volumes, Jacobian determinant of the warp, difference maps."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .field import UnitField, spatial_gradient


def label_volumes_ml(labels: np.ndarray | torch.Tensor, spacing: Sequence[float], values: Sequence[int]) -> dict[int, float]:
    """Volume in mL of each label in ``values`` in a (Z, Y, X) label map with ``spacing`` in mm."""
    lab = torch.as_tensor(labels)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {int(v): float((lab == int(v)).sum()) * voxel_ml for v in values}


class JacobianStats:
    """Jacobian determinant of x -> x + z * F(x) for any magnitude z (mm), from one field.

    det(I + z G) = 1 + z c1 + z^2 c2 + z^3 c3 with G = dF/dx (per mm), c1 = tr G, c2 = the sum of
    G's principal 2x2 minors and c3 = det G, so the coefficients are computed once and every frame
    costs one polynomial evaluation. Outside the field's ROI the determinant is 1.
    """

    def __init__(self, field: UnitField, slab: int = 4):
        # computed in slabs of ``slab`` planes along Z (plus one plane of halo on each side for the
        # derivatives), so that the nine derivative arrays and the products stay in cache
        mm = field.mm
        depth = mm.shape[1]
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for z0 in range(0, depth, slab):
            z1 = min(depth, z0 + slab)
            a, b = max(0, z0 - 1), min(depth, z1 + 1)
            inner = slice(z0 - a, z1 - a)
            g = [spatial_gradient(mm[i, a:b], field.spacing)[:, inner] for i in range(3)]  # g[comp][axis]
            c1 = g[0][0] + g[1][1] + g[2][2]
            c2 = (g[0][0] * g[1][1] - g[0][1] * g[1][0]) + (g[0][0] * g[2][2] - g[0][2] * g[2][0]) + (
                g[1][1] * g[2][2] - g[1][2] * g[2][1]
            )
            c3 = (
                g[0][0] * (g[1][1] * g[2][2] - g[1][2] * g[2][1])
                - g[0][1] * (g[1][0] * g[2][2] - g[1][2] * g[2][0])
                + g[0][2] * (g[1][0] * g[2][1] - g[1][1] * g[2][0])
            )
            # where dF/dx = 0 the determinant is 1 for every z: keep only the other voxels
            keep = (c1 != 0) | (c2 != 0) | (c3 != 0)
            parts.append((c1[keep], c2[keep], c3[keep]))
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
        """(lowest determinant over the volume, fraction of its voxels with determinant <= 0)."""
        det = self.determinant(z_mm)
        low = float(det.min()) if det.numel() else 1.0
        if det.numel() < self.n_total:
            low = min(low, 1.0)
        return low, float((det <= 0).sum()) / self.n_total

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
