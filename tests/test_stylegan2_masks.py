"""StyleGAN2 mask-area term (against the collapse to empty masks of a small structure): its value
against hand numbers, its direction, and its use in a training step (CPU, tiny widths, 32x32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from laugen_napari.models.stylegan2 import StyleGAN2Config
from laugen_napari.training.dhvae import slices_from_folder
from laugen_napari.training.stylegan2 import make_training, mask_area_loss

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
TINY = {"channel_base": 128, "max_channels": 16, "z_dim": 16, "w_dim": 16, "mapping_layers": 2}

torch.set_num_threads(1)


def _mask(fraction_pixels: int, side: int = 10) -> torch.Tensor:
    m = -torch.ones(1, 1, side, side)
    m.view(-1)[:fraction_pixels] = 1.0
    return m


def test_mask_area_loss_values_and_direction():
    empty, quarter = _mask(0), _mask(25)  # area 0 and 0.25 of a 10x10 slice
    # conditional: per sample against the condition's sqrt area (position first)
    cond = torch.tensor([[0.3, 0.5]])
    assert float(mask_area_loss(quarter, empty, cond)) == pytest.approx(abs((0.25 + 1e-4) ** 0.5 - 0.5), abs=1e-6)
    assert float(mask_area_loss(empty, empty, cond)) == pytest.approx(0.5 - 0.01, abs=1e-6)
    # unconditional: batch means of generated vs real sqrt areas
    fake = torch.cat([empty, quarter])
    real = torch.cat([quarter, quarter])
    assert float(mask_area_loss(fake, real)) == pytest.approx(0.5 - (0.01 + (0.25 + 1e-4) ** 0.5) / 2, abs=1e-6)
    # a faint mask (probability 0.3 everywhere) wins no pixel: it counts as empty, not as 30 %
    faint = torch.full((1, 1, 10, 10), 0.3) * 2 - 1
    assert float(mask_area_loss(faint, empty, cond)) == pytest.approx(0.5 - 0.01, abs=1e-6)
    # gradient descent on an empty mask grows it, mostly where the label is closest to winning
    logits = torch.full((1, 1, 10, 10), -3.0)
    logits[0, 0, 4, 4] = -0.4
    logits.requires_grad_(True)
    mask_area_loss(torch.sigmoid(logits) * 2 - 1, real[:1], cond).backward()
    assert (logits.grad < 0).all()
    assert float(logits.grad[0, 0, 4, 4]) < 20 * float(logits.grad[0, 0, 0, 0])
    with pytest.raises(ValueError, match="mask_area_weight"):
        StyleGAN2Config(mask_area_weight=-1.0)


@pytest.mark.parametrize("variant", ["conditional", "mask-only"])
def test_mask_area_term_in_training_steps(variant):
    slices = slices_from_folder(SAMPLE, 32)
    torch.manual_seed(0)
    task, batches, _ = make_training(slices=slices, size=32, steps=2, variant=variant, steps_per_epoch=2, batch_size=4,
                                     mask_area_weight=10.0, **TINY)
    vals = [task.train_step(b) for b in batches(0)]
    assert all(0 < v["mask_area"] < 1 for v in vals)
    assert task.config()["mask_area_weight"] == 10.0
    off, b0, _ = make_training(slices=slices, size=32, steps=1, variant=variant, steps_per_epoch=1, batch_size=4,
                               mask_area_weight=0.0, **TINY)
    assert "mask_area" not in off.train_step(next(iter(b0(0))))
    assert "mask_area_weight" not in off.config()  # the default: runs from before the term resume


def test_cli_defaults_to_the_mask_area_term_and_old_runs_resume_only_as_they_were(tmp_path, capsys):
    """`laugen train stylegan2` records mask_area_weight 10 by default; a run without the key (0,
    the seed's objective) is not resumed with the term silently: the message names the setting,
    and --mask-area-weight 0 resumes it."""
    from laugen_napari.cli import main
    from laugen_napari.training.loop import load_checkpoint

    common = ["train", "stylegan2", "--pairs", str(SAMPLE), "--size", "32", "--batch-size", "2",
              "--steps-per-epoch", "1", "--threads", "1"]
    assert main([*common, "--steps", "1", "--out", str(tmp_path / "new")]) == 0
    assert load_checkpoint(tmp_path / "new" / "last.pt")["config"]["mask_area_weight"] == 10.0
    assert main([*common, "--steps", "1", "--mask-area-weight", "0", "--out", str(tmp_path / "old")]) == 0
    assert "mask_area_weight" not in load_checkpoint(tmp_path / "old" / "last.pt")["config"]
    capsys.readouterr()
    assert main([*common, "--steps", "2", "--resume", "--out", str(tmp_path / "old")]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "mask_area_weight" in err
    assert main([*common, "--steps", "2", "--resume", "--mask-area-weight", "0", "--out", str(tmp_path / "old")]) == 0
    assert load_checkpoint(tmp_path / "old" / "last.pt")["step"] == 2
