"""Benchmark: the engine at clinical scale (issue 13).

Run from the repository root::

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python bench/scale.py [--repeats 3] [--frames 8 32]
        [--sizes 1 0.7 0.5 ct] [--threads 1] [--device cpu|cuda] [--ct-frames 8 32]

Volumes, all with sigma = 5 mm and z_t = 0.4 * t mm:

- the shipped MNI152 pair (1 mm, 189x233x197, lateral ventricles), and the same pair resampled to
  0.7 mm and 0.5 mm (image trilinear, labels nearest): the same anatomy in 2.9x and 8x the voxels,
  so a linear engine spends the same time per moving voxel per frame at every size;
- a CT-sized volume, 400x512x512 voxels of 1.0x0.75x0.75 mm (int16 HU), with a synthetic lobulated
  liver-sized organ (label 1, ~1.8 L) and a kidney-sized one (label 2, ~0.15 L).

For every size and T, measured side by side in one run (repeats round-robin over the sizes; the
figure kept is the fastest repeat, the least disturbed by other jobs on a shared machine):

- set-up: ``Augmenter(...)`` (field, warper, Jacobian coefficients);
- frames: ``Augmenter.iter_frames`` streaming T frames, each dropped after it is yielded (as the
  exporter writes a frame and drops it), so memory does not grow with T;
- the copy floor: T fresh image (float32) + label arrays, each allocated, filled with a copy of the
  input and dropped, the least any engine that returns new frames must do (the issue's target is
  set against it); and the warm floor: the same T copies into one pair of arrays allocated and
  touched before the clock starts, what is left once the first touch of fresh memory is not paid
  (``iter_frames`` reuses a frame's memory once the consumer has dropped it, so it pays the first
  touch once per series);
- peak memory: the largest resident set size above the level before the step (sampled every 2 ms);
- before each timed step one frame's worth of memory is allocated, filled and dropped (untimed), so
  neither step pays alone for the slow first touch of fresh memory on a machine full of page cache;
- time per moving voxel per frame: frames time / (moving voxels x T), in ns.

Times are CPU seconds of this process (``--clock cpu``, the default: on a machine shared with other
jobs they do not count the time the process waits for a core) or wall seconds (``--clock wall``).

With ``--device cuda`` the frames are also timed on the GPU alone (``torch.cuda.synchronize``,
frames computed into device buffers), and the copy back to host memory separately.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# LAUGEN_SRC=path/to/another/checkout/src measures that engine (e.g. an older commit) with this script
sys.path.insert(0, os.environ.get("LAUGEN_SRC", str(ROOT / "src")))

import laugen_napari  # noqa: E402
from laugen_napari.core import Augmenter, CustomTrajectory, resolve_device  # noqa: E402

IMAGE = ROOT / "sample_data" / "mni152_t1.nii.gz"
MASK = ROOT / "sample_data" / "mni152_ventricles_seg.nii.gz"
SIGMA_MM = 5.0
now = time.process_time  # the clock (set by --clock)
STEP_MM = 0.4
CT_SHAPE = (400, 512, 512)
CT_SPACING = (1.0, 0.75, 0.75)


# ------------------------------------------------------------------------------------------------
# memory and time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Largest RSS above the level at entry, sampled every 2 ms on a thread."""

    def __enter__(self):
        gc.collect()
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.above = self.peak - self.base


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def mb(n: float) -> str:
    return f"{n / 2**20:7.0f} MB"


# ------------------------------------------------------------------------------------------------
# volumes


def load_sample():
    from laugen_napari.pipeline import load_pair

    img, seg = load_pair(IMAGE, MASK)
    return img.data, seg.data, tuple(float(s) for s in img.spacing)


def resample(image: np.ndarray, labels: np.ndarray, spacing, h: float):
    """The pair on an isotropic ``h`` mm grid over the same extent: image trilinear (as uint8 when
    the input is), labels nearest."""
    shape = [int(round((n - 1) * s / h)) + 1 for n, s in zip(labels.shape, spacing)]
    new_spacing = tuple((n - 1) * s / (m - 1) for n, s, m in zip(labels.shape, spacing, shape))
    img = torch.from_numpy(image.astype(np.float32))[None, None]
    out = torch.nn.functional.interpolate(img, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()
    if np.issubdtype(image.dtype, np.integer):
        out = np.clip(np.rint(out), np.iinfo(image.dtype).min, np.iinfo(image.dtype).max).astype(image.dtype)
    idx = [np.rint(np.linspace(0, n - 1, m)).astype(np.intp) for n, m in zip(labels.shape, shape)]
    lab = labels[np.ix_(*idx)]
    return np.ascontiguousarray(out), np.ascontiguousarray(lab), new_spacing


def make_ct(seed: int = 0):
    """A CT-sized int16 volume (400x512x512, 1.0x0.75x0.75 mm) with a lobulated liver-sized organ
    (label 1) and a kidney-sized one (label 2); built slab by slab to keep memory low."""
    rng = np.random.default_rng(seed)
    Z, Y, X = CT_SHAPE
    sz, sy, sx = CT_SPACING
    image = np.empty(CT_SHAPE, np.int16)
    labels = np.zeros(CT_SHAPE, np.uint8)
    y = (np.arange(Y) - Y / 2) * sy
    x = (np.arange(X) - X / 2) * sx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    body = (yy / 150.0) ** 2 + (xx / 180.0) ** 2 <= 1.0
    theta = np.arctan2(yy + 10, xx + 40)
    for z0 in range(0, Z, 40):
        z = (np.arange(z0, min(Z, z0 + 40)) - Z / 2) * sz
        zz = z[:, None, None]
        # liver: an ellipsoid (70, 90, 75) mm whose radius is modulated by low-frequency lobes
        lobes = 1.0 + 0.12 * np.sin(3 * theta)[None] + 0.08 * np.cos(2 * np.pi * zz / 90.0)
        r_liver = ((zz - 10) / 70.0) ** 2 + ((yy + 10) / 90.0) ** 2 + ((xx + 40) / 75.0) ** 2
        liver = r_liver <= lobes**2
        kidney = ((zz + 30) / 50.0) ** 2 + ((yy - 40) / 30.0) ** 2 + ((xx - 80) / 25.0) ** 2 <= 1.0
        hu = np.where(body[None], 40.0, -1000.0) + rng.normal(0, 12, (len(z), Y, X))
        hu = np.where(liver, 60.0 + rng.normal(0, 12, hu.shape), hu)
        hu = np.where(kidney, 150.0 + rng.normal(0, 12, hu.shape), hu)
        image[z0 : z0 + len(z)] = np.clip(hu, -1024, 3071).astype(np.int16)
        lab = labels[z0 : z0 + len(z)]
        lab[liver] = 1
        lab[kidney & ~liver] = 2
    return image, labels, CT_SPACING


# ------------------------------------------------------------------------------------------------
# the steps


def touch(image_f32: np.ndarray, labels: np.ndarray) -> None:
    """Allocate, fill and drop one frame's arrays: the first touch of fresh memory after other
    work is slow on a machine whose memory is full of page cache; both timed steps start after it."""
    a = np.empty(image_f32.shape, np.float32)
    a.fill(0)
    b = np.empty(labels.shape, labels.dtype)
    b.fill(0)
    del a, b


def run_setup(image, labels, spacing, device):
    return Augmenter(image, labels, spacing, sigma_mm=SIGMA_MM, device=device)


def run_frames(aug: Augmenter, draw, sync) -> float:
    """Stream the frames; each is dropped as the next is computed."""
    sync()
    t0 = now()
    for frame in aug.iter_frames(draw):
        del frame
    sync()
    return now() - t0


def run_floor(image_f32: np.ndarray, labels: np.ndarray, frames: int) -> float:
    t0 = now()
    for _ in range(frames):
        a = np.empty(image_f32.shape, np.float32)
        np.copyto(a, image_f32)
        b = np.empty(labels.shape, labels.dtype)
        np.copyto(b, labels)
        del a, b
    return now() - t0


def run_floor_warm(image_f32: np.ndarray, labels: np.ndarray, frames: int) -> float:
    a = np.empty(image_f32.shape, np.float32)
    a.fill(0)
    b = np.empty(labels.shape, labels.dtype)
    b.fill(0)
    t0 = now()
    for _ in range(frames):
        np.copyto(a, image_f32)
        np.copyto(b, labels)
    return now() - t0


def run_gpu_frames(aug: Augmenter, draw) -> tuple[float, float]:
    """(GPU time of T frames into device buffers incl. volumes and Jacobian summaries, copy time of
    T frames back to host memory), both with ``torch.cuda.synchronize``."""
    from laugen_napari.core.series import _LabelCounter

    w = aug.warper
    img = torch.empty(w.image.shape, dtype=torch.float32, device=w.image.device)
    lab = torch.empty_like(w.labels)
    counter = _LabelCounter(w, aug.spacing, aug._label_counts)
    w.prepare(float(np.abs(draw.z_mm).max()))
    host_img = torch.empty(img.shape, dtype=img.dtype, pin_memory=True)
    host_lab = torch.empty(lab.shape, dtype=lab.dtype, pin_memory=True)
    gpu = copy = 0.0
    for z in draw.z_mm:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, _, moving = w.warp(float(z), img, lab)
        counter.volumes_ml(moving)
        aug.jacobian.summary(float(z))
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        host_img.copy_(img)
        host_lab.copy_(lab)
        torch.cuda.synchronize()
        gpu += t1 - t0
        copy += time.perf_counter() - t1
    return gpu, copy


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement (the fastest is kept), default 3")
    p.add_argument("--frames", type=int, nargs="+", default=[8, 32], help="series lengths T, default 8 32")
    p.add_argument("--ct-frames", type=int, nargs="+", default=None, help="series lengths for the CT volume (default: --frames)")
    p.add_argument("--sizes", nargs="+", default=["1", "0.7", "0.5", "ct"], help="sample spacings in mm and/or 'ct'")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None,
                   help="cpu: CPU time of this process (default on CPU; robust to other jobs), wall: elapsed time"
                        " (default with --device cuda)")
    args = p.parse_args(argv)
    if args.repeats < 1 or min(args.frames) < 2:
        p.error("need --repeats >= 1 and --frames >= 2")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    for s in args.sizes:
        if s != "ct":
            try:
                float(s)
            except ValueError:
                p.error(f"--sizes takes spacings in mm or 'ct', got {s!r}")
    torch.set_num_threads(args.threads)
    global now
    if args.clock is None:
        args.clock = "cpu" if device.type == "cpu" else "wall"
    if args.clock == "cpu" and device.type != "cpu":
        p.error("--clock cpu measures CPU work only: use --clock wall with --device cuda")
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    print("LAUGEN engine at scale (bench/scale.py)")
    print(f"  python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, cpus {os.cpu_count()},"
          f" torch threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if cuda else "")
          + f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, nice {os.nice(0)}")
    print(f"  sigma {SIGMA_MM:g} mm, z_t = {STEP_MM:g}*t mm; fastest of {args.repeats} repeats (round-robin);"
          f" clock: {'CPU time of this process' if args.clock == 'cpu' else 'wall time'}; engine from {laugen_napari.__file__}")
    print(f"  load average at start (1/5/15 min): {loadavg()}")

    # -- volumes ---------------------------------------------------------------------------------------
    base = load_sample()
    cases = []
    for s in args.sizes:
        t0 = time.perf_counter()
        if s == "ct":
            image, labels, spacing = make_ct()
            name = "CT 400x512x512"
            frames = args.ct_frames or args.frames
        else:
            h = float(s)
            image, labels, spacing = base if h == 1.0 else resample(*base, h)
            name = f"MNI {h:g} mm"
            frames = args.frames
        print(f"  {name}: (Z,Y,X) {labels.shape} = {labels.size / 1e6:.1f} M voxels, {image.dtype}, spacing "
              f"{tuple(round(v, 4) for v in spacing)} mm, structure {int((labels != 0).sum())} voxels"
              f" (made in {time.perf_counter() - t0:.1f} s)", flush=True)
        cases.append(dict(name=name, image=image, labels=labels, spacing=spacing, frames=frames))

    # -- measurements, round-robin -----------------------------------------------------------------------
    res: dict[tuple[str, int], dict[str, list[float]]] = {}
    for r in range(args.repeats):
        for c in cases:
            image, labels, spacing = c["image"], c["labels"], c["spacing"]
            with PeakRSS() as mem:
                t0 = now()
                aug = run_setup(image, labels, spacing, device)
                sync()
                setup = now() - t0
            c["moving"] = aug.warper.n_moving
            c["roi"] = tuple(s.stop - s.start for s in aug.field.roi)
            image_f32 = image.astype(np.float32)
            for T in c["frames"]:
                draw = CustomTrajectory([round(STEP_MM * t, 10) for t in range(T)]).sample(T)
                d = res.setdefault((c["name"], T), {k: [] for k in (
                    "setup", "setup_mem", "frames", "frames_mem", "floor", "floor_mem", "warm", "gpu", "copy")})
                d["setup"].append(setup)
                d["setup_mem"].append(mem.above)
                touch(image_f32, labels)
                with PeakRSS() as m2:
                    d["frames"].append(run_frames(aug, draw, sync))
                d["frames_mem"].append(m2.above)
                touch(image_f32, labels)
                with PeakRSS() as m3:
                    d["floor"].append(run_floor(image_f32, labels, T))
                d["floor_mem"].append(m3.above)
                d["warm"].append(run_floor_warm(image_f32, labels, T))
                if cuda:
                    g, cp = run_gpu_frames(aug, draw)
                    d["gpu"].append(g)
                    d["copy"].append(cp)
                print(f"  repeat {r + 1}/{args.repeats} {c['name']} T={T}: set-up {setup:.2f} s, frames "
                      f"{d['frames'][-1]:.2f} s, floor {d['floor'][-1]:.2f} s (warm {d['warm'][-1]:.2f} s),"
                      f" load {loadavg()}", flush=True)
            del aug, image_f32
            gc.collect()

    # -- tables ------------------------------------------------------------------------------------------
    print()
    print("== per size and T (fastest repeat; memory: largest RSS above the level before the step) ==")
    print(f"  {'volume':<16s}{'T':>3s} {'voxels':>7s} {'moving':>7s} {'set-up':>8s} {'frames':>8s} {'whole':>8s}"
          f" {'floor':>8s} {'whole/':>7s} {'warm':>7s} {'whole/':>7s} {'ns/mv-fr':>9s} {'ns/mv-fr':>9s} {'mem set-up':>11s}"
          f" {'mem frames':>11s} {'mem floor':>10s}")
    print(f"  {'':<16s}{'':>3s} {'M':>7s} {'M':>7s} {'s':>8s} {'s':>8s} {'s':>8s} {'s':>8s} {'floor':>7s}"
          f" {'floor s':>7s} {'warm':>7s} {'frames':>9s} {'whole':>9s}")
    per = {}
    for c in cases:
        for T in c["frames"]:
            d = {k: min(v) if v else float("nan") for k, v in res[(c["name"], T)].items()}
            P = c["moving"]
            whole = d["setup"] + d["frames"]
            ns_frames = d["frames"] / (P * T) * 1e9
            ns_whole = whole / (P * T) * 1e9
            per[(c["name"], T)] = dict(ns_frames=ns_frames, ns_whole=ns_whole, ratio=whole / d["floor"])
            print(f"  {c['name']:<16s}{T:>3d} {c['labels'].size / 1e6:7.1f} {P / 1e6:7.2f} {d['setup']:8.2f} "
                  f"{d['frames']:8.2f} {whole:8.2f} {d['floor']:8.2f} {whole / d['floor']:6.1f}x {d['warm']:7.2f} "
                  f"{whole / d['warm']:6.1f}x {ns_frames:9.1f} "
                  f"{ns_whole:9.1f} {mb(d['setup_mem']):>11s} {mb(d['frames_mem']):>11s} {mb(d['floor_mem']):>10s}")
            if cuda:
                print(f"  {'':<16s}    GPU frames {d['gpu'] * 1e3:.1f} ms (sync, into device buffers), copy back to host "
                      f"{d['copy'] * 1e3:.1f} ms")
    print("  (frames: iter_frames, each frame dropped; floor: T fresh float32 image + label copies; warm floor: the"
          " same copies into one warm pair; whole = set-up + frames; ns/mv-fr = ns per moving voxel per frame)")

    print()
    print("== targets (issue 13) ==")
    names = [c["name"] for c in cases]
    ref = "MNI 1 mm"
    if ref in names and "MNI 0.5 mm" in names:
        for T in args.frames:
            a, b = per.get((ref, T)), per.get(("MNI 0.5 mm", T))
            if a and b:
                for key, what in (("ns_frames", "frames"), ("ns_whole", "whole series")):
                    q = b[key] / a[key]
                    print(f"  T={T:<3d} ns per moving voxel-frame, 0.5 mm / 1 mm ({what}): {q:5.2f}x   target <= 1.3x: "
                          f"{'met' if q <= 1.3 else 'NOT met'}")
    for (name, T), v in per.items():
        print(f"  {name:<16s} T={T:<3d} whole series / copy floor {v['ratio']:5.1f}x   target <= 4x: "
              f"{'met' if v['ratio'] <= 4 else 'NOT met'}")
    print(f"  load average at end (1/5/15 min): {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
