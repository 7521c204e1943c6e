"""Lambda handlers for the `fleetline up` test stack, run unchanged by the local hosts."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

from shared.aws import AwsClients


def api(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Echo what API Gateway delivered, to check the event the local server builds."""
    return {
        "statusCode": 201,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(
            {
                "route": event["routeKey"],
                "name": event.get("pathParameters", {}).get("name"),
                "query": event.get("queryStringParameters", {}),
                "body": event.get("body"),
                "function": context.function_name,
                "queue": os.environ.get("FLEETLINE_WORK_QUEUE"),
            }
        ),
    }


async def _record(bodies: list[str]) -> None:
    async with AwsClients() as aws:
        dynamodb = await aws.client("dynamodb")
        for body in bodies:
            await dynamodb.put_item(
                TableName=os.environ["FLEETLINE_OUTBOX_TABLE"],
                Item={"pk": {"S": f"seen#{body}"}},
            )


def _key(body: str) -> str:
    """An EventBridge event is recorded by its envelope id, anything else by its body."""
    try:
        event = json.loads(body)
    except ValueError:
        return body
    return str(event["detail"]["id"]) if isinstance(event, dict) and "detail" in event else body


def work(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Record each SQS body in the table (so a test can see the mapping ran); a body
    "fail" is reported in batchItemFailures."""
    del context
    records = event["Records"]
    if records and "kinesis" in records[0]:
        data = [base64.b64decode(r["kinesis"]["data"]).decode() for r in records]
        asyncio.run(_record(data))
        return {"batchItemFailures": []}
    asyncio.run(_record([_key(r["body"]) for r in records if r["body"] != "fail"]))
    return {
        "batchItemFailures": [
            {"itemIdentifier": r["messageId"]} for r in records if r["body"] == "fail"
        ]
    }
