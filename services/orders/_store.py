"""Thin DynamoDB helpers for the orders services: typed values in and out, SDK errors
translated (`shared.aws.aws_errors`), conditional-check failures made explicit."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from shared.aws import AwsClient, aws_errors, error_code
from shared.errors import AwsRequestError

__all__ = [
    "ConditionFailed",
    "get",
    "is_condition_failure",
    "plain",
    "put_if_absent",
    "to_attr",
    "to_item",
]


class ConditionFailed(Exception):
    """A conditional write found another state; `existing` holds the item when returned."""

    def __init__(self, existing: dict[str, Any] | None = None) -> None:
        super().__init__("condition failed")
        self.existing = existing


def to_attr(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, Decimal)):
        return {"N": str(value)}
    if isinstance(value, float):
        return {"N": repr(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, Mapping):
        return {"M": {str(k): to_attr(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"L": [to_attr(v) for v in value]}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB")


def to_item(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: to_attr(v) for k, v in values.items()}


def _from_attr(attr: Mapping[str, Any]) -> Any:
    (kind, value), = attr.items()
    if kind == "S":
        return value
    if kind == "N":
        number = Decimal(value)
        return int(number) if number == number.to_integral_value() else float(number)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: _from_attr(v) for k, v in value.items()}
    if kind == "L":
        return [_from_attr(v) for v in value]
    if kind == "SS":
        return set(value)
    return value


def plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """A low-level item as plain Python values."""
    return {k: _from_attr(v) for k, v in item.items()}


def is_condition_failure(exc: BaseException) -> bool:
    return error_code(exc) == "ConditionalCheckFailedException"


async def get(ddb: AwsClient, table: str, pk: str, sk: str) -> dict[str, Any] | None:
    """A strongly consistent read of one item, or None."""
    with aws_errors():
        answer = await ddb.get_item(
            TableName=table, Key=to_item({"pk": pk, "sk": sk}), ConsistentRead=True
        )
    item = answer.get("Item")
    return plain(item) if item else None


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
    except AwsRequestError as exc:
        if exc.code == "ConditionalCheckFailedException":
            return False
        raise
    return True


async def put_if_absent(ddb: AwsClient, table: str, values: Mapping[str, Any]) -> None:
    """Put the item unless one with its key exists.

    Raises:
        ConditionFailed: the item exists; `existing` holds it.
    """
    try:
        with aws_errors():
            await ddb.put_item(
                TableName=table,
                Item=to_item(values),
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
    except AwsRequestError as exc:
        if exc.code == "ConditionalCheckFailedException":
            cause = exc.__cause__
            old = getattr(cause, "response", {}).get("Item") if cause is not None else None
            raise ConditionFailed(plain(old) if old else None) from exc
        raise
