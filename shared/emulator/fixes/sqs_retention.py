"""Speed: SQS checks a message's retention in constant time.

For every message ReceiveMessage considers, moto checked the retention period by computing
all the queue's attributes, three of which (the approximate counts) walk every message:
quadratic in the backlog, so a queue that falls behind falls further behind. The same
comparison reads the queue's retention period directly.
"""

from __future__ import annotations

from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]


def apply() -> None:
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    if unpatched(SQSBackend, "is_message_valid_based_on_retention_period") is None:
        return

    def is_message_valid_based_on_retention_period(
        self: Any, queue_name: str, message: Any
    ) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
        return bool(retain_until > unix_time())

    replace(SQSBackend, "is_message_valid_based_on_retention_period",
            is_message_valid_based_on_retention_period)


FIX = Fix(
    name="sqs-retention",
    kind=FixKind.SPEED,
    summary="SQS checks a message's retention without computing every queue attribute",
    checks=(
        "moto.sqs.models:SQSBackend.is_message_valid_based_on_retention_period",
        "moto.sqs.models:Message.__init__",
    ),
    verified={"5.2.5": "7fd7ac218cab9298", "5.2.6": "7fd7ac218cab9298"},
    apply=apply,
)
