"""What a fix to moto is, how it is checked before it is applied, and the record of what was.

A fix replaces private code of moto. Private code changes without notice between releases
(moto 5.2.6 turned a Kinesis record's `created_at` from a float into a datetime, and a
replacement written against 5.2.5 answered HTTP 500 to every GetRecords), so a fix is tied
to what it was verified against:

- `verified`: for each moto version the fix was tested with, the fingerprint of the moto code
  it replaces or relies on (`checks`: a SHA-256 over the source of each named function);
- before anything is applied, every fix's fingerprint is taken from the installed moto and
  `decide` (pure) compares: the installed version must be one the fix names, and the code
  must be what was verified for it (a patched or vendored moto fails the second test).

A fix that fills a gap (`FixKind.GAP`: without it the stack does not work on the emulator)
that cannot be applied stops the server with one line naming the version and the way out;
a fix that only makes the emulator faster (`FixKind.SPEED`) is left out and reported once.
Nothing is skipped silently. `python -m shared.emulator fingerprints` prints the installed
moto's fingerprints, to record a version once the suite has passed on it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import metadata
from typing import Any

from shared.errors import ConfigurationError

__all__ = [
    "Fix",
    "FixKind",
    "FixReport",
    "UnverifiedEmulatorError",
    "apply_fixes",
    "decide",
    "fingerprint",
    "moto_version",
    "replace",
    "restore",
    "unpatched",
]

LOCK_HINT = "install the locked version: `make install` (pip install -r requirements.lock)"


class FixKind(StrEnum):
    GAP = "gap"  # the stack needs it: not applied means the emulator must not start
    SPEED = "speed"  # throughput only: not applied means slower, and said once


class UnverifiedEmulatorError(ConfigurationError):
    """A gap fix cannot be applied to the installed moto: the emulator refuses to start."""


@dataclass(frozen=True)
class Fix:
    """One change to moto. `checks` names the code (`module:Qual.name`) the fix replaces or
    relies on; `verified` maps each moto version it was tested with to the fingerprint of
    that code in that version; `apply` makes the change (once: applying again is a no-op)."""

    name: str
    kind: FixKind
    summary: str
    checks: tuple[str, ...]
    verified: Mapping[str, str]
    apply: Callable[[], None]


@dataclass(frozen=True)
class FixReport:
    """What `apply_fixes` did: the fixes applied, and each one left out with the reason."""

    moto_version: str
    applied: tuple[str, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"moto_version": self.moto_version, "applied": list(self.applied),
                "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FixReport:
        return cls(moto_version=str(data["moto_version"]),
                   applied=tuple(str(n) for n in data["applied"]),
                   skipped={str(k): str(v) for k, v in dict(data["skipped"]).items()})


def moto_version() -> str:
    return metadata.version("moto")


def _resolve(path: str) -> Any:
    """The object `module:Qual.name` names, as moto shipped it: a property's getter, and
    behind a fix's replacement the original it replaced."""
    module_name, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if isinstance(target, property):
        target = target.fget
    while getattr(target, _ORIGINAL, None) is not None:
        target = getattr(target, _ORIGINAL)
    return target


def fingerprint(checks: Iterable[str]) -> str:
    """SHA-256 (first 16 hex digits) over the source of every named object, or a string
    starting with `missing:` when one of them does not exist in the installed moto."""
    digest = hashlib.sha256()
    for path in checks:
        try:
            source = inspect.getsource(_resolve(path))
        except (ImportError, AttributeError, TypeError, OSError):
            return f"missing:{path}"
        digest.update(path.encode() + b"\0" + source.encode() + b"\0")
    return digest.hexdigest()[:16]


def decide(fix: Fix, version: str, found: str) -> str | None:
    """None when `fix` may be applied to moto `version` whose checked code has fingerprint
    `found`; otherwise the reason it may not (pure)."""
    if found.startswith("missing:"):
        return f"moto {version} has no {found.removeprefix('missing:')}"
    expected = fix.verified.get(version)
    if expected is None:
        known = ", ".join(sorted(fix.verified)) or "none"
        return f"moto {version} is not a version it was verified with ({known})"
    if expected != found:
        return (f"moto {version}'s code differs from the code it was verified against "
                f"(fingerprint {found}, expected {expected})")
    return None


def apply_fixes(fixes: Iterable[Fix], *, speed: bool = True) -> FixReport:
    """Check every fix against the installed moto first, then apply them in order: all gap
    fixes, and the speed fixes when `speed`. Fingerprints are taken before the first fix
    changes anything, so a fix that wraps another's target is checked against moto's code.

    Raises UnverifiedEmulatorError (one line: the version, the fix, the way out) when a gap
    fix cannot be applied; nothing has been changed then."""
    version = moto_version()
    fixes = list(fixes)
    reasons = {fix.name: decide(fix, version, fingerprint(fix.checks)) for fix in fixes}
    for fix in fixes:
        reason = reasons[fix.name]
        if fix.kind is FixKind.GAP and reason is not None:
            raise UnverifiedEmulatorError(
                f"the emulator cannot start: its fix {fix.name!r} does not apply: {reason}; "
                + LOCK_HINT)
    applied: list[str] = []
    skipped: dict[str, str] = {}
    for fix in fixes:
        reason = reasons[fix.name]
        if fix.kind is FixKind.SPEED and not speed:
            skipped[fix.name] = "speed fixes switched off (FLEETLINE_EMULATOR_FIXES=0)"
        elif reason is not None:
            skipped[fix.name] = reason
        else:
            fix.apply()
            applied.append(fix.name)
    return FixReport(moto_version=version, applied=tuple(applied), skipped=skipped)


_ORIGINAL = "_fleetline_original"


def unpatched(owner: Any, name: str, marker: str = "_fleetline") -> Any:
    """`owner.name` as it is, or None when it already carries `marker` (each fix is applied
    once; a fix with its own marker may wrap another). A property counts by its getter."""
    current = getattr(owner, name)
    function = current.fget if isinstance(current, property) else current
    return None if getattr(function, marker, False) else current


def replace(owner: Any, name: str, replacement: Any, marker: str = "_fleetline") -> None:
    """Set `owner.name` to `replacement` (a function, or a property whose getter is one),
    marked with `marker` and remembering what it replaced (so fingerprints still read
    moto's code, and tests can put it back)."""
    original = getattr(owner, name)
    function = replacement.fget if isinstance(replacement, property) else replacement
    setattr(function, marker, True)
    setattr(function, _ORIGINAL, original.fget if isinstance(original, property) else original)
    setattr(owner, name, replacement)


def restore(owner: Any, name: str) -> None:
    """Undo `replace` on `owner.name` (tests)."""
    current = getattr(owner, name)
    function = current.fget if isinstance(current, property) else current
    original = getattr(function, _ORIGINAL)
    setattr(owner, name, property(original) if isinstance(current, property) else original)
