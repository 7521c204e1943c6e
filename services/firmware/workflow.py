"""The rollout workflow's definition (Amazon States Language, JSONPath), built here and
written to deploy/statemachines/firmware-rollout.asl.json (`python -m
services.firmware.workflow > deploy/statemachines/firmware-rollout.asl.json`; a unit test
keeps the two equal), so tests can run it with short timings.

    Plan -> Waves (Map, one wave at a time) -> FinishSucceeded
              each wave: Gate -> RunWave (Distributed Map) -> CompleteWave -> Decision
            on Rollout.Aborted: PlanRollback -> RollBack (Distributed Map) -> FinishRolledBack
            on Rollout.Halted: Halted (the rollout is FAILED)
            anything else: FinishFailed -> Failed

Why Standard everywhere: every step waits on a callback token (a batch's devices, an
operator's approval), and only Standard workflows can (Express cannot wait on tokens, and a
rollout runs for hours). Where a step is short and high-volume, the seed's answer is an
Express child; here the high-volume part, commanding devices, is one IoT Jobs call per 100
devices inside a batch's task, so a child is one state transition per 1,000 devices either
way, and the cost of the orchestration grows with batches, not devices (docs/firmware.md).

Every task is `sqs:sendMessage.waitForTaskToken` to FirmwareTasksQueue (services.firmware.
tasks); every Retry is explicit and scoped (heartbeat time-outs: the worker died; the
transient error name the worker answers with), with full jitter.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["SUBSTITUTIONS", "WorkflowTimings", "build_definition", "render_definition"]

SUBSTITUTIONS: Final = ("FirmwareTasksQueueUrl",)
TRANSIENT: Final = "Rollout.Transient"


@dataclass(frozen=True, kw_only=True)
class WorkflowTimings:
    """Production defaults; tests pass short ones. The worker heartbeats a batch every
    `beat_seconds`; the state gives up on it after `heartbeat_seconds` of silence (a killed
    worker), and its Retry sends the task again."""

    beat_seconds: int = 20
    heartbeat_seconds: int = 180
    plan_heartbeat_seconds: int = 120
    retry_interval_seconds: int = 5
    retry_max_attempts: int = 5
    retry_backoff_rate: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.beat_seconds < self.heartbeat_seconds:
            raise ValueError("beat_seconds must be >= 1 and below heartbeat_seconds")


def _retry(errors: list[str], t: WorkflowTimings, attempts: int | None = None) -> dict[str, Any]:
    return {
        "ErrorEquals": errors,
        "IntervalSeconds": t.retry_interval_seconds,
        "MaxAttempts": t.retry_max_attempts if attempts is None else attempts,
        "BackoffRate": t.retry_backoff_rate,
        "JitterStrategy": "FULL",
    }


def _task(action: str, fields: dict[str, Any], t: WorkflowTimings, *,
          heartbeat: int | None = None, trace: str = "$.trace") -> dict[str, Any]:
    # `trace`: the execution's trace carrier (its input's `trace`, passed down through the
    # maps), so the tasks worker's spans are children of the rollout's start.
    body: dict[str, Any] = {"action": action, **fields, "task_token.$": "$$.Task.Token",
                            "trace.$": trace}
    if heartbeat is not None:
        body["beat_seconds"] = t.beat_seconds
    state: dict[str, Any] = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {"QueueUrl": "${FirmwareTasksQueueUrl}", "MessageBody": body},
    }
    if heartbeat is not None:
        state["HeartbeatSeconds"] = heartbeat
        state["Retry"] = [_retry(["States.HeartbeatTimeout", TRANSIENT], t)]
    else:
        state["Retry"] = [_retry([TRANSIENT], t)]
    return state


def _distributed_map(*, reader: dict[str, str], batch_input: dict[str, Any], task_name: str,
                     task: dict[str, Any], results_prefix: str, result_path: str,
                     tolerated: bool) -> dict[str, Any]:
    state: dict[str, Any] = {
        "Type": "Map",
        "ItemReader": {
            "Resource": "arn:aws:states:::s3:getObject",
            "ReaderConfig": {"InputType": "JSON"},
            "Parameters": reader,
        },
        "ItemBatcher": {"MaxItemsPerBatchPath": "$.batch_size", "BatchInput": batch_input},
        "MaxConcurrencyPath": "$.max_concurrency",
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
            "StartAt": task_name,
            "States": {task_name: {**task, "End": True}},
        },
        "ResultWriter": {
            "Resource": "arn:aws:states:::s3:putObject",
            "Parameters": {"Bucket.$": reader["Bucket.$"], "Prefix.$": results_prefix},
        },
        "ResultPath": result_path,
    }
    if tolerated:
        state["ToleratedFailurePercentagePath"] = "$.abort_threshold"
    return state


def build_definition(timings: WorkflowTimings | None = None) -> dict[str, Any]:
    """The ASL document with `${FirmwareTasksQueueUrl}` for DefinitionSubstitutions."""
    t = timings or WorkflowTimings()
    rollout = {"rollout_id.$": "$.rollout_id"}
    catch_all = {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "FinishFailed"}
    wave_states: dict[str, Any] = {
        "Gate": {
            **_task("gate", {**rollout, "wave.$": "$.wave.wave"}, t),
            "Comment": "Answered at once, or parked until an operator approves, resumes or "
                       "aborts.",
            "ResultPath": "$.gate", "Next": "Proceed?",
        },
        "Proceed?": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.gate.proceed", "BooleanEquals": True,
                         "Next": "RunWave"}],
            "Default": "CompleteWave",
        },
        "RunWave": {
            **_distributed_map(
                reader={"Bucket.$": "$.wave.bucket", "Key.$": "$.wave.key"},
                batch_input={"rollout_id.$": "$.rollout_id", "wave.$": "$.wave.wave",
                             "trace.$": "$.trace"},
                task_name="UpdateBatch",
                task=_task("run_batch", {"rollout_id.$": "$.BatchInput.rollout_id",
                                         "wave.$": "$.BatchInput.wave", "items.$": "$.Items"},
                           t, heartbeat=t.heartbeat_seconds, trace="$.BatchInput.trace"),
                results_prefix="States.Format('rollouts/{}/results/wave-{}', $.rollout_id, "
                               "$.wave.wave)",
                result_path="$.run", tolerated=True),
            "Comment": "The wave's devices from its manifest, one callback token per batch; "
                       "ToleratedFailurePercentage is the abort threshold.",
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.run_error",
                       "Next": "CompleteWave"}],
            "Next": "CompleteWave",
        },
        "CompleteWave": {
            **_task("complete_wave", {**rollout, "wave.$": "$.wave.wave"}, t),
            "ResultPath": "$.completion", "Next": "Decision",
        },
        "Decision": {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.completion.decision", "StringEquals": "rollback",
                 "Next": "Aborted"},
                {"Variable": "$.completion.decision", "StringEquals": "halt", "Next": "Halted"},
            ],
            "Default": "WaveDone",
        },
        "Aborted": {"Type": "Fail", "Error": "Rollout.Aborted",
                    "Cause": "the rollout was aborted"},
        "Halted": {"Type": "Fail", "Error": "Rollout.Halted",
                   "Cause": "a wave fell short of its success threshold"},
        "WaveDone": {"Type": "Succeed"},
    }
    states: dict[str, Any] = {
        "Plan": {
            **_task("plan", rollout, t, heartbeat=t.plan_heartbeat_seconds),
            "ResultPath": "$.plan", "Catch": [catch_all], "Next": "Waves",
        },
        "Waves": {
            "Type": "Map",
            "Comment": "One wave after the other: a wave starts only when the one before "
                       "reached its success threshold.",
            "ItemsPath": "$.plan.waves",
            "MaxConcurrency": 1,
            "ItemSelector": {
                "rollout_id.$": "$.rollout_id", "wave.$": "$$.Map.Item.Value",
                "abort_threshold.$": "$.abort_threshold", "batch_size.$": "$.batch_size",
                "max_concurrency.$": "$.max_concurrency", "trace.$": "$.trace",
            },
            "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "Gate",
                              "States": wave_states},
            "ResultPath": None,
            "Catch": [
                {"ErrorEquals": ["Rollout.Aborted"], "ResultPath": "$.error",
                 "Next": "PlanRollback"},
                {"ErrorEquals": ["Rollout.Halted"], "ResultPath": "$.error", "Next": "Halted"},
                catch_all,
            ],
            "Next": "FinishSucceeded",
        },
        "FinishSucceeded": {
            **_task("finish", {"outcome": "succeeded", **rollout}, t),
            "ResultPath": "$.finish", "End": True,
        },
        "PlanRollback": {
            **_task("plan_rollback", rollout, t),
            "ResultPath": "$.rollback", "Catch": [catch_all], "Next": "AnythingToRollBack?",
        },
        "AnythingToRollBack?": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.rollback.size", "NumericGreaterThan": 0,
                         "Next": "RollBack"}],
            "Default": "FinishRolledBack",
        },
        "RollBack": {
            **_distributed_map(
                reader={"Bucket.$": "$.rollback.bucket", "Key.$": "$.rollback.key"},
                batch_input={"rollout_id.$": "$.rollout_id", "wave": 9999,
                             "trace.$": "$.trace"},
                task_name="RollbackBatch",
                task=_task("rollback_batch", {"rollout_id.$": "$.BatchInput.rollout_id",
                                              "wave.$": "$.BatchInput.wave",
                                              "items.$": "$.Items"},
                           t, heartbeat=t.heartbeat_seconds, trace="$.BatchInput.trace"),
                results_prefix="States.Format('rollouts/{}/results/rollback', $.rollout_id)",
                result_path="$.rolled_back", tolerated=False),
            "Comment": "Every device the rollout may have updated, back to its previous "
                       "version.",
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.rollback_error",
                       "Next": "FinishRolledBack"}],
            "Next": "FinishRolledBack",
        },
        "FinishRolledBack": {
            **_task("finish", {"outcome": "rolled_back", **rollout}, t),
            "ResultPath": "$.finish", "End": True,
        },
        "Halted": {"Type": "Fail", "Error": "Rollout.Halted",
                   "Cause": "a wave fell short of its success threshold: the rollout is "
                            "FAILED, later waves were not started"},
        "FinishFailed": {
            **_task("finish", {"outcome": "failed", **rollout}, t),
            "ResultPath": "$.finish", "Next": "Failed",
        },
        "Failed": {"Type": "Fail", "Error": "Rollout.Failed",
                   "Cause": "the rollout workflow failed; see the rollout's reason"},
    }
    states["FinishFailed"]["Retry"] = [_retry(["States.ALL"], t)]
    return {
        "Comment": "A firmware rollout (services/firmware/workflow.py builds this file).",
        "StartAt": "Plan",
        "States": states,
    }


def render_definition(substitutions: dict[str, str],
                      timings: WorkflowTimings | None = None) -> str:
    """The ASL with every `${Name}` replaced, for creating it through the API.
    Raises KeyError when a substitution is missing."""
    text = json.dumps(build_definition(timings), indent=2)
    for name in SUBSTITUTIONS:
        text = text.replace("${" + name + "}", substitutions[name])
    return text


if __name__ == "__main__":  # pragma: no cover - regenerates the deploy file
    sys.stdout.write(json.dumps(build_definition(), indent=2) + "\n")
