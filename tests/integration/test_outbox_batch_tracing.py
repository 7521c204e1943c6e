"""One batch commit keeps every message's trace: a consumer span per message continues its
producer's trace, the events each message causes carry that span's context, and a batch
mixing traces gets one batch span linking every producer."""

from __future__ import annotations

import json

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.aws import AwsClients
from shared.consumers._message import Message, Outcome, SourceKind
from shared.events import Envelope
from shared.outbox import Aggregate, BatchCommitter, Decision, ItemRef
from shared.testing import capture_spans

from ._outbox_support import CounterBumped, CounterChanged, create_table

pytestmark = pytest.mark.emulator


def _produced(counter: str, producer: str) -> Envelope:
    """An event published inside a producer span, so its envelope carries that span."""
    with tracing.tracer("test.producer").start_as_current_span(producer, kind=SpanKind.PRODUCER):
        return Envelope.new(CounterBumped(counter=counter), aggregate_id=counter, sequence=1)


async def test_batch_commit_continues_each_producers_trace_and_links_a_mixed_batch(
    aws: AwsClients,
) -> None:
    await create_table(aws, "counters")

    def locate(envelope: Envelope) -> ItemRef:
        return ItemRef(table="counters", key={"pk": str(envelope.data["counter"])})  # type: ignore[index]

    def decide(envelope: Envelope, counter: Aggregate) -> Decision:
        total = int(counter.state.get("total", 0)) + 1
        name = counter.ref.key["pk"]
        return Decision(state={"total": total},
                        events=[CounterChanged(counter=name, total=total)])

    with capture_spans() as captured:
        from_a1 = _produced("a", "producer-A")
        from_a2 = _produced("b", "producer-A")
        from_b = _produced("c", "producer-B")
        messages = [
            Message(id=f"m{i}", body=e.to_json(), source=SourceKind.SQS,
                    source_name="https://sqs.local/123/counter-bumps")
            for i, e in enumerate((from_a1, from_a2, from_b))
        ]
        result = await BatchCommitter(aws, locate=locate, decide=decide)(messages)
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}

    producers = {s.context.span_id: s for s in captured.named("producer-A")
                 + captured.named("producer-B")}
    consumers = captured.named("process counter-bumps")
    assert len(consumers) == 3
    for span in consumers:
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None
        producer = producers[span.parent.span_id]
        assert span.context.trace_id == producer.context.trace_id

    batch = captured.one("process counter-bumps batch")
    linked = {link.context.span_id for link in batch.links}
    assert linked == {s.context.span_id for s in producers.values()}  # three producer spans
    assert len({link.context.trace_id for link in batch.links}) == 3

    # Each emitted event carries the context of the consumer span of its cause.
    dynamodb = await aws.client("dynamodb")
    consumer_by_trace = {s.context.trace_id: s for s in consumers}
    for cause in (from_a1, from_a2, from_b):
        item = (await dynamodb.get_item(
            TableName="counters", Key={"pk": {"S": str(cause.data["counter"])}}  # type: ignore[index]
        ))["Item"]
        outbox = item["outbox"]["L"]
        assert len(outbox) == 1
        emitted = json.loads(outbox[0]["S"]) if "S" in outbox[0] else None
        assert emitted is not None, outbox[0]
        carrier = emitted["trace"]
        context = tracing.extract(carrier)
        span_context = otel_trace.get_current_span(context).get_span_context()
        cause_trace = otel_trace.get_current_span(
            tracing.extract(cause.trace)).get_span_context().trace_id
        assert span_context.trace_id == cause_trace
        assert span_context.span_id == consumer_by_trace[cause_trace].context.span_id
