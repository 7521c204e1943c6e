"""From a Map state's input to its child executions' inputs (pure): read, select, batch.

Step Functions Developer Guide, "ItemReader (Map)", "ItemSelector (Map)", "ItemBatcher (Map)":

- items come from the `ItemReader`, or else from the state's input at `ItemsPath` (default
  `$`), which must be an array;
- `ItemReader` with `arn:aws:states:::s3:getObject` reads one object: `ReaderConfig.InputType`
  JSON (an array; `ItemsPointer` may point into an object), JSONL (one value a line) or CSV
  (`CSVHeaderLocation` FIRST_ROW or GIVEN with `CSVHeaders`, `CSVDelimiter` COMMA, PIPE,
  SEMICOLON, SPACE or TAB; every value a string); with `arn:aws:states:::s3:listObjectsV2`
  each object listed is an item (`Key`, `Size`, `Etag`, `LastModified`, `StorageClass`).
  `ReaderConfig.MaxItems(Path)` keeps the first items. What cannot be read or parsed fails
  the map run with `States.ItemReaderFailed`;
- `ItemSelector` (or the older `Parameters`) is a payload template evaluated per item over
  the state's input, with `$$.Map.Item.Index` and `$$.Map.Item.Value` in the context;
- `ItemBatcher` groups items: each child then receives `{"Items": [...]}` plus
  `"BatchInput"` when the state has one. A batch ends at `MaxItemsPerBatch` items, or before
  its input would pass `MaxInputBytesPerBatch` bytes (an item larger than that on its own
  still gets a batch of its own here).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from shared.local._distributed_map._errors import MapRunError
from shared.local._distributed_map._paths import evaluate_template, resolve_path
from shared.local._distributed_map._request import Batching, MapRunRequest

__all__ = [
    "Batch",
    "ItemSource",
    "batch_items",
    "input_items",
    "item_source",
    "listed_items",
    "parse_items",
    "select_items",
]

_DELIMITERS: Final = {"COMMA": ",", "PIPE": "|", "SEMICOLON": ";", "SPACE": " ", "TAB": "\t"}
_READ_FAILED: Final = "States.ItemReaderFailed"


@dataclass(frozen=True, kw_only=True)
class ItemSource:
    """Where a map run's items are, its payload templates evaluated: an S3 object to get
    (`list_objects=False`) or a bucket to list."""

    parameters: dict[str, Any]  # Bucket, Key / Prefix, VersionId ...
    list_objects: bool = False
    input_type: str = "JSON"
    reader_config: dict[str, Any] | None = None
    max_items: int | None = None


@dataclass(frozen=True, kw_only=True)
class Batch:
    """One child execution's input, and how many items it carries (a failed child counts
    all of them)."""

    input: Any
    items: int = 1


def item_source(request: MapRunRequest) -> ItemSource | None:
    """The state's `ItemReader`, evaluated over its input; None when it has none.

    Raises MapRunError(States.Runtime) for a path that matches nothing or a bad MaxItems.
    """
    reader = request.spec.get("ItemReader")
    if reader is None:
        return None
    parameters = evaluate_template(reader.get("Parameters", {}), request.input,
                                   context=request.context)
    config = dict(reader.get("ReaderConfig", {}))
    max_items = config.get("MaxItems")
    if max_items is None and "MaxItemsPath" in config:
        max_items = resolve_path(str(config["MaxItemsPath"]), request.input,
                                 field="MaxItemsPath")
    if max_items is not None and (
        isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0
    ):
        raise MapRunError("States.Runtime", f"ReaderConfig.MaxItems: {max_items!r} is not valid")
    return ItemSource(
        parameters=dict(parameters),
        list_objects=str(reader["Resource"]).endswith("listObjectsV2"),
        input_type=str(config.get("InputType", "JSON")),
        reader_config=config,
        max_items=max_items or None,
    )


def parse_items(body: bytes, source: ItemSource) -> list[Any]:
    """The items in an S3 object's `body`, read as `source.input_type`, at most
    `source.max_items`. Raises MapRunError(States.ItemReaderFailed)."""
    key = source.parameters.get("Key", "?")
    try:
        text = body.decode("utf-8-sig")
        if source.input_type == "JSONL":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif source.input_type == "CSV":
            items = _csv_items(text, source.reader_config or {})
        else:
            items = _json_items(json.loads(text), (source.reader_config or {}).get("ItemsPointer"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MapRunError(
            _READ_FAILED, f"s3://{source.parameters.get('Bucket')}/{key} could not be read as "
            f"{source.input_type}: {exc}") from None
    return items[: source.max_items] if source.max_items else items


def _json_items(document: Any, pointer: str | None) -> list[Any]:
    if pointer:
        for part in pointer.lstrip("/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            document = document[int(part)] if isinstance(document, list) else document[part]
    if not isinstance(document, list):
        raise ValueError("the JSON is not an array")
    return document


def _csv_items(text: str, config: dict[str, Any]) -> list[dict[str, str]]:
    delimiter = _DELIMITERS.get(str(config.get("CSVDelimiter", "COMMA")))
    if delimiter is None:
        raise ValueError(f"CSVDelimiter {config.get('CSVDelimiter')!r} is not known")
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if str(config.get("CSVHeaderLocation", "FIRST_ROW")) == "GIVEN":
        headers = [str(h) for h in config.get("CSVHeaders", [])]
        if not headers:
            raise ValueError("CSVHeaderLocation GIVEN needs CSVHeaders")
    else:
        if not rows:
            return []
        headers, rows = rows[0], rows[1:]
    return [dict(zip(headers, row, strict=False)) for row in rows if row]


def listed_items(contents: Sequence[dict[str, Any]], source: ItemSource) -> list[dict[str, Any]]:
    """ListObjectsV2 `Contents` entries as items, at most `source.max_items`."""
    items = [
        {
            "Key": entry["Key"],
            "Size": entry.get("Size", 0),
            "Etag": entry.get("ETag", ""),
            "LastModified": _iso(entry.get("LastModified")),
            "StorageClass": entry.get("StorageClass", "STANDARD"),
        }
        for entry in contents
    ]
    return items[: source.max_items] if source.max_items else items


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def input_items(request: MapRunRequest) -> list[Any]:
    """The items at `ItemsPath` (default `$`) in the state's input.

    Raises MapRunError(States.Runtime) when the path matches nothing or not an array.
    """
    path = str(request.spec.get("ItemsPath", "$"))
    items = resolve_path(path, request.input, context=request.context, field="ItemsPath")
    if not isinstance(items, list):
        raise MapRunError("States.Runtime",
                          f"ItemsPath {path!r} must select an array, got {type(items).__name__}")
    return items


def select_items(items: Sequence[Any], request: MapRunRequest) -> list[Any]:
    """Every item through the state's `ItemSelector` (or `Parameters`), if it has one.

    Raises MapRunError(States.Runtime) for a path that matches nothing.
    """
    selector = request.spec.get("ItemSelector", request.spec.get("Parameters"))
    if selector is None:
        return list(items)
    return [
        evaluate_template(
            selector,
            request.input,
            context={**request.context, "Map": {"Item": {"Index": index, "Value": item}}},
        )
        for index, item in enumerate(items)
    ]


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def batch_items(items: Sequence[Any], batching: Batching | None) -> list[Batch]:
    """The child executions' inputs: one per item, or batches per `batching`."""
    if batching is None:
        return [Batch(input=item) for item in items]
    envelope: dict[str, Any] = {"Items": []}
    if batching.batch_input is not None:
        envelope["BatchInput"] = batching.batch_input
    empty = _size(envelope)
    batches: list[Batch] = []
    current: list[Any] = []
    size = empty

    def flush() -> None:
        batches.append(Batch(input={**envelope, "Items": list(current)}, items=len(current)))

    for item in items:
        grows = _size(item) + (1 if current else 0)  # and a comma after the first
        full = batching.max_items is not None and len(current) >= batching.max_items
        too_big = batching.max_bytes is not None and size + grows > batching.max_bytes
        if current and (full or too_big):
            flush()
            current, size = [], empty
            grows = _size(item)
        current.append(item)
        size += grows
    if current:
        flush()
    return batches
