"""Each emulator fix is checked against the installed moto before it is applied: the
decision is pure, a gap fix that does not apply refuses the whole start with one line, and
a speed fix that does not apply is left out with its reason. No I/O but moto's source."""

from __future__ import annotations

from typing import Any

import pytest

from shared.emulator import FixKind, UnverifiedEmulatorError
from shared.emulator._fixes import Fix, apply_fixes, decide, fingerprint, moto_version
from shared.emulator.fixes import ALL

pytest.importorskip("moto")

CHECKS = ("moto.kinesis.models:Shard.get_records",)


def a_fix(kind: FixKind, verified: dict[str, str], calls: list[str], name: str = "f") -> Fix:
    return Fix(name=name, kind=kind, summary="test", checks=CHECKS, verified=verified,
               apply=lambda: calls.append(name))


def test_decide_names_the_version_the_code_and_what_is_missing() -> None:
    fix = a_fix(FixKind.GAP, {"5.2.5": "aaaa", "5.2.6": "bbbb"}, [])
    assert decide(fix, "5.2.6", "bbbb") is None
    assert decide(fix, "5.2.7", "bbbb") == (
        "moto 5.2.7 is not a version it was verified with (5.2.5, 5.2.6)")
    assert "differs from the code it was verified against (fingerprint cccc, expected bbbb)" in (
        decide(fix, "5.2.6", "cccc") or "")
    assert decide(fix, "5.2.6", "missing:moto.x:Y.z") == "moto 5.2.6 has no moto.x:Y.z"


def test_a_fingerprint_reads_the_source_and_sees_a_missing_name() -> None:
    assert len(fingerprint(CHECKS)) == 16
    assert fingerprint(CHECKS) == fingerprint(CHECKS)
    assert fingerprint(CHECKS) != fingerprint(("moto.kinesis.models:Shard.put_record",))
    assert fingerprint(("moto.kinesis.models:Shard.no_such_method",)) == (
        "missing:moto.kinesis.models:Shard.no_such_method")


def test_an_unverified_gap_fix_refuses_the_start_and_applies_nothing() -> None:
    calls: list[str] = []
    good = a_fix(FixKind.SPEED, {moto_version(): fingerprint(CHECKS)}, calls, "good")
    gap = a_fix(FixKind.GAP, {"0.0.1": "x"}, calls, "gap")
    with pytest.raises(UnverifiedEmulatorError) as caught:
        apply_fixes([good, gap])
    message = str(caught.value)
    assert "\n" not in message
    assert f"moto {moto_version()} is not a version it was verified with (0.0.1)" in message
    assert "'gap'" in message
    assert "make install" in message
    assert "requirements.lock" in message
    assert calls == []  # checked first, so nothing was half applied


def test_an_unverified_speed_fix_is_left_out_with_its_reason() -> None:
    calls: list[str] = []
    verified = {moto_version(): fingerprint(CHECKS)}
    report = apply_fixes([a_fix(FixKind.GAP, verified, calls, "gap"),
                          a_fix(FixKind.SPEED, {moto_version(): "0" * 16}, calls, "speed")])
    assert calls == ["gap"]
    assert report.applied == ("gap",)
    assert "differs from the code it was verified against" in report.skipped["speed"]
    off = apply_fixes([a_fix(FixKind.SPEED, verified, calls, "fast")], speed=False)
    assert off.applied == ()
    assert "FLEETLINE_EMULATOR_FIXES=0" in off.skipped["fast"]
    assert calls == ["gap"]


def test_every_fix_is_verified_for_the_installed_moto() -> None:
    """The lock's moto is one every fix was verified with: `fleetline up` applies them all."""
    version = moto_version()
    reasons: dict[str, Any] = {f.name: decide(f, version, fingerprint(f.checks)) for f in ALL}
    assert reasons == {f.name: None for f in ALL}
    assert [f.kind for f in ALL][:6] == [FixKind.GAP] * 6
    assert len({f.name for f in ALL}) == len(ALL) == 21
