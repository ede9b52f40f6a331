"""Conditional StyleGAN2 (seed 003): modulated convs, the three variants on real slices, lazy R1,
checkpoints (CPU, tiny widths, 32x32)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from laugen_napari.models.dhvae import count_parameters
from laugen_napari.models.stylegan2 import (ModulatedConv, StyleGAN2, StyleGAN2Config, build_stylegan2,
                                            mask_probabilities)
from laugen_napari.training.dhvae import slices_from_folder
from laugen_napari.training.generators import GENERATORS
from laugen_napari.training.loop import run_training
from laugen_napari.training.stylegan2 import load_generator, make_training

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
TINY = dict(channel_base=128, max_channels=16, z_dim=16, w_dim=16, mapping_layers=2)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def slices2():
    """Slices of the sample with its two ventricle labels kept apart (3 channels: image + 2 labels)."""
    return slices_from_folder(SAMPLE, 32, separate_labels=True)


def test_modulated_conv_equals_per_sample_convolution_and_is_demodulated():
    torch.manual_seed(0)
    conv = ModulatedConv(5, 7, 3, w_dim=6)
    x, w = torch.randn(3, 5, 9, 9), torch.randn(3, 6)
    out = conv(x, w)
    for b in range(3):
        style = conv.affine(w[b : b + 1]).view(1, 5, 1, 1)
        weight = conv.scale * conv.weight[0] * style
        weight = weight / weight.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
        torch.testing.assert_close(out[b : b + 1], F.conv2d(x[b : b + 1], weight, padding=1), rtol=1e-4, atol=1e-5)
    # demodulation: unit-variance input gives about unit-variance output whatever the style's scale
    big = ModulatedConv(64, 64, 3, w_dim=4)
    y1 = big(torch.randn(4, 64, 16, 16), torch.randn(4, 4))
    y2 = big(torch.randn(4, 64, 16, 16), 100 * torch.randn(4, 4))
    assert 0.7 < float(y1[..., 1:-1, 1:-1].std()) < 1.3 and 0.7 < float(y2[..., 1:-1, 1:-1].std()) < 1.3


def test_mask_probabilities_is_a_softmax_with_background_zero():
    logits = torch.tensor([[[[2.0]], [[-1.0]]]])
    p = mask_probabilities(logits)
    e = torch.exp(torch.tensor([0.0, 2.0, -1.0]))
    torch.testing.assert_close(p.flatten(), (e / e.sum())[1:])
    torch.testing.assert_close(mask_probabilities(torch.tensor([[[[0.3]]]])).flatten(), torch.sigmoid(torch.tensor([0.3])))


@pytest.mark.parametrize("variant", ["baseline", "mask-only", "conditional"])
def test_variant_trains_on_real_slices_and_samples_pairs(slices2, variant):
    torch.manual_seed(0)
    task, batches, _ = make_training(slices=slices2, size=32, steps=4, variant=variant, steps_per_epoch=4, batch_size=4,
                                     r1_every=2, **TINY)
    m = task.model
    assert (m.mask_generator is not None) == (variant == "mask-only") and (m.cond > 0) == (variant == "conditional")
    before = [p.detach().clone() for p in m.generator_parameters()]
    r1_seen = []
    for batch in batches(0):
        v = task.train_step(batch)
        assert all(torch.isfinite(torch.tensor(val)) for val in v.values())
        r1_seen.append(v["r1"])
    assert r1_seen[0] > 0 and r1_seen[1] == r1_seen[0] and r1_seen[2] != r1_seen[1]  # lazy: steps 0 and 2 only
    assert any(not torch.equal(a, b) for a, b in zip(before, m.generator_parameters()))
    m.eval()
    s = m.sample(5, generator=torch.Generator().manual_seed(3))
    assert s.shape == (5, 3, 32, 32) and s.min() >= 0 and s.max() <= 1
    assert float(s[:, 1:].sum(1).max()) <= 1 + 1e-5  # label probabilities of one softmax
    torch.testing.assert_close(s, m.sample(5, generator=torch.Generator().manual_seed(3)), rtol=0, atol=0)
    vals = task.validate()
    assert 0 <= vals["jsd"] <= 1 and 0 <= vals["msssim_pairwise"] <= 1 and vals["loss"] > 0


def test_conditional_generator_follows_its_condition(slices2):
    torch.manual_seed(0)
    m = StyleGAN2(StyleGAN2Config(size=32, mask_channels=2, cond_dim=3, **TINY)).eval()
    a = m.sample(2, generator=torch.Generator().manual_seed(1), condition=torch.tensor([0.1, 0.0, 0.0]))
    b = m.sample(2, generator=torch.Generator().manual_seed(1), condition=torch.tensor([0.9, 0.3, 0.3]))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no training conditions"):
        m.sample(2)  # nothing stored and nothing given
    with pytest.raises(ValueError, match="conditional"):
        m.generator(torch.randn(2, 16))


def test_checkpoint_roundtrip_resume_and_picklable_factory(tmp_path, slices2):
    spec = GENERATORS["stylegan2"]
    pickle.loads(pickle.dumps(spec.make_training))  # TrainingProcess needs this
    task, batches, kw = spec.make_training(slices=slices2, size=32, steps=2, out=tmp_path / "run", steps_per_epoch=2,
                                           batch_size=4, **TINY)
    recs = list(run_training(task, batches, **kw))
    assert [r.phase for r in recs].count("val") == 1 and (tmp_path / "run" / "best.pt").is_file()
    loaded = spec.load(tmp_path / "run" / "last.pt")
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    torch.testing.assert_close(loaded.sample(4, generator=g()), task.model.eval().sample(4, generator=g()), rtol=0, atol=0)
    assert loaded.condition_bank.shape == (len(task.train_x), 3)
    task2, batches2, kw2 = spec.make_training(slices=slices2, size=32, steps=3, out=tmp_path / "run", steps_per_epoch=2,
                                              batch_size=4, resume=True, **TINY)
    assert [r.step for r in run_training(task2, batches2, **kw2) if r.phase == "train"] == [3]
    with pytest.raises(ValueError, match="not a StyleGAN2 checkpoint"):
        from laugen_napari.training.dhvae import make_training as dhvae_training

        t3, b3, k3 = dhvae_training(slices=slices2, size=32, steps=1, out=tmp_path / "vae", model="vae",
                                    widths=(8, 16, 16), latent_channels=2, groups=4)
        list(run_training(t3, b3, **k3))
        load_generator(tmp_path / "vae" / "last.pt")


def test_presets_and_bad_settings():
    assert 800_000 < count_parameters(build_stylegan2("cpu").generator) < 3_000_000
    paper = StyleGAN2Config(**{**dict(size=256, z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384,
                                      max_channels=512), "variant": "baseline"})
    assert paper.channels(4) == 512 and paper.channels(256) == 64 and len(paper.resolutions) == 7
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(size=48)
    with pytest.raises(ValueError, match="variant"):
        StyleGAN2Config(variant="pix2pix")
    with pytest.raises(ValueError, match="preset"):
        build_stylegan2("huge")
