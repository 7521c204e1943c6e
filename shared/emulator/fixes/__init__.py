"""The fixes the emulator applies to moto, one module each, in the order they are applied.

Gap fixes (the stack needs them) come first; a fix that wraps another's target comes after
it (`locked-writes` wraps `transaction-backups`' transaction). See `shared.emulator._fixes`
for how each is checked before it is applied.
"""

from __future__ import annotations

from shared.emulator import _fixes
from shared.emulator.fixes import (
    alias_search,
    firehose_lake,
    heartbeat_timeouts,
    host_routing,
    jsonpath_cache,
    kinesis_fan_out,
    kinesis_reads,
    kinesis_reshard_puts,
    locked_writes,
    map_run_errors,
    message_moves,
    partiql_writes,
    replay_window,
    rule_targets,
    sqs_batch_trace,
    sqs_clock,
    sqs_retention,
    stop_callbacks,
    stream_pages,
    task_failure_cause,
    transaction_backups,
)

__all__ = ["ALL"]

ALL: tuple[_fixes.Fix, ...] = (
    rule_targets.FIX,
    transaction_backups.FIX,
    locked_writes.FIX,
    map_run_errors.FIX,
    task_failure_cause.FIX,
    stop_callbacks.FIX,
    partiql_writes.FIX,
    heartbeat_timeouts.FIX,
    firehose_lake.FIX,
    message_moves.FIX,
    replay_window.FIX,
    sqs_batch_trace.FIX,
    kinesis_fan_out.FIX,
    kinesis_reshard_puts.FIX,
    jsonpath_cache.FIX,
    host_routing.FIX,
    kinesis_reads.FIX,
    alias_search.FIX,
    stream_pages.FIX,
    sqs_retention.FIX,
    sqs_clock.FIX,
)
