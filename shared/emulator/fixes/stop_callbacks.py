"""Gap: StopExecution ends an execution that waits for a task token.

moto marks a stopped execution's program as stopped, but a task waiting for its token
(`.waitForTaskToken`) keeps waiting: the execution stayed RUNNING until someone answered
the token, or for ever. On AWS it is ABORTED at once. The local Distributed Map stops the
running children of a map run that failed (past its tolerated failures, or its parent
gone), and those children commonly wait for a worker's answer. Here stopping an execution
also wakes every task of it that waits for a token, and a stopped execution stays stopped
(the woken task's error no longer turns it FAILED), so it ends ABORTED with an
ExecutionAborted event as moto ends a stopped one (its history also shows the woken task's
TaskTimedOut, which AWS would not); a later SendTaskSuccess for that token is refused as for
any finished execution.
"""

from __future__ import annotations

from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]


def apply() -> None:
    from moto.stepfunctions.parser.asl.eval.environment import Environment
    from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    original = unpatched(ExecutionWorker, "stop")
    original_set_error = unpatched(Environment, "set_error")
    if original is None or original_set_error is None:
        return

    def set_error(self: Any, error: Any) -> None:
        with self._state_mutex:
            if isinstance(self._program_state, ProgramStopped):
                return  # stopped is final
            original_set_error(self, error=error)

    def stop(self: Any, stop_date: Any, error: Any, cause: Any) -> None:
        original(self, stop_date=stop_date, error=error, cause=cause)
        # The pool holds this execution's callbacks (its frames share it): wake them all.
        for endpoint in list(self.env.callback_pool_manager._pool.values()):
            endpoint.interrupt_all()

    replace(ExecutionWorker, "stop", stop)
    replace(Environment, "set_error", set_error)


FIX = Fix(
    name="stop-callbacks",
    kind=FixKind.GAP,
    summary="StopExecution ends an execution that waits for a task token (moto: RUNNING)",
    checks=(
        "moto.stepfunctions.parser.backend.execution_worker:ExecutionWorker.stop",
        "moto.stepfunctions.parser.asl.eval.environment:Environment.set_stop",
        "moto.stepfunctions.parser.asl.eval.environment:Environment.set_error",
        "moto.stepfunctions.parser.asl.eval.environment:Environment.__init__",
        "moto.stepfunctions.parser.asl.eval.callback.callback:CallbackPoolManager.__init__",
        "moto.stepfunctions.parser.asl.eval.callback.callback:CallbackEndpoint.interrupt_all",
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.service."
        "state_task_service_callback:StateTaskServiceCallback._eval_wait_for_task_token",
    ),
    # 5.2.5 has the same fingerprint; recorded only where the suite ran (5.2.6).
    verified={"5.2.6": "da7a21b85a92a502"},
    apply=apply,
)
