"""What the registry knows about one event type version, and the naming rules it enforces."""

from __future__ import annotations

import builtins
import functools
import re
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel

__all__ = [
    "IRREGULAR_PAST_TENSE",
    "EventSpec",
    "check_event_source",
    "check_event_type_name",
    "spec_of",
]

_SPEC_ATTRIBUTE: Final = "__fleetline_event_spec__"
_PASCAL_CASE: Final = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_LAST_WORD: Final = re.compile(r"[A-Z][a-z0-9]*$")
_SOURCE: Final = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)+$")

# Event names say what happened: PascalCase, the last word in the past tense. Regular verbs
# end in "ed" (OrderPlaced, FirmwareRolledOut is refused: the verb must come last, so
# FirmwareRolloutCompleted). Irregular past forms are listed here; add to this set, in the
# same commit as the event that needs it, rather than bending the rule.
IRREGULAR_PAST_TENSE: Final = frozenset(
    {
        "Begun", "Bought", "Broken", "Brought", "Built", "Caught", "Chosen", "Cut", "Dealt",
        "Done", "Drawn", "Driven", "Fallen", "Fed", "Felt", "Forgotten", "Found", "Frozen",
        "Given", "Gone", "Grown", "Held", "Hidden", "Hit", "Kept", "Known", "Laid", "Led",
        "Left", "Lent", "Lost", "Made", "Meant", "Met", "Paid", "Put", "Quit", "Read", "Rebuilt",
        "Reset", "Resent", "Rewritten", "Risen", "Run", "Said", "Seen", "Sent", "Set", "Shaken",
        "Shown", "Shut", "Sold", "Spent", "Split", "Spoken", "Stolen", "Struck", "Swept",
        "Taken", "Taught", "Thrown", "Told", "Torn", "Undone", "Unfrozen", "Upheld", "Withdrawn",
        "Woken", "Won", "Worn", "Written",
    }
)  # fmt: skip


@functools.lru_cache(maxsize=1024)  # every decoded envelope checks its type: a handful of names
def check_event_type_name(name: str) -> str:
    """Return `name` when it is a PascalCase past-tense event name, e.g. `OrderPlaced`.

    Raises:
        ValueError: naming `name` and the rule it breaks.
    """
    if not _PASCAL_CASE.match(name):
        raise ValueError(f"event type {name!r} must be PascalCase (e.g. 'OrderPlaced')")
    last = _LAST_WORD.search(name)
    word = last.group(0) if last else name
    if not (word.endswith("ed") or word in IRREGULAR_PAST_TENSE):
        raise ValueError(
            f"event type {name!r} must end with a verb in the past tense ('...ed' or one of "
            f"shared.events.IRREGULAR_PAST_TENSE), got {word!r}"
        )
    return name


def check_event_source(source: str) -> str:
    """Return `source` when it is dotted lower case, e.g. `fleetline.orders`.

    Raises:
        ValueError: naming `source`.
    """
    if not _SOURCE.match(source):
        raise ValueError(
            f"event source {source!r} must be dotted lower case with at least two parts "
            "(e.g. 'fleetline.orders')"
        )
    return source


@dataclass(frozen=True, kw_only=True)
class EventSpec:
    """One (type, version) of an event: its name on the bus, its source and its data model."""

    type: str
    version: int
    source: str
    model: builtins.type[BaseModel]

    @property
    def key(self) -> tuple[str, int]:
        return (self.type, self.version)

    @property
    def schema_name(self) -> str:
        """File stem of the exported JSON Schema: `OrderPlaced.v1`."""
        return f"{self.type}.v{self.version}"


def attach_spec(model: type[BaseModel], spec: EventSpec) -> None:
    setattr(model, _SPEC_ATTRIBUTE, spec)


def spec_of(model: type[BaseModel] | BaseModel) -> EventSpec:
    """The spec a data model class (or instance) was declared with by `@event_type`.

    Raises:
        TypeError: the model was never declared as an event type.
    """
    cls = model if isinstance(model, type) else type(model)
    spec = cls.__dict__.get(_SPEC_ATTRIBUTE)
    if not isinstance(spec, EventSpec):
        raise TypeError(
            f"{cls.__qualname__} is not an event type: declare it with "
            "@shared.events.event_type(name, source=..., version=...)"
        )
    return spec
