"""Settings precedence (explicit > config block > configure > environment > default),
eager validation, contextvars isolation, and the cache of warm executors."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading

import pytest

import workfns as T
from phasetrace import settings as cfg
from phasetrace.errors import StrategyError, StrategyRejectedError, StrategyUnavailableError
from phasetrace.executors import register_strategy, registry, work_items
from phasetrace.settings import (
    UNSET,
    Settings,
    config,
    configure,
    get_executor_for,
    get_settings,
    reset_configuration,
    resolve,
    shutdown_executors,
)


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for name in (cfg.ENV_STRATEGY, cfg.ENV_N_WORKERS, cfg.ENV_CACHE_DIR):
        monkeypatch.delenv(name, raising=False)
    reset_configuration()
    yield
    reset_configuration()
    shutdown_executors()


def test_defaults():
    s = get_settings()
    assert s == Settings()
    assert (s.strategy, s.n_workers, s.cache, s.cache_dir, s.progress, s.timeout, s.options) == (
        "auto",
        None,
        True,
        None,
        None,
        None,
        (),
    )


def test_precedence_explicit_block_configure_env_default(monkeypatch):
    assert resolve().n_workers is None  # default
    monkeypatch.setenv(cfg.ENV_N_WORKERS, "1")
    assert resolve().n_workers == 1  # environment
    configure(n_workers=2)
    assert resolve().n_workers == 2  # configure beats environment
    with config(n_workers=3):
        assert resolve().n_workers == 3  # block beats configure
        assert resolve(n_workers=4).n_workers == 4  # explicit beats block
        assert resolve(n_workers=UNSET).n_workers == 3  # UNSET falls through
    assert resolve().n_workers == 2
    reset_configuration()
    assert resolve().n_workers == 1


def test_each_field_goes_through_every_layer(monkeypatch, tmp_path):
    monkeypatch.setenv(cfg.ENV_STRATEGY, "spawn")
    monkeypatch.setenv(cfg.ENV_CACHE_DIR, str(tmp_path / "env"))
    assert (resolve().strategy, resolve().cache_dir) == ("spawn", str(tmp_path / "env"))
    configure(strategy="loky", cache_dir=tmp_path / "configured", timeout=5)
    s = resolve()
    assert (s.strategy, s.cache_dir, s.timeout) == ("loky", str(tmp_path / "configured"), 5.0)
    opts = {"min_chunk_seconds": 0.01, "idle_timeout": 5.0}
    with config(strategy="spawn", cache=False, progress=True, options=opts):
        s = resolve(timeout=None)
        assert (s.strategy, s.cache, s.progress, s.timeout) == ("spawn", False, True, None)
        assert s.options == (("idle_timeout", 5.0), ("min_chunk_seconds", 0.01))
        assert s.options_dict == opts


def test_none_is_a_value_not_a_fall_through():
    configure(timeout=10, n_workers=2)
    s = resolve(timeout=None, n_workers=None)
    assert s.timeout is None and s.n_workers is None


def test_configure_unset_removes_a_value():
    configure(n_workers=2, strategy="spawn")
    configure(n_workers=UNSET)
    assert (get_settings().n_workers, get_settings().strategy) == (None, "spawn")


def test_blocks_nest_and_restore_even_after_an_exception():
    configure(strategy="spawn")
    with config(n_workers=1):
        with pytest.raises(RuntimeError), config(strategy="sequential"):
            assert (get_settings().strategy, get_settings().n_workers) == ("sequential", 1)
            raise RuntimeError("inside")
        assert (get_settings().strategy, get_settings().n_workers) == ("spawn", 1)
    assert (get_settings().strategy, get_settings().n_workers) == ("spawn", None)


def test_config_object_applies_only_in_enter_and_can_be_reused():
    block = config(strategy="sequential")
    assert get_settings().strategy == "auto"  # creating it changes nothing
    for _ in range(2):
        with block as s:
            assert s.strategy == "sequential"
            with block:
                assert get_settings().strategy == "sequential"
        assert get_settings().strategy == "auto"


def test_new_threads_see_configure_defaults_not_the_block():
    configure(n_workers=2)
    seen = {}

    def look(name):
        seen[name] = (get_settings().strategy, get_settings().n_workers)

    with config(strategy="sequential"):
        t = threading.Thread(target=look, args=("plain",))
        t.start()
        t.join()
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(look, "copied"))
        t.start()
        t.join()
    assert seen["plain"] == ("auto", 2)
    assert seen["copied"] == ("sequential", 2)


def test_blocks_in_concurrent_threads_are_isolated():
    barrier = threading.Barrier(2)
    seen = {}

    def run(strategy):
        with config(strategy=strategy):
            barrier.wait()
            seen[strategy] = get_settings().strategy
            barrier.wait()

    threads = [threading.Thread(target=run, args=(s,)) for s in ("sequential", "spawn")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"sequential": "sequential", "spawn": "spawn"}


def test_asyncio_tasks_have_their_own_blocks():
    async def task(n):
        with config(n_workers=n):
            await asyncio.sleep(0.01)
            return get_settings().n_workers

    async def main():
        return await asyncio.gather(task(1), task(2))

    assert asyncio.run(main()) == [1, 2]


# -- eager validation --------------------------------------------------------------------


@pytest.mark.parametrize("make", [configure, config])
def test_bad_values_fail_at_configure_and_config_time(make):
    with pytest.raises(StrategyError, match="known strategies: auto"):
        make(strategy="nope")
    with pytest.raises(StrategyRejectedError, match="maintenance mode"):
        make(strategy="pmap")
    with pytest.raises(StrategyError, match="n_workers=0"):
        make(n_workers=0)
    with pytest.raises(StrategyError, match="got bool True"):
        make(n_workers=True)
    with pytest.raises(StrategyError, match="int or None"):
        make(n_workers="4")
    with pytest.raises(TypeError, match="unknown setting 'workers'; settings are"):
        make(workers=2)
    with pytest.raises(TypeError, match="cache"):
        make(cache="yes")
    with pytest.raises(ValueError, match="timeout"):
        make(timeout=-1)
    with pytest.raises(TypeError, match="options"):
        make(options=[1, 2])
    assert get_settings() == Settings()  # nothing was half-applied


def test_missing_extra_fails_at_configure_time():
    register_strategy("needs-x", "phasetrace_no_such_module:Ex", extra="x")
    try:
        with pytest.raises(StrategyUnavailableError, match=r'pip install "phasetrace\[x\]"'):
            configure(strategy="needs-x")
    finally:
        registry.reset_registry()


def test_pmap_rejected_by_resolve_and_environment(monkeypatch):
    with pytest.raises(StrategyRejectedError, match="GIL"):
        resolve(strategy="pmap")
    monkeypatch.setenv(cfg.ENV_STRATEGY, "pmap")
    with pytest.raises(StrategyRejectedError, match=cfg.ENV_STRATEGY):
        get_settings()


def test_bad_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv(cfg.ENV_N_WORKERS, "many")
    with pytest.raises(StrategyError, match=cfg.ENV_N_WORKERS):
        get_settings()
    monkeypatch.setenv(cfg.ENV_N_WORKERS, "0")
    with pytest.raises(StrategyError, match=cfg.ENV_N_WORKERS):
        get_settings()
    monkeypatch.setenv(cfg.ENV_N_WORKERS, "")  # empty means unset
    assert get_settings().n_workers is None


def test_settings_are_immutable_and_hashable_without_options():
    s = get_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.strategy = "loky"
    assert hash(s) == hash(Settings())


# -- executors kept warm -----------------------------------------------------------------


def test_get_executor_for_reuses_and_shutdown_closes():
    with config(strategy="spawn", n_workers=1):
        ex = get_executor_for()
        assert ex is get_executor_for(resolve())
        assert ex.map_items(T.getpid, work_items([0])) == ex.map_items(T.getpid, work_items([0]))
    other = get_executor_for(resolve(strategy="sequential"))
    assert other is not ex and other.name == "sequential"
    shutdown_executors()
    assert ex.closed and other.closed
    with config(strategy="spawn", n_workers=1):
        fresh = get_executor_for()
        assert fresh is not ex and not fresh.closed


def test_get_executor_for_passes_options():
    with config(strategy="spawn", n_workers=1, options={"idle_timeout": 5.0}):
        assert get_executor_for().idle_timeout == 5.0
    with pytest.raises(TypeError, match=r"options of strategy 'spawn': .*idle_timeout"):
        config(strategy="spawn", n_workers=1, options={"address": "x"})


def test_unknown_keywords_are_strategy_options_checked_eagerly():
    with config(strategy="spawn", idle_timeout=7.0):
        assert get_settings().options_dict == {"idle_timeout": 7.0}
    with pytest.raises(TypeError, match="unknown setting 'idle_timeot'"):
        config(strategy="spawn", idle_timeot=7.0)
    with config(strategy="spawn"), pytest.raises(TypeError, match="'adress'"):
        config(adress="tcp://x")  # checked against the strategy in effect
