"""Test fixtures: one embedded emulator (moto server over real HTTP) per test session, its
state reset before every test that uses it; real aiobotocore clients, never mocks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.aws import AwsClients
from shared.emulator import Emulator

ARTIFACTS = Path(__file__).parent / "artifacts"

# Credentials and Region for the emulator only; set before any client is made so that
# child processes started by tests inherit them too.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_REGION", os.environ["AWS_DEFAULT_REGION"])
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def _emulator_process() -> Iterator[Emulator]:
    ARTIFACTS.mkdir(exist_ok=True)
    with Emulator(log_path=ARTIFACTS / "moto.log") as emulator:
        previous = os.environ.get("AWS_ENDPOINT_URL")
        os.environ["AWS_ENDPOINT_URL"] = emulator.endpoint_url
        yield emulator
        if previous is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = previous


@pytest.fixture
def emulator(_emulator_process: Emulator) -> Emulator:
    """The session's emulator with empty state."""
    _emulator_process.reset()
    return _emulator_process


@pytest.fixture
async def aws(emulator: Emulator) -> AsyncIterator[AwsClients]:
    """Real aiobotocore clients pointed at the (reset) emulator."""
    async with AwsClients() as clients:
        yield clients
