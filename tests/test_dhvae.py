"""dHVAE / HVAE / VAE: the tempered leapfrog, training on real slices, checkpoints, bad input (CPU, 32x32)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from laugen_napari.cli import main as cli_main
from laugen_napari.metrics import mask_divergences
from laugen_napari.models.dhvae import DHVAE, DHVAEConfig, build_model, leapfrog_tempered, tempering_sqrt_betas
from laugen_napari.models.perceptual import frechet_distance, load_inception, load_vgg16, _vgg16_trunk
from laugen_napari.training.dhvae import (DHVAETask, find_pairs, load_generator, make_training, slices_from_arrays,
                                          slices_from_folder)
from laugen_napari.training.loop import run_training

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
ARCH = dict(widths=(8, 16, 16), latent_channels=2, groups=4, disc_width=8)
TINY = dict(size=32, **ARCH)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def slices32():
    return slices_from_folder(SAMPLE, 32)


def test_tempered_leapfrog_matches_hand_computation_on_quadratic():
    # U(z) = 1/2 sum a_i z_i^2, so dU/dz = a * z; K = 2 steps, beta0 = 0.25 (sqrt 0.5)
    a = np.array([1.0, 4.0, 0.5])
    eps = np.array([0.1, 0.05, 0.2])
    z, rho = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1, -1.0]) / math.sqrt(0.25)
    # schedule sqrt(beta_k) = 1 / ((1 - 1/sqrt(b0)) (k/K)^2 + 1/sqrt(b0)) with 1/sqrt(b0) = 2
    sb = [0.5, 1.0 / (-1.0 * 0.25 + 2.0), 1.0]
    exp_z, exp_rho = z.copy(), rho.copy()
    for k in (1, 2):
        half = exp_rho - eps / 2 * a * exp_z
        exp_z = exp_z + eps * half
        exp_rho = (half - eps / 2 * a * exp_z) * sb[k - 1] / sb[k]
    calls = []

    def grad_u(zz):
        calls.append(1)
        return zz * torch.tensor(a), None

    zt, rt, _ = leapfrog_tempered(torch.tensor(z), torch.tensor(rho), grad_u, torch.tensor(eps),
                                  torch.tensor(0.25, dtype=torch.float64), 2)
    np.testing.assert_allclose([float(s) for s in tempering_sqrt_betas(torch.tensor(0.25), 2)], sb, rtol=1e-6)
    np.testing.assert_allclose(zt.numpy(), exp_z, rtol=1e-12)
    np.testing.assert_allclose(rt.numpy(), exp_rho, rtol=1e-12)
    assert len(calls) == 3  # K + 1 gradient evaluations, the last one shared
    assert not np.allclose(exp_z, z) and not np.allclose(exp_rho, rho)


def test_model_elbo_runs_the_leapfrog_from_the_encoder_sample():
    torch.manual_seed(0)
    m = build_model("hvae", leapfrog_steps=1, step_size_init=0.05, **TINY).eval()
    x = torch.rand(2, 2, 32, 32)
    out = m.elbo(x, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    mu, logvar = (t.flatten(1) for t in m.encoder(x))
    z0 = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
    rho = torch.randn(mu.shape, generator=g) / torch.sqrt(m.beta0)

    def grad(z):
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad(m.potential(z, x)[0].sum(), z)[0]

    half = rho - m.eps / 2 * grad(z0)
    z1 = z0 + m.eps * half
    torch.testing.assert_close(out["z0"], z0.detach())
    torch.testing.assert_close(out["zK"].detach(), z1.detach(), rtol=1e-5, atol=1e-6)
    assert (out["zK"] - out["z0"]).abs().max() > 1e-4  # HMC moved z
    assert torch.isfinite(out["elbo"]).all() and out["elbo"].shape == (2,)


def test_vae_elbo_is_the_usual_single_sample_bound():
    torch.manual_seed(0)
    m = build_model("vae", **TINY).eval()
    assert m.cfg.leapfrog_steps == 0 and m.discriminator is None
    x = (torch.rand(3, 2, 32, 32) > 0.5).float()
    out = m.elbo(x, generator=torch.Generator().manual_seed(1))
    mu, logvar = out["mu"], out["logvar"]
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    rec = -nn.functional.binary_cross_entropy_with_logits(out["logits"], x, reduction="none").flatten(1).sum(1)
    # single-sample ELBO = rec - KL up to the Monte-Carlo term log q - log p of z0; its mean over eps is KL
    e0 = (out["z0"] - mu) / torch.exp(0.5 * logvar)
    mc = (-0.5 * e0**2 - 0.5 * logvar + 0.5 * out["z0"] ** 2).sum(1)
    torch.testing.assert_close(out["elbo"], rec - mc, rtol=1e-5, atol=1e-3)
    assert torch.all(kl >= 0)


def test_training_lowers_the_elbo_on_real_slices(slices32):
    assert len(slices32) >= 10 and slices32.images.max() <= 1 and set(np.unique(slices32.masks)) == {0, 1}
    torch.manual_seed(0)
    model = build_model("dhvae", leapfrog_steps=1, lr=4e-3, disc_warmup=10, **TINY)
    task = DHVAETask(model, slices32, slices32, batch_size=6, steps_per_epoch=20)
    model.eval()
    with torch.no_grad():
        before = task.validate()["loss"]
    model.train()
    values = [task.train_step(b) for b in task.batches(0)]
    model.eval()
    with torch.no_grad():
        after = task.validate()["loss"]
    assert after < 0.9 * before, (before, after)
    assert values[-1]["disc"] > 0 and values[0]["disc"] == 0  # discriminator on after the warm-up only
    assert np.mean([v["nelbo"] for v in values[-5:]]) < np.mean([v["nelbo"] for v in values[:5]])


def test_checkpoint_reloads_and_samples_identically_and_resumes(tmp_path, slices32):
    torch.manual_seed(0)
    task, batches, kw = make_training(slices=slices32, size=32, steps=4, out=tmp_path / "run", steps_per_epoch=2,
                                      model="hvae", **ARCH)
    recs = list(run_training(task, batches, **kw))
    assert [r.phase for r in recs].count("val") == 2 and (tmp_path / "run" / "metrics.csv").is_file()
    loaded = load_generator(tmp_path / "run" / "last.pt")
    a = task.model.eval().sample(5, generator=torch.Generator().manual_seed(7))
    b = loaded.sample(5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = loaded.sample(5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)
    # sample metrics: the mask JSD/KLD of metrics.py on the task's own samples, grid saved for the viewer
    vals = task.sample()
    grid = np.load(tmp_path / "run" / "samples_latest.npz")
    direct = mask_divergences(task.train_x[:, 1].numpy().astype(np.uint8), grid["masks"], 2)
    assert vals["jsd"] == pytest.approx(direct["jsd"]) and vals["kld"] == pytest.approx(direct["kld"])
    assert vals["jsd"] > 0 and grid["images"].shape == (task.n_samples, 32, 32)
    task2, batches2, kw2 = make_training(slices=slices32, size=32, steps=6, out=tmp_path / "run", steps_per_epoch=2,
                                         model="hvae", resume=True, **ARCH)
    recs2 = list(run_training(task2, batches2, **kw2))
    assert [r.step for r in recs2 if r.phase == "train"] == [5, 6] and task2.step == 6


def test_cli_train_and_sample_write_nifti_pairs(tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    os.symlink(SAMPLE / "mni152_t1.nii.gz", data / "mni.nii.gz")
    os.symlink(SAMPLE / "mni152_ventricles_seg.nii.gz", data / "mni_seg.nii.gz")
    assert [(p.name, m.name) for p, m in find_pairs(data)] == [("mni152_t1.nii.gz", "mni152_ventricles_seg.nii.gz")]
    run = tmp_path / "run"
    assert cli_main(["train", "vae", "--pairs", str(data), "--size", "32", "--steps", "2", "--steps-per-epoch", "2",
                     "--out", str(run), "--threads", "1", "-q"]) == 0
    out = tmp_path / "gen"
    assert cli_main(["sample", "vae", "--checkpoint", str(run / "last.pt"), "-n", "3", "-o", str(out),
                     "--min-mask-voxels", "0"]) == 0
    img = nib.load(out / "gen_0000.nii.gz")
    seg = np.asarray(nib.load(out / "gen_0000_seg.nii.gz").dataobj)
    assert img.shape == (32, 32, 1) and seg.shape == (32, 32, 1) and set(np.unique(seg)) <= {0, 1}
    assert len(list(out.glob("gen_*_seg.nii.gz"))) == 3
    # an untrained model's masks are not tiny-free: a huge threshold leaves nothing and is an error
    assert cli_main(["sample", "vae", "--checkpoint", str(run / "last.pt"), "-n", "2", "-o", str(tmp_path / "none"),
                     "--min-mask-voxels", "5000", "--max-tries", "1"]) == 2
    assert not (tmp_path / "none").exists()


def test_bad_pairs_give_clear_errors(tmp_path):
    img = np.random.default_rng(0).random((4, 20, 20)).astype(np.float32)
    with pytest.raises(ValueError, match="differ in shape"):
        slices_from_arrays(img, np.zeros((4, 20, 21), np.int16), 32, name="case7")
    with pytest.raises(ValueError, match="case7: the mask has no structure"):
        slices_from_arrays(img, np.zeros((4, 20, 20), np.int16), 32, name="case7")
    lab = np.zeros((4, 20, 20), np.int16)
    lab[2, 5:12, 5:12] = 1
    s = slices_from_arrays(img * 50 + 10, lab, 32)
    assert list(s.slice_index) == [2] and s.images.shape == (1, 32, 32)
    assert s.intensity_min[0] == pytest.approx(float((img[2] * 50 + 10).min()), rel=1e-5)
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(img, affine), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 20, 21), np.int16), affine), tmp_path / "a_seg.nii.gz")
    with pytest.raises(ValueError, match=r"a\.nii\.gz and a_seg\.nii\.gz differ in shape"):
        slices_from_folder(tmp_path, 32)
    nib.save(nib.Nifti1Image(np.zeros((4, 20, 20), np.int16), affine), tmp_path / "a_seg.nii.gz")
    with pytest.raises(ValueError, match=r"a_seg\.nii\.gz: the mask has no structure"):
        slices_from_folder(tmp_path, 32)


def test_vgg_file_errors_name_the_file_and_good_file_loads(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_vgg16(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="junk.pth"):
        load_vgg16(junk)
    trunk = _vgg16_trunk()
    state = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    state["features.7.weight"] = torch.zeros(128, 64, 5, 5)
    bad = tmp_path / "bad_vgg.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"bad_vgg.pth: 'features.7.weight' has shape"):
        load_vgg16(bad)
    state["features.7.weight"] = trunk.state_dict()["7.weight"]
    good = tmp_path / "vgg16.pth"
    torch.save(state, good)
    feats = load_vgg16(good)(torch.rand(1, 1, 32, 32))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]


class _FakeInception(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def test_inception_file_errors_name_the_file_and_fid(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_inception(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="junk.pt"):
        load_inception(junk)
    wrong = tmp_path / "wrong_dim.pt"
    torch.jit.script(_FakeInception(10)).save(str(wrong))
    with pytest.raises(ValueError, match=r"wrong_dim.pt gives features of shape \(2, 10\)"):
        load_inception(wrong)
    ok = tmp_path / "default_1.pt"
    torch.jit.script(_FakeInception(2048)).save(str(ok))
    assert load_inception(ok)(torch.rand(3, 1, 32, 32)).shape == (3, 2048)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(4.0, rel=1e-6)  # equal covariances: |mu1 - mu2|^2


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="multiple of"):
        DHVAEConfig(size=30)
    with pytest.raises(ValueError, match="leapfrog_steps >= 1"):
        DHVAEConfig(kind="hvae", leapfrog_steps=0)
    with pytest.raises(ValueError, match="model kind"):
        DHVAEConfig(kind="gan")
    assert DHVAE(DHVAEConfig(kind="vae", leapfrog_steps=3, **TINY)).cfg.leapfrog_steps == 0


def test_kl_warmup_anneals_the_kl_part_and_fitted_sampling_roundtrips(tmp_path, slices32):
    torch.manual_seed(0)
    task, batches, kw = make_training(slices=slices32, size=32, steps=4, out=tmp_path / "run", steps_per_epoch=2,
                                      model="vae", kl_warmup=4, latent_sampling="fitted", **ARCH)
    x = next(iter(batches(0)))
    torch.manual_seed(1)
    out = task.model.elbo(x)
    torch.manual_seed(1)
    v = task.train_step(x)  # step 0: weight 0, the loss is the reconstruction term alone
    dims = x[0].numel()
    assert v["kl_weight"] == 0.0
    assert v["loss"] == pytest.approx(float(-out["rec"].mean()) / dims, rel=1e-4)
    assert v["nelbo"] == pytest.approx(float(-out["elbo"].mean()), rel=1e-4)
    assert float((out["elbo"] - out["rec"]).mean()) < 0  # the KL-like part is a cost
    task.step = 0
    recs = list(run_training(task, batches, **kw))
    assert [r.values.get("kl_weight") for r in recs if r.phase == "train"] == [0.0, 0.25, 0.5, 0.75]
    m = task.model.eval()
    assert m.latent_mean.shape == (m.cfg.latent_dim,)  # fitted by the task's sample()
    mu = m.encoder(task.train_x)[0].flatten(1)
    torch.testing.assert_close(m.latent_mean, mu.mean(0), rtol=1e-4, atol=1e-5)
    fitted = m.sample(4, generator=torch.Generator().manual_seed(3))
    loaded = load_generator(tmp_path / "run" / "last.pt")
    torch.testing.assert_close(loaded.sample(4, generator=torch.Generator().manual_seed(3)), fitted, rtol=0, atol=0)
    m.clear_latent_density()
    assert not torch.equal(m.sample(4, generator=torch.Generator().manual_seed(3)), fitted)
    with pytest.raises(ValueError, match="latent_sampling"):
        DHVAEConfig(latent_sampling="gmm")


def test_paper_preset_has_the_papers_size():
    from laugen_napari.models.dhvae import count_parameters

    m = build_model("dhvae", "paper", size=128)
    n = count_parameters(m) - count_parameters(m.discriminator)
    assert 21e6 < n < 25e6 and m.cfg.leapfrog_steps == 3 and m.cfg.latent_dim == 3 * 16 * 16
    assert build_model("hvae", "cpu").cfg.leapfrog_steps == 1 and DHVAEConfig().leapfrog_steps == 3


def test_discriminator_fakes_are_prior_samples_or_reconstructions(slices32):
    calls = {}
    for mode in ("prior", "recon"):
        torch.manual_seed(0)
        model = build_model("dhvae", leapfrog_steps=1, disc_warmup=0, disc_fakes=mode, **TINY)
        task = DHVAETask(model, slices32, slices32, batch_size=4, steps_per_epoch=1)
        n = [0]
        decode = model.decode
        model.decode = lambda z, n=n, decode=decode: (n.__setitem__(0, n[0] + 1), decode(z))[1]
        v = task.train_step(next(iter(task.batches(0))))
        calls[mode] = n[0]
        assert v["disc"] > 0 and v["gen"] > 0
    assert calls["prior"] == calls["recon"] + 1  # only prior fakes decode fresh latents
    with pytest.raises(ValueError, match="disc_fakes"):
        DHVAEConfig(disc_fakes="both")
