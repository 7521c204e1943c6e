"""Killed (SIGKILL) after commit and before publish: the event is published after restart,
once, with the same id; a rerun of the relay from an old checkpoint republishes under that id
and the consumer's inbox drops the copy."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.aws import AwsClients
from shared.consumers._message import Message, Outcome, SourceKind
from shared.events import Envelope, parse_envelope
from shared.outbox import Aggregate, BatchCommitter, Decision, ItemRef, PublisherConfig, Relay

from ._outbox_support import bus_to_queue, create_table, drain, ids, read_stream

pytestmark = pytest.mark.emulator

ROOT = Path(__file__).resolve().parents[2]


async def test_event_committed_before_a_crash_is_published_once(aws: AwsClients) -> None:
    stream = await create_table(aws, "orders")
    assert stream is not None
    await create_table(aws, "views")
    url = await bus_to_queue(aws, "bus", "sink", source_prefix="fleetline.test")

    child = subprocess.Popen(  # noqa: ASYNC220 - a plain child we SIGKILL; waits are short
        [sys.executable, "-m", "tests.integration._outbox_crash_child", "orders"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the commit is done
        assert line.startswith("committed "), line
        event_id = line.split()[1]
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert await drain(aws, url, expect=0, settle=0.3) == []  # nothing was published

    relay = Relay(aws, PublisherConfig(bus_name="bus"))  # the restarted relay
    result = await relay(await read_stream(aws, stream))
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    first = await drain(aws, url, expect=1)
    assert ids(first) == [event_id]

    # A relay that lost its checkpoint starts from the trim horizon again.
    await relay(await read_stream(aws, stream))
    second = await drain(aws, url, expect=1)
    assert ids(second) == [event_id]

    def locate(envelope: Envelope) -> ItemRef:
        return ItemRef(table="views", key={"pk": envelope.aggregate_id})

    def decide(envelope: Envelope, view: Aggregate) -> Decision:
        return Decision(state={"seen": int(view.state.get("seen", 0)) + 1})

    consumer = BatchCommitter(aws, locate=locate, decide=decide)
    deliveries = [
        Message(id=f"d{i}", body=parse_envelope(body).to_json(), source=SourceKind.SQS,
                source_name=url)
        for i, body in enumerate([*first, *second])
    ]
    applied = await consumer(deliveries[:1])
    dropped = await consumer(deliveries[1:])
    assert applied.outcomes == {"d0": Outcome.SUCCEEDED}
    assert dropped.outcomes == {"d1": Outcome.DUPLICATE}
    dynamodb = await aws.client("dynamodb")
    view = (await dynamodb.get_item(TableName="views", Key={"pk": {"S": "o-1"}}))["Item"]
    assert view["seen"] == {"N": "1"}
