"""The shard lease table in DynamoDB: thin, conditional reads and writes, no decisions.

Item (partition key `lease_key`, type S):

    lease_key      "<application>#<shard id>"  (one table can serve several consumers)
    application    the consumer's application name
    shard_id       the shard
    owner          worker id; absent when nobody holds the lease
    counter        N, the fencing token: incremented on every change of owner
    expires_at     N, epoch ms on the owner's clock (now + lease duration) at its last renewal
    checkpoint     S, the last processed sequence number, or SHARD_END; absent before the first
    parent_shard_ids  L of S
    handoff_to     worker id that asked the owner to hand the lease over (graceful steal)
    handoff_at     N, epoch ms of that request

Every write an owner makes is conditional on `owner = me AND counter = c`; takes and steals
are conditional on the counter and expiry the taker read (the lease is unchanged since the
snapshot its decision was made from). A failed condition raises `LeaseLostError` (owner
writes) or returns None (takes): never a silent overwrite.

A write may meet its own first attempt (its answer was lost and the SDK sent it again): every
write asks for the item as it was when the condition failed, and counts as done when that
item is exactly what the write leaves behind (a take: our owner, counter and expiry; a
release: no owner, the counter read, expired; a hand-off request: ours; a delete: gone).
Renewals and checkpoints keep their own condition true, so their retries simply apply again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shared.aws import AwsClients, aws_errors
from shared.consumers.streams._lease_decisions import SHARD_END, Lease
from shared.errors import ConditionFailedError, FleetlineError, PermanentError

__all__ = ["LeaseError", "LeaseLostError", "LeaseTable", "create_lease_table"]


class LeaseError(FleetlineError):
    """Base of lease table errors."""


class LeaseLostError(LeaseError, PermanentError):
    """This worker no longer owns the lease (another worker took it, or it was released):
    stop processing the shard; its next owner resumes from the last checkpoint."""

    def __init__(self, shard_id: str) -> None:
        super().__init__(f"lease on shard {shard_id} was lost to another worker")
        self.shard_id = shard_id


def _lease_from_item(item: dict[str, Any]) -> Lease:
    parents = tuple(value["S"] for value in item.get("parent_shard_ids", {}).get("L", []))
    return Lease(
        key=item["lease_key"]["S"],
        shard_id=item["shard_id"]["S"],
        owner=item["owner"]["S"] if "owner" in item else None,
        counter=int(item.get("counter", {"N": "0"})["N"]),
        expires_at_ms=int(item.get("expires_at", {"N": "0"})["N"]),
        checkpoint=item["checkpoint"]["S"] if "checkpoint" in item else None,
        parent_shard_ids=parents,
        handoff_to=item["handoff_to"]["S"] if "handoff_to" in item else None,
        handoff_at_ms=int(item.get("handoff_at", {"N": "0"})["N"]),
    )


async def create_lease_table(aws: AwsClients, table_name: str) -> None:
    """Create an on-demand lease table (`lease_key` S) and wait until it is active. For tests
    and local setups; in the stack the table is `LeasesTable`. An existing table is kept."""
    ddb = await aws.client("dynamodb")
    try:
        with aws_errors():
            await ddb.create_table(
                TableName=table_name,
                KeySchema=[{"AttributeName": "lease_key", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "lease_key", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
    except FleetlineError as exc:
        if getattr(exc, "code", None) != "ResourceInUseException":
            raise
    waiter = ddb.get_waiter("table_exists")
    with aws_errors():
        await waiter.wait(TableName=table_name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})


class LeaseTable:
    """Access to the leases of one application in one table."""

    def __init__(self, aws: AwsClients, table_name: str, application: str) -> None:
        if not table_name:
            raise ValueError("table_name must not be empty")
        if not application or "#" in application:
            raise ValueError(f"application must be non-empty and contain no '#': {application!r}")
        self._aws = aws
        self.table_name = table_name
        self.application = application

    def key(self, shard_id: str) -> str:
        return f"{self.application}#{shard_id}"

    async def list(self) -> list[Lease]:
        """Every lease of this application (consistent read, all pages)."""
        ddb = await self._aws.client("dynamodb")
        leases: list[Lease] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "ConsistentRead": True,
            "FilterExpression": "begins_with(lease_key, :prefix)",
            "ExpressionAttributeValues": {":prefix": {"S": f"{self.application}#"}},
        }
        while True:
            with aws_errors():
                page = await ddb.scan(**kwargs)
            leases.extend(_lease_from_item(item) for item in page.get("Items", []))
            last = page.get("LastEvaluatedKey")
            if not last:
                return leases
            kwargs["ExclusiveStartKey"] = last

    async def create_missing(
        self, shards: Iterable[tuple[str, Sequence[str]]], existing: Iterable[str]
    ) -> int:
        """Create a free lease for every (shard id, parent ids) not in `existing` (shard ids),
        in the order given (parents first). A lease another worker created meanwhile is kept.
        Returns how many were created."""
        ddb = await self._aws.client("dynamodb")
        have = set(existing)
        created = 0
        for shard_id, parents in shards:
            if shard_id in have:
                continue
            try:
                with aws_errors():
                    await ddb.put_item(
                        TableName=self.table_name,
                        Item={
                            "lease_key": {"S": self.key(shard_id)},
                            "application": {"S": self.application},
                            "shard_id": {"S": shard_id},
                            "counter": {"N": "0"},
                            "expires_at": {"N": "0"},
                            "parent_shard_ids": {"L": [{"S": p} for p in parents]},
                        },
                        ConditionExpression="attribute_not_exists(lease_key)",
                    )
                created += 1
            except ConditionFailedError:
                continue
        return created

    async def take(self, lease: Lease, *, owner: str, expires_at_ms: int) -> Lease | None:
        """Become the owner of `lease` if it is unchanged since it was read (same counter and
        expiry); increments the counter. Returns the new lease, or None when another worker
        changed it first."""
        ddb = await self._aws.client("dynamodb")
        try:
            with aws_errors():
                response = await ddb.update_item(
                    TableName=self.table_name,
                    Key={"lease_key": {"S": lease.key}},
                    UpdateExpression=(
                        "SET #owner = :me, #counter = :next, expires_at = :exp"
                        " REMOVE handoff_to, handoff_at"
                    ),
                    ConditionExpression="#counter = :seen AND expires_at = :seen_exp",
                    ExpressionAttributeNames={"#owner": "owner", "#counter": "counter"},
                    ExpressionAttributeValues={
                        ":me": {"S": owner},
                        ":next": {"N": str(lease.counter + 1)},
                        ":exp": {"N": str(expires_at_ms)},
                        ":seen": {"N": str(lease.counter)},
                        ":seen_exp": {"N": str(lease.expires_at_ms)},
                    },
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailedError as exc:
            if exc.item and "lease_key" in exc.item:
                now = _lease_from_item(dict(exc.item))
                if (now.owner, now.counter, now.expires_at_ms) == (
                        owner, lease.counter + 1, expires_at_ms):
                    return now  # our own take, its answer lost
            return None
        return _lease_from_item(response["Attributes"])

    async def renew(self, lease: Lease, *, expires_at_ms: int) -> Lease:
        """Move the expiry of a lease this worker owns; returns the lease as stored (a
        `handoff_to` in it asks this worker to hand the lease over).

        Raises:
            LeaseLostError: the lease has another owner or counter now.
        """
        return await self._owner_update(
            lease, "SET expires_at = :exp", {":exp": {"N": str(expires_at_ms)}}
        )

    async def checkpoint(self, lease: Lease, sequence: str, *, expires_at_ms: int) -> Lease:
        """Record `sequence` (or SHARD_END) as processed; renews the lease in the same write.
        Returns the lease as stored (see `renew`).

        Raises:
            LeaseLostError: the lease has another owner or counter now (fencing).
        """
        return await self._owner_update(
            lease,
            "SET checkpoint = :cp, expires_at = :exp",
            {":cp": {"S": sequence}, ":exp": {"N": str(expires_at_ms)}},
        )

    async def release(
        self, lease: Lease, *, checkpoint: str | None, keep_handoff: bool = False
    ) -> None:
        """Hand the lease back (no owner, expired now) with a final checkpoint, so another
        worker can take it at once. `keep_handoff` leaves a hand-off request in place: the
        free lease stays reserved for the worker that asked for it.

        Raises:
            LeaseLostError: the lease has another owner or counter now.
        """
        expression = "SET expires_at = :zero"
        values: dict[str, dict[str, str]] = {":zero": {"N": "0"}}
        if checkpoint is not None:
            expression += ", checkpoint = :cp"
            values[":cp"] = {"S": checkpoint}
        expression += " REMOVE #owner" if keep_handoff else " REMOVE #owner, handoff_to, handoff_at"

        def released(now: Lease) -> bool:
            return (now.owner is None and now.counter == lease.counter and now.expires_at_ms == 0
                    and (checkpoint is None or now.checkpoint == checkpoint))

        await self._owner_update(lease, expression, values, done=released)

    async def delete_finished(self, lease: Lease) -> bool:
        """Delete the lease of a drained shard (checkpoint SHARD_END) that has left the
        stream. False when it is not finished after all (condition failed)."""
        ddb = await self._aws.client("dynamodb")
        try:
            with aws_errors():
                await ddb.delete_item(
                    TableName=self.table_name,
                    Key={"lease_key": {"S": lease.key}},
                    ConditionExpression="checkpoint = :end",
                    ExpressionAttributeValues={":end": {"S": SHARD_END}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailedError as exc:
            return not exc.item  # gone: our own delete, its answer lost
        return True

    async def delete_all(self) -> None:
        """Delete every lease of this application (to restart from the initial position)."""
        ddb = await self._aws.client("dynamodb")
        for lease in await self.list():
            with aws_errors():
                await ddb.delete_item(
                    TableName=self.table_name, Key={"lease_key": {"S": lease.key}}
                )

    async def request_handoff(self, lease: Lease, *, to: str, now_ms: int) -> bool:
        """Ask the owner of `lease` to hand it over to worker `to` (it finishes its batch,
        checkpoints and releases). True when the request was recorded; False when the lease
        changed since it was read or another request is pending."""
        ddb = await self._aws.client("dynamodb")
        try:
            with aws_errors():
                await ddb.update_item(
                    TableName=self.table_name,
                    Key={"lease_key": {"S": lease.key}},
                    UpdateExpression="SET handoff_to = :to, handoff_at = :now",
                    ConditionExpression=(
                        "#counter = :seen AND #owner = :owner AND attribute_not_exists(handoff_to)"
                    ),
                    ExpressionAttributeNames={"#owner": "owner", "#counter": "counter"},
                    ExpressionAttributeValues={
                        ":to": {"S": to},
                        ":now": {"N": str(now_ms)},
                        ":seen": {"N": str(lease.counter)},
                        ":owner": {"S": lease.owner or ""},
                    },
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailedError as exc:
            if exc.item and "lease_key" in exc.item:
                now = _lease_from_item(dict(exc.item))
                return (now.handoff_to, now.handoff_at_ms) == (to, now_ms)  # ours, answer lost
            return False
        return True

    async def _owner_update(
        self, lease: Lease, expression: str, values: dict[str, dict[str, str]],
        *, done: Callable[[Lease], bool] | None = None,
    ) -> Lease:
        """`expression` on `lease`, conditional on this owner and counter. `done` tells from
        the item as it is whether a failed condition met this write's own first attempt."""
        ddb = await self._aws.client("dynamodb")
        if lease.owner is None:
            raise LeaseLostError(lease.shard_id)
        try:
            with aws_errors():
                response = await ddb.update_item(
                    TableName=self.table_name,
                    Key={"lease_key": {"S": lease.key}},
                    UpdateExpression=expression,
                    ConditionExpression="#owner = :me AND #counter = :counter",
                    ExpressionAttributeNames={"#owner": "owner", "#counter": "counter"},
                    ExpressionAttributeValues={
                        **values,
                        ":me": {"S": lease.owner},
                        ":counter": {"N": str(lease.counter)},
                    },
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailedError as exc:
            if done is not None and exc.item and "lease_key" in exc.item:
                now = _lease_from_item(dict(exc.item))
                if done(now):
                    return now
            raise LeaseLostError(lease.shard_id) from exc
        return _lease_from_item(response["Attributes"])
