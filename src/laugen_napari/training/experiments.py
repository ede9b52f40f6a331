"""The paper's two sweeps (LAUGEN §3.1, Figs. 3–4), with repeats, to CSV and PNG plots.

- :func:`mixing_sweep`: one SimVP run per mixing ratio r and repeat (seed), same number of
  samples per epoch in every run; validation on the same held-out data.
- :func:`size_sweep`: one run per training-set size n (n real training sequences, a fixed
  mixing ratio, default 0.1 as chosen in the paper) and repeat.

Each run goes to ``out_dir/<sweep>/<value>/rep<k>/`` (metrics.csv, checkpoints, report.json);
``results.csv`` holds one row per run (final validation RMSE/MAE/SSIM/PSNR and the last-image
baseline) and ``<sweep>.png`` the mean ± standard deviation over repeats with the baseline as a
dashed line.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..metrics import FRAME_METRICS
from .datasets import MixedSequences, build_data
from .simvp import train_simvp


def _final_values(records) -> dict[str, float]:
    final: dict[str, float] = {}
    for rec in records:
        if rec.phase == "val":
            final = rec.values
    return final


def _subset_real(bundle, n: int, seed: int):
    """Keep ``n`` of the bundle's real training sequences (seeded choice); epoch length n."""
    real = bundle.train.real
    if real is None or n > len(real):
        have = 0 if real is None else len(real)
        raise ValueError(f"size {n} exceeds the {have} real training sequences available")
    idx = np.random.default_rng([seed, 5]).permutation(len(real))[:n]
    t = bundle.train
    bundle.train = MixedSequences(real[idx], t.synthetic, t.ratio, t.normalizer, length=n, seed=seed)
    bundle.info.update(real_train_sequences=n, length=n, n_synthetic=bundle.train.n_synthetic)
    return bundle


def run_sweep(kind: str, values: Sequence[float], data: dict, out_dir: str | Path, *, repeats: int = 3,
              epochs: int = 20, mix: float = 0.1, train_options: dict | None = None,
              progress: Callable[[str], None] | None = None) -> list[dict]:
    """Run ``kind`` ("mixing" or "sizes") over ``values``; returns the rows written to results.csv."""
    if kind not in ("mixing", "sizes"):
        raise ValueError(f"unknown sweep {kind!r}")
    if repeats < 1 or not values:
        raise ValueError("give at least one value and one repeat")
    out = Path(out_dir) / kind
    rows = []
    for value in values:
        for rep in range(repeats):
            if kind == "mixing":
                bundle = build_data(**data, mix=float(value), seed=rep)
            else:
                bundle = _subset_real(build_data(**data, mix=mix, seed=rep), int(value), rep)
            run_dir = out / f"{value:g}" / f"rep{rep}"
            if progress:
                progress(f"{kind} {value:g} repeat {rep}: {run_dir}")
            final = _final_values(train_simvp(bundle, run_dir, epochs=epochs, seed=rep, **(train_options or {})))
            row = {"sweep": kind, "value": float(value), "repeat": rep, "mix": bundle.info["mix"],
                   "samples_per_epoch": bundle.info["length"], "n_synthetic": bundle.info["n_synthetic"]}
            row.update({m: final[m] for m in FRAME_METRICS})
            row.update({f"baseline_{m}": final[f"baseline_{m}"] for m in FRAME_METRICS})
            rows.append(row)
            write_csv(rows, out / "results.csv")
    plot_sweep(rows, out / f"{kind}.png")
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_sweep(rows: list[dict], path: Path) -> None:
    """RMSE, SSIM and PSNR against the swept value: mean ± std over repeats, baseline dashed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    kind = rows[0]["sweep"]
    values = sorted({r["value"] for r in rows})
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    for ax, m, label in zip(fig.subplots(1, 3), ("rmse", "ssim", "psnr"), ("RMSE", "SSIM", "PSNR (dB)")):
        mean = [np.mean([r[m] for r in rows if r["value"] == v]) for v in values]
        std = [np.std([r[m] for r in rows if r["value"] == v]) for v in values]
        ax.errorbar(values, mean, yerr=std, marker="o", capsize=3, label="SimVP")
        ax.axhline(np.mean([r[f"baseline_{m}"] for r in rows]), color="k", ls="--", label="last image")
        ax.set_xlabel("mixing ratio" if kind == "mixing" else "training sequences")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
