"""Time the segmentation backends on this CPU and print the numbers.

- fallback: region growing on one 2D slice of the sample (per slice) and in 3D from one click
- SAM path with a tiny random SAM (no weights here): per slice with a cold and a warm embedding
  cache, and 3D propagation through the sample along Z

Run: ``python bench/segment.py`` (single torch thread, as in the tests).
"""

from __future__ import annotations

import os
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


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    """Median wall time (s) of ``fn()`` over ``repeat`` runs, and its last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main() -> None:
    torch.set_num_threads(1)
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
