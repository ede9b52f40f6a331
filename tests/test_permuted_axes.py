"""Files that store their voxel axes in another order than (R, A, S) — a sagittal scan stored as
PIR or ASL, a coronal one as LSA — are read, generated and written back in their own layout: the
series' header holds the file's shape, frame 0 is the input, and the structure moves in the world
exactly as it does for the same scan stored RAS."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from laugen_napari.cli import main as laugen
from laugen_napari.io.nifti import load_volume, open_series_writer, save_volume

from .conftest import SAMPLE_IMAGE, SAMPLE_MASK

CROP = (slice(62, 134), slice(84, 164), slice(66, 106))  # around the ventricles, in the sample's (i, j, k)


def _store(tmp_path, name: str, order: tuple[int, int, int], flips: tuple[bool, bool, bool] = (False, False, False),
           rotate_deg: float = 0.0):
    """The cropped sample (image and labels) stored with its voxel axes permuted by ``order`` and
    flipped by ``flips``, same world positions (optionally the whole grid rotated about z)."""
    img, seg = nib.load(str(SAMPLE_IMAGE)), nib.load(str(SAMPLE_MASK))
    start = np.array([s.start for s in CROP])
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ start + img.affine[:3, 3]
    if rotate_deg:
        c, s = np.cos(np.radians(rotate_deg)), np.sin(np.radians(rotate_deg))
        affine = np.diag([1.0, 1, 1, 1]) @ affine
        affine[:3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3]
    paths = []
    for suffix, src in (("t1", img), ("seg", seg)):
        data = np.asarray(src.dataobj)[CROP]
        a = affine.copy()
        for axis, flip in enumerate(flips):
            if flip:
                n = data.shape[axis]
                data = np.flip(data, axis)
                a[:3, 3] = a[:3, 3] + a[:3, axis] * (n - 1)
                a[:3, axis] = -a[:3, axis]
        data = np.ascontiguousarray(np.transpose(data, order))
        a[:3, :3] = a[:3, :3][:, list(order)]
        out = tmp_path / f"{name}_{suffix}.nii.gz"
        nib.save(nib.Nifti1Image(data, a), str(out))
        paths.append(out)
    return paths


@pytest.mark.parametrize("order", [o for o in itertools.permutations(range(3)) if o != (0, 1, 2)])
def test_the_streamed_series_is_the_saved_one_for_every_axis_order(tmp_path, order):
    image, _ = _store(tmp_path, "p", order, flips=(True, False, True))
    ref = load_volume(image)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 1000, size=(3,) + ref.spatial_shape).astype(np.int16)
    with open_series_writer(tmp_path / "streamed.nii.gz", ref, 3, np.int16) as writer:
        for frame in frames:
            writer.write(frame)
    save_volume(tmp_path / "saved.nii.gz", frames, ref)
    streamed, saved = nib.load(str(tmp_path / "streamed.nii.gz")), nib.load(str(tmp_path / "saved.nii.gz"))
    assert streamed.shape == saved.shape == nib.load(str(image)).shape + (3,)
    assert streamed.header.binaryblock == saved.header.binaryblock
    assert np.asarray(streamed.dataobj).tobytes() == np.asarray(saved.dataobj).tobytes()
    np.testing.assert_array_equal(load_volume(tmp_path / "streamed.nii.gz").data, frames)


@pytest.mark.parametrize("order,flips,rotate", [((2, 0, 1), (False, False, False), 0.0),  # stored S, R, A
                                               ((1, 2, 0), (True, True, False), 0.0),   # P, I, L-ish
                                               ((2, 1, 0), (False, True, False), 20.0)])  # oblique as well
def test_generate_on_a_permuted_file_matches_the_ras_file_in_the_world(tmp_path, order, flips, rotate):
    ras = _store(tmp_path, "ras", (0, 1, 2), rotate_deg=rotate)
    perm = _store(tmp_path, "perm", order, flips, rotate_deg=rotate)
    args = ["--frames", "3", "--slope-range", "1.5", "1.5", "--sigma-mm", "3", "--seed", "2", "--device", "cpu", "-q",
            "--kind", "directional", "--direction", "0", "0.3", "1"]
    for name, (image, mask) in (("ras", ras), ("perm", perm)):
        assert laugen(["generate", str(image), str(mask), "-o", str(tmp_path / f"out_{name}"), *args]) == 0
    for role, src in (("image", perm[0]), ("mask", perm[1])):
        out = nib.load(str(tmp_path / "out_perm" / f"{role}_series.nii.gz"))
        inp = nib.load(str(src))
        assert out.shape == inp.shape + (3,)
        np.testing.assert_allclose(out.affine, inp.affine, atol=1e-5)
        data = np.asarray(out.dataobj)
        np.testing.assert_array_equal(data[..., 0], np.asarray(inp.dataobj))  # frame 0 is the input
        assert np.any(data[..., 2] != data[..., 0])
        # the same world growth as the RAS file: equal after both are brought to RAS
        a = load_volume(tmp_path / "out_perm" / f"{role}_series.nii.gz").data
        b = load_volume(tmp_path / "out_ras" / f"{role}_series.nii.gz").data
        if role == "mask":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, atol=1e-3 * float(np.abs(b).max()))


def test_a_mask_storing_the_same_grid_in_another_voxel_order_is_accepted(tmp_path):
    """The image stored RAS, its mask stored (S, P, R) with flips (as ITK tools write LPS): the same
    grid, so `laugen generate` accepts it; each series is written in its own file's layout, and in
    the world both equal the run on the RAS pair. A mask one voxel off is still refused."""
    image, mask = _store(tmp_path, "ras", (0, 1, 2))
    _, other_mask = _store(tmp_path, "perm", (2, 1, 0), flips=(True, True, False))
    args = ["--frames", "3", "--slope-range", "1.5", "1.5", "--seed", "5", "--device", "cpu", "-q"]
    assert laugen(["generate", str(image), str(mask), "-o", str(tmp_path / "same"), *args]) == 0
    assert laugen(["generate", str(image), str(other_mask), "-o", str(tmp_path / "mixed"), *args]) == 0
    for role in ("image", "mask"):
        np.testing.assert_array_equal(load_volume(tmp_path / "mixed" / f"{role}_series.nii.gz").data,
                                      load_volume(tmp_path / "same" / f"{role}_series.nii.gz").data)
    written = nib.load(str(tmp_path / "mixed" / "mask_series.nii.gz"))
    assert written.shape == nib.load(str(other_mask)).shape + (3,)
    np.testing.assert_allclose(written.affine, nib.load(str(other_mask)).affine, atol=1e-5)
    # one voxel off in the world: refused as before
    shifted = nib.load(str(other_mask))
    moved = shifted.affine.copy()
    moved[:3, 3] += moved[:3, 0]
    nib.save(nib.Nifti1Image(np.asarray(shifted.dataobj), moved), str(tmp_path / "moved_seg.nii.gz"))
    assert laugen(["generate", str(image), str(tmp_path / "moved_seg.nii.gz"), "-o", str(tmp_path / "no"),
                   *args]) == 2
    assert not (tmp_path / "no").exists()
