"""Gap: SendTaskFailure keeps its cause.

moto's SendTaskFailure handler reads the task token and the error and drops `cause`, so a
Catch on a callback task saw `"Cause": null` where AWS gives the text the worker sent. The
local Distributed Map fails its task with the cause AWS gives a failed map run, and the
orders saga's steps send theirs; here the handler passes it on to the backend, which
already records it (the state machine parser's backend takes `cause`; moto's plain backend,
used while executions are off, takes none and gets none).
"""

from __future__ import annotations

from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]


def apply() -> None:
    from moto.core.responses import EmptyResult
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend
    from moto.stepfunctions.responses import StepFunctionResponse

    if unpatched(StepFunctionResponse, "send_task_failure") is None:
        return

    def send_task_failure(self: Any) -> Any:
        task_token = self._get_param("taskToken")
        error = self._get_param("error")
        backend = self.stepfunction_backend
        if isinstance(backend, StepFunctionsParserBackend):
            backend.send_task_failure(task_token, error=error, cause=self._get_param("cause"))
        else:
            backend.send_task_failure(task_token, error=error)
        return EmptyResult()

    replace(StepFunctionResponse, "send_task_failure", send_task_failure)


FIX = Fix(
    name="task-failure-cause",
    kind=FixKind.GAP,
    summary="SendTaskFailure passes its cause on (moto drops it)",
    checks=(
        "moto.stepfunctions.responses:StepFunctionResponse.send_task_failure",
        "moto.stepfunctions.responses:StepFunctionResponse.stepfunction_backend",
        "moto.stepfunctions.parser.models:StepFunctionsParserBackend.send_task_failure",
    ),
    # 5.2.5 has the same fingerprint; recorded only where the suite ran (5.2.6).
    verified={"5.2.6": "41abd2d48a776221"},
    apply=apply,
)
