"""Backoff: capped exponential windows, full jitter, SQS visibility bounds."""

from __future__ import annotations

import random

import pytest

from shared.consumers import Backoff
from shared.consumers._backoff import MAX_VISIBILITY_SECONDS


def test_window_doubles_until_the_cap() -> None:
    b = Backoff(base=1.0, cap=10.0)
    assert [b.window(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert Backoff(base=1.0, cap=900.0).window(10_000) == 900.0  # no overflow


def test_full_jitter_spreads_over_the_whole_window() -> None:
    b = Backoff(base=1.0, cap=900.0)
    rng = random.Random(42)
    delays = [b.delay(5, rng) for _ in range(2_000)]
    assert min(delays) >= 0.0
    assert max(delays) <= 16.0
    # Uniform on [0, 16]: both halves of the window are used, about equally.
    low = sum(1 for d in delays if d < 8.0)
    assert 800 < low < 1_200


def test_seeded_rng_gives_repeatable_delays() -> None:
    b = Backoff()
    assert [b.delay(3, random.Random(7)) for _ in range(3)] == [
        b.delay(3, random.Random(7)) for _ in range(3)]


def test_minimum_is_a_floor() -> None:
    b = Backoff(base=1.0, cap=4.0, minimum=2.0)
    rng = random.Random(1)
    assert all(2.0 <= b.delay(1, rng) <= 2.0 for _ in range(50))  # window 1 < floor 2
    assert all(2.0 <= b.delay(3, rng) <= 4.0 for _ in range(50))


def test_visibility_timeout_is_whole_seconds_within_sqs_limits() -> None:
    b = Backoff(base=1.0, cap=100_000.0)
    rng = random.Random(3)
    for attempt in (1, 2, 10, 40):
        seconds = b.visibility_timeout(attempt, rng)
        assert isinstance(seconds, int)
        assert 0 <= seconds <= MAX_VISIBILITY_SECONDS
    assert b.visibility_timeout(1, rng, hint=0.2) == 1  # rounded up, never "now"
    assert b.visibility_timeout(1, rng, hint=10**9) == MAX_VISIBILITY_SECONDS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"base": -1.0}, "base"), ({"cap": 0.5, "base": 1.0}, "cap"), ({"minimum": -2.0}, "minimum")],
)
def test_invalid_settings_name_the_field(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_attempt_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff().window(0)
