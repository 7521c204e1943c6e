"""Gap: an EventBridge rule whose target is an SNS topic (the dashboard feed).

moto's `Rule.send_to_targets` has no SNS branch and raises, so PutEvents answers HTTP 500
for any event such a rule matches, and the whole bus stops. Here the rule publishes the
event to the topic as EventBridge does: the same JSON document moto puts on a queue target
(input transformer applied, ISO time), through moto's own SNS backend, so subscriptions,
filter policies and raw delivery behave as moto's. The rule's other targets go through
moto's code unchanged.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched


def apply() -> None:
    from moto.core.utils import iso_8601_datetime_without_milliseconds, utcfromtimestamp
    from moto.events.models import Rule
    from moto.events.utils import EventTemplateParser
    from moto.sns.models import sns_backends
    from moto.utilities.arns import parse_arn

    original = unpatched(Rule, "send_to_targets")
    if original is None:
        return

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        topics = [t for t in self.targets if parse_arn(t["Arn"]).service == "sns"]
        if not topics:
            original(self, original_event, transform_input)
            return
        if not self.event_pattern.matches_event(original_event):
            return
        others = [t for t in self.targets if t not in topics]
        if others:  # moto's own delivery, on a copy: the rule itself is shared by threads
            rest = copy.copy(self)
            rest.targets = others
            original(rest, original_event, transform_input)
        for target in topics:
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
            sns_backends[arn.account][arn.region].publish(
                message=json.dumps(event), arn=target["Arn"])

    replace(Rule, "send_to_targets", send_to_targets)


FIX = Fix(
    name="topic-targets",
    kind=FixKind.GAP,
    summary="an EventBridge rule delivers to an SNS topic target (moto answers HTTP 500)",
    checks=(
        "moto.events.models:Rule.send_to_targets",
        "moto.events.utils:EventTemplateParser.parse",
        "moto.sns.models:SNSBackend.publish",
        "moto.utilities.arns:parse_arn",
    ),
    verified={"5.2.5": "cb35962f43727efe", "5.2.6": "cb35962f43727efe"},
    apply=apply,
)
