"""Hostile files found by the session-5 audit (round 3): NIfTI-2 files, .hdr/.img pairs and Analyze
files, headers whose geometry is NaN or collapsed, files without qform/sform, masks shifted by a
fraction of a voxel far from the origin or on a microscopy grid, vector fields given as a scan, and
header extensions. Each gives a correct series (frame 0 the input, the geometry written back) or
one clear error line with nothing written."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from laugen_napari.cli import main as laugen
from laugen_napari.io.export import sha256
from laugen_napari.io.nifti import load_volume, stored_files
from laugen_napari.io.pairs import read_manifest, read_pair

from .conftest import SAMPLE_IMAGE, SAMPLE_MASK

ARGS = ["--frames", "3", "--slope-range", "1", "1", "--seed", "3", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def crop():
    """The shipped pair cropped around the ventricles (44 x 48 x 36 voxels) and its affine."""
    img, seg = nib.load(str(SAMPLE_IMAGE)), nib.load(str(SAMPLE_MASK))
    box = (slice(76, 120), slice(100, 148), slice(66, 102))
    affine = img.slicer[box].affine
    data, labels = np.asarray(img.dataobj)[box], np.asarray(seg.dataobj)[box]
    assert (labels == 1).any() and (labels == 2).any()
    return data, labels, affine


def _series(out):
    image = nib.load(str(out / "image_series.nii.gz"))
    mask = nib.load(str(out / "mask_series.nii.gz"))
    return image, np.asarray(image.dataobj), mask, np.asarray(mask.dataobj)


def _check_series(out, data, labels, affine):
    """Frame 0 is the input, the structure grows (slope 1 mm/frame), the affine is the input's."""
    image, frames, mask, masks = _series(out)
    np.testing.assert_array_equal(frames[..., 0], data)
    np.testing.assert_array_equal(masks[..., 0], labels)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    np.testing.assert_allclose(mask.affine, affine, atol=1e-5)
    assert np.count_nonzero(masks[..., 2]) > np.count_nonzero(masks[..., 0]) * 1.1
    return image, mask


def _refused(capsys, out, *parts):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("laugen generate: error:"), err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err
    assert not out.exists()
    return err


def test_nifti2_files_give_nifti2_series_that_keep_dimensions_beyond_nifti1(tmp_path, crop, capfd):
    """A NIfTI-2 pair gives the NIfTI-1 pair's series, written as NIfTI-2 (it was converted to
    NIfTI-1 with two 'sizeof_hdr should be 348' lines from nibabel); a NIfTI-2 volume longer than
    NIfTI-1's 32767 voxels along an axis is written at all (it failed to write)."""
    data, labels, affine = crop
    for cls, tag in ((nib.Nifti1Image, "n1"), (nib.Nifti2Image, "n2")):
        cls(data, affine).to_filename(str(tmp_path / f"img_{tag}.nii.gz"))
        cls(labels, affine).to_filename(str(tmp_path / f"seg_{tag}.nii.gz"))
        assert laugen(["generate", str(tmp_path / f"img_{tag}.nii.gz"), str(tmp_path / f"seg_{tag}.nii.gz"),
                       "-o", str(tmp_path / tag), *ARGS]) == 0
    image, mask = _check_series(tmp_path / "n2", data, labels, affine)
    assert isinstance(image, nib.Nifti2Image) and isinstance(mask, nib.Nifti2Image)
    for n1, n2 in zip(_series(tmp_path / "n1")[1::2], _series(tmp_path / "n2")[1::2]):
        np.testing.assert_array_equal(n1, n2)
    assert "sizeof_hdr" not in capfd.readouterr().err
    # one line of 36,000 voxels from the sample's rows, two voxels thick
    rows = np.concatenate([data[:, y, z] for z in range(data.shape[2]) for y in range(data.shape[1])])[:36_000]
    long_img = np.repeat(np.repeat(rows[:, None, None], 2, 1), 2, 2)
    long_seg = np.zeros(long_img.shape, np.uint8)
    long_seg[18_000:18_040] = 1
    nib.Nifti2Image(long_img, affine).to_filename(str(tmp_path / "long.nii.gz"))
    nib.Nifti2Image(long_seg, affine).to_filename(str(tmp_path / "long_seg.nii.gz"))
    assert laugen(["generate", str(tmp_path / "long.nii.gz"), str(tmp_path / "long_seg.nii.gz"), "-o",
                   str(tmp_path / "long"), "--sigma-mm", "2", *ARGS]) == 0
    _, frames, _, masks = _series(tmp_path / "long")
    assert frames.shape == (36_000, 2, 2, 3)
    np.testing.assert_array_equal(frames[..., 0], long_img)
    assert np.count_nonzero(masks[..., 2]) > np.count_nonzero(long_seg)


def test_nifti_hdr_img_pairs_are_read_and_analyze_files_refused(tmp_path, crop, capsys):
    """A NIfTI-1 or NIfTI-2 .hdr/.img pair (SPM's format) holds a full NIfTI header: read like the
    .nii (it was refused as 'not a NIfTI image'), by ``laugen generate`` and in manifests (CSV and
    folder). An Analyze 7.5 file stores no orientation: refused, saying so."""
    data, labels, affine = crop
    nib.Nifti1Pair(data, affine).to_filename(str(tmp_path / "t1.img"))
    nib.Nifti2Pair(labels, affine).to_filename(str(tmp_path / "t1_seg.hdr"))
    image, mask = read_pair(tmp_path / "t1.hdr", tmp_path / "t1_seg.img")
    np.testing.assert_array_equal(mask.data, labels.transpose(2, 1, 0))  # the crop is RAS: (Z, Y, X) = (K, J, I)
    np.testing.assert_array_equal(image.data, data.transpose(2, 1, 0))
    assert laugen(["generate", str(tmp_path / "t1.hdr"), str(tmp_path / "t1_seg.hdr"), "-o", str(tmp_path / "out"),
                   *ARGS]) == 0
    _check_series(tmp_path / "out", data, labels, affine)
    # provenance covers the voxel data: both files of each pair, header first, with their hashes
    record = json.loads((tmp_path / "out" / "series.json").read_text())
    for role, stem in (("image", "t1"), ("mask", "t1_seg")):
        files = record["inputs"][role]["files"]
        assert [Path(f["path"]).name for f in files] == [f"{stem}.hdr", f"{stem}.img"]
        assert [f["sha256"] for f in files] == [sha256(tmp_path / f"{stem}{s}") for s in (".hdr", ".img")]
    assert stored_files(tmp_path / "t1.img") == [tmp_path / "t1.hdr", tmp_path / "t1.img"]
    assert stored_files(tmp_path / "t1.nii.gz") == [tmp_path / "t1.nii.gz"]
    assert [p.id for p in read_manifest(tmp_path)] == ["t1"]  # the folder of pairs
    (tmp_path / "m.csv").write_text("image,mask\nt1.img,t1_seg.hdr\n")
    assert laugen(["dataset", str(tmp_path / "m.csv"), "-o", str(tmp_path / "ds"), "--scheduler", "synchronous",
                   *ARGS]) == 0
    assert (tmp_path / "ds" / "t1" / "mask_series.nii.gz").is_file()
    nib.AnalyzeImage(data, affine).to_filename(str(tmp_path / "an.hdr"))
    capsys.readouterr()
    assert laugen(["generate", str(tmp_path / "an.hdr"), str(tmp_path / "t1_seg.hdr"), "-o", str(tmp_path / "an"),
                   *ARGS]) == 2
    _refused(capsys, tmp_path / "an", "an.hdr", "Analyze", "orientation")


def _raw_header_file(path, data, pixdim=None, sform=None):
    """An uncompressed NIfTI-1 file with qform/sform codes 0 (or the given sform, code 2), its
    pixdim[1:4] patched in afterwards (nibabel would repair them when writing)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    if sform is not None:
        header.set_sform(sform, code=2)
    nib.Nifti1Image(data, None, header).to_filename(str(path))
    raw = bytearray(path.read_bytes())
    for i, v in enumerate(pixdim or ()):
        raw[80 + 4 * i:84 + 4 * i] = struct.pack("<f", v)
    path.write_bytes(bytes(raw))
    return path


def test_nan_or_collapsed_geometry_is_one_clear_error(tmp_path, crop, capsys):
    """A NaN or infinite pixdim in a file without qform/sform, or an sform with a zero column: one
    line naming the file and its geometry (they ended in 'SVD did not converge' from numpy)."""
    data, labels, affine = crop
    collapsed = affine.copy()
    collapsed[:3, 1] = 0
    cases = {"nan": {"pixdim": [np.nan, 1, 1]}, "inf": {"pixdim": [1, np.inf, 1]}, "flat": {"sform": collapsed}}
    for name, kw in cases.items():
        img = _raw_header_file(tmp_path / f"{name}.nii", data, **kw)
        seg = _raw_header_file(tmp_path / f"{name}_seg.nii", labels, **kw)
        with pytest.raises(ValueError, match="voxel-to-world geometry"):
            load_volume(img)
        capsys.readouterr()
        assert laugen(["generate", str(img), str(seg), "-o", str(tmp_path / name), *ARGS]) == 2
        _refused(capsys, tmp_path / name, f"{name}.nii", "not finite" if name != "flat" else "collapses")


def test_a_file_without_qform_and_sform_is_written_back_without_them(tmp_path, crop):
    """Codes 0: the geometry comes from pixdim alone (how each tool places it differs). The series
    keeps codes 0 and pixdim, so every tool places it as it places the input (it was written with
    codes 1 and the affine nibabel makes up)."""
    data, labels, _ = crop
    img = _raw_header_file(tmp_path / "img.nii", data, pixdim=[0.9, 1.1, 3.0])
    seg = _raw_header_file(tmp_path / "seg.nii", labels, pixdim=[0.9, 1.1, 3.0])
    src = nib.load(str(img))
    assert laugen(["generate", str(img), str(seg), "-o", str(tmp_path / "out"), *ARGS]) == 0
    for written in _check_series(tmp_path / "out", data, labels, src.affine):
        assert int(written.header["qform_code"]) == 0 and int(written.header["sform_code"]) == 0
        np.testing.assert_allclose(written.header.get_zooms()[:3], (0.9, 1.1, 3.0), rtol=1e-6)


def test_a_mask_shifted_by_part_of_a_voxel_is_refused_far_from_the_origin_and_on_fine_grids(tmp_path, crop, capsys):
    """The grids are compared voxel by voxel: half a voxel off 100 m from the origin, or two
    0.5-micron voxels off, is refused (both passed the affines' relative/1e-3 mm tolerance), while
    float32 round-off of the same grid, or a tilt moving no voxel by 1% of its size, passes."""
    data, labels, affine = crop
    far = affine.copy()
    far[:3, 3] += 1e5
    rounded = far.copy()
    rounded[:3, 3] = (far[:3, 3] + 0.004).astype(np.float32)  # within float32's step at 1e5 mm
    shifted = far.copy()
    shifted[0, 3] += 0.5
    fine = np.diag([5e-4, 5e-4, 5e-4, 1.0])
    fine[:3, 3] = (2.0, 3.0, 1.0)
    fine_shifted = fine.copy()
    fine_shifted[1, 3] += 1e-3  # two voxels
    c, sn = np.cos(2e-4), np.sin(2e-4)
    tilted = affine @ np.array([[c, -sn, 0, 0], [sn, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # < 0.01 mm at 48 mm
    pairs = {"rounded": (far, rounded, True), "shifted": (far, shifted, False), "fine": (fine, fine, True),
             "fine_shifted": (fine, fine_shifted, False), "tilted": (affine, tilted, True)}
    for name, (a_img, a_seg, same) in pairs.items():
        nib.Nifti1Image(data, a_img).to_filename(str(tmp_path / f"{name}.nii.gz"))
        nib.Nifti1Image(labels, a_seg).to_filename(str(tmp_path / f"{name}_seg.nii.gz"))
        if same:
            read_pair(tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_seg.nii.gz")
        else:
            with pytest.raises(ValueError, match="differ in affine"):
                read_pair(tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_seg.nii.gz")
    capsys.readouterr()
    assert laugen(["generate", str(tmp_path / "shifted.nii.gz"), str(tmp_path / "shifted_seg.nii.gz"), "-o",
                   str(tmp_path / "out"), *ARGS]) == 2
    _refused(capsys, tmp_path / "out", "differ in affine", "0.5 mm apart")


def test_a_vector_field_given_as_a_scan_is_named(tmp_path, crop, capsys):
    """A displacement field (NIfTI intent vector: (X, Y, Z, 1, 3)) or any 5th-dimension vector:
    refused as what it is (it was told to 'extract the first time point'). With one component it is
    a scan; the series then carries no vector intent."""
    data, labels, affine = crop
    field = nib.Nifti1Image(np.stack([data] * 3, -1)[:, :, :, None, :].astype(np.float32), affine)
    field.header.set_intent("vector")
    field.to_filename(str(tmp_path / "warp.nii.gz"))
    nib.Nifti1Image(np.stack([labels] * 2, -1)[:, :, :, None, :], affine).to_filename(str(tmp_path / "seg5.nii.gz"))
    nib.Nifti1Image(labels, affine).to_filename(str(tmp_path / "seg.nii.gz"))
    nib.Nifti1Image(data, affine).to_filename(str(tmp_path / "img.nii.gz"))
    assert laugen(["generate", str(tmp_path / "warp.nii.gz"), str(tmp_path / "seg.nii.gz"), "-o",
                   str(tmp_path / "a"), *ARGS]) == 2
    _refused(capsys, tmp_path / "a", "warp.nii.gz", "vector", "displacement field")
    assert laugen(["generate", str(tmp_path / "img.nii.gz"), str(tmp_path / "seg5.nii.gz"), "-o",
                   str(tmp_path / "b"), *ARGS]) == 2
    _refused(capsys, tmp_path / "b", "seg5.nii.gz", "2 values per voxel")
    one = nib.Nifti1Image(data[:, :, :, None, None], affine)
    one.header.set_intent("vector")
    one.to_filename(str(tmp_path / "one.nii.gz"))
    assert laugen(["generate", str(tmp_path / "one.nii.gz"), str(tmp_path / "seg.nii.gz"), "-o",
                   str(tmp_path / "c"), *ARGS]) == 0
    image, _ = _check_series(tmp_path / "c", data, labels, affine)
    assert image.header.get_intent()[0] == "none"


def test_header_extensions_of_the_input_are_not_copied(tmp_path, crop):
    """Extensions describe the input file (its DICOM header, AFNI attributes): the written series
    carry none (they were copied into every output, whose data they no longer describe)."""
    data, labels, affine = crop
    img = nib.Nifti1Image(data, affine)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"patient: somebody " * 50))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(4, b'<?xml version="1.0"?><AFNI_attributes/>\x00'))
    img.to_filename(str(tmp_path / "img.nii.gz"))
    seg = nib.Nifti1Image(labels, affine)
    seg.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 100))
    seg.to_filename(str(tmp_path / "seg.nii"))
    assert laugen(["generate", str(tmp_path / "img.nii.gz"), str(tmp_path / "seg.nii"), "-o", str(tmp_path / "out"),
                   *ARGS]) == 0
    for written in _check_series(tmp_path / "out", data, labels, affine):
        assert len(written.header.extensions) == 0


def test_one_slice_files_with_their_single_axis_flipped(tmp_path, crop):
    """A single sagittal slice stored LAS (FSL's radiological order): its one-voxel axis is flipped,
    which numpy leaves as a negative stride on a 'contiguous' array, refused by torch (a one-line
    torch error). A 2D file whose third axis points down, with a Gaussian centre: the centre
    check read a third dimension the header does not have (IndexError traceback)."""
    data, labels, affine = crop
    las = affine.copy()
    las[:, 0] *= -1  # I points left, on its one voxel
    las[:3, 3] = (affine @ [20, 0, 0, 1])[:3]
    data1, labels1 = data[20:21], labels[20:21]
    nib.Nifti1Image(data1, las).to_filename(str(tmp_path / "sag.nii.gz"))
    nib.Nifti1Image(labels1, las).to_filename(str(tmp_path / "sag_seg.nii.gz"))
    assert min(load_volume(tmp_path / "sag.nii.gz").data.strides) >= 0
    assert laugen(["generate", str(tmp_path / "sag.nii.gz"), str(tmp_path / "sag_seg.nii.gz"), "-o",
                   str(tmp_path / "sag"), *ARGS]) == 0
    _check_series(tmp_path / "sag", data1, labels1, las)
    down = affine.copy()
    down[:, 2] *= -1
    nib.Nifti1Image(data[:, :, 18], down).to_filename(str(tmp_path / "flat.nii.gz"))
    nib.Nifti1Image(labels[:, :, 18], down).to_filename(str(tmp_path / "flat_seg.nii.gz"))
    assert laugen(["generate", str(tmp_path / "flat.nii.gz"), str(tmp_path / "flat_seg.nii.gz"), "-o",
                   str(tmp_path / "flat"), "--kind", "gaussian", "--center", "20", "24", "0", *ARGS]) == 0
    _check_series(tmp_path / "flat", data[:, :, 18:19], labels[:, :, 18:19], down)


def _patched(path, data, affine, offset, fmt, value):
    nib.Nifti1Image(data, affine).to_filename(str(path))
    raw = bytearray(path.read_bytes())
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(raw))
    return path


def test_damaged_headers_give_one_line_and_nothing_of_nibabel(tmp_path, crop, capsys):
    """A header whose vox_offset lies inside the header: nibabel logged its own two lines before the
    error line (a fresh process, as a user sees it); now the error is the one line. A header with a
    zero dimension declared no voxels and ended in 'the label map is empty'."""
    data, labels, affine = crop
    nib.Nifti1Image(labels, affine).to_filename(str(tmp_path / "seg.nii.gz"))
    bad = _patched(tmp_path / "offset.nii", data, affine, 108, "<f", 100.0)
    run = subprocess.run([sys.executable, "-m", "laugen_napari", "generate", str(bad), str(tmp_path / "seg.nii.gz"),
                          "-o", str(tmp_path / "out"), *ARGS], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert run.returncode == 2
    line = f"laugen generate: error: {bad}: cannot be read as NIfTI (vox offset 100 too low for single file nifti1)"
    assert run.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "out").exists()
    for name, offset in (("dim0", 40), ("dim1", 42)):
        empty = _patched(tmp_path / f"{name}.nii", data, affine, offset, "<h", 0)
        seg = _patched(tmp_path / f"{name}_seg.nii", labels, affine, offset, "<h", 0)
        with pytest.raises(ValueError, match="declares no voxels"):
            load_volume(empty)
        assert laugen(["generate", str(empty), str(seg), "-o", str(tmp_path / name), *ARGS]) == 2
        _refused(capsys, tmp_path / name, f"{name}.nii", "declares no voxels")
