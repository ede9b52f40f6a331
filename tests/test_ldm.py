"""Conditional slice LDM (seed 004): latent aggregation, samplers against an oracle, descriptors,
three-stage training on the sample volume, checkpoints (CPU, tiny widths, 32x32, 16 slices)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from laugen_napari.models.ldm import LDMConfig, SliceLDM, structure_descriptors
from laugen_napari.training.generators import GENERATORS
from laugen_napari.training.ldm import draw_volume, volumes_from_arrays, volumes_from_folder
from laugen_napari.training.loop import run_training

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
TINY = dict(ae_widths=(8, 16, 16, 16), agg_widths=(8, 16), unet_widths=(16, 32))

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def volumes():
    return volumes_from_folder(SAMPLE, 32, separate_labels=True)


def tiny_model(**kw) -> SliceLDM:
    torch.manual_seed(0)
    return SliceLDM(LDMConfig(size=32, mask_channels=2, **TINY, **kw))


def test_canvas_layout_and_round_trip():
    m = tiny_model()
    z = torch.randn(2, 16, 4, 4, 4)
    canvas = m.agg.to_canvas(z)
    assert canvas.shape == (2, 4, 16, 16)
    torch.testing.assert_close(canvas[:, :, 4:8, 8:12], z[:, 1 * 4 + 2])  # slice 6 at grid row 1, column 2
    torch.testing.assert_close(m.agg.from_canvas(canvas), z)


def test_schedule_is_scaled_linear():
    m = tiny_model()
    ac = m.alphas_cumprod.double()
    betas = 1 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    assert betas[0] == pytest.approx(0.0015, rel=1e-3) and betas[-1] == pytest.approx(0.0195, rel=1e-3)
    assert torch.all(betas.sqrt().diff() > 0) and torch.allclose(betas.sqrt().diff(), betas.sqrt().diff().mean(), rtol=3e-2)


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_samplers_recover_x0_with_an_oracle_noise_predictor(method):
    m = tiny_model(timesteps=100).eval()
    x0 = torch.randn(3, 4, m.cfg.agg_side, m.cfg.agg_side)

    class Oracle(torch.nn.Module):
        def forward(self, x, t, cond):  # the exact noise of x_t for this x0
            a = m.alphas_cumprod[t].view(-1, 1, 1, 1)
            return (x - a.sqrt() * x0) / (1 - a).sqrt()

    m.unet = Oracle()
    out = m.sample_latents(torch.zeros(3, 9), torch.Generator().manual_seed(0), steps=10, method=method)
    torch.testing.assert_close(out, x0, rtol=1e-3, atol=1e-3)


def test_structure_descriptors_of_a_box_and_a_ball():
    box = np.zeros((16, 32, 32), np.uint8)
    box[4:8, 10:20, 0:4] = 1  # touches the image edge in x
    d = structure_descriptors(box)
    assert d[0] == pytest.approx(10 * 4 * 10 * 4 / box.size)
    np.testing.assert_allclose(d[3:6], [5.5 / 15, 14.5 / 31, 1.5 / 31], rtol=1e-6)
    np.testing.assert_allclose(d[6:9], [4 / 16, 10 / 32, 4 / 32], rtol=1e-6)
    zz, yy, xx = np.mgrid[:16, :32, :32]
    ball = ((zz - 8) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= 36).astype(np.uint8)
    plate = np.zeros_like(ball)
    plate[8, 4:28, 4:28] = 1
    assert structure_descriptors(ball)[2] > 0.9 and structure_descriptors(plate)[2] < 0.65
    assert not structure_descriptors(np.zeros((4, 4, 4))).any()


def test_volumes_keep_the_structure_range_with_margins(volumes):
    img, msk = volumes.images[0], volumes.masks[0]
    assert img.shape[0] == 1 and img.shape[1:] == msk.shape and volumes.n_labels == 2
    c0, c1 = volumes.core[0]
    assert c0 > 0 and c1 < msk.shape[0] - 1  # margins on both sides
    assert msk[c0:c1 + 1].any(1).any(1).mean() >= 0.75 and not msk[: c0].any() and not msk[c1 + 1:].any()
    assert set(np.unique(msk)) == {0, 1, 2}
    x, cond = draw_volume(volumes, 0, 16, None)
    assert x.shape == (3, 16, 32, 32) and x.min() >= -1 and x.max() <= 1 and cond.shape == (9,)
    # a structure cut by the first slice: no margin below, still a volume
    lab = np.zeros((20, 24, 24), np.int16)
    lab[0:5, 8:16, 8:16] = 3
    vs = volumes_from_arrays(np.random.default_rng(0).random((20, 24, 24)), lab, 32)
    assert vs.core == [(0, 4)] and vs.masks[0].shape[0] == 6
    with pytest.raises(ValueError, match="no structure"):
        volumes_from_arrays(np.zeros((4, 8, 8)), np.zeros((4, 8, 8)), 32)


def test_three_stages_train_checkpoint_and_generate_volumes(tmp_path, volumes):
    spec = GENERATORS["ldm"]
    task, batches, kw = spec.make_training(volumes=volumes, size=32, steps=6, stage_steps=(2, 2), out=tmp_path / "run",
                                           steps_per_epoch=3, batch_size=2, **TINY)
    recs = list(run_training(task, batches, **kw))
    stages = [r.values["stage"] for r in recs if r.phase == "train"]
    assert stages == [1, 1, 2, 2, 3, 3]
    val = [r.values for r in recs if r.phase == "val"]
    assert "msssim_pairwise" in val[-1] and "jsd" in val[-1]  # sample measures once the diffusion trains
    assert float(task.model.latent_scale) != 1.0
    loaded = spec.load(tmp_path / "run" / "last.pt")
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    v = loaded.sample_volumes(2, generator=g(), steps=4)
    assert v.shape == (2, 3, 16, 32, 32) and v.min() >= 0 and v.max() <= 1
    torch.testing.assert_close(v, task.model.eval().sample_volumes(2, generator=g(), steps=4), rtol=0, atol=0)
    s = spec.sample(loaded, 20, g())
    assert s.shape == (20, 3, 32, 32)
    # user-given descriptors steer the volume (same noise, other condition)
    c = loaded.condition_bank[0].clone()
    w = loaded.sample_volumes(1, generator=g(), condition=(c + 0.5).numpy(), steps=4)
    assert (w - loaded.sample_volumes(1, generator=g(), condition=c.numpy(), steps=4)).abs().max() > 1e-4
    # slice position matters inside the slice decoder
    z = torch.randn(1, 4, 4, 4)
    assert (loaded.ae.decode(z, torch.tensor([0])) - loaded.ae.decode(z, torch.tensor([9]))).abs().max() > 1e-4


def test_bad_settings():
    with pytest.raises(ValueError, match="square number"):
        LDMConfig(depth=12)
    with pytest.raises(ValueError, match="whole volumes"):
        GENERATORS["ldm"].make_training(None, size=32, steps=2)
    assert math.isqrt(LDMConfig().depth) ** 2 == LDMConfig().depth
