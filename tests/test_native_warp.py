"""The compiled warp (core/native/warp.c) against the torch code it replaces (core/warp.py).

The torch path stays the reference: every test runs the same Warper or Augmenter twice, with
LAUGEN_NATIVE=1 and =0 (``native.library()`` reads the variable again), checks that the compiled
loop really ran the first time and not the second (a spy on ``warp._run_native``), and compares.
Images are compared within 1e-5 relative (bit-identical on the machine the kernel was written on;
the margin lets a CPU without FMA pass); labels must be identical. Data: the shipped sample cropped
around the ventricles, plus synthetic fields and label maps for the edge cases (3+ labels in a
cell, exact ties, the value 255, one plane, an axis of two voxels, volumes over 2^31 voxels).
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from laugen_napari.core import Augmenter, CustomTrajectory, UnitField, Warper, native, unit_field
from laugen_napari.core import warp as warp_mod

_RUN_NATIVE = warp_mod._run_native  # the module's own (tests patch the attribute)

BOX = (slice(64, 108), slice(78, 170), slice(60, 136))  # around both lateral ventricles (z 71-100, y 85-163, x 67-129)
SIGMA = 3.0
Z_VALUES = (2.5, -1.7, 1e-4, -12.0, 20.0)  # grow, shrink, tiny, far enough to be clamped at the crop's faces
IMAGE_DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float32, np.float64)
LABEL_DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64)


# -- helpers -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crop(sample_arrays):
    image, labels, spacing = sample_arrays
    return image[BOX].copy(), labels[BOX].copy(), spacing


@pytest.fixture(scope="module")
def crop_field(crop):
    _, labels, spacing = crop
    return unit_field(labels > 0, spacing, SIGMA, "cpu")


@pytest.fixture(scope="module")
def inner_field(crop_field):
    """The crop's field cut to 8 voxels from every face: small magnitudes sample inside the volume
    (the cells need no clamping), large ones beyond its faces."""
    m = 8
    roi = tuple(slice(m, n - m) for n in crop_field.shape)
    return UnitField(crop_field.shape, crop_field.spacing, roi, crop_field.mm[:, m:-m, m:-m, m:-m].contiguous())


class _Calls(list):
    """The voxel count of every call of the compiled loop; ``pointers``: its (image_out, labels_out)."""

    def __init__(self):
        super().__init__()
        self.pointers: list[tuple[int | None, int | None]] = []


@pytest.fixture
def spy(monkeypatch):
    """The calls of the compiled loop (a list of voxel counts, appended to per call)."""
    calls = _Calls()
    real = warp_mod._run_native

    def counting(lib, args, n):
        calls.append(n)
        calls.pointers.append((args.image_out, args.labels_out))
        return real(lib, args, n)

    monkeypatch.setattr(warp_mod, "_run_native", counting)
    return calls


def _native_and_torch(monkeypatch, spy, make):
    """``make()`` with the compiled loop, then with the torch code; checks which one ran."""
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    before = len(spy)
    got = make()
    assert len(spy) > before, "the compiled loop did not run"
    monkeypatch.setenv("LAUGEN_NATIVE", "0")
    before = len(spy)
    ref = make()
    assert len(spy) == before, "the compiled loop ran with LAUGEN_NATIVE=0"
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    return got, ref


def _assert_image_equal(a, b):
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    scale = float(b.abs().max()) or 1.0
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


def _assert_labels_equal(a, b):
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    assert a.dtype == b.dtype and a.shape == b.shape
    differ = int((a != b).sum())
    assert differ == 0, f"{differ} labels differ between the compiled loop and the torch code"


def _assert_frames_equal(got, ref):
    """(image, labels or None, moving or None) of Warper.warp, compiled vs torch."""
    _assert_image_equal(got[0], ref[0])
    for a, b in zip(got[1:], ref[1:]):
        assert (a is None) == (b is None)
        if a is not None:
            _assert_labels_equal(a, b)


def _random_field(shape, seed, scale=1.0, roi=None, spacing=(1.0, 1.0, 1.0)):
    """A UnitField with a random displacement (uniform in +-scale mm per component) over ``roi``."""
    g = torch.Generator().manual_seed(seed)
    roi = roi or tuple(slice(0, n) for n in shape)
    size = tuple(r.stop - r.start for r in roi)
    mm = (torch.rand((3,) + size, generator=g) * 2 - 1) * scale
    return UnitField(tuple(shape), tuple(spacing), roi, mm)


def _corner_labels(w: Warper, z: float) -> torch.Tensor:
    """The 8 corner labels (8, P) of every moving voxel's interpolation cell at magnitude ``z``."""
    base, _ = w._cells(w._coords(z), w._inside(z))
    return w._gather(w._label_corners, base)


def _labels_per_cell(corners: torch.Tensor) -> torch.Tensor:
    """The number of distinct labels (P,) among the 8 corners of each cell."""
    s = corners.sort(0).values
    return 1 + (s[1:] != s[:-1]).sum(0)


def _split_labels(labels: np.ndarray) -> np.ndarray:
    """The sample's two ventricles cut into four labels, so that 3 labels (with 0) meet in cells."""
    out = labels.copy()
    z, _, x = np.indices(labels.shape)
    out[(labels == 1) & (x < 30)] = 3
    out[(labels == 2) & (z > 22)] = 4
    return out


# -- 1. the library ------------------------------------------------------------------------------
def test_the_library_builds_and_loads_here(monkeypatch):
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    lib = native.library()
    assert lib is not None, native.status()
    assert lib.laugen_warp_abi() == native.ABI
    line = native.status()
    assert line.startswith("compiled kernels") and ("loaded from" in line or "built in" in line), line
    assert native.built()
    assert native.library() is lib  # kept for the process


# -- 2. equality, every dtype ---------------------------------------------------------------------
@pytest.mark.parametrize("image_dtype", IMAGE_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_image_and_label_dtype_gives_the_torch_frames(crop, inner_field, spy, monkeypatch, image_dtype):
    image, labels, _ = crop
    values = {np.uint8: image, np.int8: image - 128, np.int16: image * 97 - 9000, np.int32: image * 1e6 - 7e7,
              np.int64: image * 3e15 + 2**40, np.float32: image * 0.37 + 1e-3, np.float64: image * 1.3e-7 - 2e-6}
    img = values[image_dtype].astype(image_dtype)
    lab3 = _split_labels(labels)
    for label_dtype in LABEL_DTYPES:
        lab = lab3.astype(label_dtype)
        w = Warper(inner_field, img, lab)
        assert w._native_ok
        for z in Z_VALUES:
            got, ref = _native_and_torch(monkeypatch, spy, lambda: w.warp(z))
            _assert_frames_equal(got, ref)
            if abs(z) > 1:  # a real move: the frame differs from the input
                assert int((got[1] != torch.from_numpy(lab)).sum()) > 1000
                assert int((got[0] != torch.from_numpy(img.astype(np.float32))).sum()) > 10000
    assert w._inside(2.5) and w._inside(-1.7) and not w._inside(-12.0)  # unclamped and clamped cells both ran
    coords = w._coords(-12.0)
    assert bool((coords < 0).any()) and bool((coords > w._max_coord).any())  # positions beyond both faces


def test_a_structure_cut_by_the_image_edge_with_two_channels(sample_arrays, spy, monkeypatch):
    """The ventricles cut by the y = 0 face, moved far (positions beyond every face, clamped), with a
    (C, Z, Y, X) image: every channel equals the torch path's."""
    image, labels, spacing = sample_arrays
    box = (slice(64, 108), slice(124, 170), slice(60, 136))
    lab = labels[box].copy()
    assert lab[:, 0].any()  # the structure touches the cut face
    img = np.stack([image[box], 255.0 - image[box], image[box] ** 2]).astype(np.float32)
    w = Warper(unit_field(lab > 0, spacing, SIGMA, "cpu"), img, lab)
    for z in (15.0, -15.0, 4.0):
        got, ref = _native_and_torch(monkeypatch, spy, lambda: w.warp(z))
        assert got[0].shape == img.shape
        _assert_frames_equal(got, ref)
        for c in range(3):  # each channel is sampled on its own (a wrong channel stride mixes them)
            _assert_image_equal(got[0][c], Warper(w.field, img[c], lab).warp(z)[0])
    assert not w._inside(15.0)
    assert bool((w._coords(15.0) < 0).any())


def test_three_labels_in_one_cell_vote_as_the_torch_code(crop, crop_field, spy, monkeypatch):
    image, labels, _ = crop
    lab = _split_labels(labels)
    for dtype in (np.uint8, np.int16):  # with cell codes, and without
        w = Warper(crop_field, image, lab.astype(dtype))
        for z in (2.5, -1.7, 7.0):
            many = int((_labels_per_cell(_corner_labels(w, z)) >= 3).sum())
            assert many > 20, many  # cells where 0 and two ventricle labels meet: the scored vote
            got, ref = _native_and_torch(monkeypatch, spy, lambda: w.moving_labels(z))
            _assert_labels_equal(got, ref)
        assert w._codes_ok == (dtype == np.uint8)


def test_random_label_maps_and_exact_ties(spy, monkeypatch):
    """Every cell mixed (random labels, 3-6 per cell), random fields; big-endian arrays; then a
    field of exactly half a voxel on every axis (every corner weighs 1/8: exact ties, the first
    corner wins)."""
    rng = np.random.default_rng(7)
    for shape, labels_count, dtype in (((13, 11, 7), 6, np.int8), ((9, 2, 17), 4, np.uint8), ((5, 6, 7), 5, np.int64)):
        lab = rng.integers(-2 if dtype != np.uint8 else 0, labels_count, shape).astype(dtype)
        img = rng.normal(0, 1000, shape).astype(np.float32)
        w = Warper(_random_field(shape, 3, 2.0), img, lab)
        for z in (0.7, -1.3, 5.5):
            assert int((_labels_per_cell(_corner_labels(w, z)) >= 3).sum()) > w.n_moving // 4
            got, ref = _native_and_torch(monkeypatch, spy, lambda: w.warp(z))
            _assert_frames_equal(got, ref)
    # arrays in the other byte order (a big-endian file): taken in native order, the same frames
    shape = (13, 11, 7)
    lab = rng.integers(0, 5, shape).astype(">i4")
    img = rng.normal(0, 1000, shape).astype(">f8")
    w = Warper(_random_field(shape, 4, 2.0), img, lab)
    got, ref = _native_and_torch(monkeypatch, spy, lambda: w.warp(1.7))
    _assert_frames_equal(got, ref)
    native_order = Warper(w.field, img.astype("<f8"), lab.astype("<i4")).warp(1.7)
    _assert_frames_equal(got, native_order)
    shape = (8, 9, 10)
    half = UnitField(shape, (1.0, 1.0, 1.0), tuple(slice(0, n) for n in shape), torch.full((3,) + shape, 0.5))
    lab = rng.integers(0, 4, shape).astype(np.uint8)
    w = Warper(half, rng.normal(0, 1, shape).astype(np.float32), lab)
    got, ref = _native_and_torch(monkeypatch, spy, lambda: w.warp(1.0))
    _assert_frames_equal(got, ref)
    # interior cells (not clamped): all fractions are 0.5, so a label's score is 1/8 per corner;
    # the winner is the label of the most corners, the first corner's among equals
    corners = _corner_labels(w, 1.0)
    inner = (w.positions < torch.tensor(shape) - 1).all(1)
    counts = torch.stack([(corners == corners[k]).sum(0) for k in range(8)])  # (8, P)
    best = counts.max(0).values
    first_best = (counts == best).to(torch.int8).argmax(0)
    expected = corners.gather(0, first_best.view(1, -1)).squeeze(0)
    assert torch.equal(got[2][inner], expected[inner])
    assert int(((counts == best).sum(0) > best)[inner].sum()) > 50  # real ties: two labels with equal counts


def test_labels_holding_255_and_nearest_labels(crop, crop_field, spy, monkeypatch):
    image, labels, _ = crop
    lab = _split_labels(labels)
    lab[lab == 4] = 255  # uint8: 255 is the code of mixed cells, so codes are off
    w = Warper(crop_field, image, lab)
    assert not w._ensure_codes(2.5)
    for z in (2.5, -1.7):
        got, ref = _native_and_torch(monkeypatch, spy, lambda: w.warp(z))
        _assert_frames_equal(got, ref)
        assert 255 in got[2].unique().tolist()
    for dtype in (np.uint8, np.int32):
        lab = _split_labels(labels).astype(dtype)
        w = Warper(crop_field, image, lab, label_interpolation="nearest")
        for z in (2.5, -1.7, 12.0, 0.3):
            got, ref = _native_and_torch(monkeypatch, spy, lambda: w.warp(z))
            _assert_frames_equal(got, ref)
            if abs(z) > 1:
                assert int((got[1] != torch.from_numpy(lab)).sum()) > 100


def test_one_plane_and_an_axis_of_two_voxels(crop, spy, monkeypatch):
    """A 2D image as Z = 1 (every corner pair along z is the same voxel), two planes (the cell's
    lower corner is always 0 on that axis), and an axis of two voxels in a random field."""
    image, labels, spacing = crop
    for planes in (slice(20, 21), slice(20, 22)):
        img, lab = image[planes].copy(), _split_labels(labels)[planes].copy()
        w = Warper(unit_field(lab > 0, spacing, SIGMA, "cpu"), img, lab)
        assert w.field.shape[0] == planes.stop - planes.start
        for z in (3.0, -2.0, 9.0):
            got, ref = _native_and_torch(monkeypatch, spy, lambda: w.warp(z))
            _assert_frames_equal(got, ref)
            assert int((got[1] != torch.from_numpy(lab)).sum()) > 20
    rng = np.random.default_rng(3)
    for shape in ((9, 2, 17), (2, 2, 2), (1, 23, 31)):
        lab = rng.integers(0, 4, shape).astype(np.int16)
        img = rng.normal(0, 1, (2,) + shape).astype(np.float64)
        w = Warper(_random_field(shape, 5, 2.0), img, lab)
        for z in (0.7, -1.3, 5.5):
            got, ref = _native_and_torch(monkeypatch, spy, lambda: w.warp(z))
            _assert_frames_equal(got, ref)


# -- 3. every entry point ------------------------------------------------------------------------
def test_every_warper_entry_point(crop, crop_field, spy, monkeypatch):
    image, labels, _ = crop
    lab = _split_labels(labels)
    w = Warper(crop_field, image, lab)
    z = 3.3
    monkeypatch.setenv("LAUGEN_NATIVE", "0")
    ref_img, ref_lab, ref_moving = w.warp(z)
    assert not spy

    def with_buffers():
        img_out, lab_out = torch.full(image.shape, -1.0), torch.full(lab.shape, 9, dtype=torch.uint8)
        frame = w.warp(z, img_out, lab_out)
        assert frame[0].data_ptr() == img_out.data_ptr() and frame[1].data_ptr() == lab_out.data_ptr()
        return frame

    def image_only_buffer():
        return w.warp(z, image_out=torch.full(image.shape, -1.0))

    def frames():
        out = torch.full(image.shape, -1.0)
        into = w.image_frame(z, out=out)
        assert into.data_ptr() == out.data_ptr()
        lab_out = torch.full(lab.shape, 9, dtype=torch.uint8)
        assert w.label_frame(z, out=lab_out).data_ptr() == lab_out.data_ptr()
        return w.image_frame(z), into, w.label_frame(z), lab_out, w.moving_labels(z)

    for make in (lambda: w.warp(z), with_buffers, image_only_buffer):
        got, again = _native_and_torch(monkeypatch, spy, make)
        _assert_frames_equal(got, again)
        _assert_frames_equal(got, (ref_img, ref_lab, ref_moving))
    got, again = _native_and_torch(monkeypatch, spy, frames)
    for g, a in zip(got, again):
        (_assert_image_equal if g.dtype == torch.float32 else _assert_labels_equal)(g, a)
    for g in got[:2]:
        _assert_image_equal(g, ref_img)
    for g in got[2:4]:
        _assert_labels_equal(g, ref_lab)
    _assert_labels_equal(got[4], ref_moving)
    # the magnitude 0 is the input, without the compiled loop
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    before = len(spy)
    frame = w.warp(0.0)
    assert len(spy) == before
    _assert_image_equal(frame[0], torch.from_numpy(image))
    _assert_labels_equal(frame[1], torch.from_numpy(lab))


def _series(aug: Augmenter, values):
    return aug.series_from_values(CustomTrajectory(values).sample(len(values)))


def test_augmenter_series_and_stream_with_uint16_labels_and_two_channels(crop, spy, monkeypatch):
    image, labels, spacing = crop
    lab = (_split_labels(labels).astype(np.uint16) * 1000)  # uint16 becomes int32 in the engine
    img = np.stack([image, image[::-1].copy()]).astype(np.int16)
    aug = Augmenter(img, lab, spacing, sigma_mm=SIGMA, device="cpu")
    assert aug.warper.labels.dtype == torch.int32 and aug.warper._native_ok
    values = [0.0, 1.2, 2.9, -0.8, 6.0]
    got, ref = _native_and_torch(monkeypatch, spy, lambda: _series(aug, values))
    assert spy[-1] == aug.warper.n_moving and len(spy) == len(values) - 1  # frame 0 is the input
    assert got.labels.dtype == np.uint16 and got.images.shape == (len(values),) + img.shape
    _assert_image_equal(got.images, ref.images)
    _assert_labels_equal(got.labels, ref.labels)
    assert got.volumes_ml == ref.volumes_ml and got.jacobian_min == ref.jacobian_min
    assert got.volumes_ml[3000][2] != got.volumes_ml[3000][0]  # the volumes move

    def stream():
        draw = CustomTrajectory(values).sample(len(values))
        return [(f.image.copy(), f.labels.copy(), f.volumes_ml) for f in aug.iter_frames(draw)]

    streamed, streamed_ref = _native_and_torch(monkeypatch, spy, stream)
    for t, ((a_img, a_lab, a_vol), (b_img, b_lab, b_vol)) in enumerate(zip(streamed, streamed_ref)):
        _assert_image_equal(a_img, b_img)
        _assert_labels_equal(a_lab, b_lab)
        _assert_labels_equal(a_lab, got.labels[t])
        assert a_vol == b_vol
        assert a_lab.dtype == np.uint16


# -- 4. threads ----------------------------------------------------------------------------------
def test_two_threads_give_the_frames_of_one(crop, crop_field, spy, monkeypatch):
    image, labels, _ = crop
    lab = _split_labels(labels)
    w = Warper(crop_field, np.stack([image, -image]), lab)
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [w.warp(z) for z in (2.5, -1.7, 12.0)]
        torch.set_num_threads(2)
        monkeypatch.setattr(warp_mod, "NATIVE_SPLIT", 4099)  # 149290 // 4099 = 36 >= 2: two threads
        monkeypatch.setattr(warp_mod, "_pool", None)
        assert w.n_moving % 2 == 0 and warp_mod._threads_for(w.n_moving) == 2
        two = [w.warp(z) for z in (2.5, -1.7, 12.0)]
        assert warp_mod._pool is not None and warp_mod._pool[0] == os.getpid()  # the pool ran them
        for a, b in zip(one, two):
            _assert_frames_equal(b, a)
            assert torch.equal(a[0], b[0])  # the same arithmetic per voxel: bit-identical
        # an odd count (the split at n // 2 is not a multiple of the chunk)
        odd = Warper(_random_field((13, 11, 7), 1, 2.0, roi=(slice(0, 13), slice(0, 11), slice(0, 7))),
                     np.arange(1001, dtype=np.float32).reshape(13, 11, 7), (np.arange(1001) % 5).reshape(13, 11, 7))
        monkeypatch.setattr(warp_mod, "NATIVE_SPLIT", 300)
        assert odd.n_moving == 1001 and warp_mod._threads_for(odd.n_moving) == 2
        got, ref = _native_and_torch(monkeypatch, spy, lambda: odd.warp(2.2))
        _assert_frames_equal(got, ref)
    finally:
        torch.set_num_threads(old)


def test_chunk_boundaries_and_refused_ranges(crop, crop_field, spy, monkeypatch):
    """The compiled loop called on ranges that cut chunks anywhere (starts and stops that are not
    multiples of its 512-voxel chunk, a range of one voxel, an empty one) gives the frame of one
    call; ranges outside 0..P are refused and write nothing."""
    image, labels, _ = crop
    w = Warper(crop_field, image, _split_labels(labels))
    n = w.n_moving
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    whole = w.warp(2.5)

    cuts = [0, 1, 1, 513, 700, 1024, 1025, 60001, n - 3, n]
    seen = []

    def pieces(lib, args, count):
        seen.append(count)
        ref = ctypes.byref(args)
        for bad in ((0, count + 1), (5, 4), (-1, 3), (count, count + 512)):
            assert lib.laugen_warp(ref, *bad) == -1
        for a, b in zip(cuts, cuts[1:]):
            assert lib.laugen_warp(ref, a, b) == 0

    monkeypatch.setattr(warp_mod, "_run_native", pieces)
    split = w.warp(2.5)
    assert seen == [n]
    _assert_frames_equal(split, whole)
    assert torch.equal(split[0], whole[0])

    def refused(lib, args, count):
        ref = ctypes.byref(args)
        assert lib.laugen_warp(ref, 0, count + 1) == -1
        assert lib.laugen_warp(ref, 7, 3) == -1

    monkeypatch.setattr(warp_mod, "_run_native", refused)
    out = torch.full(image.shape, -5.0)
    w.image_frame(2.5, out=out)
    assert torch.equal(out, torch.from_numpy(image))  # refused calls wrote nothing: the copy of the input

    def bad_dtype(lib, args, count):
        args.image_dtype = 9  # no such dtype: the kernel refuses, _run_native raises
        return _RUN_NATIVE(lib, args, count)

    monkeypatch.setattr(warp_mod, "_run_native", bad_dtype)
    with pytest.raises(RuntimeError, match="refused"):
        w.image_frame(2.5)


# -- 5. fallbacks --------------------------------------------------------------------------------
def test_off_by_environment_runs_the_torch_code(crop, spy, monkeypatch):
    image, labels, spacing = crop
    monkeypatch.setenv("LAUGEN_NATIVE", "0")
    assert native.library() is None
    assert "off" in native.status() and "LAUGEN_NATIVE=0" in native.status()
    assert "off" in native.pending() and not native.built()
    aug = Augmenter(image, labels, spacing, sigma_mm=SIGMA, device="cpu")
    values = [0.0, 2.0, -1.0]
    off = _series(aug, values)
    assert not spy
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    assert native.library() is not None
    on = _series(aug, values)
    assert len(spy) == 2
    _assert_image_equal(on.images, off.images)
    _assert_labels_equal(on.labels, off.labels)
    assert on.volumes_ml == off.volumes_ml


def _reference_frames(w: Warper):
    return [w.warp(z) for z in (2.5, -1.7)]


def test_no_working_compiler_falls_back_to_torch(crop, crop_field, spy, monkeypatch, tmp_path):
    image, labels, _ = crop
    w = Warper(crop_field, image, _split_labels(labels))
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    assert native.library() is not None
    ref = _reference_frames(w)
    calls = len(spy)
    monkeypatch.setattr(native, "_state", {})  # the real library's state comes back after the test
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/bin/false")  # a "compiler" that fails
    assert not native.built() and "not built yet" in native.pending()
    assert native.library() is None
    line = native.status()
    assert "not available" in line and "/bin/false failed" in line and "torch" in line, line
    assert not native.built()
    assert not list((tmp_path / "cache").rglob("*.so")) and not list((tmp_path / "tmp").rglob("*.so"))
    for a, b in zip(_reference_frames(w), ref):
        _assert_frames_equal(a, b)
    assert len(spy) == calls  # the torch code made them
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(native, "_state", {})
    assert native.library() is None
    assert "no C compiler found" in native.status() and "no C compiler found" in native.pending()


def test_a_fresh_cache_is_built_once_then_reused(crop, crop_field, spy, monkeypatch, tmp_path):
    image, labels, _ = crop
    w = Warper(crop_field, image, _split_labels(labels))
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    ref = _reference_frames(w)
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert not native.built()
    lib = native.library()
    assert lib is not None, native.status()
    built = list((tmp_path / "cache" / "laugen-napari" / "native").glob("laugen_native_*.so"))
    assert len(built) == 1 and native.status() == f"compiled kernels loaded from {built[0]}"
    assert native.built() and not list((tmp_path / "cache").rglob("*.tmp"))  # no temporary left
    for a, b in zip(_reference_frames(w), ref):
        _assert_frames_equal(a, b)

    # a second process (state cleared) loads the cached library without compiling
    def no_build(cc, target):
        raise AssertionError("compiled again")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_build", no_build)
    assert native.built() and native.library() is not None
    assert native.status() == f"compiled kernels loaded from {built[0]}"


def test_an_unwritable_or_broken_cache_builds_privately(crop, crop_field, spy, monkeypatch, tmp_path):
    image, labels, _ = crop
    w = Warper(crop_field, image, _split_labels(labels))
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    ref = _reference_frames(w)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")  # unwritable even for root
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(native, "_state", {})
    lib = native.library()
    assert lib is not None, native.status()
    line = native.status()
    assert line.startswith("compiled kernels built for this process only") and "with the cache" in line, line
    assert Path(lib._name).parent.parent == tmp_path
    assert not Path(lib._name).parent.exists()  # the private folder is removed once the library is loaded
    for a, b in zip(_reference_frames(w), ref):
        _assert_frames_equal(a, b)
    # a cached file that is no library (truncated, half-copied): built again in its place
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    target = native._target()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x7fELF truncated")
    monkeypatch.setattr(native, "_state", {})
    assert native.library() is not None
    assert native.status() == f"compiled kernels loaded from {target}"
    assert target.read_bytes()[:4] == b"\x7fELF" and target.stat().st_size > 1000
    for a, b in zip(_reference_frames(w), ref):
        _assert_frames_equal(a, b)


def test_float16_and_non_finite_images_stay_on_the_torch_code(crop, crop_field, spy, monkeypatch):
    image, labels, _ = crop
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    nan = image.copy()
    nan[:, :, :6] = np.nan  # a NaN background reaching into the crop
    inf = image.copy()
    inf[20, 40, 30] = np.inf
    for img in (image.astype(np.float16), nan, inf):
        w = Warper(crop_field, img, labels)
        assert not w._native_ok
        frame = w.warp(2.5)
        w.moving_labels(2.5)
        w.image_frame(-1.0)
        assert not spy
        assert int((frame[1] != torch.from_numpy(labels)).sum()) > 100
    # a field that moves nothing
    still = UnitField(crop_field.shape, crop_field.spacing, crop_field.roi, torch.zeros_like(crop_field.mm))
    assert not Warper(still, image, labels)._native_ok


# -- 6. fork safety -------------------------------------------------------------------------------
# A forked child cannot run torch's own parallel loops with more than one thread once the parent
# has run them (GNU OpenMP is not fork-safe: Warper._float_out's copy hangs, with or without the
# compiled loop; torch's DataLoader sets one thread in its workers for that reason). The compiled
# loop's threads are a Python pool, which a child must make anew: the children below keep torch at
# one thread and have the compiled loop split over two (``_threads_for``, the glue's choice).
def _two_native_threads(n: int) -> int:
    return 2


def _fork_child(w: Warper, z: float, conn) -> None:
    torch.set_num_threads(1)
    warp_mod._threads_for = _two_native_threads  # this process only
    img, lab, _ = w.warp(z)
    pool = warp_mod._pool
    conn.send((img.numpy(), lab.numpy(), pool is not None and pool[0] == os.getpid() and pool[1]._max_workers == 2))
    conn.close()


def test_a_forked_child_warps_with_two_threads(crop, crop_field, monkeypatch):
    image, labels, _ = crop
    w = Warper(crop_field, image, _split_labels(labels))
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    monkeypatch.setattr(warp_mod, "NATIVE_SPLIT", 4096)
    old = torch.get_num_threads()
    ctx = multiprocessing.get_context("fork")
    children = []
    try:
        torch.set_num_threads(2)
        assert warp_mod._threads_for(w.n_moving) == 2
        parent = w.warp(2.5)  # the parent's pool has run the compiled loop on 2 threads
        assert warp_mod._pool is not None and warp_mod._pool[0] == os.getpid()
        for _ in range(2):
            receive, send = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_fork_child, args=(w, 2.5, send), daemon=True)
            children.append(child)
            child.start()
            send.close()
            assert receive.poll(60), "the forked child hung"
            img, lab, own_pool = receive.recv()
            child.join(30)
            assert child.exitcode == 0
            assert own_pool  # the child made its own pool of 2 threads (the parent's threads are not in it)
            _assert_image_equal(img, parent[0])
            _assert_labels_equal(lab, parent[1])
            assert torch.equal(torch.from_numpy(img), parent[0])
    finally:
        torch.set_num_threads(old)
        for child in children:
            if child.is_alive():
                child.kill()


class _Frames(torch.utils.data.Dataset):
    def __init__(self, warper: Warper, z: list[float]):
        self.warper, self.z = warper, z

    def __len__(self):
        return len(self.z)

    def __getitem__(self, i):
        warp_mod._threads_for = _two_native_threads  # in the worker process only
        img, lab, _ = self.warper.warp(self.z[i])
        pool = warp_mod._pool
        return img, lab, pool is not None and pool[0] == os.getpid() and pool[1]._max_workers == 2


def test_dataloader_workers_warp_with_two_threads(crop, crop_field, monkeypatch):
    image, labels, _ = crop
    w = Warper(crop_field, image, _split_labels(labels))
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    monkeypatch.setattr(warp_mod, "NATIVE_SPLIT", 4096)
    z = [2.5, -1.7, 6.0, 1.0]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        parent = [w.warp(v) for v in z]  # the pool has run in the parent
        assert warp_mod._pool is not None and warp_mod._pool[0] == os.getpid()
        loader = torch.utils.data.DataLoader(_Frames(w, z), batch_size=None, num_workers=2, timeout=60,
                                             multiprocessing_context="fork")
        got = list(loader)
    finally:
        torch.set_num_threads(old)
    assert warp_mod._threads_for is not _two_native_threads  # the parent's module is untouched
    assert len(got) == len(z)
    for (img, lab, own_pool), ref in zip(got, parent):
        assert own_pool
        _assert_image_equal(img, ref[0])
        _assert_labels_equal(lab, ref[1])


# -- 7. buffers the compiled loop does not take ----------------------------------------------------
def test_strided_out_buffers_are_never_handed_to_the_compiled_loop(crop, crop_field, spy, monkeypatch):
    """Buffers with a step (a flat view exists, but not contiguous) get the right frame; the
    compiled loop, which writes contiguous memory, never receives them (today the torch code fills
    them; a warp into fresh memory then copied would do as well). Contiguous buffers take it."""
    image, labels, _ = crop
    lab = _split_labels(labels)
    w = Warper(crop_field, image, lab)
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    ref = w.warp(2.5)
    strided = []

    def buffers(dtype, start):
        shape = image.shape[:2] + (2 * image.shape[2],)
        out = torch.full(shape, -1, dtype=dtype)[..., start::2]
        assert not out.is_contiguous()
        strided.append(out)  # kept alive: a freed buffer's address may be handed out again
        return out

    img_out, lab_out = buffers(torch.float32, 0), buffers(torch.uint8, 0)
    got = w.warp(2.5, img_out, lab_out)
    _assert_frames_equal(got, ref)
    _assert_image_equal(img_out, ref[0])
    _assert_labels_equal(lab_out, ref[1])
    # a contiguous image buffer with a strided label buffer
    img_out, lab_out = torch.empty(image.shape), buffers(torch.uint8, 1)
    got = w.warp(2.5, img_out, lab_out)
    _assert_frames_equal(got, ref)
    _assert_labels_equal(lab_out, ref[1])
    out = buffers(torch.float32, 1)
    _assert_image_equal(w.image_frame(2.5, out=out), ref[0])
    _assert_image_equal(out, ref[0])
    lab_out = buffers(torch.uint8, 1)
    _assert_labels_equal(w.label_frame(2.5, out=lab_out), ref[1])
    _assert_labels_equal(lab_out, ref[1])
    assert not {p for pair in spy.pointers for p in pair} & {t.data_ptr() for t in strided}
    # contiguous buffers are written by the compiled loop itself
    before = len(spy)
    out = torch.empty(image.shape)
    assert torch.equal(w.image_frame(-1.0, out=out), w.image_frame(-1.0))
    assert len(spy) == before + 2 and spy.pointers[before][0] == out.data_ptr()


# -- review: flat indices beyond 2^31, cell codes, the Jacobian summary ---------------------------
def _sparse(nbytes: int) -> mmap.mmap:
    """Anonymous memory that costs only the pages written (reads of the rest see zeros)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    return mmap.mmap(-1, nbytes, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def test_volumes_beyond_2_31_voxels_index_in_64_bits(spy, monkeypatch):
    """A (1024, 1024, 2100) volume (2.2e9 voxels; two channels: offsets beyond 2^32 bytes) whose
    moving voxels are in its last planes (flat indices > 2^31), next to the far faces (clamped).
    The compiled loop writes only the moving voxels (the glue's ``_native_warp``, without the
    frame's copy of the input), so only the pages touched are ever allocated. Its values equal the
    torch code's on the same warper, and a torch warp of that corner cut out as a small volume
    (within the float32 resolution of positions near 1000: a wrong index reads other voxels)."""
    shape = (1024, 1024, 2100)
    n = shape[0] * shape[1] * shape[2]
    corner = (8, 8, 10)
    start = tuple(s - c for s, c in zip(shape, corner))
    assert start[0] * shape[1] * shape[2] > 2**31
    rng = np.random.default_rng(11)
    small_img = rng.integers(0, 256, (2,) + corner).astype(np.uint8)
    small_lab = rng.integers(0, 4, corner).astype(np.int16)
    # moving voxels at least 3 voxels from the corner's low faces, moved at most 2.5 voxels: they
    # never sample below the corner (where the big volume is not the small one)
    small_field = _random_field(corner, 13, 1.0, roi=tuple(slice(3, c) for c in corner))
    big_field = UnitField(shape, small_field.spacing, tuple(slice(s + 3, m) for s, m in zip(start, shape)),
                          small_field.mm)
    maps = [_sparse(2 * n), _sparse(2 * n * 4), _sparse(n * 2), _sparse(n * 2)]
    image = np.frombuffer(maps[0], np.uint8).reshape((2,) + shape)
    image_out = torch.from_numpy(np.frombuffer(maps[1], np.float32).reshape((2,) + shape))
    labels = np.frombuffer(maps[2], np.int16).reshape(shape)
    labels_out = torch.from_numpy(np.frombuffer(maps[3], np.int16).reshape(shape))
    far = tuple(slice(s, None) for s in start)
    image[(slice(None),) + far] = small_img
    labels[far] = small_lab
    z = 2.5
    for interpolation in ("linear", "nearest"):
        monkeypatch.setenv("LAUGEN_NATIVE", "1")
        big = Warper(big_field, image, labels, interpolation, finite=True)
        assert big._native_ok and big.image.data_ptr() == image.ctypes.data  # no copy of the volume
        assert int(big.flat_index.min()) > 2**31 and not big._inside(z)
        lib = big._native()
        assert lib is not None
        moving = torch.empty(big.n_moving, dtype=torch.int16)
        big._native_warp(lib, z, image_out=image_out, moving=moving, labels_out=labels_out)
        got_img = image_out.view(2, n)[:, big.flat_index]
        monkeypatch.setenv("LAUGEN_NATIVE", "0")
        base, frac = big._cells(big._coords(z), False)
        _assert_image_equal(got_img, big._image_at(base, frac))  # the torch code on the same volume
        _assert_labels_equal(moving, big.moving_labels(z))
        _assert_labels_equal(labels_out.view(n)[big.flat_index], moving)
        small = Warper(small_field, small_img, small_lab, interpolation)
        ref_img, ref_lab, _ = small.warp(z)
        assert big.n_moving == small.n_moving
        # positions near 1020 carry float32 steps of 1.2e-4 voxel (5e-7 near 5): up to 0.03 of 255
        torch.testing.assert_close(got_img, ref_img.reshape(2, -1)[:, small.flat_index], rtol=0, atol=0.1)
        _assert_labels_equal(moving, ref_lab.reshape(-1)[small.flat_index])
        assert int((moving != small.moving_values(small.labels)).sum()) > 30  # labels really moved
    del image, image_out, labels, labels_out, big


def test_cell_codes_equal_the_torch_codes(crop, crop_field, monkeypatch):
    """The label cell codes built by the compiled pass and by torch, for a growing magnitude (the
    box grows, and reaches the crop's faces, where axes of 1 and 2 voxels have no cell above 0)."""
    image, labels, spacing = crop
    cases = [(crop_field, _split_labels(labels))]
    for planes in (slice(20, 21), slice(20, 22)):
        lab = _split_labels(labels)[planes].copy()
        cases.append((unit_field(lab > 0, spacing, SIGMA, "cpu"), lab))
    for field, lab in cases:
        warpers = {}
        for on in ("1", "0"):
            monkeypatch.setenv("LAUGEN_NATIVE", on)
            warpers[on] = Warper(field, image[: lab.shape[0]], lab)
            for z in (0.5, 2.0, -6.0, 30.0):
                assert warpers[on]._ensure_codes(z)
        a, b = warpers["1"], warpers["0"]
        assert a._codes_box == b._codes_box
        assert torch.equal(a._codes, b._codes)
        mixed = int((a._codes == warp_mod.MIXED).sum())
        assert mixed > 100 and int(((a._codes != 0) & (a._codes != warp_mod.MIXED)).sum()) > 100


def test_the_compiled_jacobian_summary_equals_torch(crop, crop_field, monkeypatch):
    from laugen_napari.core.quality import JacobianStats

    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    stats = JacobianStats(crop_field)
    c1, c2, c3 = stats.c1, stats.c2, stats.c3
    assert c1.numel() > 10000
    for z in (0.5, 3.0, -7.5, 25.0):
        got = native.det_summary(c1, c2, c3, z)
        assert got is not None
        d = torch.mul(c3, z).add_(c2).mul_(z).add_(c1).mul_(z)
        assert got == (float(d.min()), int(torch.count_nonzero(d <= -1.0)))
    assert native.det_summary(c1, c2, c3, 40.0)[1] > 0  # folds counted at a large magnitude
    # d = -1 exactly (det = 0) is folded; d just above -1 is not
    c = torch.tensor([-0.5, -0.4999999, 0.25, -0.75])
    zero = torch.zeros(4)
    assert native.det_summary(c, zero, zero, 2.0) == (-1.5, 2)
    empty = torch.zeros(0)
    assert native.det_summary(empty, empty, empty, 2.0) == (float("inf"), 0)
    assert native.det_summary(c1.double(), c2.double(), c3.double(), 2.0) is None



def test_transposed_out_buffers_are_filled(crop, crop_field, monkeypatch):
    """An out buffer that is not one flat run of memory (a transposed view: not contiguous, and no
    flat view of it exists) is declined by the compiled loop, and the torch code then fails in
    ``img.view(C, -1)`` / ``lab.view(-1)`` with torch's 'view size is not compatible' error."""
    image, labels, _ = crop
    lab = _split_labels(labels)
    w = Warper(crop_field, image, lab)
    monkeypatch.setenv("LAUGEN_NATIVE", "1")
    ref = w.warp(2.5)
    img_out = torch.empty(image.shape[::-1]).permute(2, 1, 0)  # (Z, Y, X) with X the slowest axis
    lab_out = torch.empty(lab.shape[::-1], dtype=torch.uint8).permute(2, 1, 0)
    got = w.warp(2.5, img_out, lab_out)
    _assert_frames_equal(got, ref)
    _assert_image_equal(img_out, ref[0])
    _assert_labels_equal(lab_out, ref[1])
    out = torch.empty(image.shape[::-1]).permute(2, 1, 0)
    _assert_image_equal(w.image_frame(2.5, out=out), ref[0])
    lab_out = torch.empty(lab.shape[::-1], dtype=torch.uint8).permute(2, 1, 0)
    _assert_labels_equal(w.label_frame(2.5, out=lab_out), ref[1])


@pytest.mark.parametrize("case", ["sample", "edge", "one plane", "one voxel", "full width"])
def test_the_compiled_moving_voxels_equal_the_numpy_ones(crop, crop_field, monkeypatch, case):
    """Warper.__init__ finds the moving voxels, their positions, displacements, runs and reach in
    one compiled pass; every array equals what the numpy/torch code makes, bit for bit."""
    image, labels, _ = crop
    if case == "sample":
        field = crop_field
    elif case == "edge":  # a ROI touching the volume's first and last voxel on two axes
        field = _random_field(image.shape, 5, roi=(slice(0, 12), slice(3, 40), slice(image.shape[2] - 9, image.shape[2])))
    elif case == "one plane":
        image, labels = image[20:21], labels[20:21]
        field = _random_field(image.shape, 6)
    elif case == "one voxel":
        mm = torch.zeros((3, 1, 1, 1))
        mm[1] = 0.5
        field = UnitField(tuple(image.shape), (1.0, 1.0, 1.0), (slice(7, 8), slice(9, 10), slice(11, 12)), mm)
    else:  # rows that span the whole X axis: consecutive flat indices across rows are still new runs
        field = _random_field(image.shape, 7, roi=(slice(4, 9), slice(2, 30), slice(0, image.shape[2])))
    made = {}
    for env in ("1", "0"):
        monkeypatch.setenv("LAUGEN_NATIVE", env)
        w = Warper(field, image, labels)
        made[env] = (w.flat_index, w._positions_rows, w._disp_rows, w._reach, w._runs())
    assert made["1"][0].numel() > 0
    for a, b in zip(made["1"][:3], made["0"][:3]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert made["1"][3] == made["0"][3]
    for a, b in zip(made["1"][4], made["0"][4]):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("case", ["sample", "directional", "3 mm slices", "cut", "one plane", "two planes"])
def test_the_compiled_jacobian_coefficients_equal_torch(sample_arrays, monkeypatch, case):
    """JacobianStats' coefficients (c1, c2, c3 where dF/dx is not zero) from one compiled pass over
    the boxes equal the torch code's bit for bit, and so do the per-frame summaries."""
    from laugen_napari.core import Directional, JacobianStats

    _, labels, spacing = sample_arrays
    mask = labels != 0
    if case == "3 mm slices":
        mask, spacing = mask[::3], (3.0, 1.0, 1.0)
    elif case == "cut":
        mask = mask[:, :105, 70:]
    elif case == "one plane":
        z = int(np.argmax(np.count_nonzero(mask, axis=(1, 2))))
        mask = mask[z : z + 1]
    elif case == "two planes":
        z = int(np.argmax(np.count_nonzero(mask, axis=(1, 2))))
        mask = mask[z : z + 2]
    field = unit_field(mask, spacing, 4.0, "cpu")
    if case == "directional":
        field = Directional((0.2, 1.0, -0.4)).apply(field)
    made = {}
    for env in ("1", "0"):
        monkeypatch.setenv("LAUGEN_NATIVE", env)
        made[env] = JacobianStats(field)
    a, b = made["1"], made["0"]
    assert a.c1.numel() > 100
    for x, y in ((a.c1, b.c1), (a.c2, b.c2), (a.c3, b.c3)):
        assert torch.equal(x, y)
    for z in (0.5, -3.0, 14.0):
        assert a.summary(z) == b.summary(z)
