"""The event envelope: the metadata every fleetline event carries around its `data`."""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Generic, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from shared import tracing
from shared.events._ids import new_event_id
from shared.events._spec import EventSpec, check_event_type_name, spec_of

__all__ = ["DataRef", "Envelope", "TypedEvent"]

_SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")

D = TypeVar("D", bound=BaseModel, covariant=True)
M = TypeVar("M", bound=BaseModel)


class DataRef(BaseModel):
    """Where a claim-checked `data` lives: the S3 object, its sha256 (hex) and size in bytes.
    The object holds exactly the UTF-8 JSON of `data`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    uri: str = Field(pattern=r"^s3://[^/]+/.+$", description="s3://bucket/key")
    sha256: str = Field(description="lower-case hex sha256 of the object's bytes")
    size: int = Field(ge=0, description="object size in bytes")

    @field_validator("sha256")
    @classmethod
    def _sha256_hex(cls, value: str) -> str:
        if not _SHA256_HEX.match(value):
            raise ValueError("must be 64 lower-case hex digits")
        return value

    @property
    def bucket(self) -> str:
        return self.uri[len("s3://") :].split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.uri[len("s3://") :].split("/", 1)[1]


class Envelope(BaseModel):
    """One event, as it travels on every transport (EventBridge `detail`, SQS body, Kinesis
    record, outbox item).

    Immutable; unknown fields are ignored (a newer producer may add some). Exactly what each
    field means:

    - `id`: UUIDv7 string, unique and time-ordered; the deduplication key everywhere. A relay
      republishes under the same id.
    - `type`: PascalCase past tense (`OrderPlaced`); `source`: dotted (`fleetline.orders`);
      `version`: the schema version of `data` (int >= 1). (type, version) selects the model.
    - `time`: when the fact happened, UTC (naive input is taken as UTC).
    - `correlation_id`: the id shared by everything one request caused (missing on input: the
      event's own id); `causation_id`: the id of the event (or command) that directly caused
      this one.
    - `aggregate_id`, `sequence`: the entity and its per-entity counter (>= 0), for ordering
      and for ignoring stale events.
    - `tenant_id`: optional.
    - `trace`: the producer's trace carrier (see `shared.tracing`).
    - `data`: the payload; `data_ref`: set instead when the payload was claim-checked to S3.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(min_length=1)
    type: str
    source: str = Field(min_length=1)
    version: int = Field(ge=1)
    time: datetime
    correlation_id: str = Field(min_length=1)
    causation_id: str | None = None
    aggregate_id: str = Field(min_length=1)
    sequence: int = Field(ge=0)
    tenant_id: str | None = None
    trace: dict[str, str] = Field(default_factory=dict)
    data: dict[str, Any] | None = None
    data_ref: DataRef | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_correlation(cls, value: Any) -> Any:
        # Tolerant reader: an envelope without a correlation id starts its own chain, exactly
        # as `Envelope.new` does when no causation or correlation id is given.
        if isinstance(value, dict) and not value.get("correlation_id") and value.get("id"):
            return {**value, "correlation_id": value["id"]}
        return value

    @field_validator("type")
    @classmethod
    def _type_name(cls, value: str) -> str:
        return check_event_type_name(value)

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @field_serializer("time")
    def _time_z(self, value: datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @model_validator(mode="after")
    def _data_or_ref(self) -> Self:
        if self.data is None and self.data_ref is None:
            raise ValueError("one of data or data_ref must be set")
        return self

    @classmethod
    def new(
        cls,
        data: BaseModel,
        *,
        aggregate_id: str,
        sequence: int,
        correlation_id: str | None = None,
        causation: Envelope | None = None,
        causation_id: str | None = None,
        tenant_id: str | None = None,
        trace: Mapping[str, str] | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
    ) -> Envelope:
        """A new envelope around `data`, an instance of a model declared with `@event_type`.

        Fills `id` (a new UUIDv7), `time` (now, UTC), `type`, `source` and `version` (from the
        model's declaration). `correlation_id` defaults to the causation's correlation id, else
        this event's own id (it starts a new chain). `causation_id` defaults to the causation's
        id; `tenant_id` to the causation's tenant. `trace` defaults to the current trace
        context (so the outbox stores the context at commit time), else the causation's.

        Raises:
            TypeError: `data`'s model is not a declared event type.
            pydantic.ValidationError: a field is invalid (e.g. negative `sequence`).
        """
        spec = spec_of(data)
        new_id = event_id or new_event_id()
        if trace is None:
            carrier = tracing.current_carrier()
            if not carrier and causation is not None:
                carrier = dict(causation.trace)
        else:
            carrier = dict(trace)
        return cls(
            id=new_id,
            type=spec.type,
            source=spec.source,
            version=spec.version,
            time=time or datetime.now(UTC),
            correlation_id=correlation_id
            or (causation.correlation_id if causation is not None else new_id),
            causation_id=causation_id or (causation.id if causation is not None else None),
            aggregate_id=aggregate_id,
            sequence=sequence,
            tenant_id=tenant_id or (causation.tenant_id if causation is not None else None),
            trace=carrier,
            data=data.model_dump(mode="json"),
        )

    def to_json(self) -> str:
        """Compact JSON; fields that are None are left out (they default to None on decode)."""
        return self.model_dump_json(exclude_none=True)


class TypedEvent(Generic[D]):
    """A decoded event: the envelope and its `data` parsed into the registered model.

    `data` is typed by the model when the caller asked for one (`registry.decode_as`), else
    it is a `BaseModel`: narrow with `isinstance` or `data_as(Model)`.
    """

    __slots__ = ("_data", "_envelope", "_spec")

    def __init__(self, envelope: Envelope, data: D, spec: EventSpec) -> None:
        self._envelope = envelope
        self._data = data
        self._spec = spec

    @property
    def envelope(self) -> Envelope:
        return self._envelope

    @property
    def data(self) -> D:
        return self._data

    @property
    def spec(self) -> EventSpec:
        return self._spec

    @property
    def id(self) -> str:
        return self._envelope.id

    @property
    def type(self) -> str:
        return self._envelope.type

    @property
    def version(self) -> int:
        return self._envelope.version

    @property
    def trace(self) -> Mapping[str, str]:
        return self._envelope.trace

    def data_as(self, model: builtins.type[M]) -> M:
        """`data` as an instance of `model`.

        Raises:
            TypeError: the event's data is another model (a different type or version).
        """
        if not isinstance(self._data, model):
            raise TypeError(
                f"event {self.type} v{self.version} carries {type(self._data).__qualname__}, "
                f"not {model.__qualname__}"
            )
        return self._data

    def __repr__(self) -> str:
        return f"TypedEvent(type={self.type!r}, version={self.version}, id={self.id!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TypedEvent):
            return NotImplemented
        return self._envelope == other._envelope and self._data == other._data

    def __hash__(self) -> int:
        return hash(self._envelope.id)
