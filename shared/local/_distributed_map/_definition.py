"""A state machine definition as the emulator runs it: Distributed Map states replaced (pure).

moto cannot run a Distributed Map (its parser refuses `ItemBatcher`, `ProcessorConfig` and a
numeric `ToleratedFailurePercentage`; an `ItemReader` fails at run time). `local_definition`
rewrites the template's definition, and nothing else, so the same workflow runs locally:

- each Map state whose `ItemProcessor.ProcessorConfig.Mode` is DISTRIBUTED becomes a Task
  `arn:aws:states:::sqs:sendMessage.waitForTaskToken` that sends a map-run request to the
  local map-runs queue and waits for its task token. The task keeps what the Map state does
  with its input, result and errors (`InputPath`, `ResultSelector`, `ResultPath`,
  `OutputPath`, `Retry`, `Catch`, `Next` / `End`, `TimeoutSeconds`), so a retry is a new
  map run and a Catch sees the map run's error, as on AWS;
- the request carries the task token, the parts of the context object a payload template
  may read (`$$.Execution...`, `$$.StateMachine...`, `$$.State...`), the state's effective
  input, and the Map state's own fields as a JSON string (a string, so the emulator does not
  evaluate their `.$` fields: the map-runs process does, per item);
- the item processor becomes a state machine of its own, `<machine>-<state>`, of the
  `ExecutionType` it names (STANDARD or EXPRESS), itself rewritten when it holds a
  Distributed Map. The map-runs process starts one execution of it per item or batch.

INLINE Map states, Parallel branches and everything else are kept as written (Map states
nested in them are rewritten too). A Distributed Map state in JSONata, or with an item
source or result writer the local runner cannot carry out, raises DefinitionError when the
machine is created, not when it first runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from shared.local._distributed_map._errors import DefinitionError

__all__ = [
    "MAP_RUN_REQUEST",
    "MAP_RUN_TASK",
    "LocalDefinition",
    "ProcessorMachine",
    "local_definition",
    "processor_name",
]

MAP_RUN_TASK: Final = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
MAP_RUN_REQUEST: Final = "fleetline.local/map-run"  # the request's "Kind"

READERS: Final = frozenset({"arn:aws:states:::s3:getObject", "arn:aws:states:::s3:listObjectsV2"})
READER_INPUT_TYPES: Final = frozenset({"JSON", "JSONL", "CSV"})
WRITERS: Final = frozenset({"arn:aws:states:::s3:putObject"})

# What the task keeps of the Map state: input, result and error handling.
_TASK_FIELDS: Final = (
    "Comment", "InputPath", "ResultSelector", "ResultPath", "OutputPath", "Retry", "Catch",
    "Next", "End", "TimeoutSeconds", "TimeoutSecondsPath", "Assign", "QueryLanguage",
)
# What the map-runs process carries out.
_MAP_RUN_FIELDS: Final = (
    "ItemsPath", "ItemReader", "ItemSelector", "Parameters", "ItemBatcher", "MaxConcurrency",
    "MaxConcurrencyPath", "ToleratedFailurePercentage", "ToleratedFailurePercentagePath",
    "ToleratedFailureCount", "ToleratedFailureCountPath", "ResultWriter", "Label",
)
_MAP_FIELDS: Final = frozenset({"Type", "ItemProcessor", *_TASK_FIELDS, *_MAP_RUN_FIELDS})

# The context object a payload template of the Map state may read (`$$...`).
_CONTEXT: Final = {
    "Execution": {
        "Id.$": "$$.Execution.Id",
        "Name.$": "$$.Execution.Name",
        "StartTime.$": "$$.Execution.StartTime",
        "RoleArn.$": "$$.Execution.RoleArn",
    },
    "StateMachine": {"Id.$": "$$.StateMachine.Id", "Name.$": "$$.StateMachine.Name"},
    "State": {
        "Name.$": "$$.State.Name",
        "EnteredTime.$": "$$.State.EnteredTime",
        "RetryCount.$": "$$.State.RetryCount",
    },
    "Task": {"Token.$": "$$.Task.Token"},
}
_NAME_LIMIT: Final = 80  # characters in a state machine name
_UNSAFE: Final = re.compile(r"[^0-9A-Za-z_-]")


@dataclass(frozen=True, kw_only=True)
class ProcessorMachine:
    """The state machine that runs one Distributed Map state's item processor."""

    name: str
    definition: str
    type: str  # "STANDARD" | "EXPRESS": the processor's ExecutionType
    parent: str  # the machine holding the Map state
    state: str  # the Map state's name


@dataclass(frozen=True, kw_only=True)
class LocalDefinition:
    """What to create on the emulator for one state machine of the template: its definition
    with Distributed Map states rewritten, and the processors' machines (nested ones too)."""

    definition: str
    processors: tuple[ProcessorMachine, ...] = ()

    @property
    def has_distributed_maps(self) -> bool:
        return bool(self.processors)


def processor_name(machine: str, state: str) -> str:
    """`<machine>-<state>`, a valid state machine name: characters outside [0-9A-Za-z_-]
    and names over 80 characters get a short digest of the state's name, so two states never
    share one."""
    safe = _UNSAFE.sub("_", state)
    name = f"{machine}-{safe}"
    if safe == state and len(name) <= _NAME_LIMIT:
        return name
    digest = hashlib.sha256(state.encode()).hexdigest()[:8]
    return f"{name[: _NAME_LIMIT - 9]}-{digest}"


def local_definition(
    definition: str | dict[str, Any],
    *,
    machine: str,
    region: str,
    account: str,
    queue_url: str,
) -> LocalDefinition:
    """`definition` (ASL JSON) of the state machine named `machine`, as the emulator runs it.

    `queue_url` is the map-runs queue the rewritten states send their requests to; `region`
    and `account` name the processors' ARNs. A definition without Distributed Map states
    comes back unchanged (same text).

    Raises DefinitionError naming the state, for a Distributed Map state in JSONata, without a
    processor, or with an item reader / result writer the local runner cannot carry out.
    """
    if isinstance(definition, str):
        try:
            parsed = json.loads(definition)
        except json.JSONDecodeError as exc:
            raise DefinitionError(f"{machine}: the definition is not JSON: {exc}") from None
    else:
        parsed = copy.deepcopy(definition)
    if not isinstance(parsed, dict):
        raise DefinitionError(f"{machine}: the definition is not a JSON object")
    rewriter = _Rewriter(region=region, account=account, queue_url=queue_url)
    changed = rewriter.machine(parsed, machine)
    if not changed:
        text = definition if isinstance(definition, str) else json.dumps(definition)
        return LocalDefinition(definition=text)
    return LocalDefinition(definition=json.dumps(parsed), processors=tuple(rewriter.processors))


@dataclass
class _Rewriter:
    region: str
    account: str
    queue_url: str

    def __post_init__(self) -> None:
        self.processors: list[ProcessorMachine] = []

    def machine(self, definition: dict[str, Any], name: str) -> bool:
        """Rewrite `definition` in place; True when it held a Distributed Map state."""
        language = str(definition.get("QueryLanguage", "JSONPath"))
        return self._states(definition.get("States", {}), name, language)

    def _states(self, states: dict[str, Any], machine: str, language: str) -> bool:
        changed = False
        for state_name, state in list(states.items()):
            if not isinstance(state, dict):
                continue
            if state.get("Type") == "Parallel":
                for branch in state.get("Branches", []):
                    changed |= self._states(branch.get("States", {}), machine, language)
            elif state.get("Type") == "Map":
                processor = state.get("ItemProcessor") or state.get("Iterator") or {}
                mode = processor.get("ProcessorConfig", {}).get("Mode", "INLINE")
                if mode == "DISTRIBUTED":
                    if state.get("QueryLanguage", language) == "JSONata":
                        raise DefinitionError(
                            f"{machine}: Distributed Map state {state_name!r} is JSONata: "
                            "the local runner runs JSONPath ones")
                    states[state_name] = self._distributed(state, state_name, machine)
                    changed = True
                else:
                    changed |= self._states(processor.get("States", {}), machine, language)
        return changed

    def _distributed(self, state: dict[str, Any], name: str, machine: str) -> dict[str, Any]:
        where = f"{machine}: Distributed Map state {name!r}"
        unknown = sorted(set(state) - _MAP_FIELDS)
        if unknown:
            raise DefinitionError(f"{where}: field {unknown[0]} is not supported locally")
        _check_reader(state.get("ItemReader"), where)
        _check_writer(state.get("ResultWriter"), where)
        processor = dict(state.get("ItemProcessor") or {})
        config = processor.pop("ProcessorConfig", {})
        if "StartAt" not in processor or not isinstance(processor.get("States"), dict):
            raise DefinitionError(f"{where}: ItemProcessor needs StartAt and States")
        execution_type = str(config.get("ExecutionType", "STANDARD"))
        if execution_type not in {"STANDARD", "EXPRESS"}:
            raise DefinitionError(f"{where}: ExecutionType {execution_type!r} is not known")
        child = processor_name(machine, name)
        self.machine(processor, child)  # nested Distributed Maps get their own processors
        self.processors.append(
            ProcessorMachine(
                name=child,
                definition=json.dumps(processor),
                type=execution_type,
                parent=machine,
                state=name,
            )
        )
        run: dict[str, Any] = {key: state[key] for key in _MAP_RUN_FIELDS if key in state}
        run["StateName"] = name
        run["Processor"] = {
            "Arn": f"arn:aws:states:{self.region}:{self.account}:stateMachine:{child}",
            "ExecutionType": execution_type,
        }
        encoded = json.dumps(run, sort_keys=True, separators=(",", ":"))
        context = copy.deepcopy(_CONTEXT)
        if _reads_execution_input(encoded):
            context["Execution"]["Input.$"] = "$$.Execution.Input"
        task: dict[str, Any] = {
            "Type": "Task",
            "Resource": MAP_RUN_TASK,
            "Parameters": {
                "QueueUrl": self.queue_url,
                "MessageBody": {
                    "Kind": MAP_RUN_REQUEST,
                    "Context": context,
                    "Input.$": "$",
                    "MapRun": encoded,
                },
            },
        }
        task.update({key: state[key] for key in _TASK_FIELDS if key in state})
        return task


def _reads_execution_input(encoded: str) -> bool:
    """True when a payload template of the Map state reads the execution's input (carried
    only then: it can be as large as the whole request may be)."""
    return any(mark in encoded for mark in ('$$.Execution.Input', '"$$.Execution"', '"$$"'))


def _check_reader(reader: Any, where: str) -> None:
    if reader is None:
        return
    if not isinstance(reader, dict) or reader.get("Resource") not in READERS:
        resource = reader.get("Resource") if isinstance(reader, dict) else reader
        raise DefinitionError(
            f"{where}: ItemReader resource {resource!r} is not supported locally "
            f"({', '.join(sorted(READERS))})"
        )
    if "Arguments" in reader:
        raise DefinitionError(f"{where}: ItemReader Arguments are JSONata")
    input_type = reader.get("ReaderConfig", {}).get("InputType", "JSON")
    if reader["Resource"].endswith("getObject") and input_type not in READER_INPUT_TYPES:
        raise DefinitionError(
            f"{where}: ItemReader InputType {input_type!r} is not supported locally "
            f"({', '.join(sorted(READER_INPUT_TYPES))})"
        )


def _check_writer(writer: Any, where: str) -> None:
    if writer is None:
        return
    if not isinstance(writer, dict) or "Arguments" in writer:
        raise DefinitionError(f"{where}: ResultWriter must be a JSONPath object")
    if "Resource" in writer and writer["Resource"] not in WRITERS:
        raise DefinitionError(
            f"{where}: ResultWriter resource {writer['Resource']!r} is not supported locally")
