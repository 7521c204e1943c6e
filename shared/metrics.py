"""Per-consumer metrics, emitted as CloudWatch Embedded Metric Format (EMF) lines on stdout.

    metrics = configure_metrics(service="orders-worker")     # once, at the edge
    orders = metrics.consumer("orders-queue")                  # per consumer
    orders.count(Counter.RECEIVED, len(batch))
    orders.observe_latency(elapsed_seconds)
    ...
    async with anyio.create_task_group() as tg:
        tg.start_soon(metrics.run, 60.0)                       # flush every 60 s, and at exit

The hot path is a few integer additions and, for distributions, one list append (or one
random draw once the reservoir is full): no I/O, no locks, no allocation per message.
Record from the event loop thread only (the runtime is single-threaded asyncio).

Each flush writes one JSON line per consumer for the period since the previous flush:
dimensions `Service` and `Consumer`, namespace `Fleetline` by default; counters (Count)
`Received`, `Succeeded`, `Failed`, `Retried`, `DeadLettered`, `DuplicatesSkipped`; and, when
observed in the period, `HandlerLatency` (Milliseconds), `BatchSize` (Count) and `Lag`
(Milliseconds). EMF accepts at most 100 values per metric per line, so a distribution is a
uniform reservoir sample of at most 100 observations per period: percentiles are estimates,
exact counts come from the counters. `Lag` is the period's maximum (what the age alarms need).

`statistics()` returns an immutable snapshot of lifetime totals for tests, benchmarks and
`fleetline status`.
"""

from __future__ import annotations

import enum
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TextIO

import anyio

__all__ = [
    "ConsumerMetrics",
    "ConsumerMetricsStatistics",
    "Counter",
    "Metrics",
    "MetricsStatistics",
    "configure_metrics",
    "consumer",
    "get_metrics",
    "render_emf",
]

EMF_MAX_VALUES: Final = 100  # EMF: a metric value array holds at most 100 numbers
DEFAULT_NAMESPACE: Final = "Fleetline"


class Counter(enum.IntEnum):
    """The counters every consumer keeps; the value is an index into a plain list."""

    RECEIVED = 0
    SUCCEEDED = 1
    FAILED = 2
    RETRIED = 3
    DEAD_LETTERED = 4
    DUPLICATES_SKIPPED = 5

    @property
    def metric_name(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_"))


_COUNTERS: Final = tuple(Counter)


class _Reservoir:
    """Uniform sample of at most `size` observations (Algorithm R), plus exact count/sum/max."""

    __slots__ = ("count", "maximum", "rng", "samples", "size", "total")

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.rng = rng
        self.samples: list[float] = []
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.maximum:
            self.maximum = value
        if len(self.samples) < self.size:
            self.samples.append(value)
        else:
            slot = self.rng.randrange(self.count)
            if slot < self.size:
                self.samples[slot] = value


@dataclass(frozen=True, kw_only=True)
class ConsumerMetricsStatistics:
    """Lifetime totals of one consumer."""

    name: str
    received: int
    succeeded: int
    failed: int
    retried: int
    dead_lettered: int
    duplicates_skipped: int
    handled: int  # handler latency observations
    handler_seconds_total: float
    handler_seconds_max: float
    batches: int
    batch_messages: int
    lag_seconds_max: float
    lag_seconds_last: float | None

    @property
    def handler_seconds_mean(self) -> float:
        return self.handler_seconds_total / self.handled if self.handled else 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.batch_messages / self.batches if self.batches else 0.0


@dataclass(frozen=True)
class MetricsStatistics:
    """Snapshot of every consumer, by name (read-only mapping)."""

    consumers: Mapping[str, ConsumerMetricsStatistics]

    def __getitem__(self, name: str) -> ConsumerMetricsStatistics:
        return self.consumers[name]


class ConsumerMetrics:
    """The counters and distributions of one consumer. Made by `Metrics.consumer`."""

    __slots__ = (
        "_batches",
        "_lag_last",
        "_lag_max",
        "_latency",
        "_period_batches",
        "_period_counts",
        "_period_lag_max",
        "_period_latency",
        "_reservoir_size",
        "_rng",
        "_totals",
        "name",
    )

    def __init__(self, name: str, *, reservoir_size: int, rng: random.Random) -> None:
        self.name = name
        self._reservoir_size = reservoir_size
        self._rng = rng
        self._totals = [0] * len(_COUNTERS)
        self._period_counts = [0] * len(_COUNTERS)
        self._latency = _Reservoir(0, rng)  # lifetime: exact count/sum/max only
        self._batches = _Reservoir(0, rng)
        self._period_latency = _Reservoir(reservoir_size, rng)
        self._period_batches = _Reservoir(reservoir_size, rng)
        self._period_lag_max: float | None = None
        self._lag_max = 0.0
        self._lag_last: float | None = None

    def count(self, counter: Counter, n: int = 1) -> None:
        """Add `n` to `counter`."""
        self._totals[counter] += n
        self._period_counts[counter] += n

    def observe_latency(self, seconds: float) -> None:
        """One handler call took `seconds`."""
        self._latency.add(seconds)
        self._period_latency.add(seconds)

    def observe_batch_size(self, size: int) -> None:
        """A batch of `size` messages was received."""
        self._batches.add(size)
        self._period_batches.add(size)

    def observe_lag(self, seconds: float) -> None:
        """How far behind the consumer is: age of a message, iterator age, relay delay."""
        self._lag_last = seconds
        if seconds > self._lag_max:
            self._lag_max = seconds
        if self._period_lag_max is None or seconds > self._period_lag_max:
            self._period_lag_max = seconds

    def statistics(self) -> ConsumerMetricsStatistics:
        """Lifetime totals."""
        t = self._totals
        return ConsumerMetricsStatistics(
            name=self.name,
            received=t[Counter.RECEIVED],
            succeeded=t[Counter.SUCCEEDED],
            failed=t[Counter.FAILED],
            retried=t[Counter.RETRIED],
            dead_lettered=t[Counter.DEAD_LETTERED],
            duplicates_skipped=t[Counter.DUPLICATES_SKIPPED],
            handled=self._latency.count,
            handler_seconds_total=self._latency.total,
            handler_seconds_max=self._latency.maximum,
            batches=self._batches.count,
            batch_messages=int(self._batches.total),
            lag_seconds_max=self._lag_max,
            lag_seconds_last=self._lag_last,
        )

    def _take_period(self) -> tuple[list[int], _Reservoir, _Reservoir, float | None]:
        period = (
            self._period_counts,
            self._period_latency,
            self._period_batches,
            self._period_lag_max,
        )
        self._period_counts = [0] * len(_COUNTERS)
        self._period_latency = _Reservoir(self._reservoir_size, self._rng)
        self._period_batches = _Reservoir(self._reservoir_size, self._rng)
        self._period_lag_max = None
        return period


def _finite(value: float) -> float:
    return round(value, 3) if math.isfinite(value) else 0.0


def render_emf(
    *,
    namespace: str,
    service: str,
    consumer: str,
    timestamp_ms: int,
    counts: list[int],
    latency_seconds: list[float],
    batch_sizes: list[float],
    lag_seconds: float | None,
) -> dict[str, Any]:
    """One EMF document (pure). Distributions with no values are left out."""
    metrics: list[dict[str, str]] = []
    doc: dict[str, Any] = {"Service": service, "Consumer": consumer}
    for counter in _COUNTERS:
        metrics.append({"Name": counter.metric_name, "Unit": "Count"})
        doc[counter.metric_name] = counts[counter]
    if latency_seconds:
        metrics.append({"Name": "HandlerLatency", "Unit": "Milliseconds"})
        doc["HandlerLatency"] = [_finite(s * 1000.0) for s in latency_seconds]
    if batch_sizes:
        metrics.append({"Name": "BatchSize", "Unit": "Count"})
        doc["BatchSize"] = [int(size) for size in batch_sizes]
    if lag_seconds is not None:
        metrics.append({"Name": "Lag", "Unit": "Milliseconds"})
        doc["Lag"] = _finite(lag_seconds * 1000.0)
    doc["_aws"] = {
        "Timestamp": timestamp_ms,
        "CloudWatchMetrics": [
            {"Namespace": namespace, "Dimensions": [["Service", "Consumer"]], "Metrics": metrics}
        ],
    }
    return doc


class Metrics:
    """All consumers of one process, and the EMF writer.

    Raises ValueError when `service` or `namespace` is empty or `reservoir_size` is not in
    1..100.
    """

    def __init__(
        self,
        *,
        service: str,
        namespace: str = DEFAULT_NAMESPACE,
        stream: TextIO | None = None,
        reservoir_size: int = EMF_MAX_VALUES,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        if not service:
            raise ValueError("service must not be empty")
        if not namespace:
            raise ValueError("namespace must not be empty")
        if not 1 <= reservoir_size <= EMF_MAX_VALUES:
            raise ValueError(f"reservoir_size must be in 1..{EMF_MAX_VALUES}, got {reservoir_size}")
        self.service = service
        self.namespace = namespace
        self._stream = stream
        self._reservoir_size = reservoir_size
        self._clock = clock
        self._rng = random.Random(seed)
        self._consumers: dict[str, ConsumerMetrics] = {}

    def __repr__(self) -> str:
        return f"Metrics(service={self.service!r}, namespace={self.namespace!r})"

    def consumer(self, name: str) -> ConsumerMetrics:
        """The metrics of consumer `name`, made on first use.

        Raises ValueError when `name` is empty.
        """
        found = self._consumers.get(name)
        if found is None:
            if not name:
                raise ValueError("consumer name must not be empty")
            found = ConsumerMetrics(name, reservoir_size=self._reservoir_size, rng=self._rng)
            self._consumers[name] = found
        return found

    def statistics(self) -> MetricsStatistics:
        """Immutable snapshot of every consumer's lifetime totals."""
        return MetricsStatistics(
            MappingProxyType({n: c.statistics() for n, c in self._consumers.items()})
        )

    def flush(self) -> list[str]:
        """Write one EMF line per consumer for the period since the last flush (to the stream
        given, else the current stdout) and return the lines."""
        timestamp_ms = int(self._clock() * 1000)
        lines: list[str] = []
        for name, consumer_metrics in self._consumers.items():
            counts, latency, batches, lag = consumer_metrics._take_period()
            doc = render_emf(
                namespace=self.namespace,
                service=self.service,
                consumer=name,
                timestamp_ms=timestamp_ms,
                counts=counts,
                latency_seconds=latency.samples,
                batch_sizes=batches.samples,
                lag_seconds=lag,
            )
            lines.append(json.dumps(doc, separators=(",", ":")))
        if lines:
            out = self._stream or sys.stdout
            out.write("".join(line + "\n" for line in lines))
            out.flush()
        return lines

    async def run(self, interval: float = 60.0) -> None:
        """Flush every `interval` seconds until cancelled, then flush once more (a synchronous
        write, so cancellation cannot cut it short): a draining worker's last counts are kept.
        Start it in the worker's task group.

        Raises ValueError when `interval` is not positive.
        """
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        try:
            while True:
                await anyio.sleep(interval)
                self.flush()
        finally:
            self.flush()


_default: Metrics | None = None


def configure_metrics(
    *, service: str, namespace: str = DEFAULT_NAMESPACE, stream: TextIO | None = None
) -> Metrics:
    """Make and install the process-wide `Metrics` (replacing any earlier one) and return it."""
    global _default
    _default = Metrics(service=service, namespace=namespace, stream=stream)
    return _default


def get_metrics() -> Metrics:
    """The process-wide `Metrics`; made with service "fleetline" when none was configured."""
    global _default
    if _default is None:
        _default = Metrics(service="fleetline")
    return _default


def consumer(name: str) -> ConsumerMetrics:
    """`get_metrics().consumer(name)`."""
    return get_metrics().consumer(name)
