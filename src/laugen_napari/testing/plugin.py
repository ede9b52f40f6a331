"""The ``laugen`` pytest plugin (registered as a ``pytest11`` entry point: active in every pytest
run once laugen-napari is installed).

Fixtures
--------
``laugen_sources`` (session)
    The image/mask sources: the shipped MNI152 sample, or the pairs of ``--laugen-pairs DIR``.
``laugen_series`` (session)
    A factory ``laugen_series(kind="uniform", trajectory="linear", slope=0.5, frames=8,
    labels=None, sigma_mm=None, source=0, seed=0)`` returning a
    :class:`~laugen_napari.testing.cases.LongitudinalCase` (frames, z_mm, labels, volumes_ml,
    jacobian_min, field, ...), cached for the session: the same parameters give the same object.
``laugen_case``
    One case; parametrize it indirectly with the factory's keywords::

        @pytest.mark.parametrize("laugen_case", [{"kind": "gaussian", "slope": -0.5}], indirect=True)
        def test_x(laugen_case): ...

``laugen_model`` (session)
    The model under test from ``--laugen-model SPEC`` (or the ``LAUGEN_MODEL`` environment
    variable): a SimVP checkpoint of ``laugen train simvp``, ``module:attribute``, or a built-in
    (``last-frame``, ``linear-extrapolation``); see :func:`~laugen_napari.testing.models.load_predictor`.

Assertions (``from laugen_napari.testing import ...``): :func:`assert_monotone`,
:func:`assert_correlates`, :func:`assert_error_growth`, :func:`assert_invariant_where_static`.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("laugen", "LAUGEN longitudinal unit tests")
    g.addoption("--laugen-model", metavar="SPEC", default=None,
                help="model under test: a SimVP checkpoint, module:attribute, or last-frame / linear-extrapolation "
                     "(default: $LAUGEN_MODEL)")
    g.addoption("--laugen-pairs", metavar="DIR", default=None,
                help="image/mask pairs to build series from (default: the shipped MNI152 sample)")
    g.addoption("--laugen-device", default="cpu", help="torch device for the model under test (default cpu)")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a bad ``--laugen-pairs`` folder once, at start-up (a usage error, no traceback),
    rather than as the same error in every test that uses a LAUGEN fixture."""
    folder = config.getoption("--laugen-pairs", default=None)
    if not folder:
        return
    from ..io.pairs import find_pairs

    try:
        find_pairs(folder)  # lists the folder only: the files are read by the first test that needs them
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--laugen-pairs: {exc}") from None


@pytest.fixture(scope="session")
def laugen_sources(pytestconfig: pytest.Config):
    """The sources of the session's series (sample or ``--laugen-pairs``)."""
    from .cases import pair_sources, sample_source

    folder = pytestconfig.getoption("--laugen-pairs")
    if not folder:
        return [sample_source()]
    try:
        return pair_sources(folder)
    except (OSError, ValueError) as exc:  # an unreadable pair: one line per test, not a traceback
        pytest.fail(f"--laugen-pairs: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def laugen_series(laugen_sources):
    """Factory of cached :class:`LongitudinalCase` objects (see the module docstring)."""
    from .cases import make_case

    cache: dict = {}

    def build(kind: str = "uniform", trajectory: str = "linear", slope: float = 0.5, frames: int = 8,
              labels=None, sigma_mm: float | None = None, source: int = 0, seed: int = 0):
        key = (kind, trajectory, float(slope), int(frames), None if labels is None else tuple(labels),
               sigma_mm, int(source), int(seed))
        if key not in cache:
            if not 0 <= source < len(laugen_sources):
                raise ValueError(f"source {source} out of range: {len(laugen_sources)} source(s)")
            cache[key] = make_case(laugen_sources[source], kind=kind, trajectory=trajectory, slope=slope, frames=frames,
                                   labels=labels, sigma_mm=sigma_mm, seed=seed)
        return cache[key]

    build.cache = cache
    return build


@pytest.fixture
def laugen_case(request: pytest.FixtureRequest, laugen_series):
    """One case; ``request.param`` (indirect parametrization) holds :func:`laugen_series` keywords."""
    return laugen_series(**dict(getattr(request, "param", None) or {}))


@pytest.fixture(scope="session")
def laugen_model(pytestconfig: pytest.Config):
    """The model under test (``--laugen-model`` or ``$LAUGEN_MODEL``)."""
    from .models import load_predictor

    spec = pytestconfig.getoption("--laugen-model") or os.environ.get("LAUGEN_MODEL")
    if not spec:
        raise pytest.UsageError("the laugen_model fixture needs a model: pytest --laugen-model CKPT "
                                "(or LAUGEN_MODEL=CKPT; also module:attribute, last-frame, linear-extrapolation)")
    return load_predictor(spec, device=pytestconfig.getoption("--laugen-device"))
