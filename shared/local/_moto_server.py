"""`python -m shared.local._moto_server -H HOST -p PORT`: moto's server with three gaps
filled and fixes for throughput, nothing else changed (docs/local.md lists them all).
`Emulator` starts the emulator through this module, and compose.yaml runs it as a script
(it imports moto and its dependencies, and waitress when installed).
`FLEETLINE_EMULATOR_FIXES=0` leaves the throughput fixes out, to compare. The gaps: rule
targets that are SNS topics, TransactWriteItems' backups, and unlocked DynamoDB writes (see
each function); the first in detail:

An EventBridge rule whose target is an SNS topic (the dashboard feed). moto's
`Rule.send_to_targets` has no SNS branch and raises, so PutEvents answers HTTP 500 for any
event such a rule matches, and the whole bus stops. Here the rule publishes the event to the
topic as EventBridge does: the same JSON document moto puts on a queue target (input
transformer applied, ISO time), through moto's own SNS backend, so subscriptions, filter
policies and raw delivery behave as moto's. The rule's other targets go through moto's code
unchanged. (Before this, the local runner re-pointed such targets at a bridge queue and ran
a process to publish from it: one more queue and poll on the dashboard's path, which put
the event-to-dashboard p99 over its 1 s budget.)

Throughput, measured with `fleetline up` and `fleetline simulate --devices 10000` (py-spy on
the moto process): the emulator sat near 90 % of a core at about 50 requests a second, and the
device events fell minutes behind. Of its CPU:

- 46 % was EventBridge's PutEvents compiling JSONPath expressions: for every event and every
  matching rule target (queues, archives), moto builds the target's input from a template
  with eight JSONPath expressions, parsing each one again with jsonpath_ng (a PLY parser,
  about a millisecond apiece). The expressions are a handful of constant strings, so
  `jsonpath_ng.ext.parse` is memoised here: same strings, same compiled expressions (they
  are not mutated by `find`), the same events delivered.
- Then, once a queue had a backlog of a few hundred messages, 60 % went to SQS
  ReceiveMessage: for every message it considers, moto checks the retention period by
  computing ALL the queue's attributes, three of which (the approximate counts) walk every
  message of the queue: quadratic in the backlog, so a queue that falls behind falls
  further behind. The check reads the queue's retention period directly here (same
  comparison, constant time). And the approximate counts, and the list of visible messages
  ReceiveMessage picks from, are computed with one clock reading per walk instead of two
  per message (moto's `Message.visible` / `delayed` each build a datetime): still a walk
  over the queue, about 40 times cheaper, same result.
- 11 % was werkzeug writing an access-log line per request. The server logs at WARNING
  unless `FLEETLINE_EMULATOR_ACCESS_LOG=1` (then every request is logged as before).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import logging
import os
import signal
import sys
import threading
from typing import Any


def _unpatched(owner: Any, name: str, marker: str = "_fleetline") -> Any:
    """`owner.name` as it is, or None when it is missing (another moto version) or already
    carries `marker` (each fix is applied once; a fix with its own marker may wrap another)."""
    original = getattr(owner, name, None)
    return None if original is None or getattr(original, marker, False) else original


def _replace(owner: Any, name: str, replacement: Any, marker: str = "_fleetline") -> None:
    setattr(replacement, marker, True)
    setattr(owner, name, replacement)


def _memoise_jsonpath() -> None:
    try:
        import jsonpath_ng.ext
    except ImportError:  # moto installed without it: nothing to speed up
        return
    module: Any = jsonpath_ng.ext  # moto imports `parse` from it at each call
    if not hasattr(module.parse, "cache_info"):
        module.parse = functools.lru_cache(maxsize=4096)(module.parse)


def _constant_time_retention_check() -> None:
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    if _unpatched(SQSBackend, "is_message_valid_based_on_retention_period") is None:
        return

    def is_message_valid_based_on_retention_period(
        self: Any, queue_name: str, message: Any
    ) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
        return bool(retain_until > unix_time())

    _replace(SQSBackend, "is_message_valid_based_on_retention_period",
             is_message_valid_based_on_retention_period)


def _one_clock_reading_per_walk() -> None:
    from moto.core.utils import unix_time_millis
    from moto.sqs.models import Message, Queue

    assigned = Message.__init__.__code__.co_names  # the attributes its __init__ sets
    if "visible_at" not in assigned or "delayed_until" not in assigned:
        return  # another moto version: leave it as it is

    def messages(self: Any) -> list[Any]:
        now = unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    def delayed(self: Any) -> int:
        now = unix_time_millis()
        return sum(1 for m in self._messages if now < m.delayed_until)

    def not_visible(self: Any) -> int:
        now = unix_time_millis()
        return sum(1 for m in self._messages if not now > m.visible_at)

    def visible(self: Any) -> int:
        return len(messages(self))

    Queue.messages = property(messages)  # type: ignore[assignment,method-assign]
    Queue.approximate_number_of_messages_delayed = property(delayed)  # type: ignore[assignment,method-assign]
    Queue.approximate_number_of_messages_not_visible = property(not_visible)  # type: ignore[assignment,method-assign]
    Queue.approximate_number_of_messages = property(visible)  # type: ignore[assignment,method-assign]


def _alias_search_once_per_member() -> None:
    from moto.core import serialize, utils

    original = _unpatched(serialize.ResponseSerializer, "get_value")
    default_call = serialize.AttributePicker.__call__
    if original is None:
        return
    missing = utils.MISSING  # type: ignore[attr-defined]
    candidates: dict[tuple[Any, ...], tuple[str, ...]] = {}

    def get_value(self: Any, value: Any, key: str, shape: Any) -> Any:
        picker = self._value_picker
        if (type(value) is not dict or type(picker).__call__ is not default_call
                or picker.alias_providers is not serialize.DEFAULT_ALIAS_PROVIDERS
                or picker.response_transformers):
            return original(self, value, key, shape)
        # For a plain dict, the keys the alias providers offer depend only on the picker's
        # class, the member's name and its shape (a dict has no Meta aliases and one class
        # name): worked out once per member, not for every value of every response.
        cache_key = (type(picker), key, shape)
        keys = candidates.get(cache_key)
        if keys is None:
            context = serialize.AttributePickerContext(
                obj=value, key=key, shape=shape, operation_model=self.operation_model,
                service_model=self.operation_model.service_model, key_path=".".join(self.path))
            keys = candidates[cache_key] = tuple(picker.get_possible_keys(context))
        for candidate in keys:
            found = (utils.get_value(value, candidate, missing) if "." in candidate
                     else value.get(candidate, missing))
            if found is not missing:
                return found
        return None

    _replace(serialize.ResponseSerializer, "get_value", get_value)


def _transactions_back_up_items_not_tables() -> None:
    from moto.dynamodb import exceptions as errors
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.models import DynamoDBBackend

    if _unpatched(DynamoDBBackend, "transact_write_items") is None:
        return
    kinds = {"ConditionCheck", "Put", "Delete", "Update"}

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        if len(transact_items) > 100:
            raise errors.TooManyTransactionsException()
        # 1. Every check against the state before the transaction, nothing written: the
        #    same checks, in the same order, with the same errors as moto's.
        planned: list[tuple[str, dict[str, Any], Any, Any, Any]] = []
        reasons: list[tuple[Any, Any, Any]] = []
        seen: set[tuple[str, str]] = set()
        for entry in transact_items:
            if len(entry) > 1:
                raise errors.TransactWriteSingleOpException
            old_image = None
            try:
                kind, op = next(iter(entry.items()))
                if kind not in kinds:
                    raise ValueError("Unsupported transaction operation")
                table = self.get_table(op["TableName"])
                if kind == "Put":
                    key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = op["Item"][table.range_key_attr]
                else:
                    key = op["Key"]
                marker = (str(op["TableName"]), str(dict(sorted(key.items()))))
                if marker in seen:
                    raise errors.MultipleTransactionsException()
                seen.add(marker)
                hash_value, range_value = self.get_keys_value(table, key)
                current = table.get_item(hash_value, range_value)
                condition = op.get("ConditionExpression")
                if condition is not None and not get_filter_expression(
                        condition, op.get("ExpressionAttributeNames"),
                        op.get("ExpressionAttributeValues")).expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        old_image = current.to_json()["Attributes"]
                    raise errors.ConditionalCheckFailed(item=old_image)
                planned.append((kind, op, table, hash_value, range_value))
                reasons.append((None, None, None))
            except errors.MockValidationException:
                raise
            except errors.ConditionalCheckFailed as exc:
                reasons.append(("ConditionalCheckFailed", str(exc.message), old_image))
            except Exception as exc:
                reasons.append((type(exc).__name__, str(exc), old_image))
        if any(code is not None for code, _, _ in reasons):
            raise errors.TransactionCanceledException(reasons)

        # 2. The writes, each touched item backed up first (not the whole table and its
        #    stream, as moto does: a deep copy that grows with every write, and a restore
        #    that erased what other requests wrote meanwhile).
        # A Put or Delete replaces the stored Item object, an Update changes it in place:
        # only an Update's item needs a copy.
        backups = [(table, hash_value, range_value,
                    copy.deepcopy(current) if kind == "Update" else current)
                   for kind, _, table, hash_value, range_value in planned
                   if kind != "ConditionCheck"
                   for current in (table.get_item(hash_value, range_value),)]
        stream_lengths = {id(t): (t, len(t.stream_shard.items))
                          for t, *_ in backups if t.stream_shard is not None}
        done = 0
        try:
            for kind, op, table, *_ in planned:
                # The conditions were checked in step 1, against the state before the
                # transaction, as DynamoDB does: not parsed and evaluated a second time.
                if kind == "Put":
                    self.put_item(table.name, op["Item"])
                elif kind == "Delete":
                    self.delete_item(table.name, op["Key"])
                elif kind == "Update":
                    self.update_item(table.name, op["Key"],
                                     update_expression=op["UpdateExpression"],
                                     expression_attribute_names=op.get(
                                         "ExpressionAttributeNames"),
                                     expression_attribute_values=op.get(
                                         "ExpressionAttributeValues"))
                done += 1
        except Exception as exc:
            for table, hash_value, range_value, saved in reversed(backups):
                items = table.items[hash_value] if range_value is not None else table.items
                slot = range_value if range_value is not None else hash_value
                if saved is None:
                    items.pop(slot, None)
                else:
                    items[slot] = saved
            for table, length in stream_lengths.values():
                del table.stream_shard.items[length:]
            if isinstance(exc, errors.MockValidationException):
                raise
            reasons = [(None, None, None)] * len(planned)  # one reason per item, as AWS
            reasons[done] = (type(exc).__name__, str(exc), None)
            raise errors.TransactionCanceledException(reasons) from exc

    _replace(DynamoDBBackend, "transact_write_items", transact_write_items)


def _dynamodb_writes_one_at_a_time() -> None:
    from moto.dynamodb.models import DynamoDBBackend

    # moto's server runs requests on threads and its DynamoDB writes read, change and store
    # an item without a lock: 16 clients doing 400 `SET n = n + :one` left n at 355 and 373.
    # DynamoDB applies each write to an item atomically (leases, counters and idempotency
    # records rely on it), so writes here take one lock, reentrant since a transaction calls
    # the others.
    lock = threading.RLock()
    for name in ("put_item", "update_item", "delete_item", "transact_write_items",
                 "batch_write_item"):
        # Around moto's method or the one fixed here (the transaction): either way, once.
        original = _unpatched(DynamoDBBackend, name, marker="_fleetline_locked")
        if original is None:
            continue

        def locked(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return _original(self, *args, **kwargs)

        _replace(DynamoDBBackend, name, functools.wraps(original)(locked),
                 marker="_fleetline_locked")


def _kinesis_reads_from_the_position() -> None:
    from moto.kinesis.models import Shard

    original = _unpatched(Shard, "get_records")
    if original is None:
        return

    # moto numbers a shard's records 1, 2, 3 ... (each the last plus one) in an ordered dict,
    # but walked the whole shard to find the records after a position, and built a list of
    # every key to find the last one on every put: both grow with the stream.
    def get_records(self: Any, last_sequence_id: str, limit: int | None) -> Any:
        records = self.records
        position = int(last_sequence_id)
        if not records or position >= next(reversed(records)):
            return [], position, 0  # nothing after the position: what the walk found
        if position + 1 not in records:
            return original(self, last_sequence_id, limit)  # a gap: moto's own walk
        newest = records[next(reversed(records))]
        results: list[Any] = []
        while position + 1 in records and (limit is None or len(results) < limit):
            position += 1
            results.append(records[position])
        behind = newest.created_at - results[-1].created_at
        return results, position, int(behind * 1000)

    def get_max_sequence_number(self: Any) -> int:
        return next(reversed(self.records)) if self.records else 0

    def get_min_sequence_number(self: Any) -> int:
        return next(iter(self.records)) if self.records else 0

    _replace(Shard, "get_records", get_records)
    _replace(Shard, "get_max_sequence_number", get_max_sequence_number)
    _replace(Shard, "get_min_sequence_number", get_min_sequence_number)


@functools.cache
def _timestamp_codec() -> tuple[Any, Any]:
    """moto's JSON timestamp writer and botocore's datetime reader (imported once, not per
    record: the server imports moto only after its fixes are chosen)."""
    from botocore.utils import parse_to_aware_datetime
    from moto.core.serialize import TimestampSerializer

    return TimestampSerializer._timestamp_unixtimestamp, parse_to_aware_datetime


def _epoch(value: Any) -> Any:
    """A datetime as moto's serializer writes a JSON timestamp (epoch seconds, to the ms)."""
    if isinstance(value, datetime.datetime):
        write, aware = _timestamp_codec()
        return write(aware(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def stream_page_json(result: dict[str, Any]) -> str | None:
    """A DynamoDB Streams GetRecords result as its JSON body, or None when a record holds a
    binary attribute (moto's serializer re-encodes those: left to it)."""
    body = json.dumps(result, default=_epoch)
    return None if '"B": ' in body or '"BS": ' in body else body


def _stream_pages_as_json() -> None:
    from moto.core.responses import ActionResult
    from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

    if _unpatched(DynamoDBStreamsHandler, "get_records") is None:
        return

    # A page of stream records is already in the wire shape (moto keeps each record as the
    # API's JSON), but the generic serializer walked every attribute of every image against
    # the model: 1.2 s for a page of 1,000 device records on a busy emulator, which made the
    # outbox relay the slowest step of the devices pipeline. Encoded directly.
    def get_records(self: Any) -> Any:
        limit = self._get_param("Limit")
        result = self.backend.get_records(self._get_param("ShardIterator"),
                                          1000 if limit is None else limit)
        body = stream_page_json(result)
        return ActionResult(result) if body is None else body

    _replace(DynamoDBStreamsHandler, "get_records", get_records)


def _route_each_host_once() -> None:
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = _unpatched(DomainDispatcherApplication, "get_backend_for_host")
    if original is None:
        return
    modules = tuple(backends.list_of_moto_modules())  # the installed package: fixed
    backends.list_of_moto_modules = lambda: iter(modules)
    routed: dict[str, Any] = {}

    def get_backend_for_host(self: Any, host: str | None) -> Any:
        # Called under the dispatcher's lock; a host always routes to the same backend.
        if host is None:
            return None
        backend = routed.get(host)
        if backend is None:
            backend = original(self, host)
            if backend is not None:
                routed[host] = backend
        return backend

    _replace(DomainDispatcherApplication, "get_backend_for_host", get_backend_for_host)


def _rule_targets_reach_topics() -> None:
    from moto.core.utils import iso_8601_datetime_without_milliseconds, utcfromtimestamp
    from moto.events.models import Rule
    from moto.events.utils import EventTemplateParser
    from moto.sns.models import sns_backends
    from moto.utilities.arns import parse_arn

    original = _unpatched(Rule, "send_to_targets")
    if original is None:
        return

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        topics = [t for t in self.targets if parse_arn(t["Arn"]).service == "sns"]
        if not topics:
            original(self, original_event, transform_input)
            return
        if not self.event_pattern.matches_event(original_event):
            return
        others = [t for t in self.targets if t not in topics]
        if others:  # moto's own delivery, on a copy: the rule itself is shared by threads
            rest = copy.copy(self)
            rest.targets = others
            original(rest, original_event, transform_input)
        for target in topics:
            arn = parse_arn(target["Arn"])
            if transform_input:
                transformer = target.get("InputTransformer", {})
                event = EventTemplateParser.parse(
                    input_template=transformer.get("InputTemplate"),
                    input_paths_map=transformer.get("InputPathsMap", {}),
                    event=original_event,
                )
            else:
                event = dict(original_event)
            if isinstance(event.get("time"), int | float):
                # as moto formats it for queues: the ISO time AWS puts in the event
                event["time"] = iso_8601_datetime_without_milliseconds(
                    utcfromtimestamp(event["time"]))
            sns_backends[arn.account][arn.region].publish(
                message=json.dumps(event), arn=target["Arn"])

    _replace(Rule, "send_to_targets", send_to_targets)


def _serve_with_keep_alive(argv: list[str]) -> bool:
    """Serve moto's application with waitress when it is installed (the `local` extra has it)
    and only -H / -p are given; False leaves the serving to moto's own entry point.

    moto serves with werkzeug's development server, which closes the connection after every
    response (its keep-alive is disabled) and starts a thread per connection: each request
    paid a TCP connect and a thread start on both sides. waitress keeps connections open and
    serves from a pool of threads. Measured with 8 clients doing GetItem: 223 requests a
    second against 152, and 2.0 ms of client CPU per request against 2.7. The pool is large
    because SQS long polls hold a thread for up to 20 s each."""
    try:
        import waitress
    except ImportError:
        return False
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    args, rest = parser.parse_known_args(argv)
    if rest:
        return False  # reload, TLS: moto's own server
    os.environ.setdefault("MOTO_PORT", str(args.port))
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    application = DomainDispatcherApplication(create_backend_app)
    waitress.serve(application, host=args.host, port=args.port, threads=128,
                   connection_limit=2000, asyncore_use_poll=True, ident="moto", _quiet=True)
    return True


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Gaps filled: always, since without them the stack does not work on the emulator (the
    # telemetry worker writes with transactions everywhere).
    _rule_targets_reach_topics()
    _transactions_back_up_items_not_tables()
    _dynamodb_writes_one_at_a_time()
    # Throughput fixes: FLEETLINE_EMULATOR_FIXES=0 leaves them out, to compare.
    fixes = os.environ.get("FLEETLINE_EMULATOR_FIXES") != "0"
    if fixes:
        _memoise_jsonpath()
        _route_each_host_once()
        _kinesis_reads_from_the_position()
        _alias_search_once_per_member()
        _stream_pages_as_json()
        _constant_time_retention_check()
        _one_clock_reading_per_walk()
    access_log = os.environ.get("FLEETLINE_EMULATOR_ACCESS_LOG") == "1"
    if fixes and not access_log and _serve_with_keep_alive(argv):
        return
    if not access_log:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from moto.server import main as moto_main

    moto_main(argv)


if __name__ == "__main__":
    main()
