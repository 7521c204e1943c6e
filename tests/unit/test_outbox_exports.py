"""The public faces of the effect layer list exactly what they export."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("name", ["shared.outbox", "shared.idempotency", "shared.inbox"])
def test_all_names_exist_and_are_sorted(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported)
    for attribute in exported:
        assert hasattr(module, attribute), f"{name}.{attribute}"
