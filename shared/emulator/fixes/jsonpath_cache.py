"""Speed: EventBridge input templates compile their JSONPath expressions once.

For every event and every matching rule target (queues, archives) moto builds the target's
input from a template with eight JSONPath expressions, parsing each one again with
jsonpath_ng (a PLY parser, about a millisecond apiece): 46 % of the emulator's CPU under
`fleetline simulate`. The expressions are a handful of constant strings, so the parser is
memoised: same strings, same compiled expressions (`find` does not mutate them).
"""

from __future__ import annotations

import functools
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]


def apply() -> None:
    import jsonpath_ng.ext

    module: Any = jsonpath_ng.ext  # moto imports `parse` from it at each call
    original = unpatched(module, "parse")
    if original is not None:
        replace(module, "parse", functools.lru_cache(maxsize=4096)(original))


FIX = Fix(
    name="jsonpath-cache",
    kind=FixKind.SPEED,
    summary="EventBridge input templates compile their JSONPath expressions once",
    checks=("jsonpath_ng.ext.parser:parse", "moto.events.utils:EventTemplateParser.parse"),
    verified={"5.2.5": "d02c86e2a38b6395", "5.2.6": "d02c86e2a38b6395"},
    apply=apply,
)
