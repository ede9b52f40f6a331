"""Unit tests of a trained next-frame model with LAUGEN series whose truth is known.

Run against the SimVP that ``laugen train simvp`` wrote (any folder; the ``laugen`` pytest plugin
is active once laugen-napari is installed)::

    pytest example_test_longitudinal.py --laugen-model runs/simvp/best.pt
    pytest example_test_longitudinal.py --laugen-model runs/simvp/best.pt --laugen-pairs my_pairs/

Each series is the MNI152 sample (or your pairs) with its ventricles growing or shrinking by a
known z_t mm per frame; the model sees the first frames and predicts the rest, in 2D planes.
"""

import numpy as np
import pytest

from laugen_napari.testing import (
    assert_correlates, assert_error_growth, assert_invariant_where_static, assert_monotone, evaluate)

KINDS = ["uniform", "directional", "gaussian"]
SLOPES = [-0.5, 0.5]  # mm per frame: shrinking and growing


@pytest.fixture
def result(laugen_model, laugen_series, request):
    kind, slope = request.param
    case = laugen_series(kind=kind, slope=slope, frames=laugen_model.context + laugen_model.target)
    return case, evaluate(laugen_model, case)


CASES = [pytest.param((k, s), id=f"{k}{s:+g}") for k in KINDS for s in SLOPES]


@pytest.mark.parametrize("result", CASES, indirect=True)
def test_measured_structure_is_monotone_in_z(result):
    case, ev = result
    assert_monotone(ev.model_area, case.z_mm, tolerance=0.01 * ev.model_area[0],
                    what="structure area in context + predicted frames", unit="mm²")


@pytest.mark.parametrize("result", CASES, indirect=True)
def test_predicted_change_follows_the_true_change(result):
    case, ev = result
    true_change, model_change = ev.area_change
    assert_correlates(model_change, true_change, min_r=0.9, what="predicted area change",
                      truth_name="true area change")
    # and it has the right sign: a growing structure is predicted to grow
    assert np.sign(model_change[-1]) == np.sign(true_change[-1]), (model_change, true_change)


@pytest.mark.parametrize("result", CASES, indirect=True)
def test_error_grows_slowly_with_the_horizon(result):
    case, ev = result
    span = float(np.ptp(case.frames[0]))
    assert_error_growth(ev.rmse_by_horizon, max_rate=0.05 * span, what="RMSE by horizon")


@pytest.mark.parametrize("result", CASES, indirect=True)
def test_nothing_changes_where_the_field_is_zero(result):
    case, ev = result
    span = float(np.ptp(case.frames[0]))
    assert_invariant_where_static(ev.predicted, ev.context[:, -1:], ev.static[:, None], atol=0.05 * span,
                                  what="prediction")
