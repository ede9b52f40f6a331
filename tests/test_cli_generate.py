"""``laugen generate`` end to end: outputs, geometry, provenance, and refusals of bad input."""

import json

import nibabel as nib
import numpy as np
import pytest

from laugen_napari.cli import main

from .conftest import SAMPLE_IMAGE, SAMPLE_MASK


def run(*args):
    return main(["generate", *map(str, args), "--quiet"])


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "out"
    assert run(SAMPLE_IMAGE, SAMPLE_MASK, "-o", out, "--frames", 5, "--seed", 7) == 0
    return out


def test_writes_4d_series_with_the_input_affine(sample_run):
    src = nib.load(str(SAMPLE_IMAGE))
    img = nib.load(str(sample_run / "image_series.nii.gz"))
    mask = nib.load(str(sample_run / "mask_series.nii.gz"))
    assert img.shape == src.shape + (5,) and mask.shape == src.shape + (5,)
    assert img.get_data_dtype() == np.float32 and np.issubdtype(mask.get_data_dtype(), np.integer)
    np.testing.assert_array_equal(img.affine, src.affine)
    np.testing.assert_array_equal(mask.affine, src.affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[..., 0], np.asarray(src.dataobj).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(mask.dataobj)[..., 0], np.asarray(nib.load(str(SAMPLE_MASK)).dataobj))


def test_sidecar_records_the_ground_truth(sample_run):
    rec = json.loads((sample_run / "series.json").read_text())
    for key in ("kind", "trajectory", "z_mm", "frames", "seed", "labels", "sigma_mm", "volumes_ml", "jacobian_min",
                "folded_fraction", "inputs", "laugen_napari_version"):
        assert key in rec
    assert rec["frames"] == 5 and len(rec["z_mm"]) == 5 and rec["z_mm"][0] == 0
    slope = rec["trajectory"]["slope_mm_per_frame"]
    np.testing.assert_allclose(rec["z_mm"], slope * np.arange(5))
    assert rec["labels"] == [1, 2] and set(rec["volumes_ml"]) == {"1", "2"}
    assert len(rec["inputs"]["image"]["sha256"]) == 64
    # volumes in the sidecar are those of the written mask series
    mask = np.asarray(nib.load(str(sample_run / "mask_series.nii.gz")).dataobj)
    assert rec["volumes_ml"]["1"] == pytest.approx([float((mask[..., t] == 1).sum()) / 1000 for t in range(5)])


def test_same_seed_identical_files(sample_run, tmp_path):
    out = tmp_path / "again"
    assert run(SAMPLE_IMAGE, SAMPLE_MASK, "-o", out, "--frames", 5, "--seed", 7) == 0
    a = np.asarray(nib.load(str(sample_run / "image_series.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(out / "image_series.nii.gz")).dataobj)
    np.testing.assert_array_equal(a, b)


def _lps_pair(tmp_path):
    """An LPS-oriented, anisotropic, int16 scan with two labels."""
    rng = np.random.default_rng(1)
    shape = (40, 36, 16)
    ijk = np.indices(shape)
    image = (200 + rng.normal(0, 5, shape)).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    labels[((ijk[0] - 14) ** 2 + (ijk[1] - 18) ** 2 < 36) & (abs(ijk[2] - 8) < 3)] = 1
    labels[((ijk[0] - 28) ** 2 + (ijk[1] - 18) ** 2 < 25) & (abs(ijk[2] - 8) < 3)] = 4
    image[labels > 0] = 60
    affine = np.diag([-0.8, -0.9, 2.5, 1.0])
    affine[:3, 3] = [30.0, 20.0, -10.0]
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "lps.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "lps_seg.nii.gz"))
    return tmp_path / "lps.nii.gz", tmp_path / "lps_seg.nii.gz", image, labels, affine


def test_lps_anisotropic_integer_scan(tmp_path):
    img_path, seg_path, image, labels, affine = _lps_pair(tmp_path)
    out = tmp_path / "out"
    assert run(img_path, seg_path, "-o", out, "--frames", 3, "--values", "0,1,2", "--trajectory", "custom",
               "--sigma-mm", 2, "--labels", "4") == 0
    series = nib.load(str(out / "image_series.nii.gz"))
    masks = np.asarray(nib.load(str(out / "mask_series.nii.gz")).dataobj)
    np.testing.assert_array_equal(series.affine, nib.load(str(img_path)).affine)
    np.testing.assert_array_equal(np.asarray(series.dataobj)[..., 0], image.astype(np.float32))
    assert (masks[..., 2] == 4).sum() > (labels == 4).sum()  # label 4 grows in the file's own layout
    np.testing.assert_array_equal(masks[..., 2] == 1, labels == 1)  # label 1 did not drive and is far away
    rec = json.loads((out / "series.json").read_text())
    assert rec["z_mm"] == [0.0, 1.0, 2.0] and rec["labels"] == [4]


def test_directional_world_direction_and_gaussian_file_centre(tmp_path):
    img_path, seg_path, image, labels, _ = _lps_pair(tmp_path)
    out = tmp_path / "dir"
    # +x world (towards the right) is -i in this LPS file
    assert run(img_path, seg_path, "-o", out, "--kind", "directional", "--direction", 1, 0, 0, "--labels", 1,
               "--trajectory", "custom", "--values", "0,2", "--sigma-mm", 2) == 0
    masks = np.asarray(nib.load(str(out / "mask_series.nii.gz")).dataobj)
    i_before = np.argwhere(labels == 1)[:, 0]
    i_after = np.argwhere(masks[..., 1] == 1)[:, 0]
    assert i_after.min() < i_before.min() and i_after.max() == i_before.max()
    out2 = tmp_path / "gauss"
    assert run(img_path, seg_path, "-o", out2, "--kind", "gaussian", "--center", 28, 13, 8, "--spread-mm", 2,
               "--labels", 4, "--trajectory", "custom", "--values", "0,2", "--sigma-mm", 2) == 0
    series = np.asarray(nib.load(str(out2 / "image_series.nii.gz")).dataobj)
    changed = np.argwhere(series[..., 1] != image)
    dist_mm = np.linalg.norm((changed - [28, 13, 8]) * [0.8, 0.9, 2.5], axis=1)
    assert len(changed) > 20 and dist_mm.max() <= 3 * 2 + 2 + 1  # only near the centre (file voxel I J K)
    assert changed[:, 1].max() < 23  # the far side of the disc (j up to 23) is untouched


def test_nested_outdir_is_created(tmp_path):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    out = tmp_path / "new" / "deeper" / "out"
    assert run(img_path, seg_path, "-o", out, "--frames", 2, "--sigma-mm", 2) == 0
    assert (out / "series.json").exists()
    (tmp_path / "a_file").write_text("x")
    assert run(img_path, seg_path, "-o", tmp_path / "a_file" / "out", "--frames", 2) == 2


def test_several_series(tmp_path):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    out = tmp_path / "many"
    assert run(img_path, seg_path, "-o", out, "--frames", 3, "--series", 3, "--sigma-mm", 2) == 0
    slopes = [json.loads((out / f"series_{k:03d}" / "series.json").read_text())["trajectory"]["slope_mm_per_frame"]
              for k in range(3)]
    assert len(set(slopes)) == 3


def _refused(capsys, tmp_path, *args, match):
    out = tmp_path / "refused"
    status = run(*args[:2], "-o", out, *args[2:])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]  # no temporary left behind


def test_bad_input_is_refused_cleanly(capsys, tmp_path):
    img_path, seg_path, image, labels, affine = _lps_pair(tmp_path)
    _refused(capsys, tmp_path, tmp_path / "nope.nii.gz", seg_path, match="no such file")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    _refused(capsys, tmp_path, tmp_path / "junk.nii.gz", seg_path, match="cannot be read")
    nib.save(nib.Nifti1Image(labels[:-2], affine), str(tmp_path / "small_seg.nii.gz"))
    _refused(capsys, tmp_path, img_path, tmp_path / "small_seg.nii.gz", match="differ in shape")
    shifted = affine.copy()
    shifted[0, 3] += 5
    nib.save(nib.Nifti1Image(labels, shifted), str(tmp_path / "moved_seg.nii.gz"))
    _refused(capsys, tmp_path, img_path, tmp_path / "moved_seg.nii.gz", match="differ in affine")
    nib.save(nib.Nifti1Image(np.zeros_like(labels), affine), str(tmp_path / "empty_seg.nii.gz"))
    _refused(capsys, tmp_path, img_path, tmp_path / "empty_seg.nii.gz", match="empty")
    _refused(capsys, tmp_path, img_path, seg_path, "--labels", "3", match="not in the label map")
    nib.save(nib.Nifti1Image(np.stack([image] * 3, -1), affine), str(tmp_path / "four_d.nii.gz"))
    _refused(capsys, tmp_path, tmp_path / "four_d.nii.gz", seg_path, match="3D volume is expected")
    _refused(capsys, tmp_path, img_path, seg_path, "--sigma-mm", "nan", match="finite")
    _refused(capsys, tmp_path, img_path, seg_path, "--slope-range", "0", "inf", match="finite")
    _refused(capsys, tmp_path, img_path, seg_path, "--frames", "1", match=">= 2")
    _refused(capsys, tmp_path, img_path, seg_path, "--kind", "gaussian", "--center", 500, 1, 1, match="outside")
    _refused(capsys, tmp_path, img_path, seg_path, "--trajectory", "custom", "--values", "1,2", match="start with 0")


def test_non_empty_outdir_needs_overwrite(capsys, tmp_path):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert run(img_path, seg_path, "-o", out, "--frames", 2) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert run(img_path, seg_path, "-o", out, "--frames", 2, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "series.json").exists()
