"""Benchmark: peak memory of ``laugen generate`` against the number of frames T (issue 10, §2).

Run from the repository root::

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python bench/memory.py [--frames 8 32 64] [--in-memory]

Every run is a fresh ``python -m laugen_napari generate`` subprocess on the shipped 1 mm MNI152
pair (sigma 5 mm, linear trajectory, seed 0, CPU, one thread) into a temporary folder; its peak
resident set size is the kernel's ``ru_maxrss`` of that child alone (``os.wait4``). The runs are
side by side in one invocation, so they share the machine's state.

Target: the peak grows by less than one frame (image float32 + mask, as held in memory) from the
smallest to the largest T. ``--in-memory`` adds, for comparison, the same series built whole in
memory (``Augmenter.series``) and written with ``save_volume``, as the exporter did before.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "sample_data" / "mni152_t1.nii.gz"
MASK = ROOT / "sample_data" / "mni152_ventricles_seg.nii.gz"

IN_MEMORY = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from laugen_napari.pipeline import load_pair, build_augmenter
from laugen_napari.settings import GenerationSettings
from laugen_napari.io.nifti import save_volume
from laugen_napari.core import series_seed
image, mask = load_pair(sys.argv[1], sys.argv[2])
opts = GenerationSettings(frames=int(sys.argv[4]), device="cpu").validate()
aug = build_augmenter(image, mask, opts)
s = aug.series(opts.trajectory_model(), opts.frames, seed=series_seed(0, 0))
save_volume(sys.argv[3] + "/image_series.nii.gz", s.images, image, dtype=np.float32)
save_volume(sys.argv[3] + "/mask_series.nii.gz", s.labels, mask, dtype=mask.data.dtype)
"""

STREAMED = """
import sys, torch
torch.set_num_threads(1)
from laugen_napari.cli import main
sys.exit(main(["generate", sys.argv[1], sys.argv[2], "-o", sys.argv[3] + "/out", "--frames", sys.argv[4],
               "--device", "cpu", "-q"]))
"""


def run_child(code: str, frames: int, workdir: Path) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, bytes written) of one fresh interpreter."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:  # warnings (folding at large T) kept out of the table
        proc = subprocess.Popen([sys.executable, "-c", code, str(IMAGE), str(MASK), str(workdir), str(frames)],
                                env=env, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace"))
            raise SystemExit(f"bench/memory.py: the run with T={frames} failed (exit {proc.returncode})")
    size = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())
    return usage.ru_maxrss / 1024.0, wall, size  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--in-memory", action="store_true", help="also run the whole-series-in-memory writer")
    args = ap.parse_args()

    import nibabel as nib
    import numpy as np

    shape = nib.load(str(IMAGE)).shape
    mask_dtype = nib.load(str(MASK)).get_data_dtype()
    voxels = int(np.prod(shape))
    frame_mb = voxels * (4 + np.dtype(mask_dtype).itemsize) / 2 ** 20
    print(f"laugen generate, peak RSS against T: MNI152 1 mm {shape} = {voxels} voxels; one frame (float32 image "
          f"+ {np.dtype(mask_dtype).name} mask) = {frame_mb:.1f} MB")
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, one thread per run, "
          "each run a fresh process\n")
    modes = [("streamed (laugen generate)", STREAMED)]
    if args.in_memory:
        modes.append(("in memory (Augmenter.series + save_volume)", IN_MEMORY))
    for label, code in modes:
        print(label)
        print(f"{'T':>6} {'peak RSS MB':>12} {'wall s':>8} {'written MB':>11}")
        peaks = []
        for t in args.frames:
            with tempfile.TemporaryDirectory(prefix="laugen-mem-") as tmp:
                peak, wall, size = run_child(code, t, Path(tmp))
            peaks.append(peak)
            print(f"{t:>6} {peak:>12.0f} {wall:>8.1f} {size / 2 ** 20:>11.1f}", flush=True)
        growth = peaks[-1] - peaks[0]
        verdict = "PASS" if growth < frame_mb else "FAIL"
        print(f"growth T={args.frames[0]} -> T={args.frames[-1]}: {growth:+.0f} MB = {growth / frame_mb:+.2f} frames "
              f"({verdict}: target < 1 frame = {frame_mb:.1f} MB)\n")


if __name__ == "__main__":
    main()
