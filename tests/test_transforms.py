"""``LongitudinalAugment``: shapes, frame 0, seeding, array types, and use in a DataLoader.

Also holds ``oblique_files``, the small hostile NIfTI pair the MONAI and TorchIO tests share."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from laugen_napari.settings import GenerationSettings, SettingsError
from laugen_napari.transforms import (
    LongitudinalAugment,
    longitudinal_augment,
    spacing_from_affine,
    split_time,
)

SPACING = (2.0, 1.5, 1.5)
ROOT = Path(__file__).resolve().parents[1]


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i] = r[j, j] = np.cos(a)
    r[i, j], r[j, i] = -np.sin(a), np.sin(a)
    return r


def write_oblique_pair(folder: Path) -> tuple[Path, Path]:
    """The shipped sample made hostile and small: 2 x 2 x 3 mm voxels, cropped to (40, 48, 20)
    around the lateral ventricles, first axis reversed (an L-A-S file) and tilted 15 and 10 degrees.
    Image float32, labels uint8 (0, 1, 2)."""
    image = nib.load(ROOT / "sample_data" / "mni152_t1.nii.gz")
    label = nib.load(ROOT / "sample_data" / "mni152_ventricles_seg.nii.gz")
    stride, crop = (2, 2, 3), ((29, 69), (38, 86), (19, 39))
    take = tuple(slice(None, None, s) for s in stride)
    window = tuple(slice(a, b) for a, b in crop)
    shift = np.eye(4)
    shift[:3, 3] = [a for a, _ in crop]
    img = np.asarray(image.dataobj)[take][window].astype(np.float32)[::-1]
    lab = np.asarray(label.dataobj)[take][window].astype(np.uint8)[::-1]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, img.shape[0] - 1
    affine = _rotation(2, 15) @ _rotation(0, 10) @ image.affine @ np.diag(list(stride) + [1]) @ shift @ flip
    paths = folder / "image.nii.gz", folder / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(img), affine), paths[0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lab), affine), paths[1])
    return paths


@pytest.fixture(scope="session")
def oblique_files(tmp_path_factory):
    """(image path, label path) of :func:`write_oblique_pair`."""
    return write_oblique_pair(tmp_path_factory.mktemp("oblique"))


def test_oblique_pair_is_what_it_claims(oblique_files):
    img, lab = (nib.load(p) for p in oblique_files)
    assert img.shape == lab.shape == (40, 48, 20) and nib.aff2axcodes(img.affine) == ("L", "A", "S")
    np.testing.assert_allclose(img.header.get_zooms(), (2, 2, 3), rtol=1e-6)
    assert abs(img.affine[1, 0]) > 0.3  # oblique
    seg = np.asarray(lab.dataobj)
    inside = np.argwhere(seg > 0)
    assert set(np.unique(seg)) == {0, 1, 2} and inside.min() > 0 and (inside.max(0) < np.array(seg.shape) - 1).all()


def _blob(shape=(12, 20, 20), seed=0):
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    r2 = ((z - shape[0] / 2) * SPACING[0]) ** 2 + ((y - shape[1] / 2) * SPACING[1]) ** 2 + \
        ((x - shape[2] / 2) * SPACING[2]) ** 2
    label = (r2 < 5.5 ** 2).astype(np.int64)
    image = (100 + 50 * label + np.random.default_rng(seed).normal(0, 5, shape)).astype(np.float32)
    return image, label


def _transform(**kw):
    params = {"frames": 4, "slope_range": (0.3, 0.6), "sigma_mm": 2.0, "spacing": SPACING}
    params.update(kw)
    return LongitudinalAugment(**params)


def test_shapes_and_frame0_numpy_and_channels():
    image, label = _blob()
    out = _transform().set_random_state(0)({"image": image, "label": label, "id": "x"})
    assert out["image"].shape == (4,) + image.shape and out["image"].dtype == np.float32
    assert out["label"].shape == (4,) + label.shape and out["label"].dtype == label.dtype
    assert out["z_mm"].shape == (4,) and out["z_mm"][0] == 0 and out["z_mm"][-1] > 0
    assert out["id"] == "x"
    np.testing.assert_array_equal(out["image"][0], image)
    np.testing.assert_array_equal(out["label"][0], label)
    assert (out["label"][-1] == 1).sum() > (label == 1).sum()  # it grows

    # (C, Z, Y, X) image and MONAI-style (1, Z, Y, X) label: frames folded into the channel axis,
    # frame-major, or on a leading axis
    multi = np.stack([image, 2 * image])
    out = _transform().set_random_state(0)({"image": multi, "label": label[None]})
    assert out["image"].shape == (8,) + image.shape and out["label"].shape == (4,) + label.shape
    np.testing.assert_array_equal(out["image"][:2], multi)
    np.testing.assert_array_equal(split_time(out["image"], 4)[0], multi)
    lead = _transform(time_dim="leading").set_random_state(0)({"image": multi, "label": label[None]})
    assert lead["image"].shape == (4, 2) + image.shape and lead["label"].shape == (4, 1) + label.shape
    np.testing.assert_array_equal(lead["image"], split_time(out["image"], 4))
    np.testing.assert_array_equal(lead["image"][:, 1], 2 * lead["image"][:, 0])  # one field moves every channel


def test_torch_in_torch_out_and_spacing_sources():
    image, label = _blob()
    t = LongitudinalAugment(frames=3, slope_range=(0.4, 0.4), sigma_mm=2.0)
    out = t({"image": torch.from_numpy(image), "label": torch.from_numpy(label), "spacing": torch.tensor(SPACING)})
    assert isinstance(out["image"], torch.Tensor) and out["image"].shape == (3,) + image.shape
    assert isinstance(out["z_mm"], torch.Tensor)
    torch.testing.assert_close(out["z_mm"], torch.tensor([0.0, 0.4, 0.8]))
    torch.testing.assert_close(out["image"][0], torch.from_numpy(image))

    class WithAffine(np.ndarray):  # stands in for MONAI's MetaTensor: an array with .affine
        pass

    img = image.view(WithAffine)
    img.affine = np.diag(list(SPACING) + [1.0])
    assert spacing_from_affine(img.affine) == SPACING
    out2 = t({"image": img, "label": label})
    np.testing.assert_allclose(out2["image"], out["image"].numpy())
    with pytest.raises(ValueError, match="spacing"):
        t({"image": image, "label": label})


def test_seeded_draws_are_reproducible():
    image, label = _blob()
    data = {"image": image, "label": label}
    a = _transform().set_random_state(42)
    b = _transform().set_random_state(42)
    za = [a(data)["z_mm"] for _ in range(3)]
    zb = [b(data)["z_mm"] for _ in range(3)]
    np.testing.assert_array_equal(np.array(za), np.array(zb))
    assert not np.array_equal(za[0], za[1])  # successive calls draw new slopes
    np.testing.assert_array_equal(a.set_random_state(42)(data)["image"], _transform().set_random_state(42)(data)["image"])
    # function form, same stream as the class with the same seed
    imgs, labs, z = longitudinal_augment(image, label, SPACING, seed=42, frames=4, slope_range=(0.3, 0.6), sigma_mm=2.0)
    np.testing.assert_array_equal(z, za[0])
    assert imgs.shape == (4,) + image.shape and labs.shape == (4,) + label.shape
    # custom trajectory: the given values, frames from their count
    out = _transform(trajectory="custom", values=[0, 0.5, 1.0])(data)
    np.testing.assert_allclose(out["z_mm"], [0, 0.5, 1.0])


def test_in_a_torch_dataloader():
    class Scans(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.items = [_blob(seed=s) for s in range(3)]
            self.transform = transform

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            image, label = self.items[i]
            return self.transform({"image": image[None], "label": label, "spacing": np.array(SPACING)})

    def batches(seed):
        loader = torch.utils.data.DataLoader(Scans(_transform().set_random_state(seed)), batch_size=2, num_workers=0)
        return list(loader)

    first = batches(7)
    assert [b["image"].shape for b in first] == [(2, 4, 12, 20, 20), (1, 4, 12, 20, 20)]
    assert first[0]["label"].shape == (2, 4, 12, 20, 20) and first[0]["z_mm"].shape == (2, 4)
    torch.testing.assert_close(first[0]["image"][:, 0], torch.from_numpy(np.stack([_blob(seed=s)[0] for s in (0, 1)])))
    again = batches(7)
    for x, y in zip(first, again):
        torch.testing.assert_close(x["image"], y["image"])
        torch.testing.assert_close(x["z_mm"], y["z_mm"])


class _Scans(torch.utils.data.Dataset):
    """Eight copies of one blob through a transform, tagged with the worker that made them."""

    def __init__(self, transform):
        self.item = _blob()
        self.transform = transform

    def __len__(self):
        return 8

    def __getitem__(self, i):
        out = self.transform({"image": self.item[0], "label": self.item[1]})
        return torch.utils.data.get_worker_info().id, float(out["z_mm"][-1])


@pytest.mark.parametrize("seed", [None, 3])
def test_plain_torch_workers_draw_different_trajectories(seed):
    def epoch(torch_seed):
        t = _transform()
        if seed is not None:
            t.set_random_state(seed)
        torch.manual_seed(torch_seed)
        loader = torch.utils.data.DataLoader(_Scans(t), batch_size=None, num_workers=2)
        return [(int(w), z) for w, z in loader]

    first = epoch(0)
    assert {w for w, _ in first} == {0, 1} and len({z for _, z in first}) == 8
    assert epoch(0) == first
    assert {z for _, z in epoch(1)}.isdisjoint({z for _, z in first})


def test_unseeded_draws_follow_torch_and_settings_round_trip():
    image, label = _blob()
    data = {"image": image, "label": label}
    torch.manual_seed(9)
    a = [_transform()(data)["z_mm"][-1] for _ in range(2)]
    torch.manual_seed(9)
    b = [_transform()(data)["z_mm"][-1] for _ in range(2)]
    assert a == b and a[0] != a[1]
    settings = GenerationSettings(trajectory="gompertz", frames=3, slope_range=(0.5, 0.5), sigma_mm=2.0, labels=(1,),
                                  seed=4, device="cpu").validate()
    t = LongitudinalAugment.from_settings(settings, spacing=SPACING)
    assert t.settings == settings.replace(seed=GenerationSettings().seed)
    z = t(data)["z_mm"]
    np.testing.assert_allclose(z, settings.trajectory_model().sample(3, np.random.default_rng(0)).z_mm, rtol=1e-6)


@pytest.mark.parametrize("kw, field", [
    ({"frames": 1}, "frames"), ({"kind": "gaussian"}, "center"), ({"sigma_mm": 0}, "sigma_mm"),
    ({"slope_range": (0.5, 0.1)}, "slope_range"), ({"device": "tpu"}, "device"), ({"labels": (0,)}, "labels"),
    ({"kind": "directional", "direction": (0, 0, 0)}, "direction"), ({"trajectory": "custom"}, "values"),
])
def test_bad_generation_arguments_name_the_field(kw, field):
    with pytest.raises(SettingsError, match=f"^{field}:"):
        LongitudinalAugment(**kw)


def test_bad_host_arguments():
    with pytest.raises(ValueError, match="time_dim"):
        LongitudinalAugment(time_dim="last")
    image, label = _blob()
    with pytest.raises(SettingsError, match="^center:.*outside"):
        _transform(kind="gaussian", center=(50, 5, 5))({"image": image, "label": label})
    with pytest.raises(KeyError):
        _transform()({"image": np.zeros((4, 4, 4))})
    assert _transform(allow_missing_keys=True)({"image": 1}) == {"image": 1}
