"""Shared pieces of bench/runtime_bench.py: the workload's event, counting hooks, item sizes.

Counting is done in the worker process with botocore events, the same for boto3 and
aiobotocore: `before-send` counts HTTP requests (retries included), `before-parameter-build`
sees each DynamoDB call's parameters and counts write and read operations.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel

from shared.events import EventRegistry, event_type

BENCH_EVENTS = EventRegistry()


@event_type("DeviceReported", source="fleetline.bench", registry=BENCH_EVENTS)
class DeviceReported(BaseModel):
    device_id: str
    value: float


@event_type("ReadingRecorded", source="fleetline.bench", registry=BENCH_EVENTS)
class ReadingRecorded(BaseModel):
    device_id: str
    value: float
    count: int


class Tally:
    """Requests and DynamoDB capacity operations seen by one process."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.standard_writes = 0  # PutItem / UpdateItem / DeleteItem / BatchWriteItem items
        self.transactional_writes = 0  # items inside TransactWriteItems
        self.read_units = 0.0  # per item read of at most 4 KB

    def reset(self) -> None:
        self.requests.clear()
        self.standard_writes = 0
        self.transactional_writes = 0
        self.read_units = 0.0

    def on_send(self, event_name: str, **_: Any) -> None:
        _, _, key = event_name.partition(".")
        self.requests[key] += 1

    def on_statements(self, request: Any, **_: Any) -> None:
        """BatchExecuteStatement: its body is encoded by the caller
        (`AwsClients.send_encoded`), so the statements are counted from the request as sent;
        each write is a standard write."""
        body = orjson.loads(request.body or b"{}")
        for statement in body.get("Statements", ()):
            if str(statement.get("Statement", "")).lstrip().upper().startswith("SELECT"):
                self.read_units += 1.0 if statement.get("ConsistentRead") else 0.5
            else:
                self.standard_writes += 1

    def on_params(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        operation = model.name
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            self.standard_writes += 1
        elif operation == "TransactWriteItems":
            self.transactional_writes += len(params.get("TransactItems", ()))
        elif operation == "BatchWriteItem":
            self.standard_writes += sum(len(v) for v in params.get("RequestItems", {}).values())
        elif operation == "GetItem":
            self.read_units += 1.0 if params.get("ConsistentRead") else 0.5
        elif operation == "BatchGetItem":
            for request in params.get("RequestItems", {}).values():
                per_item = 1.0 if request.get("ConsistentRead") else 0.5
                self.read_units += per_item * len(request.get("Keys", ()))

    def register(self, events: Any) -> None:
        """Hook into a botocore / aiobotocore session's event system."""
        events.register("before-send", self.on_send)
        events.register("before-parameter-build.dynamodb", self.on_params)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "standard_writes": self.standard_writes,
            "transactional_writes": self.transactional_writes,
            "read_units": self.read_units,
        }


def _value_size(attr: Mapping[str, Any]) -> int:
    ((kind, raw),) = attr.items()
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        digits = raw.lstrip("-").replace(".", "").lstrip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(raw)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(v.encode()) for v in raw)
    if kind == "NS":
        return sum((len(v) + 1) // 2 + 1 for v in raw)
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in raw.items())
    return len(str(raw))


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    """DynamoDB's item size: attribute names plus values, in bytes (AWS's published rules)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def units_per_write(max_item_bytes: int) -> int:
    """Write units one write of an item of that size costs (1 KB each, at least 1)."""
    return max(1, math.ceil(max_item_bytes / 1024))


class SpanSink:
    """An OTLP/HTTP endpoint for a benchmark's workers: accepts `POST /v1/traces`, counts
    requests and bytes, keeps nothing (so the measured cost is the worker's: making spans,
    encoding and sending them; not a collector's). A threaded server in the benchmark's own
    process, on loopback. Use as a context manager; `url` is the OTLP endpoint base."""

    def __init__(self) -> None:
        import threading

        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: Any = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> SpanSink:
        import http.server
        import threading

        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with sink._lock:
                    sink.requests += 1
                    sink.bytes += length
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def trace_to(endpoint: str | None, service: str) -> Any:
    """Configure the worker's tracing as a deployed worker's: the SDK with the OTLP exporter
    (batching) to `endpoint`, or nothing when None (tracing off: no provider, no spans).
    Returns the provider (flush it before reading the CPU figure) or None."""
    if not endpoint:
        return None
    import os

    from shared.tracing import configure_tracing

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint  # the exporter reads it there
    return configure_tracing(service)
