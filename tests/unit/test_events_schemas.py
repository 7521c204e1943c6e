"""JSON Schema export and the claim-check decisions: pure, no I/O."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from shared.events import (
    MAX_PUT_EVENTS_ENTRY_BYTES,
    Envelope,
    EventRegistry,
    event_type,
    export_schemas,
)
from shared.events._claimcheck import claim_check_key, needs_claim_check
from shared.events._schemas import ENVELOPE_SCHEMA_FILE

REG = EventRegistry()


@event_type("GadgetCalibrated", source="fleetline.tests", version=1, registry=REG)
class GadgetCalibratedV1(BaseModel):
    gadget_id: str
    offset: float


@event_type("GadgetCalibrated", source="fleetline.tests", version=2, registry=REG)
class GadgetCalibratedV2(BaseModel):
    gadget_id: str
    offset: float
    operator: str | None = None


def test_export_writes_one_schema_per_type_version_and_the_envelope(tmp_path: Path) -> None:
    stale = tmp_path / "GadgetRemoved.v1.schema.json"
    stale.write_text("{}")
    keep = tmp_path / "README.md"
    keep.write_text("hand-written")

    written = export_schemas(tmp_path, events=REG)

    names = sorted(p.name for p in written)
    assert names == [
        "GadgetCalibrated.v1.schema.json",
        "GadgetCalibrated.v2.schema.json",
        ENVELOPE_SCHEMA_FILE,
        "index.json",
    ]
    assert not stale.exists()
    assert keep.read_text() == "hand-written"
    v2 = json.loads((tmp_path / "GadgetCalibrated.v2.schema.json").read_text())
    assert v2["title"] == "GadgetCalibrated.v2"
    assert v2["x-fleetline-event"] == {
        "type": "GadgetCalibrated", "version": 2, "source": "fleetline.tests",
        "detail-type": "GadgetCalibrated",
    }
    assert set(v2["properties"]) == {"gadget_id", "offset", "operator"}
    assert set(v2["required"]) == {"gadget_id", "offset"}
    envelope = json.loads((tmp_path / ENVELOPE_SCHEMA_FILE).read_text())
    assert {"id", "type", "version", "correlation_id", "data", "data_ref"} <= set(
        envelope["properties"]
    )
    index = json.loads((tmp_path / "index.json").read_text())
    assert [(e["type"], e["version"]) for e in index["events"]] == [
        ("GadgetCalibrated", 1), ("GadgetCalibrated", 2),
    ]


def test_export_is_deterministic(tmp_path: Path) -> None:
    first = {p.name: p.read_text() for p in export_schemas(tmp_path / "a", events=REG)}
    second = {p.name: p.read_text() for p in export_schemas(tmp_path / "b", events=REG)}
    assert first == second


def _envelope(size: int) -> Envelope:
    return Envelope.new(
        GadgetCalibratedV1(gadget_id="g" * size, offset=0.5), aggregate_id="g", sequence=1
    )


def test_claim_check_only_when_the_entry_would_exceed_the_limit() -> None:
    assert not needs_claim_check(_envelope(10))
    assert not needs_claim_check(_envelope(MAX_PUT_EVENTS_ENTRY_BYTES - 2_000))
    assert needs_claim_check(_envelope(MAX_PUT_EVENTS_ENTRY_BYTES))
    assert needs_claim_check(_envelope(100), limit=50)
    small = _envelope(10)
    expected = f"claim-check/fleetline.tests/GadgetCalibrated/v1/{small.id}.json"
    assert claim_check_key(small) == expected
