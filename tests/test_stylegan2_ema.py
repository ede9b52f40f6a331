"""StyleGAN2 path-length regularisation and moving average of the generator weights (EMA): the
average follows its decay, the path length is the Jacobian norm it claims and trains the generator,
resume is bit-exact, sampling (library and `laugen sample`) uses the average, and checkpoints from
before the average existed still load and resume (CPU, tiny widths, 32x32)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from laugen_napari.cli import main as cli_main
from laugen_napari.models.stylegan2 import StyleGAN2, StyleGAN2Config
from laugen_napari.training.dhvae import slices_from_folder
from laugen_napari.training.generators import GENERATORS
from laugen_napari.training.loop import load_checkpoint, run_training
from laugen_napari.training.stylegan2 import make_training

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
TINY = {"channel_base": 128, "max_channels": 16, "z_dim": 16, "w_dim": 16, "mapping_layers": 2}

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def slices():
    return slices_from_folder(SAMPLE, 32)


def _gen_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_ema_beta_follows_half_life_and_rampup():
    cfg = StyleGAN2Config(size=32, **TINY, ema_kimg=10.0, ema_rampup=0.05)
    assert cfg.ema_beta(0, 8) == 0.0  # nothing seen yet: the average is the weights
    assert cfg.ema_beta(100_000, 8) == pytest.approx(0.5 ** (8 / 5000))  # ramped: half-life 5 k images
    assert cfg.ema_beta(10_000_000, 8) == pytest.approx(0.5 ** (8 / 10_000))  # full half-life 10 kimg
    assert StyleGAN2Config(size=32, **TINY, ema_kimg=0.004, ema_rampup=0).ema_beta(0, 4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="ema_kimg"):
        StyleGAN2Config(ema_kimg=-1)


@pytest.mark.parametrize("variant", ["conditional", "mask-only"])
def test_ema_tracks_the_weights_as_the_decay_says(slices, variant):
    torch.manual_seed(0)
    # half-life 6 images, no ramp-up: beta = 0.5 ** (4 / 6) = 0.63 per step of 4
    task, batches, _ = make_training(slices=slices, size=32, steps=3, variant=variant, steps_per_epoch=3, batch_size=4,
                                     ema_kimg=0.006, ema_rampup=0.0, pl_every=2, **TINY)
    m = task.model
    pairs = m.ema_pairs()
    assert len(pairs) == (2 if variant == "mask-only" else 1)
    assert all(not p.requires_grad for _, ema in pairs for p in ema.parameters())
    assert all(a is not b for gen, ema in pairs for a, b in zip(gen.parameters(), ema.parameters()))
    # the average starts as a copy of the weights
    for gen, ema in pairs:
        for a, b in zip(gen.parameters(), ema.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    beta = 0.5 ** (4 / 6)
    expected = [[p.detach().clone() for p in ema.parameters()] for _, ema in pairs]
    for batch in batches(0):
        task.train_step(batch)
        for k, (gen, ema) in enumerate(pairs):
            expected[k] = [beta * e + (1 - beta) * p.detach() for e, p in zip(expected[k], gen.parameters())]
            for e, p_ema in zip(expected[k], ema.parameters()):
                torch.testing.assert_close(p_ema, e, rtol=1e-5, atol=1e-6)
    # after three steps the average lags behind the trained weights
    gen, ema = pairs[0]
    assert any(not torch.allclose(a, b) for a, b in zip(gen.parameters(), ema.parameters()))
    assert task.images_seen == 12


def test_no_ema_samples_with_the_trained_weights(slices):
    torch.manual_seed(0)
    task, batches, _ = make_training(slices=slices, size=32, steps=1, steps_per_epoch=1, batch_size=4, ema_kimg=0,
                                     **TINY)
    m = task.model
    assert m.generator_ema is None and not any(k.startswith("generator_ema") for k in m.state_dict())
    task.train_step(next(iter(batches(0))))
    m.eval()
    gg = torch.Generator().manual_seed(2)
    z = torch.randn((3, 16), generator=gg)
    c = m.condition_bank[torch.randint(0, len(m.condition_bank), (3,), generator=gg)]
    expected = ((m.generate(z, c, generator=gg) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(m.sample(3, generator=torch.Generator().manual_seed(2)), expected, rtol=0, atol=0)


def test_path_length_is_the_jacobian_norm_finite_and_has_gradients():
    torch.manual_seed(0)
    m = StyleGAN2(StyleGAN2Config(size=16, variant="conditional", cond_dim=2, **TINY))
    z, c = torch.randn(3, 16), torch.rand(3, 2)
    torch.manual_seed(7)
    lengths = m.path_lengths(z, c)
    assert lengths.shape == (3,) and torch.isfinite(lengths).all() and (lengths > 0).all()
    # the same noise y again (same RNG draws: synthesis noise, then y), and the full Jacobian w.r.t. w
    torch.manual_seed(7)
    gen = m.generator
    w = gen.mapping(z, c).detach()
    out = m.generate(z, c)  # consumes the synthesis noise draws as path_lengths did (strength 0 at init)
    y = torch.randn_like(out) / 16.0

    def pair_of(wv: torch.Tensor) -> torch.Tensor:
        o = gen.synthesis(wv)
        from laugen_napari.models.stylegan2 import mask_probabilities

        return torch.cat([o[:, :1], mask_probabilities(o[:, 1:]) * 2 - 1], 1)

    jac = torch.autograd.functional.jacobian(pair_of, w)  # (3, C, S, S, 3, w_dim)
    for b in range(3):
        jb = jac[b, :, :, :, b].reshape(-1, w.shape[1])  # sample b depends on its own w only
        torch.testing.assert_close(lengths[b], (jb.T @ y[b].reshape(-1)).norm(), rtol=1e-4, atol=1e-6)
    # the penalty is differentiable w.r.t. the generator (mapping and synthesis) and not the discriminator
    penalty = (lengths - lengths.detach().mean() * 0.5).pow(2).mean()
    penalty.backward()
    grads = [p.grad for p in m.generator.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert m.generator.mapping.net[0].weight.grad.abs().sum() > 0
    assert m.generator.synthesis.layers[-1][-1].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.discriminator.parameters())
    # mask-only: both generators have their own path length
    mo = StyleGAN2(StyleGAN2Config(size=16, variant="mask-only", **TINY))
    real_mask = torch.rand(2, 1, 16, 16) * 2 - 1
    for which, rm in (("generator", real_mask), ("mask_generator", None)):
        ln = mo.path_lengths(torch.randn(2, 16), real_mask=rm, which=which)
        assert torch.isfinite(ln).all() and (ln > 0).all()
    with pytest.raises(ValueError, match="no mask_generator"):
        m.path_lengths(z, c, which="mask_generator")


def test_path_length_step_is_lazy_and_moves_the_generator(slices):
    torch.manual_seed(0)
    task, batches, _ = make_training(slices=slices, size=32, steps=5, steps_per_epoch=5, batch_size=4, pl_every=2,
                                     r1_every=100, **TINY)
    # the generator optimiser is corrected for the interval like StyleGAN2's (lr x 2/3, betas ** 2/3)
    assert task.opt_g.param_groups[0]["lr"] == pytest.approx(2.5e-3 * 2 / 3)
    assert task.opt_g.param_groups[0]["betas"][1] == pytest.approx(0.99 ** (2 / 3))
    vals = [task.train_step(b) for b in batches(0)]
    pls = [v["pl"] for v in vals]
    means = [v["pl_mean"] for v in vals]
    assert all(np.isfinite(pls)) and pls[0] > 0
    assert pls[1] == pls[0] and pls[2] != pls[1] and pls[3] == pls[2] and pls[4] != pls[3]  # steps 0, 2, 4 only
    assert means[0] > 0 and means[1] == means[0] and means[2] != means[1]
    # off: no penalty, optimiser uncorrected
    task0, b0, _ = make_training(slices=slices, size=32, steps=1, steps_per_epoch=1, batch_size=4, pl_weight=0, **TINY)
    assert task0.opt_g.param_groups[0]["lr"] == pytest.approx(2.5e-3)
    assert task0.train_step(next(iter(b0(0))))["pl"] == 0.0


def _run(tmp: Path, slices, steps: int, resume: bool = False, **options):
    task, batches, kw = make_training(slices=slices, size=32, steps=steps, out=tmp, resume=resume, steps_per_epoch=2,
                                      batch_size=4, **options)
    list(run_training(task, batches, **kw))
    return task


def test_resume_is_bit_exact_with_ema_and_path_length(tmp_path, slices):
    opts = dict(pl_every=2, r1_every=3, ema_kimg=0.01, ema_rampup=0.0, **TINY)
    torch.manual_seed(0)
    whole = _run(tmp_path / "a", slices, 4, **opts)
    torch.manual_seed(0)
    _run(tmp_path / "b", slices, 2, **opts)
    torch.manual_seed(123)  # resuming restores the RNG, whatever happened in between
    resumed = _run(tmp_path / "b", slices, 4, resume=True, **opts)
    sa, sb = whole.model.state_dict(), resumed.model.state_dict()
    assert any(k.startswith("generator_ema.") for k in sa) and sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert whole.pl_mean == resumed.pl_mean and whole.images_seen == resumed.images_seen == 16
    # the EMA differs from the trained weights, so the comparison above covered a real average
    assert any(not torch.equal(sa[k], sa["generator_ema." + k[len("generator."):]]) for k in sa
               if k.startswith("generator."))


def test_sample_and_cli_use_the_ema_generator(tmp_path, slices):
    torch.manual_seed(0)
    task = _run(tmp_path / "run", slices, 2, ema_kimg=0.01, ema_rampup=0.0, **TINY)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    state = ckpt["task"]["model"]
    assert any(k.startswith("generator_ema.") for k in state)
    # the library: the loaded model samples with the average's weights, not the trained ones
    loaded = GENERATORS["stylegan2"].load(tmp_path / "run" / "last.pt")

    def plain_with(prefix: str) -> StyleGAN2:
        plain = StyleGAN2(StyleGAN2Config(**{**ckpt["task"]["model_config"], "ema_kimg": 0.0}))
        plain.condition_bank = loaded.condition_bank.clone()
        weights = {k: v for k, v in state.items() if not k.startswith(("generator.", "generator_ema."))}
        weights.update({"generator." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        plain.load_state_dict(weights)
        return plain.eval()

    g = lambda: torch.Generator().manual_seed(4)
    s_loaded = loaded.sample(3, generator=g())
    torch.testing.assert_close(s_loaded, plain_with("generator_ema.").sample(3, generator=g()), rtol=0, atol=0)
    assert (s_loaded - plain_with("generator.").sample(3, generator=g())).abs().max() > 1e-4
    torch.testing.assert_close(task.model.eval().sample(3, generator=g()), s_loaded, rtol=0, atol=0)
    # the CLI: the average makes every pixel structure, the trained generator none; only the average passes K = 10
    state = dict(state)
    for key, value in (("generator_ema.synthesis.out_bias", 30.0), ("generator.synthesis.out_bias", -30.0)):
        bias = state[key].clone()
        bias[:, 1:] = value
        state[key] = bias
    ckpt["task"]["model"] = state
    torch.save(ckpt, tmp_path / "forced.pt")
    out = tmp_path / "gen"
    assert cli_main(["sample", "stylegan2", "--checkpoint", str(tmp_path / "forced.pt"), "-n", "2", "-o", str(out),
                     "--min-mask-voxels", "10", "--max-tries", "1"]) == 0
    meta = json.loads((out / "samples.json").read_text())
    assert meta["written"] == 2 and all(p["mask_pixels"] == 32 * 32 for p in meta["pairs"])
    assert np.asarray(nib.load(out / "gen_0000_seg.nii.gz").dataobj).min() == 1


def test_checkpoint_from_before_the_ema_loads_samples_and_resumes(tmp_path, slices):
    torch.manual_seed(0)
    _run(tmp_path / "new", slices, 2, **TINY)
    ckpt = load_checkpoint(tmp_path / "new" / "last.pt")
    # rewrite it as the previous version wrote it: no EMA weights, no later settings, no EMA/PL counters
    old = dict(ckpt)
    old_task = dict(ckpt["task"])
    old_task["model"] = {k: v for k, v in old_task["model"].items() if not k.startswith("generator_ema.")}
    old_task["model_config"] = {k: v for k, v in old_task["model_config"].items()
                                if k not in ("pl_weight", "pl_every", "ema_kimg", "ema_rampup", "mask_area_weight")}
    for k in ("images_seen", "pl_mean", "last_r1", "last_pl"):
        old_task.pop(k)
    old["task"] = old_task
    old["config"] = {"task": "stylegan2", **old_task["model_config"]}
    os.makedirs(tmp_path / "old")
    torch.save(old, tmp_path / "old" / "last.pt")
    model = GENERATORS["stylegan2"].load(tmp_path / "old" / "last.pt")
    assert model.generator_ema is None and model.cfg.ema_kimg == 0
    g = lambda: torch.Generator().manual_seed(1)
    # its samples are those of the trained weights
    raw = StyleGAN2(StyleGAN2Config(**{**old_task["model_config"], "ema_kimg": 0.0}))
    raw.condition_bank = model.condition_bank.clone()
    raw.load_state_dict(old_task["model"])
    torch.testing.assert_close(model.sample(2, generator=g()), raw.eval().sample(2, generator=g()), rtol=0, atol=0)
    # resuming it with today's defaults: the average starts at the checkpoint's weights
    probe, _, _ = make_training(slices=slices, size=32, steps=3, steps_per_epoch=2, batch_size=4, **TINY)
    probe.load_state_dict(old_task)
    for a, b in zip(probe.model.generator.parameters(), probe.model.generator_ema.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert probe.images_seen == 2 * 4 and probe.pl_mean["generator"] == 0.0
    resumed, batches, kw = make_training(slices=slices, size=32, steps=3, out=tmp_path / "old", resume=True,
                                         steps_per_epoch=2, batch_size=4, **TINY)
    recs = list(run_training(resumed, batches, **kw))
    assert [r.step for r in recs if r.phase == "train"] == [3]
    assert resumed.model.generator_ema is not None
