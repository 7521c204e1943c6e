"""The local trace receiver `fleetline up` runs, and the waterfall `fleetline trace` prints.

No OTLP collector binary is at hand here, so `up` runs its own receiver: OTLP/HTTP on
loopback (`POST /v1/traces`, protobuf or JSON, gzip or not), the spans appended as JSON lines
to `<state dir>/traces/spans.jsonl` (kept under `MAX_BYTES`: the older half is dropped). Every
process `up` starts exports to it (`OTEL_EXPORTER_OTLP_ENDPOINT`), unless the shell names an
endpoint of its own.

`find_traces(spans, id)` (pure) picks the traces an id names: a trace id (32 hex digits, or
X-Ray's `1-xxxxxxxx-yyyy...`), or any span attribute with that value (an order id, a device
id, a message id), plus the traces those link to or are linked from (a batch's links);
`waterfall(trace)` renders one as text, each span under its parent, with its offset, duration,
service, kind and name.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import structlog

__all__ = [
    "MAX_BYTES",
    "SpanRecord",
    "TraceReceiver",
    "decode_export",
    "find_traces",
    "read_spans",
    "spans_path",
    "waterfall",
]

log = structlog.get_logger("fleetline.local.traces")

MAX_BYTES: Final = 64 * 1024 * 1024
_KINDS: Final = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER",
                 5: "CONSUMER"}
_TRACE_ID: Final = re.compile(r"^(?:1-([0-9a-f]{8})-([0-9a-f]{24})|([0-9a-f]{32}))$")
# Attributes shown beside a span's name in the waterfall, in this order.
_SHOWN: Final = ("http.route", "http.response.status_code", "messaging.destination.name",
                 "fleetline.event.type", "fleetline.aggregate.id", "order.id", "device.id",
                 "rollout.id", "messaging.batch.message_count")


@dataclass(frozen=True, kw_only=True)
class SpanRecord:
    """One span as the receiver keeps it (ids in lower-case hex, times in epoch ns)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start: int
    end: int
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()
    status: str = "UNSET"

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "links": [list(k) for k in self.links]},
                          separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, text: str) -> SpanRecord:
        raw = json.loads(text)
        raw["links"] = tuple(tuple(link) for link in raw.get("links", ()))
        return cls(**raw)


def spans_path(state_dir: Path) -> Path:
    return state_dir / "traces" / "spans.jsonl"


# --------------------------------------------------------------------------- decoding


def _value(any_value: Mapping[str, Any]) -> Any:
    """An OTLP AnyValue (JSON form) as a plain value."""
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in any_value:
            return any_value[key]
    if "intValue" in any_value:
        return int(any_value["intValue"])
    if "arrayValue" in any_value:
        return [_value(v) for v in any_value["arrayValue"].get("values", ())]
    if "kvlistValue" in any_value:
        return {kv["key"]: _value(kv.get("value", {}))
                for kv in any_value["kvlistValue"].get("values", ())}
    return None


def _attributes(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {str(kv["key"]): _value(kv.get("value", {})) for kv in items}


def _hex(value: Any) -> str:
    """An id from OTLP JSON (hex text) or protobuf-to-dict (base64 text of the bytes)."""
    text = str(value or "")
    if re.fullmatch(r"[0-9a-fA-F]*", text):
        return text.lower()
    import base64

    return base64.b64decode(text).hex()


def _records(document: Mapping[str, Any]) -> Iterator[SpanRecord]:
    for resource_spans in document.get("resourceSpans", ()):
        resource = _attributes((resource_spans.get("resource") or {}).get("attributes", ()))
        service = str(resource.get("service.name", "unknown"))
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                kind = span.get("kind", 0)
                kind_name = _KINDS.get(int(kind), "UNSPECIFIED") if isinstance(
                    kind, int | str) and str(kind).isdigit() else str(kind).removeprefix(
                    "SPAN_KIND_")
                parent = _hex(span.get("parentSpanId"))
                status = (span.get("status") or {}).get("code", 0)
                yield SpanRecord(
                    trace_id=_hex(span.get("traceId")), span_id=_hex(span.get("spanId")),
                    parent_span_id=parent or None, name=str(span.get("name", "")),
                    kind=kind_name, start=int(span.get("startTimeUnixNano", 0)),
                    end=int(span.get("endTimeUnixNano", 0)), service=service,
                    attributes=_attributes(span.get("attributes", ())),
                    links=tuple((_hex(link.get("traceId")), _hex(link.get("spanId")))
                                for link in span.get("links", ())),
                    status={0: "UNSET", 1: "OK", 2: "ERROR"}.get(int(status), str(status))
                    if str(status).isdigit() else str(status).removeprefix("STATUS_CODE_"),
                )


def decode_export(body: bytes, content_type: str, encoding: str = "") -> list[SpanRecord]:
    """The spans of one OTLP/HTTP export request (protobuf or JSON, gzip or not).

    Raises:
        ValueError: the body is neither.
    """
    if encoding == "gzip" or body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    if "json" in content_type:
        return list(_records(json.loads(body)))
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception as exc:  # protobuf's DecodeError
        raise ValueError(f"not an OTLP export request: {exc}") from exc
    document = MessageToDict(request, use_integers_for_enums=True)
    return list(_records(document))


# --------------------------------------------------------------------------- receiving


class TraceReceiver:
    """OTLP/HTTP on `host` (loopback), spans appended to `path`."""

    def __init__(self, path: Path, *, host: str = "127.0.0.1") -> None:
        self.path = path
        self.host = host
        self.url: str | None = None
        self.received = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen (a free port) until cancelled; `task_status.started(url)` once listening."""
        from aiohttp import web

        self.path.parent.mkdir(parents=True, exist_ok=True)

        async def traces(request: web.Request) -> web.Response:
            body = await request.read()
            try:
                spans = decode_export(body, request.content_type,
                                      request.headers.get("Content-Encoding", ""))
            except ValueError as exc:
                return web.Response(status=400, text=str(exc))
            await anyio.to_thread.run_sync(self._append, spans)
            if "json" in request.content_type:
                return web.json_response({})
            return web.Response(body=b"", content_type="application/x-protobuf")

        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.add_routes([web.post("/v1/traces", traces)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        sockets: Sequence[Any] = getattr(site._server, "sockets", None) or []
        port = int(sockets[0].getsockname()[1])
        self.url = f"http://{self.host}:{port}"
        task_status.started(self.url)
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    def _append(self, spans: Sequence[SpanRecord]) -> None:
        if not spans:
            return
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(span.to_json() + "\n" for span in spans))
        self.received += len(spans)
        if self.path.stat().st_size > MAX_BYTES:  # keep the newer half
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            self.path.write_text("".join(lines[len(lines) // 2:]), encoding="utf-8")


# --------------------------------------------------------------------------- reading


def read_spans(path: Path) -> list[SpanRecord]:
    """Every span kept at `path` (none when the file does not exist)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(SpanRecord.from_json(line))
            except (ValueError, TypeError):
                continue  # a line cut short by a crash
    return out


def _as_trace_id(text: str) -> str | None:
    found = _TRACE_ID.match(text.strip().lower())
    if not found:
        return None
    return found.group(3) or (found.group(1) + found.group(2))


def find_traces(spans: Sequence[SpanRecord], wanted: str) -> list[list[SpanRecord]]:
    """The traces `wanted` names (see the module docstring), most recent first, then the
    traces linked to or from them (most recent first), each a list of its spans in start
    order (pure)."""
    by_trace: dict[str, list[SpanRecord]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    trace_id = _as_trace_id(wanted)
    if trace_id is not None:
        chosen = {trace_id} if trace_id in by_trace else set()
    else:
        chosen = {s.trace_id for s in spans
                  if any(_names(value, wanted) for value in s.attributes.values())}
    # traces joined by links: a batch linking its messages' producers, or linked from one
    related = set(chosen)
    for span in spans:
        linked = {t for t, _ in span.links}
        if span.trace_id in chosen:
            related |= linked & set(by_trace)
        elif linked & chosen:
            related.add(span.trace_id)
    def ordered(ids: Iterable[str]) -> list[list[SpanRecord]]:
        traces = [sorted(by_trace[t], key=lambda s: (s.start, s.end)) for t in ids]
        return sorted(traces, key=lambda spans_: -spans_[0].start)

    # the traces the id is in first, then those joined to them by links
    return ordered(chosen) + ordered(related - chosen)


def _names(value: Any, wanted: str) -> bool:
    if isinstance(value, list):
        return any(_names(v, wanted) for v in value)
    return str(value) == wanted


def waterfall(trace: Sequence[SpanRecord], *, width: int = 30) -> list[str]:
    """The trace as text: a header, then one line per span under its parent (pure)."""
    if not trace:
        return []
    begin = min(s.start for s in trace)
    finish = max(s.end for s in trace)
    total = max(1, finish - begin)
    ids = {s.span_id for s in trace}
    children: dict[str | None, list[SpanRecord]] = {}
    for span in trace:
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)
    services = sorted({s.service for s in trace})
    lines = [f"trace {trace[0].trace_id}: {len(trace)} spans, {len(services)} services "
             f"({', '.join(services)}), {(finish - begin) / 1e6:.1f} ms"]

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, ()), key=lambda s: s.start):
            offset = (span.start - begin) / 1e6
            took = (span.end - span.start) / 1e6
            left = int((span.start - begin) / total * width)
            bar = " " * left + "█" * max(1, int((span.end - span.start) / total * width))
            shown = " ".join(f"{k}={span.attributes[k]}" for k in _SHOWN
                             if k in span.attributes)
            links = f" links={len(span.links)}" if span.links else ""
            error = " ERROR" if span.status == "ERROR" else ""
            lines.append(f"{offset:9.1f} ms {took:8.1f} ms |{bar:<{width}}| "
                         f"{'  ' * depth}{span.name} [{span.kind} {span.service}]"
                         f"{error}{links}{' ' + shown if shown else ''}")
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return lines
