"""segment/: region growing on the shipped sample, the SAM path with a tiny random SAM, propagation,
bad checkpoints and the ``laugen segment`` command."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from laugen_napari.cli import main as cli_main
from laugen_napari.io.nifti import load_volume
from laugen_napari.metrics import dice
from laugen_napari.segment import (Prompts, PropagationReport, RegionGrowingBackend, SegmentationCancelled,
                                   SlicePrompts, get_backend, propagate, propagate_from_prompts, segment,
                                   window_to_uint8)
from laugen_napari.segment import sam as sam_mod
from laugen_napari.segment.sam import SamBackend, build_tiny_sam, load_sam, read_checkpoint

from .conftest import SAMPLE_IMAGE, SAMPLE_MASK, tiny_sam_as_vit_b

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sample():
    image = load_volume(SAMPLE_IMAGE)
    labels = load_volume(SAMPLE_MASK)
    return image, np.asarray(image.data, dtype=np.float32), np.asarray(labels.data)


def interior_click(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel of ``mask`` farthest from its boundary (where a user would click)."""
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    dist = ndi.distance_transform_edt(mask[box])
    local = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return tuple(int(v + s.start) for v, s in zip(local, box))


@pytest.fixture()
def tiny_sam():
    return SamBackend(build_tiny_sam(seed=0), model_type="tiny")


def box_volume() -> np.ndarray:
    """A bright cuboid (slices 3..8 along Z) in a dark 12x40x48 volume."""
    vol = np.full((12, 40, 48), 10.0, dtype=np.float32)
    vol[3:9, 10:30, 12:36] = 200.0
    return vol


# --- fallback ------------------------------------------------------------------------------------

def test_one_click_on_the_sample_gives_dice_above_0_8(sample):
    _, data, labels = sample
    for value in (1, 2):
        truth = labels == value
        mask = segment(data, Prompts.create(positive=[interior_click(truth)]))
        assert mask.shape == data.shape and mask.dtype == bool
        score = dice(mask.astype(np.uint8), truth.astype(np.uint8), labels=[1])[1]
        assert score >= 0.8, f"label {value}: Dice {score:.3f}"


def test_negative_click_cuts_a_touching_blob_of_the_same_intensity():
    vol = np.zeros((20, 40, 60), dtype=np.float32)
    vol[5:15, 10:30, 5:28] = 100.0
    vol[5:15, 10:30, 32:55] = 100.0
    vol[8:12, 18:22, 28:32] = 100.0  # a bridge joins the two blocks
    no_neg = segment(vol, Prompts.create(positive=[(10, 20, 15)]))
    assert no_neg[10, 20, 45], "without a negative click the bridge joins both blocks"
    mask = segment(vol, Prompts.create(positive=[(10, 20, 15)], negative=[(10, 20, 45)]))
    assert mask[10, 20, 15] and not mask[:, :, 32:].any()
    assert mask[5:15, 10:30, 5:28].all()


def test_fallback_slice_with_a_box_stays_in_the_box():
    vol = box_volume()
    backend = RegionGrowingBackend()
    prompts = SlicePrompts(boxes=(np.array([12, 14, 25, 30]),))
    mask = backend.segment_slice(vol, 0, 5, prompts)
    assert mask.shape == (40, 48)
    assert mask[12:26, 14:31].all() and mask.sum() == 14 * 17


def test_click_outside_is_refused():
    with pytest.raises(ValueError, match="outside the image"):
        segment(box_volume(), Prompts.create(positive=[(3, 45, 10)]))
    with pytest.raises(ValueError, match="positive click or a box"):
        segment(box_volume(), Prompts.create(negative=[(3, 5, 10)]))


def test_window_to_uint8_maps_the_contrast_limits():
    out = window_to_uint8(np.array([-10.0, 0.0, 50.0, 100.0, 300.0]), (0.0, 100.0))
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 128, 255, 255]


# --- propagation ---------------------------------------------------------------------------------

def threshold_segmenter(vol: np.ndarray, axis: int):
    """An ideal 2D segmenter: the bright pixels inside the prompt box widened by 3 pixels."""
    calls = []

    def run(index: int, prompts: SlicePrompts) -> np.ndarray:
        calls.append(index)
        image = np.take(vol, index, axis=axis)
        out = np.zeros(image.shape, dtype=bool)
        r0, c0, r1, c1 = prompts.boxes[0]
        out[max(0, r0 - 3): r1 + 4, max(0, c0 - 3): c1 + 4] = True
        return out & (image > 100)

    return run, calls


@pytest.mark.parametrize("axis", [0, 2])
def test_propagation_follows_the_structure_and_stops_where_it_vanishes(axis):
    vol = box_volume()
    truth = vol > 100
    start = {0: 5, 2: 20}[axis]
    seed = np.take(truth, start, axis=axis)
    segmenter, calls = threshold_segmenter(vol, axis)
    report = PropagationReport()
    out = propagate(vol.shape, axis, {start: seed}, segmenter, report=report)
    assert np.array_equal(out, truth)
    assert all("vanished" in r for r in report.stops.values())
    assert len(calls) == (len(report.slices) - 1) + 2  # every slice but the seed, plus one empty slice per direction
    lo, hi = {0: (3, 8), 2: (12, 35)}[axis]
    assert report.slices == list(range(lo, hi + 1))


def test_propagation_stops_when_the_mask_leaves_the_prompted_region():
    shape = (12, 60, 60)
    seed = np.zeros(shape[1:], dtype=bool)
    seed[28:32, 28:32] = True

    def drifting(index: int, prompts: SlicePrompts) -> np.ndarray:
        """A model that slides 3 pixels right per slice up, and finds nothing going down."""
        out = np.zeros(shape[1:], dtype=bool)
        k = index - 5
        if k > 0:
            out[28:32, 28 + 3 * k: 32 + 3 * k] = True
        return out

    report = PropagationReport()
    out = propagate(shape, 0, {5: seed}, drifting, report=report)
    assert report.slices == [5, 6, 7]
    assert out[7, 28:32, 34:38].all() and not out[8:].any() and not out[:5].any()
    assert report.stops["up from 5"] == "mask left the prompted region at slice 8"
    assert report.stops["down from 5"] == "mask vanished at slice 4"


def test_propagation_between_two_prompted_slices_and_cancel():
    vol = box_volume()
    segmenter, _ = threshold_segmenter(vol, 0)
    prompts = Prompts.create(positive=[(3, 20, 20), (8, 20, 20)])

    def point_then_box(index, sp):
        if not sp.boxes:  # a user prompt: a click, fill its bright component on the slice
            lab, _ = ndi.label(vol[index] > 100)
            return lab == lab[tuple(sp.positive[0])]
        return segmenter(index, sp)

    out = propagate_from_prompts(vol.shape, 0, prompts, point_then_box)
    assert np.array_equal(out, vol > 100)
    seen = []
    with pytest.raises(SegmentationCancelled):
        propagate_from_prompts(vol.shape, 0, prompts, point_then_box,
                               progress=lambda d, t, m: seen.append(d), cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2


# --- SAM with a tiny random model ----------------------------------------------------------------

def test_tiny_sam_slice_mask_shape_and_embedding_cache(tiny_sam):
    vol = box_volume()
    prompts = Prompts.create(positive=[(5, 20, 24)], negative=[(5, 2, 2)], boxes=[((5, 10, 12), (5, 29, 35))])
    mask = segment(vol, prompts, tiny_sam, axis=0, index=5, window=(0, 255))
    assert mask.shape == vol.shape and mask.dtype == bool and not mask[[4, 6]].any()
    assert tiny_sam.encoder_runs == 1
    segment(vol, Prompts.create(positive=[(5, 15, 20)]), tiny_sam, axis=0, index=5, window=(0, 255))
    assert tiny_sam.encoder_runs == 1, "a second click on the same slice and window reuses the embedding"
    segment(vol, prompts, tiny_sam, axis=0, index=5, window=(0, 100))
    assert tiny_sam.encoder_runs == 2, "a new window means a new 8-bit image"
    segment(vol, Prompts.create(positive=[(5, 20, 24)]), tiny_sam, axis=1, index=20, window=(0, 255))
    assert tiny_sam.encoder_runs == 3
    assert "Segment Anything (tiny" in tiny_sam.describe()


def test_tiny_sam_propagates_over_several_slices(tiny_sam):
    vol = box_volume()
    report = PropagationReport()
    out = propagate_from_prompts(vol.shape, 0, Prompts.create(positive=[(5, 20, 24)]),
                                 lambda i, sp: tiny_sam.segment_slice(vol, 0, i, sp, (0, 255)), report=report)
    assert out.shape == vol.shape
    assert len(report.slices) >= 3 and out[report.slices].any(axis=(1, 2)).all()
    vol_mask = tiny_sam.segment_volume(vol, 2, Prompts.create(positive=[(5, 20, 24)]), (0, 255))
    assert vol_mask.shape == vol.shape and vol_mask[:, :, 24].any()


# --- checkpoints ---------------------------------------------------------------------------------

def test_missing_corrupt_and_wrong_architecture_checkpoints(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*vit_b"):
        load_sam(missing, "vit_b")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"corrupt\.pth.*vit_l"):
        load_sam(corrupt, "vit_l")
    tiny = tmp_path / "tiny.pth"
    torch.save(build_tiny_sam().state_dict(), tiny)
    with pytest.raises(ValueError, match=r"tiny\.pth.*expected model type vit_b"):
        get_backend(tiny, "vit_b")
    fake_l = {"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 1, 1)}
    fake_l.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(24)})
    vit_l = tmp_path / "sam_vit_l.pth"
    torch.save(fake_l, vit_l)
    with pytest.raises(ValueError, match=r"sam_vit_l\.pth is vit_l, not the expected model type vit_h"):
        read_checkpoint(vit_l, "vit_h")
    with pytest.raises(ValueError, match="unknown SAM model type"):
        load_sam(tiny, "vit_x")
    assert sam_mod.normalise_model_type("MedSAM") == "vit_b"


@pytest.fixture()
def tiny_as_vit_b(monkeypatch, tmp_path):
    """Make 'vit_b' mean the tiny architecture, so the checkpoint path runs without real weights."""
    return tiny_sam_as_vit_b(monkeypatch, tmp_path / "medsam_tiny.pth", model_seed=9, weights_seed=0)


def test_checkpoint_loads_into_the_registry_model(tiny_as_vit_b):
    model = load_sam(tiny_as_vit_b, "medsam", device="cpu")
    reference = build_tiny_sam(seed=0).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    backend = get_backend(tiny_as_vit_b, "vit_b", "cpu")
    assert backend.describe() == "Segment Anything (vit_b, file medsam_tiny.pth)"


# --- command line --------------------------------------------------------------------------------

def write_lps_cube(path) -> np.ndarray:
    """An LPS-oriented 30x32x20 file with a bright cube at file indices i 5..12, j 20..27, k 4..9."""
    data = np.full((30, 32, 20), 5, dtype=np.int16)
    data[5:13, 20:28, 4:10] = 300
    affine = np.diag([-0.8, -0.8, 2.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, -30.0]
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return data > 100


def test_cli_click_in_file_indices_on_a_non_ras_file(tmp_path):
    image = tmp_path / "lps.nii.gz"
    truth = write_lps_cube(image)
    out = tmp_path / "mask.nii.gz"
    assert cli_main(["segment", str(image), "--points", "6,21,5", "-o", str(out), "--label", "3"]) == 0
    written = nib.load(str(out))
    assert np.array_equal(written.affine, nib.load(str(image)).affine)
    assert np.array_equal(np.asarray(written.dataobj), truth.astype(np.uint8) * 3)
    assert cli_main(["segment", str(image), "--points", "6,21,5", "-o", str(out)]) == 2  # exists


def test_cli_refuses_a_click_outside(tmp_path, capsys):
    image = tmp_path / "lps.nii.gz"
    write_lps_cube(image)
    out = tmp_path / "mask.nii.gz"
    assert cli_main(["segment", str(image), "--points", "6,21,5;40,1,1", "-o", str(out)]) == 2
    assert "click 40,1,1 lies outside the image" in capsys.readouterr().err
    assert not out.exists()


def test_cli_with_a_sam_checkpoint_propagates(tmp_path, tiny_as_vit_b):
    image = tmp_path / "lps.nii.gz"
    write_lps_cube(image)
    out = tmp_path / "sam.nii.gz"
    code = cli_main(["segment", str(image), "--box", "5,20,6,12,27,6", "--checkpoint", str(tiny_as_vit_b),
                     "--model-type", "vit_b", "--device", "cpu", "-o", str(out)])
    assert code == 0
    mask = np.asarray(nib.load(str(out)).dataobj)
    assert mask.shape == (30, 32, 20) and set(np.unique(mask)) <= {0, 1}
    assert mask[:, :, 6].any()


def test_cli_checks_the_output_before_any_work(tmp_path, capsys, monkeypatch):
    import laugen_napari.io.nifti as nifti

    image = tmp_path / "lps.nii.gz"
    write_lps_cube(image)
    loads = []
    real_load = nifti.load_volume
    monkeypatch.setattr(nifti, "load_volume", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder.nii.gz").mkdir()
    existing = tmp_path / "old.nii.gz"
    existing.write_bytes(b"old")
    cases = {
        str(tmp_path / "missing" / "mask.nii.gz"): "the folder",
        str(tmp_path / "afile" / "mask.nii.gz"): "is not a folder",
        str(tmp_path / "mask.png"): "name it .nii.gz",
        str(tmp_path / "folder.nii.gz"): "is a folder",
        str(existing): "exists; pass --overwrite",
    }
    for out, message in cases.items():
        assert cli_main(["segment", str(image), "--points", "6,21,5", "-o", out]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("laugen segment: error: -o ") and message in err and len(err.splitlines()) == 1
    assert existing.read_bytes() == b"old"
    assert cli_main(["segment", str(image), "--points", "6,21,5", "-o", str(image), "--overwrite"]) == 2
    assert "is the input image" in capsys.readouterr().err
    assert not loads, "the image was read before the output was checked"
    assert cli_main(["segment", str(image), "--points", "6,21,5", "-o", str(existing), "--overwrite"]) == 0
    assert nib.load(str(existing)).shape == (30, 32, 20)


@pytest.mark.parametrize("option, value", [("--points", "inf,21,5"), ("--points", "6,nan,5"),
                                           ("--negative-points", "6,21,-inf"), ("--box", "5,20,6,12,inf,6"),
                                           ("--points", "6,21,5;6,21,500"), ("--negative-points", "-1,0,0"),
                                           ("--box", "5,20,6,40,27,6"), ("--window", "nan,100"),
                                           ("--window", "0,inf")])
def test_cli_refuses_non_finite_and_outside_coordinates(tmp_path, capsys, option, value):
    image = tmp_path / "lps.nii.gz"
    write_lps_cube(image)
    out = tmp_path / "mask.nii.gz"
    args = ["segment", str(image), "-o", str(out), f"{option}={value}"]
    if option != "--points":
        args += ["--points", "6,21,5"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"laugen segment: error: {option}: "), err
    assert ("non-finite" in err) or ("outside the image" in err) or ("two finite numbers" in err)
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))
