"""The train dock's run planning, without Qt: which models there are, the checks on the dock's
values, the data and factory handed to the training process, the validation sample, and the
plain-words texts the dock shows.

Nothing here builds an optimizer or touches ``torch._dynamo``: those import Triton, whose own LLVM
crashed the viewer's process when loaded beside Mesa's OpenGL. Training (optimizers included)
runs only in the :class:`~laugen_napari.training.process.TrainingProcess` child; the viewer's
process only runs inference (:func:`validation_sample`) on a model built from its checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..io.resources import check_writable_folder

#: SimVP variants: dock name -> translator
SIMVP_MODELS = {"SimVP (gSTA)": "gsta", "SimVP (IncepU)": "incepu"}
#: how registry names are shown (others are shown as registered)
PRETTY = {"dhvae": "dHVAE", "hvae": "HVAE", "vae": "VAE", "hvae-disc": "HVAE + discriminator",
          "hvae-perc": "HVAE + perceptual", "stylegan2": "StyleGAN2", "ldm": "slice LDM"}
#: the dHVAE family (their records fill the dock's generator panels)
DHVAE_FAMILY = ("dhvae", "hvae", "vae", "hvae-disc", "hvae-perc")
#: generators trained on whole volumes (``volumes=``) rather than slices
VOLUME_GENERATORS = ("ldm",)
#: the dock's generator fields -> registry option names
GENERATOR_FIELDS = {"lr": "lr", "batch": "batch_size", "epoch_steps": "steps_per_epoch", "warmup": "disc_warmup",
                    "vgg": "vgg", "inception": "inception"}


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the dock's model list.

    ``kind`` is ``"simvp"`` or ``"generator"``; ``key`` the SimVP translator or the generator's
    registry name; ``options`` the generator's option names."""

    label: str
    kind: str
    key: str
    description: str = ""
    options: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()

    def default(self, name: str, fallback: Any = None) -> Any:
        return dict(self.defaults).get(name, fallback)

    def has(self, option: str) -> bool:
        """Whether this model takes the registry option ``option``."""
        return self.kind == "generator" and option in self.options


def model_choices() -> dict[str, ModelChoice]:
    """The dock's models, label -> :class:`ModelChoice`: the SimVP variants, then every generator of
    :data:`laugen_napari.training.generators.GENERATORS`."""
    from .generators import GENERATORS

    out = {label: ModelChoice(label, "simvp", key, f"SimVP next-frame prediction ({key} translator)",
                              defaults=(("lr", 1e-3),))
           for label, key in SIMVP_MODELS.items()}
    for name, spec in GENERATORS.items():
        label = PRETTY.get(name, name)
        opts = tuple(o.name for o in getattr(spec, "options", ()))
        try:
            defaults = tuple(spec.defaults().items())
        except (AttributeError, TypeError):  # a spec without defaults() still trains with its own
            defaults = ()
        out[label] = ModelChoice(label, "generator", name, getattr(spec, "description", ""), opts, defaults)
    return out


def tile(stack: np.ndarray, columns: int | None = None) -> np.ndarray:
    """(N, H, W) -> one (rows*H, columns*W) grid image, row-major, empty cells zero."""
    n, h, w = stack.shape
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    out = np.zeros((rows * h, columns * w), stack.dtype)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = stack[i]
    return out


def beside(extent: np.ndarray, grid_shape: Sequence[int],
           gap: float = 0.05) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(translate, scale)`` (y, x) that put a 2D grid image to the right of a world extent.

    ``extent`` is napari's ``[[min...], [max...]]`` of the layers already shown (last two axes
    are y, x, in world units such as mm); the grid gets the extent's height and sits ``gap`` of
    its width to the right, so it never covers the scan."""
    ext = np.asarray(extent, float)
    y0, x0 = ext[0, -2], ext[0, -1]
    y1, x1 = ext[1, -2], ext[1, -1]
    height = y1 - y0 if np.isfinite(y1 - y0) and y1 > y0 else float(grid_shape[0])
    width = x1 - x0 if np.isfinite(x1 - x0) and x1 > x0 else float(grid_shape[1])
    s = height / float(grid_shape[0])
    return (float(y0), float(x1 + gap * width)), (s, s)


def _as_path_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def make_plan(values: dict, *, series: Any = None, image: Any = None, labels: Any = None,
              choices: dict[str, ModelChoice] | None = None, now: Callable[[], str] | None = None) -> dict:
    """The run's plan from the dock's values (plain Python: numbers, strings) and layers (objects
    with ``data``, ``name``, ``scale``); cheap, no layer data read yet.

    Raises ValueError with one line for missing or inconsistent input."""
    choices = choices or model_choices()
    model = values["model"]
    if model not in choices:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(choices)}")
    choice = choices[model]
    try:
        lr = float(values["lr"])
    except (TypeError, ValueError):
        raise ValueError(f"learning rate {values['lr']!r} is not a number") from None
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"the learning rate must be a positive number, got {lr}")
    run_dir = str(values.get("run_dir") or "").strip()
    if not run_dir:
        stamp = (now or (lambda: time.strftime("%Y%m%d-%H%M%S")))()
        run_dir = str(Path.home() / "laugen_runs" / f"{model.split()[0].lower()}-{stamp}")
    run_dir_p = Path(run_dir).expanduser()
    resume = bool(values.get("resume"))
    if (run_dir_p / "last.pt").exists() and not resume:
        raise ValueError(f"{run_dir_p} already holds a run (last.pt): tick 'resume' or choose another run directory")
    if resume and not (run_dir_p / "last.pt").exists():
        raise ValueError(f"nothing to resume: no last.pt in {run_dir_p}")
    if run_dir_p.exists() and not run_dir_p.is_dir():
        raise ValueError(f"{run_dir_p} is a file, not a run folder; choose a folder")
    try:  # a run folder that cannot be made or written is refused here, not in the child
        check_writable_folder(run_dir_p, str(run_dir_p))
    except OSError as exc:
        raise ValueError(str(exc)) from None
    if (image is None) != (labels is None):
        raise ValueError("give both an image layer and a labels layer (or neither)")
    pairs = str(values.get("pairs") or "").strip()
    if pairs and not Path(pairs).is_dir():
        raise ValueError(f"no such folder: {pairs}")
    plan = {"model": model, "kind": choice.kind, "key": choice.key, "options": choice.options,
            "run_dir": str(run_dir_p), "lr": lr, "seed": int(values["seed"]), "batch": int(values["batch"]),
            "resume": resume, "threads": int(values["threads"]),
            "image": None if image is None else (image.data, tuple(float(s) for s in image.scale[-3:]), image.name),
            "labels": None if labels is None else labels.data, "pairs": pairs or None}
    if choice.kind == "simvp":
        real_files = _as_path_list(str(values.get("real_files") or "").strip())
        for f in real_files:
            if not Path(f).is_file():
                raise ValueError(f"no such file: {f}")
        acdc = str(values.get("acdc") or "").strip() or None
        if acdc and not Path(acdc).is_dir():
            raise ValueError(f"no such folder: {acdc}")
        if series is None and not real_files and not acdc and image is None and not pairs:
            raise ValueError("no data: choose a 4D series layer, an image + labels pair, or files/folders")
        frames = int(values["context"]) + int(values["target"])
        if series is not None and series.data.shape[0] < frames:
            raise ValueError(f"the series '{series.name}' has {series.data.shape[0]} frames; "
                             f"context + target needs at least {frames}")
        crop = int(values["crop"])
        plan.update(series=None if series is None else (series.data, series.name), real_files=real_files,
                    acdc=acdc, context=int(values["context"]), target=int(values["target"]),
                    mix=float(values["mix"]), axis=int(values["axis"]), crop=(crop, crop) if crop else None,
                    length=int(values["length"]) or None, size_preset=values["size_preset"],
                    epochs=int(values["epochs"]))
    else:
        if image is None and not pairs:
            raise ValueError("no data: choose an image + labels layer pair or a folder of image/mask pairs")
        for name in ("vgg", "inception"):
            path = str(values.get(name) or "").strip()
            if path and choice.has(name) and not Path(path).is_file():
                raise ValueError(f"no such {name} weights file: {path}")
        plan.update(steps=int(values["steps"]), epoch_steps=int(values["epoch_steps"]), size=int(values["size"]),
                    warmup=int(values["warmup"]), vgg=str(values.get("vgg") or "").strip() or None,
                    inception=str(values.get("inception") or "").strip() or None)
    return plan


def _sources(plan: dict) -> list:
    from .datasets import SyntheticSource

    if plan["image"] is None:
        return []
    data, spacing, name = plan["image"]
    image = np.asarray(data, np.float32)
    labels = np.asarray(plan["labels"])
    if image.shape != labels.shape:
        raise ValueError(f"image '{name}' {image.shape} and labels {labels.shape} differ in shape")
    return [SyntheticSource(image, labels.astype(np.int32), spacing, name=name)]


def prepare(plan: dict) -> tuple:
    """``(factory, kwargs, run)`` for :class:`~laugen_napari.training.process.TrainingProcess` from
    :func:`make_plan`'s plan.

    Reads layer data (a lazy LAUGEN series computes its frames here), so call it off the GUI thread."""
    from .dhvae import find_pairs, slices_from_arrays

    run = {"model": plan["model"], "run_dir": plan["run_dir"]}
    if plan["kind"] == "simvp":
        from ..models.simvp import CPU_DEFAULT, MMNIST
        from .datasets import SliceSpec
        from .simvp import simvp_factory

        real_arrays = []
        if plan["series"] is not None:
            data, name = plan["series"]
            arr = np.asarray(data, np.float32)
            if arr.ndim != 4:
                raise ValueError(f"the series '{name}' must be (T, Z, Y, X), got {arr.shape}")
            real_arrays.append(arr)
        synthetic = [tuple(str(p) for p in pair) for pair in find_pairs(plan["pairs"])] if plan["pairs"] else []
        sources = _sources(plan)
        has_real = bool(real_arrays or plan["real_files"] or plan["acdc"])
        has_syn = bool(sources or synthetic or plan["acdc"])
        data = dict(real=list(plan["real_files"]), acdc=plan["acdc"], synthetic=synthetic, sources=sources,
                    real_arrays=real_arrays, mix=plan["mix"] if (has_real and has_syn) else None,
                    context=plan["context"], target=plan["target"],
                    spec=SliceSpec(plan["axis"], None, None, plan["crop"]), length=plan["length"])
        size = dict(MMNIST if plan["size_preset"] == "mmnist" else CPU_DEFAULT)
        model = {"translator": plan["key"], "size": size, "lr": plan["lr"]}
        runkw = {"epochs": plan["epochs"], "out_dir": plan["run_dir"], "resume": plan["resume"]}
        kwargs = {"data": data, "model": model, "run": runkw, "batch_size": plan["batch"], "seed": plan["seed"]}
        run.update(kind="simvp", kwargs=kwargs)
        return simvp_factory, kwargs, run
    values = {"lr": plan["lr"], "batch": plan["batch"], "epoch_steps": plan["epoch_steps"], "warmup": plan["warmup"],
              "vgg": plan["vgg"], "inception": plan["inception"]}
    options = plan["options"]
    kwargs: dict[str, Any] = dict(size=plan["size"], steps=plan["steps"], out=plan["run_dir"], resume=plan["resume"],
                                  seed=plan["seed"])
    from .generators import GENERATORS

    if plan["key"] not in GENERATORS:
        raise ValueError(f"the generator {plan['key']!r} is not available")
    factory = GENERATORS[plan["key"]].make_training
    kwargs.update({GENERATOR_FIELDS[k]: v for k, v in values.items()
                   if GENERATOR_FIELDS[k] in options and not (v is None and k in ("vgg", "inception"))})
    if plan["image"] is not None:
        data, _, name = plan["image"]
        image, labels = np.asarray(data, np.float32), np.asarray(plan["labels"])
        if plan["key"] in VOLUME_GENERATORS:  # whole volumes, not slices
            from .ldm import volumes_from_arrays

            kwargs["volumes"] = volumes_from_arrays(image, labels, plan["size"], name=name)
        else:
            kwargs["slices"] = slices_from_arrays(image, labels, plan["size"], name=name)
    else:
        find_pairs(plan["pairs"])  # a folder without pairs fails here, with a clear message
        kwargs["pairs"] = plan["pairs"]
    run.update(kind="generator", kwargs=kwargs)
    return factory, kwargs, run


def prepare_and_start(plan: dict, niceness: int = 5):
    """:func:`prepare`, then start the training child (``niceness`` steps below this process, so
    the viewer keeps the CPU on a machine with few cores). Returns ``(process, run)``."""
    from .process import TrainingProcess

    factory, kwargs, run = prepare(plan)
    Path(run["run_dir"]).mkdir(parents=True, exist_ok=True)
    proc = TrainingProcess(factory, kwargs, threads=plan["threads"]).start()
    pid = proc.pid
    if pid is not None and hasattr(os, "setpriority") and niceness:
        try:  # lower the child's priority (raising niceness needs no privilege)
            os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + niceness)
        except OSError:
            pass
    return proc, run


def load_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int]:
    """``samples_latest.npz`` of a generator run as (image grid, mask grid, step)."""
    with np.load(path) as z:
        images, masks, step = z["images"], z["masks"], int(z["step"])
    return tile(images.astype(np.float32)), tile(masks.astype(np.uint8)), step


def checkpoints(run_dir: str | os.PathLike) -> list[str]:
    """The checkpoint files a run folder holds, of ``best.pt`` and ``last.pt``."""
    return [name for name in ("best.pt", "last.pt") if (Path(run_dir) / name).is_file()]


@dataclass
class ValidationSample:
    """One validation sequence: context (C, H, W), target and prediction (T, H, W), intensities."""

    context: np.ndarray
    target: np.ndarray
    prediction: np.ndarray
    index: int
    checkpoint: str
    step: int


def load_simvp_for_inference(path: str | os.PathLike):
    """``(model, normalizer, context, target, step)`` of a SimVP checkpoint, for inference only:
    the network from its recorded config, its weights, no optimizer or schedule (building those
    imports Triton)."""
    from ..models.simvp import SimVP, SimVPConfig
    from .datasets import Normalizer
    from .loop import load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = dict(ckpt["config"])
    if cfg.pop("model", None) != "simvp":
        raise ValueError(f"{path} is not a SimVP checkpoint")
    target = int(cfg.pop("target"))
    model = SimVP(SimVPConfig(**cfg))
    state = ckpt["task"].get("model")
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no SimVP weights")
    model.load_state_dict(state)
    model.eval()
    norm = ckpt["task"].get("normalizer") or {}
    normalizer = Normalizer(float(norm.get("offset", 0.0)), float(norm.get("scale", 1.0)))
    return model, normalizer, int(cfg["frames"]), target, int(ckpt.get("step", 0))


def validation_sample(run: dict, index: int, val: np.ndarray | None = None) -> tuple[ValidationSample, np.ndarray]:
    """Context, target and the model's prediction of validation sequence ``index`` of a SimVP run
    (``best.pt`` when there is one, else ``last.pt``). ``val``: the run's validation sequences when
    already built (returned for reuse). Inference only: safe in the viewer's process."""
    import torch

    run_dir = Path(run["run_dir"])
    found = checkpoints(run_dir)
    if not found:
        raise ValueError(f"no checkpoint yet in {run_dir}: wait for the first validation")
    path = run_dir / found[0]
    if val is None:
        from .datasets import build_data

        kw = run["kwargs"]
        val = build_data(**kw["data"], seed=kw["seed"]).val
    model, normalizer, context, target, step = load_simvp_for_inference(path)
    i = index % len(val)
    seq = np.asarray(val[i], np.float32)
    x = torch.from_numpy(normalizer.apply(seq[None, :context]).astype(np.float32))[:, :, None]
    with torch.no_grad():
        pred = model.predict(x, target)[0, :, 0].numpy()
    pred = normalizer.invert(pred.astype(np.float64)).astype(np.float32)
    return ValidationSample(seq[:context], seq[context:context + target], pred, i, found[0], step), val


# -- plain-words texts ---------------------------------------------------------------------------

NAMES = {"loss": "loss", "nelbo": "negative ELBO", "rmse": "RMSE", "mse": "MSE", "mae": "MAE", "ssim": "SSIM",
         "psnr": "PSNR", "dice": "Dice", "l1": "L1", "perc": "perceptual", "disc": "discriminator",
         "gen": "generator", "jsd": "mask divergence (bits)", "nonempty": "non-empty masks", "lr": "learning rate",
         "fid": "FID"}
PHASE = {"train": "training", "val": "validation", "sample": "samples"}


def _number(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"


def describe_record(rec: Any, max_values: int = 3) -> str:
    """A record as a short sentence: ``step 40 (epoch 3), validation: RMSE 12.3 (last image 14.1), ...``."""
    vals = {k: v for k, v in rec.values.items() if not k.startswith("baseline_") and k != "synthetic_fraction"}
    parts = []
    for k, v in list(vals.items())[:max_values]:
        text = f"{NAMES.get(k, k.replace('_', ' '))} {_number(v)}"
        if f"baseline_{k}" in rec.values:
            text += f" (last image {_number(rec.values[f'baseline_{k}'])})"
        parts.append(text)
    return f"step {rec.step} (epoch {rec.epoch}), {PHASE.get(rec.phase, rec.phase)}: " + ", ".join(parts)


def describe_end(stopped: bool, step: int, run_dir: str | os.PathLike) -> str:
    """The status line at the end of a run: how it ended and which checkpoint files exist."""
    how = "Stopped" if stopped else "Finished"
    found = checkpoints(run_dir)
    if not found:
        return f"{how} at step {step}; no checkpoint was written (the run ended before its first save)."
    files = " and ".join(found)
    return f"{how} at step {step}: {files} saved in {run_dir}."
