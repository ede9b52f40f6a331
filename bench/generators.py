"""Benchmarks of the image+mask generators on this machine (CPU by default).

``python bench/generators.py``                seconds per training step (batch 8) at 64x64 and
                                              128x128 for VAE, HVAE and dHVAE, and sampling time
                                              per 100 pairs.
``python bench/generators.py real-run --minutes 18 --run-dir /tmp/run [--prefix P]``
                                              trains the default model on slices of the shipped
                                              sample for a wall-clock budget and writes
                                              bench/results/P_curves.png and P_samples.png.
``python bench/generators.py grid --checkpoint RUN/best.pt --prefix P``   sample grid of a checkpoint.

Run with ``OMP_WAIT_POLICY=PASSIVE nice``; threads default to 1 (``--threads``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from laugen_napari.models.dhvae import build_model, count_parameters  # noqa: E402
from laugen_napari.training.dhvae import DHVAETask, SliceSet, make_training, slices_from_folder  # noqa: E402
from laugen_napari.training.loop import read_metrics_csv, run_training  # noqa: E402

SAMPLE = ROOT / "sample_data"
RESULTS = ROOT / "bench" / "results"


def _random_slices(n: int, size: int) -> SliceSet:
    rng = np.random.default_rng(0)
    imgs = rng.random((n, size, size), dtype=np.float32)
    masks = (rng.random((n, size, size)) > 0.9).astype(np.uint8)
    z = np.zeros(n)
    return SliceSet(imgs, masks, np.arange(n), np.zeros(n, np.int64), z, z + 1, ["random"])


def time_steps(kind: str, size: int, steps: int, leapfrog: int) -> tuple[float, int]:
    """Median seconds per training step (batch 8) after one warm-up step, and the parameter count."""
    torch.manual_seed(0)
    model = build_model(kind, size=size, leapfrog_steps=leapfrog, disc_warmup=0)
    data = _random_slices(16, size)
    task = DHVAETask(model, data, data, batch_size=8, steps_per_epoch=steps + 1)
    times = []
    for batch in task.batches(0):
        t = time.perf_counter()
        task.train_step(batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]), count_parameters(model)


def time_sampling(size: int, n: int = 100) -> float:
    model = build_model("dhvae", size=size).eval()
    model.sample(8)
    t = time.perf_counter()
    model.sample(n, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - t


def timing(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch 8, median of {args.steps} steps")
    print(f"{'model':7s} {'K':>2s} {'size':>5s} {'params':>10s} {'s/step':>8s}")
    for size in (64, 128):
        for kind, k in (("vae", 0), ("hvae", args.leapfrog), ("dhvae", args.leapfrog)):
            sec, params = time_steps(kind, size, args.steps, max(k, 1))
            print(f"{kind:7s} {k:2d} {size:5d} {params:10,d} {sec:8.3f}", flush=True)
    for size in (64, 128):
        print(f"sampling 100 pairs at {size}x{size}: {time_sampling(size):.3f} s", flush=True)


def plot_curves(run_dir: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics_csv(run_dir / "metrics.csv")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))

    def series(phase: str, name: str):
        pts = [(r.step, r.values[name]) for r in recs if r.phase == phase and name in r.values]
        return np.array(pts) if pts else np.zeros((0, 2))

    def smooth(v: np.ndarray, w: int = 25) -> np.ndarray:
        return np.convolve(v, np.ones(w) / w, mode="valid") if len(v) > w else v

    tr, va = series("train", "nelbo"), series("val", "loss")
    axes[0].plot(tr[:, 0], tr[:, 1], alpha=0.25, label="train (per step)")
    axes[0].plot(tr[len(tr) - len(smooth(tr[:, 1])):, 0], smooth(tr[:, 1]), label="train (moving mean)")
    axes[0].plot(va[:, 0], va[:, 1], "o-", label="validation")
    axes[0].set(title="-ELBO_H (nats per slice)", xlabel="step")
    axes[0].legend(fontsize=7)
    for name in ("l1", "perc"):
        s = series("train", name)
        if len(s):
            axes[1].plot(s[len(s) - len(smooth(s[:, 1])):, 0], smooth(s[:, 1]), label=name)
    axes[1].set(title="reconstruction terms (moving mean)", xlabel="step")
    axes[1].legend(fontsize=7)
    for name in ("disc", "gen"):
        s = series("train", name)
        if len(s):
            axes[2].plot(s[:, 0], s[:, 1], label=name, alpha=0.7)
    axes[2].set(title="discriminator / generator", xlabel="step")
    axes[2].legend(fontsize=7)
    for name in ("psnr", "ssim", "dice"):
        s = series("val", name)
        if len(s):
            axes[3].plot(s[:, 0], s[:, 1] if name == "psnr" else 20 * s[:, 1], "o-",
                         label=name if name == "psnr" else f"{name} x20")
    s = series("sample", "jsd")
    if len(s):
        axes[3].plot(s[:, 0], 100 * s[:, 1], "s--", label="mask JSD x100")
    axes[3].set(title="validation / sample metrics", xlabel="step")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def plot_samples(model, real: SliceSet, png: Path, n: int = 16, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = model.sample(n, generator=torch.Generator().manual_seed(seed)).numpy()
    idx = np.linspace(0, len(real) - 1, min(8, len(real))).astype(int)
    rows = [("real slices (mask contour red)", real.images[idx], real.masks[idx], False),
            ("generated images 1-8", s[:8, 0], s[:8, 1] >= 0.5, False),
            ("generated mask probabilities 1-8", s[:8, 1], None, True),
            ("generated images 9-16", s[8:16, 0], s[8:16, 1] >= 0.5, False)]
    fig, axes = plt.subplots(len(rows), 8, figsize=(12, 6.6))
    for r, (title, imgs, masks, is_prob) in enumerate(rows):
        for c in range(8):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(imgs):
                continue
            ax.imshow(imgs[c], cmap="magma" if is_prob else "gray", vmin=0, vmax=1)
            if masks is not None and masks[c].any():
                ax.contour(masks[c].astype(float), levels=[0.5], colors="r", linewidths=0.6)
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def real_run(args: argparse.Namespace) -> None:
    run_dir = Path(args.run_dir)
    slices = slices_from_folder(SAMPLE, args.size)
    task, batches, kw = make_training(slices=slices, size=args.size, steps=args.max_steps, out=run_dir,
                                      resume=args.resume, lr=args.lr, disc_warmup=args.warmup,
                                      leapfrog_steps=args.leapfrog)
    print(f"{len(slices)} slices at {args.size}; {count_parameters(task.model):,} parameters; K={task.cfg.leapfrog_steps}; "
          f"lr {task.cfg.lr}; budget {args.minutes} min", flush=True)
    stop = threading.Event()
    timer = threading.Timer(args.minutes * 60.0, stop.set)
    timer.start()
    t0 = time.perf_counter()
    try:
        for rec in run_training(task, batches, stop=stop, **kw):
            if rec.phase != "train":
                print(f"{time.perf_counter() - t0:7.0f}s step {rec.step} {rec.phase}: "
                      + ", ".join(f"{k} {v:.4g}" for k, v in rec.values.items()), flush=True)
    finally:
        timer.cancel()
    print(f"trained {task.step} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    curves, grid = RESULTS / f"{args.prefix}_curves.png", RESULTS / f"{args.prefix}_samples.png"
    plot_curves(run_dir, curves)
    task.model.eval()
    plot_samples(task.model, slices, grid)
    print(f"wrote {curves} and {grid}")


def grid(args: argparse.Namespace) -> None:
    """Sample grid of a checkpoint (e.g. best.pt of a run) against the real slices."""
    from laugen_napari.training.dhvae import load_generator

    model = load_generator(args.checkpoint)
    png = RESULTS / f"{args.prefix}_samples.png"
    plot_samples(model, slices_from_folder(SAMPLE, model.cfg.size), png)
    print(f"wrote {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="timing", choices=("timing", "real-run", "grid"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timing: steps per configuration")
    ap.add_argument("--leapfrog", type=int, default=1, help="K for HVAE/dHVAE")
    ap.add_argument("--minutes", type=float, default=18.0, help="real-run: wall-clock budget")
    ap.add_argument("--run-dir", default="/tmp/laugen_dhvae_run")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--prefix", default="dhvae", help="real-run/grid: PNG names bench/results/PREFIX_*.png")
    ap.add_argument("--checkpoint", help="grid: a last.pt/best.pt")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"timing": timing, "real-run": real_run, "grid": grid}[args.mode](args)


if __name__ == "__main__":
    main()
