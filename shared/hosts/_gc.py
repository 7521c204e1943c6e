"""The garbage collector's settings for a long-running worker process.

CPython's cyclic collector is tuned for short scripts: a young collection every 700 net
allocations, and a full one whenever a quarter as many objects as survived the last full
collection have been promoted since. A stream worker breaks both assumptions. It holds a
large, long-lived state (the telemetry worker keeps every device of its shards in memory),
and it handles pages of up to 10,000 records whose objects (messages, parsed records) live
for the whole page, so they survive the young collections and are promoted by the tens of
thousands. The result, measured by bench/devices_bench.py at 100,000 devices: 9 full
collections per 100,000 records, 2.4 s of CPU, about a quarter of the worker's time (see
docs/benchmarks.md).

What `configure_gc` does, once, after the worker is loaded and before it serves:

- `gc.freeze()`: everything alive at that point (modules, classes, functions, the loaded
  configuration) moves to the permanent generation, which collections never scan. Those
  objects live as long as the process anyway.
- Thresholds `(50_000, 20, 100)` by default: young collections 70 times rarer, each still
  bounded; full collections rarer too. Memory held by cyclic garbage waits longer, bounded
  by the thresholds (objects freed by reference counting, nearly all of them, are freed at
  once as always).

`FLEETLINE_GC_THRESHOLDS` overrides the thresholds ("700,10,10" is CPython's default);
"off" leaves the collector exactly as CPython set it (no freeze either).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from typing import Final

from shared.errors import ConfigurationError

__all__ = ["GC_THRESHOLDS_ENV", "WORKER_GC_THRESHOLDS", "configure_gc", "gc_thresholds_from"]

GC_THRESHOLDS_ENV: Final = "FLEETLINE_GC_THRESHOLDS"
WORKER_GC_THRESHOLDS: Final = (50_000, 20, 100)


def gc_thresholds_from(environ: Mapping[str, str]) -> tuple[int, int, int] | None:
    """The thresholds `configure_gc` sets: `WORKER_GC_THRESHOLDS` unless the environment
    says otherwise; None for "off".

    Raises:
        ConfigurationError: the value is not "off" nor three positive integers.
    """
    raw = environ.get(GC_THRESHOLDS_ENV, "").strip()
    if not raw:
        return WORKER_GC_THRESHOLDS
    if raw.lower() == "off":
        return None
    try:
        values = tuple(int(part) for part in raw.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 1 for v in values):
        raise ConfigurationError(
            f"{GC_THRESHOLDS_ENV} must be 'off' or three positive integers like "
            f"'50000,20,100', got {raw!r}"
        )
    return values[0], values[1], values[2]


def configure_gc(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """Freeze what is alive and set the thresholds (see the module docstring). Returns the
    thresholds set, or None when left as CPython set them.

    Raises:
        ConfigurationError: as `gc_thresholds_from`.
    """
    thresholds = gc_thresholds_from(os.environ if environ is None else environ)
    if thresholds is None:
        return None
    gc.collect()  # what is already garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*thresholds)
    return thresholds
