"""Gap: SQS StartMessageMoveTask / ListMessageMoveTasks (a DLQ redrive).

moto answers HTTP 500 NotImplemented to both, so `fleetline dlq redrive` could not use the
API it uses on AWS. Here a task moves, at once (before the response; AWS moves at a rate and
reports progress), every message visible in the source DLQ to `DestinationArn`, or, without
one, to the one queue whose redrive policy names the DLQ (AWS sends each message back to the
queue it came from; moto does not record that, and with several sources the request is
refused as AWS would refuse a destination it cannot tell). A moved message keeps its body,
its message attributes and its trace header, and starts with a receive count of 0, as on
AWS. ListMessageMoveTasks reports the task COMPLETED with the number moved.
"""

from __future__ import annotations

from typing import Any

from shared.emulator._fixes import Fix, FixKind

__all__ = ["FIX", "apply"]

_MARKER = "_fleetline"


def apply() -> None:
    from moto.core.responses import ActionResult
    from moto.core.utils import unix_time_millis
    from moto.sqs.exceptions import SQSException
    from moto.sqs.responses import SQSResponse

    existing = getattr(SQSResponse, "start_message_move_task", None)
    if existing is not None:  # applied already, or moto implements it now: keep that
        return

    tasks: dict[str, list[dict[str, Any]]] = {}

    def _queue_by_arn(backend: Any, arn: str) -> Any:
        for queue in backend.queues.values():
            if queue.queue_arn == arn:
                return queue
        raise SQSException("ResourceNotFoundException", f"no queue with the ARN {arn}")

    def start_message_move_task(self: Any) -> Any:
        backend = self.sqs_backend
        source = _queue_by_arn(backend, self._get_param("SourceArn"))
        destination_arn = self._get_param("DestinationArn")
        if destination_arn:
            destination = _queue_by_arn(backend, destination_arn)
        else:
            sources = backend.list_dead_letter_source_queues(source.name)
            if len(sources) != 1:
                raise SQSException(
                    "InvalidParameterValue",
                    f"{source.name} is the DLQ of {len(sources)} queues: name DestinationArn")
            destination = sources[0]
        moved = 0
        now = unix_time_millis()
        for message in [m for m in source._messages if m.visible_at <= now]:
            source._messages.remove(message)
            source.pending_messages.discard(message)
            copy = backend.send_message(
                destination.name, message.body,
                message_attributes=dict(message.message_attributes),
                system_attributes=dict(message.system_attributes),
                group_id=message.group_id, deduplication_id=message.deduplication_id,
                validate_group_id=False)
            del copy  # a new message: new id, receive count 0
            moved += 1
        handle = f"{source.queue_arn}#{len(tasks.get(source.queue_arn, ())) + 1}"
        tasks.setdefault(source.queue_arn, []).append({
            "TaskHandle": handle, "Status": "COMPLETED", "SourceArn": source.queue_arn,
            "DestinationArn": destination.queue_arn,
            "ApproximateNumberOfMessagesMoved": moved,
            "ApproximateNumberOfMessagesToMove": moved, "StartedTimestamp": int(now),
        })
        return ActionResult({"TaskHandle": handle})

    def list_message_move_tasks(self: Any) -> Any:
        source = _queue_by_arn(self.sqs_backend, self._get_param("SourceArn"))
        limit = int(self._get_param("MaxResults") or 1)
        listed = list(reversed(tasks.get(source.queue_arn, [])))[:limit]
        return ActionResult({"Results": listed})

    for name, function in (("start_message_move_task", start_message_move_task),
                           ("list_message_move_tasks", list_message_move_tasks)):
        setattr(function, _MARKER, True)
        setattr(SQSResponse, name, function)


FIX = Fix(
    name="message-moves",
    kind=FixKind.GAP,
    summary="SQS StartMessageMoveTask / ListMessageMoveTasks move a DLQ's messages back",
    checks=(
        "moto.sqs.models:SQSBackend.send_message",
        "moto.sqs.models:SQSBackend.list_dead_letter_source_queues",
        "moto.sqs.models:Message.__init__",
        "moto.sqs.responses:SQSResponse.sqs_backend",
    ),
    verified={"5.2.6": "d7829a7029b202c5"},
    apply=apply,
)
