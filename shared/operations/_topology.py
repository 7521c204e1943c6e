"""What the template says about dead letters and replays (pure: no I/O).

- `dead_letter_sources(template)`: every DLQ of the stack and what dead-letters into it: a
  queue's redrive policy, an SNS subscription's redrive policy, a rule target's
  DeadLetterConfig, or anything else that names it (a pipe, a schedule).
- `bus_archives(template)`: each bus and the archive that keeps its events.
- `rules_for_type(template, bus, detail_type)`: the rules of a bus whose pattern can match
  an event type (what a replay filtered by type is sent through).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DeadLetterSource", "bus_archives", "dead_letter_sources", "rules_for_type"]


@dataclass(frozen=True, kw_only=True)
class DeadLetterSource:
    """One thing that dead-letters into a DLQ: `owner` (logical id) of `kind` (its resource
    type), and `queue`, the queue a redrive sends its messages back to (the queue itself for
    a queue's redrive policy, a subscription's endpoint queue, a rule target's queue), or
    None when the source is no queue (a rule targeting a topic or a stream)."""

    owner: str
    kind: str
    queue: str | None


def _getatt(value: Any) -> str | None:
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        return str(target[0] if isinstance(target, list) else str(target).split(".")[0])
    return None


def dead_letter_sources(template: Mapping[str, Any]) -> dict[str, tuple[DeadLetterSource, ...]]:
    """Every queue something dead-letters into, with its sources, by logical id."""
    resources: Mapping[str, Any] = template.get("Resources") or {}
    queues = {lid for lid, r in resources.items() if r.get("Type") == "AWS::SQS::Queue"}
    found: dict[str, list[DeadLetterSource]] = {}

    def add(dlq: str | None, source: DeadLetterSource) -> None:
        if dlq in queues and source not in found.setdefault(dlq, []):
            found[dlq].append(source)

    for lid, resource in resources.items():
        kind = str(resource.get("Type"))
        props = resource.get("Properties") or {}
        if kind == "AWS::SQS::Queue":
            policy = props.get("RedrivePolicy") or {}
            add(_getatt(policy.get("deadLetterTargetArn")),
                DeadLetterSource(owner=lid, kind=kind, queue=lid))
        elif kind == "AWS::SNS::Subscription":
            policy = props.get("RedrivePolicy") or {}
            add(_getatt(policy.get("deadLetterTargetArn")),
                DeadLetterSource(owner=lid, kind=kind, queue=_getatt(props.get("Endpoint"))))
        elif kind == "AWS::Events::Rule":
            for target in props.get("Targets") or ():
                target_queue = _getatt(target.get("Arn"))
                add(_getatt((target.get("DeadLetterConfig") or {}).get("Arn")),
                    DeadLetterSource(owner=lid, kind=kind,
                                     queue=target_queue if target_queue in queues else None))
        else:
            for dlq in _named_dead_letters(props):
                add(dlq, DeadLetterSource(owner=lid, kind=kind, queue=None))
    return {dlq: tuple(sources) for dlq, sources in sorted(found.items())}


def _named_dead_letters(value: Any, key: str = "") -> list[str]:
    """Queues named under a DeadLetterConfig / RedrivePolicy anywhere in `value`."""
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if key in {"DeadLetterConfig", "RedrivePolicy"} and k in {
                    "Arn", "TargetArn", "deadLetterTargetArn"}:
                target = _getatt(v)
                if target:
                    out.append(target)
            out.extend(_named_dead_letters(v, k))
    elif isinstance(value, list):
        for v in value:
            out.extend(_named_dead_letters(v, key))
    return out


def bus_archives(template: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """Each archived bus (logical id) -> (its archive's logical id, retention days)."""
    out: dict[str, tuple[str, int]] = {}
    for lid, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") == "AWS::Events::Archive":
            props = resource.get("Properties") or {}
            bus = _getatt(props.get("SourceArn"))
            if bus:
                out[bus] = (lid, int(props.get("RetentionDays") or 0))
    return out


def rules_for_type(template: Mapping[str, Any], bus: str, detail_type: str | None) -> list[str]:
    """The rules (logical ids) on `bus` whose pattern can match events of `detail_type`
    (all of the bus's rules when None): a pattern without `detail-type`, or listing it."""
    out: list[str] = []
    for lid, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::Events::Rule":
            continue
        props = resource.get("Properties") or {}
        on = props.get("EventBusName")
        if _getatt(on) != bus and (not isinstance(on, dict) or on.get("Ref") != bus):
            continue
        pattern = props.get("EventPattern") or {}
        wanted = pattern.get("detail-type") if isinstance(pattern, dict) else None
        if detail_type is None or wanted is None or detail_type in wanted:
            out.append(lid)
    return sorted(out)
