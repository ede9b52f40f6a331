"""``LongitudinalAugmentTio`` inside real TorchIO pipelines: a Subject out with the affine kept, the
frames in the channel axis, later TorchIO transforms on it, history that reproduces the draw, and
different trajectories in different DataLoader workers."""

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio
from test_transforms import write_oblique_pair

from laugen_napari.core import Augmenter, TrajectoryDraw
from laugen_napari.pipeline import build_augmenter, load_pair
from laugen_napari.settings import GenerationSettings, SettingsError
from laugen_napari.transforms import LongitudinalAugmentTio

PARAMS = {"frames": 4, "slope_range": (1.0, 1.5), "sigma_mm": 3.0}


@pytest.fixture(scope="module")
def oblique_files(tmp_path_factory):
    """The oblique L-A-S 2 x 2 x 3 mm crop of the sample (see ``test_transforms``)."""
    return write_oblique_pair(tmp_path_factory.mktemp("oblique"))


def _subject(files, **extra):
    return tio.Subject(image=tio.ScalarImage(files[0]), label=tio.LabelMap(files[1]), **extra)


def _arrays(files):
    image, label = (nib.load(p) for p in files)
    return np.asarray(image.dataobj, dtype=np.float32), np.asarray(label.dataobj), image.affine


def test_returns_a_subject_whose_frames_equal_the_engine(oblique_files):
    t = LongitudinalAugmentTio(**PARAMS).set_random_state(3)
    out = t(_subject(oblique_files))
    img, seg, affine = _arrays(oblique_files)
    assert isinstance(out, tio.Subject)
    assert out["image"].shape == (4,) + img.shape and out["label"].shape == (4,) + img.shape
    assert out["image"].data.dtype == torch.float32 and out["label"].data.dtype == _subject(oblique_files)[
        "label"].data.dtype
    np.testing.assert_allclose(out["image"].affine, affine, atol=1e-5)
    np.testing.assert_allclose(out["label"].affine, affine, atol=1e-5)
    z = out["z_mm"].numpy()
    assert z.shape == (4,) and z[0] == 0 and 3.0 <= z[-1] <= 4.5
    spacing = nib.affines.voxel_sizes(out["label"].affine)  # TorchIO's affine (via ITK), 1e-7 from nibabel's
    ref = Augmenter(img, seg, spacing, sigma_mm=3.0, device="cpu").series_from_values(
        TrajectoryDraw("linear", z.astype(np.float64), {}))
    np.testing.assert_array_equal(out["image"].numpy(), ref.images)
    np.testing.assert_array_equal(out["label"].numpy(), ref.labels)
    np.testing.assert_array_equal(out["image"].numpy()[0], img)


def test_direction_is_a_world_direction(oblique_files):
    kind = {"kind": "directional", "direction": (0.3, 1.0, 0.2)}
    out = LongitudinalAugmentTio(**PARAMS, **kind, device="cpu").set_random_state(1)(_subject(oblique_files))
    z = out["z_mm"].numpy().astype(np.float64)
    image, mask = load_pair(*oblique_files)
    ref = build_augmenter(image, mask, GenerationSettings(frames=4, sigma_mm=3.0, device="cpu", **kind).validate())
    series = ref.series_from_values(TrajectoryDraw("linear", z, {}))
    np.testing.assert_array_equal(out["label"].numpy(), np.stack([mask.to_file_layout(f) for f in series.labels]))
    assert np.abs(out["image"].numpy() - np.stack([image.to_file_layout(f) for f in series.images])).max() < 1e-3


def test_later_torchio_transforms_run_on_it(oblique_files):
    ref = LongitudinalAugmentTio(**PARAMS).set_random_state(4)(_subject(oblique_files))
    pipe = tio.Compose([
        LongitudinalAugmentTio(**PARAMS).set_random_state(4),
        tio.RandomFlip(axes=(0,), flip_probability=1.0),
        tio.CropOrPad((32, 40, 16)),
        tio.RescaleIntensity(out_min_max=(0, 1)),
    ])
    out = pipe(_subject(oblique_files))
    torch.testing.assert_close(out["z_mm"], ref["z_mm"])
    window = (slice(None), slice(4, 36), slice(4, 44), slice(2, 18))  # CropOrPad crops centrally
    labels = np.flip(ref["label"].numpy(), axis=1)[window]  # axis 0 of every frame flipped
    np.testing.assert_array_equal(out["label"].numpy(), labels)
    frames = np.flip(ref["image"].numpy(), axis=1)[window]
    frames = (frames - frames.min()) / (frames.max() - frames.min())
    np.testing.assert_allclose(out["image"].numpy(), frames, atol=1e-6)
    shift = np.eye(4)
    shift[:3, 3] = (4, 4, 2)
    np.testing.assert_allclose(out["image"].affine, ref["image"].affine @ shift, atol=1e-5)
    # TorchIO's history rebuilds a transform that gives the same series
    again = out.get_composed_history()(_subject(oblique_files))
    np.testing.assert_array_equal(again["label"].numpy(), out["label"].numpy())
    np.testing.assert_allclose(again["image"].numpy(), out["image"].numpy(), atol=1e-6)


def test_every_intensity_image_moves_with_the_same_field(oblique_files):
    subject = _subject(oblique_files, t2=tio.ScalarImage(tensor=2 * tio.ScalarImage(oblique_files[0]).data,
                                                         affine=nib.load(oblique_files[0]).affine))
    out = LongitudinalAugmentTio(**PARAMS).set_random_state(2)(subject)
    assert out["t2"].shape == out["image"].shape == (4, 40, 48, 20)
    torch.testing.assert_close(out["t2"].data, 2 * out["image"].data)
    only = LongitudinalAugmentTio(**PARAMS, exclude=["t2"]).set_random_state(2)(subject)
    assert only["t2"].shape == (1, 40, 48, 20)


def test_bad_subjects_and_arguments(oblique_files):
    with pytest.raises(KeyError, match="no label map named 'seg'"):
        LongitudinalAugmentTio(label_key="seg")(_subject(oblique_files))
    with pytest.raises(ValueError, match="one label map"):
        LongitudinalAugmentTio()(_subject(oblique_files, other=tio.LabelMap(oblique_files[1])))
    with pytest.raises(SettingsError, match="^sigma_mm:"):
        LongitudinalAugmentTio(sigma_mm=-1)
    with pytest.raises(ValueError, match="time_dim"):
        LongitudinalAugmentTio(time_dim="leading")


class _TagWorker(tio.Transform):
    def apply_transform(self, subject):
        subject["worker"] = torch.utils.data.get_worker_info().id
        subject.update_attributes()
        return subject


def _epoch(files, seed=None, n=8):
    la = LongitudinalAugmentTio(frames=3, slope_range=(0.5, 1.0), sigma_mm=3.0)
    if seed is not None:
        la.set_random_state(seed)
    pipe = tio.Compose([la, tio.RandomFlip(axes=(0,)), tio.CropOrPad((32, 40, 16)), _TagWorker()])
    data = tio.SubjectsDataset([_subject(files) for _ in range(n)], transform=pipe)
    batches = list(tio.SubjectsLoader(data, batch_size=2, num_workers=2))
    assert batches[0]["image"]["data"].shape == (2, 3, 32, 40, 16)
    return [(int(w), float(z[-1])) for b in batches for w, z in zip(b["worker"], b["z_mm"])]


@pytest.mark.parametrize("seed", [None, 5])
def test_dataloader_workers_draw_different_trajectories(oblique_files, seed):
    torch.manual_seed(0)
    first = _epoch(oblique_files, seed)
    assert {w for w, _ in first} == {0, 1}
    by_worker = [{z for w, z in first if w == k} for k in (0, 1)]
    assert by_worker[0].isdisjoint(by_worker[1]) and len({z for _, z in first}) == len(first)
    torch.manual_seed(0)
    assert _epoch(oblique_files, seed) == first  # torch's seed reproduces the epoch
    torch.manual_seed(1)
    assert {z for _, z in _epoch(oblique_files, seed)}.isdisjoint({z for _, z in first})
