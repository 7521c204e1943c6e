"""A deployed stack's resources as the operations tools need them (thin AWS calls)."""

from __future__ import annotations

from shared.aws import AwsClients, aws_errors
from shared.errors import AwsRequestError, FleetlineError

__all__ = ["stack_physical_ids", "stack_queues"]


async def stack_physical_ids(aws: AwsClients, stack_name: str) -> dict[str, tuple[str, str]]:
    """Logical id -> (resource type, physical id) of every resource the stack created.

    Raises:
        FleetlineError: no stack of that name at this endpoint.
    """
    cloudformation = await aws.client("cloudformation")
    try:
        with aws_errors():
            listed = await cloudformation.describe_stack_resources(StackName=stack_name)
    except AwsRequestError as exc:
        if exc.code == "ValidationError":
            raise FleetlineError(f"no stack {stack_name} at this endpoint: run `fleetline up`"
                                 ) from None
        raise
    return {r["LogicalResourceId"]: (r.get("ResourceType", ""), r["PhysicalResourceId"])
            for r in listed["StackResources"]
            if r.get("LogicalResourceId") and r.get("PhysicalResourceId")}


async def stack_queues(aws: AwsClients, stack_name: str) -> dict[str, str]:
    """Every queue of the stack: logical id -> its URL at this endpoint (the physical id
    names the queue; the emulator's carry AWS's host name, so the URL is asked for)."""
    sqs = await aws.client("sqs")
    queues: dict[str, str] = {}
    for logical, (kind, physical) in (await stack_physical_ids(aws, stack_name)).items():
        if kind == "AWS::SQS::Queue":
            with aws_errors():
                queues[logical] = (await sqs.get_queue_url(
                    QueueName=physical.rstrip("/").rsplit("/", 1)[-1]))["QueueUrl"]
    return queues
