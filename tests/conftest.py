import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

# Triton (imported lazily by torch._dynamo, e.g. when an optimizer is first built) ships its own
# LLVM and crashed the process when loaded after Mesa's OpenGL, i.e. after a napari viewer was
# drawn. Loading it first, before any test opens a viewer, avoids that.
import torch._dynamo  # noqa: E402,F401

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_IMAGE = ROOT / "sample_data" / "mni152_t1.nii.gz"
SAMPLE_MASK = ROOT / "sample_data" / "mni152_ventricles_seg.nii.gz"


@pytest.fixture(scope="session")
def sample_pair():
    """The shipped MNI152 T1 and its lateral-ventricle labels as Volumes (Z, Y, X)."""
    from laugen_napari.pipeline import load_pair

    return load_pair(SAMPLE_IMAGE, SAMPLE_MASK)


@pytest.fixture(scope="session")
def sample_arrays(sample_pair):
    image, mask = sample_pair
    return image.data.astype(np.float32), mask.data, image.spacing


@pytest.fixture(autouse=True)
def _settings_in_tmp(tmp_path, monkeypatch):
    """Docks remember settings in $LAUGEN_SETTINGS_DIR: a fresh folder per test, never the user's."""
    monkeypatch.setenv("LAUGEN_SETTINGS_DIR", str(tmp_path / "laugen-settings"))
