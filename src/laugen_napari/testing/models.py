"""Models under test and what is measured on their predictions.

A *predictor* maps 2D context sequences (N, context, H, W) in intensity units to predictions
(N, target, H, W); it has attributes ``context`` and ``target`` (frames). :func:`load_predictor`
gives one from a SimVP checkpoint written by ``laugen train simvp`` (:class:`SimVPPredictor`) or
from ``module:attribute`` (a predictor object, or a factory called without arguments).

:class:`StructureArea` turns frames into a per-frame measurement: the area (mm²) of the pixels on
the structure's side of an intensity threshold fitted on the input frame (midway between the
structure's mean intensity and that of a ring around it), inside a region around the structure.
It is applied in the same way to true and predicted frames, so a model that moves the boundary
the right way is seen to change the measured area the right way.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class LastFramePredictor:
    """The "last image" baseline: the last context frame repeated (never changes anything)."""

    def __init__(self, context: int = 4, target: int = 4):
        self.context, self.target = int(context), int(target)

    def __call__(self, context: np.ndarray) -> np.ndarray:
        return np.repeat(np.asarray(context)[:, -1:], self.target, axis=1)


class LinearExtrapolationPredictor:
    """Extrapolates each pixel's last step: ``I_last + h · (I_last − I_prev)``. A simple model
    that follows a linear trajectory's motion to first order."""

    def __init__(self, context: int = 4, target: int = 4):
        self.context, self.target = int(context), int(target)

    def __call__(self, context: np.ndarray) -> np.ndarray:
        c = np.asarray(context, np.float32)
        step = c[:, -1] - c[:, -2]
        return np.stack([c[:, -1] + (h + 1) * step for h in range(self.target)], axis=1)


class SimVPPredictor:
    """A trained SimVP (checkpoint of ``laugen train simvp``) as a predictor on raw intensities,
    with the checkpoint's own intensity normalisation. Loaded with ``weights_only=True``."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch: int = 16):
        import torch

        from ..models.simvp import SimVP, SimVPConfig
        from ..training.datasets import Normalizer
        from ..training.loop import load_checkpoint

        ckpt = load_checkpoint(path)
        cfg = dict(ckpt["config"])
        if cfg.pop("model", None) != "simvp":
            raise ValueError(f"{path} is not a SimVP checkpoint (model {ckpt['config'].get('model')!r})")
        self.target = int(cfg.pop("target", cfg.get("frames", 4)))
        fields = set(SimVPConfig.__dataclass_fields__)
        self.config = SimVPConfig(**{k: v for k, v in cfg.items() if k in fields})
        self.context = int(self.config.frames)
        self.model = SimVP(self.config)
        self.model.load_state_dict(ckpt["task"]["model"])
        self.model.eval().to(device)
        self.normalizer = Normalizer(**ckpt["task"].get("normalizer", {"offset": 0.0, "scale": 1.0}))
        self.device, self.batch, self.path = device, int(batch), Path(path)
        self._torch = torch

    def __call__(self, context: np.ndarray) -> np.ndarray:
        torch = self._torch
        c = np.asarray(context, np.float32)
        if c.ndim != 4 or c.shape[1] != self.context:
            raise ValueError(f"expected context (N, {self.context}, H, W), got {c.shape}")
        out = []
        with torch.no_grad():
            for s in range(0, len(c), self.batch):
                x = torch.from_numpy(self.normalizer.apply(c[s:s + self.batch]).astype(np.float32))[:, :, None]
                out.append(self.model.predict(x.to(self.device), self.target)[:, :, 0].cpu().numpy())
        return self.normalizer.invert(np.concatenate(out)).astype(np.float32)


BUILTIN = {"last-frame": LastFramePredictor, "linear-extrapolation": LinearExtrapolationPredictor}


def load_predictor(spec: str, device: str = "cpu"):
    """A predictor from ``spec``: a SimVP checkpoint path, ``module:attribute`` (an object with
    ``__call__``, ``context`` and ``target``, or a callable returning one), or a built-in name
    (``last-frame``, ``linear-extrapolation``)."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    path = Path(spec)
    if path.suffix in (".pt", ".pth") or path.is_file():
        return SimVPPredictor(path, device=device)
    if ":" in spec:
        module, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "target")):
            obj = obj()
        for name in ("context", "target"):
            if not isinstance(getattr(obj, name, None), int):
                raise ValueError(f"{spec}: the predictor needs an integer attribute {name!r}")
        return obj
    raise FileNotFoundError(f"no such checkpoint: {spec} (or give module:attribute)")


@dataclass
class StructureArea:
    """Per-frame area (mm²) of the pixels on the structure's side of an intensity threshold.

    Fitted on a structure mask and its input frame: ``threshold`` midway between the mean
    intensity inside and in a ``ring`` (pixels) around it; counted inside ``region`` (the structure
    dilated by ``reach`` pixels)."""

    threshold: float
    darker: bool
    region: np.ndarray
    pixel_mm2: float

    @classmethod
    def fit(cls, frame0: np.ndarray, structure0: np.ndarray, pixel_mm2: float, ring: int = 3,
            reach: int = 8) -> "StructureArea":
        from scipy import ndimage

        s = np.asarray(structure0, bool)
        if not s.any():
            raise ValueError("the structure is absent from this plane")
        around = ndimage.binary_dilation(s, iterations=ring) & ~s
        inside, outside = float(frame0[s].mean()), float(frame0[around].mean()) if around.any() else float(frame0[~s].mean())
        region = ndimage.binary_dilation(s, iterations=reach)
        return cls((inside + outside) / 2, inside < outside, region, float(pixel_mm2))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Area per frame of ``frames`` (..., H, W) in mm²."""
        f = np.asarray(frames)
        hit = (f < self.threshold) if self.darker else (f > self.threshold)
        return (hit & self.region).reshape(*f.shape[:-2], -1).sum(-1) * self.pixel_mm2
