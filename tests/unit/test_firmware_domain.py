"""Firmware rollout decisions without I/O: what may start, how waves are sized and filled,
when a rollout aborts or halts, which lifecycle changes are allowed, how an answer moves a
device."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from services.firmware._store import DeviceRecord
from services.firmware.acks import FAILED, REPORTED, Answer, decide
from services.firmware.domain import (
    RolloutCommand,
    RolloutCounts,
    RolloutSpec,
    RolloutState,
    abort_due,
    compare_versions,
    next_state,
    wave_reached_success,
    wave_sizes,
)
from services.firmware.errors import InvalidTransition, RolloutRejected
from services.firmware.planner import WaveSampler

KNOWN = ["1.0.0", "2.0.0", "2.1.0"]


def spec(**changes: object) -> RolloutSpec:
    values: dict[str, object] = {"version": "2.0.0", "zone": "eu"}
    values.update(changes)
    return RolloutSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"version": "9.9.9"}, "version", "not an uploaded version"),
    ({"version": "banana"}, "version", "not a version"),
    ({"zone": "us"}, "zone", "serves zone 'eu'"),
    ({"from_version": "2.1.0"}, "version", "--allow-downgrade"),
    ({"from_version": "2.0.0"}, "from_version", "is the version being rolled out"),
    ({"success_threshold": 0}, "success_threshold", "0 < value <= 100"),
    ({"success_threshold": 101}, "success_threshold", "0 < value <= 100"),
    ({"abort_threshold": 100}, "abort_threshold", "0 <= value < 100"),
    ({"abort_threshold": -1}, "abort_threshold", "0 <= value < 100"),
    ({"canary": 0}, "canary", "at least 1"),
    ({"growth": 1.0}, "growth", "greater than 1"),
    ({"waves": (10.0, 5.0, 100.0)}, "waves", "increasing"),
    ({"waves": (10.0, 50.0)}, "waves", "ending at 100"),
    ({"min_executed": 0}, "min_executed", "at least 1"),
    ({"device_timeout": 0}, "device_timeout", "between"),
    ({"batch_size": 1001}, "batch_size", "between 1 and 1000"),
])
def test_a_rollout_that_cannot_start_names_the_field(
    changes: dict[str, object], field: str, words: str,
) -> None:
    with pytest.raises(RolloutRejected) as caught:
        spec(**changes).validate(deployment_zone="eu", known_versions=KNOWN)
    assert caught.value.field == field
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"{field}: ")


def test_a_valid_rollout_and_an_allowed_downgrade_pass() -> None:
    assert spec().validate(deployment_zone="eu", known_versions=KNOWN).version == "2.0.0"
    downgrade = spec(version="1.0.0", from_version="2.0.0", allow_downgrade=True)
    assert downgrade.validate(deployment_zone="eu", known_versions=KNOWN) is downgrade


def test_versions_compare_as_numbers_and_pre_releases_come_first() -> None:
    assert compare_versions("1.10.0", "1.9.0") == 1
    assert compare_versions("2.0", "2.0.0") == 0
    assert compare_versions("2.0.0-rc1", "2.0.0") == -1
    assert compare_versions("2.0.0+b7", "2.0.0") == 0
    assert compare_versions("1.0.0", "1.0.1") == -1


def test_waves_grow_from_the_canary_and_the_last_takes_what_is_left() -> None:
    growth = spec(canary=10, growth=4)
    assert list(wave_sizes(growth, 1000)) == [10, 40, 160, 640, 150]
    assert sum(wave_sizes(growth, 1_000_000)) == 1_000_000
    assert list(itertools.islice(wave_sizes(growth), 4)) == [10, 40, 160, 640]
    assert list(wave_sizes(spec(canary=50), 20)) == [20]
    assert list(wave_sizes(spec(waves=(1.0, 10.0, 50.0, 100.0)), 2000)) == [20, 180, 800, 1000]
    assert list(wave_sizes(spec(waves=(1.0, 10.0, 100.0)), 5)) == [1, 1, 3]  # one at least


def test_sampling_fills_every_wave_exactly_at_random_and_replans_the_same() -> None:
    sizes = [10, 40, 160, 790]
    first = WaveSampler(sizes, seed="r-1")
    drawn = [first.draw() for _ in range(1000)]
    assert Counter(drawn) == {0: 10, 1: 40, 2: 160, 3: 790}
    assert first.remaining == 0
    again, other = WaveSampler(sizes, seed="r-1"), WaveSampler(sizes, seed="r-2")
    assert [again.draw() for _ in range(1000)] == drawn
    assert [other.draw() for _ in range(1000)] != drawn
    # The canary is spread over the stream, not its first devices (a Scan returns a
    # tenant's devices together): its ten places land across the 1,000 positions.
    canary_positions = [i for i, wave in enumerate(drawn) if wave == 0]
    assert canary_positions[-1] - canary_positions[0] > 500
    extra = WaveSampler([1, 1], seed="x")
    assert sorted([extra.draw(), extra.draw()]) == [0, 1]
    assert extra.draw() == 1  # more devices than counted: the last wave


def test_the_abort_threshold_waits_for_enough_outcomes() -> None:
    few = RolloutCounts(succeeded=3, failed=2)
    assert not abort_due(few, abort_threshold=10, min_executed=10)
    enough = RolloutCounts(succeeded=8, failed=1, timed_out=1, in_progress=50)
    assert enough.failure_share == 20.0
    assert abort_due(enough, abort_threshold=10, min_executed=10)
    assert not abort_due(enough, abort_threshold=20, min_executed=10)  # over, not at


def test_a_wave_reaches_success_by_its_size_not_by_who_answered() -> None:
    answered = RolloutCounts(succeeded=90, failed=0, in_progress=10)
    assert not wave_reached_success(answered, size=100, success_threshold=95)
    assert wave_reached_success(answered, size=100, success_threshold=90)
    assert wave_reached_success(RolloutCounts(), size=0, success_threshold=95)


def test_lifecycle_changes_and_refusals() -> None:
    assert next_state(RolloutState.WAITING_APPROVAL, RolloutCommand.APPROVE) is \
        RolloutState.RUNNING
    assert next_state(RolloutState.PAUSED, RolloutCommand.ABORT) is RolloutState.ABORTED
    assert next_state(RolloutState.ABORTED, RolloutCommand.FINISH_ROLLBACK) is \
        RolloutState.ROLLED_BACK
    with pytest.raises(InvalidTransition, match="rollout is RUNNING: approve needs "
                                                "WAITING_APPROVAL"):
        next_state(RolloutState.RUNNING, RolloutCommand.APPROVE)
    with pytest.raises(InvalidTransition, match="rollout is SUCCEEDED"):
        next_state(RolloutState.SUCCEEDED, RolloutCommand.ABORT)


def test_overlapping_rollouts_share_a_zone_tenants_and_possible_versions() -> None:
    a = spec(tenant="t-001", from_version="1.0.0")
    assert a.overlaps(spec(tenant="t-001"))
    assert a.overlaps(spec(tenant=None, from_version="1.0.0", version="2.1.0"))
    assert not a.overlaps(spec(tenant="t-002"))
    assert not a.overlaps(spec(tenant="t-001", zone="us"))
    assert not a.overlaps(spec(tenant="t-001", from_version="1.5.0", version="1.6.0"))
    # a device a moves to 2.0.0 would match b's from-version
    assert a.overlaps(spec(tenant="t-001", from_version="2.0.0", version="2.1.0"))


def test_targets_skip_other_zones_tenants_the_target_and_downgrades() -> None:
    s = spec(tenant="t-001")
    assert s.targets(tenant="t-001", zone="eu", firmware="1.0.0")
    assert not s.targets(tenant="t-001", zone="us", firmware="1.0.0")
    assert not s.targets(tenant="t-002", zone="eu", firmware="1.0.0")
    assert not s.targets(tenant="t-001", zone="eu", firmware="2.0.0")
    assert not s.targets(tenant="t-001", zone="eu", firmware="2.1.0")  # a downgrade
    assert spec(allow_downgrade=True).targets(tenant="t-9", zone="eu", firmware="2.1.0")
    assert spec(from_version="1.0.0").targets(tenant="t-9", zone="eu", firmware="1.0.0")
    assert not spec(from_version="1.0.0").targets(tenant="t-9", zone="eu", firmware="1.1.0")


def device(**changes: object) -> DeviceRecord:
    values: dict[str, object] = {
        "device_id": "dev-1", "rollout_id": "r-1", "wave": 0, "batch": "BATCH#0000#dev-1",
        "tenant": "t-001", "from_version": "1.0.0", "target_version": "2.0.0",
        "outcome": "in_progress"}
    values.update(changes)
    return DeviceRecord(**values)  # type: ignore[arg-type]


def test_an_answer_moves_a_device_once() -> None:
    ok = Answer("m1", "dev-1", REPORTED, "2.0.0")
    after, deltas, scope = decide(device(), ok)
    assert after is not None
    assert after.outcome == "succeeded"
    assert deltas == {"in_progress": -1, "succeeded": 1}
    assert scope == "batch"
    assert decide(after, ok) == (None, {}, None)  # a duplicate
    failed, deltas, _ = decide(device(), Answer("m2", "dev-1", FAILED, "2.0.0", "no space"))
    assert failed is not None
    assert failed.outcome == "failed"
    assert failed.reason == "no space"
    assert deltas == {"in_progress": -1, "failed": 1}
    late = device(outcome="timed_out")
    assert decide(late, ok) == (None, {}, None)  # late after the time-out: counted once
    assert decide(device(), Answer("m3", "dev-1", REPORTED, "1.5.0")) == (None, {}, None)
    assert decide(None, ok) == (None, {}, None)


def test_a_rollback_answer_is_the_old_version() -> None:
    rolling = device(outcome="succeeded", phase="rollback", rollback_batch="ROLLBACK#9999#dev-1")
    back, deltas, scope = decide(rolling, Answer("m", "dev-1", REPORTED, "1.0.0"))
    assert back is not None
    assert back.outcome == "rolled_back"
    assert deltas == {"succeeded": -1, "rolled_back": 1}
    assert scope == "rollback"
    assert decide(back, Answer("m", "dev-1", REPORTED, "1.0.0")) == (None, {}, None)
    assert decide(rolling, Answer("m", "dev-1", REPORTED, "2.0.0")) == (None, {}, None)


def test_the_deployed_workflow_is_the_one_the_code_builds() -> None:
    import json
    from pathlib import Path

    from services.firmware.workflow import WorkflowTimings, build_definition, render_definition

    path = Path(__file__).parents[2] / "deploy" / "statemachines" / "firmware-rollout.asl.json"
    assert json.loads(path.read_text()) == build_definition()
    short = json.loads(render_definition({"FirmwareTasksQueueUrl": "http://q"},
                                         WorkflowTimings(beat_seconds=1, heartbeat_seconds=4)))
    batch = short["States"]["Waves"]["ItemProcessor"]["States"]["RunWave"]["ItemProcessor"]
    task = batch["States"]["UpdateBatch"]
    assert task["HeartbeatSeconds"] == 4
    assert task["Parameters"]["QueueUrl"] == "http://q"
    assert task["Parameters"]["MessageBody"]["beat_seconds"] == 1
    assert batch["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert "${" not in json.dumps(short)
