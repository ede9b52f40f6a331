"""SimVP as a :class:`~laugen_napari.training.loop.TrainTask`, and one-call training for CLI/dock.

Loss: MSE on normalised intensities; Adam (default lr 1e-3) with OpenSTL's default schedule,
OneCycle stepped per iteration (``schedule="onecycle"``: torch's ``OneCycleLR`` with max_lr = lr,
its default warm-up share 0.3, cosine annealing, momentum cycling, and final_div_factor 1e4 as in
OpenSTL), or a constant learning rate (``schedule="constant"``). A resumed run keeps the schedule
of its first start. Validation reports, on de-normalised intensities with
``data_range = normalizer.scale``: ``rmse``, ``mae`` (per pixel), ``ssim``, ``psnr`` (dB) per
predicted frame and averaged (:mod:`laugen_napari.metrics`), beside them OpenSTL's conventions
(``openstl_mse``/``openstl_mae`` summed per frame, ``openstl_ssim``/``openstl_psnr`` on [0, 1]),
the same for the last-image baseline (``baseline_*``: the last context frame repeated), and
``loss`` (normalised MSE). ``best.pt`` follows the lowest validation RMSE. Training records carry
``loss``, ``lr`` and the running share of semi-synthetic samples seen (``synthetic_fraction``).

``init`` (``laugen train simvp --init CKPT``) starts from the weights of a pre-trained checkpoint
of the same architecture (fresh optimiser and schedule) and takes over its intensity
normalisation, so the fine-tuning data reach the model on the scale it was trained on.
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
from .loop import Record, describe_differences, load_checkpoint, run_training

SCHEDULES = ("onecycle", "constant")


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
                 target: int = 4, lr: float = 1e-3, val_batch: int = 16, seed: int = 0,
                 schedule: str = "onecycle", total_steps: int | None = None):
        if val.ndim != 4 or val.shape[1] != context + target:
            raise ValueError(f"validation sequences must be (N, {context + target}, H, W), got {val.shape}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        torch.manual_seed(seed)
        self.context, self.target = int(context), int(target)
        self.model_config = replace(config, frames=self.context)
        self.model = SimVP(self.model_config)
        self.lr = float(lr)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.schedule = schedule
        self.total_steps = None if total_steps is None else int(total_steps)
        self.scheduler = None
        if schedule == "onecycle" and self.total_steps is not None:
            if self.total_steps < 1:
                raise ValueError(f"total_steps must be at least 1, got {total_steps}")
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=self.lr, total_steps=self.total_steps,
                                                                 final_div_factor=1e4)
        self.seen = {"samples": 0, "synthetic": 0}
        self.normalizer = normalizer
        self.val = np.asarray(val, np.float32)
        self.val_batch = int(val_batch)
        base = last_image_baseline(self.val[:, :self.context], self.target)
        self.baseline = metrics.frame_metrics(base, self.val[:, self.context:], normalizer.data_range)
        self.baseline.update(metrics.openstl_metrics(base, self.val[:, self.context:], normalizer.offset, normalizer.scale))

    def init_from(self, path: str | os.PathLike) -> dict:
        """Load the model weights of a pre-trained checkpoint (:func:`load_checkpoint`, weights only);
        its architecture must equal this task's (the number of target frames may differ). Returns
        the checkpoint's normalisation (``{"offset", "scale"}``) or ``{}``."""
        ckpt = read_init_checkpoint(path, self.config())
        state = ckpt["task"].get("model")
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds no SimVP weights")
        self.model.load_state_dict(state)
        return dict(ckpt["task"].get("normalizer") or {})

    @property
    def synthetic_fraction(self) -> float:
        """Share of semi-synthetic samples among those trained on so far (NaN before any)."""
        n = self.seen["samples"]
        return self.seen["synthetic"] / n if n else float("nan")

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :self.context], x[:, self.context:self.context + self.target]

    def train_step(self, batch: Any) -> dict[str, float]:
        if self.schedule == "onecycle" and self.scheduler is None:
            raise ValueError("the OneCycle schedule needs the run's total number of steps (total_steps)")
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        flags = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        ctx, tgt = self.split(x)
        loss = torch.nn.functional.mse_loss(self.model.predict(ctx, self.target), tgt)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        lr = float(self.opt.param_groups[0]["lr"])
        self.opt.step()
        if self.scheduler is not None and self.scheduler.last_epoch < self.scheduler.total_steps - 1:
            self.scheduler.step()
        self.seen["samples"] += int(x.shape[0])
        self.seen["synthetic"] += int(torch.as_tensor(flags).sum()) if flags is not None else 0
        return {"loss": float(loss.detach()), "lr": lr, "synthetic_fraction": self.synthetic_fraction}

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
        values.update(metrics.openstl_metrics(pred, tgt, self.normalizer.offset, self.normalizer.scale))
        values["loss"] = float(np.mean((self.normalizer.apply(pred) - self.normalizer.apply(tgt)) ** 2))
        values.update({f"baseline_{k}": v for k, v in self.baseline.items()})
        return values

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "normalizer": self.normalizer.to_dict(),
                 "seen": dict(self.seen), "schedule": self.schedule}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.seen = {k: int(v) for k, v in state.get("seen", self.seen).items()}
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])

    def config(self) -> dict:
        return {"model": "simvp", **self.model_config.to_dict(), "target": self.target}


def checkpoint_kind(config: dict) -> str | None:
    """The model a training checkpoint's recorded ``config`` belongs to: ``"simvp"``, a generator
    (``vae``, ``hvae``, ``dhvae``, ``stylegan2``, ``ldm``), another task's name, or None."""
    if config.get("model") is not None:
        return str(config["model"])
    task = config.get("task")
    if task == "dhvae":
        return str(config.get("kind") or "dhvae")
    return None if task is None else str(task)


def architecture(context: int, translator: str = "gsta", size: dict | None = None) -> dict:
    """The architecture record (:meth:`SimVPTask.config` without ``target``) of the SimVP that
    :func:`build_task` makes for ``context`` frames: known before any data are read."""
    cfg = SimVPConfig(frames=int(context), channels=1, translator=translator, **{**CPU_DEFAULT, **(size or {})})
    return {"model": "simvp", **cfg.to_dict()}


def read_init_checkpoint(path: str | os.PathLike, expected: dict | None = None) -> dict:
    """The checkpoint ``path`` to fine-tune from, refused in one line when it is not a SimVP one
    (``"... is a vae checkpoint, not a SimVP one"``) or, given the ``expected`` architecture
    (:func:`architecture` or :meth:`SimVPTask.config`), when its architecture differs (the first
    differences named). ``target`` may differ."""
    ckpt = load_checkpoint(path)
    kind = checkpoint_kind(ckpt["config"])
    if kind != "simvp":
        raise ValueError(f"{path} is a {kind} checkpoint, not a SimVP one" if kind
                         else f"{path} is not a SimVP checkpoint")
    if expected is not None:
        saved = {k: v for k, v in ckpt["config"].items() if k != "target"}
        mine = {k: v for k, v in expected.items() if k != "target"}
        if saved != mine:
            raise ValueError(f"cannot initialise from {path}: another architecture "
                             f"({describe_differences(saved, mine)})")
    return ckpt


def steps_per_epoch(dataset: MixedSequences, batch_size: int) -> int:
    """Optimiser steps of one epoch over ``dataset`` (the last batch may be smaller)."""
    return -(-len(dataset) // int(batch_size))


def total_steps(dataset: MixedSequences, batch_size: int, epochs: int | None = None, steps: int | None = None) -> int:
    """Steps of a run with an ``epochs`` and/or ``steps`` budget (whichever comes first)."""
    if epochs is None and steps is None:
        raise ValueError("give a number of epochs or of steps")
    budgets = ([epochs * steps_per_epoch(dataset, batch_size)] if epochs is not None else []) + \
        ([int(steps)] if steps is not None else [])
    return int(min(budgets))


def build_task(bundle: DataBundle, *, translator: str = "gsta", size: dict | None = None, lr: float = 1e-3,
               seed: int = 0, schedule: str = "onecycle", total_steps: int | None = None) -> SimVPTask:
    """A :class:`SimVPTask` for a data bundle; ``size`` overrides :data:`CPU_DEFAULT`."""
    cfg = SimVPConfig(frames=bundle.info["context"], channels=1, translator=translator, **{**CPU_DEFAULT, **(size or {})})
    return SimVPTask(cfg, bundle.val, bundle.normalizer, bundle.info["context"], bundle.info["target"], lr=lr, seed=seed,
                     schedule=schedule, total_steps=total_steps)


def make_batches(dataset: MixedSequences, batch_size: int, seed: int = 0):
    """``batches(epoch)``: a shuffled DataLoader over ``dataset`` for that epoch (seeded)."""
    def batches(epoch: int):
        dataset.set_epoch(epoch)
        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, num_workers=0)
    return batches


def simvp_factory(data: dict, model: dict, run: dict, batch_size: int = 8, seed: int = 0):
    """Picklable factory for :class:`~laugen_napari.training.process.TrainingProcess`:
    ``data`` → :func:`build_data`, ``model`` → :func:`build_task`, ``run`` → :func:`run_training`."""
    torch.set_num_threads(1)
    bundle = build_data(**data, seed=seed)
    total = total_steps(bundle.train, batch_size, run.get("epochs"), run.get("steps"))
    task = build_task(bundle, seed=seed, total_steps=total, **model)
    return task, make_batches(bundle.train, batch_size, seed), dict(run)


def adopt_normalizer(bundle: DataBundle, norm: dict) -> DataBundle:
    """Use a pre-trained model's intensity normalisation for ``bundle`` (training set and metrics)."""
    if norm:
        n = Normalizer(float(norm["offset"]), float(norm["scale"]))
        bundle.normalizer = n
        bundle.train.normalizer = n
        bundle.info["normalizer"] = n.to_dict()
    return bundle


def write_report(out_dir: str | Path, task: SimVPTask, bundle: DataBundle, final: dict[str, float],
                 extra: dict | None = None) -> dict:
    """``report.json``: the model's and the last-image baseline's validation metrics side by side."""
    keys = metrics.FRAME_METRICS + metrics.OPENSTL_METRICS
    report = {
        "model": {k: final.get(k) for k in keys},
        "last_image_baseline": {k: task.baseline[k] for k in keys},
        "model_beats_baseline_rmse": bool(final.get("rmse", np.inf) < task.baseline["rmse"]),
        "data_range": task.normalizer.data_range,
        "conventions": "rmse/mae per pixel in intensity units; ssim/psnr per frame, averaged (psnr over frames "
                       "with an error), psnr in dB; openstl_*: intensities mapped to [0, 1] by the training "
                       "normalisation, mse/mae summed over the pixels of a frame, ssim/psnr on [0, 1] after clipping",
        "training": {"schedule": task.schedule, "lr": task.lr, "total_steps": task.total_steps,
                     "samples_seen": task.seen["samples"], "synthetic_seen": task.seen["synthetic"],
                     "synthetic_fraction": task.synthetic_fraction, **(extra or {})},
        "architecture": task.config(), "parameters": count_parameters(task.model), "data": bundle.info,
    }
    path = Path(out_dir) / "report.json"
    tmp = path.with_name(f".report.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float))
    os.replace(tmp, path)
    return report


def train_simvp(bundle: DataBundle, out_dir: str | Path, *, epochs: int | None = None, steps: int | None = None,
                batch_size: int = 8, translator: str = "gsta", size: dict | None = None, lr: float = 1e-3,
                schedule: str = "onecycle", init: str | Path | None = None, seed: int = 0, resume: bool = False,
                stop: Any = None, callbacks=(), warn=None) -> Iterator[Record]:
    """Train SimVP on ``bundle`` into ``out_dir`` (metrics.csv, last.pt, best.pt, report.json).

    Budget: ``epochs`` and/or ``steps`` (whichever ends first). ``init``: a checkpoint to fine-tune
    from (its weights and normalisation; ignored when resuming, the run's own last.pt is used)."""
    if init is not None and not resume:  # refused before the (long) model build
        ckpt = read_init_checkpoint(init, architecture(bundle.info["context"], translator, size))
        adopt_normalizer(bundle, dict(ckpt["task"].get("normalizer") or {}))
    total = total_steps(bundle.train, batch_size, epochs, steps)
    task = build_task(bundle, translator=translator, size=size, lr=lr, seed=seed, schedule=schedule, total_steps=total)
    if init is not None and not resume:
        task.init_from(init)
    final: dict[str, float] = {}
    last_step = 0
    for rec in run_training(task, make_batches(bundle.train, batch_size, seed), epochs=epochs, steps=steps,
                            out_dir=out_dir, resume=resume, stop=stop, callbacks=callbacks, warn=warn):
        last_step = rec.step
        if rec.phase == "val":
            final = rec.values
        yield rec
    if final:
        write_report(out_dir, task, bundle, final, {"steps": last_step, "batch_size": int(batch_size),
                                                    "init": None if init is None else str(init)})
