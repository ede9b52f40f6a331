"""Series streamed to disk frame by frame: identical files, one frame alive at a time, flat memory
in T, and the disk/memory a run needs checked before any work."""

import errno
import json
import tracemalloc
import weakref

import nibabel as nib
import numpy as np
import pytest

from laugen_napari import pipeline
from laugen_napari.cli import main
from laugen_napari.core import Augmenter, series_seed
from laugen_napari.io.export import write_series
from laugen_napari.io.nifti import (
    SeriesWriter,
    load_volume,
    open_series_writer,
    save_volume,
)
from laugen_napari.pipeline import build_augmenter, generate_to_directory, load_pair
from laugen_napari.settings import GenerationSettings

from .conftest import SAMPLE_IMAGE, SAMPLE_MASK
from .test_cli_generate import _lps_pair


def _references(tmp_path):
    """LPS anisotropic int16, a big-endian oblique float file, and a 2D file."""
    img_path, *_ = _lps_pair(tmp_path)
    rng = np.random.default_rng(3)
    angle = np.radians(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 0.9, 3.0])
    header = nib.Nifti1Header(endianness=">")
    big = nib.Nifti1Image(rng.normal(0, 1, (12, 10, 6)).astype(">f4"), affine, header)
    nib.save(big, str(tmp_path / "big_endian.nii"))
    nib.save(nib.Nifti1Image(rng.normal(0, 1, (14, 9)).astype(np.float32), np.diag([0.5, 0.7, 1, 1])),
             str(tmp_path / "flat.nii.gz"))
    return [load_volume(p, ndim=3) for p in (img_path, tmp_path / "big_endian.nii", tmp_path / "flat.nii.gz")]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_streamed_file_is_save_volume_byte_for_byte(tmp_path, suffix):
    refs = _references(tmp_path)
    assert refs[1].header.endianness == ">"
    rng = np.random.default_rng(0)
    for n, ref in enumerate(refs):
        frames = rng.normal(0, 50, (4,) + ref.spatial_shape).astype(np.float32)
        for dtype in (np.float32, np.int16, np.uint8):
            a, b = tmp_path / f"a{n}{suffix}", tmp_path / f"b{n}{suffix}"
            save_volume(a, frames.astype(dtype), ref, dtype=dtype, time_step=2.5)
            with open_series_writer(b, ref, 4, dtype, time_step=2.5) as writer:
                for frame in frames:
                    writer.write(frame.astype(dtype))
            assert a.read_bytes() == b.read_bytes(), (n, dtype)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_writer_refuses_a_wrong_frame_count_and_leaves_nothing(tmp_path):
    ref = _references(tmp_path)[0]
    target = tmp_path / "short.nii.gz"
    with pytest.raises(ValueError, match="2 of 3 frames"):
        with open_series_writer(target, ref, 3, np.float32) as writer:
            for _ in range(2):
                writer.write(np.zeros(ref.spatial_shape, np.float32))
    with pytest.raises(ValueError, match="expected"):
        with open_series_writer(target, ref, 3, np.float32) as writer:
            writer.write(np.zeros((2, 2, 2), np.float32))
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".short")]


class _Watched(Augmenter):
    """The engine, checking at every new frame that the writer kept no older frame alive."""

    def iter_frames(self, draw, progress=None):
        self.kept = []
        refs = []
        for frame in super().iter_frames(draw, progress):
            # the consumer may still hold the previous frame while the next is computed; never older
            self.kept.append(sum(r() is not None for r in refs[:-2]))
            refs += [weakref.ref(frame.image), weakref.ref(frame.labels)]
            yield frame


def test_generate_streams_and_matches_the_in_memory_series(tmp_path):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    image, mask = load_pair(img_path, seg_path)
    options = GenerationSettings(frames=7, sigma_mm=2.0, seed=4, device="cpu").validate()
    kw = dict(selected=None, sigma_mm=2.0, device="cpu")
    watched = _Watched(image.data, mask.data, image.spacing, **kw)
    seen = []
    generate_to_directory(image, mask, tmp_path / "streamed", options, augmenter=watched,
                          progress=lambda done, total: seen.append(done))
    assert watched.kept == [0] * 7 and seen == list(range(1, 8))
    # the files equal the whole series built in memory and written as before
    aug = build_augmenter(image, mask, options)
    series = aug.series(options.trajectory_model(), 7, seed=series_seed(options.seed, 0))
    write_series(tmp_path / "in_memory", series, image, mask)
    for name in ("image_series.nii.gz", "mask_series.nii.gz"):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "in_memory" / name).read_bytes()
    rec = json.loads((tmp_path / "streamed" / "series.json").read_text())
    ref = json.loads((tmp_path / "in_memory" / "series.json").read_text())
    for key in ("z_mm", "volumes_ml", "jacobian_min", "folded_fraction", "folding", "trajectory", "labels"):
        assert rec[key] == ref[key], key
    assert len(rec["z_mm"]) == len(rec["jacobian_min"]) == len(rec["folded_fraction"]) == 7
    assert all(len(v) == 7 for v in rec["volumes_ml"].values())


def _peak_numpy_bytes(image, mask, frames, out):
    options = GenerationSettings(frames=frames, sigma_mm=2.0, device="cpu").validate()
    aug = build_augmenter(image, mask, options)
    tracemalloc.start()
    try:
        generate_to_directory(image, mask, out, options, augmenter=aug)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_frames(tmp_path):
    """numpy's allocations (frames, file-layout copies) traced: T=24 peaks within one frame of T=3."""
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    image, mask = load_pair(img_path, seg_path)
    frame_bytes = image.data.size * 4 + mask.data.nbytes
    small = _peak_numpy_bytes(image, mask, 3, tmp_path / "t3")
    large = _peak_numpy_bytes(image, mask, 24, tmp_path / "t24")
    assert large - small < frame_bytes, (small, large, frame_bytes)


def _refused_cli(capsys, tmp_path, *args, match, quiet=False):
    out = tmp_path / "refused"
    status = main(["generate", *map(str, args[:2]), "-o", str(out), *map(str, args[2:])] + ["-q"] * quiet)
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and all(m in err for m in match), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]
    return err


def test_frames_beyond_the_free_disk_are_refused_up_front(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "free_disk", lambda path: 100 * 1024 ** 3)  # 100 GB free
    called = []
    monkeypatch.setattr(pipeline, "build_augmenter", lambda *a: called.append(1))
    err = _refused_cli(capsys, tmp_path, SAMPLE_IMAGE, SAMPLE_MASK, "--frames", 30000,
                       match=["frames: 30000 frames", str(tmp_path), "100.0 GB free"])
    assert "need about" in err and not called  # estimated before any work


def test_memory_beyond_the_available_is_refused(capsys, tmp_path, monkeypatch):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    monkeypatch.setattr(pipeline, "available_memory", lambda: 1024)
    _refused_cli(capsys, tmp_path, img_path, seg_path, match=["lps.nii.gz", "memory"])


def test_a_disk_filling_up_mid_series_leaves_nothing(capsys, tmp_path, monkeypatch):
    img_path, seg_path, *_ = _lps_pair(tmp_path)
    real = SeriesWriter.write

    def write(self, frame):
        if self.written == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, frame)

    monkeypatch.setattr(SeriesWriter, "write", write)
    _refused_cli(capsys, tmp_path, img_path, seg_path, "--frames", 5, match=["disk filled up", "nothing was kept"],
                 quiet=True)
