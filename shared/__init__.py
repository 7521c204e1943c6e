"""fleetline's reusable framework for event-driven services on AWS.

Public modules: `shared.aws` (clients and the SDK seam), `shared.config` (names from the
stack), `shared.errors` (the exception tree), `shared.dynamodb` (the attribute-value codec,
batched conditional writes), `shared.events` (envelopes, registry, claim
check), `shared.consumers` (SQS, Kinesis, DynamoDB Streams), `shared.outbox`, `shared.inbox`,
`shared.idempotency`, `shared.tracing`, `shared.logging`, `shared.metrics`, `shared.hosts`
(the ECS worker and Lambda adapters), `shared.cloudformation` (the template as data: the one
loader), `shared.deployment` (deploying it). Modules whose names start with `_` are
private.
"""

__version__ = "0.1.0"
