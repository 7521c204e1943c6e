"""The thin hosts that run a `BatchHandler`: the ECS worker (`python -m shared.hosts.worker
module:attr` with a `Worker` spec, or `serve(worker)` in-process) and the Lambda adapters
(`shared.hosts.lambda_`).

A worker module declares `Worker(name=..., source=SqsQueue(...) | KinesisStream(...) |
DynamoDBStream(...), handler=<HandlerFactory> | lifespan=<Lifespan>)`; a `Source` makes the
`Consumer` (anything with `run` and `stop`). `configure_gc` is the garbage-collector set-up the
host applies after loading (FLEETLINE_GC_THRESHOLDS), for a process that runs handlers
without the host. The environment variables the host reads and how are in
`shared.hosts._worker`'s docstring.
"""

from shared.hosts._gc import configure_gc
from shared.hosts._worker import (
    Consumer,
    DynamoDBStream,
    HandlerFactory,
    KinesisStream,
    Lifespan,
    Source,
    SqsQueue,
    Worker,
    serve,
)

__all__ = [
    "Consumer",
    "DynamoDBStream",
    "HandlerFactory",
    "KinesisStream",
    "Lifespan",
    "Source",
    "SqsQueue",
    "Worker",
    "configure_gc",
    "serve",
]
