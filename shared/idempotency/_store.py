"""The DynamoDB side of idempotency: four conditional writes, no reads.

A failed acquire returns the existing record (ReturnValuesOnConditionCheckFailure=ALL_OLD),
so judging it needs no GetItem. Renew, complete and release are conditional on the owner
token: a holder whose lease was taken over is fenced out.

Every write may meet its own first attempt: when an answer is lost after the write, the SDK
sends the request again and the retry finds the record the first attempt wrote. Each write
recognises that by the owner token (and, for complete, the result) in the record returned
with the failed condition, and counts it as done: an acquire that finds its own claim holds
it, a complete that finds its own result stored has completed, a release that finds the
record gone has released.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.aws import AwsClients, aws_errors
from shared.errors import ConditionFailedError
from shared.idempotency._config import IdempotencyConfig
from shared.idempotency._state import Record, Status

__all__ = ["IdempotencyStore"]


class IdempotencyStore:
    """Idempotency records in one DynamoDB table (partition key `config.key_attribute`, TTL on
    `config.ttl_attribute`)."""

    def __init__(self, aws: AwsClients, config: IdempotencyConfig) -> None:
        self._aws = aws
        self.config = config

    def _names(self) -> dict[str, str]:
        return {"#k": self.config.key_attribute, "#exp": self.config.ttl_attribute}

    async def acquire(
        self, key: str, *, owner: str, payload_hash: str, now: float
    ) -> Record | None:
        """Write INPROGRESS for `owner` when the key is free, expired, or held by an expired
        lease with the same payload. Returns None on success, else the record that stands."""
        config = self.config
        dynamodb = await self._aws.client("dynamodb")
        item = {
            config.key_attribute: {"S": key},
            "status": {"S": Status.IN_PROGRESS.value},
            "owner": {"S": owner},
            "payload_hash": {"S": payload_hash},
            "lease_until": {"N": repr(now + config.lease)},
            config.ttl_attribute: {"N": str(int(now + config.expires_after))},
        }
        try:
            with aws_errors():
                await dynamodb.put_item(
                    TableName=config.table,
                    Item=item,
                    ConditionExpression=(
                        "attribute_not_exists(#k) OR #exp <= :now OR "
                        "(#st = :inprogress AND lease_until <= :now AND payload_hash = :h)"
                    ),
                    ExpressionAttributeNames={**self._names(), "#st": "status"},
                    ExpressionAttributeValues={
                        ":now": {"N": repr(now)},
                        ":inprogress": {"S": Status.IN_PROGRESS.value},
                        ":h": {"S": payload_hash},
                    },
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailedError as exc:
            existing = exc.item
            if not existing:  # deleted in between: let the caller try again
                return Record(key=key, status=Status.IN_PROGRESS, owner="", payload_hash="",
                              expires_at=0.0)
            record = Record.from_item(existing, key_attribute=config.key_attribute,
                                      ttl_attribute=config.ttl_attribute)
            if record.owner == owner and record.status is Status.IN_PROGRESS:
                return None  # our own claim: a retry of this put met its first attempt
            return record
        return None

    async def _owned_update(self, key: str, owner: str, expression: str,
                            values: dict[str, Any], extra_names: dict[str, str]) -> bool:
        dynamodb = await self._aws.client("dynamodb")
        return await self._if_owned(
            dynamodb.update_item, key, owner, UpdateExpression=expression,
            extra_names=extra_names, extra_values=values,
        )

    async def _if_owned(
        self, call: Any, key: str, owner: str, *, extra_names: dict[str, str] | None = None,
        extra_values: dict[str, Any] | None = None,
        done: Callable[[Mapping[str, Any] | None], bool] = lambda item: False, **params: Any,
    ) -> bool:
        """`call` (UpdateItem or DeleteItem) on `key`, conditional on `owner` holding it
        INPROGRESS. False when the condition fails (no longer ours), unless `done` says the
        item as it stands (None: absent) is this very write's own earlier attempt."""
        try:
            with aws_errors():
                await call(
                    TableName=self.config.table,
                    Key={self.config.key_attribute: {"S": key}},
                    ConditionExpression="#owner = :owner AND #st = :inprogress",
                    ExpressionAttributeNames={"#owner": "owner", "#st": "status",
                                              **(extra_names or {})},
                    ExpressionAttributeValues={
                        ":owner": {"S": owner},
                        ":inprogress": {"S": Status.IN_PROGRESS.value},
                        **(extra_values or {}),
                    },
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    **params,
                )
        except ConditionFailedError as exc:
            return done(exc.item or None)
        return True

    async def renew(self, key: str, *, owner: str, now: float) -> bool:
        """Extend `owner`'s lease. False when the key is no longer ours."""
        return await self._owned_update(
            key, owner, "SET lease_until = :lease",
            {":lease": {"N": repr(now + self.config.lease)}}, {},
        )

    async def complete(self, key: str, *, owner: str, result: str, now: float) -> bool:
        """Store the result as COMPLETED. False when the key is no longer ours (fenced out);
        True when it already holds this owner's COMPLETED result (our own lost answer)."""

        def ours(item: Mapping[str, Any] | None) -> bool:
            return item is not None and item.get("owner", {}).get("S") == owner and (
                item.get("status", {}).get("S") == Status.COMPLETED.value
                and item.get("result", {}).get("S") == result
            )

        dynamodb = await self._aws.client("dynamodb")
        return await self._if_owned(
            dynamodb.update_item, key, owner,
            UpdateExpression=(
                "SET #st = :completed, #result = :result, #exp = :exp REMOVE lease_until"
            ),
            extra_names={"#result": "result", "#exp": self.config.ttl_attribute},
            extra_values={
                ":completed": {"S": Status.COMPLETED.value},
                ":result": {"S": result},
                ":exp": {"N": str(int(now + self.config.expires_after))},
            },
            done=ours,
        )

    async def release(self, key: str, *, owner: str) -> bool:
        """Delete `owner`'s INPROGRESS record after a failed effect, so a retry can run.
        True also when the record is already gone (our own delete, its answer lost)."""
        dynamodb = await self._aws.client("dynamodb")
        return await self._if_owned(dynamodb.delete_item, key, owner,
                                    done=lambda item: item is None)
