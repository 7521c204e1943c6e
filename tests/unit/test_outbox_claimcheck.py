"""The relay's claim-check decision (offload or refuse by size) and the publisher without a
claim-check bucket, with an in-memory bus behind the PutEvents seam."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from shared.consumers._message import Message, Outcome, SourceKind
from shared.events import MAX_PUT_EVENTS_ENTRY_BYTES as MAX_REQUEST_BYTES
from shared.events import Envelope, EventRegistry, event_type
from shared.outbox import PublisherConfig, Relay
from shared.outbox._publisher import EventPublisher, plan_claim_checks
from shared.outbox.pipe import oversized

EVENTS = EventRegistry()


@event_type("BlobAttached", source="fleetline.unit", registry=EVENTS)
class BlobAttached(BaseModel):
    blob: str


def _env(size: int, aggregate: str = "a") -> dict[str, Any]:
    envelope = Envelope.new(BlobAttached(blob="x" * size), aggregate_id=aggregate, sequence=1,
                            trace={})
    return json.loads(envelope.to_json())


def test_only_entries_over_the_limit_are_offloaded() -> None:
    sizes = [10, MAX_REQUEST_BYTES, MAX_REQUEST_BYTES + 1, 300 * 1024]
    assert plan_claim_checks(sizes) == ([2, 3], [])
    assert plan_claim_checks(sizes, max_bytes=100) == ([1, 2, 3], [])


def test_without_a_claim_check_big_entries_are_refused() -> None:
    sizes = [10, MAX_REQUEST_BYTES + 1, 5]
    assert plan_claim_checks(sizes, enabled=False) == ([], [1])
    assert plan_claim_checks([1, 2], enabled=False) == ([], [])


def test_pipe_sizes_envelopes_like_the_relay() -> None:
    envelopes = [_env(100), _env(300 * 1024), _env(200 * 1024)]
    assert oversized(envelopes) == [1]
    assert oversized(envelopes, limit=150 * 1024) == [1, 2]


def test_a_configured_bucket_without_aws_is_refused() -> None:
    async def send(entries: list[dict[str, Any]]) -> Sequence[Mapping[str, Any]]:
        return [{"EventId": "x"} for _ in entries]

    with pytest.raises(ValueError, match="claim_check_bucket"):
        EventPublisher(None, PublisherConfig(bus_name="b", claim_check_bucket="bk"), send=send)


async def test_without_a_bucket_the_relay_dead_letters_with_the_reason() -> None:
    sent: list[str] = []

    async def send(entries: list[dict[str, Any]]) -> Sequence[Mapping[str, Any]]:
        sent.extend(json.loads(e["Detail"])["id"] for e in entries)
        return [{"EventId": "x"} for _ in entries]

    big, small = _env(300 * 1024, "a"), _env(10, "b")
    record = {"eventName": "INSERT", "dynamodb": {"NewImage": {"outbox": {"L": [
        {"S": json.dumps(big)}, {"S": json.dumps(small)}]}}}}
    relay = Relay(None, PublisherConfig(bus_name="b"), send=send, on_lag=lambda _: None)
    result = await relay([Message(id="m1", body=json.dumps(record),
                                  source=SourceKind.DYNAMODB_STREAM, source_name="s")])
    assert result.outcomes["m1"] is Outcome.DEAD_LETTER
    assert "claim_check_bucket" in result.reasons["m1"]
    assert sent == [small["id"]]  # the other aggregate's event still went out
