"""EMF format and the statistics snapshot of shared.metrics."""

from __future__ import annotations

import dataclasses
import io
import json

import anyio
import pytest

from shared.metrics import Counter, Metrics


def _metrics(stream: io.StringIO) -> Metrics:
    return Metrics(service="orders-worker", stream=stream, clock=lambda: 1_700_000_000.5, seed=7)


def _assert_valid_emf(doc: dict[str, object]) -> None:
    """The rules CloudWatch applies to an EMF document."""
    aws = doc["_aws"]
    assert isinstance(aws, dict)
    assert isinstance(aws["Timestamp"], int)
    for directive in aws["CloudWatchMetrics"]:
        assert directive["Namespace"]
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                assert isinstance(doc[key], str)
        for metric in directive["Metrics"]:
            value = doc[metric["Name"]]
            assert metric["Unit"] in {"Count", "Milliseconds"}
            if isinstance(value, list):
                assert 0 < len(value) <= 100
                assert all(isinstance(v, int | float) for v in value)
            else:
                assert isinstance(value, int | float)


def test_flush_writes_one_emf_line_per_consumer_for_the_period() -> None:
    out = io.StringIO()
    metrics = _metrics(out)
    queue = metrics.consumer("orders-queue")
    queue.observe_batch_size(10)
    queue.count(Counter.RECEIVED, 10)
    queue.count(Counter.SUCCEEDED, 7)
    queue.count(Counter.RETRIED)
    queue.count(Counter.DEAD_LETTERED)
    queue.count(Counter.DUPLICATES_SKIPPED)
    queue.observe_latency(0.0125)
    queue.observe_lag(2.0)
    queue.observe_lag(0.5)
    metrics.consumer("telemetry-stream").count(Counter.FAILED, 2)

    lines = metrics.flush()

    assert out.getvalue().splitlines() == lines
    docs = {d["Consumer"]: d for d in map(json.loads, lines)}
    assert set(docs) == {"orders-queue", "telemetry-stream"}
    queue_doc = docs["orders-queue"]
    _assert_valid_emf(queue_doc)
    assert queue_doc["_aws"]["Timestamp"] == 1_700_000_000_500
    assert queue_doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Fleetline"
    assert queue_doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Service", "Consumer"]]
    assert queue_doc["Service"] == "orders-worker"
    assert (queue_doc["Received"], queue_doc["Succeeded"], queue_doc["Failed"]) == (10, 7, 0)
    assert (queue_doc["Retried"], queue_doc["DeadLettered"]) == (1, 1)
    assert queue_doc["DuplicatesSkipped"] == 1
    assert queue_doc["HandlerLatency"] == [12.5]
    assert queue_doc["BatchSize"] == [10]
    assert queue_doc["Lag"] == 2000.0
    stream_doc = docs["telemetry-stream"]
    _assert_valid_emf(stream_doc)
    names = {m["Name"] for m in stream_doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "HandlerLatency" not in names  # nothing observed
    assert "Lag" not in names
    assert stream_doc["Failed"] == 2

    # the next period starts from zero; lifetime totals keep counting
    queue.count(Counter.RECEIVED, 3)
    second = {d["Consumer"]: d for d in map(json.loads, metrics.flush())}
    assert second["orders-queue"]["Received"] == 3
    assert "HandlerLatency" not in second["orders-queue"]
    assert metrics.statistics()["orders-queue"].received == 13


def test_distributions_keep_at_most_100_values_and_exact_totals() -> None:
    metrics = _metrics(io.StringIO())
    queue = metrics.consumer("q")
    for i in range(1, 1001):
        queue.observe_latency(i / 1000)
    doc = json.loads(metrics.flush()[0])
    _assert_valid_emf(doc)
    assert len(doc["HandlerLatency"]) == 100
    assert len(set(doc["HandlerLatency"])) == 100
    assert all(1.0 <= v <= 1000.0 for v in doc["HandlerLatency"])
    # a uniform sample of 1..1000 ms: its median is nowhere near either end
    assert 250 < sorted(doc["HandlerLatency"])[50] < 750
    stats = metrics.statistics()["q"]
    assert stats.handled == 1000
    assert stats.handler_seconds_max == 1.0
    assert stats.handler_seconds_mean == pytest.approx(0.5005)


def test_statistics_is_an_immutable_snapshot() -> None:
    metrics = _metrics(io.StringIO())
    metrics.consumer("q").count(Counter.RECEIVED, 2)
    metrics.consumer("q").observe_batch_size(2)
    snapshot = metrics.statistics()
    metrics.consumer("q").count(Counter.RECEIVED, 5)
    assert snapshot["q"].received == 2
    assert snapshot["q"].mean_batch_size == 2.0
    assert metrics.statistics()["q"].received == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot["q"].received = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        snapshot.consumers["x"] = snapshot["q"]  # type: ignore[index]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="service"):
        Metrics(service="")
    with pytest.raises(ValueError, match="reservoir_size"):
        Metrics(service="s", reservoir_size=101)
    with pytest.raises(ValueError, match="name"):
        Metrics(service="s").consumer("")


class _SignallingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.written = anyio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)


async def test_run_flushes_periodically_and_once_more_when_cancelled() -> None:
    out = _SignallingStream()
    metrics = _metrics(out)
    metrics.consumer("q").count(Counter.RECEIVED)
    async with anyio.create_task_group() as tg:
        tg.start_soon(metrics.run, 0.01)
        with anyio.fail_after(5):
            await out.written.wait()
        metrics.consumer("q").count(Counter.SUCCEEDED, 4)
        tg.cancel_scope.cancel()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(d["Received"] for d in docs) == 1
    assert sum(d["Succeeded"] for d in docs) == 4  # the final flush kept the last counts
    with pytest.raises(ValueError, match="interval"):
        await metrics.run(0)
