"""What a child process on an endpoint is given (`shared.local._endpoint`), and the settings
that point this process's own clients."""

from __future__ import annotations

import pytest

from shared.aws import ClientSettings
from shared.local._endpoint import EMULATOR_CREDENTIALS, child_environment, region_of


def test_a_child_on_an_endpoint_gets_it_with_credentials_instead_of_a_profile() -> None:
    caller = {"PATH": "/bin", "AWS_PROFILE": "work", "AWS_DEFAULT_REGION": "eu-west-1"}
    env = child_environment("http://127.0.0.1:5000", caller)
    assert env == {
        "PATH": "/bin", "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1", "PYTHONUNBUFFERED": "1",
        **EMULATOR_CREDENTIALS,
    }
    assert caller["AWS_PROFILE"] == "work"  # the caller's mapping is not changed


def test_a_child_keeps_the_callers_keys_and_on_aws_its_profile() -> None:
    keys = {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s"}
    assert child_environment("http://moto:5000", keys)["AWS_ACCESS_KEY_ID"] == "AKIA1"
    on_aws = child_environment(None, {"AWS_PROFILE": "work", "AWS_REGION": "eu-central-1"})
    assert on_aws == {"AWS_PROFILE": "work", "AWS_REGION": "eu-central-1",
                      "AWS_DEFAULT_REGION": "eu-central-1", "PYTHONUNBUFFERED": "1"}


def test_region_prefers_aws_region_then_the_default_then_us_east_1() -> None:
    assert region_of({"AWS_REGION": "a", "AWS_DEFAULT_REGION": "b"}) == "a"
    assert region_of({"AWS_DEFAULT_REGION": "b"}) == "b"
    assert region_of({}) == "us-east-1"


def test_settings_refuse_an_endpoint_that_is_not_a_url() -> None:
    with pytest.raises(ValueError, match="endpoint_url"):
        ClientSettings(endpoint_url="localhost:5000")
    assert ClientSettings(endpoint_url="https://sqs.example").endpoint_url == "https://sqs.example"
