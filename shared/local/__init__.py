"""Running the stack on one machine: the embedded emulator, deployment, and local hosts.

Only `fleetline up/status/down/demo`, the services' CLIs, test harnesses, benchmarks and the
tests use this package; nothing here runs on AWS. See docs/local.md for what runs where.
Public surface:

- `run_up(UpConfig)`, `start_detached`, `stop_running`, `ensure_no_running`: the lifecycle;
  `setup_logging`: the JSON logs of `up` and its processes;
- `collect_status` -> `StackStatus`: what `status` prints;
- `plan_gaps` -> `GapPlan`: what the emulator skips, planned from the template (pure), and
  `apply_api_gaps`, which supplies it on a running emulator (a harness that creates a
  template fragment through the API needs it too);
- `serve_map_runs(MapRunnerSettings)` and `map_runs_queue`: the process that runs
  Distributed Map states on the emulator, and the queue it reads;
- `DemoContext`, `DemoStep`, `DemoStepFailed`, `run_demo`: the demo and its extension
  point (entry-point group `fleetline.demo`);
- `UpState` (`Phase`, `ChildRecord`), `read_state`, `state_dir`: the state file
  `.fleetline/state.json` and where it is;
- `command_resources`, `command_clients`: the stack a shell command works on (the
  environment's, else the running `up`'s);
- `spans_path`, `read_spans`, `find_traces`, `waterfall`: the spans `up`'s trace receiver
  kept, and `fleetline trace`'s view of them;
- `endpoint_clients`: clients on the stack's endpoint (the emulator the state file names),
  for commands that talk to a running stack, without writing `os.environ`;
- `render_compose`, `compose_services`, `local_environment`, `predicted_facts`: compose.yaml
  rendered from the template (one container per ECS service, the emulator, the glue);
- `state_transitions`: the state transitions of an execution and of its Distributed Map
  states' child executions (what a benchmark reports);
- `RELAY_IDLE_BACKOFF`: how long `up`'s outbox relay waits after an empty read (a latency
  benchmark sets up its relay the same way).

Names are imported on first use (PEP 562), not with the package: `fleetline up` spawns the
emulator and `up --detach` / `down` do their work before the AWS SDK and the consumers are
imported, which takes seconds of the 30 s readiness budget on a busy machine.
"""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:
    from shared.local._command import command_clients, command_resources, state_dir
    from shared.local._compose import (
        ComposeService,
        compose_services,
        local_environment,
        predicted_facts,
        render_compose,
    )
    from shared.local._consumers import RELAY_IDLE_BACKOFF
    from shared.local._control import ensure_no_running, start_detached, stop_running
    from shared.local._demo import DemoContext, DemoStep, DemoStepFailed, run_demo
    from shared.local._distributed_map import (
        MapRunnerSettings,
        map_runs_queue,
        serve_map_runs,
        state_transitions,
    )
    from shared.local._endpoint import endpoint_clients
    from shared.local._gaps import GapPlan, plan_gaps
    from shared.local._logs import setup_logging
    from shared.local._state import ChildRecord, Phase, UpError, UpState, read_state
    from shared.local._status import StackStatus, collect_status
    from shared.local._supply import apply_api_gaps
    from shared.local._template import StackFacts
    from shared.local._traces import find_traces, read_spans, spans_path, waterfall
    from shared.local._up import UpConfig, run_up

_WHERE = {
    "RELAY_IDLE_BACKOFF": "_consumers",
    "ChildRecord": "_state",
    "ComposeService": "_compose",
    "compose_services": "_compose",
    "local_environment": "_compose",
    "predicted_facts": "_compose",
    "render_compose": "_compose",
    "DemoContext": "_demo",
    "DemoStep": "_demo",
    "DemoStepFailed": "_demo",
    "GapPlan": "_gaps",
    "MapRunnerSettings": "_distributed_map",
    "Phase": "_state",
    "StackFacts": "_template",
    "StackStatus": "_status",
    "UpConfig": "_up",
    "UpError": "_state",
    "UpState": "_state",
    "apply_api_gaps": "_supply",
    "collect_status": "_status",
    "command_clients": "_command",
    "command_resources": "_command",
    "endpoint_clients": "_endpoint",
    "ensure_no_running": "_control",
    "map_runs_queue": "_distributed_map",
    "plan_gaps": "_gaps",
    "read_state": "_state",
    "run_demo": "_demo",
    "run_up": "_up",
    "serve_map_runs": "_distributed_map",
    "setup_logging": "_logs",
    "start_detached": "_control",
    "state_dir": "_command",
    "state_transitions": "_distributed_map",
    "stop_running": "_control",
    "find_traces": "_traces",
    "read_spans": "_traces",
    "spans_path": "_traces",
    "waterfall": "_traces",
}

__all__ = [
    "RELAY_IDLE_BACKOFF",
    "ChildRecord",
    "ComposeService",
    "DemoContext",
    "DemoStep",
    "DemoStepFailed",
    "GapPlan",
    "MapRunnerSettings",
    "Phase",
    "StackFacts",
    "StackStatus",
    "UpConfig",
    "UpError",
    "UpState",
    "apply_api_gaps",
    "collect_status",
    "command_clients",
    "command_resources",
    "compose_services",
    "endpoint_clients",
    "ensure_no_running",
    "find_traces",
    "local_environment",
    "map_runs_queue",
    "plan_gaps",
    "predicted_facts",
    "read_spans",
    "read_state",
    "render_compose",
    "run_demo",
    "run_up",
    "serve_map_runs",
    "setup_logging",
    "spans_path",
    "start_detached",
    "state_dir",
    "state_transitions",
    "stop_running",
    "waterfall",
]


def __getattr__(name: str) -> typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'shared.local' has no attribute {name!r}")
    return getattr(importlib.import_module(f"shared.local.{module}"), name)
