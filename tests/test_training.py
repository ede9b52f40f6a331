"""The generic training loop, the training process helper, the datasets and the SimVP task."""

from __future__ import annotations

import csv
import os
import threading

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from laugen_napari.training.loop import Record, load_checkpoint, read_metrics_csv, run_training

torch.set_num_threads(1)


class ToyTask:
    """Linear regression y = 3x - 1 with SGD."""

    monitor = "loss"

    def __init__(self, width: int = 1, seed: int = 0):
        torch.manual_seed(seed)
        self.width = width
        self.model = torch.nn.Linear(width, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(1)
        self.x_val = torch.randn(32, width, generator=g)

    def target(self, x):
        return 3 * x.sum(1, keepdim=True) - 1

    def train_step(self, batch):
        loss = torch.nn.functional.mse_loss(self.model(batch), self.target(batch))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def validate(self):
        return {"loss": torch.nn.functional.mse_loss(self.model(self.x_val), self.target(self.x_val)).item()}

    def state_dict(self):
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])

    def config(self):
        return {"model": "linear", "width": self.width}


def toy_batches(n: int = 5, width: int = 1):
    g = torch.Generator().manual_seed(2)
    return [torch.randn(8, width, generator=g) for _ in range(n)]


def test_loop_records_checkpoints_and_csv(tmp_path):
    task = ToyTask()
    seen = []
    recs = list(run_training(task, toy_batches(), epochs=3, out_dir=tmp_path, callbacks=[seen.append]))
    assert [r.phase for r in recs].count("train") == 15
    vals = [r for r in recs if r.phase == "val"]
    assert [r.epoch for r in vals] == [0, 1, 2]
    assert vals[-1].values["loss"] < vals[0].values["loss"]
    assert seen == recs
    assert recs[-1].step == 15 and all(r.elapsed_s >= 0 for r in recs)
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    assert last["epoch"] == 3 and last["step"] == 15
    assert best["best"] == pytest.approx(min(v.values["loss"] for v in vals))
    back = read_metrics_csv(tmp_path / "metrics.csv")
    assert [(r.step, r.phase, r.values) for r in back] == [(r.step, r.phase, r.values) for r in recs]
    with pytest.raises(FileExistsError, match="resume"):
        next(run_training(ToyTask(), toy_batches(), epochs=1, out_dir=tmp_path))


def test_resume_continues_and_equals_uninterrupted_run(tmp_path):
    full = list(run_training(ToyTask(), toy_batches(), epochs=4, out_dir=tmp_path / "a"))
    list(run_training(ToyTask(), toy_batches(), epochs=2, out_dir=tmp_path / "b"))
    resumed = list(run_training(ToyTask(seed=5), toy_batches(), epochs=4, out_dir=tmp_path / "b", resume=True))
    assert resumed[0].step == 11 and resumed[0].epoch == 2
    assert resumed[-1].values["loss"] == pytest.approx(full[-1].values["loss"], rel=1e-6)
    rows = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))
    assert sorted({int(r["step"]) for r in rows}) == list(range(1, 21))


def test_resume_refuses_another_architecture(tmp_path):
    list(run_training(ToyTask(width=1), toy_batches(), epochs=1, out_dir=tmp_path))
    with pytest.raises(ValueError, match="another architecture.*width: 1 vs 2"):
        next(run_training(ToyTask(width=2), toy_batches(width=2), epochs=2, out_dir=tmp_path, resume=True))
    with pytest.raises(FileNotFoundError, match="no last.pt"):
        next(run_training(ToyTask(), toy_batches(), epochs=2, out_dir=tmp_path / "empty", resume=True))


def test_stop_event_keeps_a_checkpoint_at_the_current_step(tmp_path):
    stop = threading.Event()

    def cb(rec: Record):
        if rec.step == 7:
            stop.set()

    recs = list(run_training(ToyTask(), toy_batches(), epochs=10, out_dir=tmp_path, stop=stop, callbacks=[cb]))
    assert recs[-1].step == 7
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 7 and ckpt["epoch"] == 1  # epoch 1 unfinished: a resume redoes it


def test_keyboard_interrupt_keeps_last_epoch_checkpoint(tmp_path):
    class Interrupting(ToyTask):
        def train_step(self, batch):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 8:
                raise KeyboardInterrupt
            return super().train_step(batch)

    with pytest.raises(KeyboardInterrupt):
        list(run_training(Interrupting(), toy_batches(), epochs=5, out_dir=tmp_path))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 5
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert max(int(r["step"]) for r in rows) == 7


def test_steps_budget_and_bad_arguments():
    recs = list(run_training(ToyTask(), toy_batches(), steps=7))
    assert [r.step for r in recs if r.phase == "train"] == list(range(1, 8))
    assert recs[-1].phase == "val"
    with pytest.raises(ValueError, match="epochs or of steps"):
        next(run_training(ToyTask(), toy_batches()))
    with pytest.raises(ValueError, match="no batch"):
        next(run_training(ToyTask(), [], epochs=1))
    with pytest.raises(ValueError, match="phase"):
        Record(1, 0, "test", {}, 0.0)


def toy_factory(epochs: int = 200, out_dir: str | None = None):
    """Module-level factory for :class:`TrainingProcess` (spawned child imports this module)."""
    return ToyTask(), toy_batches(50), {"epochs": epochs, "out_dir": out_dir}


def test_training_process_streams_records_and_stops(tmp_path):
    import time

    from laugen_napari.training.process import TrainingProcess

    proc = TrainingProcess(toy_factory, {"epochs": 10_000, "out_dir": str(tmp_path)}).start()
    deadline = time.monotonic() + 120  # a spawned child imports torch first (the whole test: 11 s under load)
    got: list[Record] = []
    while len(got) < 20 and time.monotonic() < deadline:
        got += proc.poll()
        time.sleep(0.02)
    assert len(got) >= 20 and all(isinstance(r, Record) for r in got)
    proc.stop(timeout=30)
    assert not proc.running and proc.error is None and proc.exitcode == 0
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == proc.records[-1].step < 10_000 * 50


def test_training_process_reports_errors():
    from laugen_napari.training.process import TrainingProcess

    proc = TrainingProcess(toy_factory, {"epochs": 0}).start()
    proc.join(timeout=120)
    assert proc.error is not None and "at least 1" in proc.error


# ---- datasets ----------------------------------------------------------------------------------

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from laugen_napari.settings import GenerationSettings
from laugen_napari.training.datasets import (
    MixedSequences, Normalizer, SliceSpec, SyntheticSequences, SyntheticSource, build_data, read_volume, scan_acdc,
    synthetic_counts)

ROOT = Path(__file__).resolve().parents[1]
T1, SEG = ROOT / "sample_data/mni152_t1.nii.gz", ROOT / "sample_data/mni152_ventricles_seg.nii.gz"


@pytest.fixture(scope="module")
def mni_source():
    img, sp = read_volume(T1)
    lab, _ = read_volume(SEG)
    return SyntheticSource(img, np.rint(lab).astype(np.int32), sp, name="mni")


def write_4d(path, data_tzyx, zooms=(1.0, 1.0, 1.0, 1.0)):
    """Write (T, Z, Y, X) as a NIfTI (x, y, z, t) with an identity-like RAS affine."""
    img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(data_tzyx, (3, 2, 1, 0))).astype(np.float32),
                          np.diag(list(zooms[:3]) + [1.0]))
    nib.save(img, str(path))
    return path


def moving_square_series(frames=10, z=3, size=24, seed=0):
    rng = np.random.default_rng(seed)
    out = np.zeros((frames, z, size, size), np.float32)
    for t in range(frames):
        out[t, :, 6 + t // 2: 12 + t // 2, 5:11] = 100.0
    return out + rng.normal(0, 1, out.shape).astype(np.float32)


@pytest.mark.parametrize("ratio,length", [(0.0, 40), (0.1, 40), (0.1, 4), (0.25, 7), (0.5, 7), (1.0, 12)])
def test_mixing_gives_the_requested_synthetic_fraction_in_expectation(mni_source, ratio, length):
    """Stochastic (systematic) rounding: floor or ceil per epoch, the running total within one
    sample of ratio * length * epochs; round() would give 0 synthetic samples for 0.1 * 4 forever."""
    real = np.random.default_rng(0).random((5, 8, 32, 32)).astype(np.float32)
    syn = SyntheticSequences([mni_source], 8, SliceSpec(crop=(32, 32)), kinds=("uniform",))
    ds = MixedSequences(real, syn, ratio, Normalizer(0.0, 1.0), length=length, seed=1)
    counts = []
    for epoch in range(40):
        ds.set_epoch(epoch)
        flags = ds.is_synthetic
        assert len(flags) == length and flags.sum() == ds.n_synthetic
        assert ds.n_synthetic in (int(np.floor(ratio * length)), int(np.ceil(ratio * length)))
        counts.append(ds.n_synthetic)
    total = np.cumsum(counts)
    expected = ratio * length * np.arange(1, 41)
    assert np.all(np.abs(total - expected) < 1.0), (total, expected)
    assert np.array_equal(counts, synthetic_counts(ratio, length, 40, seed=1))
    flags = [ds[i][1] for i in range(len(ds))]  # items carry the flag
    assert sum(flags) == ds.n_synthetic
    # real sequences are repeated (cycled), each used before any is used again
    ds = MixedSequences(real, syn, 0.0, Normalizer(0.0, 1.0), length=12, seed=1)
    counts = np.bincount(ds.source_index, minlength=5)
    assert counts.min() == 2 and counts.max() == 3
    x, is_syn = ds[0]
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32 and not is_syn


def test_synthetic_sequences_are_seeded_and_follow_the_structure(mni_source):
    syn = SyntheticSequences([mni_source], 6, SliceSpec(axis=0, crop=(32, 32)),
                             settings=GenerationSettings(slope_range=(1.0, 1.0)), seed=3)
    a, b = syn[5], syn[5]
    assert a.shape == (6, 32, 32) and np.array_equal(a, b)
    assert not np.array_equal(syn[5], syn[6])
    assert np.abs(a[-1] - a[0]).max() > 10  # the structure moved
    planes = SliceSpec(axis=0).planes(mni_source.image.shape, mni_source.labels)
    assert planes == sorted(set(np.nonzero(mni_source.labels.any((1, 2)))[0]))


def test_normalizer_is_recorded_and_invertible():
    rng = np.random.default_rng(0)
    data = [rng.normal(50, 20, (4, 8, 8)), rng.normal(80, 5, (2, 8, 8))]
    n = Normalizer.fit(data)
    lo, hi = min(d.min() for d in data), max(d.max() for d in data)
    assert n.data_range == pytest.approx(hi - lo)
    z = n.apply(data[0])
    assert z.min() >= 0 and z.max() <= 1
    assert np.allclose(n.invert(z), data[0])
    assert Normalizer(**n.to_dict()) == n


def test_real_4d_files_split_and_window(tmp_path):
    paths = [write_4d(tmp_path / f"s{i}.nii.gz", moving_square_series(seed=i)) for i in range(3)]
    b = build_data(real=paths, context=4, target=4, val_fraction=0.34, seed=0)
    assert b.info["mix"] == 0.0 and b.info["val_source"] == "real"
    assert len(b.info["val_groups"]) == 1 and len(b.info["train_groups"]) == 2
    # 3 planes x (10 - 8 + 1) windows per file
    assert b.info["real_train_sequences"] == 2 * 3 * 3 and b.val.shape == (9, 8, 24, 24)
    assert b.normalizer.data_range > 90


def test_acdc_layout_uses_ed_frame_as_synthetic_source(tmp_path):
    for k in (1, 2):
        d = tmp_path / f"patient{k:03d}"
        d.mkdir()
        series = moving_square_series(frames=9, seed=k)
        write_4d(d / f"{d.name}_4d.nii.gz", series)
        gt = (series[0] > 50).astype(np.float32)
        for f, vol in ((1, series[0]), (5, series[4])):
            nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), str(d / f"{d.name}_frame{f:02d}.nii.gz"))
            nib.save(nib.Nifti1Image(gt.transpose(2, 1, 0), np.eye(4)), str(d / f"{d.name}_frame{f:02d}_gt.nii.gz"))
        (d / "Info.cfg").write_text("ED: 1\nES: 5\n")
    pts = scan_acdc(tmp_path)
    assert [p.name for p in pts] == ["patient001", "patient002"] and pts[0].ed_image.name.endswith("frame01.nii.gz")
    b = build_data(acdc=tmp_path, mix=0.5, length=10, context=4, target=4, seed=0, kinds=("uniform",))
    assert b.info["n_synthetic"] == 5 and len(b.info["val_groups"]) == 1
    assert b.train.synthetic is not None and len(b.train.synthetic.sources) == 1  # only the training patient


def test_bad_inputs_are_clear_errors(tmp_path, mni_source):
    short = write_4d(tmp_path / "short.nii.gz", moving_square_series(frames=6))
    with pytest.raises(ValueError, match="has 6 frames; context \\+ target needs at least 8"):
        build_data(real=[short], context=4, target=4)
    a = write_4d(tmp_path / "a.nii.gz", moving_square_series(size=24))
    b = write_4d(tmp_path / "b.nii.gz", moving_square_series(size=20))
    c = write_4d(tmp_path / "c.nii.gz", moving_square_series(size=24, seed=3))
    with pytest.raises(ValueError, match="different sizes.*--crop"):
        build_data(real=[a, b, c], val_fraction=0.3)
    bad = moving_square_series()
    bad[2, 1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        build_data(real=[write_4d(tmp_path / "nan.nii.gz", bad), a])
    with pytest.raises(ValueError, match="non-finite"):
        SyntheticSource(np.full((1, 4, 4), np.inf), np.ones((1, 4, 4), int))
    with pytest.raises(ValueError, match="not a 4D series"):
        build_data(real=[T1])
    with pytest.raises(ValueError, match="different sizes.*--crop"):  # real 24x24 planes vs MNI planes, no crop
        build_data(real=[a, c], synthetic=[(T1, SEG)], mix=0.5)


# ---- SimVP learning test and CLI ---------------------------------------------------------------

def test_simvp_learns_to_beat_the_last_image_baseline_via_cli(tmp_path):
    """Trained through `laugen train simvp` on semi-synthetic series; validated on held-out series."""
    from laugen_napari.cli import main

    out = tmp_path / "run"
    argv = ["train", "simvp", "--synthetic", str(T1), str(SEG), "--crop", "32", "32", "--kinds", "uniform",
            "--slope-range", "0.5", "1.5", "--sigma-mm", "3", "--lr", "1e-2", "--length", "64", "--val-series", "16",
            "--seed", "0", "--threads", "1", "--out", str(out)]
    assert main(argv + ["--epochs", "20"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["val_source"] == "semi-synthetic"
    assert report["model"]["rmse"] < 0.9 * report["last_image_baseline"]["rmse"], report
    assert report["model_beats_baseline_rmse"] is True
    assert (out / "best.pt").is_file() and (out / "metrics.csv").is_file()
    # resuming with another architecture is a clear error (exit 2, nothing changed)
    before = (out / "last.pt").read_bytes()
    assert main(argv + ["--epochs", "21", "--resume", "--translator", "incepu"]) == 2
    assert (out / "last.pt").read_bytes() == before
    from laugen_napari.training.simvp import build_task, make_batches

    with pytest.raises(ValueError, match="another architecture.*translator"):
        bundle = build_data(synthetic=[(T1, SEG)], spec=SliceSpec(crop=(32, 32)), length=8, n_val_synthetic=2)
        task = build_task(bundle, translator="incepu")
        next(run_training(task, make_batches(bundle.train, 8), epochs=21, out_dir=out, resume=True))


def test_experiment_sizes_sweep_on_4d_files_counts_files_as_patients(tmp_path):
    from laugen_napari.cli import main

    paths = [str(write_4d(tmp_path / f"s{i}.nii.gz", moving_square_series(seed=i))) for i in range(4)]
    out = tmp_path / "exp"
    argv = ["experiment", "sizes", "--sizes", "1,3", "--repeats", "2", "--epochs", "1", "--mix", "0",
            "--real", *paths, "--val-fraction", "0.25", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "sizes" / "results.csv")))
    # 3 training files x 3 planes x 3 windows = 27 samples per epoch for every size
    assert [(r["value"], r["repeat"], r["train_patients"], r["samples_per_epoch"]) for r in rows] == [
        ("1.0", "0", "1", "27"), ("1.0", "1", "1", "27"), ("3.0", "0", "3", "27"), ("3.0", "1", "3", "27")]
    assert [int(r["real_train_sequences"]) for r in rows] == [9, 9, 27, 27]
    assert {r["steps"] for r in rows} == {"4"}
    assert all(float(r["baseline_rmse"]) > 0 and float(r["rmse"]) > 0 for r in rows)
    assert (out / "sizes" / "sizes.png").stat().st_size > 10_000
    assert main(argv[:3] + ["4"] + argv[4:]) == 2  # more than the 3 training files: clear error
