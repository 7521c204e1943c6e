"""The dashboard's per-task feed queue, decided without I/O: names, configuration, and which
left-over feeds of dead tasks are removed."""

from __future__ import annotations

import pytest

from services.devices.dashboard import (
    DashboardFeed,
    DashboardFeedError,
    FeedConfig,
    FeedSubscription,
    stale_feeds,
)
from shared.config import Resources
from shared.errors import ConfigurationError

TOPIC = "arn:aws:sns:eu-west-1:123456789012:fl-dashboard-feed"
PREFIX = "fl-dashboard-task-"


def config(**kw: object) -> FeedConfig:
    return FeedConfig(topic_arn=TOPIC, queue_prefix=PREFIX, task_id="me", **kw)  # type: ignore[arg-type]


def feed(name: str, *, exists: bool = True, heartbeat: float | None = 1_000.0) -> FeedSubscription:
    return FeedSubscription(subscription_arn=f"{TOPIC}:{name}", queue_name=name,
                            queue_exists=exists, heartbeat=heartbeat)


def test_queue_name_and_arn_come_from_prefix_task_and_topic() -> None:
    c = config()
    assert c.queue_name == "fl-dashboard-task-me"
    assert c.queue_arn == "arn:aws:sqs:eu-west-1:123456789012:fl-dashboard-task-me"
    assert FeedConfig(topic_arn=TOPIC, queue_prefix=PREFIX).task_id != FeedConfig(
        topic_arn=TOPIC, queue_prefix=PREFIX).task_id


@pytest.mark.parametrize(("kw", "named"), [
    ({"retention_seconds": 59}, "retention_seconds"),
    ({"heartbeat_seconds": 0}, "heartbeat_seconds"),
    ({"stale_after_seconds": 60.0}, "stale_after_seconds"),
    ({"task_id": "x" * 80}, "80 characters"),
])
def test_out_of_range_settings_name_the_field(kw: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        FeedConfig(topic_arn=TOPIC, queue_prefix=PREFIX, **kw)  # type: ignore[arg-type]


def test_from_environ_names_what_is_missing() -> None:
    resources = Resources.from_outputs({"DashboardFeedTopic": TOPIC})
    made = FeedConfig.from_environ(resources, {"FLEETLINE_DASHBOARD_QUEUE_PREFIX": PREFIX})
    assert (made.topic_arn, made.queue_prefix) == (TOPIC, PREFIX)
    with pytest.raises(ConfigurationError, match="FLEETLINE_DASHBOARD_QUEUE_PREFIX"):
        FeedConfig.from_environ(resources, {})
    with pytest.raises(ConfigurationError, match="FLEETLINE_DASHBOARD_FEED_TOPIC"):
        FeedConfig.from_environ(Resources.from_outputs({}),
                                {"FLEETLINE_DASHBOARD_QUEUE_PREFIX": PREFIX})


def test_stale_feeds_are_other_tasks_queues_gone_or_silent() -> None:
    now = 10_000.0
    found = [
        feed("fl-dashboard-task-me", heartbeat=0.0),  # this task's: never
        feed("fl-dashboard-task-alive", heartbeat=now - 120),  # beat 2 min ago
        feed("fl-dashboard-task-dead", heartbeat=now - 301),  # silent > 5 min
        feed("fl-dashboard-task-gone", exists=False, heartbeat=None),  # queue deleted
        feed("fl-dashboard-task-untagged", heartbeat=None),  # not created by us: leave it
        feed("other-stack-dashboard-task-x", heartbeat=0.0),  # another prefix
    ]
    stale = stale_feeds(found, config=config(), now=now)
    assert [f.queue_name for f in stale] == ["fl-dashboard-task-dead", "fl-dashboard-task-gone"]


async def test_the_feed_refuses_to_open_before_it_is_attached() -> None:
    with pytest.raises(DashboardFeedError, match="unattached"):
        await DashboardFeed().open(None, Resources(), None, name="d",  # type: ignore[arg-type]
                                   drain_seconds=1.0)
