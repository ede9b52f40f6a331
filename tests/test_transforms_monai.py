"""``LongitudinalAugment`` inside real MONAI pipelines: MetaTensors with their affine, the time axis
in the channel axis, spatial transforms and SaveImaged after it, per-worker randomness with
DataLoader workers, seeding through Compose and set_determinism, and frames equal to the engine's."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, list_data_collate
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    RandFlipd,
    RandSpatialCropd,
    SaveImaged,
)
from monai.utils import set_determinism
from test_transforms import write_oblique_pair

from laugen_napari.core import Augmenter, TrajectoryDraw
from laugen_napari.pipeline import build_augmenter, load_pair
from laugen_napari.settings import GenerationSettings
from laugen_napari.transforms import LongitudinalAugment

KEYS = ["image", "label"]
PARAMS = {"frames": 4, "slope_range": (1.0, 1.5), "sigma_mm": 3.0}


@pytest.fixture(scope="module")
def oblique_files(tmp_path_factory):
    """The oblique L-A-S 2 x 2 x 3 mm crop of the sample (see ``test_transforms``)."""
    return write_oblique_pair(tmp_path_factory.mktemp("oblique"))


def _load():
    return [LoadImaged(KEYS), EnsureChannelFirstd(KEYS)]


def _item(files):
    return {"image": str(files[0]), "label": str(files[1])}


def _tag_worker(data):
    info = torch.utils.data.get_worker_info()
    return {**data, "worker": -1 if info is None else info.id}


def test_metatensors_keep_affine_and_frames_equal_the_engine(oblique_files):
    la = LongitudinalAugment(**PARAMS).set_random_state(3)
    out = Compose(_load() + [la])(_item(oblique_files))
    image, label = out["image"], out["label"]
    file = nib.load(oblique_files[0])
    # MONAI's layout: (C, I, J, K) of the file; T folded into C; the file's affine kept
    assert isinstance(image, MetaTensor) and isinstance(label, MetaTensor)
    assert image.shape == (4,) + file.shape and label.shape == (4,) + file.shape
    assert image.dtype == torch.float32 and label.dtype == torch.float32  # LoadImaged's dtype kept for labels
    np.testing.assert_allclose(image.affine.numpy(), file.affine, atol=1e-5)
    np.testing.assert_allclose(label.affine.numpy(), file.affine, atol=1e-5)
    assert [op["class"] for op in image.applied_operations] == ["LongitudinalAugment"]
    z = out["z_mm"].numpy()
    assert z.shape == (4,) and z[0] == 0 and 3.0 <= z[-1] <= 4.5
    # the engine on the same arrays (file order, voxel sizes from the affine) for the same drawn z_t
    img = np.asarray(file.dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(oblique_files[1]).dataobj)
    ref = Augmenter(img, seg, nib.affines.voxel_sizes(file.affine), sigma_mm=3.0, device="cpu").series_from_values(
        TrajectoryDraw("linear", z.astype(np.float64), {}))
    np.testing.assert_array_equal(image.numpy(), ref.images)
    np.testing.assert_array_equal(label.numpy(), ref.labels)
    np.testing.assert_array_equal(image[0].numpy(), img)
    assert (label[-1] > 0).sum() > (label[0] > 0).sum()


@pytest.mark.parametrize("kind", [
    {"kind": "directional", "direction": (0.3, 1.0, 0.2)},
    {"kind": "gaussian", "center": (12, 20, 9), "spread_mm": 8.0},
])
def test_direction_and_center_mean_what_the_cli_means(oblique_files, kind):
    """On the oblique L-A-S file, MONAI's (I, J, K) arrays give the CLI's series: ``direction`` is
    a world RAS direction, ``center`` the file's voxel index (i, j, k)."""
    la = LongitudinalAugment(**PARAMS, **kind, device="cpu").set_random_state(1)
    out = Compose(_load() + [la])(_item(oblique_files))
    z = out["z_mm"].numpy().astype(np.float64)
    image, mask = load_pair(*oblique_files)  # the project's (Z, Y, X) RAS arrays
    settings = GenerationSettings(frames=4, sigma_mm=3.0, device="cpu", **kind).validate()
    ref = build_augmenter(image, mask, settings).series_from_values(TrajectoryDraw("linear", z, {}))
    ref_images = np.stack([image.to_file_layout(f) for f in ref.images])
    ref_labels = np.stack([mask.to_file_layout(f) for f in ref.labels])
    got = out["image"].numpy()
    assert np.abs(got - ref_images).max() < 1e-3  # same up to float rounding in another axis order
    np.testing.assert_array_equal(out["label"].numpy(), ref_labels)
    assert (ref.labels[-1] != ref.labels[0]).sum() > 50  # it does move
    if kind["kind"] == "directional":  # reading the direction along the array axes would differ
        plain = LongitudinalAugment(**PARAMS, **kind, device="cpu", spacing=(2.0, 2.0, 3.0)).set_random_state(1)
        wrong = plain({"image": got[:1], "label": np.asarray(nib.load(oblique_files[1]).dataobj)})
        assert (wrong["label"] != out["label"].numpy()).sum() > 20


def test_spatial_transforms_after_it_see_the_frames_as_channels(oblique_files):
    """RandFlipd flips a spatial axis of every frame, RandSpatialCropd crops image and label at the
    same place, and the affines still say where each voxel is in the world."""
    item = _item(oblique_files)
    ref_la, la = LongitudinalAugment(**PARAMS), LongitudinalAugment(**PARAMS)
    ref_pipe = Compose(_load() + [ref_la])
    pipe = Compose(_load() + [la, RandFlipd(KEYS, prob=1.0, spatial_axis=0),
                              RandSpatialCropd(KEYS, roi_size=(24, 32, 16), random_size=False)])
    pipe.set_random_state(11)
    ref_la.set_random_state(5), la.set_random_state(5)  # after Compose, which seeds its children
    ref, out = ref_pipe(item), pipe(item)
    torch.testing.assert_close(out["z_mm"], ref["z_mm"])
    for key in KEYS:
        got, full = out[key], ref[key]
        assert got.shape == (4, 24, 32, 16)
        # index in ref of every output voxel, from the two affines (flip + crop: an integer map)
        to_ref = np.linalg.inv(full.affine.numpy()) @ got.affine.numpy()
        np.testing.assert_allclose(to_ref[:3, :3], np.diag([-1.0, 1.0, 1.0]), atol=1e-6)  # axis I flipped
        offset = np.round(to_ref[:3, 3]).astype(int)
        idx = np.meshgrid(*(np.arange(n) for n in got.shape[1:]), indexing="ij")
        src = [np.round(to_ref[a, a]).astype(int) * idx[a] + offset[a] for a in range(3)]
        expected = full.numpy()[:, src[0], src[1], src[2]]
        np.testing.assert_array_equal(got.numpy(), expected)
    assert [op["class"] for op in out["image"].applied_operations] == ["LongitudinalAugment", "RandFlipd",
                                                                       "RandSpatialCrop"]


def test_saveimaged_writes_the_series_with_the_real_affine(oblique_files, tmp_path):
    la = LongitudinalAugment(**PARAMS).set_random_state(2)
    save = SaveImaged(KEYS, output_dir=tmp_path, output_postfix="series", separate_folder=False, print_log=False)
    out = Compose(_load() + [la, save])(_item(oblique_files))
    file = nib.load(oblique_files[0])
    for key in KEYS:
        written = nib.load(tmp_path / f"{key}_series.nii.gz")
        assert written.shape == file.shape + (4,)  # the frames on NIfTI's 4th axis
        np.testing.assert_allclose(written.affine, file.affine, atol=1e-4)
        np.testing.assert_array_equal(np.moveaxis(np.asarray(written.dataobj), -1, 0), out[key].numpy())


@pytest.mark.parametrize("time_dim", ["channel", "leading"])
def test_inverse_gives_back_the_input(oblique_files, time_dim):
    pipe = Compose(_load() + [LongitudinalAugment(**PARAMS, time_dim=time_dim).set_random_state(0)])
    loaded = Compose(_load())(_item(oblique_files))
    back = pipe.inverse(pipe(_item(oblique_files)))
    for key in KEYS:
        assert back[key].shape == loaded[key].shape
        torch.testing.assert_close(back[key].as_tensor(), loaded[key].as_tensor())
        assert back[key].applied_operations == []
    assert "z_mm" not in back


def test_compose_seed_and_set_determinism_reach_it(oblique_files):
    item = Compose(_load())(_item(oblique_files))

    def draws(pipe, n=3):
        return [float(pipe(item)["z_mm"][-1]) for _ in range(n)]

    def pipe():
        return Compose([LongitudinalAugment(**PARAMS)])

    a, b, c = pipe(), pipe(), pipe()
    a.set_random_state(7), b.set_random_state(7), c.set_random_state(8)
    za, zb, zc = draws(a), draws(b), draws(c)
    assert za == zb and za != zc and len(set(za)) == 3
    set_determinism(seed=4)
    d1 = draws(pipe())
    set_determinism(seed=4)
    d2 = draws(pipe())
    set_determinism(seed=5)
    d3 = draws(pipe())
    set_determinism(seed=None)
    assert d1 == d2 and d1 != d3


def _epoch(files, loader, n=8, seed=None, **kw):
    la = LongitudinalAugment(frames=3, slope_range=(0.5, 1.0), sigma_mm=3.0)
    pipe = Compose(_load() + [la, _tag_worker])
    if seed is not None:
        pipe.set_random_state(seed)
    data = Dataset([_item(files)] * n, transform=pipe)
    batches = list(loader(data, batch_size=2, num_workers=2, **kw))
    return [(int(w), float(z[-1])) for b in batches for w, z in zip(b["worker"], b["z_mm"])], batches


@pytest.mark.parametrize("loader, seed", [(DataLoader, None), (torch.utils.data.DataLoader, None),
                                          (torch.utils.data.DataLoader, 5)])
def test_dataloader_workers_draw_different_trajectories(oblique_files, loader, seed):
    """MONAI's DataLoader re-seeds Randomizable transforms per worker; torch's does not, so the
    transform derives a stream per worker itself from the parent's seed (Compose seeds its
    children) and torch's worker seed. set_determinism makes epochs repeat."""
    kw = {} if loader is DataLoader else {"collate_fn": list_data_collate}
    set_determinism(seed=0)
    first, batches = _epoch(oblique_files, loader, seed=seed, **kw)
    workers = {w for w, _ in first}
    assert workers == {0, 1}
    z_by_worker = [sorted(z for w, z in first if w == k) for k in (0, 1)]
    assert not set(z_by_worker[0]) & set(z_by_worker[1])  # no duplicate trajectories across workers
    assert len({z for _, z in first}) == len(first)
    set_determinism(seed=0)
    again, _ = _epoch(oblique_files, loader, seed=seed, **kw)
    assert again == first  # reproducible
    set_determinism(seed=1)
    other, _ = _epoch(oblique_files, loader, seed=seed, **kw)
    set_determinism(seed=None)
    assert {z for _, z in other}.isdisjoint({z for _, z in first})
    image = batches[0]["image"]
    assert isinstance(image, MetaTensor) and image.shape == (2, 3, 40, 48, 20)
    np.testing.assert_allclose(image.affine[0].numpy(), nib.load(oblique_files[0]).affine, atol=1e-5)


def test_auto_device_is_cpu_in_workers():
    class Probe(torch.utils.data.Dataset):
        def __init__(self):
            self.t = LongitudinalAugment()

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return self.t._device()

    assert LongitudinalAugment().settings.device == "auto"
    assert list(torch.utils.data.DataLoader(Probe(), num_workers=2, collate_fn=list)) == [["cpu"], ["cpu"]]


def test_lps_space_is_converted(oblique_files):
    """The same image described in MONAI's LPS space (x and y negated) gives the same series for a
    world RAS direction."""
    loaded = Compose(_load())(_item(oblique_files))
    flip = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    lps = {k: v.clone() for k, v in loaded.items() if k in KEYS}
    for v in lps.values():
        v.affine = flip @ v.affine
        v.meta["space"] = "LPS"
    kind = dict(PARAMS, kind="directional", direction=(0.0, 1.0, 0.0))
    ras_out = LongitudinalAugment(**kind).set_random_state(0)(loaded)
    lps_out = LongitudinalAugment(**kind).set_random_state(0)(lps)
    torch.testing.assert_close(lps_out["label"].as_tensor(), ras_out["label"].as_tensor())
    torch.testing.assert_close(lps_out["image"].as_tensor(), ras_out["image"].as_tensor())
    lps["image"].meta["space"] = "RAS"  # the LPS affine read as RAS: anterior becomes posterior
    wrong = LongitudinalAugment(**kind).set_random_state(0)(lps)
    assert (wrong["label"] != ras_out["label"]).sum() > 20


def test_after_lazy_resampling(oblique_files):
    """In a lazy Compose, Orientationd + Spacingd are applied before the series; label maps need
    nearest-neighbour overrides, and without them the error says so."""
    from monai.transforms import Orientationd, Spacingd

    steps = _load() + [Orientationd(KEYS, "RAS"), Spacingd(KEYS, (2.5, 2.5, 2.5), mode=("bilinear", "nearest")),
                       LongitudinalAugment(**PARAMS, kind="directional", direction=(0.0, 1.0, 0.0))]
    out = Compose(steps, lazy=True, overrides={"label": {"mode": "nearest"}})(_item(oblique_files))
    assert [op["class"] for op in out["label"].applied_operations] == ["Orientation", "SpatialResample",
                                                                       "LongitudinalAugment"]
    assert out["image"].shape[0] == 4 and np.allclose(nib.affines.voxel_sizes(out["image"].affine.numpy()), 2.5)
    assert set(np.unique(out["label"].numpy())) == {0, 1, 2}
    with pytest.raises(RuntimeError) as info:
        Compose(steps, lazy=True)(_item(oblique_files))
    assert "label: the label map must hold integer values" in str(info.value.__cause__)
    assert "overrides={'label': {'mode': 'nearest'}}" in str(info.value.__cause__)
