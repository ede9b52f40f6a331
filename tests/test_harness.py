"""The longitudinal unit-test harness (laugen_napari.testing): truth of the cases, the assertions'
verdicts and messages, a broken model failing, the plugin from a fresh pytest run outside the
repository, and `laugen experiment unit-test` on a trained SimVP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from laugen_napari.testing import (
    LastFramePredictor, LinearExtrapolationPredictor, SimVPPredictor, assert_correlates, assert_error_growth,
    assert_invariant_where_static, assert_monotone, evaluate, make_case, sample_source)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "example_test_longitudinal.py"


@pytest.fixture(scope="module")
def source():
    return sample_source()


def test_case_exposes_the_engines_truth(source):
    case = make_case(source, kind="uniform", slope=0.5, frames=6)
    assert case.frames.shape[0] == 6 and np.array_equal(case.frames[0], source.image)
    assert np.allclose(case.z_mm, 0.5 * np.arange(6))
    voxel_ml = float(np.prod(case.spacing)) / 1000
    for t in (0, 5):
        for v in (1, 2):
            assert case.volumes_ml[v][t] == pytest.approx((case.labels[t] == v).sum() * voxel_ml)
    assert case.volume_ml[-1] > case.volume_ml[0]  # growing
    static = case.static
    assert 0.1 < static.mean() < 0.95
    assert np.array_equal(case.frames[-1][static], case.frames[0][static])  # nothing moves where F = 0
    assert case.jacobian_min[0] == 1.0 and case.jacobian_min[-1] < 1.0
    assert case.jacobian(5).min() == pytest.approx(case.jacobian_min[5], abs=1e-6)
    shrink = make_case(source, kind="gaussian", slope=-0.5, frames=6, labels=[1])
    assert shrink.driving == [1] and shrink.volumes_ml[1][-1] < shrink.volumes_ml[1][0]
    assert shrink.volumes_ml[2][-1] == pytest.approx(shrink.volumes_ml[2][0], rel=0.02)  # label 2 not driven


def test_assertions_pass_good_and_explain_bad_behaviour():
    z = np.array([0.0, 0.5, 1.0, 1.5])
    assert_monotone([10, 11, 12, 13], z)
    assert_monotone([13, 12, 11, 10], -z)  # shrinking: still increasing with z
    with pytest.raises(AssertionError, match=r"not monotone in z_t.*z = 0\.5 mm \(frame 1\) to z = 1 mm \(frame 2\).*12 -> 11"):
        assert_monotone([10, 12, 11, 13], z)
    assert_monotone([10, 12, 11.9, 13], z, tolerance=0.2)
    assert assert_correlates([1, 2, 3.1, 4], [2, 4, 6, 8]) > 0.99
    with pytest.raises(AssertionError, match=r"r = -1\.000, below the required 0\.9"):
        assert_correlates([4, 3, 2, 1], [1, 2, 3, 4])
    with pytest.raises(AssertionError, match="correlation undefined, predicted area does not change"):
        assert_correlates([0, 0, 0], [1, 2, 3], what="predicted area")
    assert_error_growth([1.0, 1.5, 2.0], max_rate=0.5)
    with pytest.raises(AssertionError, match=r"grows too fast.*4 at 3 frames ahead exceeds e_1 \+ 0\.5 \(h - 1\) = 2"):
        assert_error_growth([1.0, 1.5, 4.0], max_rate=0.5)
    assert_error_growth([1.0, 2.0, 3.0], max_rate=1.0, relative=True)
    with pytest.raises(AssertionError, match="e_1 \\* \\(1 \\+ 0.5 \\(h - 1\\)\\)"):
        assert_error_growth([1.0, 2.0, 3.0], max_rate=0.5, relative=True)
    static = np.zeros((4, 4), bool)
    static[:2] = True
    ref = np.zeros((4, 4))
    pred = np.zeros((2, 4, 4))
    pred[:, 2:] = 5.0  # changes only where the field moves
    assert_invariant_where_static(pred, ref, static, atol=0.1)
    pred[1, 0, 3] = 2.0
    with pytest.raises(AssertionError, match=r"1 of 16 static values.*largest change 2 at index \(1, 0, 3\)"):
        assert_invariant_where_static(pred, ref, static, atol=0.1)


def test_harness_fails_a_model_that_returns_the_last_frame(source):
    case = make_case(source, kind="uniform", slope=0.5, frames=8)
    good = evaluate(LinearExtrapolationPredictor(), case)
    broken = evaluate(LastFramePredictor(), case)
    true_change, good_change = good.area_change
    assert_correlates(good_change, true_change, min_r=0.9)
    assert_monotone(good.model_area, case.z_mm, tolerance=0.01 * good.model_area[0])
    assert np.all(broken.area_change[1] == 0)
    with pytest.raises(AssertionError, match="correlation undefined, predicted area change does not change"):
        assert_correlates(broken.area_change[1], broken.area_change[0], what="predicted area change")
    # the measurement on true frames follows the label truth
    assert_correlates(good.measured_true_area, good.true_area, min_r=0.98)


def _pytest(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_plugin_from_a_fresh_pytest_run_outside_the_repository(tmp_path):
    """The example test file in a scratch folder, the plugin found through the installed entry
    point (no conftest, no -p): a sensible model passes, the last-frame model fails with reasons."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    ok = _pytest([EXAMPLE.name, "--laugen-model", "linear-extrapolation"], tmp_path)
    assert ok.returncode == 0 and "24 passed" in ok.stdout, ok.stdout[-3000:] + ok.stderr[-2000:]
    bad = _pytest([EXAMPLE.name, "--laugen-model", "last-frame"], tmp_path)
    assert bad.returncode == 1 and "6 failed, 18 passed" in bad.stdout, bad.stdout[-3000:]
    assert "predicted area change does not change" in bad.stdout
    # without a model: one clear usage error, not a crash
    none = _pytest([EXAMPLE.name, "-k", "uniform+0.5 and monotone"], tmp_path)
    assert none.returncode != 0 and "needs a model: pytest --laugen-model CKPT" in none.stdout + none.stderr


def test_plugin_series_from_the_users_pairs_and_indirect_cases(tmp_path, source):
    """Pairs of the user's (2 mm anisotropic, written as NIfTI) through --laugen-pairs, a user's
    own predictor through module:attribute, and laugen_case parametrized indirectly."""
    from laugen_napari.io.nifti import save_volume, volume_from_array

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    image, labels = source.image[::2], source.labels[::2]
    ref = volume_from_array(image, (2.0, 1.0, 1.0))
    save_volume(pairs / "subj01.nii.gz", image, ref)
    save_volume(pairs / "subj01_seg.nii.gz", labels.astype(np.uint8), ref)
    (tmp_path / "mymodels.py").write_text(
        "import numpy as np\n"
        "class Still:\n"
        "    context, target = 3, 2\n"
        "    def __call__(self, c):\n"
        "        return np.repeat(c[:, -1:], self.target, axis=1)\n")
    (tmp_path / "test_user.py").write_text(
        "import numpy as np, pytest\n"
        "@pytest.mark.parametrize('laugen_case', [{'kind': 'gaussian', 'slope': -0.5, 'frames': 5}], indirect=True)\n"
        "def test_case(laugen_case, laugen_series, laugen_model):\n"
        "    assert laugen_case.params['source'] == 'subj01' and laugen_case.spacing == (2.0, 1.0, 1.0)\n"
        "    assert laugen_case.frames.shape[0] == 5 and laugen_case.volume_ml[-1] < laugen_case.volume_ml[0]\n"
        "    assert laugen_series(kind='gaussian', slope=-0.5, frames=5) is laugen_case  # cached per session\n"
        "    assert (laugen_model.context, laugen_model.target) == (3, 2)\n")
    run = _pytest(["test_user.py", "--laugen-pairs", str(pairs), "--laugen-model", "mymodels:Still"], tmp_path)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]


def test_unit_test_command_scores_a_trained_simvp(tmp_path, source):
    from laugen_napari.cli import main
    from laugen_napari.training.datasets import SliceSpec, SyntheticSource, build_data
    from laugen_napari.training.simvp import build_task, train_simvp

    src = SyntheticSource(source.image, source.labels, source.spacing, name="mni")
    bundle = build_data(sources=[src], spec=SliceSpec(crop=(32, 32)), length=8, n_val_synthetic=2, kinds=("uniform",))
    list(train_simvp(bundle, tmp_path / "run", steps=2, batch_size=4, size=dict(hid_S=8, hid_T=16)))
    ckpt = tmp_path / "run" / "last.pt"
    predictor = SimVPPredictor(ckpt)
    assert (predictor.context, predictor.target) == (4, 4)
    task = build_task(bundle, size=dict(hid_S=8, hid_T=16), schedule="constant")
    task.init_from(ckpt)
    task.model.eval()
    with torch.no_grad():
        expected = task.predict_raw(bundle.val[:, :4])
    assert np.allclose(predictor(bundle.val[:, :4]), expected, atol=1e-3)  # same model, same normalisation
    out = tmp_path / "ut"
    assert main(["experiment", "unit-test", "--model", str(ckpt), "--kinds", "uniform,gaussian", "--slopes=-0.5,0.5",
                 "--series", "1", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads((out / "unit-test" / "report.json").read_text())
    assert [(r["kind"], r["slope"]) for r in report["rows"]] == [
        ("uniform", -0.5), ("uniform", 0.5), ("gaussian", -0.5), ("gaussian", 0.5)]
    for r in report["rows"]:
        assert len(r["rmse_by_horizon"]) == 4 and r["true_change_last_mm2"] * r["slope"] > 0
    assert (out / "unit-test" / "unit-test.png").stat().st_size > 10_000
    assert main(["experiment", "unit-test", "--model", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
    assert main(["experiment", "unit-test", "--model", str(ckpt), "--kinds", "spiral", "--out", str(out)]) == 2
