"""The paper's experiments (LAUGEN §3.1, Figs. 3–4) run as the paper describes them, with repeats.

- ``mixing``: one SimVP run per mixing ratio r and repeat. Every run has the same epoch length
  (real data repeated rather than training longer) and the same number of steps; a fraction r of
  the samples is semi-synthetic in expectation (stochastic rounding, see
  :class:`~laugen_napari.training.datasets.MixedSequences`) and the fraction actually trained on is
  reported per run (``realised_fraction``).
- ``sizes``: one run per training-set size n and repeat. The data points are **patients** (ACDC
  patients, or 4D files): n training patients are kept (a seeded choice, nested across n for one
  repeat), their windows are the real data and only their ED frames seed the semi-synthetic series
  (the paper: "the same images were selected"). The epoch length is that of the whole training
  pool for every n, the real data are repeated, so every n runs the same number of steps.
- ``pretrain``: real-only training vs pre-training on semi-synthetic series only (from the
  training patients' ED frames) followed by fine-tuning on the real data with the same number of
  steps as the real-only run, and a third arm trained on real data only for the pre-training plus
  fine-tuning steps (same total compute); all arms share one intensity normalisation.

In every sweep the validation patients are the same for every value and repeat (``split_seed``
of the data options), one intensity normalisation (fitted on the whole training pool) sets the
metrics' data range of every run, and repeat k uses seed ``seed + k``. Each run goes to
``out_dir/<sweep>/<value>/rep<k>/`` (metrics.csv, checkpoints, report.json); ``results.csv``
holds one row per run: final validation metrics in our conventions and OpenSTL's, the last-image
baseline, steps, samples per epoch, expected and realised synthetic fraction, the training
patients. ``<sweep>.png`` shows mean ± standard deviation over repeats with the baseline dashed.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..metrics import FRAME_METRICS, OPENSTL_METRICS
from .datasets import build_data
from .simvp import adopt_normalizer, total_steps, train_simvp

SWEEPS = ("mixing", "sizes", "pretrain")
METRIC_KEYS = FRAME_METRICS + OPENSTL_METRICS


def _train(bundle, run_dir: Path, *, epochs, steps, batch_size: int, seed: int, train_options: dict,
           init=None) -> dict:
    """One run; returns its report.json."""
    for _ in train_simvp(bundle, run_dir, epochs=epochs, steps=steps, batch_size=batch_size, seed=seed, init=init,
                         **train_options):
        pass
    return json.loads((run_dir / "report.json").read_text())


def _row(kind: str, value, rep: int, seed: int, bundle, report: dict) -> dict:
    tr = report["training"]
    row = {"sweep": kind, "value": value, "repeat": rep, "seed": seed, "mix": bundle.info["mix"],
           "train_patients": len(bundle.info["train_groups"]), "real_train_sequences": bundle.info["real_train_sequences"],
           "samples_per_epoch": bundle.info["length"], "steps": tr["steps"], "batch_size": tr["batch_size"],
           "expected_fraction": bundle.info["mix"], "realised_fraction": tr["synthetic_fraction"],
           "val_sequences": bundle.info["val_sequences"]}
    row.update({m: report["model"][m] for m in METRIC_KEYS})
    row.update({f"baseline_{m}": report["last_image_baseline"][m] for m in METRIC_KEYS})
    row["train_groups"] = " ".join(bundle.info["train_groups"])
    row["val_groups"] = " ".join(bundle.info["val_groups"])
    return row


def run_sweep(kind: str, values: Sequence[float], data: dict, out_dir: str | Path, *, repeats: int = 3,
              epochs: int | None = None, steps: int | None = None, mix: float | Sequence[float] = 0.1, seed: int = 0,
              batch_size: int = 8, pretrain_steps: int | None = None, train_options: dict | None = None,
              progress: Callable[[str], None] | None = None) -> list[dict]:
    """Run sweep ``kind`` over ``values`` (ratios, sizes; ignored for ``pretrain``); returns the rows
    written to ``out_dir/<kind>/results.csv``. Budget per run: ``epochs`` and/or ``steps``. For
    ``sizes``, ``mix`` may be several ratios (e.g. 0 and 0.1: without and with augmentation, as in
    the paper's Fig. 4): every size is run with each."""
    if kind not in SWEEPS:
        raise ValueError(f"unknown sweep {kind!r}; choose one of {', '.join(SWEEPS)}")
    if repeats < 1 or (kind != "pretrain" and not values):
        raise ValueError("give at least one value and one repeat")
    if epochs is None and steps is None:
        raise ValueError("give a number of epochs or of steps per run")
    opts = dict(train_options or {})
    out = Path(out_dir) / kind
    data = dict(data)
    length = data.pop("length", None)
    rows: list[dict] = []
    # the whole training pool fixes the intensity normalisation (metrics' data range) of every run
    pool = build_data(**data, mix=0.0, seed=seed, length=length)
    norm = pool.normalizer.to_dict()
    if kind == "sizes":
        length = pool.train.length  # every n gets the epoch length of the whole pool
        too_big = [int(v) for v in values if int(v) > pool.info["train_pool"]]
        if too_big:
            raise ValueError(f"size {too_big[0]} exceeds the {pool.info['train_pool']} training patients/files available")
    for rep in range(repeats):
        s = int(seed) + rep
        if kind == "pretrain":
            rows += _pretrain_repeat(data, out, rep, s, norm, length=length, epochs=epochs, steps=steps,
                                     pretrain_steps=pretrain_steps, batch_size=batch_size, opts=opts, progress=progress)
            write_csv(rows, out / "results.csv")
            continue
        mixes = [float(m) for m in (mix if isinstance(mix, (list, tuple)) else [mix])] if kind == "sizes" else [None]
        for value, m in [(v, m) for v in values for m in mixes]:
            if kind == "mixing":
                bundle = build_data(**data, mix=float(value), seed=s, length=length)
                run_dir = out / f"{value:g}" / f"rep{rep}"
            else:
                bundle = build_data(**data, mix=m, seed=s, length=length, train_size=int(value))
                run_dir = out / f"{value:g}" / (f"mix{m:g}" if len(mixes) > 1 else "") / f"rep{rep}"
            adopt_normalizer(bundle, norm)
            if progress:
                progress(f"{kind} {value:g} repeat {rep}: {run_dir}")
            report = _train(bundle, run_dir, epochs=epochs, steps=steps, batch_size=batch_size, seed=s, train_options=opts)
            rows.append(_row(kind, float(value), rep, s, bundle, report))
            write_csv(sorted(rows, key=_order), out / "results.csv")
    rows.sort(key=_order)
    write_csv(rows, out / "results.csv")
    plot_sweep(rows, out / f"{kind}.png")
    return rows


def _order(row: dict) -> tuple:
    v = row["value"]
    key = (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))
    return key + (float(row["mix"]), row["repeat"])


def _pretrain_repeat(data: dict, out: Path, rep: int, seed: int, norm: dict, *, length, epochs, steps, pretrain_steps,
                     batch_size: int, opts: dict, progress) -> list[dict]:
    syn_bundle = adopt_normalizer(build_data(**data, mix=1.0, seed=seed, length=length), norm)
    real_bundle = adopt_normalizer(build_data(**data, mix=0.0, seed=seed, length=length), norm)
    fine_steps = total_steps(real_bundle.train, batch_size, epochs, steps)
    pre_steps = int(pretrain_steps) if pretrain_steps is not None else fine_steps
    rows = []
    if progress:
        progress(f"pretrain real-only repeat {rep}")
    report = _train(real_bundle, out / "real-only" / f"rep{rep}", epochs=None, steps=fine_steps,
                    batch_size=batch_size, seed=seed, train_options=opts)
    row = _row("pretrain", "real-only", rep, seed, real_bundle, report)
    row["pretrain_steps"] = 0
    rows.append(row)
    if progress:
        progress(f"pretrain synthetic pre-training repeat {rep}")
    pre_dir = out / "pretrained" / f"rep{rep}"
    _train(syn_bundle, pre_dir, epochs=None, steps=pre_steps, batch_size=batch_size, seed=seed, train_options=opts)
    ft_bundle = build_data(**data, mix=0.0, seed=seed, length=length)
    if progress:
        progress(f"pretrain fine-tuning repeat {rep}")
    report = _train(ft_bundle, out / "pretrained+finetuned" / f"rep{rep}", epochs=None, steps=fine_steps,
                    batch_size=batch_size, seed=seed, train_options=opts, init=pre_dir / "last.pt")
    row = _row("pretrain", "pretrained+finetuned", rep, seed, ft_bundle, report)
    row["pretrain_steps"] = pre_steps
    rows.append(row)
    if progress:
        progress(f"pretrain real-only with the total steps repeat {rep}")
    long_bundle = adopt_normalizer(build_data(**data, mix=0.0, seed=seed, length=length), norm)
    report = _train(long_bundle, out / "real-only-total-steps" / f"rep{rep}", epochs=None, steps=fine_steps + pre_steps,
                    batch_size=batch_size, seed=seed, train_options=opts)
    row = _row("pretrain", "real-only-total-steps", rep, seed, long_bundle, report)
    row["pretrain_steps"] = 0
    rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    """All rows to ``path`` (columns: the union of the rows' keys, first-seen order), atomically."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def plot_sweep(rows: list[dict], path: Path) -> None:
    """RMSE, SSIM and PSNR (ours) and OpenSTL's MSE against the swept value: mean ± std over
    repeats, the last-image baseline dashed; steps per run in the title."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    kind = rows[0]["sweep"]
    values = list(dict.fromkeys(r["value"] for r in rows))
    numeric = all(isinstance(v, (int, float)) for v in values)
    if numeric:
        values = sorted(values)
    xs = values if numeric else list(range(len(values)))
    steps = sorted({int(r["steps"]) for r in rows})
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    arms = sorted({float(r["mix"]) for r in rows}) if kind == "sizes" else [None]
    for ax, m, label in zip(axes, ("rmse", "ssim", "psnr", "openstl_mse"),
                            ("RMSE (intensity)", "SSIM", "PSNR (dB)", "MSE per frame, OpenSTL [0,1]")):
        for arm in arms:
            sel = [r for r in rows if arm is None or float(r["mix"]) == arm]
            vals = [v for v in values if any(r["value"] == v for r in sel)]
            mean = [np.mean([r[m] for r in sel if r["value"] == v]) for v in vals]
            std = [np.std([r[m] for r in sel if r["value"] == v]) for v in vals]
            ax.errorbar([xs[values.index(v)] for v in vals], mean, yerr=std, marker="o", capsize=3,
                        label="SimVP" if arm is None else f"SimVP, mix {arm:g}", ls="-" if numeric else "none")
        ax.axhline(np.mean([r[f"baseline_{m}"] for r in rows]), color="k", ls="--", label="last image")
        ax.set_xlabel({"mixing": "mixing ratio", "sizes": "training patients", "pretrain": "arm"}[kind])
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in values], fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    reps = len({r["repeat"] for r in rows})
    fig.suptitle(f"{kind}: {reps} repeat(s), {'/'.join(map(str, steps))} steps per run"
                 + (" (same for every value)" if len(steps) == 1 else " (differs between runs)"), fontsize=10)
    fig.savefig(path, dpi=110)
