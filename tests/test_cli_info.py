"""``laugen info``: what the engine runs on, in a fresh process per environment."""

import os
import subprocess
import sys


def _info(tmp_path, *args, **env):
    full = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), **env)
    done = subprocess.run([sys.executable, "-m", "laugen_napari", "info", *args], capture_output=True, text=True,
                          env=full, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_info_builds_and_reports_the_compiled_loop(tmp_path):
    before = _info(tmp_path)
    assert "laugen-napari" in before and "torch" in before
    assert "not built yet" in before  # an empty cache: nothing is compiled by a plain `laugen info`
    assert not (tmp_path / "cache" / "laugen-napari" / "native").exists()
    built = _info(tmp_path, "--build")
    assert "compiled kernels loaded from" in built
    libraries = list((tmp_path / "cache" / "laugen-napari" / "native").glob("laugen_native_*.so"))
    assert len(libraries) == 1
    assert "compiled kernels loaded from" in _info(tmp_path)  # now built: reported without --build


def test_info_says_why_the_torch_code_runs(tmp_path):
    assert "compiled kernels off (LAUGEN_NATIVE=0)" in _info(tmp_path, "--build", LAUGEN_NATIVE="0")
    no_cc = _info(tmp_path, "--build", CC=str(tmp_path / "no-such-compiler"))
    assert "no C compiler found" in no_cc
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    failed = _info(tmp_path, "--build", CC=str(broken))
    assert "compiled kernels not available" in failed and "internal error" in failed
