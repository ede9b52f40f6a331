"""Benchmark: SimVP training speed on this machine (issue 5).

Run from the repository root::

    OMP_WAIT_POLICY=PASSIVE nice python bench/train.py [--steps 5] [--threads 1] [--mmnist-batch 16]

Two configurations, each timed over ``--steps`` optimiser steps (MSE + Adam, as in training) after
one warm-up step; the median step time is printed with samples per second:

1. the CPU default size (:data:`~laugen_napari.models.simvp.CPU_DEFAULT`, gSTA), 4 → 4 frames of
   64×64, batch 8 — the size ``laugen train simvp`` uses unless told otherwise;
2. the Moving-MNIST configuration (hid_S 64, hid_T 512, N_S 4, N_T 8, gSTA, 46.8 M parameters),
   10 → 10 frames of 64×64, batch ``--mmnist-batch`` (16 in the paper's setting).

Peak memory is the process's peak resident set size after each configuration (``ru_maxrss``), so
the second figure includes the first.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from laugen_napari.models.simvp import CPU_DEFAULT, MMNIST, SimVP, SimVPConfig, count_parameters  # noqa: E402


def peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def bench(name: str, config: SimVPConfig, batch: int, size: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = SimVP(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, config.frames, config.channels, size, size)
    y = torch.rand_like(x)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # step 0 is the warm-up
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    out = {"name": name, "params_M": count_parameters(model) / 1e6, "batch": batch, "frames": config.frames,
           "size": size, "step_s": step, "step_min_s": min(times), "samples_per_s": batch / step,
           "peak_rss_MiB": peak_rss_mib()}
    print(f"{name:>8}: {out['params_M']:.2f} M params, {config.frames}->{config.frames} frames {size}x{size}, "
          f"batch {batch}: {step:.3f} s/step median (min {min(times):.3f}, {len(times)} steps), "
          f"{out['samples_per_s']:.1f} samples/s, peak RSS {out['peak_rss_MiB']:.0f} MiB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--size", type=int, default=64, help="frame height and width")
    ap.add_argument("--batch", type=int, default=8, help="batch of the CPU default configuration")
    ap.add_argument("--mmnist-batch", type=int, default=16)
    ap.add_argument("--mmnist-steps", type=int, default=2, help="timed steps of the (slow) mmnist configuration")
    ap.add_argument("--skip-mmnist", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch thread(s)")
    bench("default", SimVPConfig(frames=4, **CPU_DEFAULT), args.batch, args.size, args.steps)
    if not args.skip_mmnist:
        bench("mmnist", SimVPConfig(frames=10, **MMNIST), args.mmnist_batch, args.size, args.mmnist_steps)


if __name__ == "__main__":
    main()
