"""The trace receiver `fleetline up` runs and `fleetline trace`: real OTLP/HTTP exports (the
SDK's own exporter, protobuf; and JSON) on loopback, kept as JSON lines, found by trace id,
order id or device id, printed as a waterfall."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import anyio
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.trace import SpanKind
from typer.testing import CliRunner

from shared import tracing
from shared.local._traces import TraceReceiver, find_traces, read_spans, spans_path, waterfall


def _one_order_flow() -> str:
    """An API request, its publish and a consumer in another 'process', plus a batch that
    links the consumer's trace; returns the order's trace id."""
    api = tracing.tracer("api")
    with api.start_as_current_span("POST /orders", kind=SpanKind.SERVER,
                                   attributes={"http.route": "/orders", "order.id": "o-42"}):
        committed = tracing.current_carrier()
        trace_id = format(tracing.span_context_of(committed).trace_id, "032x")  # type: ignore[union-attr]
    sent, spans = tracing.reparent_envelopes([{"id": "e-1", "trace": committed}],
                                             "publish orders-bus")
    spans.end()
    with tracing.consumer_span(sent[0]["trace"], "process notifications",
                               attributes={"fleetline.aggregate.id": "o-42"}):
        consumed = tracing.current_carrier()
    with tracing.batch_span([consumed], "process notifications batch"):
        pass
    return trace_id


async def test_spans_exported_over_otlp_come_back_as_a_waterfall(tmp_path: Path) -> None:
    receiver = TraceReceiver(spans_path(tmp_path))
    async with anyio.create_task_group() as tg:
        url = await tg.start(receiver.serve)
        provider = tracing.configure_tracing(
            "orders-api", exporter=OTLPSpanExporter(endpoint=f"{url}/v1/traces"), batch=True)
        trace_id = await anyio.to_thread.run_sync(_one_order_flow)
        await anyio.to_thread.run_sync(provider.force_flush)
        # a JSON export (OTLP/HTTP JSON, hex ids) is kept the same way
        document = {"resourceSpans": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "devices"}}]},
            "scopeSpans": [{"spans": [{
                "traceId": "5759e988bd862e3fe1be46a994272793", "spanId": "53995c3f42cd8ad8",
                "name": "process telemetry", "kind": 5, "startTimeUnixNano": "1000",
                "endTimeUnixNano": "2000", "attributes": [
                    {"key": "fleetline.aggregate.id", "value": {"stringValue": "dev-7"}}]}]}]}]}
        request = urllib.request.Request(f"{url}/v1/traces", data=json.dumps(document).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = await anyio.to_thread.run_sync(urllib.request.urlopen, request)
        assert answer.status == 200
        tg.cancel_scope.cancel()

    spans = read_spans(spans_path(tmp_path))
    by_name = {s.name: s for s in spans}
    assert {"POST /orders", "publish orders-bus", "process notifications",
            "process notifications batch", "process telemetry"} <= set(by_name)
    assert by_name["POST /orders"].service == "orders-api"
    assert by_name["POST /orders"].kind == "SERVER"
    assert by_name["publish orders-bus"].kind == "PRODUCER"
    assert by_name["process telemetry"].service == "devices"

    # by order id: its trace first, then the batch trace that links it
    found = find_traces(spans, "o-42")
    assert found[0][0].trace_id == trace_id
    assert len(found) == 2
    assert [s.name for s in found[0]] == ["POST /orders", "publish orders-bus",
                                          "process notifications"]
    lines = waterfall(found[0])
    assert lines[0].startswith(f"trace {trace_id}: 3 spans, 1 services (orders-api)")
    assert "POST /orders [SERVER orders-api]" in lines[1]
    assert "  publish orders-bus [PRODUCER orders-api]" in lines[2]  # under the request
    assert "    process notifications [CONSUMER orders-api]" in lines[3]  # under the publish
    # by X-Ray trace id, and by device id
    xray = f"1-{trace_id[:8]}-{trace_id[8:]}"
    assert find_traces(spans, xray)[0][0].trace_id == trace_id
    assert find_traces(spans, "dev-7")[0][0].name == "process telemetry"

    from shared.cli import _add_operations, app

    _add_operations()
    shown = CliRunner().invoke(app, ["trace", "o-42", "--state-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert f"trace {trace_id}" in shown.output
    missing = CliRunner().invoke(app, ["trace", "o-nope", "--state-dir", str(tmp_path)])
    assert missing.exit_code == 1
