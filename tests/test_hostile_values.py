"""A scan with a NaN background (some pipelines write NaN outside the brain) is used as it is: the
background stays NaN in every frame and the structure moves exactly as in the scan with a finite
background; next to a NaN the samples follow one documented rule (core/warp.py), checked here
against an independent float64 implementation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from laugen_napari.cli import main as laugen
from laugen_napari.core import Augmenter, CustomTrajectory
from laugen_napari.io.nifti import load_volume

from .conftest import SAMPLE_IMAGE, SAMPLE_MASK


def _nan_background(tmp_path):
    img = nib.load(str(SAMPLE_IMAGE))
    data = np.asarray(img.dataobj).astype(np.float32)
    finite = data.copy()
    data[data == 0] = np.nan  # everything outside the skull-stripped brain
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    for name, values in (("nan_t1.nii.gz", data), ("finite_t1.nii.gz", finite)):
        nib.save(nib.Nifti1Image(values, img.affine, header), str(tmp_path / name))
    return tmp_path / "nan_t1.nii.gz", tmp_path / "finite_t1.nii.gz"


def test_a_nan_background_stays_nan_and_the_structure_moves_as_without_it(tmp_path, sample_arrays):
    nan_path, finite_path = _nan_background(tmp_path)
    args = ["--frames", "3", "--slope-range", "1.2", "1.2", "--seed", "1", "--device", "cpu", "-q"]
    assert laugen(["generate", str(nan_path), str(SAMPLE_MASK), "-o", str(tmp_path / "nan"), *args]) == 0
    assert laugen(["generate", str(finite_path), str(SAMPLE_MASK), "-o", str(tmp_path / "finite"), *args]) == 0
    a = np.asarray(nib.load(str(tmp_path / "nan" / "image_series.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "finite" / "image_series.nii.gz")).dataobj)
    background = np.isnan(np.asarray(nib.load(str(nan_path)).dataobj))
    assert background.sum() > 1_000_000
    for t in range(3):
        np.testing.assert_array_equal(np.isnan(a[..., t]), background)  # no NaN spreads, none disappears
        np.testing.assert_array_equal(a[..., t][~background], b[..., t][~background])
    assert np.abs(a[..., 2] - a[..., 0])[~background].max() > 10  # the structure really moved
    for name in ("mask_series.nii.gz",):
        assert np.array_equal(np.asarray(nib.load(str(tmp_path / "nan" / name)).dataobj),
                              np.asarray(nib.load(str(tmp_path / "finite" / name)).dataobj))
    # the library, directly: the same frames
    image, labels, spacing = sample_arrays
    nan_image = image.astype(np.float32)
    nan_image[image == 0] = np.nan
    frame = Augmenter(nan_image, labels, spacing, device="cpu").warper.image_frame(2.0).numpy()
    assert np.array_equal(np.isnan(frame), image == 0)


def _reference_sample(image: np.ndarray, pos: np.ndarray) -> float:
    """The documented rule, one sample at a time in float64: plain trilinear when the 8 corners are
    finite; else the finite corners' weighted mean when they weigh > 0.5, else the heaviest
    non-finite corner."""
    lo = np.minimum(np.floor(pos).astype(int), np.array(image.shape) - 2)
    f = pos - lo
    values, weights = [], []
    for k in range(8):
        b = ((k >> 2) & 1, (k >> 1) & 1, k & 1)
        values.append(image[lo[0] + b[0], lo[1] + b[1], lo[2] + b[2]])
        weights.append(np.prod([f[a] if b[a] else 1 - f[a] for a in range(3)]))
    values, weights = np.array(values, np.float64), np.array(weights)
    ok = np.isfinite(values)
    if ok.all():
        return float((values * weights).sum())
    if weights[ok].sum() > 0.5:
        return float((values[ok] * weights[ok]).sum() / weights[ok].sum())
    return float(values[~ok][np.argmax(weights[~ok])])


def test_samples_next_to_nan_follow_the_documented_rule():
    """A sphere growing into a NaN slab: the slab's edge moves with the field, no NaN spreads, and
    every moving voxel equals the rule computed independently in float64."""
    shape = (22, 20, 20)
    zz, yy, xx = np.indices(shape)
    labels = (((zz - 11) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2) <= 25).astype(np.uint8)
    rng = np.random.default_rng(3)
    image = (100 + 50 * labels + rng.normal(0, 5, shape)).astype(np.float32)
    image[:7] = np.nan
    image[7, :3] = np.inf  # an inf as well
    aug = Augmenter(image, labels, (1.0, 1.0, 1.0), sigma_mm=2.0, device="cpu")
    z = 2.5
    frame = aug.warper.image_frame(z).numpy()
    field = aug.field.dense()  # (3, Z, Y, X) mm = voxels here
    moving = np.argwhere(np.any(field != 0, axis=0))
    assert len(moving) > 1000
    checked_special = 0
    for zyx in moving:
        pos = zyx + z * field[(slice(None),) + tuple(zyx)]
        pos = np.clip(pos, 0, np.array(shape) - 1)
        want = _reference_sample(image, pos)
        got = float(frame[tuple(zyx)])
        if np.isfinite(want):
            assert abs(got - want) <= 1e-3 * max(1.0, abs(want)), (zyx, got, want)
        else:
            assert got == want or (np.isnan(got) and np.isnan(want))
        lo = np.minimum(np.floor(pos).astype(int), np.array(shape) - 2)
        checked_special += not np.isfinite(image[lo[0]:lo[0] + 2, lo[1]:lo[1] + 2, lo[2]:lo[2] + 2]).all()
    assert checked_special > 50  # the rule was exercised, not only the plain path
    still = np.all(field == 0, axis=0)
    np.testing.assert_array_equal(frame[still], image[still])  # voxels that do not move: the input, NaN included
    grown = ~np.isfinite(frame)
    assert grown.sum() < (~np.isfinite(image)).sum()  # the sphere grows into the slab: it shrinks, never spreads


def test_float_labels_within_rounding_of_whole_numbers_are_labels(tmp_path, sample_arrays, capsys):
    """A mask stored as float with 0.9999 / 2.0001 (float32 storage, a scaling slope) is the label
    map it means; values between labels (a linear resampling) are refused, saying how many and
    what to do."""
    from laugen_napari.core.labels import integer_labels

    img = nib.load(str(SAMPLE_MASK))
    labels = np.asarray(img.dataobj)
    noisy = labels.astype(np.float32) + np.where(labels > 0, -1e-4, 0).astype(np.float32)
    np.testing.assert_array_equal(integer_labels(noisy), labels)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(noisy, img.affine, header), str(tmp_path / "noisy_seg.nii.gz"))
    args = ["--frames", "2", "--seed", "1", "--device", "cpu", "-q"]
    assert laugen(["generate", str(SAMPLE_IMAGE), str(tmp_path / "noisy_seg.nii.gz"), "-o", str(tmp_path / "a"),
                   *args]) == 0
    assert laugen(["generate", str(SAMPLE_IMAGE), str(SAMPLE_MASK), "-o", str(tmp_path / "b"), *args]) == 0
    for name in ("image_series.nii.gz", "mask_series.nii.gz"):
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "a" / name)).dataobj),
                                      np.asarray(nib.load(str(tmp_path / "b" / name)).dataobj))
    half = labels.astype(np.float32)
    half[tuple(np.argwhere(labels > 0)[:7].T)] = 0.5
    nib.save(nib.Nifti1Image(half, img.affine, header), str(tmp_path / "half_seg.nii.gz"))
    capsys.readouterr()
    assert laugen(["generate", str(SAMPLE_IMAGE), str(tmp_path / "half_seg.nii.gz"), "-o", str(tmp_path / "c"),
                   *args]) == 2
    err = capsys.readouterr().err
    assert "must hold integer values: 7 voxels are not whole numbers (e.g. 0.5)" in err and "nearest" in err
    assert not (tmp_path / "c").exists()


def test_the_napari_reader_rounds_float_labels_and_never_truncates(tmp_path):
    """A float mask holding 0.9999 and 2.0001 opens as Labels 1 and 2 (a cast would truncate 0.9999
    to background), named or not; a fractional map stays an image."""
    from laugen_napari.ui import io_hooks

    img = nib.load(str(SAMPLE_MASK))
    labels = np.asarray(img.dataobj)
    noisy = labels.astype(np.float32) + np.where(labels == 1, -1e-4, np.where(labels == 2, 1e-4, 0)).astype(np.float32)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    for name in ("noisy_seg.nii.gz", "noisy.nii.gz"):
        nib.save(nib.Nifti1Image(noisy, img.affine, header), str(tmp_path / name))
        data, _, kind = io_hooks.read_nifti(str(tmp_path / name))[0]
        assert kind == "labels" and data.dtype.kind in "ui", name
        np.testing.assert_array_equal(data, load_volume(SAMPLE_MASK).data)
    nib.save(nib.Nifti1Image(noisy * np.float32(0.37), img.affine, header), str(tmp_path / "fraction_seg.nii.gz"))
    assert io_hooks.read_nifti(str(tmp_path / "fraction_seg.nii.gz"))[0][2] == "image"


def test_the_library_and_the_export_dock_say_a_folder_is_not_writable(sample_pair, tmp_path):
    """generate_to_directory (what the export dock calls) says that /proc is not writable, not that
    it has no free space; a file in the way is named as such."""
    import pytest

    from laugen_napari.pipeline import generate_to_directory
    from laugen_napari.settings import GenerationSettings

    image, mask = sample_pair
    options = GenerationSettings(frames=2, device="cpu")
    with pytest.raises(Exception, match="not writable") as info:
        generate_to_directory(image, mask, "/proc/laugen_out", options)
    assert "free" not in str(info.value)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(Exception, match="not a directory|is a file"):
        generate_to_directory(image, mask, tmp_path / "a_file", options)


def test_big_endian_files_and_arrays_give_the_same_series(tmp_path, sample_arrays):
    """A big-endian NIfTI file (older tools, other machines) reads and warps as the native one;
    torch itself takes native byte order only, so the engine converts on the way in."""
    img, seg = nib.load(str(SAMPLE_IMAGE)), nib.load(str(SAMPLE_MASK))
    box = (slice(55, 135), slice(60, 150), slice(45, 125))
    data, labels = np.asarray(img.dataobj)[box], np.asarray(seg.dataobj)[box].astype(np.int16)
    for name, array, ref in (("img", data, img), ("seg", labels, seg)):
        for order in ("<", ">"):
            header = nib.Nifti1Header(endianness=order)
            header.set_data_dtype(array.dtype)
            out = nib.Nifti1Image(array.astype(array.dtype.newbyteorder(order)), ref.affine, header)
            out.to_filename(str(tmp_path / f"{name}{order == '>' and '_be' or ''}.nii"))
    assert nib.load(str(tmp_path / "img_be.nii")).header.endianness == ">"
    vol = load_volume(tmp_path / "img_be.nii")
    assert vol.data.dtype.byteorder in "=|" and np.array_equal(vol.data, load_volume(tmp_path / "img.nii").data)
    args = ["--frames", "3", "--slope-range", "1", "1", "--seed", "2", "--device", "cpu", "-q"]
    assert laugen(["generate", str(tmp_path / "img_be.nii"), str(tmp_path / "seg_be.nii"), "-o", str(tmp_path / "be"),
                   *args]) == 0
    assert laugen(["generate", str(tmp_path / "img.nii"), str(tmp_path / "seg.nii"), "-o", str(tmp_path / "le"), *args]) == 0
    for part in ("image_series.nii.gz", "mask_series.nii.gz"):
        a = np.asarray(nib.load(str(tmp_path / "be" / part)).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "le" / part)).dataobj)
        assert a.shape[-1] == 3 and np.array_equal(a, b)
    assert not np.array_equal(a[..., 0], a[..., 2])  # the series moves
    # arrays handed to the library directly (e.g. a napari layer from another reader)
    image, lab, spacing = sample_arrays
    image, lab = image[box[::-1]], lab[box[::-1]]
    native = Augmenter(image, lab, spacing, sigma_mm=4.0, device="cpu").warper.warp(1.5)
    swapped = Augmenter(image.astype(image.dtype.newbyteorder(">")), lab.astype(">i2"), spacing, sigma_mm=4.0,
                        device="cpu").warper.warp(1.5)
    assert np.array_equal(native[0].numpy(), swapped[0].numpy())
    assert np.array_equal(native[1].numpy(), swapped[1].numpy())


def test_a_header_in_microns_or_metres_gives_spacing_in_mm(tmp_path):
    """NIfTI affines are in the header's spatial unit: a file declaring microns (microscopy tools)
    or metres holds the same 1 mm grid as the mm file, and gives the same series."""
    img, seg = nib.load(str(SAMPLE_IMAGE)), nib.load(str(SAMPLE_MASK))
    box = (slice(55, 135), slice(60, 150), slice(45, 125))
    data, labels = np.asarray(img.dataobj)[box], np.asarray(seg.dataobj)[box]
    paths = {}
    for unit, scale in (("mm", 1.0), ("micron", 1000.0), ("meter", 0.001)):
        affine = img.affine.copy()
        affine[:3, :] *= scale
        for name, array in (("img", data), ("seg", labels)):
            out = nib.Nifti1Image(array, affine)
            out.header.set_xyzt_units(unit, "sec")
            paths[unit, name] = tmp_path / f"{name}_{unit}.nii.gz"
            out.to_filename(str(paths[unit, name]))
    reference = load_volume(paths["mm", "img"])
    for unit in ("micron", "meter"):
        vol = load_volume(paths[unit, "img"])
        np.testing.assert_allclose(vol.spacing, reference.spacing, rtol=1e-6)  # the header stores float32
        np.testing.assert_allclose(vol.affine, reference.affine, rtol=1e-6, atol=1e-4)
    args = ["--frames", "3", "--slope-range", "1", "1", "--seed", "2", "--device", "cpu", "-q"]
    series = {}
    for unit in ("mm", "micron"):
        out = tmp_path / f"out_{unit}"
        assert laugen(["generate", str(paths[unit, "img"]), str(paths[unit, "seg"]), "-o", str(out), *args]) == 0
        written = nib.load(str(out / "image_series.nii.gz"))
        assert written.header.get_xyzt_units()[0] == unit  # written in the file's own unit
        np.testing.assert_allclose(written.affine, nib.load(str(paths[unit, "img"])).affine)
        series[unit] = np.asarray(written.dataobj)
    assert np.array_equal(series["mm"], series["micron"])
    assert not np.array_equal(series["mm"][..., 0], series["mm"][..., 2])


def test_flipped_views_absurd_sigma_and_values_beyond_float32(sample_arrays, tmp_path):
    """Arrays flipped with a negative stride (``a[::-1]``, which torch refuses to share) give the
    flipped series; a sigma of impossibly many voxels (a voxel size in the wrong unit) and finite
    values that float32 frames cannot hold are one clear error, never numpy's size error, a
    MemoryError or frames full of inf."""
    image, labels, spacing = sample_arrays
    box = (slice(40, 120), slice(60, 160), slice(50, 140))
    image, labels = image[box], labels[box]
    forward = Augmenter(image, labels, spacing, sigma_mm=4.0, device="cpu").warper.warp(1.5)
    flipped = Augmenter(image[::-1, :, ::-1], labels[::-1, :, ::-1], spacing, sigma_mm=4.0, device="cpu").warper.warp(1.5)
    assert np.array_equal(flipped[1].numpy()[::-1, :, ::-1], forward[1].numpy())
    np.testing.assert_allclose(flipped[0].numpy()[::-1, :, ::-1], forward[0].numpy(), atol=2e-3)  # float32 round-off
    z = int(np.argmax(np.count_nonzero(labels, axis=(1, 2))))
    one = np.ascontiguousarray(labels[z : z + 1])  # a flipped axis of one voxel keeps its negative stride in numpy
    assert Augmenter(image[z : z + 1][::-1], one[::-1], spacing, sigma_mm=4.0, device="cpu").warper.n_moving > 0
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[3:5, 3:5, 3:5] = 1
    for args, kwargs, words in (
        ((mask.astype(np.float32), mask, (1e-30, 1, 1)), {}, "voxels of 1e-30 mm"),
        ((mask.astype(np.float32), mask, (1, 1, 1)), {"sigma_mm": 1e9}, "100x the image's extent"),
        ((mask * 1e39, mask, (1, 1, 1)), {}, "beyond float32's range"),
    ):
        with pytest.raises(ValueError, match=words):
            Augmenter(*args, device="cpu", **kwargs)
    big = mask * 1e38  # within float32's range: accepted and finite in every frame
    frame = Augmenter(big, mask, (1, 1, 1), sigma_mm=2.0, device="cpu").warper.warp(0.8)[0]
    assert bool(torch.isfinite(frame).all())
    assert laugen(["generate", str(SAMPLE_IMAGE), str(SAMPLE_MASK), "-o", str(tmp_path / "o"), "--sigma-mm", "1e9",
                   "-q"]) == 2
    assert not (tmp_path / "o").exists()


def test_float_labels_beyond_int32_keep_their_values():
    """A float label map holding 2^40 (a hashed or encoded label) used to wrap to -2^31 in int32;
    it stays 2^40 (int64), and beyond 2^53, where a float holds no longer every whole number, it
    is refused."""
    from laugen_napari.core.labels import integer_labels

    mask = np.zeros((10, 12, 14), np.float64)
    mask[3:7, 4:8, 5:9] = 2.0**40
    mask[4:6, 5:7, 6:8] = 3.0
    out = integer_labels(mask)
    assert out.dtype == np.int64 and np.array_equal(out, mask.astype(np.int64))
    assert integer_labels(np.array([0.0, 7.0])).dtype == np.int32
    aug = Augmenter(mask.astype(np.float32), mask, (1, 1, 1), sigma_mm=2.0, device="cpu")
    assert aug.label_values == [3, 2**40]
    series = aug.series_from_values(CustomTrajectory([0.0, 1.0]).sample(2))
    assert np.array_equal(series.labels[0], mask.astype(np.int64))
    with pytest.raises(ValueError, match="beyond 2"):
        integer_labels(np.array([0.0, 2.0**60]))


def test_a_structure_filling_the_whole_image_is_refused(tmp_path):
    """A label map with no background (all voxels labelled, e.g. an offset of 1 in the header) has
    no boundary: its blur is constant and its gradient float round-off, which normalising turned
    into a random field that folded. Refused in one line, from the library and the CLI."""
    rng = np.random.default_rng(0)
    labels = np.ones((30, 30, 30), np.uint8)
    labels[:, :, 15:] = 2
    image = rng.random(labels.shape).astype(np.float32)
    with pytest.raises(ValueError, match="fills the whole image"):
        Augmenter(image, labels, (1, 1, 1), sigma_mm=3.0, device="cpu")
    aug = Augmenter(image, labels, (1, 1, 1), selected=[2], sigma_mm=3.0, device="cpu")  # one label: a boundary
    assert aug.warper.n_moving > 0 and aug.jacobian.minimum(1.0) > 0
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.Nifti1Image(image, affine).to_filename(str(tmp_path / "img.nii.gz"))
    nib.Nifti1Image(labels, affine).to_filename(str(tmp_path / "seg.nii.gz"))
    assert laugen(["generate", str(tmp_path / "img.nii.gz"), str(tmp_path / "seg.nii.gz"), "-o", str(tmp_path / "o"),
                   "-q"]) == 2
    assert not (tmp_path / "o").exists()
