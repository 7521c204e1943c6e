"""The deployed stack as the local runner sees it: resources, outputs, and the facts that
resolving the template needs (thin AWS calls)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from shared.aws import AwsClients, aws_errors
from shared.cloudformation import Template
from shared.errors import AwsRequestError
from shared.local._template import StackFacts

__all__ = ["DeployedStack", "StackResource", "describe_stack", "gather_facts"]


@dataclass(frozen=True, kw_only=True)
class StackResource:
    logical_id: str
    type: str
    physical_id: str | None
    status: str


@dataclass(frozen=True, kw_only=True)
class DeployedStack:
    name: str
    stack_id: str
    status: str
    outputs: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    resources: tuple[StackResource, ...] = ()

    def physical_ids(self) -> dict[str, str]:
        return {r.logical_id: r.physical_id for r in self.resources if r.physical_id}


async def describe_stack(aws: AwsClients, stack_name: str) -> DeployedStack | None:
    """The stack and its resources, or None when no stack has that name.

    The emulator lists skipped resources without a logical id; they are left out here and
    matched against the template by the caller.
    """
    cfn = await aws.client("cloudformation")
    try:
        with aws_errors():
            described = await cfn.describe_stacks(StackName=stack_name)
    except AwsRequestError as exc:
        if exc.code == "ValidationError":
            return None
        raise
    stack = described["Stacks"][0]
    with aws_errors():
        listed = await cfn.describe_stack_resources(StackName=stack_name)
    resources = tuple(
        StackResource(
            logical_id=r["LogicalResourceId"],
            type=r.get("ResourceType", ""),
            physical_id=r.get("PhysicalResourceId") or None,
            status=r.get("ResourceStatus", ""),
        )
        for r in listed["StackResources"]
        if r.get("LogicalResourceId")
    )
    return DeployedStack(
        name=stack_name,
        stack_id=stack["StackId"],
        status=stack["StackStatus"],
        outputs={o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        parameters={p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])},
        resources=resources,
    )


async def gather_facts(aws: AwsClients, template: Template, stack: DeployedStack) -> StackFacts:
    """Physical ids plus the attributes that cannot be derived from them (table stream
    ARNs), one request per table with a stream."""
    physical = stack.physical_ids()
    attributes: dict[str, str] = {}
    resources: dict[str, Any] = template["Resources"]
    streamed = [
        logical
        for logical, resource in resources.items()
        if resource.get("Type") == "AWS::DynamoDB::Table"
        and logical in physical
        and resource.get("Properties", {}).get("StreamSpecification")
    ]
    dynamodb = await aws.client("dynamodb")

    async def stream_arn(logical: str) -> None:
        with aws_errors():
            table = (await dynamodb.describe_table(TableName=physical[logical]))["Table"]
        if table.get("LatestStreamArn"):
            attributes[f"{logical}.StreamArn"] = table["LatestStreamArn"]

    async with anyio.create_task_group() as tg:
        for logical in streamed:
            tg.start_soon(stream_arn, logical)
    return StackFacts.from_stack_id(
        stack.stack_id,
        stack_name=stack.name,
        physical=physical,
        attributes=attributes,
        parameters=stack.parameters,
    )
