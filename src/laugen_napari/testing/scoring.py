"""Scoring a predictor on a case (:func:`evaluate`), and a trained SimVP over kinds and slopes
(:func:`score_checkpoint`, ``laugen experiment unit-test``)."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .cases import LongitudinalCase, make_case, pair_sources, pearson, sample_source
from .models import LastFramePredictor, StructureArea, load_predictor


@dataclass
class Evaluation:
    """A predictor on one case's planes.

    Attributes:
        z_mm: (T,) truth per frame (context then target frames).
        true_area: (T,) area of the driving structure in the planes from the warped labels, mm².
        measured_true_area: (T,) the :class:`StructureArea` measurement on the true frames.
        model_area: (T,) the same measurement on the context frames then the predictions.
        rmse_by_horizon, baseline_rmse_by_horizon: (target,) RMSE (intensity units) h frames ahead,
            the model and the last-image baseline.
        context, predicted, target: (N, ·, H, W) frames; ``static`` (N, H, W) where the field is zero.
    """

    z_mm: np.ndarray
    true_area: np.ndarray
    measured_true_area: np.ndarray
    model_area: np.ndarray
    rmse_by_horizon: np.ndarray
    baseline_rmse_by_horizon: np.ndarray
    context: np.ndarray
    predicted: np.ndarray
    target: np.ndarray
    static: np.ndarray

    @property
    def area_change(self) -> tuple[np.ndarray, np.ndarray]:
        """(true, model) area change from the last context frame for each predicted frame, mm²."""
        c = self.context.shape[1]
        return self.true_area[c:] - self.true_area[c - 1], self.model_area[c:] - self.model_area[c - 1]


def evaluate(predictor, case: LongitudinalCase, axis: int = 0, crop: Sequence[int] | None = None,
             max_planes: int | None = 12) -> Evaluation:
    """Predict the case's planes (the ``max_planes`` with most structure) from their first
    ``predictor.context`` frames and measure the result against the truth."""
    c, t = int(predictor.context), int(predictor.target)
    if case.n_frames < c + t:
        raise ValueError(f"the case has {case.n_frames} frames; the model needs {c} + {t}")
    planes = case.planes(axis, crop, max_planes=max_planes)
    frames = planes.frames[:, :c + t]
    ctx, tgt = frames[:, :c], frames[:, c:]
    pred = np.asarray(predictor(ctx), np.float32)
    if pred.shape != tgt.shape:
        raise ValueError(f"the predictor returned {pred.shape}, expected {tgt.shape}")
    measured_true, measured_model = np.zeros(c + t), np.zeros(c + t)
    for i in range(len(frames)):
        m = StructureArea.fit(frames[i, 0], planes.structure[i, 0], planes.pixel_mm2)
        measured_true += m(frames[i])
        measured_model += m(np.concatenate([ctx[i], pred[i]]))
    base = LastFramePredictor(c, t)(ctx)
    rmse = np.sqrt(np.mean((pred.astype(np.float64) - tgt) ** 2, axis=(0, 2, 3)))
    base_rmse = np.sqrt(np.mean((base.astype(np.float64) - tgt) ** 2, axis=(0, 2, 3)))
    return Evaluation(np.asarray(case.z_mm[:c + t]), planes.area_mm2[:, :c + t].sum(0), measured_true, measured_model,
                      rmse, base_rmse, ctx, pred, tgt, planes.static)


def score_checkpoint(model: str | os.PathLike, out_dir: str | os.PathLike, *, pairs=None,
                     kinds: Sequence[str] = ("uniform", "directional", "gaussian"),
                     slopes: Sequence[float] = (-0.5, 0.25, 0.5, 1.0), series: int = 4, frames: int | None = None,
                     axis: int = 0, crop: Sequence[int] | None = None, labels: Sequence[int] | None = None,
                     sigma_mm: float | None = None, seed: int = 0, trajectory: str = "linear") -> dict:
    """Score a trained model (a SimVP checkpoint, or any :func:`load_predictor` spec) on LAUGEN
    series per kind and slope; ``series`` seeds per (kind, slope) vary the source (when several
    pairs), the directional kind's direction and the gaussian kind's centre. Writes ``out_dir/unit-test/{report.json, unit-test.csv, unit-test.png}``
    and returns the report (rows: area-change correlation, predicted/true area change at the last
    frame, RMSE by horizon for the model and the last-image baseline)."""
    predictor = load_predictor(str(model))
    sources = [sample_source()] if not pairs else _sources_from(pairs)
    out = Path(out_dir) / "unit-test"
    out.mkdir(parents=True, exist_ok=True)
    n_frames = frames or predictor.context + predictor.target
    rows, scatter = [], []
    for kind in kinds:
        for slope in slopes:
            true_ch, model_ch, rmse, base = [], [], [], []
            for k in range(int(series)):
                src = sources[k % len(sources)]
                direction, center = _kind_draw(src, labels, seed, k)
                case = make_case(src, kind=kind, trajectory=trajectory, slope=float(slope), frames=n_frames,
                                 labels=labels, sigma_mm=sigma_mm, seed=seed + k, direction=direction, center=center)
                ev = evaluate(predictor, case, axis=axis, crop=crop)
                tc, mc = ev.area_change
                true_ch.append(tc)
                model_ch.append(mc)
                rmse.append(ev.rmse_by_horizon)
                base.append(ev.baseline_rmse_by_horizon)
            tc, mc = np.concatenate(true_ch), np.concatenate(model_ch)
            r = pearson(mc, tc)
            row = {"kind": kind, "slope": float(slope), "series": int(series), "volume_corr": r,
                   "true_change_last_mm2": float(np.mean([x[-1] for x in true_ch])),
                   "model_change_last_mm2": float(np.mean([x[-1] for x in model_ch])),
                   "rmse_by_horizon": np.mean(rmse, 0).tolist(), "baseline_rmse_by_horizon": np.mean(base, 0).tolist()}
            rows.append(row)
            scatter += [(kind, float(slope), a, b) for a, b in zip(tc, mc)]
    all_t = np.array([s[2] for s in scatter])
    all_m = np.array([s[3] for s in scatter])
    report = {"model": str(model), "context": predictor.context, "target": predictor.target, "axis": axis,
              "crop": list(crop) if crop else None, "trajectory": trajectory, "labels": labels,
              "sources": [s.name for s in sources], "rows": rows,
              "overall_volume_corr": pearson(all_m, all_t),
              "measurement": "area (mm²) of the pixels on the structure's side of an intensity threshold fitted on "
                             "the input frame, summed over the planes with most structure; truth from the warped labels"}
    _write_json(out / "report.json", report)
    with open(out / "unit-test.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        h = len(rows[0]["rmse_by_horizon"])
        w.writerow(["kind", "slope", "series", "volume_corr", "true_change_last_mm2", "model_change_last_mm2"]
                   + [f"rmse_h{i + 1}" for i in range(h)] + [f"baseline_rmse_h{i + 1}" for i in range(h)])
        for r in rows:
            w.writerow([r["kind"], r["slope"], r["series"], r["volume_corr"], r["true_change_last_mm2"],
                        r["model_change_last_mm2"], *r["rmse_by_horizon"], *r["baseline_rmse_by_horizon"]])
    _plot(rows, scatter, out / "unit-test.png", str(model))
    return report


def _kind_draw(source, labels, seed: int, k: int):
    """Series 0 uses the case defaults; series k > 0 a seeded direction (on the sphere) and a
    seeded centre (a voxel of the driving structure)."""
    if k == 0 and seed == 0:
        return None, None
    rng = np.random.default_rng([int(seed), int(k), 17])
    v = rng.normal(size=3)
    mask = source.labels != 0 if labels is None else np.isin(source.labels, list(labels))
    pts = np.argwhere(mask)
    return tuple(v / np.linalg.norm(v)), tuple(float(c) for c in pts[int(rng.integers(len(pts)))])


def _sources_from(pairs):
    if isinstance(pairs, (str, os.PathLike)):
        return pair_sources(pairs)
    from ..io.pairs import read_pair
    from .cases import Source, _crop_to_structure

    out = []
    for image, mask in pairs:
        img, lab = read_pair(image, mask)
        im, lb = _crop_to_structure(np.asarray(img.data, np.float32), np.asarray(lab.data, np.int32), 12)
        out.append(Source(np.ascontiguousarray(im), np.ascontiguousarray(lb), img.spacing, Path(image).name))
    return out


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else float(v)))
    os.replace(tmp, path)


def _plot(rows: list[dict], scatter: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    colours = dict(zip(kinds, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for kind in kinds:
        pts = np.array([(s[2], s[3]) for s in scatter if s[0] == kind])
        a1.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.6, color=colours[kind], label=kind)
    lim = max(1.0, float(np.abs([s[2] for s in scatter] + [s[3] for s in scatter]).max()))
    a1.plot([-lim, lim], [-lim, lim], "k:", lw=1)
    a1.set_xlabel("true area change (mm²)")
    a1.set_ylabel("predicted area change (mm²)")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    for kind in kinds:
        sel = [r for r in rows if r["kind"] == kind]
        h = np.arange(1, len(sel[0]["rmse_by_horizon"]) + 1)
        a2.plot(h, np.mean([r["rmse_by_horizon"] for r in sel], 0), "o-", color=colours[kind], label=f"{kind} model")
        a2.plot(h, np.mean([r["baseline_rmse_by_horizon"] for r in sel], 0), "s--", color=colours[kind],
                alpha=0.6, label=f"{kind} last image")
    a2.set_xlabel("frames ahead")
    a2.set_ylabel("RMSE (intensity)")
    a2.legend(fontsize=7, ncol=2)
    a2.grid(alpha=0.3)
    fig.suptitle(f"LAUGEN unit test of {Path(title).name}", fontsize=10)
    fig.savefig(path, dpi=110)
