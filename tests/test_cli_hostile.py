"""Hostile command lines found by the session-4 audit: extreme trajectory parameters, a checkpoint
of another model given to ``train simvp --init``, notices printed twice, run folders that are files
or unwritable, and a bad ``--laugen-pairs`` folder for the pytest plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from laugen_napari.cli import main
from laugen_napari.core.trajectory import Trajectory
from laugen_napari.settings import GenerationSettings, SettingsError

from .conftest import SAMPLE_IMAGE, SAMPLE_MASK

GENERATOR_NAMES = ("vae", "hvae", "dhvae", "hvae-disc", "hvae-perc", "stylegan2", "ldm")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    return env


def _laugen(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``laugen ARGS`` in a fresh interpreter (no pytest logging handlers in the way)."""
    return subprocess.run([sys.executable, "-m", "laugen_napari", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """The shipped pair cropped around the ventricles (48 x 48 x 40 voxels; the affine follows)."""
    d = tmp_path_factory.mktemp("pair")
    img, seg = nib.load(str(SAMPLE_IMAGE)), nib.load(str(SAMPLE_MASK))
    ijk = np.argwhere(np.asarray(seg.dataobj) > 0)
    c = ((ijk.min(0) + ijk.max(0)) // 2).astype(int)
    box = tuple(slice(int(ci) - h, int(ci) + h) for ci, h in zip(c, (24, 24, 20)))
    paths = d / "t1.nii.gz", d / "t1_seg.nii.gz"
    nib.save(img.slicer[box], str(paths[0]))
    nib.save(seg.slicer[box], str(paths[1]))
    assert np.asarray(nib.load(str(paths[1])).dataobj).any()
    return paths


# -- F5: trajectories with extreme rates and midpoints -----------------------------------------
def _direct_shape(name: str, rate: float, frames: int, midpoint: float | None) -> np.ndarray:
    """The shapes written out as their definitions (fine for ordinary parameters)."""
    t = np.arange(frames, dtype=np.float64)
    end = frames - 1.0
    if name == "sigmoid":
        mid = end / 2 if midpoint is None else midpoint
        g = 1.0 / (1.0 + np.exp(-rate * (t - mid)))
    elif name == "exponential":
        g = np.exp(rate * t)
    else:
        g = np.exp(-5.0 * np.exp(-rate * t))
    return (g - g[0]) / (g[-1] - g[0])


def test_trajectory_shapes_stay_finite_and_silent_for_extreme_parameters_and_match_the_definitions():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow RuntimeWarning fails the test
        for name in ("sigmoid", "exponential", "gompertz"):
            for rate in (0.05, 0.3, 1.0, 2.5, 6.0):
                for frames in (2, 3, 5, 8, 16):
                    for mid in ((None, 0.0, 1.5, (frames - 1) / 2, frames - 1.0) if name == "sigmoid" else (None,)):
                        got = Trajectory(name, (0.1, 0.4), rate, mid).shape(frames)
                        np.testing.assert_allclose(got, _direct_shape(name, rate, frames, mid), rtol=0, atol=1e-9,
                                                   err_msg=f"{name} rate {rate} frames {frames} midpoint {mid}")
        # a steep sigmoid is a step at its midpoint, a fast exponential jumps at the last frame
        np.testing.assert_allclose(Trajectory("sigmoid", (0.1, 0.4), 1000.0).shape(8), [0, 0, 0, 0, 1, 1, 1, 1],
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(Trajectory("exponential", (0.1, 0.4), 1000.0).shape(8), [0] * 7 + [1],
                                   rtol=0, atol=1e-12)
        # a midpoint long before the first frame: the visible tail, 1 - e^(-rate t) normalised
        t = np.arange(8.0)
        np.testing.assert_allclose(Trajectory("sigmoid", (0.1, 0.4), 1.0, -50.0).shape(8),
                                   np.expm1(-t) / np.expm1(-7.0), atol=1e-12)
        # and one far after the last frame: the exponential e^(rate t) normalised
        np.testing.assert_allclose(Trajectory("sigmoid", (0.1, 0.4), 1.0, 1e6).shape(8),
                                   np.expm1(t) / np.expm1(7.0), atol=1e-12)


def test_settings_name_the_rate_when_the_curve_cannot_be_computed():
    with pytest.raises(SettingsError, match=r"^rate: 1e\+308 per frame is out of range for the sigmoid"):
        GenerationSettings(trajectory="sigmoid", rate=1e308, frames=8).validate()
    with pytest.raises(SettingsError, match=r"^rate: .* gompertz"):
        GenerationSettings(trajectory="gompertz", rate=1e-320, frames=4).validate()
    GenerationSettings(trajectory="exponential", rate=1000.0, frames=8).validate()  # a jump, but usable


@pytest.mark.parametrize("extra", [["--trajectory", "sigmoid", "--rate", "1000"],
                                   ["--trajectory", "exponential", "--rate", "1000"],
                                   ["--trajectory", "sigmoid", "--midpoint", "-50"]])
def test_generate_with_extreme_trajectory_parameters(small_pair, tmp_path, capfd, extra):
    out = tmp_path / "out"
    assert main(["generate", *map(str, small_pair), "-o", str(out), "--frames", "4", "--slope-range", "0.5", "0.5",
                 "-q", *extra]) == 0
    err = capfd.readouterr().err
    assert "Warning" not in err and "overflow" not in err, err
    import json

    z = json.loads((out / "series.json").read_text())["z_mm"]
    assert np.all(np.isfinite(z)) and z[0] == 0 and z[-1] == pytest.approx(1.5)
    assert np.all(np.diff(z) >= 0)


def test_generate_refuses_an_unusable_rate_naming_the_field_before_writing(small_pair, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", *map(str, small_pair), "-o", str(out), "--trajectory", "sigmoid", "--rate", "1e308",
                 "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("laugen generate: error: rate: 1e+308 per frame") and "\n" not in err
    assert not out.exists()


# -- F10a: an output folder that cannot be written ----------------------------------------------
def test_generate_into_an_unwritable_folder_says_so_not_free_space(small_pair, capsys):
    assert main(["generate", *map(str, small_pair), "-o", "/proc/laugen-x", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "laugen generate: error: /proc/laugen-x: the folder /proc is not writable"


def test_library_generate_into_an_unwritable_folder(small_pair):
    from laugen_napari.pipeline import generate_from_files

    with pytest.raises(PermissionError, match="not writable"):
        generate_from_files(*small_pair, "/proc/laugen-x/series", GenerationSettings(frames=2))


# -- F8: run folders are checked before any data are read or a model is built -------------------
@pytest.fixture
def no_work(monkeypatch):
    """Any data set-up or model build fails the test: refusals must come first."""
    def boom(*a, **k):
        raise AssertionError("data were read / a model was built before the refusal")

    monkeypatch.setattr("laugen_napari.training.generators.make_generator_training", boom)
    monkeypatch.setattr("laugen_napari.training.datasets.build_data", boom)


def _train(model: str, out: Path, pair, *extra: str) -> list[str]:
    if model == "simvp":
        return ["train", "simvp", "--synthetic", str(pair[0]), str(pair[1]), "--context", "2", "--target", "2",
                "--crop", "32", "32", "--steps", "1", "--out", str(out), *extra]
    return ["train", model, "--pairs", str(pair[0].parent), "--size", "32", "--steps", "1", "--out", str(out),
            "-q", *extra]


@pytest.mark.parametrize("model", GENERATOR_NAMES + ("simvp",))
def test_train_refuses_a_file_as_run_folder_first(model, small_pair, tmp_path, capsys, no_work):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert main(_train(model, afile, small_pair)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"laugen train: error: {afile} is a file, not a run folder; choose a folder"
    assert main(_train(model, afile / "run", small_pair)) == 2
    assert capsys.readouterr().err.strip() == f"laugen train: error: {afile / 'run'}: {afile} is a file, not a folder"
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("model", ("vae", "stylegan2", "ldm", "simvp"))
def test_train_refuses_an_existing_run_without_resume_first(model, small_pair, tmp_path, capsys, no_work):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"x")
    assert main(_train(model, run, small_pair)) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"laugen train: error: {run} already holds a training run (last.pt); resume it "
                                     "with --resume or choose another folder")  # no notice printed before it
    assert captured.out == ""
    empty = tmp_path / "empty"
    assert main(_train(model, empty, small_pair, "--resume")) == 2
    assert capsys.readouterr().err.strip() == f"laugen train: error: nothing to resume: no last.pt in {empty}"
    assert main(_train(model, "/proc/laugen-run", small_pair)) == 2
    assert capsys.readouterr().err.strip() == "laugen train: error: /proc/laugen-run: the folder /proc is not writable"
    assert not empty.exists()


# -- F7 and F6: a real tiny VAE run; its checkpoint given to train simvp --init ----------------
@pytest.fixture(scope="module")
def vae_run(small_pair, tmp_path_factory):
    """``laugen train vae`` for one step in a fresh interpreter: (run folder, completed process)."""
    d = tmp_path_factory.mktemp("vae")
    proc = _laugen(["train", "vae", "--pairs", small_pair[0].parent, "--size", "32", "--steps", "1", "--batch-size",
                    "2", "--steps-per-epoch", "1", "--widths", "8", "16", "16",
                    "--threads", "1", "--out", d / "run", "-q"], d)
    assert proc.returncode == 0, proc.stderr
    return d / "run", proc


def test_train_generator_prints_each_notice_once(vae_run, small_pair, tmp_path):
    _, proc = vae_run
    assert proc.stderr.count("no Inception weights file given: FID is skipped") == 1, proc.stderr
    assert "laugen train vae: notice: no Inception weights file given: FID is skipped" in proc.stderr
    # a library user without any logging set-up still sees the notice (logging's last resort)
    code = ("from laugen_napari.training.generators import GENERATORS\n"
            f"GENERATORS['vae'].make_training({str(small_pair[0].parent)!r}, size=32, steps=1, "
            "widths=(8, 16, 16))\n")
    lib = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert lib.returncode == 0, lib.stderr
    assert lib.stderr.count("no Inception weights file given: FID is skipped") == 1, lib.stderr


def test_train_simvp_init_from_a_vae_checkpoint_is_refused_first(vae_run, small_pair, tmp_path, capsys, no_work):
    ckpt = vae_run[0] / "last.pt"
    out = tmp_path / "simvp"
    assert main(_train("simvp", out, small_pair, "--init", str(ckpt))) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"laugen train: error: {ckpt} is a vae checkpoint, not a SimVP one"
    assert captured.out == "" and not out.exists()


def test_train_simvp_init_of_another_size_names_the_first_differences(small_pair, tmp_path, capsys, monkeypatch):
    run = tmp_path / "small"
    assert main(_train("simvp", run, small_pair, "--batch-size", "2", "--length", "2", "--val-series", "1",
                       "--threads", "1", "--hid-s", "8", "--hid-t", "16")) == 0
    capsys.readouterr()
    ckpt = run / "last.pt"
    out = tmp_path / "big"

    def boom(*a, **k):
        raise AssertionError("data were read before the refusal")

    monkeypatch.setattr("laugen_napari.training.datasets.build_data", boom)
    args = _train("simvp", out, small_pair, "--init", str(ckpt), "--size", "mmnist")
    args[args.index("--context") + 1] = "3"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"laugen train: error: cannot initialise from {ckpt}: another architecture (N_S: 2 vs 4; N_T: 2 vs "
                   "8; frames: 2 vs 3; and 3 more)")
    assert not out.exists()


# -- F10b: the pytest plugin with a bad --laugen-pairs folder ----------------------------------
@pytest.mark.parametrize("layout", ["missing", "image without mask"])
def test_pytest_plugin_refuses_a_bad_pairs_folder_once_at_start_up(tmp_path, layout):
    (tmp_path / "test_uses_pairs.py").write_text("def test_a(laugen_sources):\n    pass\n\n"
                                                 "def test_b(laugen_sources):\n    pass\n")
    pairs = tmp_path / "pairs"
    if layout != "missing":
        pairs.mkdir()
        (pairs / "scan.nii.gz").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--laugen-pairs",
                           str(pairs)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: --laugen-pairs: {pairs}"), out
    assert "Traceback" not in out and "find_pairs" not in out and "passed" not in out


def test_train_dock_plan_refuses_a_file_or_unwritable_run_folder(tmp_path):
    """The train dock's plan (its Start button) says it on the viewer's thread, as a ValueError it
    shows, instead of the child process failing later."""
    from laugen_napari.training.plan import make_plan, model_choices

    model = next(iter(model_choices()))
    afile = tmp_path / "afile"
    afile.write_text("")
    for run_dir, message in ((afile, f"{afile} is a file, not a run folder; choose a folder"),
                             (afile / "run", f"{afile / 'run'}: {afile} is a file, not a folder"),
                             ("/proc/laugen-run", "/proc/laugen-run: the folder /proc is not writable")):
        with pytest.raises(ValueError) as info:
            make_plan({"model": model, "lr": 1e-3, "run_dir": str(run_dir)})
        assert str(info.value) == message


def test_an_interrupt_while_the_bar_first_draws_ends_its_line(monkeypatch, capsys, tmp_path):
    """Ctrl-C inside tqdm's constructor (which prints the bar) leaves no bar to close: the line is
    ended anyway, so 'laugen: interrupted' is a line of its own and nothing is written."""
    import tqdm as tqdm_module

    class InterruptedBar:
        def __init__(self, **kwargs):
            kwargs["file"].write("laugen generate:   0%|          | 0/2")
            raise KeyboardInterrupt

    monkeypatch.setattr(tqdm_module, "tqdm", InterruptedBar)
    code = main(["generate", str(SAMPLE_IMAGE), str(SAMPLE_MASK), "-o", str(tmp_path / "out"), "--frames", "2"])
    err = capsys.readouterr().err
    assert code == 130
    assert "\nlaugen: interrupted" in err and err.splitlines()[-1].startswith("laugen: interrupted"), err
    assert not (tmp_path / "out").exists()
