"""Gap: an EventBridge replay replays its window, through the rules it names.

moto's `Replay.replay_events` sends every archived event, whatever `EventStartTime` /
`EventEndTime` say, to every rule of the bus, ignoring `Destination.FilterArns`: a replay of
one hour of the orders bus replayed its whole history. Here only events whose time lies in
[EventStartTime, EventEndTime] are replayed, and, when FilterArns names rules, only through
those rules (each still matching its own pattern), as on AWS. Each replayed event gets a new
id and `replay-name`, as moto (and AWS) give it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply", "in_window"]


def _epoch(value: Any) -> float | None:
    """An event or request time as epoch seconds (moto keeps floats; ISO text too)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def in_window(event_time: Any, start: Any, end: Any) -> bool:
    """True when `event_time` lies in [start, end] (pure; an unknown bound is open)."""
    when, low, high = _epoch(event_time), _epoch(start), _epoch(end)
    if when is None:
        return False
    return (low is None or when >= low) and (high is None or when <= high)


def apply() -> None:
    from moto.core.utils import unix_time
    from moto.events.models import Replay, ReplayState, events_backends
    from moto.moto_api._internal import mock_random as random

    if unpatched(Replay, "replay_events") is None:
        return

    def replay_events(self: Any, archive: Any) -> None:
        bus_name = self.destination["Arn"].split("/")[-1]
        backend = events_backends[self.account_id][self.region]
        bus = backend.describe_event_bus(bus_name)
        wanted = set(self.destination.get("FilterArns") or ())
        rules = [rule for rule in bus.rules.values() if not wanted or rule.arn in wanted]
        for event in list(archive.events):
            if not in_window(event.get("time"), self.event_start_time, self.event_end_time):
                continue
            replayed = dict(event, **{"id": str(random.uuid4()), "replay-name": self.name})
            for rule in rules:
                rule.send_to_targets(dict(replayed), transform_input=False)  # type: ignore[arg-type]
        self.state = ReplayState.COMPLETED
        self.end_time = unix_time()

    replace(Replay, "replay_events", replay_events)


FIX = Fix(
    name="replay-window",
    kind=FixKind.GAP,
    summary="EventBridge replays only the archive window asked for, through FilterArns",
    checks=(
        "moto.events.models:Replay.replay_events",
        "moto.events.models:Replay.__init__",
        "moto.events.models:Rule.send_to_targets",
        "moto.events.models:EventsBackend.start_replay",
    ),
    verified={"5.2.6": "1dae858970e57c15"},
    apply=apply,
)
