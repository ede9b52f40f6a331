"""``laugen dataset``: manifests, one Dask task per pair, per-pair seeds, failures recorded."""

import json

import nibabel as nib
import numpy as np
import pytest

from laugen_napari.batch import pair_seed, run_dataset
from laugen_napari.io.pairs import Pair, read_manifest
from laugen_napari.cli import main
from laugen_napari.settings import GenerationSettings

SHAPE = (24, 24, 12)  # file order I, J, K
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _write_pair(folder, name, seed, mask_suffix="_seg", center=(12, 12, 6)):
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    r2 = ((ii - center[0]) * 1.5) ** 2 + ((jj - center[1]) * 1.5) ** 2 + ((kk - center[2]) * 2.0) ** 2
    label = (r2 < 6.0 ** 2).astype(np.uint8)
    image = (100 + 50 * label + rng.normal(0, 5, SHAPE)).astype(np.float32)
    img = folder / f"{name}.nii.gz"
    seg = folder / f"{name}{mask_suffix}.nii.gz"
    nib.save(nib.Nifti1Image(image, AFFINE), str(img))
    nib.save(nib.Nifti1Image(label, AFFINE), str(seg))
    return img, seg


@pytest.fixture
def manifest(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    a = _write_pair(data, "a", 1)
    b = _write_pair(data, "b", 2, center=(10, 13, 5))
    bad_img, _ = _write_pair(data, "c", 3)
    bad_mask = data / "c_seg_small.nii.gz"  # a different grid: the pair must fail
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), AFFINE), str(bad_mask))
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,mask,id\n"
                   f"data/{a[0].name},data/{a[1].name},case_a\n"
                   f"data/{bad_img.name},data/{bad_mask.name},case_bad\n"
                   f"{b[0]},{b[1]},case_b\n")
    return csv


ARGS = ["--frames", "3", "--sigma-mm", "2", "--slope-range", "0.3", "0.6", "--seed", "5", "--device", "cpu", "-q"]


def test_csv_manifest_one_broken_pair(manifest, tmp_path):
    out = tmp_path / "out"
    status = main(["dataset", str(manifest), "-o", str(out), "--scheduler", "synchronous", *ARGS])
    assert status == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["case_a", "case_b", "dataset.json"]
    rec = json.loads((out / "dataset.json").read_text())
    assert [p["id"] for p in rec["pairs"]] == ["case_a", "case_bad", "case_b"]
    assert [p["status"] for p in rec["pairs"]] == ["ok", "error", "ok"]
    assert rec["pairs_failed"] == 1 and "shape" in rec["pairs"][1]["error"].lower()
    assert rec["base_seed"] == 5 and rec["pairs"][0]["seed"] == pair_seed(5, "case_a")
    for pid in ("case_a", "case_b"):
        series = nib.load(str(out / pid / "image_series.nii.gz"))
        assert series.shape == SHAPE + (3,)
        assert json.loads((out / pid / "series.json").read_text())["seed"] == pair_seed(5, pid)
    assert not any(p.name.startswith(".case_bad") for p in out.iterdir())  # nothing half-written

    # the same pair through `laugen generate` with the derived seed gives identical files
    single = tmp_path / "single"
    a_img, a_mask = (manifest.parent / "data" / n for n in ("a.nii.gz", "a_seg.nii.gz"))
    gen_args = [a if a != "5" else str(pair_seed(5, "case_a")) for a in ARGS]
    assert main(["generate", str(a_img), str(a_mask), "-o", str(single), *gen_args]) == 0
    for name in ("image_series.nii.gz", "mask_series.nii.gz"):
        np.testing.assert_array_equal(np.asarray(nib.load(str(single / name)).dataobj),
                                      np.asarray(nib.load(str(out / "case_a" / name)).dataobj))
    assert (json.loads((single / "series.json").read_text())["z_mm"]
            == json.loads((out / "case_a" / "series.json").read_text())["z_mm"])


def test_local_cluster_matches_synchronous(tmp_path):
    """Two pairs on a real LocalCluster (one process): same files as in-process, seeds by id."""
    data = tmp_path / "data"
    data.mkdir()
    _write_pair(data, "p1", 1, mask_suffix="_mask")
    _write_pair(data, "p2", 2, mask_suffix="_label", center=(11, 12, 7))
    pairs = read_manifest(data)
    assert [(p.id, p.mask.endswith(s)) for p, s in zip(pairs, ("_mask.nii.gz", "_label.nii.gz"))] == \
        [("p1", True), ("p2", True)]
    options = GenerationSettings(frames=3, sigma_mm=2.0, slope_range=(0.3, 0.6), seed=9, device="cpu")
    seen = []
    cluster = run_dataset(pairs[::-1], tmp_path / "cluster", options, workers=1,
                          progress=lambda done, total, rec: seen.append((done, total, rec["status"])))
    sync = run_dataset(pairs, tmp_path / "sync", options, scheduler="synchronous")
    assert cluster["pairs_ok"] == sync["pairs_ok"] == 2 and sorted(seen) == [(1, 2, "ok"), (2, 2, "ok")]
    for pid in ("p1", "p2"):
        a = np.asarray(nib.load(str(tmp_path / "cluster" / pid / "image_series.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "sync" / pid / "image_series.nii.gz")).dataobj)
        np.testing.assert_array_equal(a, b)


def test_manifest_and_output_refusals(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write_pair(data, "x", 1)
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), str(data / "lonely.nii.gz"))
    assert main(["dataset", str(data), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "no mask" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("img,seg\na.nii.gz,b.nii.gz\n")
    assert main(["dataset", str(bad_csv), "-o", str(tmp_path / "o"), "-q"]) == 2
    dup = tmp_path / "dup.csv"
    dup.write_text("image,mask,id\na.nii.gz,b.nii.gz,s\nc.nii.gz,d.nii.gz,s\n")
    with pytest.raises(ValueError, match="used by pairs"):
        read_manifest(dup)
    with pytest.raises(ValueError, match="folder name"):
        run_dataset([Pair("../x", "a", "b")], tmp_path / "o", scheduler="synchronous")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        run_dataset([Pair("x", "a", "b")], full, scheduler="synchronous")
    assert main(["dataset", str(data / "missing.csv"), "-o", str(tmp_path / "o"), "-q"]) == 2


def test_pair_seed_depends_on_id_and_base_only():
    assert pair_seed(0, "a") == pair_seed(0, "a")
    assert len({pair_seed(0, "a"), pair_seed(0, "b"), pair_seed(1, "a")}) == 3
    assert 0 <= pair_seed(123, "case") < 2 ** 31
