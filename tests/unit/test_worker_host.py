"""The worker host's edges without AWS: loading `module:attr`, FLEETLINE_DRAIN_SECONDS, the
Worker spec's checks, and how stop requests reach a consumer before and after it exists."""

from __future__ import annotations

import anyio
import pytest

from shared.config import Resources
from shared.consumers import SqsSettings
from shared.errors import ConfigurationError
from shared.hosts import SqsQueue, Worker
from shared.hosts._worker import _HostState, _resolve, drain_seconds_from, load_worker, main
from shared.testing import MemoryConsumer


def test_load_worker_accepts_a_worker_or_a_factory() -> None:
    worker = load_worker("tests.integration.worker_app:worker")
    assert worker.name == "shutdown-test"
    assert isinstance(worker.source, SqsQueue)


@pytest.mark.parametrize(
    ("target", "message"),
    [("nocolon", "module:attr"), ("no.such.module:worker", "cannot import"),
     ("tests.integration.worker_app:missing", "no attribute"),
     ("tests.integration.worker_app:handle", "not a shared.hosts.Worker")],
)
def test_load_worker_errors_name_the_problem(target: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_worker(target)


def test_main_exits_78_on_configuration_errors_and_2_on_usage() -> None:
    assert main(["no.such.module:worker"]) == 78
    assert main([]) == 2


def test_drain_seconds_default_and_validation() -> None:
    assert drain_seconds_from({}) == 45.0
    assert drain_seconds_from({"FLEETLINE_DRAIN_SECONDS": "2.5"}) == 2.5
    with pytest.raises(ConfigurationError, match="FLEETLINE_DRAIN_SECONDS"):
        drain_seconds_from({"FLEETLINE_DRAIN_SECONDS": "soon"})
    with pytest.raises(ConfigurationError, match="non-negative"):
        drain_seconds_from({"FLEETLINE_DRAIN_SECONDS": "-1"})


def test_worker_spec_needs_exactly_one_handler_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Worker(name="w", source=SqsQueue("Q"))
    with pytest.raises(ValueError, match="name"):
        Worker(name="", source=SqsQueue("Q"), handler=lambda aws, r: None)  # type: ignore[arg-type,return-value]


def test_resolve_reads_output_keys_and_passes_literals() -> None:
    resources = Resources({"FLEETLINE_ORDERS_QUEUE": "https://sqs/orders"})
    assert _resolve(resources, "OrdersQueue") == "https://sqs/orders"
    assert _resolve(resources, "https://sqs/other") == "https://sqs/other"
    assert _resolve(resources, "arn:aws:sqs:us-east-1:1:q") == "arn:aws:sqs:us-east-1:1:q"
    assert _resolve(resources, "plain-name") == "plain-name"
    with pytest.raises(ConfigurationError, match="FLEETLINE_MISSING_QUEUE"):
        _resolve(resources, "MissingQueue")


async def test_a_stop_requested_during_start_up_applies_when_the_consumer_exists() -> None:
    host = _HostState()
    host.request_stop()
    consumer, scope = MemoryConsumer(), anyio.CancelScope()
    host.attach(consumer, scope)
    assert consumer.stops == 1
    assert not scope.cancel_called


async def test_a_second_request_cancels_the_run() -> None:
    host = _HostState()
    consumer, scope = MemoryConsumer(), anyio.CancelScope()
    host.attach(consumer, scope)
    host.request_stop()
    assert (consumer.stops, scope.cancel_called) == (1, False)
    host.request_stop()
    assert scope.cancel_called


def test_sqs_queue_source_keeps_its_settings() -> None:
    source = SqsQueue("OrdersQueue", SqsSettings(wait_time_seconds=2))
    assert source.settings.wait_time_seconds == 2
