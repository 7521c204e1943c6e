"""A map-run request and the settings of its run (pure).

The rewritten Map state (`_definition`) sends one request per attempt: the task token, the
context object, the state's effective input, and the Map state's own fields. From these
`MapRunRequest` names the run (its id is derived from the token, so a request delivered
again names the same run and the same children) and `RunSettings.resolve` evaluates what
the Map state may give as a path into its input:

- `MaxConcurrency` / `MaxConcurrencyPath`: 0 (the default) means no limit on AWS (up to
  10,000 child executions at once); the local runner caps it (`MapRunnerSettings`);
- `ToleratedFailureCount(Path)` / `ToleratedFailurePercentage(Path)`: the map run fails
  with `States.ExceedToleratedFailureThreshold` when the failed items exceed either; with
  neither, one failed item fails it ("Tolerated failure threshold", Step Functions Developer
  Guide: the percentage is failed or timed-out items over all items);
- `ItemBatcher`: `MaxItemsPerBatch(Path)`, `MaxInputBytesPerBatch(Path)` (at most 256 KiB)
  and `BatchInput`, a payload template over the state's input ("ItemBatcher (Map)").
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

from shared.errors import InvalidMessageError
from shared.local._distributed_map._definition import MAP_RUN_REQUEST
from shared.local._distributed_map._errors import MapRunError
from shared.local._distributed_map._paths import evaluate_template, resolve_path

__all__ = ["Batching", "MapRunRequest", "RunSettings", "Tolerance"]

MAX_BATCH_BYTES: Final = 262_144  # 256 KiB: a child execution's input
# Map run ids are derived from the task token: one per attempt of the Map state.
_MAP_RUN_NAMESPACE: Final = uuid.UUID("3b5f4f0e-6d1c-4b0e-9a57-2f1d0f7e5a11")


@dataclass(frozen=True, kw_only=True)
class MapRunRequest:
    """One attempt of a Distributed Map state, as its task sent it."""

    token: str
    context: dict[str, Any]  # the parent's context object ($$), the parts the task sent
    input: Any  # the Map state's effective input (after InputPath)
    spec: dict[str, Any]  # the Map state's fields, plus StateName and Processor

    @classmethod
    def from_body(cls, body: str) -> MapRunRequest:
        """Raises InvalidMessageError when `body` is not a map-run request."""
        try:
            message = json.loads(body)
            if message.get("Kind") != MAP_RUN_REQUEST:
                raise ValueError(f"Kind is {message.get('Kind')!r}, not {MAP_RUN_REQUEST!r}")
            context = dict(message["Context"])
            spec = json.loads(message["MapRun"])
            token = str(context["Task"]["Token"])
            for required in (spec["Processor"]["Arn"], context["StateMachine"]["Id"],
                             context["Execution"]["Id"], spec["StateName"]):
                if not isinstance(required, str):
                    raise TypeError(f"{required!r} is not a string")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidMessageError(f"not a map-run request: {exc!r}") from None
        return cls(token=token, context=context, input=message.get("Input"), spec=spec)

    @property
    def state_name(self) -> str:
        return str(self.spec["StateName"])

    @property
    def processor_arn(self) -> str:
        return str(self.spec["Processor"]["Arn"])

    @property
    def execution_arn(self) -> str:
        """The parent execution's ARN."""
        return str(self.context["Execution"]["Id"])

    @property
    def map_run_id(self) -> str:
        """Stable for the request: a redelivered request resumes the same run."""
        return str(uuid.uuid5(_MAP_RUN_NAMESPACE, self.token))

    @property
    def map_run_arn(self) -> str:
        """`arn:aws:states:<region>:<account>:mapRun:<machine>/<Label or state>:<id>`, the
        shape AWS gives a Map Run."""
        machine = str(self.context["StateMachine"]["Id"]).split(":")
        region, account, name = machine[3], machine[4], machine[-1]
        label = str(self.spec.get("Label") or self.state_name)
        return f"arn:aws:states:{region}:{account}:mapRun:{name}/{label}:{self.map_run_id}"

    def child_name(self, index: int) -> str:
        """The name of the child execution for item or batch `index`: `<map run id>-<index>`.
        Deterministic, so a runner that resumes a run cannot start a child twice."""
        return f"{self.map_run_id}-{index}"

    def child_arn(self, index: int) -> str:
        prefix, _, name = self.processor_arn.rpartition(":stateMachine:")
        return f"{prefix}:execution:{name}:{self.child_name(index)}"


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """How many failed items a map run tolerates. None means not set."""

    count: int | None = None
    percentage: float | None = None

    def exceeded(self, failed: int, total: int) -> bool:
        """True when `failed` of `total` items exceed the threshold (either one when both
        are set; any failure when neither is)."""
        if self.count is None and self.percentage is None:
            return failed > 0
        if self.count is not None and failed > self.count:
            return True
        return self.percentage is not None and failed * 100 > self.percentage * total


@dataclass(frozen=True, kw_only=True)
class Batching:
    """`ItemBatcher`, evaluated: a batch ends at `max_items` items or before it would pass
    `max_bytes` bytes of input. `batch_input` is None when the Map state has no BatchInput."""

    max_items: int | None = None
    max_bytes: int | None = None
    batch_input: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    max_concurrency: int = 0  # 0: no limit (AWS: up to 10,000)
    tolerance: Tolerance = Tolerance()
    batching: Batching | None = None

    @classmethod
    def resolve(cls, request: MapRunRequest) -> RunSettings:
        """The Map state's settings, `...Path` fields read from its input.

        Raises MapRunError(States.Runtime) for a missing path or a value out of range.
        """
        spec, data = request.spec, request.input
        concurrency = _number(spec, "MaxConcurrency", data, minimum=0, default=0)
        count = _number(spec, "ToleratedFailureCount", data, minimum=0)
        percentage = _number(spec, "ToleratedFailurePercentage", data, minimum=0,
                             maximum=100, integer=False)
        batching = None
        batcher = spec.get("ItemBatcher")
        if batcher is not None:
            max_items = _number(batcher, "MaxItemsPerBatch", data, minimum=1)
            max_bytes = _number(batcher, "MaxInputBytesPerBatch", data, minimum=1,
                                maximum=MAX_BATCH_BYTES)
            batch_input = batcher.get("BatchInput")
            if batch_input is not None:
                batch_input = evaluate_template(batch_input, data, context=request.context)
                if not isinstance(batch_input, dict):
                    raise MapRunError("States.Runtime", "ItemBatcher.BatchInput must be an object")
            batching = Batching(
                max_items=None if max_items is None else int(max_items),
                max_bytes=None if max_bytes is None else int(max_bytes),
                batch_input=batch_input,
            )
        return cls(
            max_concurrency=int(concurrency or 0),
            tolerance=Tolerance(count=None if count is None else int(count),
                                percentage=None if percentage is None else float(percentage)),
            batching=batching,
        )


def _number(
    fields: dict[str, Any],
    name: str,
    data: Any,
    *,
    minimum: float,
    maximum: float | None = None,
    integer: bool = True,
    default: float | None = None,
) -> float | None:
    """`fields[name]`, or the value at `fields[name + "Path"]` in `data`; `default` when
    neither is given. Raises MapRunError(States.Runtime) naming the field."""
    if name in fields:
        value, field = fields[name], name
    elif f"{name}Path" in fields:
        field = f"{name}Path"
        value = resolve_path(str(fields[field]), data, field=field)
    else:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or (
        integer and not float(value).is_integer()
    ):
        raise MapRunError("States.Runtime", f"{field}: {value!r} is not a valid number")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise MapRunError("States.Runtime", f"{field}: {value!r} is out of range ({bounds})")
    return float(value)
