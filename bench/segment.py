"""Time the segmentation backends on this CPU and print the numbers.

- fallback accuracy: Dice of the region growing from one click per lateral ventricle (its deepest
  point, clicked in world mm) on the 1 mm sample, the sample resampled to 1x1x3 mm and reoriented to
  LPS (clean, and with Rician noise and a bias field), and an oblique 2x2x2.2 mm LAS copy; per
  ventricle, both clicks in one run, and "segment this slice" (one click per piece of the
  ventricle on the slice through each click, along each axis)
- fallback: region growing on one 2D slice of the sample (per slice) and in 3D from one click
- SAM path with a tiny random SAM (no weights here): per slice with a cold and a warm embedding
  cache, and 3D propagation through the sample along Z

Run: ``python bench/segment.py`` (single torch thread, as in the tests); ``--dice-only`` skips
the SAM timings. Results: bench/results/segment.txt.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from laugen_napari.io.nifti import load_volume  # noqa: E402
from laugen_napari.metrics import dice  # noqa: E402
from laugen_napari.segment import Prompts, PropagationReport, RegionGrowingBackend, segment  # noqa: E402
from laugen_napari.segment.propagate import propagate_from_prompts  # noqa: E402
from laugen_napari.segment.sam import SamBackend, build_tiny_sam  # noqa: E402

ROOT = Path(__file__).resolve().parents[1] / "sample_data"
sys.path.insert(0, str(ROOT.parent))
from tests.test_segment_thick import (dice_of, slice_clicks, ventricle_clicks,  # noqa: E402
                                      write_case)


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    """Median wall time (s) of ``fn()`` over ``repeat`` runs, and its last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def dice_report(backend: RegionGrowingBackend) -> None:
    """Print Dice and time of the fallback on the sample and its resampled copies."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {
            "1 mm sample (RAS)": (ROOT / "mni152_t1.nii.gz", ROOT / "mni152_ventricles_seg.nii.gz"),
            "1x1x3 mm LPS": write_case(folder, "thick", (1.0, 1.0, 3.0), "LPS"),
            "1x1x3 mm LPS, noise 4% + bias 10%": write_case(folder, "noisy", (1.0, 1.0, 3.0), "LPS", noise=0.04,
                                                             bias=0.1),
            "2x2x2.2 mm LAS oblique": write_case(folder, "oblique", (2.0, 2.0, 2.2), "LAS", degrees=(12.0, -8.0, 10.0)),
        }
        print("fallback Dice (one click per lateral ventricle at its deepest point, world mm -> voxel)")
        for name, (image_path, label_path) in files.items():
            image = load_volume(image_path)
            labels = np.asarray(load_volume(label_path).data)
            data = np.asarray(image.data, dtype=np.float32)
            clicks = ventricle_clicks(labels, image.affine)
            sp = image.spacing
            print(f"  {name}: array {data.shape}, spacing {tuple(round(v, 2) for v in sp)} mm, "
                  f"ventricles {[int((labels == v).sum()) for v in (1, 2)]} voxels")
            per, times = [], []
            for value, click in zip((1, 2), clicks):
                t0 = time.perf_counter()
                mask = segment(data, Prompts.create(positive=[click]), backend, spacing=sp)
                times.append(time.perf_counter() - t0)
                per.append(dice_of(mask, labels == value))
            t0 = time.perf_counter()
            both = segment(data, Prompts.create(positive=clicks), backend, spacing=sp)
            t_both = time.perf_counter() - t0
            print(f"    3D one click, per ventricle: Dice {per[0]:.3f} / {per[1]:.3f} ({np.mean(times):.2f} s each); "
                  f"both clicks in one run vs both ventricles: Dice {dice_of(both, labels > 0):.3f} "
                  f"({int(both.sum())} vs {int((labels > 0).sum())} voxels, {t_both:.2f} s)")
            left, right = clicks
            split = segment(data, Prompts.create(positive=[left], negative=[right]), backend, spacing=sp)
            print(f"    3D click left + negative click right: Dice {dice_of(split, labels == 1):.3f}")
            for axis in range(3):
                scores, scores_one = [], []
                for value, click in zip((1, 2), clicks):
                    truth = np.take(labels == value, click[axis], axis=axis)
                    for prompts, out in ((slice_clicks(truth, axis, click[axis]), scores), ([click], scores_one)):
                        mask = segment(data, Prompts.create(positive=prompts), backend, axis=axis, index=click[axis],
                                       spacing=sp)
                        out.append(dice_of(np.take(mask, click[axis], axis=axis), truth))
                print(f"    segment this slice, axis {axis}: Dice {scores[0]:.3f} / {scores[1]:.3f} "
                      f"(one click per piece), {scores_one[0]:.3f} / {scores_one[1]:.3f} (the 3D click only)")


def main() -> None:
    torch.set_num_threads(1)
    dice_report(RegionGrowingBackend())
    if "--dice-only" in sys.argv[1:]:
        return
    image = load_volume(ROOT / "mni152_t1.nii.gz")
    truth = np.asarray(load_volume(ROOT / "mni152_ventricles_seg.nii.gz").data) == 1
    data = np.asarray(image.data, dtype=np.float32)
    box = ndi.find_objects(truth.astype(np.uint8))[0]
    dist = ndi.distance_transform_edt(truth[box])
    click = tuple(int(v + s.start) for v, s in zip(np.unravel_index(int(np.argmax(dist)), dist.shape), box))
    prompts = Prompts.create(positive=[click])
    window = (0.0, float(np.percentile(data, 99.5)))
    print(f"sample {data.shape} (Z, Y, X), click {click} in the left lateral ventricle, torch threads 1")

    fallback = RegionGrowingBackend()
    on_slice = prompts.on_slice(0, click[0])
    t, _ = timed(lambda: fallback.segment_slice(data, 0, click[0], on_slice, window), 5)
    print(f"fallback  per slice (2D region growing, {data.shape[1]}x{data.shape[2]}): {t * 1000:.1f} ms")
    t, mask = timed(lambda: segment(data, prompts, fallback, window=window), 3)
    score = dice(mask.astype(np.uint8), truth.astype(np.uint8), labels=[1])[1]
    print(f"fallback  3D from one click: {t:.2f} s, Dice {score:.3f} vs the shipped label 1")

    sam = SamBackend(build_tiny_sam(seed=0), model_type="tiny")
    print(f"tiny SAM: input {sam.model.image_encoder.img_size} px, "
          f"{sum(p.numel() for p in sam.model.parameters()) / 1e3:.0f} k parameters (random weights)")
    cold = []
    for z in range(click[0] - 5, click[0]):
        t0 = time.perf_counter()
        sam.segment_slice(data, 0, z, Prompts.create(positive=[(z, click[1], click[2])]).on_slice(0, z), window)
        cold.append(time.perf_counter() - t0)
    sam.segment_slice(data, 0, click[0], on_slice, window)
    t, _ = timed(lambda: sam.segment_slice(data, 0, click[0], on_slice, window), 5)
    print(f"tiny SAM  per slice: {np.median(cold) * 1000:.1f} ms new slice (encoder), "
          f"{t * 1000:.1f} ms cached embedding (prompt + decoder)")
    report = PropagationReport()
    sam.clear_cache()
    t0 = time.perf_counter()
    out = propagate_from_prompts(data.shape, 0, prompts,
                                 lambda i, sp: sam.segment_slice(data, 0, i, sp, window), report=report)
    t = time.perf_counter() - t0
    print(f"tiny SAM  propagation along Z: {t:.2f} s for {len(report.slices)} slices "
          f"({t / max(1, len(report.slices)) * 1000:.1f} ms/slice), {int(out.sum())} voxels; stops: {report.stops}")


if __name__ == "__main__":
    main()
