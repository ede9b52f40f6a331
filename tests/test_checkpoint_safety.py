"""Checkpoints are untrusted files: no code runs on load, broken files give one line, and a
resume over a broken last.pt falls back to the previous intact checkpoint."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from laugen_napari.cli import main
from laugen_napari.training.loop import CheckpointError, load_checkpoint, run_training

from test_training import ToyTask, toy_batches


class _Payload:
    """Unpickling this object runs ``os.system`` (creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload_checkpoint(path: Path, marker: Path) -> Path:
    good = {"format": "laugen-train/1", "config": {"task": "dhvae"}, "task": {"model": {}}, "step": 1,
            "epoch": 1, "evil": _Payload(marker)}
    torch.save(good, path)
    return path


def _payload_run_dir(tmp_path: Path, marker: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    _payload_checkpoint(run / "last.pt", marker)
    return run


def test_a_pickle_payload_never_runs_on_any_loading_path(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = _payload_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(ckpt)
    from laugen_napari.training.dhvae import load_generator

    with pytest.raises(CheckpointError):
        load_generator(ckpt)
    run = _payload_run_dir(tmp_path, marker)
    with pytest.raises(CheckpointError):
        next(run_training(ToyTask(), toy_batches(), epochs=2, out_dir=run, resume=True))
    assert main(["sample", "dhvae", "--checkpoint", str(ckpt), "-n", "2", "-o", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    # the train dock's "show validation sample" reads the run's checkpoint through training.plan
    from laugen_napari.training import plan

    with pytest.raises(CheckpointError):
        plan.load_simvp_for_inference(ckpt)
    with pytest.raises(CheckpointError):
        plan.load_simvp_for_inference(run / "last.pt")
    assert not marker.exists(), "a checkpoint ran code while being loaded"
    # and the payload really is live: plain pickle would run it (the test would catch a regression)
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def _noise(seed: int, head: bytes = b"") -> bytes:
    """4 KiB of fixed random bytes after ``head`` (seeded: a failure reproduces)."""
    return head + bytes(random.Random(seed).getrandbits(8) for _ in range(4096 - len(head)))


# b"\x80\x45": a pickle PROTO opcode naming protocol 69, on which torch warns before it fails
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", _noise(0), _noise(1, b"\x80\x45"),
                                     _noise(2, b"\x80\x02")],
                         ids=["empty", "truncated-zip", "random", "unknown-pickle-protocol", "pickle-protocol-2"])
def test_broken_checkpoints_are_one_line_errors(tmp_path, content, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(bad.name)):
        load_checkpoint(bad)
    assert main(["sample", "dhvae", "--checkpoint", str(bad), "-n", "1", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("laugen sample: error:") and "\n" not in err
    # torch's own message for an unreadable file advises weights_only=False: never passed on
    assert "weights_only" not in err and "refused" not in err


def test_sam_checkpoints_go_through_the_safe_reader(tmp_path, capsys):
    """`laugen segment --checkpoint` reads the user's file like every other checkpoint: a payload
    never runs, and random bytes are one line that does not advise weights_only=False."""
    from laugen_napari.segment.sam import read_checkpoint

    marker = tmp_path / "pwned"
    evil = tmp_path / "sam_evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1), "evil": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(evil, "vit_b")
    noise = tmp_path / "sam_noise.pth"
    noise.write_bytes(_noise(3, b"\x80\x45"))  # torch warns on this header: the warning is not shown
    with pytest.raises(CheckpointError, match="sam_noise.pth: not a readable SAM checkpoint") as info:
        read_checkpoint(noise, "vit_b")
    assert "weights_only" not in str(info.value)
    assert main(["segment", str(Path(__file__).resolve().parents[1] / "sample_data" / "mni152_t1.nii.gz"),
                 "--points", "98,120,90", "--checkpoint", str(noise), "-o", str(tmp_path / "m.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("laugen segment: error:") and "sam_noise.pth" in err and "\n" not in err, err
    img = Path(__file__).resolve().parents[1] / "sample_data" / "mni152_t1.nii.gz"
    assert main(["segment", str(img), "--points", "98,120,90", "--checkpoint", str(evil),
                 "-o", str(tmp_path / "m.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("laugen segment: error:") and "refused" in err and "\n" not in err, err
    assert not marker.exists() and not (tmp_path / "m.nii.gz").exists()


def test_truncated_real_checkpoint_is_refused(tmp_path):
    list(run_training(ToyTask(), toy_batches(), epochs=1, out_dir=tmp_path))
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_resume_on_broken_last_falls_back_to_previous_and_says_so(tmp_path):
    full = list(run_training(ToyTask(seed=5), toy_batches(), epochs=4, out_dir=tmp_path / "a"))
    list(run_training(ToyTask(seed=5), toy_batches(), epochs=3, out_dir=tmp_path / "b"))
    b = tmp_path / "b"
    assert (b / "last.pt.prev").is_file()
    assert load_checkpoint(b / "last.pt.prev")["epoch"] == 2
    data = (b / "last.pt").read_bytes()
    (b / "last.pt").write_bytes(data[:100])  # killed mid-copy, disk full, ...
    notices = []
    resumed = list(run_training(ToyTask(seed=5), toy_batches(), epochs=4, out_dir=b, resume=True, warn=notices.append))
    assert len(notices) == 1 and "last.pt.prev" in notices[0] and "broken" in notices[0]
    assert resumed[0].epoch == 2  # epoch 3 is redone from the epoch-2 checkpoint
    assert resumed[-1].values["loss"] == pytest.approx(full[-1].values["loss"], rel=1e-6)
    assert load_checkpoint(b / "last.pt")["epoch"] == 4


def test_resume_with_nothing_intact_is_one_error(tmp_path):
    list(run_training(ToyTask(), toy_batches(), epochs=1, out_dir=tmp_path))
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pt"):
        next(run_training(ToyTask(), toy_batches(), epochs=2, out_dir=tmp_path, resume=True))


def test_no_weights_only_false_in_the_sources():
    src = Path(__file__).resolve().parents[1] / "src"
    offenders = [str(p) for p in src.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


@pytest.mark.parametrize("gen", ["dhvae", "stylegan2", "ldm"])
def test_generator_checkpoints_that_do_not_fit_are_one_line_errors(tmp_path, gen, capsys):
    """A well-formed checkpoint of the right task whose model config or weights do not fit (edited,
    or from another version) is refused in one line by every generator's loader."""
    from laugen_napari.training.generators import GENERATORS

    cases = {
        "no-config": {"model": {}},
        "bad-config": {"model": {}, "model_config": {"no_such_field": 1}},
        "wrong-weights": {"model": {"x": torch.zeros(1)}, "model_config": {}},
    }
    for name, task_state in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"format": "laugen-train/1", "config": {"task": gen}, "task": task_state, "step": 1, "epoch": 1},
                   path)
        with pytest.raises(CheckpointError, match=name):
            GENERATORS[gen].load(path)
        assert main(["sample", gen, "--checkpoint", str(path), "-n", "1", "-o", str(tmp_path / f"o-{name}")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("laugen sample: error:") and "\n" not in err, err
    other = tmp_path / "other.pt"
    torch.save({"format": "laugen-train/1", "config": {"task": "simvp"}, "task": {}, "step": 1, "epoch": 1}, other)
    with pytest.raises(CheckpointError, match="is not a"):
        GENERATORS[gen].load(other)
