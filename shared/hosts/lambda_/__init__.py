"""Lambda adapters: the same `BatchHandler` (and the same async code) that runs in an ECS
worker, behind Lambda's synchronous `handler(event, context)` entry point.

    handler = sqs_handler(setup=lambda aws, resources: Projection(aws, ...).batch_handler())

One module per trigger, each a thin adapter over the runtime and its source's folder in
`shared.consumers` (the `Message` builder, the settle code):

    _runtime      `LambdaRuntime`: one event loop per container in a background thread, the
                  container's `AwsClients` and the handlers built by `setup`, reused by later
                  invocations; the steps every batch trigger takes (deadline, metrics, logs)
    _sqs          `sqs_handler`: SQS event source mapping (ReportBatchItemFailures on).
                  Returns `{"batchItemFailures": [...]}`; also gives failed messages the
                  worker's backoff and sends what the handler dead-letters to the queue's DLQ
                  with the reason (then reports it as done)
    _streams      `kinesis_handler`, `dynamodb_stream_handler`: only the lowest failed
                  sequence number is reported; DEAD_LETTER records go to `failure_queue`
                  (the ECS stream consumer's document) and count as done
    _eventbridge  `eventbridge_handler`: a RETRY or DEAD_LETTER outcome raises
                  `InvocationFailed`, so Lambda's retries and on-failure destination apply
    _http         `http_api_handler`: API Gateway HTTP API (payload format 2.0) routes to
                  async functions; `HttpRequest`, `HttpResponse`, `HttpError`

A batch that would outlast the function's timeout is cut one second before it: finished
messages keep their outcome, the rest are reported as failures, so Lambda never retries the
whole batch. The `Message` builders of Lambda records live with their sources
(`shared.consumers.sqs.message_from_sqs_record`, `shared.consumers.kinesis.
message_from_kinesis_record`, `shared.consumers.dynamodb_streams.message_from_dynamodb_record`,
`shared.consumers.eventbridge.message_from_eventbridge`).
"""

from shared.hosts.lambda_._eventbridge import InvocationFailed, eventbridge_handler
from shared.hosts.lambda_._http import (
    HttpError,
    HttpRequest,
    HttpResponse,
    HttpRoute,
    http_api_handler,
)
from shared.hosts.lambda_._runtime import LambdaRuntime
from shared.hosts.lambda_._sqs import sqs_handler
from shared.hosts.lambda_._streams import dynamodb_stream_handler, kinesis_handler

__all__ = [
    "HttpError",
    "HttpRequest",
    "HttpResponse",
    "HttpRoute",
    "InvocationFailed",
    "LambdaRuntime",
    "dynamodb_stream_handler",
    "eventbridge_handler",
    "http_api_handler",
    "kinesis_handler",
    "sqs_handler",
]
