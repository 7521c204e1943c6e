"""Running the stack on one machine: the embedded emulator, deployment, and local hosts.

Only `fleetline up/status/down/demo` and the tests use this package; nothing here runs on
AWS. See docs/local.md for what runs where. Public surface:

- `run_up(UpConfig)`, `start_detached`, `stop_running`, `ensure_no_running`: the lifecycle;
- `collect_status` -> `StackStatus`: what `status` prints;
- `plan_gaps` -> `GapPlan`: what the emulator skips, planned from the template (pure);
- `DemoContext`, `DemoStep`, `demo_steps`, `run_demo`: the demo and its extension point
  (entry-point group `fleetline.demo`);
- `UpState`, `read_state`: the state file `.fleetline/state.json`.
"""

from shared.local._control import start_detached, stop_running
from shared.local._demo import DemoContext, DemoStep, demo_steps, run_demo, sample_event
from shared.local._gaps import GapPlan, plan_gaps
from shared.local._state import ChildRecord, Phase, UpState, read_state
from shared.local._status import StackStatus, collect_status
from shared.local._template import StackFacts, TemplateError, load_template, resolve
from shared.local._up import UpConfig, UpError, ensure_no_running, run_up

__all__ = [
    "ChildRecord",
    "DemoContext",
    "DemoStep",
    "GapPlan",
    "Phase",
    "StackFacts",
    "StackStatus",
    "TemplateError",
    "UpConfig",
    "UpError",
    "UpState",
    "collect_status",
    "demo_steps",
    "ensure_no_running",
    "load_template",
    "plan_gaps",
    "read_state",
    "resolve",
    "run_demo",
    "run_up",
    "sample_event",
    "start_detached",
    "stop_running",
]
