"""JSON Schema export: one file per (type, version) plus the envelope, into `docs/events/`.

Files (deterministic: sorted keys, two-space indent, trailing newline, so a diff shows real
changes only):

- `envelope.schema.json`: the `Envelope`;
- `<Type>.v<version>.schema.json`: the `data` of that event type version, with
  `x-fleetline-event` = {type, version, source, detail-type} so tooling can route on it;
- `index.json`: every event type version with its source and file.

Generated `*.schema.json` files for event types no longer registered are removed; other files
in the directory are left alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from shared.events._envelope import Envelope
from shared.events._registry import EventRegistry, load_registered_events, registry

__all__ = ["ENVELOPE_SCHEMA_FILE", "export_schemas", "render_schemas"]

ENVELOPE_SCHEMA_FILE: Final = "envelope.schema.json"
_INDEX_FILE: Final = "index.json"
_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"


def _dump(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_schemas(events: EventRegistry) -> dict[str, str]:
    """File name -> JSON text of every schema `export_schemas` writes. Pure."""
    files: dict[str, str] = {}
    envelope = Envelope.model_json_schema()
    envelope["$schema"] = _DRAFT
    envelope["description"] = (
        "The fleetline event envelope. `data` holds the payload described by "
        "<type>.v<version>.schema.json; `data_ref` replaces it when the payload is in S3."
    )
    files[ENVELOPE_SCHEMA_FILE] = _dump(envelope)
    index: list[dict[str, Any]] = []
    for spec in events.specs():
        schema = spec.model.model_json_schema()
        schema["$schema"] = _DRAFT
        schema["title"] = spec.schema_name
        schema["x-fleetline-event"] = {
            "type": spec.type,
            "version": spec.version,
            "source": spec.source,
            "detail-type": spec.type,
        }
        name = f"{spec.schema_name}.schema.json"
        files[name] = _dump(schema)
        index.append(
            {"type": spec.type, "version": spec.version, "source": spec.source, "file": name}
        )
    files[_INDEX_FILE] = _dump({"envelope": ENVELOPE_SCHEMA_FILE, "events": index})
    return files


def export_schemas(
    directory: str | Path,
    *,
    events: EventRegistry | None = None,
    load_entry_points: bool = True,
) -> list[Path]:
    """Write the envelope schema and one JSON Schema per registered (type, version) into
    `directory` (created if missing) and return the paths written, sorted.

    By default the services' event modules are imported first (`load_registered_events`) and
    the process-wide registry is exported.

    Raises:
        shared.errors.ConfigurationError: an entry-point module fails to import.
        OSError: the directory cannot be written.
    """
    if events is None:
        if load_entry_points:
            load_registered_events()
        events = registry
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    files = render_schemas(events)
    for stale in target.glob("*.schema.json"):
        if stale.name not in files:
            stale.unlink()
    written: list[Path] = []
    for name, text in sorted(files.items()):
        path = target / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
