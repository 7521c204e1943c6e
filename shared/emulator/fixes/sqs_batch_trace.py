"""Gap: SendMessageBatch keeps each entry's AWSTraceHeader.

moto's `SQSBackend.send_message_batch` passes an entry's body, attributes, delay, group and
deduplication id on, but drops its `MessageSystemAttributes`: a message moved to a DLQ by
the runtime (one SendMessageBatch) lost its trace header, so `fleetline dlq peek` could not
name the trace and a redriven message started a trace of its own. SendMessage kept it. Here
each batch entry's system attributes reach its message, as SendMessage's do.
"""

from __future__ import annotations

from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]


def apply() -> None:
    from moto.sqs.models import SQSBackend

    original = unpatched(SQSBackend, "send_message_batch")
    if original is None:
        return

    def send_message_batch(self: Any, queue_name: str,
                           entries: dict[str, dict[str, Any]]) -> Any:
        messages, failed = original(self, queue_name, entries)
        by_id = {entry["Id"]: entry for entry in entries.values()}
        for message in messages:
            entry = by_id.get(getattr(message, "user_id", None))
            system = (entry or {}).get("MessageSystemAttributes")
            if system:
                message.system_attributes = dict(system)
        return messages, failed

    replace(SQSBackend, "send_message_batch", send_message_batch)


FIX = Fix(
    name="sqs-batch-trace",
    kind=FixKind.GAP,
    summary="SendMessageBatch keeps each entry's AWSTraceHeader",
    checks=(
        "moto.sqs.models:SQSBackend.send_message_batch",
        "moto.sqs.models:Message.__init__",
    ),
    verified={"5.2.6": "015f22056ddb6f32"},
    apply=apply,
)
