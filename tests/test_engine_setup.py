"""The engine's faster set-up and per-frame summaries (issue 13) give the numbers of the plain ways.

- derivatives by slice differences equal ``torch.gradient`` bit for bit (edges, short axes, views);
- the Jacobian coefficients computed in slabs equal those of the whole-ROI gradients;
- the moving voxels found by row counts equal ``torch.nonzero`` of the field, in raster order;
- the one-buffer Jacobian summary equals the minimum and fold count of ``determinant()``.
"""

import numpy as np
import pytest
import torch

from laugen_napari.core import Augmenter, CustomTrajectory, JacobianStats
from laugen_napari.core.field import derivative, spatial_gradient
from laugen_napari.core.warp import Warper, _moving_voxels


@pytest.fixture(scope="module")
def engine(sample_arrays):
    image, labels, _ = sample_arrays
    box = (slice(60, 130), slice(70, 180), slice(50, 150))
    return Augmenter(image[box], labels[box].copy(), (1.0, 0.8, 1.3), sigma_mm=4.0, device="cpu")


@pytest.mark.parametrize("shape", [(5, 7, 9), (2, 3, 1), (1, 4, 6), (3, 2, 2), (40, 33, 17)])
def test_derivative_is_torch_gradient_bit_for_bit(shape):
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(shape, generator=g) * 100
    spacing = (0.7, 1.3, 0.33)
    ours = spatial_gradient(vol, spacing)
    for axis, h in enumerate(spacing):
        ref = torch.gradient(vol, spacing=h, dim=axis)[0] if shape[axis] > 1 else torch.zeros_like(vol)
        assert torch.equal(ours[axis], ref)
    # a non-contiguous input and a given output buffer
    view = vol.transpose(0, 2)
    out = torch.full((3,) + tuple(view.shape), float("nan"))
    spatial_gradient(view, spacing, out=out)
    for axis, h in enumerate(spacing):
        if view.shape[axis] > 1:
            assert torch.equal(out[axis], torch.gradient(view, spacing=h, dim=axis)[0])
    if shape[1] > 1:
        assert torch.equal(derivative(vol, 1, 2.0), torch.gradient(vol, spacing=2.0, dim=1)[0])


def _plain_coefficients(mm: torch.Tensor, spacing):
    """c1, c2, c3 of det(I + z G) from the gradients of the whole ROI (torch.gradient), flattened
    over the voxels where one of them is non-zero."""
    g = [[torch.gradient(mm[i], spacing=h, dim=a)[0] for a, h in enumerate(spacing)] for i in range(3)]
    c1 = g[0][0] + g[1][1] + g[2][2]
    c2 = (g[0][0] * g[1][1] - g[0][1] * g[1][0]) + (g[0][0] * g[2][2] - g[0][2] * g[2][0]) + (
        g[1][1] * g[2][2] - g[1][2] * g[2][1])
    c3 = (g[0][0] * (g[1][1] * g[2][2] - g[1][2] * g[2][1]) - g[0][1] * (g[1][0] * g[2][2] - g[1][2] * g[2][0])
          + g[0][2] * (g[1][0] * g[2][1] - g[1][1] * g[2][0]))
    keep = (c1 != 0) | (c2 != 0) | (c3 != 0)
    return c1[keep], c2[keep], c3[keep]


@pytest.mark.parametrize("slab", [None, 1, 3, 1000])
def test_jacobian_slabs_equal_the_whole_roi(engine, slab):
    field = engine.field
    ref = _plain_coefficients(field.mm, field.spacing)
    jac = JacobianStats(field, slab=slab)
    for ours, theirs in zip((jac.c1, jac.c2, jac.c3), ref):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-7)
    assert jac.c1.numel() == ref[0].numel() > 1000


def test_moving_voxels_are_the_nonzero_field_in_raster_order(engine):
    field = engine.field
    moving = (field.mm != 0).any(0)
    assert torch.equal(field.moving(), moving)
    flat, z, y, x = _moving_voxels(moving)
    ref = torch.nonzero(moving)
    assert torch.equal(torch.stack([z, y, x], 1), ref)
    assert torch.equal(flat, torch.nonzero(moving.reshape(-1)).squeeze(1))
    w = engine.warper
    offset = torch.tensor([r.start for r in field.roi])
    assert torch.equal(w.positions, ref + offset)
    strides = torch.tensor([field.shape[1] * field.shape[2], field.shape[2], 1])
    assert torch.equal(w.flat_index, ((ref + offset) * strides).sum(1))
    # an empty row, plane and mask
    empty = torch.zeros((3, 4, 5), dtype=torch.bool)
    assert all(t.numel() == 0 for t in _moving_voxels(empty))
    empty[1, 2, 3] = empty[2, 0, 0] = True
    flat, z, y, x = _moving_voxels(empty)
    assert flat.tolist() == [33, 40] and z.tolist() == [1, 2] and y.tolist() == [2, 0] and x.tolist() == [3, 0]


def test_summary_is_the_minimum_and_fold_count_of_determinant(engine):
    jac = engine.jacobian
    folded_seen = False
    for z in [0.0, 0.3, -0.7, 1.9, -4.0, 6.5, 9.0, 14.0, -20.0, 1e-20]:
        det = jac.determinant(z)
        low = min(float(det.min()), 1.0)
        fold = float((det <= 0).sum()) / jac.n_total
        assert jac.summary(z) == (low, fold)
        folded_seen |= fold > 0
    assert folded_seen


def _scored_vote(corners: torch.Tensor, frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every corner's summed trilinear weight (the plain vote): (winner (m,), margin of the winner
    over the best other label (m,))."""
    lab, f = corners.T, frac.T.double()
    n = lab.shape[0]
    w = torch.ones(n, 8, dtype=torch.float64)
    for k in range(8):
        for a, bit in enumerate(((k >> 2) & 1, (k >> 1) & 1, k & 1)):
            w[:, k] *= f[:, a] if bit else 1 - f[:, a]
    score = ((lab.unsqueeze(2) == lab.unsqueeze(1)) * w.unsqueeze(1)).sum(2)
    best = score.max(1, keepdim=True).values
    winner = lab.gather(1, score.argmax(1, keepdim=True)).squeeze(1)
    others = torch.where(lab == winner.unsqueeze(1), torch.zeros_like(score), score)
    return winner, best.squeeze(1) - others.max(1).values


@pytest.mark.parametrize("labels", [2, 3, 5])
def test_vote_is_the_label_with_the_largest_summed_weight(labels):
    g = torch.Generator().manual_seed(labels)
    m = 20000
    corners = torch.randint(0, labels, (8, m), generator=g, dtype=torch.uint8) * 7
    frac = torch.rand((3, m), generator=g)
    frac[:, :50] = 0.5  # every corner weighs 1/8: exact ties, won by the label of the lowest corner
    frac[:, 50:100] = 0.0  # the cell's lower corner alone
    ours = Warper._vote(corners, frac)
    winner, margin = _scored_vote(corners, frac)
    clear = margin > 1e-5
    assert clear.sum() > 0.9 * m
    assert torch.equal(ours[clear], winner[clear])
    assert torch.equal(ours[50:100], corners[0, 50:100])
    tied = torch.nonzero(margin[:50] < 1e-9).squeeze(1)
    assert tied.numel() > 0 and torch.equal(ours[tied], winner[tied])


def test_unclamped_cells_inside_the_volume_give_the_clamped_frames(sample_arrays, monkeypatch):
    image, labels, spacing = sample_arrays
    w = Augmenter(image, labels, spacing, sigma_mm=4.0, device="cpu").warper
    zs = [0.8, -2.5, 4.0]
    assert all(w._inside(z) for z in zs) and not w._inside(500.0)
    fast = [(w.image_frame(z).clone(), w.label_frame(z).clone(), w.moving_labels(z)) for z in zs]
    monkeypatch.setattr(Warper, "_inside", lambda self, z: False)
    for z, (img, lab, mov) in zip(zs, fast):
        assert torch.equal(img, w.image_frame(z))
        assert torch.equal(lab, w.label_frame(z))
        assert torch.equal(mov, w.moving_labels(z))
    assert not torch.equal(fast[-1][0], w.image_frame(0.0))


def test_positions_near_the_edge_are_clamped(sample_arrays):
    image, labels, spacing = sample_arrays
    box = (slice(60, 130), slice(70, 180), slice(50, 150))
    lab = labels[box].copy()
    lab[30:40, 40:60, :2] = 1  # a structure at the X edge: samples beyond it take the edge value
    aug = Augmenter(image[box], lab, spacing, sigma_mm=4.0, device="cpu")
    assert aug.field.roi[2].start == 0 and not aug.warper._inside(0.5)
    frame = list(aug.iter_frames(CustomTrajectory([0.0, 3.0]).sample(2)))[-1]
    assert np.isfinite(frame.image).all() and not np.array_equal(frame.image, image[box])


def test_normalising_in_place_gives_the_normalised_field(engine):
    field = engine.field
    g = torch.Generator().manual_seed(1)
    mm = torch.zeros((3, 30, 40, 50))
    mm[:, 4:27, 7:33, 2:45] = torch.randn((3, 23, 26, 43), generator=g)
    mm[:, 10:12] *= 1e-6  # below NEGLIGIBLE: set to zero
    from laugen_napari.core.field import UnitField

    raw = UnitField((60, 80, 90), field.spacing, (slice(5, 35), slice(0, 40), slice(40, 90)), mm)
    before = mm.clone()
    plain = raw.normalised()
    assert torch.equal(mm, before)  # the public method leaves its input alone
    fast = UnitField(raw.shape, raw.spacing, raw.roi, mm.clone())._normalise(in_place=True)
    assert plain.roi == fast.roi == (slice(8, 33), slice(6, 34), slice(41, 86))
    assert fast.mm.is_contiguous() and torch.equal(plain.mm, fast.mm)
    assert torch.equal(plain.support, fast.support) and torch.equal(fast.support, (fast.mm != 0).any(0))


def test_the_torch_branches_for_other_devices_give_the_numpy_numbers(engine):
    """``_moving_voxels`` and ``_bounding_box`` use numpy on CPU and torch elsewhere (CUDA): the
    torch branch, run here on CPU, gives the same numbers."""
    from laugen_napari.core.field import _bounding_box

    moving = engine.field.moving()
    for a, b in zip(_moving_voxels(moving, use_numpy=True), _moving_voxels(moving, use_numpy=False)):
        assert torch.equal(a, b)
    assert _bounding_box(moving, use_numpy=True) == _bounding_box(moving, use_numpy=False)
    corner = torch.zeros((4, 5, 6), dtype=torch.bool)
    corner[3, 0, 5] = True
    assert _bounding_box(corner, use_numpy=False) == _bounding_box(corner) == ([3, 0, 5], [4, 1, 6])


@pytest.mark.parametrize("mode", ["nearest", "constant"])
def test_blur_of_a_volume_zero_outside_a_box_reads_only_the_box(mode):
    from scipy import ndimage as ndi

    from laugen_napari.core.field import gaussian_blur

    g = torch.Generator().manual_seed(2)
    vol = torch.zeros((30, 140, 120))
    for box in [(slice(5, 20), slice(40, 100), slice(30, 70)), (slice(0, 30), slice(0, 9), slice(100, 120))]:
        vol.zero_()
        vol[box] = (torch.rand(tuple(s.stop - s.start for s in box), generator=g) > 0.5).float()
        ours = gaussian_blur(vol, [2.0, 7.5, 5.0], mode=mode, support=box)
        assert torch.allclose(ours, gaussian_blur(vol, [2.0, 7.5, 5.0], mode=mode), atol=1e-6)
        ref = ndi.gaussian_filter(vol.numpy(), [2.0, 7.5, 5.0], mode=mode, truncate=4.0)
        np.testing.assert_allclose(ours.numpy(), ref, atol=2e-6)


@pytest.mark.parametrize("n_labels", [3, 12])
def test_frame_volumes_are_the_counts_of_the_written_maps(n_labels):
    """Label volumes per frame come from the moving voxels only (numpy counts for a few labels,
    a bincount for many): they equal the counts of the written label maps."""
    g = np.random.default_rng(n_labels)
    labels = np.zeros((24, 40, 44), np.uint8)
    for v in range(1, n_labels + 1):
        z, y, x = g.integers(4, 20), g.integers(5, 35), g.integers(5, 39)
        labels[z - 3 : z + 3, y - 4 : y + 4, x - 4 : x + 4] = v * 17 % 251
    image = g.random(labels.shape).astype(np.float32)
    aug = Augmenter(image, labels, (1.0, 0.9, 1.1), sigma_mm=2.0, device="cpu")
    values = aug.label_values
    assert len(values) == n_labels
    for frame in aug.iter_frames(CustomTrajectory([0.0, 1.5, -1.0]).sample(3)):
        voxel_ml = 1.0 * 0.9 * 1.1 / 1000
        assert frame.volumes_ml == pytest.approx({v: np.count_nonzero(frame.labels == v) * voxel_ml for v in values})


def test_index_planes_builds_every_plane_lookup_and_planes_stay_the_frames(sample_arrays):
    """After ``index_planes`` (run on a worker by the live preview) a plane along any axis needs no
    lazily built lookup, and every plane equals the same plane of the whole frame."""
    image, labels, _ = sample_arrays
    box = (slice(70, 120), slice(80, 170), slice(60, 140))
    aug = Augmenter(image[box], labels[box].copy(), (1.0, 0.8, 1.3), sigma_mm=4.0, device="cpu")
    w = aug.warper
    assert w._positions is None and not w._plane_order
    w.index_planes()
    assert w._positions is not None and sorted(w._plane_order) == [0, 1, 2]
    z = 1.7
    frame = w.image_frame(z)
    frame = frame[0] if frame.ndim == 4 else frame
    for axis in range(3):
        for index in (0, frame.shape[axis] // 2, frame.shape[axis] - 1):
            assert torch.equal(w.image_plane(z, axis, index), frame.select(axis, index))


# --------------------------------------------------------------------------------------------
# unit_field's set-up (one projection pass, the box blurred in one buffer, gradient and
# normalisation fused over Z slabs) gives the numbers of the plain steps


def _plain_unit_field(mask: np.ndarray, spacing, sigma_mm: float):
    """The unit field by the plain steps: the ROI (the structure's box grown by the blur's radius +
    2), continued across the volume's edge where the structure is cut (np.pad "edge"), blurred
    (gaussian_blur, reading the structure's box), differentiated (torch.gradient), the continuation
    cut off again, normalised (UnitField.normalised)."""
    from laugen_napari.core.field import TRUNCATE, UnitField, gaussian_blur

    sigma_vox = [sigma_mm / s for s in spacing]
    radius = [int(TRUNCATE * s + 0.5) for s in sigma_vox]
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    roi = tuple(slice(max(0, a - r - 2), min(n, b + r + 2)) for a, b, r, n in zip(lo, hi, radius, mask.shape))
    crop = mask[roi]
    ext = []
    for axis, n in enumerate(mask.shape):
        ext.append((int(n > 1 and np.take(crop, 0, axis=axis).any() and roi[axis].start == 0),
                    int(n > 1 and np.take(crop, -1, axis=axis).any() and roi[axis].stop == n)))
    crop = np.pad(crop, ext, mode="edge")
    sidx = np.argwhere(crop)
    support = [slice(a, b + 1) for a, b in zip(sidx.min(0), sidx.max(0))]
    blurred = gaussian_blur(torch.from_numpy(crop.astype(np.float32)), sigma_vox, support=support)
    grad = torch.stack([torch.gradient(blurred, spacing=h, dim=a)[0] if blurred.shape[a] > 1
                        else torch.zeros_like(blurred) for a, h in enumerate(spacing)])
    grad = grad[(slice(None),) + tuple(slice(a, m - b) for (a, b), m in zip(ext, crop.shape))].contiguous()
    return UnitField(mask.shape, tuple(float(s) for s in spacing), roi, grad).normalised()


def _cases(sample_arrays):
    """(name, mask, spacing, sigma_mm): anisotropic, cut by every face, tiny, far-apart parts,
    one-voxel axes."""
    _, labels, _ = sample_arrays
    ventricles = labels > 0
    box = (slice(60, 130), slice(70, 180), slice(50, 150))
    yield "anisotropic", ventricles[box], (1.0, 0.8, 1.3), 4.0
    yield "thick slices", ventricles[::3], (3.0, 1.0, 1.0), 5.0
    sub = ventricles[box]
    zs, ys, xs = (np.flatnonzero(sub.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3))
    # the structure cut by each face: the volume starts or ends inside it
    mid = [int(v[len(v) // 2]) for v in (zs, ys, xs)]
    for axis in range(3):
        lo_cut = tuple(slice(mid[a], None) if a == axis else slice(None) for a in range(3))
        hi_cut = tuple(slice(None, mid[a] + 1) if a == axis else slice(None) for a in range(3))
        yield f"cut low {axis}", sub[lo_cut], (1.0, 0.8, 1.3), 3.0
        yield f"cut high {axis}", sub[hi_cut], (0.9, 1.1, 0.7), 3.0
    z, y, _ = np.argwhere(sub)[np.count_nonzero(sub) // 2]
    both = sub[z - 3 : z + 3, y - 4 : y + 5]  # cut on both Z faces and both Y faces
    assert all(both[i].any() and both[:, i].any() for i in (0, -1))
    yield "cut both", both, (1.0, 1.0, 1.0), 2.5
    tiny = np.zeros((6, 7, 5), bool)
    tiny[2:4, 3, 1:4] = True
    yield "tiny", tiny, (1.0, 1.0, 1.0), 0.8
    long_axis = np.zeros((12, 9, 320), bool)  # X has several blur blocks, the far ones all zero
    long_axis[4:8, 3:6, 10:30] = True
    yield "long axis", long_axis, (1.0, 1.0, 0.5), 2.0
    blobs = np.zeros((70, 30, 40), bool)  # far apart: slabs between them and windows beside them are all 0
    blobs[2:6, 2:7, 3:9] = True
    blobs[60:65, 20:28, 30:37] = True
    yield "two blobs", blobs, (1.0, 1.0, 1.0), 1.0
    flat = ventricles[90:91, 70:180, 50:150]  # a 2D image as Z = 1
    yield "one plane", flat, (3.0, 1.0, 1.0), 3.0
    line = np.zeros((1, 1, 40), bool)
    line[0, 0, 15:22] = True
    yield "one line", line, (1.0, 1.0, 1.0), 2.0
    yield "full height", np.broadcast_to(sub.any(0, keepdims=True), sub.shape), (1.0, 0.8, 1.3), 3.0


@pytest.mark.parametrize("slab", [None, 1])
def test_unit_field_is_the_plain_steps_bit_for_bit(sample_arrays, monkeypatch, slab):
    """Whatever the slabs (one plane each: the rows and columns computed change from slab to slab,
    and slabs between far-apart parts compute nothing)."""
    import laugen_napari.core.field as F
    from laugen_napari.core import unit_field

    if slab is not None:
        monkeypatch.setattr(F, "GRADIENT_SLAB", slab)
    seen = 0
    for name, mask, spacing, sigma in _cases(sample_arrays):
        ours = unit_field(mask, spacing, sigma, "cpu")
        ref = _plain_unit_field(np.asarray(mask), spacing, sigma)
        assert ours.roi == ref.roi, name
        assert torch.equal(ours.mm, ref.mm), (name, float((ours.mm - ref.mm).abs().max()))
        assert torch.equal(ours.support, (ref.mm != 0).any(0)), name
        assert ours.mm.is_contiguous() and abs(ours.max_mm - 1.0) < 1e-6, name
        seen += 1
    assert seen == 15


def test_blur_chunks_do_not_change_the_numbers(monkeypatch):
    """The blur's lines go in chunks on CPU: chunks of any size give the numbers of one product
    over all lines, within float32 round-off (BLAS may sum a handful of rows in another order),
    and the blur equals scipy's."""
    from scipy import ndimage as ndi

    import laugen_napari.core.field as F

    g = torch.Generator().manual_seed(5)
    vol = (torch.rand((23, 110, 130), generator=g) > 0.7).float()
    box = (slice(3, 20), slice(10, 60), slice(100, 130))
    vol[:, :, :100] = 0
    vol[:3] = vol[20:] = 0
    vol[:, :10] = vol[:, 60:] = 0
    sigma = [1.5, 4.0, 6.0]
    whole = F.gaussian_blur(vol, sigma, support=box)
    for chunk in (1, 7, 1000, 10**7):
        monkeypatch.setattr(F, "BLUR_CHUNK", chunk)
        np.testing.assert_allclose(F.gaussian_blur(vol, sigma, support=box).numpy(), whole.numpy(), rtol=0, atol=2e-7)
    np.testing.assert_allclose(whole.numpy(), ndi.gaussian_filter(vol.numpy(), sigma, mode="nearest", truncate=4.0),
                               atol=2e-6)


def test_projections_are_the_planes_holding_a_voxel():
    from laugen_napari.core.field import _bounding_box, _projections

    rng = np.random.default_rng(3)
    for shape in [(5, 6, 7), (1, 9, 4), (8, 1, 1), (3, 4, 0)]:
        mask = rng.random(shape) > 0.97
        if mask.size:
            mask[tuple(s // 2 for s in shape)] = True
        for m in (mask, mask[:, ::-1], np.asfortranarray(mask)):
            hits = _projections(m)
            for axis, hit in enumerate(hits):
                others = tuple(a for a in range(3) if a != axis)
                assert np.array_equal(hit, np.count_nonzero(m, axis=others) > 0)
    mask = np.zeros((7, 8, 9), bool)
    mask[2, 5, 1] = mask[4, 0, 6] = True
    assert _bounding_box(torch.from_numpy(mask)) == ([2, 0, 1], [5, 6, 7])


def test_set_up_without_huge_pages_gives_the_same_numbers(engine, sample_arrays, monkeypatch):
    """HUGE_PAGES only chooses where the set-up's buffers live."""
    import laugen_napari.core.field as F

    _, labels, _ = sample_arrays
    mask = labels[60:130, 70:180, 50:150] > 0
    with_huge = F.unit_field(mask, (1.0, 0.8, 1.3), 4.0, "cpu")
    jac = JacobianStats(with_huge)
    monkeypatch.setattr(F, "HUGE_PAGES", False)
    plain = F.unit_field(mask, (1.0, 0.8, 1.3), 4.0, "cpu")
    assert plain.roi == with_huge.roi and torch.equal(plain.mm, with_huge.mm)
    assert torch.equal(plain.mm, engine.field.mm)
    again = JacobianStats(plain)
    assert all(torch.equal(a, b) for a, b in zip((jac.c1, jac.c2, jac.c3), (again.c1, again.c2, again.c3)))


def test_label_counts_read_by_words_are_numpys_counts():
    """label_counts reads only the 8-byte words holding a label in mostly-background maps: the
    counts equal numpy's for every dtype, tails shorter than a word, negative and large values,
    dense maps, strided and unaligned views, all-zero maps."""
    from laugen_napari.core.labels import _sparse_counts, label_counts

    rng = np.random.default_rng(7)
    sparse = np.zeros(100_003, np.uint8)  # not a whole number of words: a tail
    sparse[rng.integers(0, sparse.size, 900)] = rng.integers(1, 6, 900)
    sparse[-1] = 3
    cases = {"uint8": sparse, "all zero": np.zeros(64, np.uint8), "one voxel": np.array([4], np.uint8)}
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        cases[np.dtype(dtype).name] = sparse.astype(dtype) * (3 if dtype != np.int8 else 1)
    cases["negative"] = cases["int16"] - 10 * (cases["int16"] == 6)  # some -4
    cases["large"] = cases["int32"] * 400_000
    cases["dense"] = rng.integers(0, 4, 50_001).astype(np.uint8)
    cases["strided"] = sparse.reshape(-1, 1)[::2, 0]
    cases["unaligned"] = sparse[3:]
    cases["3D"] = np.zeros((6, 7, 9), np.int16)
    cases["3D"][2, 3, 4] = 1000
    for name, labels in cases.items():
        values, counts = np.unique(labels, return_counts=True)
        assert label_counts(labels) == dict(zip(values.tolist(), counts.tolist())), name
    # the word reading is the one taken for the sparse maps, and refuses what it cannot count
    assert _sparse_counts(sparse) is not None and _sparse_counts(cases["int64"]) is not None
    for name in ("negative", "large", "dense", "strided", "unaligned"):
        assert _sparse_counts(cases[name].reshape(-1)) is None, name
