"""`BatchProgress`, the one `DeliveryControl` both hosts use, seen by a `batch_handler`."""

from __future__ import annotations

from typing import Any

import anyio

from shared.consumers import (
    BatchProgress,
    HandlerContext,
    Message,
    Outcome,
    RetryLater,
    SourceKind,
    batch_handler,
    delivery_control,
)


def msg(id: str) -> Message:
    return Message(id=id, body='{"n": 1}', source=SourceKind.SQS, source_name="q")


def test_progress_keeps_early_outcomes_and_passes_heartbeats_to_the_host() -> None:
    extended: list[tuple[str, float | None]] = []

    async def extend(message: Message, seconds: float | None) -> None:
        extended.append((message.id, seconds))

    async def handle(event: Any, ctx: HandlerContext) -> None:
        await ctx.heartbeat(12)
        if ctx.message.id == "b":
            raise RetryLater("busy", delay=7)

    async def main() -> None:
        progress = BatchProgress(extend)
        with delivery_control(progress):
            await batch_handler(handle)([msg("a"), msg("b")])
        partial = progress.result()
        assert partial.outcomes == {"a": Outcome.SUCCEEDED, "b": Outcome.RETRY}
        assert partial.reasons == {"b": "RetryLater: busy"}
        assert partial.delays == {"b": 7}
        assert sorted(extended) == [("a", 12), ("b", 12)]

    anyio.run(main)


def test_progress_without_extend_ignores_heartbeats_and_result_is_a_snapshot() -> None:
    async def main() -> None:
        progress = BatchProgress()
        await progress.extend(msg("a"), 5)  # Lambda: the mapping owns visibility
        before = progress.result()
        progress.completed(msg("a"), Outcome.DEAD_LETTER, "bad", None)
        assert before.outcomes == {}
        assert progress.result().outcomes == {"a": Outcome.DEAD_LETTER}
        assert progress.result().reasons == {"a": "bad"}

    anyio.run(main)
