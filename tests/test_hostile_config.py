"""Settings that used to pass configure() and fail only at first use (issue 12)."""

from __future__ import annotations

import pytest

import phasetrace as pt
from phasetrace.errors import StrategyError
from phasetrace.settings import reset_configuration


@pytest.fixture(autouse=True)
def _clean_configuration():
    reset_configuration()
    yield
    reset_configuration()


BAD_OPTIONS = [
    dict(strategy="loky", idle_timeout=-1),
    dict(strategy="spawn", idle_timeout=0),
    dict(strategy="spawn", chunks_per_worker=0),
    dict(strategy="loky", min_chunk_seconds=-1.0),
    dict(strategy="joblib", chunks_per_worker=1.5),
    dict(strategy="auto", idle_timeout=-1),
    dict(strategy="auto", per_unit_s="fast"),
    dict(strategy="dask", address=42),
    dict(strategy="dask", connect_timeout=0),
    dict(strategy="dask", threads_per_worker=True),
]


@pytest.mark.parametrize("kwargs", BAD_OPTIONS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_bad_option_values_fail_in_configure_and_config(kwargs):
    with pytest.raises(StrategyError):
        pt.configure(**kwargs)
    assert pt.get_settings().options_dict == {}  # nothing half-applied
    with pytest.raises(StrategyError), pt.config(**kwargs):
        pass


def test_option_values_are_checked_against_the_configured_strategy():
    pt.configure(strategy="loky")
    with pytest.raises(StrategyError, match="idle_timeout"):
        pt.configure(idle_timeout=-5)
    pt.configure(idle_timeout=5)  # a good value is kept
    assert pt.get_settings().options_dict == {"idle_timeout": 5}


def test_unexpandable_home_in_cache_dir_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="no home directory for user 'no-such-user-x'"):
        pt.configure(cache_dir="~no-such-user-x/cache")
    monkeypatch.setenv("PHASETRACE_CACHE_DIR", "~no-such-user-x/cache")
    with pytest.raises(StrategyError, match="PHASETRACE_CACHE_DIR"):
        pt.compute_trace(pt.models.kingman(3), strategy="sequential")


def test_unexpandable_home_is_overridden_by_an_explicit_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASETRACE_CACHE_DIR", "~no-such-user-x/cache")
    trace = pt.compute_trace(pt.models.kingman(3), strategy="sequential", cache_dir=tmp_path)
    assert float(trace.expectation([1.0])) == pytest.approx(2 * (1 - 1 / 3), rel=1e-15)
