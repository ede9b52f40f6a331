"""Live-preview latency of the "LAUGEN augment" dock in a real napari viewer (issue 3).

Run under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/live.py [--changes 50] [--repeats 5]
        [--profile] [--out bench/results/live.txt] [--volume sample|0.5|ct]

``--volume 0.5`` previews the sample resampled to 0.5 mm (8x the voxels), ``--volume ct`` the
CT-sized volume of bench/scale.py (400x512x512) (issue 13).

On the shipped MNI152 pair (1 mm, 189x233x197) with the axial plane through the ventricles shown at
the last frame, it measures:

1. trajectory change -> new pixels: for N alternating values of "slope max", the time from setting
   the widget value to (a) the moment the "LAUGEN series" layer's displayed slice
   (``layer._slice.image.raw``) holds the new plane, and (b) the end of the next vispy canvas draw.
   Two pacings: "settled" (every worker idle before a change) and "drag" (a change every ~80 ms
   without waiting, so the curves worker runs alongside, as when a slider is dragged).
2. field recomputation (kind uniform <-> directional, and sigma 5 <-> 6 mm): a 5 ms QTimer on the
   GUI thread records the largest gap between its ticks from the change until the new field is in
   the model, the layers are refreshed and the curves plot has drawn. The field's own computation
   time (the ``Augmenter`` construction in the worker) is printed alongside.
3. switching to 3D (``viewer.dims.ndisplay = 3``) with a frame that is not cached: the same
   largest tick gap until the background frame worker has finished and the canvas has drawn.

``--profile`` adds cProfile listings of the GUI thread for a trajectory change and a 3D switch.
Targets (issue 3, 2-core CPU): median <= 50 ms and p95 <= 100 ms for (1), no GUI block > 100 ms
for (2) and (3).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# remembered dock settings of earlier runs must not change what is measured
os.environ.setdefault("LAUGEN_SETTINGS_DIR", tempfile.mkdtemp(prefix="laugen-live-"))

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TICK_MS = 5


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average: {os.getloadavg()}"


class _Vol:
    """The parts of a loaded Volume the bench uses."""

    def __init__(self, data, spacing, origin=(0.0, 0.0, 0.0)):
        self.data, self.spacing, self.origin = data, tuple(float(s) for s in spacing), tuple(origin)


def bench_volume(which: str, img, seg):
    """The volume to preview: the sample as shipped, resampled to ``which`` mm, or 'ct' (the
    CT-sized volume of bench/scale.py)."""
    if which == "sample":
        return img, seg
    sys.path.insert(0, str(ROOT / "bench"))
    import scale

    if which == "ct":
        image, labels, spacing = scale.make_ct()
    else:
        image, labels, spacing = scale.resample(img.data, seg.data, img.spacing, float(which))
    return _Vol(image, spacing, img.origin if which != "ct" else (0.0, 0.0, 0.0)), _Vol(labels, spacing)


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


class Bench:
    def __init__(self, args):
        import napari
        from qtpy.QtCore import QEventLoop, QTimer
        from qtpy.QtWidgets import QApplication

        import laugen_napari.ui.augment_widget as aw
        from laugen_napari.pipeline import load_pair

        self.args = args
        self.QTimer, self.QEventLoop = QTimer, QEventLoop
        self.lines: list[str] = []
        img, seg = load_pair(ROOT / "sample_data/mni152_t1.nii.gz", ROOT / "sample_data/mni152_ventricles_seg.nii.gz")
        img, seg = bench_volume(args.volume, img, seg)
        self.img, self.seg = img, seg

        # time the field computation where the dock runs it (the worker thread)
        self.field_times: list[float] = []
        engine_name = "build_augmenter" if hasattr(aw, "build_augmenter") else "Augmenter"
        original = getattr(aw, engine_name)

        def timed_augmenter(*a, **k):
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.field_times.append(time.perf_counter() - t0)

        timed_augmenter.__name__ = engine_name
        setattr(aw, engine_name, timed_augmenter)

        self.viewer = viewer = napari.Viewer(show=True)
        self.app = QApplication.instance()
        viewer.window._qt_window.resize(1500, 950)
        viewer.add_image(img.data, name="t1", scale=img.spacing, translate=img.origin)
        viewer.add_labels(seg.data, name="seg", scale=img.spacing, translate=img.origin)
        self.widget = widget = aw.AugmentWidget(viewer)
        viewer.window.add_dock_widget(widget, name="LAUGEN augment", area="right")
        self.series = None  # the dock adds its layers once the first field is ready

        # canvas draws: the time each vispy draw ends (callback after the scene has drawn)
        self.draws: list[float] = []
        self.scene_canvas = viewer.window._qt_viewer.canvas._scene_canvas
        self.scene_canvas.events.draw.connect(lambda e: self.draws.append(time.perf_counter()), position="last")
        # curves plot draws (matplotlib, on the GUI thread)
        self.curve_draws: list[float] = []
        # the curves are drawn on a worker thread; the GUI thread only shows the image: time that
        show = widget.plot.show_rgba

        def timed_show(rgba, show=show):
            show(rgba)
            self.curve_draws.append(time.perf_counter())

        widget.plot.show_rgba = timed_show
        # what ran on the GUI thread (and where frames were computed), to attribute long gaps
        self.intervals: list[tuple[float, float, str]] = []
        self.gui_thread = threading.get_ident()
        self.scene_canvas.events.draw.connect(lambda e: setattr(self, "_draw_t0", time.perf_counter()),
                                              position="first")
        self.scene_canvas.events.draw.connect(
            lambda e: self.intervals.append((self._draw_t0, time.perf_counter(), "vispy scene draw")), position="last")
        self._wrap(widget.plot, "show_rgba", "curves image shown")
        self._wrap(widget, "_field_ready", "dock _field_ready (set field, refresh layers)")
        self._wrap(widget, "refresh_layers", "dock refresh_layers")
        # Python's garbage collector holds the GIL whichever thread runs it: it blocks the GUI too
        import gc

        gc_start: dict[str, float] = {}

        def gc_timer(phase, info):
            if phase == "start":
                gc_start["t"] = time.perf_counter()
            elif "t" in gc_start:
                self.intervals.append((gc_start.pop("t"), time.perf_counter(), f"python gc (generation {info['generation']})"))

        gc.callbacks.append(gc_timer)
        # GUI-thread ticks
        self.ticks: list[float] = []
        self.ticker = QTimer()
        self.ticker.setInterval(TICK_MS)
        self.ticker.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

        ok = self.loop_until(lambda: widget.model is not None and widget.model.augmenter is not None, 60)
        assert ok, "the field never became ready"
        assert self.loop_until(lambda: aw.SERIES in viewer.layers, 60), "the dock never added its layers"
        self.series = viewer.layers[aw.SERIES]
        # napari slicing + vispy node update per layer (on the GUI thread; the 3D switch runs these)
        for layer in viewer.layers:
            self._wrap(layer, "_refresh_sync", f"layer {layer.name!r} slice+refresh")
        self._wrap(widget.model, "image_frame", "full image frame")
        self._wrap(widget.model, "label_frame", "full label frame")
        # axial plane through the ventricles, last frame
        self.z = int(np.argmax((seg.data > 0).sum(axis=(1, 2))))
        viewer.dims.set_point(0, widget.model.frames - 1)
        viewer.dims.set_point(1, img.origin[0] + self.z * img.spacing[0])
        self.t = int(viewer.dims.current_step[0])
        self.settle()
        assert self.t == widget.model.frames - 1
        shown = np.asarray(self.series._slice.image.raw)
        assert shown.shape == img.data.shape[1:], shown.shape
        np.testing.assert_array_equal(shown, widget.model.image_plane(self.t, 0, self.z))

    def _wrap(self, obj, name: str, label: str) -> None:
        """Replace a bound method on the instance by one that records its interval."""
        fn = getattr(obj, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                where = "" if threading.get_ident() == self.gui_thread else " [worker thread]"
                self.intervals.append((t0, time.perf_counter(), label + where))

        setattr(obj, name, wrapper)

    def cause(self, start: float, end: float) -> str:
        """GUI-thread work recorded inside the gap (start, end), longest first."""
        parts, spans = {}, []
        for a, b, label in self.intervals:
            if "[worker" in label:
                continue
            lo, hi = max(a, start), min(b, end)
            if hi - lo > 0.002:
                parts[label] = parts.get(label, 0.0) + hi - lo
                spans.append((lo, hi))
        known, cur = 0.0, None  # union of the (possibly nested) intervals
        for lo, hi in sorted(spans):
            if cur is None or lo > cur[1]:
                known += 0.0 if cur is None else cur[1] - cur[0]
                cur = [lo, hi]
            else:
                cur[1] = max(cur[1], hi)
        known += 0.0 if cur is None else cur[1] - cur[0]
        rest = (end - start) - known
        items = [f"{k} {v * 1e3:.0f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])]
        items.append(f"rest (Qt paint/composite incl. software GL, napari slicing, GIL) {rest * 1e3:.0f}")
        return "; ".join(items)

    # -- event-loop helpers ---------------------------------------------------------------------
    def loop_until(self, pred, timeout_s: float) -> bool:
        """Run the Qt event loop (a real QEventLoop, so timers fire normally) until ``pred()``."""
        if pred():
            return True
        loop = self.QEventLoop()
        check = self.QTimer()
        check.setInterval(1)
        deadline = time.perf_counter() + timeout_s

        def poll():
            if pred() or time.perf_counter() > deadline:
                loop.quit()

        check.timeout.connect(poll)
        check.start()
        loop.exec_()
        check.stop()
        return bool(pred())

    def pump(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        self.loop_until(lambda: time.perf_counter() >= end, seconds + 1)

    def settle(self) -> None:
        """Wait for every worker and pending timer of the dock, then one quiet draw."""
        w = self.widget
        self.loop_until(lambda: not w.busy and not w._field_timer.isActive() and not w._curves_timer.isActive(), 120)
        self.pump(0.3)
        self.loop_until(lambda: not w.busy and not w._field_timer.isActive() and not w._curves_timer.isActive(), 120)
        self.pump(0.1)

    def out(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    # -- 1. trajectory change -> new pixels ------------------------------------------------------
    def trajectory(self, pacing: str, n: int, profile: cProfile.Profile | None = None):
        w, series = self.widget, self.series
        values = (0.6, 0.3)
        # the planes each value must show, computed by the model (not through napari)
        expected, z_seen = {}, {}
        for v in values:
            w.w["slope_max"].value = v
            self.settle()
            expected[v] = np.array(w.model.image_plane(self.t, 0, self.z))
            z_seen[v] = (w.model.z_mm.tolist(), w.model.augmenter is not None)
            np.testing.assert_array_equal(np.asarray(series._slice.image.raw), expected[v])
        assert not np.array_equal(expected[values[0]], expected[values[1]]), \
            f"the two slopes show the same plane (z_mm, engine ready per slope: {z_seen})"
        to_slice, to_draw, setter = [], [], []
        rng = np.random.default_rng(0)
        for i in range(n):
            v = values[i % 2]
            if pacing == "settled":
                self.settle()
                t_plan = None
            else:
                # a slider drag: the next value arrives 50-110 ms after the last one, whatever the GUI is
                # doing (curves worker, curves plot); latency counts from its arrival, queueing included
                t_plan = time.perf_counter() + float(rng.uniform(0.05, 0.11))
                self.loop_until(lambda: time.perf_counter() >= t_plan, 5)
            self.draws.clear()
            if profile is not None:
                profile.enable()
            t0 = time.perf_counter() if t_plan is None else t_plan
            w.w["slope_max"].value = v
            t1 = time.perf_counter()
            # the displayed slice: synchronous in napari's default (non-async) slicing; poll otherwise
            self.loop_until(lambda: np.array_equal(np.asarray(series._slice.image.raw), expected[v]), 5)
            t2 = time.perf_counter()
            ok = self.loop_until(lambda: any(d > t2 for d in self.draws), 5)
            if profile is not None:
                profile.disable()
            assert ok, "no canvas draw after the change"
            t3 = min(d for d in self.draws if d > t2)
            setter.append(t1 - t0)
            to_slice.append(t2 - t0)
            to_draw.append(t3 - t0)
        self.settle()
        return {"slice": np.array(to_slice) * 1e3, "draw": np.array(to_draw) * 1e3, "setter": np.array(setter) * 1e3}

    # -- 2./3. GUI-thread blocks ------------------------------------------------------------------
    def _max_gap(self, t0: float, t_end: float) -> tuple[float, float, str]:
        ticks = [t0] + [t for t in self.ticks if t0 < t <= t_end] + [t_end]
        gaps = np.diff(ticks)
        i = int(np.argmax(gaps))
        return float(gaps[i] * 1e3), float((ticks[i] - t0) * 1e3), self.cause(ticks[i], ticks[i + 1])

    def field_change(self, name: str, values, repeats: int, profile: cProfile.Profile | None = None):
        w = self.widget
        rows = []
        for i in range(repeats):
            self.settle()
            before = w.model.augmenter
            self.field_times.clear()
            self.ticks.clear()
            self.curve_draws.clear()
            self.ticker.start()
            if profile is not None:
                profile.enable()
            t0 = time.perf_counter()
            w.w[name].value = values[i % len(values)]
            ok = self.loop_until(lambda: w.model.augmenter is not before, 120)
            t_ready = time.perf_counter()
            # the layers are refreshed in _field_ready; then the curves worker runs and the plot draws
            ok = ok and self.loop_until(lambda: any(d > t_ready for d in self.curve_draws) and not w.busy, 120)
            self.loop_until(lambda: any(d > t_ready for d in self.draws), 5)
            t_end = time.perf_counter()
            if profile is not None:
                profile.disable()
            self.ticker.stop()
            gap, at, why = self._max_gap(t0, t_end)
            rows.append({"value": values[i % len(values)], "ok": ok, "gap": gap, "gap_at": at, "why": why,
                         "ready": (t_ready - t0) * 1e3, "total": (t_end - t0) * 1e3,
                         "field": self.field_times[-1] * 1e3 if self.field_times else float("nan")})
        self.settle()
        return rows

    def baseline_3d(self, repeats: int, render: bool = True):
        """napari alone: the LAUGEN layers hidden, the input image and labels switched to 3D."""
        import laugen_napari.ui.augment_widget as aw

        viewer, rows = self.viewer, []
        hidden = [viewer.layers[n] for n in (aw.SERIES, aw.MASKS, aw.DIFF) if viewer.layers[n].visible]
        for layer in hidden:
            layer.visible = False
        canvas_widget = viewer.window._qt_viewer.canvas.native
        if not render:
            canvas_widget.setVisible(False)
        try:
            for _ in range(repeats):
                self.settle()
                self.ticks.clear()
                self.draws.clear()
                self.ticker.start()
                t0 = time.perf_counter()
                viewer.dims.ndisplay = 3
                t_set = time.perf_counter()
                if render:
                    ok = self.loop_until(lambda: any(d > t_set for d in self.draws), 180)
                else:
                    ok = True
                    self.pump(0.2)
                t_end = time.perf_counter()
                self.ticker.stop()
                gap, at, why = self._max_gap(t0, t_end)
                rows.append({"ok": ok, "gap": gap, "gap_at": at, "why": why, "setter": (t_set - t0) * 1e3,
                             "total": (t_end - t0) * 1e3})
                viewer.dims.ndisplay = 2
        finally:
            canvas_widget.setVisible(True)
            for layer in hidden:
                layer.visible = True
            self.settle()
        return rows

    def switch_3d(self, repeats: int, profile: cProfile.Profile | None = None, render: bool = True,
                  inputs: bool = True):
        """``inputs`` False: the input image and labels layers are hidden, so that only the LAUGEN
        layers are switched (their share of the block)."""
        w, viewer = self.widget, self.viewer
        canvas_widget = viewer.window._qt_viewer.canvas.native
        hidden_inputs = [] if inputs else [lay for lay in (viewer.layers["t1"], viewer.layers["seg"]) if lay.visible]
        for layer in hidden_inputs:
            layer.visible = False
        if not render:  # a hidden canvas never paints: what is left is slicing, our frames, the dock
            canvas_widget.setVisible(False)
            self.settle()
        rows = []
        warm_times: list[float] = []
        model = w.model
        original_warm = model.warm_frame

        def timed_warm(t):
            t0 = time.perf_counter()
            try:
                return original_warm(t)
            finally:
                warm_times.append(time.perf_counter() - t0)

        model.warm_frame = timed_warm
        try:
            for i in range(repeats):
                # a new trajectory in 2D so that the frame on screen is not cached
                w.w["slope_max"].value = round(0.45 + 0.05 * i, 2)
                self.settle()
                warm_times.clear()
                self.ticks.clear()
                self.draws.clear()
                self.ticker.start()
                if profile is not None:
                    profile.enable()
                t0 = time.perf_counter()
                viewer.dims.ndisplay = 3
                t_set = time.perf_counter()
                ok = self.loop_until(lambda: not w.busy, 120)
                t_done = time.perf_counter()
                if render:
                    ok = ok and self.loop_until(lambda: any(d > t_done for d in self.draws), 30)
                else:
                    self.pump(0.2)
                t_end = time.perf_counter()
                if profile is not None:
                    profile.disable()
                self.ticker.stop()
                gap, at, why = self._max_gap(t0, t_end)
                gui_frames = sum(b - a for a, b, lab in self.intervals
                                 if a >= t0 and lab.startswith("full ") and "[worker" not in lab)
                rows.append({"ok": ok, "gap": gap, "gap_at": at, "why": why, "setter": (t_set - t0) * 1e3,
                             "gui_frames": gui_frames * 1e3,
                             "total": (t_end - t0) * 1e3,
                             "frame": warm_times[-1] * 1e3 if warm_times else float("nan")})
                viewer.dims.ndisplay = 2
                self.settle()
        finally:
            model.warm_frame = original_warm
            for layer in hidden_inputs:
                layer.visible = True
            if not render:
                canvas_widget.setVisible(True)
            self.settle()
        return rows


def profile_text(prof: cProfile.Profile, title: str, n: int = 25) -> str:
    s = io.StringIO()
    s.write(f"--- cProfile (GUI thread): {title} ---\n")
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("cumulative").print_stats(n)
    s.write("by own time:\n")
    st.sort_stats("tottime").print_stats(15)
    return s.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=50, help="trajectory changes per pacing")
    ap.add_argument("--repeats", type=int, default=5, help="field changes of each kind, and 3D switches")
    ap.add_argument("--repeats-3d", type=int, default=1, help="rendered 3D switches (slow under software GL)")
    ap.add_argument("--profile", action="store_true", help="add cProfile listings of the GUI thread")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    ap.add_argument("--volume", default="sample",
                    help="sample (shipped, 1 mm), a spacing in mm to resample it to (e.g. 0.5), or ct (400x512x512)")
    args = ap.parse_args(argv)
    if args.volume not in ("sample", "ct"):
        try:
            if float(args.volume) <= 0:
                raise ValueError
        except ValueError:
            ap.error(f"--volume takes sample, ct or a positive spacing in mm, got {args.volume!r}")

    import napari
    import torch

    t_start = time.perf_counter()
    b = Bench(args)
    out = b.out
    out("bench/live.py: live preview of the LAUGEN augment dock, real napari viewer under Xvfb")
    out(f"python {platform.python_version()}, napari {napari.__version__}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"GL: {_gl_renderer()}")
    out(f"volume {args.volume}: {b.img.data.shape} {b.img.data.dtype} at {b.img.spacing} mm; axial plane z={b.z} at frame t={b.t}; "
        f"field {b.widget.model.augmenter.warper.n_moving:,} moving voxels")
    out(f"uptime before: {uptime()}")
    out()

    prof1 = cProfile.Profile() if args.profile else None
    traj = {p: b.trajectory(p, args.changes, prof1 if p == "settled" else None) for p in ("settled", "drag")}
    out(f"1. trajectory change -> new pixels ({args.changes} alternating 'slope max' changes per pacing), ms")
    out(f"   {'pacing':<8} {'measure':<28} {'median':>7} {'p95':>7} {'max':>7}")
    for p, r in traj.items():
        for key, label in (("setter", "widget setter returns"), ("slice", "displayed slice is new"),
                           ("draw", "canvas draw done")):
            v = r[key]
            out(f"   {p:<8} {label:<28} {np.median(v):7.1f} {pct(v, 95):7.1f} {v.max():7.1f}")
    out()

    prof2 = cProfile.Profile() if args.profile else None
    field_rows = b.field_change("kind", ["directional", "uniform"], args.repeats, prof2)
    sigma_rows = b.field_change("sigma", [6.0, 5.0], args.repeats, prof2)
    out("2. field recomputation: largest GUI-thread gap between 5 ms ticks, change -> field ready -> curves drawn")
    out(f"   {'change':<22} {'max gap ms':>10} {'at ms':>7} {'field ms':>9} {'ready ms':>9} {'total ms':>9}")
    for name, rows in (("kind", field_rows), ("sigma", sigma_rows)):
        for r in rows:
            out(f"   {name + ' -> ' + str(r['value']):<22} {r['gap']:10.1f} {r['gap_at']:7.0f} {r['field']:9.0f} "
                f"{r['ready']:9.0f} {r['total']:9.0f}{'' if r['ok'] else '  (timed out)'}")
            out(f"      inside the longest gap (ms): {r['why']}")
    out("   (field ms: Augmenter construction in the worker; ready ms: change -> field in the model, "
        "including the 150 ms debounce)")
    out()

    prof3 = cProfile.Profile() if args.profile else None
    rows3 = b.switch_3d(args.repeats_3d, None, render=True)
    rows3h = b.switch_3d(args.repeats, prof3, render=False)
    rows3l = b.switch_3d(args.repeats, None, render=False, inputs=False)
    base3 = b.baseline_3d(args.repeats_3d)
    base3h = b.baseline_3d(args.repeats, render=False)
    out("3. switch to 3D with a frame not cached: largest GUI-thread gap, ndisplay=3 -> background frame done -> drawn")
    out(f"   {'run':<16} {'max gap ms':>10} {'at ms':>7} {'setter ms':>10} {'GUI frames':>10} {'bg frame':>9} "
        f"{'total ms':>9}")
    for tag, rows in (("rendered", rows3), ("canvas hidden", rows3h), ("LAUGEN only", rows3l)):
        for i, r in enumerate(rows):
            out(f"   {tag + ' ' + str(i):<16} {r['gap']:10.1f} {r['gap_at']:7.0f} {r['setter']:10.1f} "
                f"{r['gui_frames']:10.0f} {r['frame']:9.0f} {r['total']:9.0f}"
                f"{'' if r['ok'] else '  (no draw ended after the frame worker within 30 s)'}")
            out(f"      inside the longest gap (ms): {r['why']}")
    for tag, rows in (("napari only", base3), ("napari hidden", base3h)):
        for i, r in enumerate(rows):
            out(f"   {tag + ' ' + str(i):<16} {r['gap']:10.1f} {r['gap_at']:7.0f} {r['setter']:10.1f} "
                f"{'-':>10} {'-':>9} {r['total']:9.0f}")
            out(f"      inside the longest gap (ms): {r['why']}")
    out("   (setter ms: the `viewer.dims.ndisplay = 3` call; GUI frames: full frames computed on the GUI thread;")
    out("    bg frame: the dock's background frame worker; canvas hidden: the vispy canvas is hidden so no GL")
    out("    rendering happens, leaving napari's slicing, our frames and the dock; LAUGEN only: canvas hidden and")
    out("    the input t1 + seg layers hidden, i.e. the LAUGEN layers' share; napari only: the LAUGEN layers")
    out("    hidden, the plain t1 + seg layers switched to 3D, i.e. the software-GL (llvmpipe) rendering floor;")
    out("    napari hidden: the same with the canvas hidden, napari's own slicing of the input layers)")
    out()

    s = traj["settled"]
    d = traj["drag"]
    block2 = max(r["gap"] for r in field_rows + sigma_rows)
    block3 = max((r["gap"] for r in rows3), default=float("nan"))
    block3h = max(r["gap"] for r in rows3h)
    block3l = max(r["gap"] for r in rows3l)
    checks = [
        ("trajectory -> new slice, median (settled)", np.median(s["slice"]), 50),
        ("trajectory -> new slice, p95 (settled)", pct(s["slice"], 95), 100),
        ("trajectory -> canvas drawn, median (settled)", np.median(s["draw"]), 50),
        ("trajectory -> canvas drawn, p95 (settled)", pct(s["draw"], 95), 100),
        ("trajectory -> new slice, median (drag)", np.median(d["slice"]), 50),
        ("trajectory -> new slice, p95 (drag)", pct(d["slice"], 95), 100),
        ("trajectory -> canvas drawn, median (drag)", np.median(d["draw"]), 50),
        ("trajectory -> canvas drawn, p95 (drag)", pct(d["draw"], 95), 100),
        ("longest GUI block, field recomputation", block2, 100),
        ("longest GUI block, switch to 3D (rendered)", block3, 100),
        ("longest GUI block, switch to 3D (no GL render)", block3h, 100),
        ("longest GUI block, 3D switch (no GL, LAUGEN layers)", block3l, 100),
    ]
    out("summary (targets of issues 3 and 13)")
    out(f"   {'measure':<48} {'value ms':>9} {'target':>8}  result")
    for label, value, target in checks:
        out(f"   {label:<48} {value:9.1f} {'<= ' + str(target):>8}  {'PASS' if value <= target else 'FAIL'}")
    out(f"   napari alone, switch to 3D on this GL (floor): longest GUI block {max((r['gap'] for r in base3), default=float('nan')):.0f} ms"
        f"; without GL rendering {max((r['gap'] for r in base3h), default=float('nan')):.0f} ms")
    out()
    out(f"uptime after: {uptime()}   (bench wall time {time.perf_counter() - t_start:.0f} s)")

    if args.profile:
        out()
        out(profile_text(prof1, f"{args.changes} settled trajectory changes (setter -> draw)"))
        out(profile_text(prof2, f"{2 * args.repeats} field recomputations (kind, sigma)"))
        out(profile_text(prof3, f"{args.repeats} switches to 3D, canvas hidden"))

    b.widget.wait_idle()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(b.lines) + "\n")
    b.viewer.close()
    return 0


def _gl_renderer() -> str:
    try:
        from vispy.gloo import gl

        return gl.glGetParameter(gl.GL_RENDERER)
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
