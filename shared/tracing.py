"""OpenTelemetry for fleetline: X-Ray-compatible trace ids, one propagation format, and the
inject/extract helpers for every transport the services use.

Setup (once per process, at the edge: the worker host, the Lambda adapter, the CLI):

    configure_tracing("orders-worker")                       # OTLP when the env says so
    configure_tracing("test", exporter=InMemorySpanExporter()) # tests

Trace ids come from the AWS X-Ray id generator (the first 32 bits are the epoch seconds), so the
ADOT collector can hand spans to X-Ray unchanged. Context travels in a *carrier*: a flat
`dict[str, str]` holding the W3C `traceparent` (and `tracestate` when not empty) and the X-Ray
`X-Amzn-Trace-Id` header, both written by one composite propagator (also installed as the global
one). Extraction prefers W3C (it carries `tracestate`) and falls back to the X-Ray header, so a
message from an X-Ray-only producer (e.g. `AWSTraceHeader` set by AWS) still continues its
trace. An unreadable carrier never fails a message: it starts a new trace.

Where the carrier goes, per transport:

- SQS: `sqs_trace_attributes()` gives message attribute `traceparent` (only when the caller's
  attributes leave room: never more than 10) and system attribute `AWSTraceHeader`;
  consumers read them with `carrier_from_sqs()`.
- SNS: `sns_trace_attributes()` (message attribute `traceparent`); `carrier_from_sns()` reads
  a notification (also the non-raw notification JSON an SQS subscriber receives).
- EventBridge: the envelope's `trace` (filled by `Envelope.new`) plus the entry's
  `TraceHeader` (`shared.events.to_put_events_entry`); consumers read the envelope's `trace`.
- Kinesis, DynamoDB Streams and the outbox: the envelope's `trace`, captured when the envelope
  is made (for the outbox: inside the request span, i.e. at commit time).
- Step Functions: `with_trace(payload)` puts the carrier in the `trace` field of the execution
  input or a task payload, `xray_trace_header()` gives StartExecution's `traceHeader`;
  `carrier_from_payload()` reads it back.

Consumers wrap each message in `consumer_span(...)` (a CONSUMER span whose parent is the
producer's context) and a batch in `batch_span(...)` (links to every distinct producer context).
`shared.consumers.batch_handler` makes the batch span only when a batch mixes traces
(`BatchTrace`, `mixed_batch_links`): with one trace, the consumer spans say it all.
A relay that sends messages created earlier wraps the send in `producer_span(...)`. A
handler's own work on a message is an INTERNAL `handler_span(...)` under the consumer's span
(one CONSUMER span per message); a call to another service a `client_span(...)`.

`configure_tracing` may be called again (tests do): spans made through `tracer()`,
`consumer_span` and `batch_span` always go to the latest configuration. The OpenTelemetry global
provider can be set only once per process, so third-party code that calls
`opentelemetry.trace.get_tracer` directly keeps the first configuration.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.aws import AwsXRayPropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "SQS_MAX_MESSAGE_ATTRIBUTES",
    "TRACEPARENT",
    "TRACESTATE",
    "XRAY_HEADER",
    "BatchTrace",
    "PublishSpans",
    "SqsTraceAttributes",
    "TraceCarrierSource",
    "attached",
    "batch_span",
    "carrier_from_payload",
    "carrier_from_sns",
    "carrier_from_sqs",
    "client_span",
    "configure_tracing",
    "consumer_span",
    "current_carrier",
    "distinct_producer_contexts",
    "extract",
    "format_xray_trace_id",
    "handler_span",
    "inject",
    "mixed_batch_links",
    "producer_span",
    "reparent_envelopes",
    "sns_trace_attributes",
    "span_context_of",
    "sqs_trace_attributes",
    "tracer",
    "with_trace",
    "xray_trace_header",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
XRAY_HEADER: Final = "X-Amzn-Trace-Id"
_XRAY_LOWER: Final = XRAY_HEADER.lower()
SQS_SYSTEM_TRACE_ATTRIBUTE: Final = "AWSTraceHeader"
SQS_MAX_MESSAGE_ATTRIBUTES: Final = 10  # SQS and SNS both refuse an 11th message attribute
PAYLOAD_TRACE_FIELD: Final = "trace"

_XRAY: Final = AwsXRayPropagator()
_W3C: Final = TraceContextTextMapPropagator()
_PROPAGATOR: Final = CompositePropagator([_XRAY, _W3C])

_provider: TracerProvider | None = None
_global_set = False


def configure_tracing(
    service_name: str,
    *,
    exporter: SpanExporter | None = None,
    batch: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> TracerProvider:
    """Set up the SDK for this process and return the provider.

    The standard variables of `environ` (default `os.environ`) apply: `OTEL_SERVICE_NAME`
    names the service (`service_name` is the default), `OTEL_RESOURCE_ATTRIBUTES`,
    `OTEL_TRACES_SAMPLER` / `_ARG`, `OTEL_SDK_DISABLED=true` (no exporter),
    `OTEL_TRACES_EXPORTER` (`otlp`, the default; `console`; `none`), and the exporter's own
    `OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`.

    Exporter: `exporter` when given; else OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
    (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, which on ECS points at the ADOT
    collector sidecar and under `fleetline up` at its receiver; else none (spans are still
    made, so ids reach logs and carriers, but nothing is exported). `batch` picks BatchSpanProcessor
    (default for OTLP) or SimpleSpanProcessor (default for an explicit exporter, so tests see
    spans as soon as they end).

    Also installs the composite propagator (W3C tracecontext + X-Ray) as the global one.

    Raises:
        ValueError: `service_name` is empty.
    """
    global _provider, _global_set
    if not service_name:
        raise ValueError("service_name must not be empty")
    env = os.environ if environ is None else environ
    # The deployment names the service (the template's OTEL_SERVICE_NAME); `service_name`
    # is the default. OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER are read by the SDK.
    name = env.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(
        resource=Resource.create({"service.name": name}),
        id_generator=AwsXRayIdGenerator(),
    )
    chosen = exporter
    use_batch = batch
    wanted = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if chosen is None and not disabled and wanted == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        chosen = ConsoleSpanExporter()
    elif chosen is None and not disabled and wanted == "otlp" and (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        # Imported here: the OTLP exporter pulls in protobuf, which a process without a
        # collector never needs. It reads the other OTEL_EXPORTER_OTLP_* variables itself.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        chosen = OTLPSpanExporter()
        use_batch = True if batch is None else batch
    if chosen is not None:
        processor: SpanProcessor = (
            BatchSpanProcessor(chosen) if use_batch else SimpleSpanProcessor(chosen)
        )
        provider.add_span_processor(processor)
    previous, _provider = _provider, provider
    _tracers.clear()
    if previous is not None:
        if previous is trace.get_tracer_provider():
            # Still the global provider (third-party tracers hold it): flush, keep it alive.
            previous.force_flush()
        else:
            previous.shutdown()
    if not _global_set:
        trace.set_tracer_provider(provider)
        _global_set = True
    propagate.set_global_textmap(_PROPAGATOR)
    return provider


_tracers: dict[str, trace.Tracer] = {}  # tracers of `_provider`, cleared when it changes


def tracer(name: str) -> trace.Tracer:
    """A tracer from the latest `configure_tracing` (the global provider before that)."""
    provider = _provider
    if provider is None:
        return trace.get_tracer(name)
    # Cached: the SDK's get_tracer builds and compares scope objects on every call, a third of
    # a consumer span's cost on the hot path.
    found = _tracers.get(name)
    if found is None:
        found = _tracers[name] = provider.get_tracer(name)
    return found


# --------------------------------------------------------------------------- carriers


def inject(
    carrier: dict[str, str] | None = None, *, context: Context | None = None
) -> dict[str, str]:
    """Write the current (or given) context into `carrier` (a new dict when None) and return
    it. Writes nothing when there is no valid span context."""
    out: dict[str, str] = {} if carrier is None else carrier
    _PROPAGATOR.inject(out, context=context)
    return out


def current_carrier() -> dict[str, str]:
    """The current context as a new carrier; empty outside any span."""
    return inject()


def extract(carrier: Mapping[str, str] | None) -> Context:
    """The context a carrier holds, as a parent for new spans. An empty or unreadable carrier
    gives an empty context (a new trace), never an error: tracing must not fail a message."""
    if not carrier:
        return Context()
    # Same result as the composite propagator (W3C wins when both are readable), at half the
    # cost: the X-Ray header is parsed only when there is no usable traceparent.
    if TRACEPARENT in carrier:
        context = _W3C.extract(carrier, context=Context())
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    if XRAY_HEADER in carrier:
        return _XRAY.extract(carrier, context=Context())
    # HTTP header names are case-insensitive and arrive lower-cased (API Gateway v2, aiohttp):
    # an `x-amzn-trace-id` header alone continues its trace too.
    header = carrier.get(_XRAY_LOWER)
    if header:
        return _XRAY.extract({XRAY_HEADER: header}, context=Context())
    return Context()


def span_context_of(carrier: Mapping[str, str] | None) -> SpanContext | None:
    """The remote span context in a carrier, or None when it holds none."""
    span_context = trace.get_current_span(extract(carrier)).get_span_context()
    return span_context if span_context.is_valid else None


def format_xray_trace_id(trace_id: int) -> str:
    """`1-5f8a1b2c-0123456789abcdef01234567`: the X-Ray form of a 128-bit trace id."""
    hex_id = format(trace_id, "032x")
    return f"1-{hex_id[:8]}-{hex_id[8:]}"


def xray_trace_header(context: Context | None = None) -> str | None:
    """The `X-Amzn-Trace-Id` value of the current (or given) context, or None outside a span.
    For APIs with a trace header parameter: PutEvents `TraceHeader`, StartExecution
    `traceHeader`, SQS `AWSTraceHeader`."""
    return inject(context=context).get(XRAY_HEADER)


# --------------------------------------------------------------------------- SQS / SNS


@dataclass(frozen=True, kw_only=True)
class SqsTraceAttributes:
    """What to pass to SendMessage / SendMessageBatch entries: `MessageAttributes` (the caller's
    plus `traceparent` when there is room) and `MessageSystemAttributes` (`AWSTraceHeader`,
    which does not count towards the limit of 10)."""

    message_attributes: dict[str, Any]
    system_attributes: dict[str, Any]


def _attribute_room(existing: Mapping[str, Any]) -> int:
    return SQS_MAX_MESSAGE_ATTRIBUTES - len(existing)


def _with_trace_attributes(
    existing: Mapping[str, Any] | None, carrier: Mapping[str, str]
) -> dict[str, Any]:
    attributes: dict[str, Any] = dict(existing or {})
    if len(attributes) > SQS_MAX_MESSAGE_ATTRIBUTES:
        raise ValueError(
            f"message_attributes has {len(attributes)} entries; SQS and SNS allow "
            f"{SQS_MAX_MESSAGE_ATTRIBUTES}"
        )
    # One attribute for the W3C context, a second for tracestate only when it is non-empty
    # and there is room: the caller's attributes always come first.
    for key in (TRACEPARENT, TRACESTATE):
        value = carrier.get(key)
        if value and key not in attributes and _attribute_room(attributes) > 0:
            attributes[key] = {"DataType": "String", "StringValue": value}
    return attributes


def sqs_trace_attributes(
    message_attributes: Mapping[str, Any] | None = None, *, context: Context | None = None
) -> SqsTraceAttributes:
    """Attributes that carry the current (or given) context on an SQS message.

    The X-Ray header goes in the `AWSTraceHeader` system attribute; the W3C `traceparent` in a
    message attribute only when the caller's attributes leave room (at most 10 in total).

    Raises:
        ValueError: `message_attributes` already has more than 10 entries.
    """
    carrier = inject(context=context)
    system: dict[str, Any] = {}
    if XRAY_HEADER in carrier:
        system[SQS_SYSTEM_TRACE_ATTRIBUTE] = {
            "DataType": "String",
            "StringValue": carrier[XRAY_HEADER],
        }
    return SqsTraceAttributes(
        message_attributes=_with_trace_attributes(message_attributes, carrier),
        system_attributes=system,
    )


def sns_trace_attributes(
    message_attributes: Mapping[str, Any] | None = None, *, context: Context | None = None
) -> dict[str, Any]:
    """`MessageAttributes` for SNS Publish / PublishBatch carrying the current (or given)
    context as `traceparent` (when the caller's attributes leave room, at most 10), which SNS
    forwards to SQS subscribers (raw delivery: as message attributes; otherwise inside the
    notification JSON). SNS has no system trace attribute to use instead.

    Raises:
        ValueError: `message_attributes` already has more than 10 entries.
    """
    return _with_trace_attributes(message_attributes, inject(context=context))


def _attribute_value(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        # SQS API: StringValue; Lambda SQS event: stringValue; SNS notification JSON: Value.
        for key in ("StringValue", "stringValue", "Value"):
            found = value.get(key)
            if isinstance(found, str):
                return found
    return None


def carrier_from_sqs(
    message_attributes: Mapping[str, Any] | None = None,
    system_attributes: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The carrier of a received SQS message, from its `MessageAttributes` (API shape, Lambda
    event shape, or already flattened to strings) and its `Attributes` (`AWSTraceHeader`)."""
    carrier: dict[str, str] = {}
    for key in (TRACEPARENT, TRACESTATE):
        value = _attribute_value((message_attributes or {}).get(key))
        if value:
            carrier[key] = value
    for attrs in (system_attributes or {}, message_attributes or {}):
        header = _attribute_value(attrs.get(SQS_SYSTEM_TRACE_ATTRIBUTE))
        if header:
            carrier[XRAY_HEADER] = header
            break
    return carrier


def carrier_from_sns(notification: Mapping[str, Any]) -> dict[str, str]:
    """The carrier of an SNS notification (the JSON SNS delivers to a non-raw SQS subscriber,
    or a Lambda event's `Sns` record)."""
    attributes = notification.get("MessageAttributes")
    return carrier_from_sqs(attributes if isinstance(attributes, Mapping) else None)


# --------------------------------------------------------------------------- payloads


def with_trace(payload: Mapping[str, Any], *, context: Context | None = None) -> dict[str, Any]:
    """A copy of `payload` (a Step Functions execution input or task payload) with the current
    (or given) carrier in its `trace` field. State machine definitions pass `trace.$` on to
    each task's payload so tasks continue the execution's trace."""
    return {**payload, PAYLOAD_TRACE_FIELD: inject(context=context)}


def carrier_from_payload(payload: Mapping[str, Any]) -> dict[str, str]:
    """The carrier in a payload's `trace` field; empty when absent or not string-valued."""
    raw = payload.get(PAYLOAD_TRACE_FIELD)
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}


# --------------------------------------------------------------------------- consumer spans


@runtime_checkable
class TraceCarrierSource(Protocol):
    """Anything with a `trace` carrier: an `Envelope`, a `TypedEvent`."""

    @property
    def trace(self) -> Mapping[str, str]: ...


def _carrier_of(source: object) -> Mapping[str, str]:
    """Find the producer's carrier. Order: an envelope's `trace` (the producer's context at
    commit time, the most precise), then transport attributes (`traceparent`,
    `AWSTraceHeader`), then a plain mapping used as the carrier itself."""
    if source is None:
        return {}
    trace_field = getattr(source, "trace", None)
    if isinstance(trace_field, Mapping) and trace_field:
        return trace_field
    if isinstance(source, Mapping) and isinstance(source.get(PAYLOAD_TRACE_FIELD), Mapping):
        # an envelope or payload as a plain dict (the outbox keeps envelopes as dicts)
        return carrier_from_payload(source)
    envelope = getattr(source, "envelope", None)
    if envelope is not None and envelope is not source:
        found = _carrier_of(envelope)
        if found:
            return found
    attributes = getattr(source, "attributes", None)
    if isinstance(attributes, Mapping):
        return carrier_from_sqs(attributes, attributes)
    if isinstance(source, Mapping):
        return {str(k): v for k, v in source.items() if isinstance(v, str)}
    return {}


@contextlib.contextmanager
def consumer_span(
    source: object,
    name: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    links: Iterable[SpanContext] = (),
    batch: BatchTrace | None = None,
    fallback: object = None,
) -> Iterator[Span]:
    """A CONSUMER span for one message that continues the producer's trace.

    `source` is an `Envelope` / `TypedEvent` (its `trace`), a `shared.consumers.Message` (its
    `attributes`: `traceparent`, `AWSTraceHeader`), a carrier mapping, or None. Without a
    readable producer context in `source`, `fallback` is read the same way (a decoded event
    whose envelope has no `trace` falls back to its Message's transport attributes); without
    one there either, the span is a child of the current span (or a new trace).
    With `batch`, the producer context found is noted on it (no second extraction), so the
    batch can link every producer when it mixes traces (`BatchTrace`).
    The span is current inside the block; an exception escaping the block is recorded on it
    and re-raised.
    """
    extracted = extract(_carrier_of(source))
    producer = trace.get_current_span(extracted).get_span_context()
    if not producer.is_valid and fallback is not None:
        extracted = extract(_carrier_of(fallback))
        producer = trace.get_current_span(extracted).get_span_context()
    # Without a producer context the message continues whatever is current (a batch span),
    # rather than starting a disconnected trace.
    parent = extracted if producer.is_valid else None
    if batch is not None and parent is not None:
        batch.note(producer)
    span_links = [Link(link) for link in links]
    with tracer("shared.consumers").start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=dict(attributes or {}),
        links=span_links,
    ) as span:
        yield span


def distinct_producer_contexts(sources: Iterable[object]) -> list[SpanContext]:
    """Each distinct producer span context among `sources` (anything `consumer_span` reads,
    or span contexts already extracted), in first-seen order."""
    seen: set[tuple[int, int]] = set()
    out: list[SpanContext] = []
    for source in sources:
        span_context = (
            source if isinstance(source, SpanContext) else span_context_of(_carrier_of(source))
        )
        if span_context is None:
            continue
        key = (span_context.trace_id, span_context.span_id)
        if key not in seen:
            seen.add(key)
            out.append(span_context)
    return out


@contextlib.contextmanager
def batch_span(
    sources: Iterable[object],
    name: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    start_time: int | None = None,
) -> Iterator[Span]:
    """A CONSUMER span for a whole batch, with a span link to every distinct producer context
    in `sources` (messages, envelopes or span contexts). A batch has many parents, so it starts
    a new trace (or continues the caller's current span); each message's own `consumer_span`
    continues its producer's trace. `start_time` (epoch nanoseconds) backdates the span to
    when the batch began; `messaging.batch.message_count` is len(sources) unless `attributes`
    sets it."""
    sources = list(sources)
    links = [Link(ctx) for ctx in distinct_producer_contexts(sources)]
    attrs = {"messaging.batch.message_count": len(sources), **(attributes or {})}
    with tracer("shared.consumers").start_as_current_span(
        name, kind=SpanKind.CONSUMER, attributes=attrs, links=links, start_time=start_time
    ) as span:
        yield span


def mixed_batch_links(contexts: Iterable[SpanContext]) -> list[SpanContext]:
    """The links a batch span needs: each distinct producer context (first-seen order) when
    they come from more than one trace; empty when they all share one trace (or there are
    none), since then each message's consumer span already tells the whole story and a batch
    span would only cost time. The one rule every batch consumer follows."""
    distinct = distinct_producer_contexts(contexts)
    if len({ctx.trace_id for ctx in distinct}) < 2:
        return []
    return distinct


class BatchTrace:
    """The producer contexts of one batch, noted as each message's `consumer_span` is made
    (`consumer_span(..., batch=this)`: no second extraction), and the batch span they call for.

        batch = BatchTrace()                 # when the batch starts
        ... consumer_span(message, name, batch=batch) per message ...
        batch.finish("orders process batch", message_count=len(messages))

    `finish` makes one `batch_span`, backdated to when this object was made and ended at once,
    with a link to each distinct producer context, only when they come from more than one
    trace (`mixed_batch_links`). The batch span is made at the end because only then are all
    producers known (envelope traces are read as messages are decoded); messages without a
    producer context are therefore children of the caller's current span, not of it.
    """

    __slots__ = ("_contexts", "start_time")

    def __init__(self) -> None:
        self.start_time = time.time_ns()
        self._contexts: list[SpanContext] = []

    def note(self, span_context: SpanContext) -> None:
        """Record one message's producer context (invalid ones are ignored)."""
        if span_context.is_valid:
            self._contexts.append(span_context)

    @property
    def links(self) -> list[SpanContext]:
        """What the batch span would link to: `mixed_batch_links` of the noted contexts."""
        return mixed_batch_links(self._contexts)

    def finish(
        self, name: str, *, message_count: int, attributes: Mapping[str, Any] | None = None
    ) -> bool:
        """Make the batch span when the batch mixes traces; return whether one was made."""
        links = self.links
        if not links:
            return False
        attrs = {**(attributes or {}), "messaging.batch.message_count": message_count}
        with batch_span(links, name, attributes=attrs, start_time=self.start_time):
            pass
        return True


@contextlib.contextmanager
def producer_span(
    sources: Iterable[object],
    name: str,
    *,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A PRODUCER span around sending messages that were created earlier (the outbox relay's
    PutEvents). When every source carries the same producer context, the span is its child,
    so the send joins the trace of the request that committed the events; when they carry
    several, it is a child of the current span with a link to each; with none, a child of the
    current span. `sources`: envelopes (objects or dicts with `trace`), messages, carriers."""
    sources = list(sources)
    contexts = distinct_producer_contexts(sources)
    parent: Context | None = None
    links: list[Link] = []
    if len(contexts) == 1:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
    else:
        links = [Link(ctx) for ctx in contexts]
    attrs = {"messaging.batch.message_count": len(sources), **(attributes or {})}
    with tracer("shared.producers").start_as_current_span(
        name, context=parent, kind=SpanKind.PRODUCER, attributes=attrs, links=links
    ) as span:
        yield span


class PublishSpans:
    """One PRODUCER span per producer context among envelopes about to be sent, and the
    envelopes with their `trace` moved to their span (`reparent_envelopes`).

    The relay's send is the hop between the commit (the envelope's `trace`, captured then)
    and the consumers: each span is the child of its envelopes' commit context, and each
    envelope leaves carrying its span's context, so a consumer's span is the child of the
    publish, which is the child of the commit. The event ids do not change (dedupe is by id).
    `end(failed_ids)` ends every span, ERROR on those that lost an event."""

    __slots__ = ("_by_event", "spans")

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._by_event: dict[str, Span] = {}

    def end(self, failed_ids: Iterable[str] = ()) -> None:
        failed = {self._by_event[i] for i in failed_ids if i in self._by_event}
        for span in self.spans:
            if span in failed:
                span.set_status(trace.Status(trace.StatusCode.ERROR, "not published"))
            span.end()


def reparent_envelopes(
    envelopes: Sequence[Mapping[str, Any]], name: str, *,
    attributes: Mapping[str, Any] | None = None,
) -> tuple[list[Mapping[str, Any]], PublishSpans]:
    """`envelopes` (dicts with `id` and `trace`) with each `trace` set to a PRODUCER span
    `name` made for its commit context (one span per distinct context), and those spans (not
    yet ended: `PublishSpans.end`). An envelope without a trace gets a span of its own under
    the current span."""
    out: list[Mapping[str, Any]] = []
    spans = PublishSpans()
    by_parent: dict[tuple[int, int] | None, tuple[Span, dict[str, str]]] = {}
    source = tracer("shared.producers")
    for envelope in envelopes:
        carrier = envelope.get(PAYLOAD_TRACE_FIELD)
        parent = extract(carrier if isinstance(carrier, Mapping) else None)
        context = trace.get_current_span(parent).get_span_context()
        key = (context.trace_id, context.span_id) if context.is_valid else None
        made = by_parent.get(key)
        if made is None:
            span = source.start_span(name, context=parent if key else None,
                                     kind=SpanKind.PRODUCER, attributes=dict(attributes or {}))
            made = by_parent[key] = (span, inject(context=trace.set_span_in_context(span)))
            spans.spans.append(span)
        span, moved = made
        event_id = str(envelope.get("id"))
        spans._by_event[event_id] = span
        out.append({**envelope, PAYLOAD_TRACE_FIELD: dict(moved)})
    for span in spans.spans:
        count = sum(1 for s in spans._by_event.values() if s is span)
        span.set_attribute("messaging.batch.message_count", count)
        if count == 1:
            span.set_attribute("messaging.message.id", next(
                i for i, s in spans._by_event.items() if s is span))
    return out, spans


@contextlib.contextmanager
def handler_span(
    name: str, *, attributes: Mapping[str, Any] | None = None, source: object = None
) -> Iterator[Span]:
    """An INTERNAL span for a handler's own work on one message, the child of the CONSUMER
    span the consumer made for it (`shared.consumers.batch_handler` and the other adapters
    make one per message): one CONSUMER span per message, its handler's work beneath it.
    Called with no current span (a handler invoked on its own, a test), it continues the
    producer context in `source` (what `consumer_span` reads) as a CONSUMER span instead, so
    the message is never a trace of its own."""
    if not trace.get_current_span().get_span_context().is_valid and source is not None:
        with consumer_span(source, name, attributes=attributes) as span:
            yield span
        return
    with tracer("shared.handlers").start_as_current_span(
        name, kind=SpanKind.INTERNAL, attributes=dict(attributes or {})
    ) as span:
        yield span


@contextlib.contextmanager
def client_span(
    name: str, *, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A CLIENT span around one call to another service (StartExecution, SendTaskSuccess),
    the child of the current span."""
    with tracer("shared.clients").start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=dict(attributes or {})
    ) as span:
        yield span


@contextlib.contextmanager
def attached(context: Context) -> Iterator[None]:
    """Make `context` current inside the block."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
