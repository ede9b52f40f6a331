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
    deadline = time.monotonic() + 60
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
    proc.join(timeout=60)
    assert proc.error is not None and "at least 1" in proc.error
