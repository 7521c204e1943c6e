"""Queues for tests against an endpoint (the emulator): made through the API, as a stack
would have them."""

from __future__ import annotations

import json
from dataclasses import dataclass

from shared.aws import AwsClients, aws_errors

__all__ = ["TestQueue", "create_queue_with_dlq"]


@dataclass(frozen=True, kw_only=True)
class TestQueue:
    """A queue made by `create_queue_with_dlq`: its URL and ARN, and its DLQ's URL."""

    __test__ = False  # not a pytest test class, whatever its name

    url: str
    arn: str
    dlq_url: str


async def create_queue_with_dlq(
    aws: AwsClients,
    name: str,
    *,
    max_receive_count: int,
    visibility_timeout: int = 30,
    fifo: bool = False,
) -> TestQueue:
    """The queue `name` (`name.fifo` when `fifo`) and its DLQ `name-dlq`, joined by a
    RedrivePolicy that moves a message after `max_receive_count` receives.

    Raises ValueError when `max_receive_count` < 1; SDK errors translated by `aws_errors`."""
    if max_receive_count < 1:
        raise ValueError(f"max_receive_count must be at least 1, got {max_receive_count}")
    sqs = await aws.client("sqs")
    suffix = ".fifo" if fifo else ""
    fifo_attributes = {"FifoQueue": "true"} if fifo else {}
    with aws_errors():
        dlq = (await sqs.create_queue(QueueName=f"{name}-dlq{suffix}",
                                      Attributes=fifo_attributes))["QueueUrl"]
        dlq_arn = (await sqs.get_queue_attributes(
            QueueUrl=dlq, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        url = (await sqs.create_queue(QueueName=f"{name}{suffix}", Attributes={
            **fifo_attributes,
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": str(max_receive_count)}),
        }))["QueueUrl"]
        arn = (await sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    return TestQueue(url=str(url), arn=str(arn), dlq_url=str(dlq))
