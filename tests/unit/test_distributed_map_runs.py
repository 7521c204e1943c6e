"""What a local map run decides without I/O (shared.local._distributed_map): payload templates
and intrinsic functions, the request and its settings, items, batches, tolerated failures,
and the results a ResultWriter writes."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from shared.errors import InvalidMessageError
from shared.local._distributed_map import MapRunError
from shared.local._distributed_map._definition import MAP_RUN_REQUEST
from shared.local._distributed_map._items import (
    batch_items,
    input_items,
    item_source,
    listed_items,
    parse_items,
    select_items,
)
from shared.local._distributed_map._paths import evaluate, evaluate_template
from shared.local._distributed_map._progress import ChildStatus, MapRunProgress
from shared.local._distributed_map._request import (
    Batching,
    MapRunRequest,
    RunSettings,
    Tolerance,
)
from shared.local._distributed_map._results import (
    child_record,
    map_output,
    pending_record,
    result_write,
    writer_output,
)

PARENT = "arn:aws:states:us-east-1:123456789012:stateMachine:rollout"
PROCESSOR = "arn:aws:states:us-east-1:123456789012:stateMachine:rollout-Wave"
CONTEXT = {
    "Execution": {"Id": "arn:aws:states:us-east-1:123456789012:execution:rollout:e1",
                  "Name": "e1"},
    "StateMachine": {"Id": PARENT, "Name": "rollout"},
    "State": {"Name": "Wave", "EnteredTime": "2026-12-06T12:00:00.000Z", "RetryCount": 0},
    "Task": {"Token": "token-1"},
}


def request(spec: dict[str, Any] | None = None, data: Any = None) -> MapRunRequest:
    body = {
        "Kind": MAP_RUN_REQUEST,
        "Context": CONTEXT,
        "Input": {"name": "w1", "devices": ["a", "b", "c"]} if data is None else data,
        "MapRun": json.dumps({"StateName": "Wave", "Processor": {"Arn": PROCESSOR},
                              **(spec or {})}),
    }
    return MapRunRequest.from_body(json.dumps(body))


# -- payload templates ----------------------------------------------------------------------


def test_a_template_evaluates_paths_into_the_input_and_the_context() -> None:
    data = {"a": {"b": [10, 20, 30]}, "tags": [{"k": "x", "n": 1}, {"k": "y", "n": 2}]}
    context = {"Map": {"Item": {"Index": 3, "Value": "dev-3"}}}
    template = {
        "first.$": "$.a.b[0]",
        "last.$": "$.a.b[-1]",
        "whole.$": "$",
        "keys.$": "$.tags[*].k",
        "big.$": "$.tags[?(@.n > 1)].k",
        "index.$": "$$.Map.Item.Index",
        "nested": [{"value.$": "$$.Map.Item.Value"}, "literal", {"plain": "$.not-a-path"}],
    }
    assert evaluate_template(template, data, context=context) == {
        "first": 10, "last": 30, "whole": data, "keys": ["x", "y"], "big": ["y"], "index": 3,
        "nested": [{"value": "dev-3"}, "literal", {"plain": "$.not-a-path"}],
    }


def test_a_path_that_matches_nothing_fails_with_states_runtime() -> None:
    with pytest.raises(MapRunError) as caught:
        evaluate_template({"x.$": "$.missing"}, {"a": 1})
    assert caught.value.error == "States.Runtime"
    assert "'$.missing'" in caught.value.cause
    assert "'x.$'" in caught.value.cause
    assert evaluate("$.xs[*]", {"xs": []}) == []  # indefinite: an empty match is a value


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("States.Format('wave {} of {}', $.n, $.total)", "wave 2 of 5"),
        ("States.Format('obj {} \\{x\\}', $.obj)", 'obj {"a":1} {x}'),
        ("States.StringToJson($.text)", {"k": [1]}),
        ("States.JsonToString($.obj)", '{"a":1}'),
        ("States.Array($.n, 'two', 3, null)", [2, "two", 3, None]),
        ("States.ArrayLength($.list)", 4),
        ("States.ArrayPartition($.list, 3)", [[1, 2, 2], [3]]),
        ("States.ArrayContains($.list, 3)", True),
        ("States.ArrayRange(1, 9, 4)", [1, 5, 9]),
        ("States.ArrayGetItem($.list, 1)", 2),
        ("States.ArrayUnique($.list)", [1, 2, 3]),
        ("States.Base64Decode(States.Base64Encode('it\\'s'))", "it's"),
        ("States.Hash('abc', 'SHA-256')",
         "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("States.JsonMerge($.obj, States.StringToJson('{\"b\": 2}'), false)", {"a": 1, "b": 2}),
        ("States.MathAdd($.n, -3)", -1),
        ("States.StringSplit('a,b;;c', ',;')", ["a", "b", "c"]),
    ],
)
def test_intrinsic_functions(expression: str, expected: Any) -> None:
    data = {"n": 2, "total": 5, "text": '{"k": [1]}', "obj": {"a": 1}, "list": [1, 2, 2, 3]}
    assert evaluate(expression, data) == expected


def test_a_bad_intrinsic_function_fails_with_states_runtime() -> None:
    for expression in ("States.Nope(1)", "States.Format('{} {}', $.n)", "States.ArrayLength("):
        with pytest.raises(MapRunError) as caught:
            evaluate(expression, {"n": 1}, field="x.$")
        assert caught.value.error == "States.Runtime", expression
    assert len(evaluate("States.UUID()", {})) == 36


# -- the request and its settings -----------------------------------------------------------


def test_a_request_names_its_run_and_children_from_the_token() -> None:
    one, again = request(), request()
    assert one.map_run_id == again.map_run_id  # delivered twice: the same run
    other = MapRunRequest.from_body(json.dumps({
        "Kind": MAP_RUN_REQUEST, "Context": {**CONTEXT, "Task": {"Token": "token-2"}},
        "Input": {}, "MapRun": json.dumps({"StateName": "Wave",
                                           "Processor": {"Arn": PROCESSOR}})}))
    assert other.map_run_id != one.map_run_id  # a retry of the Map state: a new run
    assert one.map_run_arn == (
        f"arn:aws:states:us-east-1:123456789012:mapRun:rollout/Wave:{one.map_run_id}")
    assert request({"Label": "waves"}).map_run_arn.endswith(f":mapRun:rollout/waves:"
                                                            f"{one.map_run_id}")
    assert one.child_name(7) == f"{one.map_run_id}-7"
    assert one.child_arn(7) == (
        f"arn:aws:states:us-east-1:123456789012:execution:rollout-Wave:{one.map_run_id}-7")
    assert one.execution_arn == CONTEXT["Execution"]["Id"]


@pytest.mark.parametrize("body", ["nope", "{}", json.dumps({"Kind": "other"}),
                                  json.dumps({"Kind": MAP_RUN_REQUEST, "Context": {}})])
def test_a_message_that_is_not_a_request_is_invalid(body: str) -> None:
    with pytest.raises(InvalidMessageError):
        MapRunRequest.from_body(body)


def test_settings_are_read_from_fields_and_paths() -> None:
    settings = RunSettings.resolve(request(
        {"MaxConcurrencyPath": "$.limits.concurrency",
         "ToleratedFailureCountPath": "$.limits.failures",
         "ToleratedFailurePercentage": 12.5,
         "ItemBatcher": {"MaxItemsPerBatchPath": "$.limits.batch", "MaxInputBytesPerBatch": 2048,
                         "BatchInput": {"wave.$": "$.name", "fixed": 1}}},
        {"name": "w1", "limits": {"concurrency": 3, "failures": 2, "batch": 100}}))
    assert settings == RunSettings(
        max_concurrency=3,
        tolerance=Tolerance(count=2, percentage=12.5),
        batching=Batching(max_items=100, max_bytes=2048, batch_input={"wave": "w1", "fixed": 1}),
    )
    assert RunSettings.resolve(request()) == RunSettings()


@pytest.mark.parametrize(
    "spec",
    [
        {"ToleratedFailurePercentage": 101},
        {"ToleratedFailureCount": -1},
        {"ToleratedFailureCount": 1.5},
        {"MaxConcurrencyPath": "$.missing"},
        {"MaxConcurrency": "3"},
        {"ItemBatcher": {"MaxItemsPerBatch": 0}},
        {"ItemBatcher": {"MaxInputBytesPerBatch": 262_145}},
    ],
)
def test_a_setting_out_of_range_fails_with_states_runtime(spec: dict[str, Any]) -> None:
    with pytest.raises(MapRunError) as caught:
        RunSettings.resolve(request(spec))
    assert caught.value.error == "States.Runtime"


@pytest.mark.parametrize(
    ("tolerance", "failed", "total", "exceeded"),
    [
        (Tolerance(), 0, 10, False),
        (Tolerance(), 1, 10, True),  # neither set: any failure
        (Tolerance(count=2), 2, 10, False),
        (Tolerance(count=2), 3, 10, True),
        (Tolerance(percentage=20), 2, 10, False),  # exactly 20 %: not exceeded
        (Tolerance(percentage=20), 3, 10, True),
        (Tolerance(percentage=0), 1, 1000, True),
        (Tolerance(percentage=100), 10, 10, False),
        (Tolerance(count=5, percentage=10), 2, 10, True),  # either one
        (Tolerance(count=1, percentage=50), 2, 10, True),
        (Tolerance(percentage=10), 0, 0, False),
    ],
)
def test_tolerated_failures(tolerance: Tolerance, failed: int, total: int, exceeded: bool) -> None:
    assert tolerance.exceeded(failed, total) is exceeded


# -- items ----------------------------------------------------------------------------------


def reader(config: dict[str, Any] | None = None, resource: str = "getObject") -> MapRunRequest:
    return request({"ItemReader": {
        "Resource": f"arn:aws:states:::s3:{resource}",
        "ReaderConfig": config or {},
        "Parameters": {"Bucket.$": "$.bucket", "Key": "wave.json"}}},
        {"bucket": "b", "limit": 2})


def test_the_item_reader_parameters_are_evaluated_over_the_input() -> None:
    source = item_source(reader({"MaxItemsPath": "$.limit"}))
    assert source is not None
    assert source.parameters == {"Bucket": "b", "Key": "wave.json"}
    assert (source.input_type, source.max_items, source.list_objects) == ("JSON", 2, False)
    assert item_source(request()) is None


def test_objects_are_read_as_json_jsonl_and_csv() -> None:
    def read(config: dict[str, Any], body: str) -> list[Any]:
        source = item_source(reader(config))
        assert source is not None
        return parse_items(body.encode(), source)

    assert read({}, '[{"d": 1}, {"d": 2}]') == [{"d": 1}, {"d": 2}]
    assert read({"MaxItems": 1}, "[1, 2, 3]") == [1]
    assert read({"ItemsPointer": "/fleet/devices"}, '{"fleet": {"devices": [1, 2]}}') == [1, 2]
    assert read({"InputType": "JSONL"}, '{"d": 1}\n\n{"d": 2}\n') == [{"d": 1}, {"d": 2}]
    assert read({"InputType": "CSV"}, "id,zone\nd1,eu\nd2,us\n") == [
        {"id": "d1", "zone": "eu"}, {"id": "d2", "zone": "us"}]
    assert read({"InputType": "CSV", "CSVHeaderLocation": "GIVEN", "CSVHeaders": ["id", "n"],
                 "CSVDelimiter": "PIPE"}, "d1|1\nd2|2\n") == [
        {"id": "d1", "n": "1"}, {"id": "d2", "n": "2"}]


@pytest.mark.parametrize(("config", "body"), [({}, '{"not": "an array"}'), ({}, "[1,"),
                                              ({"InputType": "JSONL"}, "{}\n{oops\n"),
                                              ({}, "\xff\xfe")])
def test_an_object_that_cannot_be_read_fails_with_item_reader_failed(
    config: dict[str, Any], body: str
) -> None:
    source = item_source(reader(config))
    assert source is not None
    with pytest.raises(MapRunError) as caught:
        parse_items(body.encode("latin-1"), source)
    assert caught.value.error == "States.ItemReaderFailed"
    assert "s3://b/wave.json" in caught.value.cause


def test_listed_objects_are_items() -> None:
    source = item_source(reader({"MaxItems": 1}, resource="listObjectsV2"))
    assert source is not None
    assert source.list_objects
    modified = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
    assert listed_items([{"Key": "a", "Size": 3, "ETag": '"e"', "LastModified": modified},
                         {"Key": "b"}], source) == [
        {"Key": "a", "Size": 3, "Etag": '"e"', "LastModified": "2026-12-06T12:00:00+00:00",
         "StorageClass": "STANDARD"}]


def test_items_come_from_items_path_and_go_through_the_item_selector() -> None:
    run = request({"ItemsPath": "$.devices",
                   "ItemSelector": {"device.$": "$$.Map.Item.Value", "n.$": "$$.Map.Item.Index",
                                    "wave.$": "$.name", "execution.$": "$$.Execution.Name"}})
    items = input_items(run)
    assert items == ["a", "b", "c"]
    assert select_items(items, run)[2] == {"device": "c", "n": 2, "wave": "w1", "execution": "e1"}
    legacy = request({"Parameters": {"d.$": "$$.Map.Item.Value"}})
    assert select_items(["x"], legacy) == [{"d": "x"}]
    assert select_items(["x"], request()) == ["x"]
    with pytest.raises(MapRunError) as caught:
        input_items(request({"ItemsPath": "$.name"}))
    assert caught.value.error == "States.Runtime"


def test_items_are_batched_by_count_with_the_batch_input() -> None:
    items = [{"device": f"d-{n:04d}"} for n in range(2500)]
    batches = batch_items(items, Batching(max_items=1000, batch_input={"wave": "w1"}))
    assert [b.items for b in batches] == [1000, 1000, 500]
    assert batches[2].input == {"Items": items[2000:], "BatchInput": {"wave": "w1"}}
    assert batch_items(items[:2], None)[1].input == {"device": "d-0001"}
    assert batch_items([], Batching(max_items=10)) == []
    assert batch_items([1, 2], Batching(max_items=10))[0].input == {"Items": [1, 2]}


def test_items_are_batched_by_bytes() -> None:
    items = ["x" * 10] * 10  # 12 bytes each as JSON, 13 with the comma
    batches = batch_items(items, Batching(max_bytes=len('{"Items":[]}') + 12 + 13 * 2))
    assert [b.items for b in batches] == [3, 3, 3, 1]
    for batch in batches:
        assert len(json.dumps(batch.input, separators=(",", ":"))) <= 12 + 12 + 13 * 2
    huge = batch_items(["y" * 100, "z"], Batching(max_bytes=50))
    assert [b.items for b in huge] == [1, 1]  # too big alone: still a batch of its own


# -- progress -------------------------------------------------------------------------------


def test_children_start_in_order_within_the_concurrency() -> None:
    progress = MapRunProgress([1] * 5, tolerance=Tolerance(), max_concurrency=2)
    assert progress.to_start() == [0, 1]
    progress.started(0)
    progress.started(1)
    assert progress.to_start() == []
    progress.finished(0, ChildStatus.SUCCEEDED)
    assert progress.to_start() == [2]
    for index in (2, 3, 4):
        progress.started(index)
    for index in (1, 2, 3, 4):
        progress.finished(index, ChildStatus.SUCCEEDED)
    assert progress.done
    assert not progress.exceeded
    assert progress.item_counts()["SUCCEEDED"] == 5


def test_past_the_threshold_no_child_starts_and_a_failed_batch_counts_its_items() -> None:
    progress = MapRunProgress([1000, 1000, 500], tolerance=Tolerance(percentage=30),
                              max_concurrency=1)
    progress.started(0)
    progress.finished(0, ChildStatus.FAILED)  # 1000 of 2500 items: 40 %
    assert progress.failed_items == 1000
    assert progress.exceeded
    assert progress.to_start() == []
    assert progress.done
    assert progress.indexes(ChildStatus.PENDING) == [1, 2]
    with pytest.raises(ValueError, match="not how a child ends"):
        progress.finished(1, ChildStatus.RUNNING)


def test_running_children_keep_a_failed_run_open_until_they_end() -> None:
    progress = MapRunProgress([1, 1, 1], tolerance=Tolerance(), max_concurrency=3)
    for index in progress.to_start():
        progress.started(index)
    progress.finished(1, ChildStatus.TIMED_OUT)
    assert progress.exceeded
    assert not progress.done
    progress.finished(0, ChildStatus.ABORTED)
    progress.finished(2, ChildStatus.SUCCEEDED)
    assert progress.done
    assert progress.item_counts()["ABORTED"] == 1


# -- results --------------------------------------------------------------------------------

START = dt.datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=dt.UTC)


def described(name: str, status: str, output: Any = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "executionArn": f"arn:aws:states:us-east-1:1:execution:rollout-Wave:{name}",
        "stateMachineArn": PROCESSOR, "name": name, "status": status, "startDate": START,
        "stopDate": START + dt.timedelta(seconds=2), "input": '{"Items":[1]}'}
    if status == "SUCCEEDED":
        answer["output"] = json.dumps(output)
    else:
        answer.update(error="Firmware.Rejected", cause="bad image")
    return answer


def test_records_and_the_output_without_a_result_writer() -> None:
    ok = child_record(described("r-0", "SUCCEEDED", [1, 2]))
    assert ok == {
        "ExecutionArn": "arn:aws:states:us-east-1:1:execution:rollout-Wave:r-0",
        "Input": '{"Items":[1]}', "InputDetails": {"Included": True}, "Name": "r-0",
        "Output": "[1, 2]", "OutputDetails": {"Included": True}, "RedriveCount": 0,
        "RedriveStatus": "NOT_REDRIVABLE", "StartDate": "2026-12-06T12:00:00.123Z",
        "StateMachineArn": PROCESSOR, "Status": "SUCCEEDED",
        "StopDate": "2026-12-06T12:00:02.123Z"}
    failed = child_record(described("r-1", "FAILED"))
    assert (failed["Error"], failed["Cause"], "Output" in failed) == (
        "Firmware.Rejected", "bad image", False)
    records = [ok, failed, child_record(described("r-2", "SUCCEEDED", {"n": 3}))]
    assert map_output(records, None) == [[1, 2], failed, {"n": 3}]
    flat = {"WriterConfig": {"Transformation": "FLATTEN"}}
    assert map_output(records, flat) == [1, 2, failed, {"n": 3}]
    assert map_output(records, {"WriterConfig": {"Transformation": "NONE"}}) == records


def test_a_result_writer_writes_files_by_status_and_a_manifest() -> None:
    records = [child_record(described("r-0", "SUCCEEDED", {"n": 1})),
               child_record(described("r-1", "ABORTED")),
               pending_record({"Items": [3]})]
    arn = "arn:aws:states:us-east-1:1:mapRun:rollout/Wave:run-1"
    write = result_write(records, parameters={"Bucket": "results", "Prefix": "waves/"},
                         writer_config=None, map_run_id="run-1", map_run_arn=arn)
    assert [f.key for f in write.files] == [
        "waves/run-1/SUCCEEDED_0.json", "waves/run-1/FAILED_0.json", "waves/run-1/PENDING_0.json"]
    assert json.loads(write.files[0].body) == [records[0]]  # NONE: whole records
    assert json.loads(write.files[1].body)[0]["Status"] == "ABORTED"  # aborted: with FAILED
    assert json.loads(write.files[2].body) == [
        {"Input": '{"Items":[3]}', "InputDetails": {"Included": True}, "Status": "PENDING"}]
    assert write.manifest.key == "waves/run-1/manifest.json"
    assert json.loads(write.manifest.body) == {
        "DestinationBucket": "results",
        "MapRunArn": arn,
        "ResultFiles": {
            "FAILED": [{"Key": "waves/run-1/FAILED_0.json", "Size": len(write.files[1].body)}],
            "PENDING": [{"Key": "waves/run-1/PENDING_0.json", "Size": len(write.files[2].body)}],
            "SUCCEEDED": [{"Key": "waves/run-1/SUCCEEDED_0.json",
                           "Size": len(write.files[0].body)}],
        },
    }
    assert writer_output(write, arn) == {
        "MapRunArn": arn,
        "ResultWriterDetails": {"Bucket": "results", "Key": "waves/run-1/manifest.json"}}


def test_a_result_writer_shapes_and_formats_what_it_writes() -> None:
    records = [child_record(described("r-0", "SUCCEEDED", [1, 2])),
               child_record(described("r-1", "SUCCEEDED", [3]))]
    write = result_write(records, parameters={"Bucket": "b"},
                         writer_config={"Transformation": "FLATTEN", "OutputType": "JSONL"},
                         map_run_id="run-2", map_run_arn="arn")
    (succeeded,) = write.files
    assert succeeded.key == "run-2/SUCCEEDED_0.json"  # no prefix: under the run's id
    assert succeeded.body == b"1\n2\n3\n"
    assert json.loads(write.manifest.body)["ResultFiles"]["FAILED"] == []
