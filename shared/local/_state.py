"""The state file of a running `fleetline up`: `.fleetline/state.json`.

The supervisor (the `up` process, in the foreground or detached) owns the file: it writes it
when it starts, when it is ready, whenever it (re)starts a child, and when it stops. `status`
and `down` only read it. Writes are atomic (temporary file + rename), so a reader never sees
half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError, FleetlineError

__all__ = [
    "ChildRecord",
    "Phase",
    "StackRecord",
    "UpError",
    "UpState",
    "pid_alive",
    "read_state",
    "write_state",
]


class UpError(FleetlineError):
    """`up` cannot continue; the message (one line) says what to do."""


STATE_FILE = "state.json"


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, kw_only=True)
class ChildRecord:
    """One process the supervisor runs: the emulator, a worker, a Lambda host, a pipe, the
    map runs."""

    name: str
    kind: str  # "emulator" | "service" | "lambda" | "pipe" | "api" | "map-runs"
    pid: int
    restarts: int = 0
    log: str | None = None


@dataclass(frozen=True, kw_only=True)
class StackRecord:
    """One stack of a multi-zone `up` (`--zones eu,us`): a zone's primary or secondary stack,
    its Region, and the names of its local processes (`<prefix><logical id>`)."""

    zone: str
    role: str  # "primary" | "secondary"
    region: str
    stack_name: str
    prefix: str = ""  # of its children's names: "" for the only stack, else "eu-", "eu2-"
    urls: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackRecord:
        return cls(zone=str(data["zone"]), role=str(data["role"]), region=str(data["region"]),
                   stack_name=str(data["stack_name"]), prefix=str(data.get("prefix", "")),
                   urls={str(k): str(v) for k, v in dict(data.get("urls", {})).items()},
                   problems={str(k): str(v) for k, v in dict(data.get("problems", {})).items()})


@dataclass(frozen=True, kw_only=True)
class UpState:
    stack_name: str
    endpoint: str | None  # None: real AWS
    supervisor_pid: int
    region: str | None = None  # of the (first) stack; None: the environment's (older files)
    stacks: tuple[StackRecord, ...] = ()  # every zone's stack, the first one first
    phase: Phase = Phase.STARTING
    emulator_port: int | None = None
    children: tuple[ChildRecord, ...] = ()
    urls: dict[str, str] = field(default_factory=dict)  # "api" -> http://127.0.0.1:N ...
    skipped: dict[str, str] = field(default_factory=dict)  # process -> why it is not running
    problems: dict[str, str] = field(default_factory=dict)  # logical id -> why not supplied
    error: str | None = None
    ready_seconds: float | None = None

    def with_child(self, child: ChildRecord) -> UpState:
        """A copy where `child` replaces the record of the same name (or is added)."""
        others = tuple(c for c in self.children if c.name != child.name)
        return replace(self, children=(*others, child))

    def without_child(self, name: str) -> UpState:
        return replace(self, children=tuple(c for c in self.children if c.name != name))

    def zones(self) -> list[str]:
        """The zones this `up` runs, in order (with a secondary as `eu:secondary`)."""
        return [s.zone if s.role == "primary" else f"{s.zone}:{s.role}" for s in self.stacks]

    def for_zone(self, zone: str | None, role: str = "primary") -> UpState:
        """This state as seen by one stack: its name, Region, URLs, problems and local
        processes. `zone` is a zone name (`eu`) or a zone and role (`eu:secondary`);
        `zone=None` is the first stack; a state of one stack (or an older file)
        is itself for its own zone and for None.

        Raises ConfigurationError naming the zones that run when `zone` is not one."""
        if not self.stacks:
            return self
        if zone is not None and ":" in zone:  # "eu:secondary"
            zone, role = zone.split(":", 1)
        if zone is None:
            found = self.stacks[0]
        else:
            match = [s for s in self.stacks if s.zone == zone and s.role == role]
            if not match:
                raise ConfigurationError(
                    f"zone {zone}{'' if role == 'primary' else ' (' + role + ')'} is not up "
                    f"here (up runs {', '.join(self.zones())}): run `fleetline up --zones ...`")
            found = match[0]
        if len(self.stacks) == 1:
            return replace(self, region=found.region)
        return replace(
            self, stack_name=found.stack_name, region=found.region, urls=dict(found.urls),
            problems=dict(found.problems), stacks=(found,),
            children=tuple(c for c in self.children
                           if c.name.startswith(found.prefix) or c.kind == "emulator"),
            skipped={k: v for k, v in self.skipped.items() if k.startswith(found.prefix)})

    def pids(self) -> list[int]:
        """Every pid this run owns, the supervisor first."""
        return [self.supervisor_pid, *(c.pid for c in self.children)]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["children"] = [asdict(c) for c in self.children]
        data["stacks"] = [s.to_json() for s in self.stacks]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpState:
        """Raises ConfigurationError when a field is missing or has the wrong type."""
        try:
            return cls(
                stack_name=str(data["stack_name"]),
                endpoint=None if data.get("endpoint") is None else str(data["endpoint"]),
                supervisor_pid=int(data["supervisor_pid"]),
                region=None if data.get("region") is None else str(data["region"]),
                stacks=tuple(StackRecord.from_json(s) for s in data.get("stacks", [])),
                phase=Phase(data.get("phase", Phase.STARTING)),
                emulator_port=(
                    None if data.get("emulator_port") is None else int(data["emulator_port"])
                ),
                children=tuple(
                    ChildRecord(
                        name=str(c["name"]),
                        kind=str(c["kind"]),
                        pid=int(c["pid"]),
                        restarts=int(c.get("restarts", 0)),
                        log=c.get("log"),
                    )
                    for c in data.get("children", [])
                ),
                urls={str(k): str(v) for k, v in dict(data.get("urls", {})).items()},
                problems={str(k): str(v) for k, v in dict(data.get("problems", {})).items()},
                skipped={str(k): str(v) for k, v in dict(data.get("skipped", {})).items()},
                error=data.get("error"),
                ready_seconds=data.get("ready_seconds"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"state file is damaged ({exc!r}): remove .fleetline/state.json after "
                "checking no fleetline process runs"
            ) from None


def write_state(state_dir: Path, state: UpState) -> Path:
    """Atomically replace `state_dir/state.json`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / STATE_FILE
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".state-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(state.to_json(), handle, indent=2)
    os.replace(tmp, target)
    return target


def read_state(state_dir: Path) -> UpState | None:
    """The state of the last `up` in `state_dir`, or None when there is none.

    Raises ConfigurationError when the file exists but cannot be read back.
    """
    path = state_dir / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigurationError(f"{path} is not JSON: remove it and run `fleetline up`") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} is not a JSON object: remove it")
    return UpState.from_json(data)


def pid_alive(pid: int) -> bool:
    """True when a process with `pid` exists (zombies included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
