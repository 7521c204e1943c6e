"""Gap: a callback task whose heartbeats stop fails with `States.HeartbeatTimeout`.

AWS fails a task that set `HeartbeatSeconds` and heard no SendTaskHeartbeat for that long
with `States.HeartbeatTimeout`; its Retry is what brings a killed worker's task back to
another worker (the firmware rollout's batches, the order saga's steps). moto raises its own
HeartbeatTimeoutError but reports every TimeoutError as `States.Timeout`, so a Retry that
names `States.HeartbeatTimeout` never matched and the task failed for good. Here a
heartbeat time-out is reported with its own name (TaskTimedOut, as AWS records it); a
task's TimeoutSeconds still ends as `States.Timeout`.
"""

from __future__ import annotations

from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]


def apply() -> None:
    from moto.stepfunctions.parser.api import HistoryEventType, TaskTimedOutEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_callback as callback,
    )
    from moto.stepfunctions.parser.asl.eval.callback.callback import HeartbeatTimeoutError

    owner = callback.StateTaskServiceCallback
    original = unpatched(owner, "_from_error")
    if original is None:
        return

    def from_error(self: Any, env: Any, ex: Exception) -> Any:
        if not isinstance(ex, HeartbeatTimeoutError):
            return original(self, env=env, ex=ex)
        details: Any = {  # moto's EventDetails: a TypedDict of one key
            "taskTimedOutEventDetails": TaskTimedOutEventDetails(
                resourceType=self._get_sfn_resource_type(),
                resource=self._get_sfn_resource(),
                error="States.HeartbeatTimeout",
            )
        }
        return FailureEvent(
            env=env,
            error_name=StatesErrorName.from_name("States.HeartbeatTimeout"),
            event_type=HistoryEventType.TaskTimedOut,
            event_details=details,
        )

    replace(owner, "_from_error", from_error)


FIX = Fix(
    name="heartbeat-timeouts",
    kind=FixKind.GAP,
    summary="a callback task's heartbeat lapse fails with States.HeartbeatTimeout "
            "(moto: States.Timeout)",
    checks=(
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.service."
        "state_task_service_callback:StateTaskServiceCallback._from_error",
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.service."
        "state_task_service_callback:StateTaskServiceCallback._eval_body",
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.service."
        "state_task_service:StateTaskService._get_timed_out_failure_event",
        "moto.stepfunctions.parser.asl.eval.callback.callback:HeartbeatTimeoutError",
        "moto.stepfunctions.parser.asl.component.common.error_name.states_error_name:"
        "StatesErrorName.from_name",
    ),
    verified={"5.2.6": "9f4370efd6a23164"},
    apply=apply,
)
