"""The public surface of shared.events, shared.tracing, shared.logging and shared.metrics is
exactly `__all__`: every listed name exists and nothing public is left out of it."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest


@pytest.mark.parametrize(
    "module_name", ["shared.events", "shared.tracing", "shared.logging", "shared.metrics"]
)
def test_all_lists_exactly_the_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = set(module.__all__)
    assert len(exported) == len(module.__all__), "duplicates in __all__"
    assert [name for name in exported if not hasattr(module, name)] == []
    defined_here = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__.startswith(module_name)
    }
    assert defined_here - exported == set()
