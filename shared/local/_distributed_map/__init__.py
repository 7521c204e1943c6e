"""Step Functions Distributed Map states on the emulator, from the template's own definition.

moto runs no Distributed Map (../../shared/notes/emulator.md, "More gaps"). Locally:

    deploy    local_definition(definition)   Map (DISTRIBUTED) -> Task sqs:sendMessage
              (_definition, pure)            .waitForTaskToken to the map-runs queue;
                                             item processor -> a state machine of its own
    run       map-runs process               request -> items -> ItemSelector -> batches
              (_runner; pure parts:          -> child executions (MaxConcurrency, tolerated
              _request, _items, _progress,   failures) -> ResultWriter -> SendTaskSuccess /
              _results, _paths)              SendTaskFailure with the Map state's error
    count     state_transitions              an execution's and its map runs' children's
              (_transitions)                 states entered, from their histories

Public to the rest of `shared.local`: `local_definition` (what `up` creates),
`map_runs_queue` (the queue's name), `serve_map_runs` and `MapRunnerSettings` (the process),
`state_transitions` (for benchmarks; also `shared.local.state_transitions`), and the errors.
docs/local.md says what is covered and how.

Importing this package imports neither the AWS SDK nor jsonpath-ng: `up` rewrites
definitions before it needs either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.local._distributed_map._definition import (
    LocalDefinition,
    ProcessorMachine,
    local_definition,
    processor_name,
)
from shared.local._distributed_map._errors import DefinitionError, MapRunError

if TYPE_CHECKING:
    from shared.local._distributed_map._runner import MapRunnerSettings, serve_map_runs
    from shared.local._distributed_map._transitions import state_transitions

__all__ = [
    "MAP_RUNS_VISIBILITY_SECONDS",
    "DefinitionError",
    "LocalDefinition",
    "MapRunError",
    "MapRunnerSettings",
    "ProcessorMachine",
    "local_definition",
    "map_runs_queue",
    "processor_name",
    "serve_map_runs",
    "state_transitions",
]

MAP_RUNS_VISIBILITY_SECONDS = 10  # how soon a killed process's runs come back to the next


def map_runs_queue(stack_name: str) -> str:
    """The local queue map-run requests go to: `<stack>-local-map-runs`. It exists only on
    the emulator (`up` creates it), like the local lease table, because on AWS the Map
    state runs inside Step Functions."""
    return f"{stack_name}-local-map-runs"


def __getattr__(name: str) -> Any:
    if name in {"MapRunnerSettings", "serve_map_runs"}:
        from shared.local._distributed_map import _runner

        return getattr(_runner, name)
    if name == "state_transitions":
        from shared.local._distributed_map import _transitions

        return _transitions.state_transitions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
