"""Gap: a callback task can fail with the errors a Distributed Map's run ends with.

Locally a Distributed Map state runs as an `sqs:sendMessage.waitForTaskToken` task answered
by the map-runs process (`shared.local._distributed_map`), which ends a failed map run with
SendTaskFailure and the error AWS gives the Map state: `States.ExceedToleratedFailureThreshold`,
`States.ItemReaderFailed`, `States.ResultWriterFailed` or `States.Runtime`. moto turns every
callback error into a custom error name, and custom names must not start with `States.`, so
such a failure ended the whole execution with `States.Runtime` ("Custom Error Names MUST NOT
begin with the prefix 'States.'") instead of reaching the state's Retry and Catch. Here these
four names become moto's own `States.` error names, as the errors of its own Map states are
(so `States.ALL` and the names themselves match them, `States.TaskFailed` does not); every
other error goes through moto's code unchanged.
"""

from __future__ import annotations

from typing import Any, Final

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "MAP_RUN_ERRORS", "apply"]

MAP_RUN_ERRORS: Final = frozenset(
    {
        "States.ExceedToleratedFailureThreshold",
        "States.ItemReaderFailed",
        "States.ResultWriterFailed",
        "States.Runtime",
    }
)


def apply() -> None:
    from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_callback as callback,
    )

    owner = callback.StateTaskServiceCallback
    original = unpatched(owner, "_get_callback_outcome_failure_event")
    if original is None:
        return

    def failure_event(self: Any, env: Any, ex: Any) -> Any:
        failure = ex.callback_outcome_failure
        if failure.error not in MAP_RUN_ERRORS:
            return original(self, env=env, ex=ex)
        details: Any = {  # moto's EventDetails: a TypedDict of one key
            "taskFailedEventDetails": TaskFailedEventDetails(
                resourceType=self._get_sfn_resource_type(),
                resource=self._get_sfn_resource(),
                error=failure.error,
                cause=failure.cause,
            )
        }
        return FailureEvent(
            env=env,
            error_name=StatesErrorName.from_name(failure.error),
            event_type=HistoryEventType.TaskFailed,
            event_details=details,
        )

    replace(owner, "_get_callback_outcome_failure_event", failure_event)


FIX = Fix(
    name="map-run-errors",
    kind=FixKind.GAP,
    summary="a callback task fails with a Distributed Map's States.* errors (moto: States.Runtime)",
    checks=(
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.service."
        "state_task_service_callback:StateTaskServiceCallback._get_callback_outcome_failure_event",
        "moto.stepfunctions.parser.asl.component.common.error_name.failure_event:"
        "FailureEvent.__init__",
        "moto.stepfunctions.parser.asl.component.common.error_name.states_error_name:"
        "StatesErrorName.from_name",
        "moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type:"
        "StatesErrorNameType.from_name",
    ),
    # 5.2.5 has the same fingerprint; recorded only where the suite ran (5.2.6).
    verified={"5.2.6": "387b554828b051c2"},
    apply=apply,
)
