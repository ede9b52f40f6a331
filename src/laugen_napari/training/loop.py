"""One training loop for every model of the project (SimVP, the mask/image generators).

A model plugs in as a :class:`TrainTask`; :func:`run_training` drives it and yields
:class:`Record` objects that the CLI prints (tqdm), the napari dock plots and ``metrics.csv`` keeps.

Contract of :func:`run_training`:

- ``batches`` is re-iterated once per epoch (a list, a DataLoader) or is a callable
  ``batches(epoch) -> Iterable`` (for datasets that change per epoch).
- One ``"train"`` record per step (the values returned by ``task.train_step``), one ``"val"``
  record every ``validate_every`` epochs and after the last epoch (``task.validate()``), and one
  ``"sample"`` record whenever the task defines ``sample()`` (generators: sample metrics).
- Checkpoints (when ``out_dir`` is given) after every epoch: ``last.pt`` always, ``best.pt`` when
  the monitored validation value (``task.monitor``, lower is better unless
  ``task.monitor_mode == "max"``) improved. Both written atomically (temporary file + rename).
- ``metrics.csv`` in long format, one row per value: ``step,epoch,phase,elapsed_s,name,value``.
- ``resume=True`` continues from ``out_dir/last.pt``: the task's architecture (``task.config()``)
  must equal the checkpoint's, else :class:`ValueError`. Epoch/step budgets are totals, so a
  resumed ``epochs=10`` run stops after epoch 10 overall.
- ``stop`` (a ``threading.Event`` or ``multiprocessing.Event``) is checked between steps: the loop
  writes ``last.pt`` at the current step and returns normally. On ``KeyboardInterrupt`` (Ctrl-C)
  the loop flushes ``metrics.csv`` and re-raises; ``last.pt`` stays the one of the last finished
  epoch (the interrupted step may have left the optimiser half-updated, so it is not saved).

For a run in a separate process (keeps torch and the GIL away from a GUI) see
:mod:`laugen_napari.training.process`.
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch

from ..io.torch_files import CheckpointError, read_torch_file

PHASES = ("train", "val", "sample")
CHECKPOINT_FORMAT = "laugen-train/1"
CSV_FIELDS = ["step", "epoch", "phase", "elapsed_s", "name", "value"]


@dataclass
class Record:
    """One row of training history.

    Attributes:
        step: optimiser steps done so far (1 after the first step; global across resumes).
        epoch: 0-based epoch the record belongs to.
        phase: ``"train"``, ``"val"`` or ``"sample"``.
        values: metric name -> value (losses, RMSE, SSIM, ...; units defined by the task).
        elapsed_s: wall-clock seconds since this run (not the resumed one) started.
    """

    step: int
    epoch: int
    phase: str
    values: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class TrainTask(Protocol):
    """What a model must provide to be trained by :func:`run_training`.

    Attributes:
        model: the ``torch.nn.Module`` being trained.
        monitor: key of ``validate()`` used to pick ``best.pt`` (optional, default ``"loss"``).
        monitor_mode: ``"min"`` or ``"max"`` (optional, default ``"min"``).
    Optional method ``sample() -> dict[str, float]``: evaluated after validation, phase "sample".
    """

    model: torch.nn.Module

    def train_step(self, batch: Any) -> dict[str, float]:
        """Forward, backward and optimiser step on one batch; returns its losses."""

    def validate(self) -> dict[str, float]:
        """Metrics on the validation data (no gradient)."""

    def state_dict(self) -> dict:
        """Everything needed to resume: model, optimisers, schedulers, counters."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def config(self) -> dict:
        """Architecture description (JSON-able); resuming requires it to be equal."""


Callback = Callable[[Record], None]


def save_atomic(obj: Any, path: str | os.PathLike, keep_previous: bool = False) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and a rename, so a
    crash never leaves a truncated checkpoint. With ``keep_previous`` the file being replaced is
    kept as ``<name>.prev`` (``last.pt.prev``), the fallback of :func:`load_resumable`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        if keep_previous and path.is_file():
            os.replace(path, previous_checkpoint(path))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def previous_checkpoint(path: str | os.PathLike) -> Path:
    """Where :func:`save_atomic` keeps the checkpoint that ``path`` replaced."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`run_training` (safely, see :func:`read_torch_file`;
    checks its format)."""
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a LAUGEN training checkpoint")
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("task"), dict):
        raise CheckpointError(f"{path} is not a LAUGEN training checkpoint (no config or state)")
    return ckpt


def load_model(path: str | os.PathLike, task: str, what: str, build: Callable[[dict, dict], torch.nn.Module]
               ) -> torch.nn.Module:
    """The network of a generator checkpoint written by :func:`run_training`, in eval mode.

    The checkpoint's ``config["task"]`` must be ``task``; ``build(model_config, state)`` makes the
    module (and may size buffers from ``state``), then the weights are loaded. Anything that does
    not fit (another task, no weights, a config or weights of another version) is one
    :class:`CheckpointError` naming ``path``; ``what`` names the model for the message."""
    ckpt = load_checkpoint(path)
    if ckpt["config"].get("task") != task:
        raise CheckpointError(f"{path} is not a {what} checkpoint")
    cfg, state = ckpt["task"].get("model_config"), ckpt["task"].get("model")
    if not isinstance(cfg, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: the {what} checkpoint holds no model configuration or weights")
    try:
        model = build(cfg, dict(state))
        model.load_state_dict(state)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: the {what} checkpoint does not fit this version's model ({first})") from None
    return model.eval()


def load_resumable(out: str | os.PathLike, warn: Callable[[str], None] | None = None) -> tuple[dict, Path]:
    """The checkpoint to resume a run in folder ``out`` from: ``last.pt``, or, when that is broken,
    the previous intact one (``last.pt.prev``), announced through ``warn`` (default: ``warnings.warn``).
    Returns ``(checkpoint, path)``; raises :class:`CheckpointError` when none is usable."""
    out = Path(out)
    last = out / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(f"nothing to resume: no last.pt in {out}")
    try:
        return load_checkpoint(last), last
    except CheckpointError as exc:
        prev = previous_checkpoint(last)
        if not prev.is_file():
            raise
        try:
            ckpt = load_checkpoint(prev)
        except CheckpointError:
            raise exc from None
        message = (f"{last} is broken ({exc}); resuming from the previous checkpoint {prev.name} "
                   f"(step {int(ckpt.get('step', 0))})")
        (warn or (lambda m: warnings.warn(m, stacklevel=3)))(message)
        return ckpt, prev


def describe_differences(saved: dict, current: dict, limit: int = 3) -> str:
    """``"key: saved vs current; ..."`` for the first ``limit`` differing keys (sorted), then
    ``"and N more"``: a message line stays short however many settings differ."""
    keys = sorted(set(saved) | set(current), key=str)
    diff = [f"{k}: {saved.get(k)!r} vs {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
    text = "; ".join(diff[:limit])
    return text + (f"; and {len(diff) - limit} more" if len(diff) > limit else "")


def check_config(saved: dict, current: dict, source: str = "the checkpoint") -> None:
    """Raise :class:`ValueError` naming the differing keys when two architectures differ."""
    if saved == current:
        return
    raise ValueError(f"cannot resume: {source} has another architecture ({describe_differences(saved, current)})")


def check_run_folder(out: str | os.PathLike, resume: bool = False, resume_hint: str | None = None) -> Path:
    """Refuse (one line, before any work) a run folder :func:`run_training` cannot use: a file, a
    folder that cannot be created or written, an existing run (``last.pt``) without ``resume``, or
    nothing to resume with it. ``resume_hint`` names the caller's way to resume (``"--resume"``)."""
    from ..io.resources import check_writable_folder

    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise FileNotFoundError(f"{out} is a broken symbolic link (to {os.readlink(out)})")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file, not a run folder; choose a folder")
    check_writable_folder(out, str(out))
    last = out / "last.pt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"nothing to resume: no last.pt in {out}")
    if not resume and last.exists():
        how = f"resume it with {resume_hint}" if resume_hint else "resume it"
        raise FileExistsError(f"{out} already holds a training run (last.pt); {how} or choose another folder")
    return out


def _better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


class _CsvLog:
    """Appends records to metrics.csv (long format), flushing after every record."""

    def __init__(self, path: Path | None, keep_until_step: int | None):
        self.path = path
        self.file = None
        if path is None:
            return
        rows: list[dict] = []
        if keep_until_step is not None and path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= keep_until_step]
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=CSV_FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, rec: Record) -> None:
        if self.file is None:
            return
        for name, value in rec.values.items():
            self.writer.writerow({"step": rec.step, "epoch": rec.epoch, "phase": rec.phase,
                                  "elapsed_s": f"{rec.elapsed_s:.3f}", "name": name, "value": repr(float(value))})
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def read_metrics_csv(path: str | os.PathLike) -> list[Record]:
    """Read ``metrics.csv`` back into records (rows of one step/phase grouped)."""
    out: dict[tuple[int, int, str], Record] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            key = (int(r["step"]), int(r["epoch"]), r["phase"])
            rec = out.setdefault(key, Record(key[0], key[1], key[2], {}, float(r["elapsed_s"])))
            rec.values[r["name"]] = float(r["value"])
    return list(out.values())


def run_training(
    task: TrainTask,
    batches: Iterable | Callable[[int], Iterable],
    *,
    epochs: int | None = None,
    steps: int | None = None,
    out_dir: str | os.PathLike | None = None,
    validate_every: int = 1,
    resume: bool = False,
    stop: Any = None,
    callbacks: Sequence[Callback] = (),
    warn: Callable[[str], None] | None = None,
) -> Iterator[Record]:
    """Train ``task`` and yield its records (see the module docstring for the contract).

    Args:
        epochs: total number of epochs (counting those of a resumed run).
        steps: total number of optimiser steps; with ``epochs`` too, whichever comes first.
        out_dir: folder for ``last.pt``, ``best.pt`` and ``metrics.csv`` (created); None: nothing written.
        validate_every: validate every this many epochs (and always after the last one).
        resume: continue from ``out_dir/last.pt``. Without it an existing ``last.pt`` is an error.
        stop: event whose ``is_set()`` ends the run cleanly between steps.
        callbacks: called with every record, before it is yielded.
        warn: receives notices such as "last.pt is broken, resuming from last.pt.prev"
            (default: ``warnings.warn``).
    """
    if epochs is None and steps is None:
        raise ValueError("give a number of epochs or of steps")
    if (epochs is not None and epochs < 1) or (steps is not None and steps < 1):
        raise ValueError("epochs and steps must be at least 1")
    if validate_every < 1:
        raise ValueError("validate_every must be at least 1")
    out = Path(out_dir) if out_dir is not None else None
    mode = getattr(task, "monitor_mode", "min")
    monitor = getattr(task, "monitor", "loss")
    step, epoch, best = 0, 0, None
    keep_until: int | None = None
    if out is not None:
        check_run_folder(out, resume)
        out.mkdir(parents=True, exist_ok=True)
        last = out / "last.pt"
        if resume:
            ckpt, source = load_resumable(out, warn)
            check_config(ckpt["config"], task.config(), f"checkpoint {source}")
            task.load_state_dict(ckpt["task"])
            step, epoch, best = int(ckpt["step"]), int(ckpt["epoch"]), ckpt.get("best")
            if "torch_rng" in ckpt:
                torch.set_rng_state(ckpt["torch_rng"])
            keep_until = step
        elif last.exists():
            raise FileExistsError(f"{out} already holds a training run (last.pt); resume it or choose another folder")
    elif resume:
        raise ValueError("resume needs an output folder")
    log = _CsvLog(out / "metrics.csv" if out is not None else None, keep_until if resume else None)
    t0 = time.perf_counter()

    def emit(phase: str, values: dict[str, float], ep: int) -> Record:
        rec = Record(step, ep, phase, {k: float(v) for k, v in values.items()}, time.perf_counter() - t0)
        log.write(rec)
        for cb in callbacks:
            cb(rec)
        return rec

    def checkpoint(ep_done: int, name: str = "last.pt") -> None:
        if out is None:
            return
        save_atomic({"format": CHECKPOINT_FORMAT, "config": task.config(), "task": task.state_dict(),
                     "step": step, "epoch": ep_done, "best": best, "monitor": monitor,
                     "torch_rng": torch.get_rng_state()}, out / name, keep_previous=name == "last.pt")

    def budget_left() -> bool:
        return (epochs is None or epoch < epochs) and (steps is None or step < steps)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    try:
        while budget_left() and not stopped():
            task.model.train()
            source = batches(epoch) if callable(batches) else batches
            seen = 0
            for batch in source:
                if stopped() or (steps is not None and step >= steps):
                    break
                values = task.train_step(batch)
                step += 1
                seen += 1
                yield emit("train", values, epoch)
            if seen == 0 and not stopped():
                raise ValueError("the training data gave no batch in an epoch")
            if stopped():
                checkpoint(epoch)  # the current epoch is not finished: a resume redoes it
                return
            epoch += 1
            final = not budget_left()
            if epoch % validate_every == 0 or final:
                task.model.eval()
                with torch.no_grad():
                    val = task.validate()
                yield emit("val", val, epoch - 1)
                sample = getattr(task, "sample", None)
                if callable(sample):
                    yield emit("sample", sample(), epoch - 1)
                improved = monitor in val and _better(float(val[monitor]), best, mode)
                if improved:
                    best = float(val[monitor])
                checkpoint(epoch)
                if improved and out is not None:
                    checkpoint(epoch, "best.pt")
            else:
                checkpoint(epoch)
    finally:
        log.close()
