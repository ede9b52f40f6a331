"""Benchmark: one 8-frame LAUGEN series on the shipped sample, against the alternatives (issue 2).

Run from the repository root::

    OMP_WAIT_POLICY=PASSIVE nice python bench/series.py [--repeats 5] [--frames 8] [--sigma-mm 5] [--device cpu]

Measured side by side in one run (the repeats go round-robin over the methods, so a change of
load on the machine hits every method alike; every figure is the median of the repeats):

1. ours: the whole series (a new :class:`Augmenter`, field included, plus ``series``), the
   engine set-up alone (field, warper, Jacobian coefficients) and the frames alone;
2. batchgenerators' ``augment_anatomy_informed`` (Kovacs et al.'s own implementation), called once
   per frame, as a training pipeline calls it: it recomputes its field on every call;
3. a straightforward scipy reference of the same warp: ``gaussian_filter`` + ``np.gradient`` +
   normalisation to 1 mm, field computed once, every frame ``map_coordinates`` over the whole
   volume (order 1 for the image, order 0 for the mask);
4. the memory-bandwidth floor: plain copies of the T image volumes and T masks.

Then the agreement of our frames with a full-volume ``map_coordinates`` of OUR field (the engine
must only skip voxels that do not move, not change the result), and where our time goes.

Frame 0 (z = 0) is the input unchanged in every method: the references copy it rather than
resample it (for batchgenerators too), which only makes them faster.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from laugen_napari.core import Augmenter, CustomTrajectory, resolve_device  # noqa: E402
from laugen_napari.core.field import NEGLIGIBLE, TRUNCATE, unit_field  # noqa: E402
from laugen_napari.core.labels import selection_mask  # noqa: E402
from laugen_napari.core.quality import JacobianStats  # noqa: E402
from laugen_napari.core.warp import Warper  # noqa: E402
from laugen_napari.pipeline import load_pair  # noqa: E402

IMAGE = ROOT / "sample_data" / "mni152_t1.nii.gz"
MASK = ROOT / "sample_data" / "mni152_ventricles_seg.nii.gz"


# ------------------------------------------------------------------------------------------------
# timing helpers


def make_sync(device: str):
    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def clock(fn, sync) -> tuple[float, object]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def med(xs) -> float:
    return statistics.median(xs)


def fmt_s(s: float) -> str:
    return f"{s * 1e3:9.1f} ms" if s < 10 else f"{s:9.2f} s "


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# ------------------------------------------------------------------------------------------------
# 2. batchgenerators


def bg_setup(labels: np.ndarray, spacing, sigma_mm: float):
    """Arguments that make ``augment_anatomy_informed`` do our job on this volume.

    - organ index k is label k + 2 of the map it gets (``seg == organ_idx + 2`` in its source), and
      labels above ``max_annotation_value`` are zeroed before warping: we pass the union of the
      selected labels as label 2 (ours is driven by the union too) and ``max_annotation_value=2``
      so the structure itself is warped, not erased. Warping a 0/2 map costs what warping the 0/1/2
      map costs (``map_coordinates`` order 0 does not look at the values).
    - blur: its Gaussian sigma is ``(blur * spacing_ratio, blur, blur)`` voxels; with isotropic
      spacing ``spacing_ratio = 1`` and ``blur = sigma_mm / spacing`` gives our sigma exactly
      (mode='nearest' padding instead of our zeros changes nothing 20+ voxels from the border).
    - magnitude: it displaces by ``dil_magnitude * raw gradient`` (voxels per unit blurred mask), so
      ``dil_magnitude = z_t / max |grad|`` makes its largest displacement z_t voxels = z_t mm, as ours
      (the peak is measured once here, outside the timers, from its own gradient function).
    - directions (1, 1, 1), one modality (the image as channel 0), default ``anisotropy_safety``.
    """
    from batchgenerators.augmentations.utils import get_organ_gradient_field

    sp = np.asarray(spacing, float)
    if not np.allclose(sp, sp[0]):
        raise SystemExit("the batchgenerators comparison is set up for isotropic spacing only")
    blur = sigma_mm / sp[0]
    seg = np.where(selection_mask(labels), 2, 0).astype(labels.dtype)
    t, u, v = get_organ_gradient_field(seg == 2, spacing_ratio=1.0, blur=blur)
    peak = float(np.sqrt(t * t + u * u + v * v).max())
    return seg, blur, peak


def bg_series(image_f32: np.ndarray, seg: np.ndarray, z_mm, blur: float, peak: float):
    from batchgenerators.augmentations.spatial_transformations import augment_anatomy_informed

    images = np.empty((len(z_mm),) + image_f32.shape, np.float32)
    labels = np.empty((len(z_mm),) + seg.shape, seg.dtype)
    for t, z in enumerate(z_mm):
        data = image_f32[None].copy()  # it works in place
        lab = seg.copy()
        if z != 0.0:
            m = float(z) / peak
            data, lab = augment_anatomy_informed(
                data, lab, active_organs=[1], dilation_ranges=[(m, m)], directions_of_trans=[(1, 1, 1)],
                modalities=[0], spacing_ratio=1.0, blur=blur, anisotropy_safety=True, max_annotation_value=2,
                replace_value=0)
        images[t] = data[0]
        labels[t] = lab
    return images, labels


# ------------------------------------------------------------------------------------------------
# 3. scipy reference


def scipy_field_vox(mask: np.ndarray, spacing, sigma_mm: float) -> np.ndarray:
    """Unit field in voxels (3, Z, Y, X), float32: blur (sigma in mm), gradient with spacing,
    largest displacement 1 mm, displacements below NEGLIGIBLE of the peak zeroed."""
    sp = np.asarray(spacing, np.float64)
    blurred = gaussian_filter(mask.astype(np.float32), sigma=list(sigma_mm / sp), mode="constant", truncate=TRUNCATE)
    grad = np.stack(np.gradient(blurred, *sp))  # per mm
    length = np.sqrt((grad * grad).sum(0))
    peak = float(length.max())
    grad *= ((length >= NEGLIGIBLE * peak) / peak).astype(np.float32)
    return grad / sp.astype(np.float32).reshape(3, 1, 1, 1)


def identity_grid(shape) -> np.ndarray:
    return np.indices(shape, dtype=np.float32)


def scipy_warp(image_f32, labels, grid, disp_vox, z, order_labels=0):
    coords = grid + np.float32(z) * disp_vox
    img = map_coordinates(image_f32, coords, order=1, mode="nearest")
    lab = map_coordinates(labels, coords, order=order_labels, mode="nearest")
    return img, lab


def scipy_series(image_f32, labels, spacing, sigma_mm, z_mm):
    disp = scipy_field_vox(labels != 0, spacing, sigma_mm)
    grid = identity_grid(labels.shape)
    images = np.empty((len(z_mm),) + image_f32.shape, np.float32)
    out_labels = np.empty((len(z_mm),) + labels.shape, labels.dtype)
    for t, z in enumerate(z_mm):
        if z == 0.0:
            images[t] = image_f32
            out_labels[t] = labels
        else:
            images[t], out_labels[t] = scipy_warp(image_f32, labels, grid, disp, z)
    return images, out_labels


# ------------------------------------------------------------------------------------------------
# 4. the floor


def copies_fresh(image_f32, labels, frames):
    """T copies of image and mask into newly allocated arrays (page faults included)."""
    a = np.empty((frames,) + image_f32.shape, np.float32)
    b = np.empty((frames,) + labels.shape, labels.dtype)
    for t in range(frames):
        a[t] = image_f32
        b[t] = labels
    return a, b


def copies_warm(image_f32, labels, a, b):
    """T copies into already touched arrays: read + write bandwidth only."""
    for t in range(a.shape[0]):
        np.copyto(a[t], image_f32)
        np.copyto(b[t], labels)


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="repeats per method (median reported), default 5")
    p.add_argument("--frames", type=int, default=8, help="frames T of the series, default 8")
    p.add_argument("--step-mm", type=float, default=0.4, help="z_t = step * t mm, default 0.4")
    p.add_argument("--sigma-mm", type=float, default=5.0, help="Gaussian sigma in mm (the engine default 5)")
    p.add_argument("--device", default="cpu", help="torch device for ours: cpu, cuda, auto (default cpu)")
    p.add_argument("--skip-batchgenerators", action="store_true", help="leave batchgenerators out")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.frames < 2:
        p.error("need --repeats >= 1 and --frames >= 2")

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    cuda = device.type == "cuda"

    image_vol, mask_vol = load_pair(IMAGE, MASK)
    image, labels, spacing = image_vol.data, mask_vol.data, tuple(image_vol.spacing)
    image_f32 = image.astype(np.float32)
    z_mm = [round(args.step_mm * t, 10) for t in range(args.frames)]
    traj = CustomTrajectory(z_mm)
    T, R, S = args.frames, args.repeats, args.sigma_mm
    dev = str(device)
    sync = make_sync(dev)

    def ours_series(**kw):
        aug = Augmenter(image, labels, spacing, sigma_mm=S, device=dev, **kw)
        return aug.series(traj, frames=T)

    load0 = loadavg()
    print("LAUGEN series benchmark (bench/series.py)")
    print(f"  sample: {IMAGE.name} + {MASK.name}, array (Z,Y,X) {image.shape} {image.dtype}, spacing {spacing} mm")
    print(f"  structure: labels {sorted(int(v) for v in np.unique(labels) if v)}, {int((labels != 0).sum())} voxels")
    print(f"  series: T = {T}, z_t = {args.step_mm:g}*t mm = {z_mm}, sigma = {S:g} mm")
    print(f"  repeats: {R} (round-robin, medians), device for ours: {dev}, torch threads {torch.get_num_threads()}")
    print(f"  python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, torch {torch.__version__},"
          f" cpus {os.cpu_count()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"  load average at start (1/5/15 min): {load0}")

    # warm-up (torch kernels, first-touch of the library code), not timed
    aug = Augmenter(image, labels, spacing, sigma_mm=S, device=dev)
    aug.series(traj, frames=T)
    have_bg = not args.skip_batchgenerators
    if have_bg:
        try:
            bg_seg, bg_blur, bg_peak = bg_setup(labels, spacing, S)
        except ImportError:
            print("  batchgenerators not installed (pip install -e '.[bench]'): left out")
            have_bg = False

    times: dict[str, list[float]] = {k: [] for k in (
        "ours", "ours_setup", "ours_frames", "ours_field", "bg", "scipy", "scipy_field", "floor_fresh", "floor_warm",
        "gpu_frames", "gpu_copy")}
    warm_a = np.empty((T,) + image.shape, np.float32)
    warm_b = np.empty((T,) + labels.shape, labels.dtype)
    copies_warm(image_f32, labels, warm_a, warm_b)
    last: dict[str, object] = {}
    for r in range(R):
        dt, last["ours"] = clock(ours_series, sync)
        times["ours"].append(dt)
        dt, aug = clock(lambda: Augmenter(image, labels, spacing, sigma_mm=S, device=dev), sync)
        times["ours_setup"].append(dt)
        dt, _ = clock(lambda: aug.series(traj, frames=T), sync)
        times["ours_frames"].append(dt)
        dt, _ = clock(lambda: unit_field(labels != 0, spacing, S, dev), sync)
        times["ours_field"].append(dt)
        if cuda:  # frames on the GPU alone (device buffers), and their copy back to host memory
            from scale import run_gpu_frames

            g, cp = run_gpu_frames(aug, traj.sample(T))
            times["gpu_frames"].append(g)
            times["gpu_copy"].append(cp)
        if have_bg:
            dt, last["bg"] = clock(lambda: bg_series(image_f32, bg_seg, z_mm, bg_blur, bg_peak), sync)
            times["bg"].append(dt)
        dt, last["scipy"] = clock(lambda: scipy_series(image_f32, labels, spacing, S, z_mm), sync)
        times["scipy"].append(dt)
        dt, _ = clock(lambda: (scipy_field_vox(labels != 0, spacing, S), identity_grid(labels.shape)), sync)
        times["scipy_field"].append(dt)
        dt, _ = clock(lambda: copies_fresh(image_f32, labels, T), sync)
        times["floor_fresh"].append(dt)
        dt, _ = clock(lambda: copies_warm(image_f32, labels, warm_a, warm_b), sync)
        times["floor_warm"].append(dt)
        print(f"  repeat {r + 1}/{R}: ours {times['ours'][-1]:.3f} s"
              + (f", batchgenerators {times['bg'][-1]:.3f} s" if have_bg else "")
              + f", scipy {times['scipy'][-1]:.3f} s, load {loadavg()}", flush=True)
    m = {k: med(v) for k, v in times.items() if v}

    # -- the table ---------------------------------------------------------------------------------
    print()
    print(f"== {T}-frame series, median of {R} (min..max) ==")

    def row(name, key, note=""):
        v = times[key]
        print(f"  {name:<50s}{fmt_s(m[key])}   ({min(v) * 1e3:.0f}..{max(v) * 1e3:.0f} ms){note}")

    row("ours: whole series (new Augmenter + series)", "ours")
    row("  ours: set-up (Augmenter: field, warper, Jacobian)", "ours_setup")
    row("    ours: field only (unit_field)", "ours_field")
    row("  ours: frames only (aug.series)", "ours_frames")
    if cuda:
        row("  ours: frames on the GPU (synchronised, no copy)", "gpu_frames", "  target <= 20 ms (issue 13)")
        row("  ours: copy of the frames back to host memory", "gpu_copy")
    if have_bg:
        row(f"batchgenerators augment_anatomy_informed x{T - 1}", "bg", "  (+ frame 0 copied)")
    row("scipy reference (field once + map_coordinates)", "scipy")
    row("  scipy reference: field + identity grid only", "scipy_field")
    row(f"floor: {T} image + {T} mask copies into warm arrays", "floor_warm")
    row(f"  {T} image + {T} mask copies into new arrays", "floor_fresh")
    print()
    print("== ratios (targets from issue 2) ==")
    if have_bg:
        r_bg = m["bg"] / m["ours"]
        print(f"  batchgenerators / ours   {r_bg:7.1f}x   target >= 10x: {'met' if r_bg >= 10 else 'NOT met'}")
    r_sp = m["scipy"] / m["ours"]
    print(f"  scipy reference / ours   {r_sp:7.1f}x   target >=  5x: {'met' if r_sp >= 5 else 'NOT met'}")
    print(f"  ours / floor (warm)      {m['ours'] / m['floor_warm']:7.1f}x   (ours frames only / floor: "
          f"{m['ours_frames'] / m['floor_warm']:.1f}x; vs copies into new arrays: {m['ours'] / m['floor_fresh']:.1f}x)")

    # -- agreement with a full-volume reference of OUR field ----------------------------------------
    print()
    print("== agreement with full-volume map_coordinates of OUR field (aug.field.dense() / spacing) ==")
    ours = last["ours"]
    ours_near = ours_series(label_interpolation="nearest")
    disp = aug.field.dense() / np.asarray(spacing, np.float32).reshape(3, 1, 1, 1)
    grid = identity_grid(labels.shape)
    n_struct = int((labels != 0).sum())
    worst_img = 0.0
    lab_diff_near, lab_diff_lin = [], []
    for t, z in enumerate(z_mm):
        ref_img, ref_lab = scipy_warp(image_f32, labels, grid, disp, z, order_labels=0)
        worst_img = max(worst_img, float(np.abs(ours.images[t] - ref_img).max()))
        lab_diff_near.append(int((ours_near.labels[t] != ref_lab).sum()))
        lab_diff_lin.append(int((ours.labels[t] != ref_lab).sum()))
    # the 'linear' rule itself, full-volume: one-hot, order-1 map_coordinates per label, argmax
    # (computed in the field's ROI only: outside it the coordinates are the identity, nothing moves)
    roi = aug.field.roi
    values = [0] + list(aug.label_values)
    onehot = [(labels == v).astype(np.float32) for v in values]
    lab_diff_rule = []
    for t, z in enumerate(z_mm):
        coords = grid[(slice(None),) + roi] + np.float32(z) * disp[(slice(None),) + roi]
        score = np.stack([map_coordinates(o, coords, order=1, mode="nearest") for o in onehot])
        ref = np.asarray(values, labels.dtype)[score.argmax(0)]
        lab_diff_rule.append(int((ours.labels[t][roi] != ref).sum()))
    del grid, disp, onehot
    print(f"  image, trilinear vs map_coordinates order 1 mode='nearest': max |diff| = {worst_img:.4g}"
          f" on a 0..{image_f32.max():.0f} image ({'within' if worst_img <= 0.02 else 'OUTSIDE'} the 0.02 tolerance)")
    print(f"  labels 'nearest' vs order 0: differing voxels per frame {lab_diff_near}"
          f" (max {max(lab_diff_near) / n_struct:.2%} of the {n_struct} structure voxels,"
          f" {max(lab_diff_near) / labels.size:.1e} of the volume)")
    print(f"  labels 'linear' (default, one-hot linear + argmax) vs order 0: {lab_diff_lin}"
          f" (max {max(lab_diff_lin) / n_struct:.2%} of the structure; a different rule)")
    print(f"  labels 'linear' vs its own rule in scipy (one-hot order 1 + argmax): differing voxels per frame"
          f" {lab_diff_rule}")
    sp_img, sp_lab = last["scipy"]
    print(f"  vs the independent scipy reference (its own field): image max |diff| "
          f"{float(np.abs(ours.images - sp_img).max()):.4g}, label voxels differing (nearest) "
          f"{int((ours_near.labels != sp_lab).sum())} over all frames")
    if have_bg:
        bg_img, bg_lab = last["bg"]
        bg_struct = int((bg_lab[-1] != 0).sum())
        ours_struct = int((ours_near.labels[-1] != 0).sum())
        print(f"  sanity, batchgenerators vs ours: image max |diff| {float(np.abs(ours.images - bg_img).max()):.4g}"
              f" (its field: float64, 'nearest' blur padding, no 1e-3 cut-off);"
              f" structure at z = {z_mm[-1]:g}: {bg_struct} voxels vs ours {ours_struct} (input {n_struct})")
    vols = {k: [round(x, 3) for x in v] for k, v in ours.volumes_ml.items()}
    print(f"  our volumes (mL) per label: {vols}; Jacobian min {min(ours.jacobian_min):.3f},"
          f" folded {max(ours.folded_fraction):.1e}")
    del ours_near, last

    # -- where our time goes ------------------------------------------------------------------------
    print()
    if cuda:
        print("== where our time goes: measured on CPU only (run with --device cpu) ==")
        print(f"  load average at end (1/5/15 min): {loadavg()} (start: {load0})")
        return 0
    print("== where our time goes (median of the repeats; per series of T frames unless said) ==")
    mask = labels != 0
    w = aug.warper
    parts: dict[str, list[float]] = {k: [] for k in (
        "field", "sel", "warper", "warper_near", "counter", "jac_init", "img", "img_copy", "img_coords", "img_sample", "img_scatter",
        "lab", "lab_sample", "quality_jac", "quality_vol", "alloc")}
    moving_z = [z for z in z_mm if z != 0.0]
    img_buf = np.empty((T,) + image.shape, np.float32)
    lab_buf = np.empty((T,) + labels.shape, getattr(aug, "_work_dtype", labels.dtype))
    img_buf.fill(0)
    lab_buf.fill(0)
    img_t = torch.from_numpy(image_f32)
    from laugen_napari.core import series as series_module
    counter_cls = getattr(series_module, "_LabelCounter", None)  # private: its set-up counts the whole map
    for _ in range(R):
        parts["sel"].append(clock(lambda: selection_mask(labels), sync)[0])
        dt, fld = clock(lambda: unit_field(mask, spacing, S, dev), sync)
        parts["field"].append(dt)
        parts["warper"].append(clock(lambda: Warper(fld, image_f32, labels), sync)[0])
        parts["warper_near"].append(clock(lambda: Warper(fld, image_f32, labels, "nearest"), sync)[0])
        if counter_cls is not None:
            parts["counter"].append(clock(lambda: counter_cls(w, spacing, aug._label_counts), sync)[0])
        parts["jac_init"].append(clock(lambda: JacobianStats(fld), sync)[0])
        acc = dict.fromkeys(("img", "img_copy", "img_coords", "img_sample", "img_scatter", "lab", "lab_sample",
                             "quality_jac", "quality_vol"), 0.0)
        for t, z in enumerate(z_mm):
            acc["img"] += clock(lambda: w.image_frame(z, out=torch.from_numpy(img_buf[t])), sync)[0]
            acc["lab"] += clock(lambda: w.label_frame(z, out=torch.from_numpy(lab_buf[t])), sync)[0]
            acc["quality_jac"] += clock(lambda: aug.jacobian.summary(z), sync)[0]
            frame = torch.from_numpy(lab_buf[t])
            acc["quality_vol"] += clock(lambda: [int((w.moving_values(frame).long() == v).sum()) for v in aug.label_values], sync)[0]
            # the inside of image_frame: full-volume copy, coordinates, gather + interpolation, scatter
            out = torch.from_numpy(img_buf[t])
            acc["img_copy"] += clock(lambda: out.copy_(img_t), sync)[0]
            if z != 0.0:
                dt, coords = clock(lambda: w._coords(z), sync)
                acc["img_coords"] += dt
                dt, vals = clock(lambda: w._sample_image(coords), sync)
                acc["img_sample"] += dt
                acc["img_scatter"] += clock(lambda: out.view(1, -1).__setitem__((slice(None), w.flat_index), vals), sync)[0]
                acc["lab_sample"] += clock(lambda: w._sample_labels(coords), sync)[0]
        for k, v in acc.items():
            parts[k].append(v)
        fresh = clock(lambda: copies_fresh(image_f32, labels, T), sync)[0]
        parts["alloc"].append(fresh - clock(lambda: copies_warm(image_f32, labels, warm_a, warm_b), sync)[0])
    pm = {k: med(v) if v else 0.0 for k, v in parts.items()}
    roi = aug.field.roi
    roi_shape = tuple(s.stop - s.start for s in roi)
    print(f"  moving voxels: {w.n_moving} of {labels.size} ({w.n_moving / labels.size:.2%});"
          f" field ROI {roi_shape} = {int(np.prod(roi_shape))} voxels ({np.prod(roi_shape) / labels.size:.1%})")
    print(f"  set-up, once per series:")
    print(f"    selection mask                                {fmt_s(pm['sel'])}")
    print(f"    field (crop, blur, gradient, normalise)       {fmt_s(pm['field'])}")
    print(f"    Warper init (moving voxels, offsets,          {fmt_s(pm['warper'])}")
    print(f"      label cells); with 'nearest' labels         {fmt_s(pm['warper_near'])}"
          )
    print(f"    JacobianStats init (field derivatives)        {fmt_s(pm['jac_init'])}")
    print(f"  frames, summed over {T} (frame 0 = copies only):")
    print(f"    image_frame total                             {fmt_s(pm['img'])}")
    print(f"      full-volume copy of the input               {fmt_s(pm['img_copy'])}")
    print(f"      coordinates of the moving voxels            {fmt_s(pm['img_coords'])}")
    print(f"      trilinear samples at the moving voxels      {fmt_s(pm['img_sample'])}")
    print(f"      scatter into the frame                      {fmt_s(pm['img_scatter'])}")
    print(f"    label_frame total ({w.label_interpolation})                  {fmt_s(pm['lab'])}")
    print(f"      sampling at the moving voxels               {fmt_s(pm['lab_sample'])}")
    print(f"    label counter set-up (whole-map counts)       {fmt_s(pm['counter'])}   (once per series)")
    print(f"    quality: jacobian.summary                     {fmt_s(pm['quality_jac'])}")
    print(f"    quality: label volumes (moving voxels)        {fmt_s(pm['quality_vol'])}")
    print(f"    output allocation (first touch of T+T frames) {fmt_s(max(pm['alloc'], 0.0))}"
          f"   (copies into new arrays minus into warm ones)")
    accounted = pm["img"] + pm["lab"] + pm["quality_jac"] + pm["quality_vol"] + pm["counter"] + max(pm["alloc"], 0.0)
    print(f"    sum of the frame parts above                  {fmt_s(accounted)}   vs aug.series {fmt_s(m['ours_frames'])}")
    setup = pm["sel"] + pm["field"] + pm["warper"] + pm["jac_init"]
    print(f"    sum of the set-up parts                       {fmt_s(setup)}   vs Augmenter() {fmt_s(m['ours_setup'])}")
    print()
    print(f"  load average at end (1/5/15 min): {loadavg()} (start: {load0})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
