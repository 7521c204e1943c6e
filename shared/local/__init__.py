"""Running the stack on one machine: the embedded emulator, deployment, and local hosts.

Only `fleetline up/status/down/demo` and the tests use this package; nothing here runs on
AWS. See docs/local.md for what runs where. Public surface:

- `run_up(UpConfig)`, `start_detached`, `stop_running`, `ensure_no_running`: the lifecycle;
- `collect_status` -> `StackStatus`: what `status` prints;
- `plan_gaps` -> `GapPlan`: what the emulator skips, planned from the template (pure);
- `DemoContext`, `DemoStep`, `DemoStepFailed`, `demo_steps`, `run_demo`: the demo and its
  extension point
  (entry-point group `fleetline.demo`);
- `UpState`, `read_state`: the state file `.fleetline/state.json`;
- `command_resources`, `command_clients`: the stack a shell command works on (the
  environment's, else the running `up`'s);
- `endpoint_clients`: clients on the stack's endpoint (the emulator the state file names),
  for commands that talk to a running stack, without writing `os.environ`;
- `state_transitions`: the state transitions of an execution and of its Distributed Map
  states' child executions (what a benchmark reports).

Names are imported on first use (PEP 562), not with the package: `fleetline up` spawns the
emulator and `up --detach` / `down` do their work before the AWS SDK and the consumers are
imported, which takes seconds of the 30 s readiness budget on a busy machine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.local._command import command_clients, command_resources
    from shared.local._control import ensure_no_running, start_detached, stop_running
    from shared.local._demo import DemoContext, DemoStep, DemoStepFailed, demo_steps, run_demo
    from shared.local._distributed_map import state_transitions
    from shared.local._endpoint import endpoint_clients
    from shared.local._gaps import GapPlan, plan_gaps
    from shared.local._state import ChildRecord, Phase, UpError, UpState, read_state
    from shared.local._status import StackStatus, collect_status
    from shared.local._template import StackFacts, resolve
    from shared.local._up import UpConfig, run_up

_WHERE = {
    "ChildRecord": "_state",
    "DemoContext": "_demo",
    "DemoStep": "_demo",
    "DemoStepFailed": "_demo",
    "GapPlan": "_gaps",
    "Phase": "_state",
    "StackFacts": "_template",
    "StackStatus": "_status",
    "UpConfig": "_up",
    "UpError": "_state",
    "UpState": "_state",
    "collect_status": "_status",
    "demo_steps": "_demo",
    "command_clients": "_command",
    "command_resources": "_command",
    "endpoint_clients": "_endpoint",
    "ensure_no_running": "_control",
    "plan_gaps": "_gaps",
    "read_state": "_state",
    "resolve": "_template",
    "run_demo": "_demo",
    "run_up": "_up",
    "start_detached": "_control",
    "state_transitions": "_distributed_map",
    "stop_running": "_control",
}

__all__ = [
    "ChildRecord",
    "DemoContext",
    "DemoStep",
    "DemoStepFailed",
    "GapPlan",
    "Phase",
    "StackFacts",
    "StackStatus",
    "UpConfig",
    "UpError",
    "UpState",
    "collect_status",
    "command_clients",
    "command_resources",
    "demo_steps",
    "endpoint_clients",
    "ensure_no_running",
    "plan_gaps",
    "read_state",
    "resolve",
    "run_demo",
    "run_up",
    "start_detached",
    "state_transitions",
    "stop_running",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'shared.local' has no attribute {name!r}")
    return getattr(importlib.import_module(f"shared.local.{module}"), name)
