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


def tiny_sam_as_vit_b(monkeypatch, path: Path, model_seed: int, weights_seed: int) -> Path:
    """Make SAM's 'vit_b' mean a tiny random architecture (built with ``model_seed``) and save a
    checkpoint of it (weights from ``weights_seed``) at ``path``: the checkpoint path runs without
    real weights."""
    import segment_anything

    from laugen_napari.segment import sam as sam_mod

    monkeypatch.setitem(sam_mod.ARCHITECTURES, "vit_b", (32, 2))
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b",
                        lambda checkpoint=None: sam_mod.build_tiny_sam(seed=model_seed))
    torch.save(sam_mod.build_tiny_sam(seed=weights_seed).state_dict(), path)
    return path
