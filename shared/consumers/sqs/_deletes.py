"""The poller's delete buffer: deletes from concurrent batches share DeleteMessageBatch calls.

One task (`run`) flushes the buffer at 10 receipts at once, or `flush_delay` after the first
pending delete. A call that fails for a server fault (or throttling) is retried up to three
times with a short backoff; a stale receipt (a sender fault) is given up at once. A message
whose delete is given up comes back after its visibility timeout and the inbox makes that
delivery a DUPLICATE: the effect was applied already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio

from shared.aws import AwsClient, aws_errors
from shared.consumers._batch import chunks
from shared.consumers._message import Message
from shared.errors import AwsUnavailableError, FleetlineError

__all__ = ["DeleteBuffer"]

_ATTEMPTS = 3
_FULL = 10  # receipts in one DeleteMessageBatch


class DeleteBuffer:
    """Batched deletes for one queue. `count(name, amount)` receives "deleted" and
    "delete_failures"; `retry_delay(attempt)` is the pause before attempt `attempt + 1`.
    Used by one `SqsConsumer`: `run()` in its task group, `add()` from its batches, `close()`
    last in its drain (it flushes what is pending)."""

    def __init__(
        self,
        *,
        queue_url: str,
        flush_delay: float,
        retry_delay: Callable[[int], float],
        count: Callable[[str, float], None],
        log: Any,
    ) -> None:
        self._queue_url = queue_url
        self._flush_delay = flush_delay
        self._retry_delay = retry_delay
        self._count = count
        self._log = log
        self._sqs: AwsClient = None
        self._pending: list[Message] = []
        self._wakeup = anyio.Event()
        self._full = anyio.Event()
        self._closed = False

    def add(self, messages: Sequence[Message]) -> None:
        """Queue `messages` for deletion.

        Raises RuntimeError after `close()`.
        """
        if not messages:
            return
        if self._closed:  # pragma: no cover - the drain closes deletes last
            raise RuntimeError("deletes queued after the consumer closed its delete buffer")
        self._pending.extend(messages)
        self._wakeup.set()
        if len(self._pending) >= _FULL:
            self._full.set()

    async def run(self, sqs: AwsClient) -> None:
        """Flush until `close()`."""
        self._sqs = sqs
        while not self._closed:
            await self._wakeup.wait()
            if len(self._pending) < _FULL and not self._closed:
                with anyio.move_on_after(self._flush_delay):
                    await self._full.wait()
            self._wakeup = anyio.Event()
            self._full = anyio.Event()
            await self._flush()

    async def close(self) -> None:
        """Stop the loop and flush what is pending."""
        self._closed = True
        self._wakeup.set()
        self._full.set()
        await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        async with anyio.create_task_group() as tg:
            for chunk in chunks(batch):
                tg.start_soon(self._delete_chunk, chunk)

    async def _delete_chunk(self, chunk: Sequence[Message]) -> None:
        remaining = list(chunk)
        for attempt in range(1, _ATTEMPTS + 1):
            by_id = {str(i): m for i, m in enumerate(remaining)}
            try:
                with aws_errors():
                    response = await self._sqs.delete_message_batch(
                        QueueUrl=self._queue_url,
                        Entries=[{"Id": i, "ReceiptHandle": m.receipt} for i, m in by_id.items()],
                    )
            except AwsUnavailableError as exc:
                if attempt == _ATTEMPTS:
                    self._give_up(remaining, str(exc))
                    return
                await anyio.sleep(self._retry_delay(attempt))
                continue
            except FleetlineError as exc:
                self._give_up(remaining, str(exc))
                return
            self._count("deleted", len(response.get("Successful", [])))
            retry: list[Message] = []
            for f in response.get("Failed", []):
                message = by_id[f["Id"]]
                if f.get("SenderFault"):
                    self._give_up([message], f"{f.get('Code')}: {f.get('Message')}")
                else:
                    retry.append(message)
            if not retry:
                return
            remaining = retry
        self._give_up(remaining, "server errors on every attempt")

    def _give_up(self, messages: Sequence[Message], error: str) -> None:
        # The effect was applied; the message will be delivered again and the inbox makes
        # that delivery a DUPLICATE.
        self._count("delete_failures", len(messages))
        self._log.warning("delete failed; the message will be redelivered", error=error,
                          message_ids=[m.id for m in messages])
