"""Warping an image and its label map by z * F, only where the field moves anything.

Every frame is warped from the original with the displacement ``z_t * F`` (never frame from frame,
which would blur). Because F is exactly zero outside its ROI, and mostly zero inside it, only the
"moving" voxels (F != 0) are resampled; every other voxel is copied. Images are sampled
trilinearly, label maps by nearest neighbour, samples outside the volume take the nearest edge
value. The same field moves every channel and every label.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .field import UnitField


def _as_channels(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(image)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"image must be (Z, Y, X) or (C, Z, Y, X), got shape {tuple(t.shape)}")
    return t


class Warper:
    """Resamples an image (C, Z, Y, X) and a label map (Z, Y, X) for any magnitude z (mm).

    Args:
        field: the (unit) displacement field.
        image: the original image, (Z, Y, X) or (C, Z, Y, X); converted to float32.
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
    ):
        if label_interpolation not in ("linear", "nearest"):
            raise ValueError(f"label_interpolation must be 'linear' or 'nearest', got {label_interpolation!r}")
        self.label_interpolation = label_interpolation
        dev = field.device
        img = _as_channels(image)
        if tuple(img.shape[1:]) != tuple(field.shape):
            raise ValueError(f"image shape {tuple(img.shape[1:])} differs from the field's {field.shape}")
        self.field = field
        self.single_channel = torch.as_tensor(image).ndim == 3
        self.image = img.to(device=dev, dtype=torch.float32).contiguous()
        self.labels = None
        if labels is not None:
            lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
            if tuple(lab.shape) != tuple(field.shape):
                raise ValueError(f"label map shape {tuple(lab.shape)} differs from the field's {field.shape}")
            self.labels = lab.to(dev).contiguous()
            cells = [max(n - 1, 1) for n in lab.shape]
            self._cell_shape = torch.tensor(cells, device=dev)
            self._cells_box: tuple[list[int], list[int]] | None = None  # computed on demand
        shape = torch.tensor(field.shape, device=dev)
        self._shape = shape
        # moving voxels: integer positions (P, 3) and displacement in voxels (P, 3)
        disp = field.voxels()
        moving = disp.abs().sum(0) > 0
        local = torch.nonzero(moving)
        offset = torch.tensor([r.start for r in field.roi], device=dev)
        self.positions = local + offset
        self.displacement = disp[:, moving].T.contiguous()
        self._positions_f = self.positions.to(torch.float32)
        strides = torch.tensor([field.shape[1] * field.shape[2], field.shape[2], 1], device=dev)
        self.flat_index = (self.positions * strides).sum(1)
        self._strides = strides
        # grid normalisation for grid_sample with align_corners=True; axes of size 1 map to 0
        n = shape.to(torch.float32)
        self._scale = torch.where(n > 1, 2.0 / (n - 1).clamp_min(1), torch.zeros_like(n))

    @property
    def n_moving(self) -> int:
        """Number of voxels the field moves."""
        return int(self.positions.shape[0])

    # -- sampling at the moving voxels -------------------------------------------------------
    def _coords(self, z_mm: float, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            cached = getattr(self, "_last_coords", None)
            if cached is not None and cached[0] == float(z_mm):
                return cached[1]
            coords = self._positions_f + float(z_mm) * self.displacement
            self._last_coords = (float(z_mm), coords)
            return coords
        pos = self.positions if rows is None else self.positions[rows]
        disp = self.displacement if rows is None else self.displacement[rows]
        return pos.to(torch.float32) + float(z_mm) * disp

    def _sample_image(self, coords: torch.Tensor) -> torch.Tensor:
        """Trilinear samples (C, P) of the image at voxel coordinates (P, 3) (z, y, x)."""
        if coords.shape[0] == 0:
            return self.image.new_zeros((self.image.shape[0], 0))
        grid = (coords * self._scale - (self._scale > 0).to(coords.dtype)).flip(-1)  # (x, y, z) order
        out = F.grid_sample(
            self.image.unsqueeze(0), grid.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border", align_corners=True
        )
        return out.view(self.image.shape[0], -1)

    def _sample_labels(self, coords: torch.Tensor) -> torch.Tensor:
        """Label samples (P,) at voxel coordinates (P, 3), nearest or one-hot linear."""
        if self.label_interpolation == "nearest":
            idx = torch.floor(coords + 0.5).long()
            idx = torch.minimum(idx.clamp_min(0), self._shape - 1)
            return self.labels.reshape(-1)[(idx * self._strides).sum(1)]
        # one-hot linear + argmax without building the one-hot volume: a label's interpolated
        # indicator is the summed trilinear weight of the corners that carry it, so the winner is
        # the corner label with the largest such sum. Cells whose 8 corners agree need no vote.
        c = torch.minimum(coords.clamp_min(0), (self._shape - 1).to(coords.dtype))
        lo = torch.minimum(torch.floor(c).long(), self._cell_shape - 1)
        flat = self.labels.reshape(-1)
        out = flat[(lo * self._strides).sum(1)]
        if lo.shape[0] == 0:
            return out
        box_lo = self._ensure_cells(lo.min(0).values.tolist(), lo.max(0).values.tolist())
        local = ((lo - box_lo) * self._cell_strides).sum(1)
        mixed = torch.nonzero(~self._uniform_cells.reshape(-1)[local]).squeeze(1)
        if mixed.numel():
            out[mixed] = self._vote(flat, c[mixed], lo[mixed])
        return out

    def _vote(self, flat: torch.Tensor, c: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        frac = c - lo
        hi = torch.minimum(lo + 1, self._shape - 1)
        corner_labels, corner_weights = [], []
        for corner in range(8):
            bits = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
            ix = torch.stack([hi[:, a] if b else lo[:, a] for a, b in enumerate(bits)], 1)
            w = torch.ones_like(frac[:, 0])
            for a, b in enumerate(bits):
                w = w * (frac[:, a] if b else 1 - frac[:, a])
            corner_labels.append(flat[(ix * self._strides).sum(1)])
            corner_weights.append(w)
        labels = torch.stack(corner_labels, 1)
        weights = torch.stack(corner_weights, 1)
        best_score = torch.full_like(weights[:, 0], -1.0)
        best = labels[:, 0].clone()
        for k in range(8):
            score = (weights * (labels == labels[:, k : k + 1])).sum(1)
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best = torch.where(better, labels[:, k], best)
        return best

    def _ensure_cells(self, lo: list[int], hi: list[int]) -> torch.Tensor:
        """Make sure the single-label flags cover cells ``lo..hi`` (inclusive); returns the box start.

        Only the cells around the moving voxels are ever looked up, so the flags are computed for
        that box (grown when a larger magnitude reaches farther), not for the whole volume.
        """
        box = self._cells_box
        if box is None or any(a < b for a, b in zip(lo, box[0])) or any(a > b for a, b in zip(hi, box[1])):
            cells = self._cell_shape.tolist()
            margin = 4  # voxels: small magnitude changes need no recomputation
            if box is not None:
                lo = [min(a, b) for a, b in zip(lo, box[0])]
                hi = [max(a, b) for a, b in zip(hi, box[1])]
            lo = [max(0, a - margin) for a in lo]
            hi = [min(n - 1, b + margin) for n, b in zip(cells, hi)]
            self._init_cells(lo, hi)
        return self._cells_start

    def _init_cells(self, lo: list[int], hi: list[int]) -> None:
        """Which interpolation cells (voxel + its +1 neighbours) in the box lo..hi carry one label."""
        lab = self.labels
        size = [b - a + 1 for a, b in zip(lo, hi)]
        base = lab[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]]
        uniform = torch.ones_like(base, dtype=torch.bool)
        for corner in range(1, 8):
            bits = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
            off = [a + (b if n > 1 else 0) for a, b, n in zip(lo, bits, lab.shape)]
            uniform &= lab[off[0] : off[0] + size[0], off[1] : off[1] + size[1], off[2] : off[2] + size[2]] == base
        self._uniform_cells = uniform.contiguous()
        self._cells_box = (lo, hi)
        self._cells_start = torch.tensor(lo, device=lab.device)
        self._cell_strides = torch.tensor([size[1] * size[2], size[2], 1], device=lab.device)

    # -- whole frames ------------------------------------------------------------------------
    def image_frame(self, z_mm: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """The image warped by ``z_mm * F``: (C, Z, Y, X), or (Z, Y, X) for a 3D input.

        ``out``, if given, is a float32 tensor of that shape on the warper's device to fill.
        """
        if out is None:
            out = self.image.clone()
        else:
            out.view_as(self.image).copy_(self.image)
        if z_mm != 0.0:
            flat = out.view(self.image.shape[0], -1)
            flat[:, self.flat_index] = self._sample_image(self._coords(z_mm))
        return out[0] if self.single_channel and out.ndim == 4 else out

    def label_frame(self, z_mm: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """The label map warped by ``z_mm * F`` (nearest neighbour), (Z, Y, X); ``out`` as in
        :meth:`image_frame`."""
        if self.labels is None:
            raise ValueError("this warper was built without a label map")
        if out is None:
            out = self.labels.clone()
        else:
            out.copy_(self.labels)
        if z_mm != 0.0:
            out.view(-1)[self.flat_index] = self.moving_labels(z_mm)
        return out

    def moving_labels(self, z_mm: float) -> torch.Tensor:
        """The warped label values at the moving voxels only, shape (P,) (cheap volume counts)."""
        if self.labels is None:
            raise ValueError("this warper was built without a label map")
        if z_mm == 0.0:
            return self.moving_values(self.labels)
        return self._sample_labels(self._coords(z_mm))

    def moving_values(self, frame: torch.Tensor) -> torch.Tensor:
        """The values of a (Z, Y, X) frame at the moving voxels, shape (P,)."""
        return frame.reshape(-1)[self.flat_index]

    # -- single planes, for the live preview --------------------------------------------------
    def _plane_rows(self, axis: int, index: int) -> torch.Tensor:
        return torch.nonzero(self.positions[:, axis] == int(index)).squeeze(1)

    def _plane_scatter(self, out: torch.Tensor, axis: int, rows: torch.Tensor) -> torch.Tensor:
        keep = [a for a in range(3) if a != axis]
        pos = self.positions[rows][:, keep]
        return pos[:, 0] * out.shape[-1] + pos[:, 1]

    def image_plane(self, z_mm: float, axis: int = 0, index: int = 0) -> torch.Tensor:
        """One plane of :meth:`image_frame`: ``index`` along ``axis`` (0 = Z), shape (C, a, b) or (a, b)."""
        out = self.image.select(axis + 1, int(index)).clone()
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
