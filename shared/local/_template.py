"""Resolving the template's intrinsic functions against a deployed stack.

The local runner supplies what the emulator skips from the template itself, so it needs the
values CloudFormation would have substituted: `Ref`, `Fn::GetAtt`, `Fn::Sub`, `Fn::Join`,
`Fn::Select`, `Fn::Split`, `Fn::If`, `Fn::FindInMap`. `resolve` does that purely, from
`StackFacts` (physical ids and attributes gathered once from the deployed stack), so the
planning is unit-tested without an emulator. The template itself is read by
`shared.cloudformation.load_template` (the one loader: short-form tags in their long form).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.cloudformation import Template, TemplateError

__all__ = ["StackFacts", "condition_holds", "resolve"]

_SUB_VAR = re.compile(r"\$\{([^}!][^}]*)\}")
NO_VALUE = object()  # AWS::NoValue: the property is dropped


@dataclass(frozen=True, kw_only=True)
class StackFacts:
    """What resolution needs from a deployed stack."""

    stack_name: str
    region: str
    account: str
    physical: Mapping[str, str] = field(default_factory=dict)  # logical id -> physical id
    attributes: Mapping[str, str] = field(default_factory=dict)  # "Logical.Attr" -> value
    parameters: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_stack_id(
        cls,
        stack_id: str,
        *,
        stack_name: str,
        physical: Mapping[str, str],
        attributes: Mapping[str, str] | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> StackFacts:
        """Region and account come from the stack's ARN (no extra request)."""
        parts = stack_id.split(":")
        if len(parts) < 6:
            raise TemplateError(f"not a stack ARN: {stack_id!r}")
        return cls(
            stack_name=stack_name,
            region=parts[3],
            account=parts[4],
            physical=dict(physical),
            attributes=dict(attributes or {}),
            parameters=dict(parameters or {}),
        )


def _name_of(physical: str) -> str:
    """Queue URL or ARN -> the last path segment (the resource's name)."""
    return re.split(r"[/:]", physical.rstrip("/"))[-1]


def _derived_attribute(
    template: Template,
    facts: StackFacts,
    logical: str,
    attribute: str,
) -> str | None:
    """Attributes computable from the resource type and its physical id."""
    resource = template["Resources"].get(logical)
    if resource is None:
        raise TemplateError(f"Fn::GetAtt names unknown resource {logical!r}")
    kind = resource.get("Type", "")
    if kind == "AWS::Events::Endpoint" and attribute == "EndpointId":
        # The emulator has no global endpoints: "" is "no endpoint", what a standby stack
        # says too, so producers publish to the bus in their own Region (docs/zones.md).
        return ""
    physical = facts.physical.get(logical)
    region, account = facts.region, facts.account
    name = _name_of(physical) if physical else None
    if kind == "AWS::Events::EventBus" and name is None:
        # The emulator lists buses without a physical id; the name is in the template.
        name = str(resolve(resource.get("Properties", {}).get("Name"), template, facts))
    if name is None:
        return None
    rule_path = name
    if kind == "AWS::Events::Rule":
        bus = resolve(resource.get("Properties", {}).get("EventBusName"), template, facts)
        if bus and bus != "default":
            rule_path = f"{_name_of(str(bus))}/{name}"
    arns = {
        "AWS::SQS::Queue": f"arn:aws:sqs:{region}:{account}:{name}",
        "AWS::SNS::Topic": physical,
        "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{region}:{account}:table/{name}",
        "AWS::Kinesis::Stream": f"arn:aws:kinesis:{region}:{account}:stream/{name}",
        "AWS::Events::EventBus": f"arn:aws:events:{region}:{account}:event-bus/{name}",
        "AWS::Lambda::Function": f"arn:aws:lambda:{region}:{account}:function:{name}",
        "AWS::IAM::Role": f"arn:aws:iam::{account}:role/{name}",
        "AWS::StepFunctions::StateMachine": physical,
        "AWS::S3::Bucket": f"arn:aws:s3:::{name}",
        "AWS::ECS::Cluster": f"arn:aws:ecs:{region}:{account}:cluster/{name}",
        "AWS::Logs::LogGroup": f"arn:aws:logs:{region}:{account}:log-group:{name}:*",
        "AWS::Events::Rule": f"arn:aws:events:{region}:{account}:rule/{rule_path}",
        "AWS::Events::Archive": f"arn:aws:events:{region}:{account}:archive/{name}",
        "AWS::KMS::Key": f"arn:aws:kms:{region}:{account}:key/{name}",
        "AWS::ECS::TaskDefinition": physical,
        "AWS::ECS::Service": physical,
    }
    if attribute == "Arn" and kind in arns:
        return arns[kind]
    if attribute in {"QueueName", "TopicName", "Name", "StreamName", "KeyId", "ArchiveName"}:
        return name
    if attribute == "QueueUrl" and kind == "AWS::SQS::Queue":
        return physical
    if attribute == "TopicArn" and kind == "AWS::SNS::Topic":
        return physical
    return None


def _ref(name: str, template: Template, facts: StackFacts) -> Any:
    pseudo = {
        "AWS::StackName": facts.stack_name,
        "AWS::Region": facts.region,
        "AWS::AccountId": facts.account,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::StackId": (
            f"arn:aws:cloudformation:{facts.region}:{facts.account}:stack/{facts.stack_name}"
        ),
    }
    if name == "AWS::NoValue":
        return NO_VALUE
    if name in pseudo:
        return pseudo[name]
    if name in facts.parameters:
        return facts.parameters[name]
    params = template.get("Parameters", {})
    if name in params:
        if "Default" not in params[name]:
            raise TemplateError(f"parameter {name!r} has no value and no Default")
        return params[name]["Default"]
    if name in facts.physical:
        return facts.physical[name]
    resource = template["Resources"].get(name)
    if resource is None:
        raise TemplateError(f"Ref to unknown name {name!r}")
    if resource.get("Type") == "AWS::Events::EventBus":
        return _derived_attribute(template, facts, name, "Name")
    raise TemplateError(f"{name} ({resource.get('Type')}) has no physical id in the deployed stack")


def _getatt(logical: str, attribute: str, template: Template, facts: StackFacts) -> str:
    known = facts.attributes.get(f"{logical}.{attribute}")
    if known is not None:
        return known
    derived = _derived_attribute(template, facts, logical, attribute)
    if derived is None:
        raise TemplateError(
            f"cannot resolve Fn::GetAtt {logical}.{attribute} locally "
            "(add it to the attributes the runner gathers)"
        )
    return derived


def _sub(text: str, variables: Mapping[str, Any], template: Template, facts: StackFacts) -> str:
    def replace(match: re.Match[str]) -> str:
        key = match.group(1).strip()
        if key in variables:
            return str(resolve(variables[key], template, facts))
        if "." in key and not key.startswith("AWS::"):
            logical, _, attribute = key.partition(".")
            return _getatt(logical, attribute, template, facts)
        return str(_ref(key, template, facts))

    return _SUB_VAR.sub(replace, text).replace("${!", "${")


def _condition(name: str, template: Template, facts: StackFacts) -> bool:
    conditions = template.get("Conditions", {})
    if name not in conditions:
        raise TemplateError(f"unknown condition {name!r}")
    return bool(resolve(conditions[name], template, facts))


def condition_holds(resource: Mapping[str, Any], template: Template, facts: StackFacts) -> bool:
    """Whether the stack has `resource`: it names no `Condition`, or its condition is true
    for the stack's parameters (a standby stack has no global endpoint, for one).

    Raises TemplateError when the condition cannot be resolved."""
    name = resource.get("Condition")
    return name is None or _condition(str(name), template, facts)


def resolve(value: Any, template: Template, facts: StackFacts) -> Any:
    """`value` with every intrinsic function replaced by its value in the deployed stack.

    Raises TemplateError for a function or attribute that cannot be resolved locally.
    """
    if isinstance(value, list):
        items = [resolve(v, template, facts) for v in value]
        return [v for v in items if v is not NO_VALUE]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return _ref(str(arg), template, facts)
        if key == "Fn::GetAtt":
            parts = arg.split(".", 1) if isinstance(arg, str) else list(arg)
            return _getatt(str(parts[0]), str(resolve(parts[1], template, facts)), template, facts)
        if key == "Fn::Sub":
            if isinstance(arg, str):
                return _sub(arg, {}, template, facts)
            return _sub(str(arg[0]), dict(arg[1]), template, facts)
        if key == "Fn::Join":
            sep, items = arg
            return str(sep).join(str(v) for v in resolve(items, template, facts))
        if key == "Fn::Select":
            index, items = arg
            return resolve(items, template, facts)[int(resolve(index, template, facts))]
        if key == "Fn::Split":
            sep, text = arg
            return str(resolve(text, template, facts)).split(str(sep))
        if key == "Fn::If":
            name, then, otherwise = arg
            chosen = then if _condition(str(name), template, facts) else otherwise
            return resolve(chosen, template, facts)
        if key == "Fn::FindInMap":
            mapping, top, second = (str(resolve(v, template, facts)) for v in arg)
            try:
                return template["Mappings"][mapping][top][second]
            except KeyError:
                raise TemplateError(f"Fn::FindInMap: no {mapping}.{top}.{second}") from None
        if key == "Fn::Equals":
            left, right = (resolve(v, template, facts) for v in arg)
            return left == right
        if key == "Fn::Not":
            return not resolve(arg[0], template, facts)
        if key == "Fn::And":
            return all(resolve(v, template, facts) for v in arg)
        if key == "Fn::Or":
            return any(resolve(v, template, facts) for v in arg)
        if key == "Condition":
            return _condition(str(arg), template, facts)
        if key.startswith("Fn::"):
            raise TemplateError(f"{key} is not supported by the local runner")
    resolved = {k: resolve(v, template, facts) for k, v in value.items()}
    return {k: v for k, v in resolved.items() if v is not NO_VALUE}
