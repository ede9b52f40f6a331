"""The paper's experiments as the paper ran them: patients as data points, a fixed validation split,
exact expected mixing fractions, labels/kind/trajectory in the data options, 3D-then-slice series,
OneCycle, fine-tuning with --init, the sweep and pre-training commands."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
from scipy import ndimage

from laugen_napari.cli import main
from laugen_napari.core import Augmenter, TrajectoryDraw, make_kind
from laugen_napari.settings import GenerationSettings
from laugen_napari.testing.acdc import build_acdc_folder, sample_pair
from laugen_napari.training.datasets import (
    SliceSpec, SyntheticSequences, SyntheticSource, build_data, read_volume, scan_acdc)
from laugen_napari.training.loop import load_checkpoint
from laugen_napari.training.simvp import build_task, train_simvp

torch.set_num_threads(1)
T1, SEG = sample_pair()


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    """Eight MNI-derived patients in ACDC layout (small grid, 10 frames)."""
    root = tmp_path_factory.mktemp("acdc")
    build_acdc_folder(root, patients=8, frames=10, shape=(6, 32, 32), seed=1)
    return root


@pytest.fixture(scope="module")
def mni():
    img, sp = read_volume(T1)
    lab, _ = read_volume(SEG)
    return SyntheticSource(img, np.rint(lab).astype(np.int32), sp, name="mni")


def test_acdc_folder_has_the_acdc_layout(acdc):
    patients = scan_acdc(acdc)
    assert [p.name for p in patients] == [f"patient{k:03d}" for k in range(1, 9)]
    p = patients[0]
    info = (acdc / p.name / "Info.cfg").read_text()
    assert "ED: 1" in info and p.ed_image.name == "patient001_frame01.nii.gz"
    series, spacing = read_volume(p.four_d)
    ed, _ = read_volume(p.ed_image)
    gt, _ = read_volume(p.ed_labels)
    assert series.shape == (10, 6, 32, 32) and spacing == pytest.approx((4.0, 1.6, 1.6))
    assert np.array_equal(series[0], ed) and set(np.unique(gt)) == {0, 1, 2}
    # the frames move: the cine is not a still image, and patients differ
    assert np.abs(series[5] - series[0]).mean() > np.abs(series[1] - series[0]).mean() > 0
    other, _ = read_volume(patients[1].four_d)
    assert np.abs(other[0] - series[0]).mean() > 5


def test_sizes_subset_patients_nested_with_fixed_validation(acdc):
    common = dict(acdc=acdc, context=4, target=4, val_fraction=0.25, kinds=("uniform",))
    full = build_data(**common, mix=0.1, seed=0)
    val = full.info["val_groups"]
    assert len(val) == 2 and full.info["train_pool"] == 6
    for seed in (0, 1, 2):
        subsets = [build_data(**common, mix=0.1, seed=seed, train_size=n) for n in (1, 3, 6)]
        names = [b.info["train_groups"] for b in subsets]
        assert [len(n) for n in names] == [1, 3, 6]
        assert set(names[0]) <= set(names[1]) <= set(names[2])  # nested for one repeat
        for b in subsets:
            assert b.info["val_groups"] == val  # the same validation patients for every size and seed
            assert np.array_equal(b.val, full.val)
            assert not set(b.info["train_groups"]) & set(val)
            # synthetic series only from the chosen patients' ED frames
            assert [Path(s).parent.name for s in b.info["synthetic_sources"]] == b.info["train_groups"]
            assert b.train.synthetic is not None and len(b.train.synthetic.sources) == len(b.info["train_groups"])
        one = subsets[0]
        per_patient = full.info["real_train_sequences"] // 6
        assert one.info["real_train_sequences"] == pytest.approx(per_patient, rel=0.5)
    # different seeds choose different single patients (not always the same one)
    singles = {build_data(**common, mix=0.0, seed=s, train_size=1).info["train_groups"][0] for s in range(6)}
    assert len(singles) > 1
    with pytest.raises(ValueError, match="size 7 exceeds the 6 training"):
        build_data(**common, mix=0.0, train_size=7)


def test_labels_choose_the_structure_that_moves(mni):
    """With --labels 1 the change lies around the left ventricle, with 2 around the right one."""
    lab = mni.labels
    d1 = ndimage.distance_transform_edt(lab != 1)
    d2 = ndimage.distance_transform_edt(lab != 2)
    for label, near, far in ((1, d1, d2), (2, d2, d1)):
        syn = SyntheticSequences([mni], 4, SliceSpec(axis=0), kinds=("uniform",), geometry="3d",
                                 settings=GenerationSettings(labels=(label,), slope_range=(1.5, 1.5), sigma_mm=1.5))
        moved_near = moved_far = 0
        for index in range(4):
            d = syn.draw(index)
            plane = d["plane"]
            change = np.abs(d["images"][-1] - d["images"][0]) > 1
            moved_near += int((change & (near[plane] < far[plane])).sum())
            moved_far += int((change & (far[plane] < near[plane])).sum())
            assert np.any(lab[plane] == label)  # planes are chosen where the driving label is
        assert moved_near > 20 * max(moved_far, 1), (label, moved_near, moved_far)
    with pytest.raises(ValueError, match=r"label\(s\) \[7\] not in the mask"):
        SyntheticSequences([mni], 4, settings=GenerationSettings(labels=(7,)))


def test_3d_then_slice_is_the_plane_of_the_3d_series_and_keeps_through_plane_motion(mni):
    spec = SliceSpec(axis=0, crop=(48, 48))
    settings = GenerationSettings(slope_range=(1.0, 1.0), sigma_mm=3.0)
    s3 = SyntheticSequences([mni], 5, spec, kinds=("uniform",), geometry="3d", settings=settings, seed=2)
    s2 = SyntheticSequences([mni], 5, spec, kinds=("uniform",), geometry="2d", settings=settings, seed=2)
    aug = Augmenter(mni.image, mni.labels, mni.spacing, sigma_mm=3.0, kind=make_kind("uniform"), device="cpu")
    field = aug.field.dense()  # (3, Z, Y, X) mm, largest length 1
    peak_in_plane, shares = [], []
    for index in range(6):
        a, b = s3.draw(index), s2.draw(index)
        assert a["plane"] == b["plane"] and np.array_equal(a["z_mm"], b["z_mm"])
        i = a["plane"]
        full = aug.series_from_values(TrajectoryDraw("linear", a["z_mm"], {})).images[:, i]
        box = spec.crop_box(full.shape[-2:], spec.plane(mni.labels, i) != 0)
        assert np.allclose(a["images"], spec.cut(full, box), atol=1e-4)  # literally the slice of the 3D series
        assert np.array_equal(a["images"][0], b["images"][0])  # same plane, same crop, frame 0 = input
        assert not np.allclose(a["images"][-1], b["images"][-1], atol=1.0)  # and a different motion
        f = field[:, i]
        total = np.linalg.norm(f, axis=0)
        in_plane = np.linalg.norm(f[1:], axis=0)
        peak_in_plane.append(in_plane.max())
        moving = total > 0.1
        shares.append(np.median(in_plane[moving] / total[moving]))
    # a per-plane field moves each plane by the full z_t in-plane (its own peak is 1 mm per mm of z);
    # in 3D the through-plane part is kept: in-plane share below 1, plane peaks at most the volume's
    plane = mni.labels[s2.draw(0)["plane"]][None]
    flat = Augmenter(mni.image[s2.draw(0)["plane"]][None], plane, mni.spacing, sigma_mm=3.0, device="cpu").field.dense()
    assert abs(flat[0]).max() == 0 and np.linalg.norm(flat, axis=0).max() == pytest.approx(1.0)
    assert max(peak_in_plane) <= 1.0 + 1e-6 and np.median(shares) < 0.95, (peak_in_plane, shares)


def test_onecycle_schedule_and_realised_fraction(acdc, tmp_path):
    bundle = build_data(acdc=acdc, context=4, target=4, val_fraction=0.25, mix=0.1, length=20, seed=0,
                        kinds=("uniform",))
    recs = list(train_simvp(bundle, tmp_path / "run", steps=12, batch_size=4, lr=1e-2, size=dict(hid_S=8, hid_T=16)))
    lrs = [r.values["lr"] for r in recs if r.phase == "train"]
    assert len(lrs) == 12
    assert lrs[0] == pytest.approx(1e-2 / 25, rel=1e-6)  # OneCycle starts at max_lr / 25
    peak = int(np.argmax(lrs))
    assert 0 < peak < 11 and lrs[peak] == pytest.approx(1e-2, rel=0.1)
    assert lrs[-1] < lrs[0] and all(np.diff(lrs[peak:]) < 0)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    tr = report["training"]
    assert tr["steps"] == 12 and tr["samples_seen"] == 48 and tr["schedule"] == "onecycle"
    # 48 samples at an expected 0.1 in 20-sample epochs: 4.8 expected, within one sample
    assert abs(tr["synthetic_seen"] - 4.8) < 1.0 and tr["synthetic_fraction"] == tr["synthetic_seen"] / 48
    assert set(report["model"]) >= {"rmse", "psnr", "openstl_mse", "openstl_psnr"}
    constant = list(train_simvp(bundle, tmp_path / "const", steps=4, batch_size=4, lr=1e-2, schedule="constant",
                                size=dict(hid_S=8, hid_T=16)))
    assert {r.values["lr"] for r in constant if r.phase == "train"} == {1e-2}


def test_init_fine_tunes_from_a_pretrained_checkpoint(acdc, tmp_path):
    base = ["train", "simvp", "--real-acdc", str(acdc), "--val-fraction", "0.25", "--kinds", "uniform",
            "--hid-s", "8", "--hid-t", "16", "--batch-size", "4", "--threads", "1"]
    assert main(base + ["--mix", "1", "--steps", "3", "--length", "12", "--out", str(tmp_path / "pre")]) == 0
    pre = load_checkpoint(tmp_path / "pre" / "last.pt")
    # the fine-tuning run starts from exactly the pre-trained weights and normalisation
    bundle = build_data(acdc=acdc, context=4, target=4, val_fraction=0.25, mix=0.0, seed=0)
    task = build_task(bundle, size=dict(hid_S=8, hid_T=16), schedule="constant")
    norm = task.init_from(tmp_path / "pre" / "last.pt")
    assert norm == pre["task"]["normalizer"]
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, pre["task"]["model"][k]), k
    assert main(base + ["--mix", "0", "--steps", "2", "--init", str(tmp_path / "pre" / "last.pt"),
                        "--out", str(tmp_path / "ft")]) == 0
    report = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert report["training"]["init"].endswith("last.pt") and report["training"]["steps"] == 2
    assert report["data"]["normalizer"] == pre["task"]["normalizer"]
    # another architecture is a one-line error (exit 2), nothing written
    assert main(base[:-6] + ["--hid-s", "16", "--hid-t", "16", "--batch-size", "4", "--threads", "1", "--mix", "0",
                             "--steps", "2", "--init", str(tmp_path / "pre" / "last.pt"),
                             "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad" / "last.pt").exists()
    assert main(base + ["--steps", "2", "--init", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "x")]) == 2


def test_sizes_sweep_same_steps_for_every_size(acdc, tmp_path):
    out = tmp_path / "exp"
    argv = ["experiment", "sizes", "--sizes", "1,3", "--repeats", "2", "--steps", "3", "--mix", "0,0.1",
            "--real-acdc", str(acdc), "--val-fraction", "0.25", "--kinds", "uniform", "--hid-s", "8", "--hid-t", "16",
            "--batch-size", "4", "--seed", "5", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "sizes" / "results.csv")))
    assert [(r["value"], r["mix"], r["repeat"], r["seed"]) for r in rows] == [
        (v, m, rep, seed) for v in ("1.0", "3.0") for m in ("0.0", "0.1") for rep, seed in (("0", "5"), ("1", "6"))]
    assert {r["steps"] for r in rows} == {"3"} and len({r["samples_per_epoch"] for r in rows}) == 1
    assert [int(r["train_patients"]) for r in rows] == [1] * 4 + [3] * 4
    assert len({r["val_groups"] for r in rows}) == 1
    # with and without augmentation, a size and repeat train on the same patients
    for v in ("1.0", "3.0"):
        for rep in ("0", "1"):
            assert len({r["train_groups"] for r in rows if r["value"] == v and r["repeat"] == rep}) == 1
    for r in rows:
        assert float(r["baseline_rmse"]) > 0 and float(r["openstl_mse"]) > 0
        assert float(r["expected_fraction"]) == float(r["mix"])
        assert float(r["realised_fraction"]) == 0.0 if r["mix"] == "0.0" else 0 <= float(r["realised_fraction"]) < 0.5
    assert (out / "sizes" / "3" / "mix0.1" / "rep1" / "report.json").is_file()
    assert (out / "sizes" / "sizes.png").stat().st_size > 10_000
    assert main(argv[:3] + ["1,9"] + argv[4:-1] + [str(tmp_path / "exp2")]) == 2  # more than 6 patients


def test_mixing_and_pretrain_experiments(acdc, tmp_path):
    common = ["--repeats", "1", "--steps", "3", "--real-acdc", str(acdc), "--val-fraction", "0.25", "--kinds", "uniform",
              "--hid-s", "8", "--hid-t", "16", "--batch-size", "4", "--threads", "1", "--length", "12"]
    assert main(["experiment", "mixing", "--ratios", "0,0.1", *common, "--out", str(tmp_path / "m")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "m" / "mixing" / "results.csv")))
    assert [float(r["expected_fraction"]) for r in rows] == [0.0, 0.1]
    assert float(rows[0]["realised_fraction"]) == 0.0
    assert abs(float(rows[1]["realised_fraction"]) * 12 - 1.2) < 1.0  # 12 samples seen, 1.2 expected
    assert main(["experiment", "pretrain", "--pretrain-steps", "2", *common, "--out", str(tmp_path / "p")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p" / "pretrain" / "results.csv")))
    assert [r["value"] for r in rows] == ["pretrained+finetuned", "real-only", "real-only-total-steps"]
    assert [r["steps"] for r in rows] == ["3", "3", "5"] and [r["pretrain_steps"] for r in rows] == ["2", "0", "0"]
    assert {r["realised_fraction"] for r in rows} == {"0.0"}
    ft = json.loads((tmp_path / "p" / "pretrain" / "pretrained+finetuned" / "rep0" / "report.json").read_text())
    real = json.loads((tmp_path / "p" / "pretrain" / "real-only" / "rep0" / "report.json").read_text())
    assert ft["data"]["normalizer"] == real["data"]["normalizer"]  # one normalisation for both arms
    assert ft["training"]["init"].endswith(os.path.join("pretrained", "rep0", "last.pt"))
    assert (tmp_path / "p" / "pretrain" / "pretrain.png").is_file()


def test_3d_synthetic_samples_are_the_same_in_dataloader_workers(mni):
    """Samples are functions of (seed, index): worker processes give the in-process values."""
    from laugen_napari.training.datasets import MixedSequences, Normalizer

    syn = SyntheticSequences([mni], 8, SliceSpec(crop=(32, 32)), geometry="3d", seed=4)
    ds = MixedSequences(None, syn, 1.0, Normalizer(0.0, 255.0), length=4, seed=4)
    direct = torch.stack([ds[i][0] for i in range(4)])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    via_workers = torch.cat([x for x, _ in loader])
    assert torch.equal(direct, via_workers)
    assert direct.shape == (4, 8, 1, 32, 32) and not torch.equal(direct[0], direct[1])
