"""PartiQL statements for batched conditional writes, the outbox item in both of its write
forms, and the emulator's reading of those statements: pure, no I/O."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from shared.dynamodb import (
    StatementResult,
    insert_statement,
    update_statement,
)
from shared.emulator.fixes.partiql_writes import parse
from shared.events import EventRegistry, event_type
from shared.inbox import InboxConfig, InboxMode
from shared.outbox import (
    Aggregate,
    ItemRef,
    ItemWrite,
    OutboxConfig,
    StagedWrite,
    item_put,
    item_statement,
    stage,
)
from shared.outbox._item import write_statement
from shared.outbox._unit_of_work import statement_verdicts

EVENTS = EventRegistry()


@event_type("ThingCounted", source="fleetline.unit", registry=EVENTS)
class ThingCounted(BaseModel):
    n: int


def test_insert_names_every_attribute_and_passes_values_as_parameters() -> None:
    statement = insert_statement("things", {"pk": {"S": "a"}, "n": {"N": "1"}})
    assert statement.text == """INSERT INTO "things" VALUE {'pk': ?, 'n': ?}"""
    assert statement.parameters == ({"S": "a"}, {"N": "1"})
    assert not statement.return_item


def test_update_sets_removes_and_is_conditional_on_key_and_conditions() -> None:
    statement = update_statement(
        "things", {"pk": {"S": "a"}}, set_values={"n": {"N": "2"}, "version": {"N": "5"}},
        remove=["old", "n"], conditions={"version": {"N": "4"}}, return_item=True)
    assert statement.text == ('UPDATE "things" SET "n" = ? SET "version" = ? REMOVE "old" '
                              'WHERE "pk" = ? AND "version" = ?')
    assert statement.parameters == ({"N": "2"}, {"N": "5"}, {"S": "a"}, {"N": "4"})
    assert statement.return_item


@pytest.mark.parametrize("name", ['we"ird', "it's", ""])
def test_names_with_quotes_are_refused_not_escaped(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be written in a statement"):
        insert_statement("t", {"pk": {"S": "a"}, name: {"N": "1"}})


def test_a_statement_over_dynamodbs_length_is_refused() -> None:
    with pytest.raises(ValueError, match="8192"):
        insert_statement("t", {f"attribute_{i:04d}": {"N": "1"} for i in range(800)})
    with pytest.raises(ValueError, match="at least one attribute"):
        update_statement("t", {"pk": {"S": "a"}}, set_values={})


def test_statement_results_say_applied_or_condition_failed() -> None:
    assert StatementResult().applied
    assert StatementResult(error="ConditionalCheckFailed").condition_failed
    assert StatementResult(error="DuplicateItem").condition_failed
    throttled = StatementResult(error="ThrottlingError")
    assert not throttled.applied
    assert not throttled.condition_failed


def _write(version: int, *, envelopes: tuple[str, ...] = (), previous: tuple[str, ...] = ()
           ) -> ItemWrite:
    return ItemWrite(table="t", key={"pk": {"S": "a"}}, state={"n": {"N": "2"}},
                     version=version, event_seq=3, envelopes=envelopes, inbox=("e-1",),
                     previous=previous)


def test_the_item_write_as_a_put_and_as_a_statement() -> None:
    config = OutboxConfig()
    new = _write(0, envelopes=('{"id":"x"}',))
    put = item_put(new, config)
    assert put["Item"] == {"pk": {"S": "a"}, "n": {"N": "2"}, "version": {"N": "1"},
                           "event_seq": {"N": "3"}, "outbox": {"L": [{"S": '{"id":"x"}'}]},
                           "inbox": {"L": [{"S": "e-1"}]}}
    insert = item_statement(new, config)
    assert insert is not None
    assert insert.text.startswith('INSERT INTO "t"')
    assert dict(zip(["pk", "n", "version", "event_seq", "outbox", "inbox"],
                    insert.parameters, strict=True)) == put["Item"]

    existing = _write(4, previous=("n", "gone"))
    update = item_statement(existing, config)
    assert update is not None
    # Stored item = the Put's: what the new state drops, and an outbox this write does not
    # have, are removed.
    assert update.text == ('UPDATE "t" SET "n" = ? SET "version" = ? SET "event_seq" = ? '
                           'SET "inbox" = ? REMOVE "gone" REMOVE "outbox" '
                           'WHERE "pk" = ? AND "version" = ?')
    assert update.parameters[-1] == {"N": "4"}
    assert update.return_item


def test_a_write_that_cannot_be_a_statement_says_so() -> None:
    config = OutboxConfig()
    odd = ItemWrite(table="t", key={"pk": {"S": "a"}}, state={"it's": {"N": "1"}},
                    version=1, event_seq=0)
    assert item_statement(odd, config) is None
    table_inbox = OutboxConfig(inbox=InboxConfig(mode=InboxMode.TABLE, table="inbox"))
    aggregate = Aggregate(ref=ItemRef(table="t", key={"pk": "a"}), state={}, version=1)
    staged = stage(aggregate, {"n": 1}, events=[ThingCounted(n=1)], processed_ids=["e"],
                   trace={})
    assert write_statement(staged, table_inbox) is None  # needs the inbox record: a transaction
    assert write_statement(staged, config) is not None


def test_the_emulator_reads_both_statement_shapes() -> None:
    insert = parse("""INSERT INTO "t" VALUE {'pk': ?, 'it''s': ?}""")
    assert insert is not None
    assert (insert.kind, insert.table, insert.values, insert.parameters) == (
        "INSERT", "t", {"pk": 0, "it's": 1}, 2)
    update = parse('UPDATE "t" SET "a" = ? SET b = ?, "c" = ? REMOVE "d", e '
                   'WHERE "pk" = ? AND "version" = ?')
    assert update is not None
    assert update.values == {"a": 0, "b": 1, "c": 2}
    assert update.remove == ["d", "e"]
    assert update.where == {"pk": 3, "version": 4}
    for other in ('SELECT * FROM "t" WHERE "pk" = ?', 'UPDATE "t" SET "a" = 1 WHERE "pk" = ?',
                  'DELETE FROM "t" WHERE "pk" = ?', 'UPDATE "t" WHERE "pk" = ?', ""):
        assert parse(other) is None, other


def test_statement_results_become_write_verdicts() -> None:
    config = OutboxConfig()

    def staged(pk: str, processed: str) -> StagedWrite:
        aggregate = Aggregate(ref=ItemRef(table="t", key={"pk": pk}), state={}, version=1)
        return stage(aggregate, {"n": 1}, processed_ids=[processed], trace={})

    writes = [staged("a", "e-a"), staged("b", "e-b"), staged("c", "e-c"), staged("d", "e-d"),
              staged("e", "e-e")]
    seen_b = {"pk": {"S": "b"}, "version": {"N": "2"}, "inbox": {"L": [{"S": "e-b"}]}}
    moved_c = {"pk": {"S": "c"}, "version": {"N": "3"}, "n": {"N": "7"}}
    verdicts = statement_verdicts(writes, [
        StatementResult(),
        StatementResult(error="ConditionalCheckFailed", item=seen_b),
        StatementResult(error="ConditionalCheckFailed", item=moved_c),
        StatementResult(error="DuplicateItem"),
        StatementResult(error="ThrottlingError"),
    ], config)
    assert verdicts[0].clean
    assert verdicts[1].duplicates == {"e-b"}  # the item lists the event: applied before
    assert verdicts[2].conflict
    assert verdicts[2].current is not None
    assert (verdicts[2].current.version, verdicts[2].current.state) == (3, {"n": 7})
    assert verdicts[3].conflict  # no item returned: read it again
    assert verdicts[3].current is None
    assert verdicts[4].transient == "ThrottlingError"
