"""The aggregate item's write, in one place: every writer of an outbox item goes through here.

    <key attributes>      as the table defines them
    <state attributes>    the domain state
    version    N          the version read + 1; the write is conditional on the version read
                          (or, for version 0, on the item not existing)
    event_seq  N          the sequence number of the aggregate's last event
    outbox     L of S     the envelopes (JSON) THIS write adds; absent when it adds none, so
                          the item never grows and the table's stream is the outbox
    inbox      L of S     the ids of the last events applied here (in-item inbox), if any

`aggregate_from_item` reads it back. `build_write` / `write_statement` turn a unit of work's
`StagedWrite` into the requests; the inbox table's records (`InboxMode.TABLE`) come from
`shared.inbox.inbox_put`.

An `ItemWrite` holds one write in attribute values, so a caller that has them already (the
devices store encodes its state once, by hand, at thousands of writes a second) and the unit
of work's generic `build_write` produce the same request. Two forms of the same write:

- `item_put`: a conditional Put (PutItem, or a TransactWriteItems operation): the whole item;
- `item_statement`: one PartiQL statement for BatchExecuteStatement (`shared.dynamodb`):
  INSERT for a new item; for an existing one an UPDATE that sets every attribute of the
  item and removes the state attributes it had that the new state drops (and `outbox` /
  `inbox` when this write has none), so the stored item is the one the Put would store.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.dynamodb import (
    AttributeValue,
    Item,
    Statement,
    from_item,
    insert_statement,
    to_attr,
    to_item,
    update_statement,
)
from shared.inbox import InboxMode, inbox_put, remember
from shared.outbox._errors import OutboxError
from shared.outbox._model import Aggregate, ItemRef, OutboxConfig, StagedWrite

__all__ = [
    "ItemWrite",
    "aggregate_from_item",
    "build_write",
    "item_put",
    "item_statement",
    "key_of",
    "write_operations",
    "write_statement",
]


@dataclass(frozen=True, slots=True)
class ItemWrite:
    """One write of one aggregate item, in attribute values (see the module docstring).

    `version` is the version read (0: the item does not exist), `event_seq` the aggregate's
    last event sequence after this write, `envelopes` the JSON texts of the events it adds,
    `inbox` the in-item inbox ids after it (empty: no inbox attribute), `previous` the names
    of the state attributes the item had when read (an UPDATE removes those `state` drops)."""

    table: str
    key: Mapping[str, AttributeValue]
    state: Mapping[str, AttributeValue]
    version: int
    event_seq: int
    envelopes: Sequence[str] = ()
    inbox: Sequence[str] = ()
    previous: Collection[str] = ()


def _bookkeeping(write: ItemWrite, config: OutboxConfig) -> dict[str, AttributeValue]:
    values: dict[str, AttributeValue] = {
        config.version_attribute: {"N": str(write.version + 1)},
        config.sequence_attribute: {"N": str(write.event_seq)},
    }
    if write.envelopes:
        values[config.outbox_attribute] = {"L": [{"S": text} for text in write.envelopes]}
    if write.inbox:
        values[config.inbox.attribute] = {"L": [{"S": i} for i in write.inbox]}
    return values


def item_put(write: ItemWrite, config: OutboxConfig, *, return_old: bool = False
             ) -> dict[str, Any]:
    """The conditional Put of `write`: `{"TableName", "Item", "ConditionExpression", ...}`
    (a PutItem's parameters, or a TransactWriteItems `Put`). `return_old` asks for the item
    as it is when the condition fails (in a transaction: in its cancellation reasons)."""
    item: dict[str, AttributeValue] = {**write.key, **write.state}
    item.update(_bookkeeping(write, config))
    put: dict[str, Any] = {"TableName": write.table, "Item": item}
    if write.version > 0:
        put["ConditionExpression"] = "#v = :v"
        put["ExpressionAttributeNames"] = {"#v": config.version_attribute}
        put["ExpressionAttributeValues"] = {":v": {"N": str(write.version)}}
    else:
        put["ConditionExpression"] = "attribute_not_exists(#k)"
        put["ExpressionAttributeNames"] = {"#k": next(iter(write.key))}
    if return_old:
        put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    return put


def item_statement(write: ItemWrite, config: OutboxConfig) -> Statement | None:
    """`write` as one PartiQL statement (see the module docstring), asking for the item as it
    was when the condition fails; None when it cannot be one (a name with a quote character,
    a statement over DynamoDB's 8,192 characters): send that write as `item_put` instead."""
    bookkeeping = _bookkeeping(write, config)
    try:
        if write.version == 0:
            return insert_statement(write.table, {**write.key, **write.state, **bookkeeping})
        dropped = [name for name in write.previous if name not in write.state]
        for name in (config.outbox_attribute, config.inbox.attribute):
            if name not in bookkeeping:
                dropped.append(name)
        return update_statement(
            write.table, write.key, set_values={**write.state, **bookkeeping},
            remove=dropped,
            conditions={config.version_attribute: {"N": str(write.version)}},
            return_item=True,
        )
    except ValueError:
        return None


# ---------------------------------------------------------------- a unit of work's writes


def aggregate_from_item(
    ref: ItemRef, item: Mapping[str, Mapping[str, Any]] | None, config: OutboxConfig
) -> Aggregate:
    """The Aggregate for a raw DynamoDB item, in botocore's or the wire form (None: not
    there): its state is every attribute but the key and the bookkeeping."""
    if not item:
        return Aggregate(ref=ref, state={})
    values = from_item(item)
    version = int(values.pop(config.version_attribute, 0) or 0)
    last_sequence = int(values.pop(config.sequence_attribute, 0) or 0)
    values.pop(config.outbox_attribute, None)
    processed = values.pop(config.inbox.attribute, None) or []
    for name in ref.key:
        values.pop(name, None)
    return Aggregate(
        ref=ref, state=values, version=version, last_sequence=last_sequence,
        processed=tuple(str(p) for p in processed),
    )


def key_of(ref: ItemRef) -> Item:
    return to_item(ref.key)


def write_operations(write: StagedWrite, config: OutboxConfig) -> int:
    """How many transaction operations this write takes (1, plus one per inbox record)."""
    if config.inbox.mode is InboxMode.TABLE:
        return 1 + len(write.processed_ids)
    return 1


def _item_write(write: StagedWrite, config: OutboxConfig) -> ItemWrite:
    """Raises OutboxError for a reserved or key attribute in the state, or a value DynamoDB
    cannot store (naming the attribute)."""
    aggregate = write.aggregate
    state: dict[str, AttributeValue] = {}
    reserved = config.reserved
    for name, value in write.state.items():
        if name in reserved:
            raise OutboxError(f"state attribute {name!r} is reserved for the unit of work")
        if name in aggregate.ref.key:
            raise OutboxError(f"state attribute {name!r} is part of the key; it cannot change")
        try:
            state[name] = to_attr(value)
        except (TypeError, ValueError) as exc:
            raise OutboxError(f"state attribute {name!r}: {exc}") from None
    try:
        key = key_of(aggregate.ref)
    except (TypeError, ValueError) as exc:
        raise OutboxError(f"key of {aggregate.ref.table}: {exc}") from None
    inbox = config.inbox
    ids: Sequence[str] = ()
    if inbox.mode is InboxMode.IN_ITEM:
        ids = remember(aggregate.processed, write.processed_ids, inbox.window)
    return ItemWrite(
        table=aggregate.ref.table, key=key, state=state, version=aggregate.version,
        event_seq=aggregate.last_sequence + len(write.envelopes),
        envelopes=[e.to_json() for e in write.envelopes], inbox=ids,
        previous=tuple(aggregate.state),
    )


def build_write(write: StagedWrite, config: OutboxConfig, *, now: float) -> list[dict[str, Any]]:
    """TransactWriteItems entries for one staged write: the aggregate `Put` first (conditional
    on the version read), then the inbox-table `Put`s when the inbox is a table.

    Raises OutboxError when the state uses a reserved or key attribute name, or a value
    DynamoDB cannot store (the message names the attribute)."""
    entries = [item_put(_item_write(write, config), config)]
    if config.inbox.mode is InboxMode.TABLE:
        entries.extend(inbox_put(config.inbox, event_id, now=now)
                       for event_id in write.processed_ids)
    return entries


def write_statement(write: StagedWrite, config: OutboxConfig) -> Statement | None:
    """The staged write as one PartiQL statement (`item_statement`); None when it cannot be
    one: it needs inbox-table records (a transaction), or `item_statement` says so.

    Raises OutboxError as `build_write`."""
    if write_operations(write, config) != 1:
        return None
    return item_statement(_item_write(write, config), config)
