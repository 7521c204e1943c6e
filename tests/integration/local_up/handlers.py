"""Lambda handlers for the `fleetline up` test stack (run unchanged by the local hosts)."""

from __future__ import annotations

import json
import os
from typing import Any


def api(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Echo what API Gateway delivered, to check the event the local server builds."""
    return {
        "statusCode": 201,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({
            "route": event["routeKey"],
            "name": event.get("pathParameters", {}).get("name"),
            "query": event.get("queryStringParameters", {}),
            "body": event.get("body"),
            "function": context.function_name,
            "queue": os.environ.get("FLEETLINE_WORK_QUEUE"),
        }),
    }


def work(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Accept every record (the consumer deletes them)."""
    del context
    return {"batchItemFailures": []}
