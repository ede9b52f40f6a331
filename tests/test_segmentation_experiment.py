"""`laugen experiment segmentation`: folds by subject (or contiguous Z blocks), real vs generated
vs LAUGEN conditions on the shipped sample, CSV and plot (CPU, 32x32, a few U-Net steps)."""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from laugen_napari.cli.experiment_segmentation import add_parser
from laugen_napari.training.dhvae import SliceSet, slices_from_folder
from laugen_napari.training.generators import GENERATORS
from laugen_napari.training.loop import run_training
from laugen_napari.training.segmentation_experiment import evaluate, make_folds, run_segmentation_experiment, train_unet

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"

torch.set_num_threads(1)


def _fake(sources, zs):
    n = len(sources)
    z = np.zeros(n)
    return SliceSet(np.zeros((n, 4, 4), np.float32), np.zeros((n, 4, 4), np.uint8), np.array(zs), np.array(sources), z, z,
                    [f"s{i}" for i in range(max(sources) + 1)])


def test_folds_keep_subjects_apart_or_cut_contiguous_blocks():
    s = _fake([0, 0, 1, 1, 2, 2, 3, 3], [5, 6, 5, 6, 5, 6, 5, 6])
    folds, rule = make_folds(s, 2)
    assert rule.startswith("by subject")
    assert sorted(np.concatenate(folds).tolist()) == list(range(8))
    assert not set(s.source[folds[0]]) & set(s.source[folds[1]])
    one = _fake([0] * 9, [9, 3, 4, 5, 6, 7, 8, 10, 11])
    folds, rule = make_folds(one, 3)
    assert rule.startswith("contiguous")
    blocks = [sorted(one.slice_index[f].tolist()) for f in folds]
    assert blocks == [[3, 4, 5], [6, 7, 8], [9, 10, 11]]
    with pytest.raises(ValueError, match="cannot form"):
        make_folds(_fake([0, 0], [1, 2]), 3)


def test_unet_learns_the_ventricles():
    s = slices_from_folder(SAMPLE, 32)
    x, y = s.images[:, None], s.masks
    net = train_unet(x, y, 2, steps=60, batch_size=8, seed=0)
    untrained = train_unet(x, y, 2, steps=1, seed=0)
    assert evaluate(net, x, y, 1)[1] > evaluate(untrained, x, y, 1)[1] + 0.1


def test_experiment_runs_every_condition_and_writes_csv_and_plot(tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    os.symlink(SAMPLE / "mni152_t1.nii.gz", data / "mni.nii.gz")
    os.symlink(SAMPLE / "mni152_ventricles_seg.nii.gz", data / "mni_seg.nii.gz")
    task, batches, kw = GENERATORS["vae"].make_training(data, size=32, steps=1, out=tmp_path / "gen", separate_labels=True,
                                                        widths=(8, 16, 16), latent_channels=2, groups=4)
    list(run_training(task, batches, **kw))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["segmentation", "--pairs", str(data), "--size", "32", "--separate-labels", "--folds", "2",
                              "--synthetic", "0", "4", "--generator-checkpoint", str(tmp_path / "gen" / "last.pt"),
                              "--min-mask-voxels", "0", "--laugen-frames", "2", "--slope-range", "1", "1",
                              "--unet-steps", "2", "--out", str(tmp_path / "exp"), "-q"])
    assert args.func(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "exp" / "segmentation_folds.csv")))
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    assert conds == ["real", "real + 4 vae", "real + LAUGEN (1 frames/subject)"]
    assert len(rows) == 3 * 2 * 2  # conditions x folds x labels
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    laugen = [r for r in rows if r["kind"] == "laugen"]
    assert all(int(r["n_synthetic"]) > 0 for r in laugen) and rows[0]["folds_rule"].startswith("contiguous")
    summary = list(csv.DictReader(open(tmp_path / "exp" / "segmentation_summary.csv")))
    assert len(summary) == 3 * 2 and (tmp_path / "exp" / "segmentation_dice.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="need a generator"):
        run_segmentation_experiment([data], tmp_path / "bad", size=32, synthetic=(0, 8), folds=2, unet_steps=1)
