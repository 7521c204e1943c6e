"""The thin hosts that run a `BatchHandler`: the ECS worker (`python -m shared.hosts.worker
module:attr` with a `Worker` spec) and the Lambda adapters (`shared.hosts.lambda_`)."""

from shared.hosts._gc import GC_THRESHOLDS_ENV, configure_gc
from shared.hosts._worker import (
    DRAIN_SECONDS_ENV,
    Consumer,
    DynamoDBStream,
    HandlerFactory,
    KinesisStream,
    Lifespan,
    Source,
    SqsQueue,
    Worker,
    configure_process,
    drain_seconds_from,
    load_worker,
    serve,
)

__all__ = [
    "DRAIN_SECONDS_ENV",
    "GC_THRESHOLDS_ENV",
    "Consumer",
    "DynamoDBStream",
    "HandlerFactory",
    "KinesisStream",
    "Lifespan",
    "Source",
    "SqsQueue",
    "Worker",
    "configure_gc",
    "configure_process",
    "drain_seconds_from",
    "load_worker",
    "serve",
]
