"""The worker's garbage collector settings (shared.hosts._gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.errors import ConfigurationError
from shared.hosts import configure_gc
from shared.hosts._gc import GC_THRESHOLDS_ENV, WORKER_GC_THRESHOLDS, gc_thresholds_from


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_the_worker_thresholds_unless_told_otherwise() -> None:
    assert gc_thresholds_from({}) == WORKER_GC_THRESHOLDS
    assert gc_thresholds_from({GC_THRESHOLDS_ENV: " 700,10,10 "}) == (700, 10, 10)
    assert gc_thresholds_from({GC_THRESHOLDS_ENV: "OFF"}) is None


@pytest.mark.parametrize("bad", ["700,10", "a,b,c", "0,10,10", "700,10,10,1", "-1,2,3"])
def test_a_bad_setting_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=GC_THRESHOLDS_ENV):
        gc_thresholds_from({GC_THRESHOLDS_ENV: bad})


def test_configure_gc_freezes_what_is_alive_and_sets_the_thresholds(restored_gc: None) -> None:
    assert configure_gc({}) == WORKER_GC_THRESHOLDS
    assert gc.get_threshold() == WORKER_GC_THRESHOLDS
    assert gc.get_freeze_count() > 1_000  # at least the imported modules' objects


def test_off_leaves_the_collector_alone(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    frozen = gc.get_freeze_count()
    assert configure_gc({GC_THRESHOLDS_ENV: "off"}) is None
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == frozen
