"""AWS list prices the benchmarks price their counts with (us-east-1, on-demand, as published
in 2025; from ../shared/notes/cost.md; verify before quoting). Dollars per unit.

Use the helpers: `dollars(wru=..., rru=..., sqs_requests=..., ...)` returns the total for the
given counts.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PRICES", "dollars", "fargate_cpu_dollars"]

PRICES: Final[dict[str, float]] = {
    # DynamoDB on-demand: 1 WRU per 1 KB written (2 in a transaction); 1 RRU per 4 KB read
    # strongly consistent (0.5 eventually consistent; 2 in a transaction).
    "dynamodb_wru": 0.625 / 1_000_000,
    "dynamodb_rru": 0.125 / 1_000_000,
    # SQS: per request (each 64 KB chunk is a request).
    "sqs_standard_request": 0.40 / 1_000_000,
    "sqs_fifo_request": 0.50 / 1_000_000,
    "sns_publish": 0.50 / 1_000_000,
    # EventBridge custom events: per 64 KB chunk.
    "eventbridge_event": 1.00 / 1_000_000,
    "kinesis_shard_hour": 0.015,
    "kinesis_put_payload_unit": 0.014 / 1_000_000,  # 25 KB units
    "stepfunctions_transition": 0.025 / 1_000,
    "lambda_request": 0.20 / 1_000_000,
    "lambda_gb_second": 0.0000166667,
    # Firehose (2025 list prices, verify): ingestion per GB in 5 KB increments per record,
    # format conversion and dynamic partitioning per GB, partitioning per 1,000 S3 objects
    # and per JQ processing hour; S3 PUT per request.
    "firehose_ingest_gb": 0.029,
    "firehose_conversion_gb": 0.018,
    "firehose_partitioning_gb": 0.020,
    "firehose_partitioning_object": 0.005 / 1_000,
    "firehose_jq_hour": 0.07,
    "s3_put": 0.005 / 1_000,
    "fargate_vcpu_hour": 0.04048,
    "fargate_gb_hour": 0.004445,
}


def fargate_cpu_dollars(cpu_seconds: float) -> float:
    """What `cpu_seconds` of one vCPU cost on Fargate (Linux x86), memory not included."""
    return cpu_seconds / 3600.0 * PRICES["fargate_vcpu_hour"]


def dollars(
    *,
    wru: float = 0.0,
    rru: float = 0.0,
    sqs_requests: float = 0.0,
    sqs_fifo_requests: float = 0.0,
    sns_publishes: float = 0.0,
    eventbridge_events: float = 0.0,
    stepfunctions_transitions: float = 0.0,
    lambda_requests: float = 0.0,
    cpu_seconds: float = 0.0,
) -> float:
    """The list-price total of the given counts."""
    return (
        wru * PRICES["dynamodb_wru"]
        + rru * PRICES["dynamodb_rru"]
        + sqs_requests * PRICES["sqs_standard_request"]
        + sqs_fifo_requests * PRICES["sqs_fifo_request"]
        + sns_publishes * PRICES["sns_publish"]
        + eventbridge_events * PRICES["eventbridge_event"]
        + stepfunctions_transitions * PRICES["stepfunctions_transition"]
        + lambda_requests * PRICES["lambda_request"]
        + fargate_cpu_dollars(cpu_seconds)
    )
