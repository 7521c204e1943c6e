"""Rewriting Distributed Map states for the emulator (shared.local._distributed_map._definition):
a pure function over the ASL JSON. The last test asks moto's own ASL parser (no server)
whether it accepts what the rewrite produces; the original it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.local._distributed_map import (
    DefinitionError,
    local_definition,
    processor_name,
)
from shared.local._distributed_map._definition import MAP_RUN_REQUEST, MAP_RUN_TASK

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/s-local-map-runs"


def rollout() -> dict[str, Any]:
    return {
        "Comment": "waves",
        "StartAt": "Wave",
        "States": {
            "Wave": {
                "Type": "Map",
                "InputPath": "$.wave",
                "ItemReader": {
                    "Resource": "arn:aws:states:::s3:getObject",
                    "ReaderConfig": {"InputType": "JSON"},
                    "Parameters": {"Bucket.$": "$.bucket", "Key.$": "$.key"},
                },
                "ItemSelector": {"device.$": "$$.Map.Item.Value", "wave.$": "$.name"},
                "ItemBatcher": {"MaxItemsPerBatch": 1000, "BatchInput": {"wave.$": "$.name"}},
                "MaxConcurrency": 5,
                "ToleratedFailurePercentage": 10,
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"},
                    "StartAt": "Update",
                    "States": {"Update": {"Type": "Pass", "End": True}},
                },
                "ResultWriter": {
                    "Resource": "arn:aws:states:::s3:putObject",
                    "Parameters": {"Bucket": "results", "Prefix": "waves"},
                },
                "ResultSelector": {"manifest.$": "$.ResultWriterDetails.Key"},
                "ResultPath": "$.result",
                "OutputPath": "$.result",
                "Retry": [{"ErrorEquals": ["States.ItemReaderFailed"], "MaxAttempts": 2}],
                "Catch": [{"ErrorEquals": ["States.ExceedToleratedFailureThreshold"],
                           "Next": "Halt"}],
                "Next": "Done",
            },
            "Halt": {"Type": "Fail", "Error": "RolloutHalted"},
            "Done": {"Type": "Succeed"},
        },
    }


def rewrite(definition: dict[str, Any], machine: str = "rollout") -> Any:
    return local_definition(
        json.dumps(definition), machine=machine, region="us-east-1", account="123456789012",
        queue_url=QUEUE,
    )


def test_a_definition_without_distributed_maps_comes_back_unchanged() -> None:
    text = json.dumps({"StartAt": "M", "States": {"M": {
        "Type": "Map", "ItemsPath": "$.xs",
        "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}},
        "End": True}}})
    local = local_definition(text, machine="m", region="us-east-1", account="1", queue_url=QUEUE)
    assert local.definition == text
    assert local.processors == ()
    assert not local.has_distributed_maps


def test_a_distributed_map_becomes_a_task_that_waits_for_its_map_run() -> None:
    local = rewrite(rollout())
    states = json.loads(local.definition)["States"]
    task = states["Wave"]
    assert task["Type"] == "Task"
    assert task["Resource"] == MAP_RUN_TASK
    # What the Map state does with its input, result and errors stays on the task.
    original = rollout()["States"]["Wave"]
    for key in ("InputPath", "ResultSelector", "ResultPath", "OutputPath", "Retry", "Catch",
                "Next"):
        assert task[key] == original[key], key
    assert states["Halt"] == rollout()["States"]["Halt"]
    body = task["Parameters"]["MessageBody"]
    assert task["Parameters"]["QueueUrl"] == QUEUE
    assert body["Kind"] == MAP_RUN_REQUEST
    assert body["Input.$"] == "$"
    assert body["Context"]["Task"] == {"Token.$": "$$.Task.Token"}
    assert "Input.$" not in body["Context"]["Execution"]  # nothing reads it
    # The Map state's own fields travel as a string: the emulator leaves their `.$` alone.
    assert isinstance(body["MapRun"], str)
    run = json.loads(body["MapRun"])
    for key in ("ItemReader", "ItemSelector", "ItemBatcher", "MaxConcurrency",
                "ToleratedFailurePercentage", "ResultWriter"):
        assert run[key] == original[key], key
    assert run["StateName"] == "Wave"
    assert run["Processor"] == {
        "Arn": "arn:aws:states:us-east-1:123456789012:stateMachine:rollout-Wave",
        "ExecutionType": "EXPRESS",
    }
    (processor,) = local.processors
    assert (processor.name, processor.type, processor.parent, processor.state) == (
        "rollout-Wave", "EXPRESS", "rollout", "Wave")
    assert json.loads(processor.definition) == {
        "StartAt": "Update", "States": {"Update": {"Type": "Pass", "End": True}}}


def test_the_execution_input_travels_only_when_a_template_reads_it() -> None:
    definition = rollout()
    definition["States"]["Wave"]["ItemSelector"] = {"all.$": "$$.Execution.Input.fleet"}
    body = json.loads(rewrite(definition).definition)["States"]["Wave"]["Parameters"][
        "MessageBody"]
    assert body["Context"]["Execution"]["Input.$"] == "$$.Execution.Input"


def test_maps_inside_branches_inline_maps_and_processors_are_rewritten() -> None:
    inner = rollout()["States"]["Wave"]
    inner.pop("Next")
    inner["End"] = True
    nested = rollout()["States"]["Wave"]
    nested["ItemProcessor"] = {
        "ProcessorConfig": {"Mode": "DISTRIBUTED"},
        "StartAt": "Inner Map",
        "States": {"Inner Map": inner},
    }
    nested.pop("Next")
    nested["End"] = True
    definition = {"StartAt": "Both", "States": {"Both": {
        "Type": "Parallel",
        "Branches": [
            {"StartAt": "Outer", "States": {"Outer": nested}},
            {"StartAt": "Inline", "States": {"Inline": {
                "Type": "Map", "ItemsPath": "$.xs", "End": True,
                "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "Deep",
                                  "States": {"Deep": {**inner}}}}}},
        ],
        "End": True}}}
    local = rewrite(definition, machine="m")
    names = {p.name: p for p in local.processors}
    assert set(names) == {"m-Outer", processor_name("m-Outer", "Inner Map"), "m-Deep"}
    branches = json.loads(local.definition)["States"]["Both"]["Branches"]
    assert branches[0]["States"]["Outer"]["Type"] == "Task"
    inline = branches[1]["States"]["Inline"]
    assert inline["Type"] == "Map"  # INLINE stays a Map
    assert inline["ItemProcessor"]["States"]["Deep"]["Type"] == "Task"
    outer = json.loads(names["m-Outer"].definition)
    assert outer["States"]["Inner Map"]["Type"] == "Task"  # nested: rewritten in its machine
    inner_run = json.loads(outer["States"]["Inner Map"]["Parameters"]["MessageBody"]["MapRun"])
    assert inner_run["Processor"]["Arn"].endswith(":stateMachine:" + processor_name(
        "m-Outer", "Inner Map"))


def test_jsonata_is_refused_only_in_a_distributed_map() -> None:
    plain = {"QueryLanguage": "JSONata", "StartAt": "P",
             "States": {"P": {"Type": "Pass", "Output": "{% 1 %}", "End": True}}}
    assert rewrite(plain).definition == json.dumps(plain)  # moto's business, as before
    definition = rollout()
    definition["QueryLanguage"] = "JSONata"
    with pytest.raises(DefinitionError, match="'Wave' is JSONata"):
        rewrite(definition)
    state = rollout()
    state["States"]["Wave"]["QueryLanguage"] = "JSONata"  # the state's own language
    with pytest.raises(DefinitionError, match="'Wave' is JSONata"):
        rewrite(state)
    state["States"]["Wave"]["QueryLanguage"] = "JSONPath"  # kept on the task
    local = rewrite(state)
    assert json.loads(local.definition)["States"]["Wave"]["QueryLanguage"] == "JSONPath"


def test_processor_names_are_valid_and_distinct() -> None:
    assert processor_name("rollout", "Wave") == "rollout-Wave"
    odd = processor_name("rollout", "Wave 1/2")
    assert odd.startswith("rollout-Wave_1_2-")
    assert len(odd) == len("rollout-Wave_1_2-") + 8
    assert processor_name("rollout", "Wave 1/2") != processor_name("rollout", "Wave_1_2")
    long = processor_name("r" * 60, "s" * 60)
    assert len(long) == 80
    assert long != processor_name("r" * 60, "s" * 61)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(QueryLanguage="JSONata"), "JSONata"),
        (lambda s: s["ItemReader"].update(Resource="arn:aws:states:::s3:getObjectX"),
         "ItemReader resource"),
        (lambda s: s["ItemReader"]["ReaderConfig"].update(InputType="MANIFEST"),
         "InputType 'MANIFEST'"),
        (lambda s: s["ResultWriter"].update(Resource="arn:aws:states:::s3:put"),
         "ResultWriter resource"),
        (lambda s: s.update(Items="{% $x %}"), "field Items"),
        (lambda s: s["ItemProcessor"].pop("StartAt"), "StartAt and States"),
        (lambda s: s["ItemProcessor"]["ProcessorConfig"].update(ExecutionType="FAST"),
         "ExecutionType 'FAST'"),
    ],
)
def test_what_the_local_runner_cannot_run_is_refused_when_the_machine_is_created(
    change: Any, message: str
) -> None:
    definition = rollout()
    change(definition["States"]["Wave"])
    with pytest.raises(DefinitionError) as caught:
        rewrite(definition)
    assert message in str(caught.value)
    assert "rollout: " in str(caught.value)


def test_moto_accepts_the_rewrite_and_refuses_the_original() -> None:
    parser = pytest.importorskip("moto.stepfunctions.parser.asl.parse.asl_parser")
    local = rewrite(rollout())
    parser.AmazonStateLanguageParser.parse(local.definition)
    for processor in local.processors:
        parser.AmazonStateLanguageParser.parse(processor.definition)
    with pytest.raises(parser.ASLParserException, match="ItemBatcher"):
        parser.AmazonStateLanguageParser.parse(json.dumps(rollout()))
