"""The thin AWS calls on a queue that both SQS hosts make: find a queue's URL, read its
attributes and its DLQ, send dead letters, change visibility. SDK errors are translated
(`shared.aws.aws_errors`); the decisions are in `_settle`, the wire shapes in `_wire`.

`queue_url` is the one place a queue named by ARN (or name) becomes a URL: the poller's DLQ,
the Lambda adapter's event source, the ECS worker's `SqsQueue` and the local runner's event
source mappings all call it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from shared.aws import AwsClient, AwsClients, aws_errors
from shared.consumers._batch import chunks
from shared.consumers._message import Message
from shared.consumers.sqs._settle import Disposition
from shared.consumers.sqs._wire import dead_letter_entry, parse_queue_arn, parse_redrive_policy
from shared.errors import ConfigurationError, FleetlineError

__all__ = ["QueueDescription", "change_visibility", "describe_queue", "queue_url",
           "send_dead_letters"]

_SQS_BATCH_BYTES: Final = 262_144  # a SendMessageBatch's total payload stays within 256 KiB
_DEFAULT_VISIBILITY: Final = 30  # SQS's own default, for a queue that does not say


async def queue_url(aws: AwsClients, queue: str) -> str:
    """The URL of `queue`, given as a URL (returned as it is), an ARN or a queue name
    (GetQueueUrl; an ARN also names the owning account).

    Raises:
        ConfigurationError: `queue` is an ARN without an account and a name.
        AwsRequestError: the queue does not exist, or may not be looked up.
        AwsUnavailableError: SQS throttled or is unavailable.
    """
    if "://" in queue:
        return queue
    params: dict[str, str] = {"QueueName": queue}
    if queue.startswith("arn:"):
        try:
            account, name = parse_queue_arn(queue)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        params = {"QueueName": name, "QueueOwnerAWSAccountId": account}
    sqs = await aws.client("sqs")
    with aws_errors():
        response = await sqs.get_queue_url(**params)
    return str(response["QueueUrl"])


@dataclass(frozen=True, kw_only=True)
class QueueDescription:
    """What a host needs to know about a queue before settling its messages.

    `visibility_timeout`: the queue's (30 s, SQS's default, when it does not say).
    `max_receive_count`, `dead_letter_queue_url`: from its RedrivePolicy; None without one,
    and `dead_letter_queue_url` also None when the DLQ could not be looked up.
    """

    url: str
    visibility_timeout: int
    fifo: bool
    max_receive_count: int | None
    dead_letter_queue_url: str | None


async def describe_queue(
    aws: AwsClients, url: str, *, dead_letter_queue_url: str | None = None, log: Any
) -> QueueDescription:
    """GetQueueAttributes (VisibilityTimeout, RedrivePolicy, FifoQueue) of the queue at
    `url`, and the URL of the DLQ its redrive policy names, unless `dead_letter_queue_url`
    is given. A DLQ that cannot be looked up is logged and left None (the redrive itself
    still moves messages there).

    Raises:
        AwsRequestError: the queue does not exist or may not be read.
        AwsUnavailableError: SQS throttled or is unavailable.
        ValueError: the RedrivePolicy attribute is not JSON.
    """
    sqs = await aws.client("sqs")
    with aws_errors():
        response = await sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["VisibilityTimeout", "RedrivePolicy", "FifoQueue"]
        )
    attributes = response.get("Attributes", {})
    policy = parse_redrive_policy(attributes.get("RedrivePolicy"))
    target = policy.dead_letter_target_arn if policy is not None else None
    if dead_letter_queue_url is None and target is not None:
        try:
            dead_letter_queue_url = await queue_url(aws, target)
        except FleetlineError as exc:
            log.warning("dead-letter queue not reachable; using redrive", error=str(exc))
    return QueueDescription(
        url=url,
        visibility_timeout=int(attributes.get("VisibilityTimeout", _DEFAULT_VISIBILITY)),
        fifo=attributes.get("FifoQueue", "false") == "true",
        max_receive_count=policy.max_receive_count if policy is not None else None,
        dead_letter_queue_url=dead_letter_queue_url,
    )


async def send_dead_letters(
    sqs: AwsClient,
    dead: Sequence[Disposition],
    *,
    queue_url: str,
    dead_letter_queue_url: str,
    log: Any,
) -> tuple[list[Message], list[Disposition]]:
    """SendMessageBatch to the DLQ in batches within 10 entries and 256 KiB.

    Returns (messages now in the DLQ, which the caller deletes; dispositions that could not
    be sent, which the caller retries later). Never raises for AWS errors: they are logged.
    """
    sent: list[Message] = []
    failed: list[Disposition] = []
    batch: list[tuple[dict[str, Any], Disposition]] = []
    size = 0

    async def flush() -> None:
        nonlocal batch, size
        if not batch:
            return
        entries = {e["Id"]: d for e, d in batch}
        try:
            with aws_errors():
                response = await sqs.send_message_batch(
                    QueueUrl=dead_letter_queue_url, Entries=[e for e, _ in batch]
                )
        except FleetlineError as exc:
            log.error("sending to the DLQ failed", error=str(exc))
            failed.extend(entries.values())
        else:
            sent.extend(entries[s["Id"]].message for s in response.get("Successful", []))
            for f in response.get("Failed", []):
                log.error("sending to the DLQ failed", code=f.get("Code"),
                          message_id=entries[f["Id"]].message.id)
                failed.append(entries[f["Id"]])
        batch, size = [], 0

    for index, d in enumerate(dead):
        entry = dead_letter_entry(index, d, queue_url=queue_url,
                                  dead_letter_queue_url=dead_letter_queue_url)
        entry_size = len(d.message.body.encode()) + len(
            json.dumps(entry.get("MessageAttributes", {})))
        if batch and (len(batch) == 10 or size + entry_size > _SQS_BATCH_BYTES):
            await flush()
        batch.append((entry, d))
        size += entry_size
    await flush()
    return sent, failed


async def change_visibility(
    sqs: AwsClient,
    queue_url: str,
    changes: Sequence[tuple[Message, int]],
    *,
    purpose: str,
    log: Any,
) -> list[Message]:
    """ChangeMessageVisibilityBatch in chunks of 10; returns the messages changed. Failures
    are logged, not raised: such a message reappears when its current timeout ends."""
    changed: list[Message] = []
    for chunk in chunks(list(changes)):
        by_id = {str(i): m for i, (m, _) in enumerate(chunk)}
        entries = [
            {"Id": str(i), "ReceiptHandle": m.receipt, "VisibilityTimeout": seconds}
            for i, (m, seconds) in enumerate(chunk)
        ]
        try:
            with aws_errors():
                response = await sqs.change_message_visibility_batch(
                    QueueUrl=queue_url, Entries=entries
                )
        except FleetlineError as exc:
            log.warning("visibility change failed", purpose=purpose, error=str(exc),
                        messages=len(chunk))
            continue
        changed.extend(by_id[s["Id"]] for s in response.get("Successful", []))
        for f in response.get("Failed", []):
            log.warning("visibility change failed", purpose=purpose,
                        message_id=by_id[f["Id"]].id, code=f.get("Code"))
    return changed
