"""docs/events/ is the published contract of every event type: it must match the code.
After changing an event model, run `fleetline schemas` and commit the result."""

from __future__ import annotations

from pathlib import Path

from shared.events import export_schemas

DOCS_EVENTS = Path(__file__).resolve().parents[2] / "docs" / "events"


def test_published_schemas_match_the_event_models(tmp_path: Path) -> None:
    written = export_schemas(tmp_path)
    assert written, "no schemas exported: the services' event modules were not registered"
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()}
    published = {p.name: p.read_text() for p in DOCS_EVENTS.iterdir() if p.name in fresh}
    missing = sorted(set(fresh) - set(published))
    stale = sorted(name for name in fresh if name in published and published[name] != fresh[name])
    assert not missing, f"docs/events lacks {missing}: run `fleetline schemas`"
    assert not stale, f"docs/events has stale {stale}: run `fleetline schemas`"
