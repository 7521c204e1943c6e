"""Gap: EventBridge rules whose targets are SNS topics (the dashboard feed) or Kinesis
streams (the firmware acks stream).

moto's `Rule.send_to_targets` has no SNS branch and raises, so PutEvents answers HTTP 500
for any event such a rule matches, and the whole bus stops; it has no Kinesis branch either,
and drops those events silently. Here the rule delivers both as EventBridge does: the same
JSON document moto puts on a queue target (input transformer applied, ISO time), published
through moto's own SNS backend (so subscriptions, filter policies and raw delivery behave as
moto's), or put on the stream with the partition key `KinesisParameters.PartitionKeyPath`
selects (the event id without one, as AWS documents). The rule's other targets go through
moto's code unchanged.

moto 5.2.5 keeps a Kinesis record's data as base64 text and 5.2.6 as bytes (its backend's
`put_record` says which in its annotation); the record gets what that version expects.
"""

from __future__ import annotations

import base64
import copy
import inspect
import json
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]


def apply() -> None:
    from moto.core.utils import iso_8601_datetime_without_milliseconds, utcfromtimestamp
    from moto.events.models import Rule
    from moto.events.utils import EventTemplateParser
    from moto.kinesis.models import KinesisBackend, kinesis_backends
    from moto.sns.models import sns_backends
    from moto.utilities.arns import parse_arn

    data_as_text = inspect.signature(KinesisBackend.put_record).parameters[
        "data"].annotation in ("str", str)

    original = unpatched(Rule, "send_to_targets")
    if original is None:
        return

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        ours = [t for t in self.targets if parse_arn(t["Arn"]).service in ("sns", "kinesis")]
        if not ours:
            original(self, original_event, transform_input)
            return
        if not self.event_pattern.matches_event(original_event):
            return
        others = [t for t in self.targets if t not in ours]
        if others:  # moto's own delivery, on a copy: the rule itself is shared by threads
            rest = copy.copy(self)
            rest.targets = others
            original(rest, original_event, transform_input)
        for target in ours:
            arn = parse_arn(target["Arn"])
            if transform_input:
                transformer = target.get("InputTransformer", {})
                event = EventTemplateParser.parse(
                    input_template=transformer.get("InputTemplate"),
                    input_paths_map=transformer.get("InputPathsMap", {}),
                    event=original_event,
                )
            else:
                event = dict(original_event)
            if isinstance(event.get("time"), int | float):
                # as moto formats it for queues: the ISO time AWS puts in the event
                event["time"] = iso_8601_datetime_without_milliseconds(
                    utcfromtimestamp(event["time"]))
            if arn.service == "sns":
                sns_backends[arn.account][arn.region].publish(
                    message=json.dumps(event), arn=target["Arn"])
                continue
            path = (target.get("KinesisParameters") or {}).get("PartitionKeyPath")
            key = _select(original_event, path) if path else original_event.get("id")
            body = json.dumps(event).encode()
            streams: Any = kinesis_backends[arn.account][arn.region]
            streams.put_record(
                stream_arn=target["Arn"], stream_name=None,
                partition_key=str(key or original_event.get("id") or "none"),
                explicit_hash_key=None,
                data=base64.b64encode(body).decode() if data_as_text else body)

    replace(Rule, "send_to_targets", send_to_targets)


def _select(event: Any, path: str) -> Any:
    """A plain JSONPath (`$.detail.aggregate_id`) over the event; None when absent."""
    value = event
    for part in path.removeprefix("$").strip(".").split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


FIX = Fix(
    name="rule-targets",
    kind=FixKind.GAP,
    summary="EventBridge rules deliver to SNS topic and Kinesis stream targets",
    checks=(
        "moto.events.models:Rule.send_to_targets",
        "moto.events.utils:EventTemplateParser.parse",
        "moto.sns.models:SNSBackend.publish",
        "moto.utilities.arns:parse_arn",
        "moto.kinesis.models:KinesisBackend.put_record",
        "moto.kinesis.models:Stream.put_record",
    ),
    verified={"5.2.5": "5aea3ca03160b327", "5.2.6": "373c5bea172a28aa"},
    apply=apply,
)
