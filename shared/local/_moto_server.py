"""`python -m shared.local._moto_server -H HOST -p PORT`: moto's server with three fixes for
throughput, nothing else changed. `Emulator` starts the emulator through this module
(`FLEETLINE_EMULATOR_FIXES=0` starts moto's own entry point instead, to compare).

Measured with `fleetline up` and `fleetline simulate --devices 10000` (py-spy on the moto
process): the emulator sat near 90 % of a core at about 50 requests a second, and the
device events fell minutes behind. Of its CPU:

- 46 % was EventBridge's PutEvents compiling JSONPath expressions: for every event and every
  matching rule target (queues, archives), moto builds the target's input from a template
  with eight JSONPath expressions, parsing each one again with jsonpath_ng (a PLY parser,
  about a millisecond apiece). The expressions are a handful of constant strings, so
  `jsonpath_ng.ext.parse` is memoised here: same strings, same compiled expressions (they
  are not mutated by `find`), the same events delivered.
- Then, once a queue had a backlog of a few hundred messages, 60 % went to SQS
  ReceiveMessage: for every message it considers, moto checks the retention period by
  computing ALL the queue's attributes, three of which (the approximate counts) walk every
  message of the queue: quadratic in the backlog, so a queue that falls behind falls
  further behind. The check reads the queue's retention period directly here (same
  comparison, constant time). And the approximate counts, and the list of visible messages
  ReceiveMessage picks from, are computed with one clock reading per walk instead of two
  per message (moto's `Message.visible` / `delayed` each build a datetime): still a walk
  over the queue, about 40 times cheaper, same result.
- 11 % was werkzeug writing an access-log line per request. The server logs at WARNING
  unless `FLEETLINE_EMULATOR_ACCESS_LOG=1` (then every request is logged as before).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any


def _memoise_jsonpath() -> None:
    try:
        import jsonpath_ng.ext
    except ImportError:  # moto installed without it: nothing to speed up
        return
    module: Any = jsonpath_ng.ext  # moto imports `parse` from it at each call
    if not hasattr(module.parse, "cache_info"):
        module.parse = functools.lru_cache(maxsize=4096)(module.parse)


def _constant_time_retention_check() -> None:
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    original = getattr(SQSBackend, "is_message_valid_based_on_retention_period", None)
    if original is None or getattr(original, "_fleetline", False):
        return  # another moto version: leave it as it is

    def is_message_valid_based_on_retention_period(
        self: Any, queue_name: str, message: Any
    ) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
        return bool(retain_until > unix_time())

    is_message_valid_based_on_retention_period._fleetline = True  # type: ignore[attr-defined]
    SQSBackend.is_message_valid_based_on_retention_period = (  # type: ignore[method-assign]
        is_message_valid_based_on_retention_period)


def _one_clock_reading_per_walk() -> None:
    from moto.core.utils import unix_time_millis
    from moto.sqs.models import Message, Queue

    assigned = Message.__init__.__code__.co_names  # the attributes its __init__ sets
    if "visible_at" not in assigned or "delayed_until" not in assigned:
        return  # another moto version: leave it as it is

    def messages(self: Any) -> list[Any]:
        now = unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    def delayed(self: Any) -> int:
        now = unix_time_millis()
        return sum(1 for m in self._messages if now < m.delayed_until)

    def not_visible(self: Any) -> int:
        now = unix_time_millis()
        return sum(1 for m in self._messages if not now > m.visible_at)

    def visible(self: Any) -> int:
        return len(messages(self))

    Queue.messages = property(messages)  # type: ignore[assignment,method-assign]
    Queue.approximate_number_of_messages_delayed = property(delayed)  # type: ignore[assignment,method-assign]
    Queue.approximate_number_of_messages_not_visible = property(not_visible)  # type: ignore[assignment,method-assign]
    Queue.approximate_number_of_messages = property(visible)  # type: ignore[assignment,method-assign]


def main(argv: list[str] | None = None) -> None:
    _memoise_jsonpath()
    _constant_time_retention_check()
    _one_clock_reading_per_walk()
    if os.environ.get("FLEETLINE_EMULATOR_ACCESS_LOG") != "1":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from moto.server import main as moto_main

    moto_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
