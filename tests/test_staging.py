"""Output folders staged beside their place: concurrent runs, the current folder, links, and
leftovers of runs killed outright (a process, a Dask worker) removed by the next run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import pytest

from laugen_napari.cli import main
from laugen_napari.io import export
from laugen_napari.io.atomic import remove_stale_staging
from laugen_napari.io.export import staged_directory

from .test_cli_generate import _lps_pair

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, *args, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


REPLACER = """
import sys
from pathlib import Path
from laugen_napari.io.export import staged_directory
out = Path(sys.argv[1])
tag = sys.argv[2]
for i in range(40):
    with staged_directory(out, overwrite=True) as tmp:
        for name in ("a", "b", "c"):
            (tmp / name).write_text(f"{tag} {i}")
"""


def test_concurrent_overwrites_end_in_one_complete_folder(tmp_path):
    out = tmp_path / "out"
    procs = [_python(REPLACER, out, tag) for tag in ("one", "two", "three")]
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    contents = {f.name: f.read_text() for f in out.iterdir()}
    assert sorted(contents) == ["a", "b", "c"] and len(set(contents.values())) == 1  # one run's complete output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.tmp-* / .out.old-* left


def test_two_concurrent_generate_overwrite_runs(tmp_path):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    out = tmp_path / "series"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code = "import sys; from laugen_napari.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["generate", img_path, seg_path, "-o", out, "--frames", 4, "--sigma-mm", 2, "--overwrite", "-q"]
    procs = [_python(code, *args, "--seed", seed) for seed in (1, 2)]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0 or (p.returncode == 2 and len(err.strip().splitlines()) == 1), err
    assert 0 in [p.returncode for p in procs]
    assert sorted(p.name for p in out.iterdir()) == ["image_series.nii.gz", "mask_series.nii.gz", "series.json"]
    rec = json.loads((out / "series.json").read_text())
    assert nib.load(str(out / "image_series.nii.gz")).shape[-1] == rec["frames"] == 4
    assert _hidden(tmp_path) == []


def test_current_folder_is_refused_and_left_alone(tmp_path, monkeypatch, capsys):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    work = tmp_path / "work"
    (work / "inner").mkdir(parents=True)
    (work / "keep.txt").write_text("mine")
    for cwd, target in ((work, "."), (work / "inner", "..")):
        monkeypatch.chdir(cwd)
        assert main(["generate", str(img_path), str(seg_path), "-o", target, "--overwrite", "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "current folder" in err, err
    assert sorted(p.name for p in work.iterdir()) == ["inner", "keep.txt"]
    assert _hidden(tmp_path) == [] and _hidden(work) == []


def test_symlinked_outdir_is_written_through(tmp_path, capsys):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    (real / "old.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert main(["generate", str(img_path), str(seg_path), "-o", str(link), "--frames", "2", "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["generate", str(img_path), str(seg_path), "-o", str(link), "--frames", "2", "--overwrite", "-q"]) == 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert sorted(p.name for p in real.iterdir()) == ["image_series.nii.gz", "mask_series.nii.gz", "series.json"]
    assert _hidden(tmp_path) == []
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    assert main(["generate", str(img_path), str(seg_path), "-o", str(broken), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken symbolic link" in err
    assert not (tmp_path / "nowhere").exists() and _hidden(tmp_path) == []


def test_failure_inside_or_at_the_final_rename_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt
    real_rename = os.rename

    def rename(src, dst):  # the old folder is moved aside, then moving the new one in fails
        if Path(src).name.startswith(".out.tmp-"):
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(export.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["old.txt"] and _hidden(tmp_path) == []


HOLDER = """
import sys, time
from pathlib import Path
from laugen_napari.io.export import staged_directory
with staged_directory(Path(sys.argv[1])) as tmp:
    (tmp / "image_series.nii.gz").write_bytes(b"x" * 100000)
    print("ready", flush=True)
    time.sleep(120)
"""


def _holding(out: Path) -> subprocess.Popen:
    proc = _python(HOLDER, out)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def test_sigkilled_runs_leave_folders_the_next_run_removes(tmp_path):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    killed, alive = _holding(tmp_path / "killed"), _holding(tmp_path / "busy")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        names = _hidden(tmp_path)
        assert any(n.startswith(f".killed.tmp-P{killed.pid}S") for n in names), names
        assert any(n.startswith(f".busy.tmp-P{alive.pid}S") for n in names), names
        assert main(["generate", str(img_path), str(seg_path), "-o", str(tmp_path / "next"), "--frames", "2",
                     "--sigma-mm", "2", "-q"]) == 0
        names = _hidden(tmp_path)
        assert [n for n in names if n.startswith(".busy.tmp-")] and not [n for n in names if n.startswith(".killed")]
    finally:
        alive.kill()
        alive.wait(30)
        for p in (killed, alive):
            p.stdout.close()
            p.stderr.close()
    assert [p.name for p in remove_stale_staging(tmp_path)][0].startswith(".busy.tmp-") and _hidden(tmp_path) == []


def test_killed_dask_worker_leftovers_are_removed_by_the_next_dataset_run(tmp_path):
    """A real LocalCluster worker is SIGKILLed while it writes a pair; `laugen dataset` into the
    same OUTDIR afterwards (without --overwrite) removes the worker's hidden folder and succeeds."""
    import dask
    from distributed import Client, LocalCluster

    from laugen_napari.batch import run_pair
    from laugen_napari.io.pairs import Pair
    from laugen_napari.settings import GenerationSettings

    img_path, seg_path, *_ = _lps_pair(tmp_path)
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"image,mask,id\n{img_path},{seg_path},case\n")
    out = tmp_path / "out"
    out.mkdir()
    options = GenerationSettings(frames=20000, sigma_mm=2.0, device="cpu")  # long enough to be caught writing
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            future = client.submit(run_pair, Pair("case", str(img_path), str(seg_path)), str(out), options, pure=False)
            deadline = time.monotonic() + 120
            while not _hidden(out) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _hidden(out), "the worker never started writing"
            (pid,) = client.run(os.getpid).values()
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(Exception):
                future.result(timeout=120)
    assert [n for n in _hidden(out) if n.startswith(f".case.tmp-P{pid}S")]
    assert main(["dataset", str(csv), "-o", str(out), "--scheduler", "synchronous", "--frames", "2",
                 "--sigma-mm", "2", "-q"]) == 0
    assert _hidden(out) == [] and sorted(p.name for p in out.iterdir()) == ["case", "dataset.json"]


def test_sigterm_during_a_run_removes_its_staging(tmp_path):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    code = "import sys; from laugen_napari.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = _python(code, "generate", img_path, seg_path, "-o", tmp_path / "out", "--frames", 5000, "--sigma-mm", 2,
                   "-q")
    try:
        deadline = time.monotonic() + 120
        while not _hidden(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _hidden(tmp_path), proc.communicate()
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert _hidden(tmp_path) == [] and not (tmp_path / "out").exists()
