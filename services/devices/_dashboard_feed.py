"""The dashboard task's own feed: one SQS queue per task, subscribed to DashboardFeedTopic.

Every dashboard task must see every device event (issue 4: each task keeps its own view and
its viewers are connected to it alone), and an SQS queue gives each message to one
consumer, so the bus rule DashboardRule targets the SNS topic DashboardFeedTopic and each
task subscribes a queue of its own (docs/devices.md, "Dashboard fan-out"):

- `FeedConfig`: where the queue goes and how long things last (validated, immutable).
- `task_queue(aws, config)`: the queue for the duration of a block. On entry: create it
  (FLEETLINE_DASHBOARD_QUEUE_PREFIX + a random task id, SSE-SQS, 5-minute retention, a
  policy admitting only the topic, tags naming the task, its creation and a heartbeat) and
  subscribe it with raw delivery (bodies are the EventBridge event, as a rule-to-queue target
  delivers it). While the block runs, a task group it owns re-tags the queue with a
  heartbeat every minute and removes other tasks' feeds left behind (at start and every 5
  minutes). On exit: stop those, unsubscribe, delete the queue. No DLQ, by design: the view
  is disposable and re-seeded from the read model.
- `stale_feeds(found, config=, now=)`: the pure decision of which feeds a dead task left
  behind (another task's queue that is gone, or whose heartbeat is stale).
- `DashboardFeed`: the dashboard worker's `Source`, the consumer of the attached queue.

Errors (SDK errors are translated at this boundary by `shared.aws.aws_errors`):

    FleetlineError (shared.errors)
    ├── DashboardFeedError           the feed used outside its lifecycle (a programming error)
    ├── ConfigurationError           FeedConfig.from_environ: a variable is missing
    ├── AwsRequestError              the queue cannot be created or subscribed
    └── AwsUnavailableError          ... because AWS cannot be reached
    ValueError                       FeedConfig: a field out of range (names the field)

Teardown and clean-up are best effort and logged: a feed left behind is removed by another
task's sweep once its heartbeat is stale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import anyio
import anyio.lowlevel
import structlog

from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.consumers import BatchHandler, SqsConsumer, SqsSettings
from shared.errors import AwsRequestError, ConfigurationError, FleetlineError
from shared.hosts import Consumer

__all__ = [
    "DashboardFeed",
    "DashboardFeedError",
    "FeedConfig",
    "FeedSubscription",
    "TaskQueue",
    "stale_feeds",
    "task_queue",
]

# The dashboard's logger: these lines are part of the dashboard task's story.
log = structlog.get_logger("services.devices.dashboard")

QUEUE_PREFIX_ENV: Final = "FLEETLINE_DASHBOARD_QUEUE_PREFIX"
TASK_TAG: Final = "fleetline:dashboard-task"
CREATED_TAG: Final = "fleetline:created-at"
HEARTBEAT_TAG: Final = "fleetline:heartbeat"

# What SQS / SNS answer for a queue or subscription that is already gone (another task's
# sweep removed it first, or a second teardown): the goal is reached, nothing to report.
_QUEUE_GONE: Final = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_SUBSCRIPTION_GONE: Final = frozenset({"NotFound"})


class DashboardFeedError(FleetlineError):
    """The task's feed queue was used outside its lifecycle (opened before it was attached,
    or attached twice). A programming error, not a condition to retry."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, kw_only=True)
class FeedConfig:
    """Where this task's own queue goes and how long things last.

    - `topic_arn`: the feed topic (stack output DashboardFeedTopic).
    - `queue_prefix`: names of every task's queue start with it
      (FLEETLINE_DASHBOARD_QUEUE_PREFIX; the task role may only touch such queues).
    - `task_id`: unique per task; the queue is `queue_prefix + task_id`.
    - `retention_seconds` 300: the view is re-seeded from the read model at start, so older
      events are worth nothing; SQS's minimum is 60.
    - `heartbeat_seconds` 60: how often the task re-tags its queue as alive.
    - `stale_after_seconds` 300: another task's queue whose heartbeat is older is left over
      by a task that died without cleaning up; it is unsubscribed and deleted. Also how often
      a task looks for such queues.

    Raises ValueError naming the field when a value is out of range.
    """

    topic_arn: str
    queue_prefix: str
    task_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    retention_seconds: int = 300
    heartbeat_seconds: float = 60.0
    stale_after_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not self.topic_arn.startswith("arn:") or self.topic_arn.count(":") < 5:
            raise ValueError(f"topic_arn must be a topic ARN, got {self.topic_arn!r}")
        if not self.queue_prefix:
            raise ValueError("queue_prefix must not be empty")
        if len(self.queue_name) > 80:
            raise ValueError(f"queue_prefix + task_id must be at most 80 characters, got "
                             f"{self.queue_name!r}")
        if not 60 <= self.retention_seconds <= 1_209_600:
            raise ValueError(f"retention_seconds must be 60..1209600, got "
                             f"{self.retention_seconds!r}")
        if self.heartbeat_seconds <= 0:
            raise ValueError(f"heartbeat_seconds must be positive, got {self.heartbeat_seconds!r}")
        if self.stale_after_seconds <= self.heartbeat_seconds:
            raise ValueError("stale_after_seconds must be longer than heartbeat_seconds, got "
                             f"{self.stale_after_seconds!r}")

    @classmethod
    def from_environ(cls, resources: Resources,
                     environ: Mapping[str, str] | None = None) -> FeedConfig:
        """From the stack output DashboardFeedTopic and FLEETLINE_DASHBOARD_QUEUE_PREFIX.

        Raises ConfigurationError naming the missing variable.
        """
        env = os.environ if environ is None else environ
        prefix = env.get(QUEUE_PREFIX_ENV, "")
        if not prefix:
            raise ConfigurationError(f"{QUEUE_PREFIX_ENV} is not set: the template passes the "
                                     "prefix of the dashboard tasks' queues")
        return cls(topic_arn=resources.get("DashboardFeedTopic"), queue_prefix=prefix)

    @property
    def queue_name(self) -> str:
        return f"{self.queue_prefix}{self.task_id}"

    @property
    def queue_arn(self) -> str:
        """Same partition, Region and account as the topic."""
        _, partition, _, region, account, *_ = self.topic_arn.split(":")
        return f"arn:{partition}:sqs:{region}:{account}:{self.queue_name}"


# --------------------------------------------------------------------------- decisions (pure)


@dataclass(frozen=True, kw_only=True)
class FeedSubscription:
    """One subscription of the feed topic as the clean-up sees it."""

    subscription_arn: str
    queue_name: str
    queue_exists: bool
    heartbeat: float | None  # the queue's heartbeat tag; None when missing or unreadable


def _another_tasks_queue(queue_name: str, config: FeedConfig) -> bool:
    """Named like a dashboard task's queue, and not this task's."""
    return queue_name.startswith(config.queue_prefix) and queue_name != config.queue_name


def stale_feeds(found: Iterable[FeedSubscription], *, config: FeedConfig,
                now: float) -> list[FeedSubscription]:
    """The feeds another task left behind (pure): named with the prefix, not this task's, and
    either subscribed to a queue that is gone, or whose heartbeat is older than
    `stale_after_seconds`. A queue without a heartbeat tag is not one we created (ours are
    created with it), so it is left alone."""
    stale = []
    for feed in found:
        if not _another_tasks_queue(feed.queue_name, config):
            continue
        silent = feed.heartbeat is not None and now - feed.heartbeat > config.stale_after_seconds
        if not feed.queue_exists or silent:
            stale.append(feed)
    return stale


def _queue_policy(config: FeedConfig) -> str:
    """Only the feed topic may send to the task's queue."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "FeedTopicDelivers",
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": config.queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": config.topic_arn}},
        }],
    }, separators=(",", ":"))


def _gone(exc: FleetlineError, codes: frozenset[str]) -> bool:
    return isinstance(exc, AwsRequestError) and exc.code in codes


# --------------------------------------------------------------------------- AWS (thin)


@dataclass(frozen=True, kw_only=True)
class TaskQueue:
    """This task's queue, subscribed to the feed topic."""

    url: str
    arn: str
    subscription_arn: str
    config: FeedConfig


async def _create_and_subscribe(aws: AwsClients, config: FeedConfig) -> TaskQueue:
    """Raises AwsRequestError / AwsUnavailableError; the queue is deleted again when the
    subscription fails (or is cancelled)."""
    sqs = await aws.client("sqs")
    sns = await aws.client("sns")
    now = str(int(time.time()))
    with aws_errors():
        created = await sqs.create_queue(
            QueueName=config.queue_name,
            Attributes={
                "SqsManagedSseEnabled": "true",
                "MessageRetentionPeriod": str(config.retention_seconds),
                "Policy": _queue_policy(config),
            },
            tags={TASK_TAG: config.task_id, CREATED_TAG: now, HEARTBEAT_TAG: now},
        )
    url = str(created["QueueUrl"])
    try:
        with aws_errors():
            subscribed = await sns.subscribe(
                TopicArn=config.topic_arn, Protocol="sqs", Endpoint=config.queue_arn,
                Attributes={"RawMessageDelivery": "true"}, ReturnSubscriptionArn=True,
            )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _delete_queue(aws, url, reason="subscribe failed")
        raise
    return TaskQueue(url=url, arn=config.queue_arn,
                     subscription_arn=str(subscribed["SubscriptionArn"]), config=config)


async def _delete_queue(aws: AwsClients, url: str, *, reason: str) -> None:
    """Delete the queue; already gone is fine, any other failure is logged."""
    sqs = await aws.client("sqs")
    try:
        with aws_errors():
            await sqs.delete_queue(QueueUrl=url)
    except FleetlineError as exc:
        if _gone(exc, _QUEUE_GONE):
            log.debug("feed queue already gone", queue=url, reason=reason)
        else:
            log.warning("feed queue delete failed", queue=url, reason=reason, error=str(exc))


async def _unsubscribe_and_delete(aws: AwsClients, *, subscription_arn: str,
                                  queue_url: str | None, reason: str) -> None:
    """Unsubscribe first (so SNS stops delivering: a deleted queue still subscribed counts
    as failed deliveries), then delete the queue. Idempotent, best effort: what is already
    gone is fine; anything else is logged."""
    sns = await aws.client("sns")
    try:
        with aws_errors():
            await sns.unsubscribe(SubscriptionArn=subscription_arn)
    except FleetlineError as exc:
        if _gone(exc, _SUBSCRIPTION_GONE):
            log.debug("feed subscription already gone", subscription=subscription_arn,
                      reason=reason)
        else:
            log.warning("feed unsubscribe failed", subscription=subscription_arn,
                        reason=reason, error=str(exc))
    if queue_url is not None:
        await _delete_queue(aws, queue_url, reason=reason)


async def _other_tasks_feeds(
        aws: AwsClients, config: FeedConfig) -> list[tuple[FeedSubscription, str | None]]:
    """The topic's confirmed SQS subscriptions of other tasks' queues, each with its queue's
    URL (None when the queue is gone). Raises AwsRequestError / AwsUnavailableError."""
    sns = await aws.client("sns")
    sqs = await aws.client("sqs")
    found: list[tuple[FeedSubscription, str | None]] = []
    token: str | None = None
    while True:
        with aws_errors():
            page = await sns.list_subscriptions_by_topic(
                TopicArn=config.topic_arn, **({"NextToken": token} if token else {}))
        for sub in page.get("Subscriptions", []):
            name = str(sub.get("Endpoint", "")).rsplit(":", 1)[-1]
            arn = str(sub["SubscriptionArn"])
            if (sub.get("Protocol") != "sqs" or arn == "PendingConfirmation"
                    or not _another_tasks_queue(name, config)):
                continue  # not worth two requests: stale_feeds would not pick it
            url: str | None = None
            heartbeat: float | None = None
            try:
                with aws_errors():
                    url = str((await sqs.get_queue_url(QueueName=name))["QueueUrl"])
                    tags = (await sqs.list_queue_tags(QueueUrl=url)).get("Tags", {})
                heartbeat = float(tags[HEARTBEAT_TAG]) if HEARTBEAT_TAG in tags else None
            except AwsRequestError as exc:
                if exc.code not in _QUEUE_GONE:
                    raise
                url = None
            except ValueError:  # a heartbeat tag that is not a number: not ours, leave it
                log.debug("feed heartbeat tag unreadable", queue=name)
                heartbeat = None
            found.append((FeedSubscription(subscription_arn=arn, queue_name=name,
                                           queue_exists=url is not None, heartbeat=heartbeat),
                          url))
        token = page.get("NextToken")
        if not token:
            return found


async def _remove_stale_feeds(aws: AwsClients, config: FeedConfig) -> int:
    """Remove the feeds other tasks left behind; how many. Best effort (logged)."""
    try:
        found = await _other_tasks_feeds(aws, config)
    except FleetlineError as exc:
        log.warning("feed clean-up skipped", error=str(exc))
        return 0
    urls = {feed.subscription_arn: url for feed, url in found}
    stale = stale_feeds([feed for feed, _ in found], config=config, now=time.time())
    for feed in stale:
        await anyio.lowlevel.checkpoint()  # the only unshielded one: a stop ends the loop here
        reason = "queue gone" if not feed.queue_exists else "heartbeat stale"
        log.info("removing a feed left behind", queue=feed.queue_name, reason=reason)
        # Shielded: cancelled between its two steps, a queue would be left unsubscribed,
        # which no later sweep sees (sweeps start from the topic's subscriptions).
        with anyio.CancelScope(shield=True):
            await _unsubscribe_and_delete(aws, subscription_arn=feed.subscription_arn,
                                          queue_url=urls[feed.subscription_arn], reason=reason)
    return len(stale)


async def _heartbeat_and_clean_up(aws: AwsClients, queue: TaskQueue) -> None:
    """Re-tag the queue as alive every `heartbeat_seconds`; remove left-over feeds of dead
    tasks at start and every `stale_after_seconds`. Runs until cancelled."""
    config = queue.config
    sqs = await aws.client("sqs")
    await _remove_stale_feeds(aws, config)
    last_sweep = time.monotonic()
    while True:
        await anyio.sleep(config.heartbeat_seconds)
        try:
            with aws_errors():
                await sqs.tag_queue(QueueUrl=queue.url,
                                    Tags={HEARTBEAT_TAG: str(int(time.time()))})
        except FleetlineError as exc:  # another try next beat; stale only after several
            log.warning("feed heartbeat failed", queue=queue.url, error=str(exc))
        if time.monotonic() - last_sweep >= config.stale_after_seconds:
            await _remove_stale_feeds(aws, config)
            last_sweep = time.monotonic()


@contextlib.asynccontextmanager
async def task_queue(aws: AwsClients, config: FeedConfig) -> AsyncIterator[TaskQueue]:
    """This task's own queue on the feed topic, for the duration of the block.

    On entry: create the queue (SSE-SQS, `retention_seconds`, a policy that admits only the
    topic, tags naming the task, its creation and a heartbeat) and subscribe it with raw
    delivery (the body is the EventBridge event, as a rule-to-queue target delivers it). A
    task group owned by the block then keeps the heartbeat and removes feeds left behind by
    dead tasks. On exit (shielded from cancellation): stop those, unsubscribe, delete the
    queue, in that order; best effort, failures logged, since a left-over feed is removed by
    the next task's sweep once its heartbeat is stale. Stop consuming the queue before the
    block ends (`DashboardFeed` and the worker host do).

    Raises AwsRequestError / AwsUnavailableError when the queue cannot be created or
    subscribed (nothing is left behind then).
    """
    queue = await _create_and_subscribe(aws, config)
    log.info("dashboard feed attached", queue=config.queue_name, topic=config.topic_arn)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_heartbeat_and_clean_up, aws, queue)
            try:
                yield queue
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _unsubscribe_and_delete(aws, subscription_arn=queue.subscription_arn,
                                          queue_url=queue.url, reason="task stopping")
            log.info("dashboard feed detached", queue=config.queue_name)


# --------------------------------------------------------------------------- the worker's source


class _FeedState(enum.Enum):
    UNATTACHED = "unattached"
    ATTACHED = "attached"
    DETACHED = "detached"


class DashboardFeed:
    """The dashboard worker's `Source`: the consumer of this task's own queue.

    The lifespan attaches the queue (`attach`, around seeding and serving) before the host
    opens the source, and the host's consumer drains before the lifespan detaches it, so the
    queue outlives its consumer. Opening when not attached, or attaching twice, raises
    DashboardFeedError.
    """

    def __init__(self, settings: SqsSettings | None = None) -> None:
        self.settings = settings or SqsSettings()
        self._queue: TaskQueue | None = None
        self._state = _FeedState.UNATTACHED

    @contextlib.asynccontextmanager
    async def attach(self, aws: AwsClients, config: FeedConfig) -> AsyncIterator[TaskQueue]:
        """`task_queue(aws, config)`, remembered for `open`. Raises DashboardFeedError when
        already attached (once) before."""
        if self._state is not _FeedState.UNATTACHED:
            raise DashboardFeedError(f"the dashboard feed is {self._state.value}; a feed is "
                                     "attached once (make a new DashboardFeed)")
        async with task_queue(aws, config) as queue:
            self._queue, self._state = queue, _FeedState.ATTACHED
            try:
                yield queue
            finally:
                self._queue, self._state = None, _FeedState.DETACHED

    async def open(self, aws: AwsClients, resources: Resources, handler: BatchHandler, *,
                   name: str, drain_seconds: float) -> Consumer:
        """A consumer of the attached queue. Raises DashboardFeedError when not attached."""
        if self._queue is None:
            raise DashboardFeedError(f"the dashboard feed is {self._state.value}: open it "
                                     "inside the dashboard lifespan, which attaches it")
        settings = dataclasses.replace(self.settings, drain_seconds=drain_seconds)
        return SqsConsumer(aws, self._queue.url, handler, settings=settings)
