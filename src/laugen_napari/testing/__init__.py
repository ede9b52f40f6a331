"""LAUGEN as a test harness for longitudinal models (pytest plugin ``laugen``).

Series whose truth is known (z_t in mm, label volumes, Jacobians, the field) are built from the
shipped sample or a user's image/mask pairs (:mod:`.cases`); a model's predictions are measured
(:mod:`.models`, :func:`evaluate`) and checked with assertions whose failures read as a diagnosis
(:mod:`.assertions`). The pytest fixtures are in :mod:`.plugin`; ``laugen experiment unit-test``
scores a trained SimVP over kinds and slopes (:func:`score_checkpoint`).
"""

from .assertions import assert_correlates, assert_error_growth, assert_invariant_where_static, assert_monotone
from .cases import LongitudinalCase, PlaneSeries, Source, make_case, pair_sources, sample_source
from .models import LastFramePredictor, LinearExtrapolationPredictor, SimVPPredictor, StructureArea, load_predictor
from .scoring import Evaluation, evaluate, score_checkpoint

__all__ = [
    "assert_correlates", "assert_error_growth", "assert_invariant_where_static", "assert_monotone",
    "LongitudinalCase", "PlaneSeries", "Source", "make_case", "pair_sources", "sample_source",
    "LastFramePredictor", "LinearExtrapolationPredictor", "SimVPPredictor", "StructureArea", "load_predictor",
    "Evaluation", "evaluate", "score_checkpoint",
]
