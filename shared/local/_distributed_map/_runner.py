"""The map-runs process: carries out the map-run requests of rewritten Distributed Map states.

`serve_map_runs` (the `map-runs` process `fleetline up` supervises, `shared.local._hosts`)
consumes the local map-runs queue with the runtime's `SqsConsumer`, one request per map run,
its visibility extended while the run lasts. `MapRunner.run` carries one request out:

1. settings and items: `RunSettings.resolve`, then the `ItemReader` (S3 GetObject or
   ListObjectsV2) or `ItemsPath`, `ItemSelector`, `ItemBatcher` (`_items`);
2. children: executions of the processor's state machine named `<map run id>-<index>`,
   started in order, at most MaxConcurrency at once (capped locally), followed through one
   ListExecutions (RUNNING) per poll and a DescribeExecution per finished child; once the
   failed items exceed the tolerated threshold no more start and the running ones are
   stopped (`_progress`);
3. result: `ResultWriter` objects in S3, or the array of outputs (`_results`);
4. answer: SendTaskSuccess with the Map state's output, or SendTaskFailure with the error
   and cause AWS gives the Map state (`States.ExceedToleratedFailureThreshold`,
   `States.ItemReaderFailed`, `States.ResultWriterFailed`, `States.Runtime`).

A request delivered again (the process was killed, or stopped mid-run and the message came
back) resumes its run: the run's id comes from the task token, its children are found by
name and adopted, and starting one that exists already is not a second start (moto answers
the running one, or ExecutionAlreadyExists). A run whose parent execution ended, or whose
Map state's TimeoutSeconds passed, stops its children and answers nothing.

Everything the process does is one of a few requests per poll; the decisions are pure and
tested without the emulator (`_items`, `_progress`, `_results`, `_request`, `_paths`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.abc
import structlog

from shared.aws import AwsClients, aws_errors
from shared.consumers import (
    BatchResult,
    DeadLetterMode,
    Message,
    Outcome,
    SqsConsumer,
    SqsSettings,
)
from shared.errors import AwsRequestError, InvalidMessageError
from shared.local._distributed_map._errors import MapRunError
from shared.local._distributed_map._items import (
    Batch,
    ItemSource,
    batch_items,
    input_items,
    item_source,
    listed_items,
    parse_items,
    select_items,
)
from shared.local._distributed_map._paths import evaluate_template
from shared.local._distributed_map._progress import ChildStatus, MapRunProgress
from shared.local._distributed_map._request import MapRunRequest, RunSettings
from shared.local._distributed_map._results import (
    child_record,
    map_output,
    pending_record,
    result_write,
    writer_output,
)

__all__ = ["MapRunner", "MapRunnerSettings", "executions", "serve_map_runs"]

log = structlog.get_logger("fleetline.local.map_runs")

# The parent no longer waits for this token (it timed out, failed or was stopped).
_GONE_TOKEN_CODES: Final = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"})
_MAX_CAUSE: Final = 32_768  # characters SendTaskFailure takes


@dataclass(frozen=True, kw_only=True)
class MapRunnerSettings:
    """How the map-runs process runs map runs. Defaults and why:

    - `max_concurrency` 40: children of one run at once, whatever the Map state asks (its 0,
      "no limit", is up to 10,000 on AWS): each running child is a thread of the emulator
      and a name in every poll, and this machine has two cores;
    - `poll_interval` 0.2 s: how soon a finished child is seen (one ListExecutions a poll);
    - `parent_check_interval` 1 s: how soon a run notices its parent execution has ended;
    - `map_runs` 8: runs at once (a run whose processor holds a Distributed Map waits for
      runs of its own: fewer slots than nesting depth would stall);
    - `attempts` 5: deliveries of one request that end in an unexpected error (not a map
      run's own failure) before the Map state is failed with States.Runtime;
    - `drain_seconds` 1: on SIGTERM a running run is left at once; its request comes back
      to the next process, which resumes it;
    - `receive_wait_seconds` 5: the long poll of the map-runs queue (a request waits at most
      this long for an idle process; an emulator stopping waits for an open poll).
    """

    max_concurrency: int = 40
    poll_interval: float = 0.2
    parent_check_interval: float = 1.0
    map_runs: int = 8
    attempts: int = 5
    drain_seconds: float = 1.0
    receive_wait_seconds: int = 5

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "map_runs", "attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("poll_interval", "parent_check_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")


class _Abandoned(Exception):
    """The parent does not wait for this run any more: stop its children, answer nothing."""


class MapRunner:
    """Runs map-run requests against the endpoint `aws` talks to."""

    def __init__(self, aws: AwsClients, settings: MapRunnerSettings | None = None) -> None:
        self._aws = aws
        self._settings = settings or MapRunnerSettings()

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        """The `BatchHandler` of the map-runs queue: each message a request, run to its end
        (SUCCEEDED: the token is answered), or RETRY after an unexpected error until
        `attempts` deliveries (then the Map state fails with States.Runtime)."""
        outcomes: dict[str, Outcome] = {}
        reasons: dict[str, str] = {}
        delays: dict[str, float] = {}
        for message in messages:
            try:
                request = MapRunRequest.from_body(message.body)
            except InvalidMessageError as exc:  # no token to answer: nothing waits for it
                log.error("dropped a message that is not a map-run request", error=str(exc))
                outcomes[message.id] = Outcome.SUCCEEDED
                continue
            try:
                await self.run(request)
            except Exception as exc:
                if message.receive_count < self._settings.attempts:
                    log.warning("map run interrupted; it resumes on the next delivery",
                                map_run=request.map_run_arn, error=repr(exc),
                                receive_count=message.receive_count)
                    outcomes[message.id] = Outcome.RETRY
                    reasons[message.id] = repr(exc)[:1000]
                    delays[message.id] = 1.0
                    continue
                try:
                    await self._answer_failure(
                        request, "States.Runtime",
                        f"the local map-runs process failed {message.receive_count} times: "
                        f"{exc!r}")
                except Exception as answer:  # the endpoint is down: try again later
                    outcomes[message.id] = Outcome.RETRY
                    reasons[message.id] = repr(answer)[:1000]
                    continue
            outcomes[message.id] = Outcome.SUCCEEDED
        return BatchResult(outcomes=outcomes, reasons=reasons, delays=delays)

    async def run(self, request: MapRunRequest) -> None:
        """Carry out `request` and answer its task token (or, when the parent no longer
        waits, stop its children). Raises what the endpoint raised when it fails
        unexpectedly: the request should then be delivered again, and resumes."""
        bound = log.bind(map_run=request.map_run_arn, parent=request.execution_arn)
        started = time.monotonic()
        try:
            output = await self._execute(request, bound)
        except MapRunError as failure:
            bound.info("map run failed", error=failure.error, cause=failure.cause[:300],
                       seconds=round(time.monotonic() - started, 2))
            await self._answer_failure(request, failure.error, failure.cause)
            return
        except _Abandoned as reason:
            bound.info("map run abandoned", reason=str(reason))
            return
        bound.info("map run succeeded", seconds=round(time.monotonic() - started, 2))
        await self._answer_success(request, output)

    # -- one run ------------------------------------------------------------------------

    async def _execute(self, request: MapRunRequest, bound: Any) -> Any:
        settings = RunSettings.resolve(request)
        items = select_items(await self._read_items(request), request)
        batches = batch_items(items, settings.batching)
        limit = settings.max_concurrency or self._settings.max_concurrency
        progress = MapRunProgress(
            [b.items for b in batches],
            tolerance=settings.tolerance,
            max_concurrency=min(limit, self._settings.max_concurrency),
        )
        described: dict[int, dict[str, Any]] = {}
        await self._adopt(request, progress, described)
        bound.info("map run started", items=len(items), children=len(batches),
                   resumed=sum(1 for i in range(len(batches))
                               if progress.status(i) is not ChildStatus.PENDING))
        await self._drive(request, batches, progress, described)
        bound.info("map run children done", **progress.item_counts())
        records = [
            child_record(described[i]) if i in described else pending_record(batch.input)
            for i, batch in enumerate(batches)
        ]
        output = await self._write_results(request, records)
        if progress.exceeded:
            raise MapRunError(
                "States.ExceedToleratedFailureThreshold",
                f"The specified tolerated failure threshold was exceeded: "
                f"{progress.failed_items} of {progress.total_items} items failed "
                f"(map run {request.map_run_arn})",
            )
        return output

    async def _read_items(self, request: MapRunRequest) -> list[Any]:
        source = item_source(request)
        if source is None:
            return input_items(request)
        s3 = await self._aws.client("s3")
        try:
            with aws_errors():
                if source.list_objects:
                    return await self._list_objects(s3, source)
                args = {k: v for k, v in source.parameters.items()
                        if k in {"Bucket", "Key", "VersionId"}}
                got = await s3.get_object(**args)
                body = await got["Body"].read()
        except AwsRequestError as exc:
            raise MapRunError("States.ItemReaderFailed", str(exc)) from exc
        return parse_items(body, source)

    @staticmethod
    async def _list_objects(s3: Any, source: ItemSource) -> list[Any]:
        contents: list[dict[str, Any]] = []
        args = {k: v for k, v in source.parameters.items() if k in {"Bucket", "Prefix"}}
        token: str | None = None
        while True:
            page = await s3.list_objects_v2(**args, **({"ContinuationToken": token} if token
                                                       else {}))
            contents.extend(page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not token or (source.max_items and len(contents) >= source.max_items):
                return listed_items(contents, source)

    async def _adopt(
        self, request: MapRunRequest, progress: MapRunProgress, described: dict[int, Any]
    ) -> None:
        """Take over the children an earlier delivery of this request started."""
        prefix = f"{request.map_run_id}-"
        existing: dict[int, str] = {}
        async for execution in executions(self._aws, request.processor_arn):
            name = str(execution["name"])
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                existing[int(name[len(prefix):])] = str(execution["status"])
        for index, status in existing.items():
            progress.started(index)
            if status != ChildStatus.RUNNING:
                await self._record(request, index, progress, described)

    async def _drive(
        self,
        request: MapRunRequest,
        batches: Sequence[Batch],
        progress: MapRunProgress,
        described: dict[int, dict[str, Any]],
    ) -> None:
        """Start, follow and (past the threshold) stop children until none runs."""
        deadline = _deadline(request)
        next_parent_check = 0.0
        while True:
            if progress.exceeded:
                await self._stop_running(request, progress, described)
            for index in progress.to_start():
                await self._start(request, index, batches[index].input)
                progress.started(index)
            if progress.done:
                return
            await anyio.sleep(self._settings.poll_interval)
            await self._poll(request, progress, described)
            now = time.monotonic()
            if now >= next_parent_check:
                next_parent_check = now + self._settings.parent_check_interval
                reason = await self._parent_gone(request, deadline)
                if reason is not None:
                    await self._stop_running(request, progress, described)
                    raise _Abandoned(reason)

    async def _start(self, request: MapRunRequest, index: int, child_input: Any) -> None:
        sfn = await self._aws.client("stepfunctions")
        try:
            with aws_errors():
                await sfn.start_execution(
                    stateMachineArn=request.processor_arn,
                    name=request.child_name(index),
                    input=json.dumps(child_input, separators=(",", ":")),
                )
        except AwsRequestError as exc:
            if exc.code != "ExecutionAlreadyExists":  # started by an earlier delivery
                raise

    async def _poll(
        self, request: MapRunRequest, progress: MapRunProgress, described: dict[int, Any]
    ) -> None:
        running = progress.indexes(ChildStatus.RUNNING)
        if not running:
            return
        still = await self._running_names(request)
        for index in running:
            if request.child_name(index) not in still:
                await self._record(request, index, progress, described)

    async def _running_names(self, request: MapRunRequest) -> set[str]:
        return {str(e["name"]) async for e in executions(
            self._aws, request.processor_arn, status=ChildStatus.RUNNING)}

    async def _record(
        self, request: MapRunRequest, index: int, progress: MapRunProgress,
        described: dict[int, Any],
    ) -> None:
        sfn = await self._aws.client("stepfunctions")
        with aws_errors():
            answer = await sfn.describe_execution(executionArn=request.child_arn(index))
        status = ChildStatus(str(answer["status"]))
        if status.finished:
            described[index] = dict(answer)
            progress.finished(index, status)

    async def _stop_running(
        self, request: MapRunRequest, progress: MapRunProgress, described: dict[int, Any]
    ) -> None:
        """Stop every running child (each ends ABORTED) and record how each ended."""
        sfn = await self._aws.client("stepfunctions")
        for index in progress.indexes(ChildStatus.RUNNING):
            try:
                with aws_errors():
                    await sfn.stop_execution(
                        executionArn=request.child_arn(index),
                        error="States.ExceedToleratedFailureThreshold",
                        cause=f"map run {request.map_run_arn} failed",
                    )
            except AwsRequestError as exc:
                if exc.code != "ExecutionDoesNotExist":
                    raise
            with anyio.move_on_after(10):  # moto stops an execution on another thread
                while not progress.status(index).finished:
                    await self._record(request, index, progress, described)
                    await anyio.sleep(0.05)
            if not progress.status(index).finished:
                raise RuntimeError(f"{request.child_arn(index)} did not stop in 10 s")

    async def _parent_gone(self, request: MapRunRequest, deadline: float | None) -> str | None:
        if deadline is not None and time.time() > deadline:
            return "the Map state's TimeoutSeconds passed"
        sfn = await self._aws.client("stepfunctions")
        try:
            with aws_errors():
                parent = await sfn.describe_execution(executionArn=request.execution_arn)
        except AwsRequestError as exc:
            if exc.code == "ExecutionDoesNotExist":
                return "the parent execution does not exist"
            raise
        if parent["status"] != "RUNNING":
            return f"the parent execution is {parent['status']}"
        return None

    async def _write_results(self, request: MapRunRequest, records: list[dict[str, Any]]) -> Any:
        writer = request.spec.get("ResultWriter")
        if writer is None or "Resource" not in writer:
            return map_output(records, writer)
        parameters = evaluate_template(writer.get("Parameters", {}), request.input,
                                       context=request.context)
        write = result_write(
            records,
            parameters=parameters,
            writer_config=writer.get("WriterConfig"),
            map_run_id=request.map_run_id,
            map_run_arn=request.map_run_arn,
        )
        s3 = await self._aws.client("s3")
        try:
            with aws_errors():
                for file in (*write.files, write.manifest):
                    await s3.put_object(Bucket=write.bucket, Key=file.key, Body=file.body,
                                        ContentType="application/json")
        except AwsRequestError as exc:
            raise MapRunError("States.ResultWriterFailed", str(exc)) from exc
        return writer_output(write, request.map_run_arn)

    # -- answers ------------------------------------------------------------------------

    async def _answer_success(self, request: MapRunRequest, output: Any) -> None:
        sfn = await self._aws.client("stepfunctions")
        try:
            with aws_errors():
                await sfn.send_task_success(taskToken=request.token,
                                            output=json.dumps(output, separators=(",", ":")))
        except AwsRequestError as exc:
            if exc.code not in _GONE_TOKEN_CODES:
                raise
            log.info("the parent no longer waits for this map run", map_run=request.map_run_arn,
                     code=exc.code)

    async def _answer_failure(self, request: MapRunRequest, error: str, cause: str) -> None:
        sfn = await self._aws.client("stepfunctions")
        try:
            with aws_errors():
                await sfn.send_task_failure(taskToken=request.token, error=error,
                                            cause=cause[:_MAX_CAUSE])
        except AwsRequestError as exc:
            if exc.code not in _GONE_TOKEN_CODES:
                raise
            log.info("the parent no longer waits for this map run", map_run=request.map_run_arn,
                     code=exc.code)


def _deadline(request: MapRunRequest) -> float | None:
    """When the Map state's TimeoutSeconds passes (epoch seconds), if it has one."""
    timeout = request.spec.get("TimeoutSeconds")
    entered = request.context.get("State", {}).get("EnteredTime")
    if not isinstance(timeout, int | float) or not isinstance(entered, str):
        return None
    try:
        start = dt.datetime.fromisoformat(entered.replace("Z", "+00:00"))
    except ValueError:
        return None
    return start.timestamp() + float(timeout)


async def serve_map_runs(
    aws: AwsClients,
    queue_url: str,
    stop: anyio.Event,
    *,
    settings: MapRunnerSettings | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Consume the map-runs queue at `queue_url` until `stop` is set, then leave running
    runs to the next process (their requests come back after the visibility timeout)."""
    settings = settings or MapRunnerSettings()
    runner = MapRunner(aws, settings)
    consumer = SqsConsumer(
        aws,
        queue_url,
        runner.handle,
        settings=SqsSettings(
            max_messages=1,  # one run per batch: runs end independently
            max_in_flight=settings.map_runs,
            wait_time_seconds=settings.receive_wait_seconds,
            dead_letter=DeadLetterMode.REDRIVE,
            drain_seconds=settings.drain_seconds,
        ),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        task_status.started()
        await stop.wait()
        consumer.stop()


async def executions(
    aws: AwsClients, machine_arn: str, *, status: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every execution of `machine_arn` (with `status`, when given), page after page."""
    sfn = await aws.client("stepfunctions")
    token: str | None = None
    while True:
        with aws_errors():
            page = await sfn.list_executions(
                stateMachineArn=machine_arn, maxResults=1000,
                **({"statusFilter": status} if status else {}),
                **({"nextToken": token} if token else {}))
        for execution in page.get("executions", []):
            yield execution
        token = page.get("nextToken")
        if not token:
            return
