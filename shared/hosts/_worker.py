"""The ECS worker host behind `python -m shared.hosts.worker module:attr`.

`attr` names a `Worker` (or a function of no arguments returning one): which source to
consume (an SQS queue, a Kinesis stream, a DynamoDB table's stream, each named by its stack
output key and resolved through `shared.config.Resources`) and how to build the
`BatchHandler` from the process's `AwsClients` and `Resources`:

    worker = Worker(
        name="orders-projection",
        source=SqsQueue("OrderHistoryQueue"),
        handler=lambda aws, resources: OrderHistory(aws, ...).batch_handler(),
    )

The host configures logging and tracing, opens one `AwsClients`, builds the handler, runs
the consumer, and on SIGTERM / SIGINT shuts it down gracefully: stop receiving, let in-flight
handlers finish within FLEETLINE_DRAIN_SECONDS (default 45, below the ECS stopTimeout of 60
the template sets), release what cannot finish (SQS: visibility 0; streams: the lease goes
back with its checkpoint), flush pending deletes, exit 0. A second signal skips the rest of
the drain (the release and flush still run). Exit status 78 (EX_CONFIG) means misconfigured
(a missing variable, a queue that does not exist): a supervisor should not restart it.

On ECS (ECS_AGENT_URI set by the agent) the host holds the task's scale-in protection while a
batch is in flight, so Service Auto Scaling never stops a task in the middle of one
(`shared.hosts._protection`: debounced, a busy worker pays a few requests a minute at most).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import anyio
import anyio.abc
import structlog

from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import (
    BatchHandler,
    ConsumerError,
    SqsConsumer,
    SqsSettings,
    StreamConsumerConfig,
)
from shared.consumers.dynamodb_streams import DynamoDBStreamSource, latest_stream_arn
from shared.consumers.kinesis import KinesisSource
from shared.consumers.sqs import queue_url
from shared.consumers.streams import ShardSource, StreamConsumer
from shared.errors import EX_CONFIG, ConfigurationError, FleetlineError
from shared.hosts._gc import configure_gc
from shared.hosts._protection import AGENT_URI_ENV, ScaleInProtection
from shared.logging import configure_logging
from shared.metrics import configure_metrics, get_metrics
from shared.tracing import configure_tracing

__all__ = [
    "DRAIN_SECONDS_ENV",
    "Consumer",
    "DynamoDBStream",
    "HandlerFactory",
    "KinesisStream",
    "Lifespan",
    "Source",
    "SqsQueue",
    "Worker",
    "configure_process",
    "drain_seconds_from",
    "load_worker",
    "main",
    "serve",
]

DRAIN_SECONDS_ENV: Final = "FLEETLINE_DRAIN_SECONDS"
DEFAULT_DRAIN_SECONDS: Final = 45.0

_log = structlog.get_logger("shared.hosts.worker")

HandlerFactory = Callable[[AwsClients, Resources], BatchHandler | Awaitable[BatchHandler]]
"""Builds the handler once the process has its clients and resource names."""

Lifespan = Callable[[AwsClients, Resources], contextlib.AbstractAsyncContextManager[BatchHandler]]
"""Like a HandlerFactory, for handlers that own resources or background tasks (an HTTP
server, a cache refresher): entered before consuming starts, exited after the drain."""


class Consumer(Protocol):
    """What the host runs: every consumer in `shared.consumers` fits."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None: ...

    def stop(self) -> None: ...


class Source(Protocol):
    """Where a worker's messages come from: makes the consumer for a handler."""

    async def open(
        self, aws: AwsClients, resources: Resources, handler: BatchHandler, *,
        name: str, drain_seconds: float,
    ) -> Consumer: ...


def _resolve(resources: Resources, value: str) -> str:
    """An output key (`OrdersQueue`) through `resources`; a URL, ARN or name as given."""
    if "://" in value or value.startswith("arn:") or not value[:1].isupper():
        return value
    try:
        return resources.get(value)
    except ConfigurationError:
        if value.isalnum():  # looks like an output key: the variable is genuinely missing
            raise
        return value


async def _queue_url(aws: AwsClients, value: str) -> str:
    """`value` (URL, ARN or name) as a URL. Raises ConfigurationError naming the queue."""
    try:
        return await queue_url(aws, value)
    except FleetlineError as exc:
        raise ConfigurationError(f"queue {value!r} not found: {exc}") from exc


@dataclass(frozen=True)
class SqsQueue:
    """Consume an SQS queue. `queue`: stack output key (`OrdersQueue`), URL, ARN or name.
    `settings.drain_seconds` is replaced by the host's drain (FLEETLINE_DRAIN_SECONDS)."""

    queue: str
    settings: SqsSettings = field(default_factory=SqsSettings)

    async def open(
        self, aws: AwsClients, resources: Resources, handler: BatchHandler, *,
        name: str, drain_seconds: float,
    ) -> Consumer:
        url = await _queue_url(aws, _resolve(resources, self.queue))
        settings = _replace(self.settings, drain_seconds=drain_seconds)
        return SqsConsumer(aws, url, handler, settings=settings)


@dataclass(frozen=True, kw_only=True)
class _LeasedStream:
    """What both stream sources share: a `StreamConsumer` over the source's `ShardSource`,
    with the lease table, the consumer group, the failure queue (output keys, or literal
    names / ARN / URL) and `StreamConsumerConfig` options."""

    lease_table: str = "LeasesTable"
    application: str | None = None
    failure_queue: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    async def open(
        self, aws: AwsClients, resources: Resources, handler: BatchHandler, *,
        name: str, drain_seconds: float,
    ) -> Consumer:
        config = _stream_config(resources, self.lease_table, self.application or name,
                                self.failure_queue, self.options, drain_seconds)
        if config.failure_queue_url and "://" not in config.failure_queue_url:
            # Resolved to its URL once, here (a failure queue given by name or ARN).
            config = _replace(config, failure_queue_url=await _queue_url(
                aws, config.failure_queue_url))
        return StreamConsumer(aws, handler, await self._shard_source(aws, resources), config)

    async def _shard_source(self, aws: AwsClients, resources: Resources) -> ShardSource:
        """The stream this spec names, as the consumer reads it."""
        raise NotImplementedError


@dataclass(frozen=True)
class KinesisStream(_LeasedStream):
    """Consume a Kinesis stream with shard leases. `stream`, `lease_table` and
    `failure_queue` are output keys (or literal names / ARN / URL). `application` names the
    consumer group (default: the worker's name). `options` go to `StreamConsumerConfig`."""

    stream: str

    async def _shard_source(self, aws: AwsClients, resources: Resources) -> ShardSource:
        return KinesisSource(aws, _resolve(resources, self.stream))


@dataclass(frozen=True)
class DynamoDBStream(_LeasedStream):
    """Consume a DynamoDB table's stream with shard leases. `table` is an output key or a
    table name (its latest stream is used) or a stream ARN. Other fields as `KinesisStream`."""

    table: str

    async def _shard_source(self, aws: AwsClients, resources: Resources) -> ShardSource:
        target = _resolve(resources, self.table)
        if ":stream/" not in target and "/stream/" not in target:
            target = await latest_stream_arn(aws, target.rsplit("/", 1)[-1])
        return DynamoDBStreamSource(aws, target)


def _stream_config(
    resources: Resources, lease_table: str, application: str, failure_queue: str | None,
    options: Mapping[str, Any], drain_seconds: float,
) -> StreamConsumerConfig:
    values: dict[str, Any] = {"shutdown_grace": drain_seconds, **options}
    return StreamConsumerConfig(
        lease_table=_resolve(resources, lease_table),
        application=application,
        failure_queue_url=_resolve(resources, failure_queue) if failure_queue else None,
        **values,
    )


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


@dataclass(frozen=True, kw_only=True)
class Worker:
    """What `python -m shared.hosts.worker module:attr` runs.

    `name`: the service name in logs, traces and (streams) the default consumer group.
    `source`: `SqsQueue`, `KinesisStream` or `DynamoDBStream` (or any `Source`).
    Exactly one of `handler` (a HandlerFactory) and `lifespan` (a Lifespan).

    Raises ValueError when `name` is empty or not exactly one of handler/lifespan is given.
    """

    name: str
    source: Source
    handler: HandlerFactory | None = None
    lifespan: Lifespan | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if (self.handler is None) == (self.lifespan is None):
            raise ValueError("give exactly one of handler= and lifespan=")


@contextlib.asynccontextmanager
async def _handler_of(worker: Worker, aws: AwsClients,
                      resources: Resources) -> AsyncIterator[BatchHandler]:
    if worker.lifespan is not None:
        async with worker.lifespan(aws, resources) as handler:
            yield handler
        return
    assert worker.handler is not None
    built = worker.handler(aws, resources)
    if inspect.isawaitable(built):
        built = await built
    yield built


def drain_seconds_from(environ: Mapping[str, str]) -> float:
    """FLEETLINE_DRAIN_SECONDS, default 45. Raises ConfigurationError naming the variable."""
    raw = environ.get(DRAIN_SECONDS_ENV)
    if raw is None or raw == "":
        return DEFAULT_DRAIN_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{DRAIN_SECONDS_ENV} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{DRAIN_SECONDS_ENV} must be non-negative, got {raw!r}")
    return value


async def serve(
    worker: Worker,
    *,
    resources: Resources | None = None,
    drain_seconds: float | None = None,
    stop: anyio.Event | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    metrics_interval: float = 60.0,
) -> None:
    """Run `worker` until a signal (or `stop`), then shut down gracefully and return.
    Metrics (shared.metrics) are flushed every `metrics_interval` seconds and at the end.
    With ECS_AGENT_URI in the environment (on ECS), the task's scale-in protection is held
    while a batch is in flight.

    `signals` are watched from the start (a signal during start-up stops the worker as soon
    as its consumer exists, without receiving anything), and only in the main thread: pass
    () elsewhere, e.g. in tests, and use `stop`. The first signal starts the drain; a second
    one cuts it short.

    Raises:
        ConfigurationError: a resource name is missing or wrong.
        ConsumerError: the source cannot be consumed (queue gone, access denied).
    """
    resources = resources if resources is not None else Resources.from_environ()
    drain = drain_seconds if drain_seconds is not None else drain_seconds_from(os.environ)
    log = _log.bind(worker=worker.name)
    host = _HostState()
    async with AwsClients() as aws, anyio.create_task_group() as outer:
        outer.start_soon(_watch, host, stop, signals, log)
        # EMF lines every `metrics_interval`, and a last one after the drain.
        outer.start_soon(get_metrics().run, metrics_interval)
        async with _handler_of(worker, aws, resources) as handler:
            agent_uri = os.environ.get(AGENT_URI_ENV)
            if agent_uri:
                protection = ScaleInProtection(agent_uri)
                handler = protection.guard(handler)
                outer.start_soon(protection.run)
            consumer = await worker.source.open(
                aws, resources, handler, name=worker.name, drain_seconds=drain
            )
            async with anyio.create_task_group() as inner:
                host.attach(consumer, inner.cancel_scope)
                await inner.start(consumer.run)
                log.info("worker ready", drain_seconds=drain)
        outer.cancel_scope.cancel()
    log.info("worker stopped")


class _HostState:
    """What the signal watcher acts on; a request that comes before the consumer exists is
    applied when it is attached."""

    def __init__(self) -> None:
        self.consumer: Consumer | None = None
        self.run_scope: anyio.CancelScope | None = None
        self.requests = 0

    def attach(self, consumer: Consumer, run_scope: anyio.CancelScope) -> None:
        self.consumer, self.run_scope = consumer, run_scope
        if self.requests:
            consumer.stop()
        if self.requests > 1:
            run_scope.cancel()

    def request_stop(self) -> None:
        self.requests += 1
        if self.consumer is None or self.run_scope is None:
            return
        if self.requests == 1:
            self.consumer.stop()
        else:
            # Cancelling run() still releases in-flight messages / leases and flushes
            # deletes (shielded cleanup inside the consumers).
            self.run_scope.cancel()


async def _watch(
    host: _HostState, stop: anyio.Event | None, signals: Sequence[signal.Signals], log: Any,
) -> None:
    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
        if stop is not None:

            async def on_stop() -> None:
                await stop.wait()
                log.info("stop requested; draining")
                host.request_stop()

            tg.start_soon(on_stop)
        if signals:
            received = stack.enter_context(anyio.open_signal_receiver(*signals))
            async for signum in received:
                name = signal.Signals(signum).name
                if host.requests == 0:
                    log.info("signal received; draining", signal=name)
                else:
                    log.warning("second signal; cutting the drain short", signal=name)
                host.request_stop()


def _is_factory(value: object) -> bool:
    """A plain function callable without arguments (not a coroutine function)."""
    if not callable(value) or inspect.iscoroutinefunction(value):
        return False
    try:
        parameters = inspect.signature(value).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in parameters)


def load_worker(target: str) -> Worker:
    """`module:attr` -> the Worker (an attribute that is a function is called first).

    Raises ConfigurationError naming what is wrong.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"expected module:attr, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name}: {exc}") from exc
    value = getattr(module, attr, None)
    if value is None:
        raise ConfigurationError(f"{module_name} has no attribute {attr}")
    if not isinstance(value, Worker) and _is_factory(value):
        value = value()
    if not isinstance(value, Worker):
        raise ConfigurationError(
            f"{target} is a {type(value).__name__}, not a shared.hosts.Worker"
        )
    return value


def configure_process(service: str) -> None:
    """Logging (structlog JSON lines, level from LOG_LEVEL, default INFO) and tracing
    (OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set) for a host process."""
    configure_logging(service=service, level=os.environ.get("LOG_LEVEL", "INFO"))
    configure_tracing(service)
    configure_metrics(service=service)


def _fatal(exc: BaseException) -> FleetlineError | None:
    if isinstance(exc, (ConfigurationError, ConsumerError)):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _fatal(inner)
            if found is not None:
                return found
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """The process entry. Returns the exit status: 0 after a graceful stop, 2 for a usage
    error, 78 (EX_CONFIG) for a configuration error."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m shared.hosts.worker module:attr", file=sys.stderr)
        return 2
    try:
        worker = load_worker(args[0])
        configure_process(worker.name)
        configure_gc()  # last: freezes what loading made (shared.hosts._gc)
    except ConfigurationError as exc:
        print(f"shared.hosts.worker: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        anyio.run(serve, worker)
    except BaseException as exc:
        fatal = _fatal(exc)
        if fatal is None:
            raise
        _log.error("worker cannot run", worker=worker.name, error=str(fatal),
                   error_type=type(fatal).__name__)
        return EX_CONFIG
    return 0

