"""Counting the state transitions of an execution and of its map runs' children.

A Distributed Map state bills, on AWS, one transition in its own execution and every
transition of its child executions (STANDARD; EXPRESS ones are billed by duration). Locally
the rewritten Map state is a task whose TaskScheduled event in the parent's history carries
the map-run request; its children are the processor's executions named after the run.
"""

from __future__ import annotations

import json
from typing import Any

from shared.aws import AwsClients, aws_errors
from shared.errors import InvalidMessageError
from shared.local._distributed_map._definition import MAP_RUN_REQUEST
from shared.local._distributed_map._request import MapRunRequest
from shared.local._distributed_map._runner import executions

__all__ = ["state_transitions"]


async def state_transitions(aws: AwsClients, execution_arn: str) -> int:
    """The state transitions of an execution, counting those of the child executions of
    every Distributed Map state it ran (recursively): the states entered, as in its
    history. A benchmark reports this as what AWS would bill a STANDARD workflow (EXPRESS
    children are billed by duration instead, but are counted here too).

    Raises AwsRequestError when the execution does not exist.
    """
    sfn = await aws.client("stepfunctions")
    events: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        with aws_errors():
            page = await sfn.get_execution_history(
                executionArn=execution_arn, maxResults=1000,
                **({"nextToken": token} if token else {}))
        events.extend(page.get("events", []))
        token = page.get("nextToken")
        if not token:
            break
    count = sum(1 for e in events if str(e.get("type", "")).endswith("StateEntered"))
    for event in events:
        if event.get("type") != "TaskScheduled":
            continue
        request = _request_of(event.get("taskScheduledEventDetails", {}))
        if request is None:
            continue
        prefix = f"{request.map_run_id}-"
        async for child in executions(aws, request.processor_arn):
            if str(child["name"]).startswith(prefix):
                count += await state_transitions(aws, str(child["executionArn"]))
    return count


def _request_of(details: dict[str, Any]) -> MapRunRequest | None:
    try:
        body = json.loads(details.get("parameters", "{}")).get("MessageBody")
    except (ValueError, AttributeError):
        return None
    if not isinstance(body, dict) or body.get("Kind") != MAP_RUN_REQUEST:
        return None
    try:
        return MapRunRequest.from_body(json.dumps(body))
    except InvalidMessageError:
        return None
