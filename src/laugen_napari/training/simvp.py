"""SimVP as a :class:`~laugen_napari.training.loop.TrainTask`, and one-call training for CLI/dock.

Loss: MSE on normalised intensities; Adam (constant learning rate, default 1e-3). Validation
reports, on de-normalised intensities with ``data_range = normalizer.scale``: ``rmse``, ``mae``
(per pixel), ``ssim``, ``psnr`` (dB) per predicted frame and averaged (:mod:`laugen_napari.metrics`),
the same for the last-image baseline (``baseline_*``: the last context frame repeated), and
``loss`` (normalised MSE). ``best.pt`` follows the lowest validation RMSE.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .. import metrics
from ..models.simvp import CPU_DEFAULT, SimVP, SimVPConfig, count_parameters
from .datasets import DataBundle, MixedSequences, Normalizer, build_data
from .loop import Record, run_training


def last_image_baseline(context: np.ndarray | torch.Tensor, target_frames: int):
    """The "last image" prediction: the last context frame (axis 1 of (N, T, ...)) repeated."""
    last = context[:, -1:]
    if isinstance(last, torch.Tensor):
        return last.expand(-1, target_frames, *last.shape[2:]).clone()
    return np.repeat(last, target_frames, axis=1)


class SimVPTask:
    """Next-frame prediction with SimVP: ``context`` frames in, ``target`` frames out.

    Args:
        config: model architecture (``frames`` is set to ``context``).
        val: validation sequences (N, context + target, H, W) in the data's intensity units.
        normalizer: the training data's normalisation (recorded in the checkpoint).
        lr: Adam learning rate.
    """

    monitor = "rmse"
    monitor_mode = "min"

    def __init__(self, config: SimVPConfig, val: np.ndarray, normalizer: Normalizer, context: int = 4,
                 target: int = 4, lr: float = 1e-3, val_batch: int = 16, seed: int = 0):
        if val.ndim != 4 or val.shape[1] != context + target:
            raise ValueError(f"validation sequences must be (N, {context + target}, H, W), got {val.shape}")
        torch.manual_seed(seed)
        self.context, self.target = int(context), int(target)
        self.model_config = replace(config, frames=self.context)
        self.model = SimVP(self.model_config)
        self.lr = float(lr)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.normalizer = normalizer
        self.val = np.asarray(val, np.float32)
        self.val_batch = int(val_batch)
        self.baseline = metrics.frame_metrics(last_image_baseline(self.val[:, :self.context], self.target),
                                              self.val[:, self.context:], normalizer.data_range)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :self.context], x[:, self.context:self.context + self.target]

    def train_step(self, batch: Any) -> dict[str, float]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        ctx, tgt = self.split(x)
        loss = torch.nn.functional.mse_loss(self.model.predict(ctx, self.target), tgt)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

    def predict_raw(self, context: np.ndarray) -> np.ndarray:
        """Predictions (N, target, H, W) in intensity units for raw contexts (N, context, H, W)."""
        out = []
        for s in range(0, len(context), self.val_batch):
            x = torch.from_numpy(self.normalizer.apply(context[s:s + self.val_batch]).astype(np.float32))[:, :, None]
            out.append(self.model.predict(x, self.target)[:, :, 0].numpy())
        return self.normalizer.invert(np.concatenate(out).astype(np.float64))

    def validate(self) -> dict[str, float]:
        pred = self.predict_raw(self.val[:, :self.context])
        tgt = self.val[:, self.context:]
        values = metrics.frame_metrics(pred, tgt, self.normalizer.data_range)
        values["loss"] = float(np.mean((self.normalizer.apply(pred) - self.normalizer.apply(tgt)) ** 2))
        values.update({f"baseline_{k}": v for k, v in self.baseline.items()})
        return values

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "normalizer": self.normalizer.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])

    def config(self) -> dict:
        return {"model": "simvp", **self.model_config.to_dict(), "target": self.target}


def make_batches(dataset: MixedSequences, batch_size: int, seed: int = 0):
    """``batches(epoch)``: a shuffled DataLoader over ``dataset`` for that epoch (seeded)."""
    def batches(epoch: int):
        dataset.set_epoch(epoch)
        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, num_workers=0)
    return batches


def build_task(bundle: DataBundle, *, translator: str = "gsta", size: dict | None = None, lr: float = 1e-3,
               seed: int = 0) -> SimVPTask:
    """A :class:`SimVPTask` for a data bundle; ``size`` overrides :data:`CPU_DEFAULT`."""
    cfg = SimVPConfig(frames=bundle.info["context"], channels=1, translator=translator, **{**CPU_DEFAULT, **(size or {})})
    return SimVPTask(cfg, bundle.val, bundle.normalizer, bundle.info["context"], bundle.info["target"], lr=lr, seed=seed)


def simvp_factory(data: dict, model: dict, run: dict, batch_size: int = 8, seed: int = 0):
    """Picklable factory for :class:`~laugen_napari.training.process.TrainingProcess`:
    ``data`` → :func:`build_data`, ``model`` → :func:`build_task`, ``run`` → :func:`run_training`."""
    torch.set_num_threads(1)
    bundle = build_data(**data, seed=seed)
    task = build_task(bundle, seed=seed, **model)
    return task, make_batches(bundle.train, batch_size, seed), dict(run)


def write_report(out_dir: str | Path, task: SimVPTask, bundle: DataBundle, final: dict[str, float]) -> dict:
    """``report.json``: the model's and the last-image baseline's validation metrics side by side."""
    keys = metrics.FRAME_METRICS
    report = {
        "model": {k: final.get(k) for k in keys},
        "last_image_baseline": {k: task.baseline[k] for k in keys},
        "model_beats_baseline_rmse": bool(final.get("rmse", np.inf) < task.baseline["rmse"]),
        "data_range": task.normalizer.data_range,
        "conventions": "RMSE/MAE per pixel in intensity units; SSIM/PSNR per frame, averaged; PSNR in dB",
        "architecture": task.config(), "parameters": count_parameters(task.model), "data": bundle.info,
    }
    path = Path(out_dir) / "report.json"
    tmp = path.with_name(f".report.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float))
    os.replace(tmp, path)
    return report


def train_simvp(bundle: DataBundle, out_dir: str | Path, *, epochs: int, batch_size: int = 8,
                translator: str = "gsta", size: dict | None = None, lr: float = 1e-3, seed: int = 0,
                resume: bool = False, stop: Any = None, callbacks=(), warn=None) -> Iterator[Record]:
    """Train SimVP on ``bundle`` into ``out_dir`` (metrics.csv, last.pt, best.pt, report.json)."""
    task = build_task(bundle, translator=translator, size=size, lr=lr, seed=seed)
    final: dict[str, float] = {}
    for rec in run_training(task, make_batches(bundle.train, batch_size, seed), epochs=epochs, out_dir=out_dir,
                            resume=resume, stop=stop, callbacks=callbacks, warn=warn):
        if rec.phase == "val":
            final = rec.values
        yield rec
    if final:
        write_report(out_dir, task, bundle, final)
