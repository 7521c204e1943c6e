"""Thin DynamoDB helpers for the orders services: typed values in and out (the project's
codec, `shared.dynamodb`), SDK errors translated (`shared.aws.aws_errors`): a failed
condition is `shared.errors.ConditionFailedError`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.aws import AwsClient, aws_errors
from shared.dynamodb import from_item, to_item
from shared.errors import ConditionFailedError

__all__ = ["get", "old_item", "put_if_absent", "set_status_if"]

def old_item(exc: ConditionFailedError) -> dict[str, Any] | None:
    """The item a failed condition returned, as plain values (None: not asked for, or
    no item)."""
    return from_item(exc.item) if exc.item else None


async def get(ddb: AwsClient, table: str, pk: str, sk: str) -> dict[str, Any] | None:
    """A strongly consistent read of one item, or None."""
    with aws_errors():
        answer = await ddb.get_item(
            TableName=table, Key=to_item({"pk": pk, "sk": sk}), ConsistentRead=True
        )
    item = answer.get("Item")
    return from_item(item) if item else None


async def set_status_if(
    ddb: AwsClient, table: str, pk: str, sk: str, *, expect: str, to: str,
    also_set: Mapping[str, str] | None = None,
) -> bool:
    """Move the item's `status` from `expect` to `to` (and set `also_set` attributes from
    value placeholders, e.g. {"released_from": ":from"}) in one conditional UpdateItem.
    Returns False when the status was not `expect`: another worker moved it first.

    Raises:
        AwsRequestError / AwsUnavailableError: any other failure (translated).
    """
    assignments = ["#s = :to", *(f"{name} = {value}" for name, value in (also_set or {}).items())]
    try:
        with aws_errors():
            await ddb.update_item(
                TableName=table,
                Key=to_item({"pk": pk, "sk": sk}),
                UpdateExpression="SET " + ", ".join(assignments),
                ConditionExpression="#s = :from",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=to_item({":to": to, ":from": expect}),
            )
    except ConditionFailedError:
        return False
    return True


async def put_if_absent(ddb: AwsClient, table: str, values: Mapping[str, Any]) -> None:
    """Put the item unless one with its key exists.

    Raises:
        ConditionFailedError: the item exists; `old_item(exc)` is it.
    """
    with aws_errors():
        await ddb.put_item(
            TableName=table,
            Item=to_item(values),
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
