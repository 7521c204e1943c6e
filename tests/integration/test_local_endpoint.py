"""Pointing clients at an endpoint through their settings, never through `os.environ`:
`ClientSettings.endpoint_url` and `shared.local.endpoint_clients`, against the emulator."""

from __future__ import annotations

import os

import pytest

from shared.aws import AwsClients, ClientSettings, aws_errors
from shared.emulator import Emulator
from shared.errors import AwsUnavailableError
from shared.local import endpoint_clients

pytestmark = pytest.mark.emulator

# Nothing listens on the discard port: a client sent there fails at once.
DEAD = "http://127.0.0.1:9"


async def test_the_settings_endpoint_wins_over_the_environment(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", DEAD)
    async with AwsClients(ClientSettings(max_attempts=1)) as misled:
        sqs = await misled.client("sqs")
        with pytest.raises(AwsUnavailableError), aws_errors():
            await sqs.list_queues()
    async with AwsClients(ClientSettings(endpoint_url=emulator.endpoint_url)) as aws:
        sqs = await aws.client("sqs")
        url = (await sqs.create_queue(QueueName="pointed"))["QueueUrl"]
        assert url.endswith("/pointed")


async def test_endpoint_clients_need_no_credentials_and_leave_the_environment_alone(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    async with endpoint_clients(emulator.endpoint_url, os.environ) as aws:
        assert aws.region == "us-east-1"
        sqs = await aws.client("sqs")
        await sqs.create_queue(QueueName="no-credentials")
        listed = (await sqs.list_queues()).get("QueueUrls", [])
    assert any(u.endswith("/no-credentials") for u in listed)
    assert dict(os.environ) == before


async def test_endpoint_clients_use_the_callers_region(emulator: Emulator) -> None:
    environ = {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}
    async with endpoint_clients(emulator.endpoint_url, environ) as aws:
        assert aws.region == "eu-west-1"
        sqs = await aws.client("sqs")
        url = (await sqs.create_queue(QueueName="regional"))["QueueUrl"]
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
            "Attributes"]["QueueArn"]
    assert arn.startswith("arn:aws:sqs:eu-west-1:")
