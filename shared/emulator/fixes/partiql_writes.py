"""Gap: BatchExecuteStatement runs conditional PartiQL INSERT and UPDATE statements.

moto hands every statement to a general PartiQL parser that fails on what the batch
committer sends (`shared.dynamodb.insert_statement` / `update_statement`): a conditional
`UPDATE ... WHERE "pk" = ? AND "version" = ?` answers HTTP 500 (TypeError on `?`
parameters), an `INSERT ... VALUE {...}` too (AssertionError), and an UPDATE of a missing
item "succeeds" without writing. It also copies every item of every table to JSON for each
statement. Here those two statement shapes run against the table directly, as DynamoDB runs
them, each under the lock every DynamoDB write takes (`locked_writes.LOCK`):

- `INSERT INTO "t" VALUE {'a': ?, ...}`: written unless an item with its key exists (then
  the statement's error is DuplicateItem);
- `UPDATE "t" SET "a" = ? ... REMOVE "b" ... WHERE "k" = ? [AND "c" = ? ...]`: the WHERE
  must name the whole key; the item must exist and every other condition hold, else
  ConditionalCheckFailed (with the item as it was when ReturnValuesOnConditionCheckFailure
  is ALL_OLD); then the attributes are set and removed and the item stored (a MODIFY
  record on the table's stream, as any write).

Each statement answers on its own, in order; any other statement goes to moto's own code,
one at a time. More than 25 statements are refused, as DynamoDB refuses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched
from shared.emulator.fixes import locked_writes

__all__ = ["FIX", "Parsed", "apply", "parse"]

MAX_STATEMENTS = 25

_TOKEN = re.compile(
    r"""\s*(?:"((?:[^"]|"")*)"|'((?:[^']|'')*)'|(\?)|([A-Za-z_][A-Za-z0-9_]*)|([{}:,=]))"""
)
_KEYWORDS = frozenset({"INSERT", "INTO", "VALUE", "UPDATE", "SET", "REMOVE", "WHERE", "AND"})


@dataclass
class Parsed:
    """One statement of the two shapes this fix runs; values are parameter positions."""

    kind: str  # "INSERT" or "UPDATE"
    table: str
    values: dict[str, int] = field(default_factory=dict)  # INSERT's item, UPDATE's SET
    remove: list[str] = field(default_factory=list)
    where: dict[str, int] = field(default_factory=dict)
    parameters: int = 0


def _tokens(text: str) -> list[tuple[str, str]] | None:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            return None
        quoted, string, param, word, punct = match.groups()
        if quoted is not None:
            tokens.append(("name", quoted.replace('""', '"')))
        elif string is not None:
            tokens.append(("string", string.replace("''", "'")))
        elif param is not None:
            tokens.append(("param", "?"))
        elif word is not None:
            upper = word.upper()
            tokens.append(("keyword", upper) if upper in _KEYWORDS else ("name", word))
        else:
            tokens.append(("punct", punct))
        position = match.end()
    return tokens


class _Reader:
    """Walks the tokens of one statement; every method consumes only on a match."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0
        self.parameters = 0

    @property
    def done(self) -> bool:
        return self.position == len(self.tokens)

    def take(self, kind: str, value: str | None = None) -> str | None:
        if self.position < len(self.tokens):
            found_kind, found = self.tokens[self.position]
            if found_kind == kind and (value is None or found == value):
                self.position += 1
                return found
        return None

    def assignments(self, into: dict[str, int], *, name: str, between: tuple[str, str],
                    separator: tuple[str, str]) -> bool:
        """`<name> <between> ?` repeated with `separator`: each name -> its parameter's
        position. False when the text does not follow that shape."""
        while True:
            found = self.take(name)
            if found is None or self.take(*between) is None or self.take("param") is None:
                return False
            into[found] = self.parameters
            self.parameters += 1
            if self.take(*separator) is None:
                return True

    def names(self, into: list[str]) -> bool:
        while True:
            found = self.take("name")
            if found is None:
                return False
            into.append(found)
            if self.take("punct", ",") is None:
                return True


def parse(text: str) -> Parsed | None:
    """The statement, when it is one of the two shapes above; else None (pure)."""
    tokens = _tokens(text)
    if not tokens:
        return None
    read = _Reader(tokens)
    comma = ("punct", ",")
    if read.take("keyword", "INSERT") is not None:
        if read.take("keyword", "INTO") is None or (table := read.take("name")) is None:
            return None
        parsed = Parsed("INSERT", table)
        if (read.take("keyword", "VALUE") is None or read.take("punct", "{") is None
                or not read.assignments(parsed.values, name="string", between=("punct", ":"),
                                        separator=comma)
                or read.take("punct", "}") is None):
            return None
    else:
        if read.take("keyword", "UPDATE") is None or (table := read.take("name")) is None:
            return None
        parsed = Parsed("UPDATE", table)
        while True:
            if read.take("keyword", "SET") is not None:
                if not read.assignments(parsed.values, name="name", between=("punct", "="),
                                        separator=comma):
                    return None
            elif read.take("keyword", "REMOVE") is not None:
                if not read.names(parsed.remove):
                    return None
            else:
                break
        if ((not parsed.values and not parsed.remove) or read.take("keyword", "WHERE") is None
                or not read.assignments(parsed.where, name="name", between=("punct", "="),
                                        separator=("keyword", "AND"))):
            return None
    parsed.parameters = read.parameters
    return parsed if read.done else None


def apply() -> None:
    from moto.dynamodb import exceptions as errors
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType

    original = unpatched(DynamoDBBackend, "batch_execute_statement")
    if original is None:
        return

    def error(code: str, message: str, table: str | None = None,
              item: dict[str, Any] | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = {"Error": {"Code": code, "Message": message}}
        if item is not None:
            answer["Error"]["Item"] = item
        if table is not None:
            answer["TableName"] = table
        return answer

    def run(self: Any, parsed: Parsed, statement: dict[str, Any]) -> dict[str, Any]:
        parameters = statement.get("Parameters") or []
        if len(parameters) != parsed.parameters:
            return error("ValidationError", f"expected {parsed.parameters} parameters, "
                         f"got {len(parameters)}", parsed.table)
        try:
            table = self.get_table(parsed.table)
        except errors.ResourceNotFoundException:
            return error("ResourceNotFound", "Requested resource not found")
        keys = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
        if parsed.kind == "INSERT":
            attrs = {name: parameters[at] for name, at in parsed.values.items()}
            if any(key not in attrs for key in keys):
                return error("ValidationError", "the item must contain every key attribute",
                             table.name)
            with locked_writes.LOCK:
                hash_value, range_value = self.get_keys_value(table, attrs)
                if table.get_item(hash_value, range_value) is not None:
                    return error("DuplicateItem", "Duplicate primary key exists in table",
                                 table.name)
                self.put_item(table.name, attrs)
            return {"TableName": table.name}
        if any(key not in parsed.where for key in keys) or any(
                key in parsed.values or key in parsed.remove for key in keys):
            return error("ValidationError", "Where clause does not contain a mandatory "
                         "equality on all key attributes, or a key attribute is changed",
                         table.name)
        with locked_writes.LOCK:
            key = {name: parameters[parsed.where[name]] for name in keys}
            hash_value, range_value = self.get_keys_value(table, key)
            current = table.get_item(hash_value, range_value)
            if current is None:
                return error("ConditionalCheckFailed", "The conditional request failed",
                             table.name)
            for name, at in parsed.where.items():
                stored = current.attrs.get(name)
                if stored is None or stored != DynamoType(parameters[at]):
                    old = None
                    if statement.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD":
                        old = current.to_json()["Attributes"]
                    return error("ConditionalCheckFailed", "The conditional request failed",
                                 table.name, old)
            attrs = dict(current.to_json()["Attributes"])
            for name in parsed.remove:
                attrs.pop(name, None)
            for name, at in parsed.values.items():
                attrs[name] = parameters[at]
            self.put_item(table.name, attrs)
        return {"TableName": table.name}

    def batch_execute_statement(self: Any, statements: list[dict[str, Any]]
                                ) -> list[dict[str, Any]]:
        if len(statements) > MAX_STATEMENTS:
            raise errors.MockValidationException(
                f"1 validation error detected: Value at 'statements' failed to satisfy "
                f"constraint: Member must have length less than or equal to {MAX_STATEMENTS}")
        responses: list[dict[str, Any]] = []
        for statement in statements:
            parsed = parse(str(statement.get("Statement", "")))
            if parsed is None:
                responses.extend(original(self, [statement]))
                continue
            try:
                responses.append(run(self, parsed, statement))
            except errors.MockValidationException as exc:
                responses.append(error("ValidationError", str(exc.message), parsed.table))
        return responses

    replace(DynamoDBBackend, "batch_execute_statement", batch_execute_statement)


FIX = Fix(
    name="partiql-writes",
    kind=FixKind.GAP,
    summary="BatchExecuteStatement runs conditional INSERT / UPDATE statements (moto: 500)",
    checks=(
        "moto.dynamodb.models:DynamoDBBackend.batch_execute_statement",
        "moto.dynamodb.models:DynamoDBBackend.put_item",
        "moto.dynamodb.models:DynamoDBBackend.get_table",
        "moto.dynamodb.models:DynamoDBBackend.get_keys_value",
        "moto.dynamodb.models.table:Table.get_item",
        "moto.dynamodb.models.dynamo_type:DynamoType.__eq__",
        "moto.dynamodb.models.dynamo_type:Item.to_json",
        "moto.dynamodb.responses:DynamoHandler.batch_execute_statement",
    ),
    verified={"5.2.5": "22a7036c61535158", "5.2.6": "22a7036c61535158"},
    apply=apply,
)
