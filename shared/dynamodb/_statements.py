"""Conditional writes in batches: PartiQL statements sent with BatchExecuteStatement.

One request carries up to 25 statements; each is a write of one item with its own condition
and its own result (they are not a transaction: each lands or fails alone), billed as a
standard write (1 write unit per KB, not a transaction's 2). So a batch of independent
conditional writes costs one request instead of one per item, at the price of single writes.

    statements = [insert_statement(table, item), update_statement(table, key, ...)]
    results = await execute_statements(client, statements)   # one StatementResult each

The statements are built from attribute values passed as parameters (`?`), never from text
spliced into the statement, so values need no escaping; names are quoted. The request body
is encoded here (`wire_json`) and sent with `AwsClients.send_encoded`, its response decoded
without botocore's shape walk: items come back in the wire form (`from_item` reads it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shared.aws import AwsClients
from shared.dynamodb._codec import AttributeValue, Item, wire_json

__all__ = [
    "MAX_STATEMENTS",
    "MAX_STATEMENT_LENGTH",
    "Statement",
    "StatementResult",
    "execute_statements",
    "insert_statement",
    "update_statement",
]

MAX_STATEMENTS: Final = 25  # BatchExecuteStatement's limit
MAX_STATEMENT_LENGTH: Final = 8192  # characters of one statement's text

# The codes of a statement whose condition was false: an UPDATE's WHERE beyond the key (or
# the item missing), an INSERT's item already there.
_CONDITION_CODES: Final = frozenset({"ConditionalCheckFailed", "DuplicateItem"})


@dataclass(frozen=True, slots=True)
class Statement:
    """One PartiQL statement with its `?` parameters (attribute values, in order).
    `return_item` asks for the item as it was when the condition fails
    (`ReturnValuesOnConditionCheckFailure=ALL_OLD`)."""

    text: str
    parameters: tuple[AttributeValue, ...] = ()
    return_item: bool = False


@dataclass(frozen=True, slots=True)
class StatementResult:
    """What one statement of a batch did: `error` is None when it was applied, else
    DynamoDB's code for it ("ConditionalCheckFailed", "DuplicateItem", "ThrottlingError",
    "TransactionConflict", "ValidationError", ...) with its `message`; `item` is the item as
    it was when its condition failed and it was asked for (wire form)."""

    error: str | None = None
    message: str | None = None
    item: Item | None = None

    @property
    def applied(self) -> bool:
        return self.error is None

    @property
    def condition_failed(self) -> bool:
        """The item was not as the statement required (nothing written)."""
        return self.error in _CONDITION_CODES


def _name(name: str) -> str:
    """A quoted PartiQL identifier. Names with quote characters are refused rather than
    escaped: how DynamoDB reads an escaped quote inside a name is not something this
    project has verified."""
    if '"' in name or "'" in name or not name:
        raise ValueError(f"attribute or table name {name!r} cannot be written in a statement")
    return f'"{name}"'


def _checked(text: str, parameters: list[AttributeValue], return_item: bool) -> Statement:
    if len(text) > MAX_STATEMENT_LENGTH:
        raise ValueError(f"a statement of {len(text)} characters is over DynamoDB's "
                         f"{MAX_STATEMENT_LENGTH}")
    return Statement(text, tuple(parameters), return_item)


def insert_statement(table: str, item: Mapping[str, AttributeValue]) -> Statement:
    """`INSERT INTO "table" VALUE {'a': ?, ...}`: writes `item` unless an item with its key
    exists (then the statement fails with "DuplicateItem", and nothing is written).

    Raises:
        ValueError: a name with a quote character, or a statement over 8,192 characters.
    """
    names = [f"'{_name(name)[1:-1]}': ?" for name in item]
    text = f"INSERT INTO {_name(table)} VALUE {{{', '.join(names)}}}"
    return _checked(text, list(item.values()), False)


def update_statement(
    table: str,
    key: Mapping[str, AttributeValue],
    *,
    set_values: Mapping[str, AttributeValue],
    remove: Iterable[str] = (),
    conditions: Mapping[str, AttributeValue] | None = None,
    return_item: bool = False,
) -> Statement:
    """`UPDATE "table" SET "a" = ? ... REMOVE "b" ... WHERE <key> AND "c" = ? ...`: changes
    the item at `key` when it exists and every attribute in `conditions` equals the value
    given (else "ConditionalCheckFailed", nothing written).

    Raises:
        ValueError: nothing to set or remove, a name with a quote character, or a statement
            over 8,192 characters.
    """
    removed = [name for name in remove if name not in set_values]
    if not set_values and not removed:
        raise ValueError("an UPDATE needs at least one attribute to set or remove")
    parts = [f"UPDATE {_name(table)}"]
    parameters: list[AttributeValue] = []
    for name, value in set_values.items():
        parts.append(f"SET {_name(name)} = ?")
        parameters.append(value)
    parts.extend(f"REMOVE {_name(name)}" for name in removed)
    where: list[str] = []
    for name, value in (*key.items(), *(conditions or {}).items()):
        where.append(f"{_name(name)} = ?")
        parameters.append(value)
    parts.append("WHERE " + " AND ".join(where))
    return _checked(" ".join(parts), parameters, return_item)


def _request(statement: Statement) -> dict[str, Any]:
    request: dict[str, Any] = {"Statement": statement.text}
    if statement.parameters:
        request["Parameters"] = list(statement.parameters)
    if statement.return_item:
        request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    return request


def _result(response: Mapping[str, Any]) -> StatementResult:
    error = response.get("Error")
    if not error:
        return StatementResult()
    return StatementResult(error=str(error.get("Code") or "Unknown"),
                           message=error.get("Message"), item=error.get("Item") or None)


async def execute_statements(
    aws: AwsClients, statements: Sequence[Statement]
) -> list[StatementResult]:
    """Send `statements` (at most 25) in one BatchExecuteStatement; one result per
    statement, in order. A statement that failed wrote nothing; the others are written.

    Raises:
        ValueError: no statements, or more than 25 (nothing sent).
        AwsUnavailableError, AwsRequestError: the request as a whole failed (translated).
    """
    if not statements:
        raise ValueError("statements must not be empty")
    if len(statements) > MAX_STATEMENTS:
        raise ValueError(f"at most {MAX_STATEMENTS} statements per request, "
                         f"got {len(statements)}")
    body = wire_json({"Statements": [_request(s) for s in statements]})
    response = await aws.send_encoded("dynamodb", "BatchExecuteStatement", body, decoded=True)
    answers = response.get("Responses") or []
    if len(answers) != len(statements):
        # Not what DynamoDB answers; count every statement as failed rather than guess.
        return [StatementResult(error="MissingResponse",
                                message=f"{len(answers)} responses for {len(statements)}")
                for _ in statements]
    return [_result(answer) for answer in answers]
