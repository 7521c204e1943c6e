"""compose.yaml is rendered from the template (`fleetline compose`), never written by hand:
the committed file is what the renderer makes, every ECS service of the template has its
container, and each container's environment is its task definition's (with the two local
rules of `shared.local._compose`, and the AWS endpoint and credentials added)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.cloudformation import load_template
from shared.local import compose_services, local_environment, predicted_facts, render_compose

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "template.yaml"
COMPOSE = ROOT / "compose.yaml"
LOCAL_ADDITIONS = {"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                   "AWS_SECRET_ACCESS_KEY"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_the_committed_file_is_what_the_template_renders() -> None:
    assert COMPOSE.read_text() == render_compose(TEMPLATE), (
        "compose.yaml is stale: run `fleetline compose` and commit it")


def test_one_container_per_ecs_service(template: dict[str, Any], compose: dict[str, Any]) -> None:
    services = {lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::ECS::Service"}
    rendered = compose_services(template, predicted_facts(template))
    assert {s.logical_id for s in rendered} == services
    assert len(rendered) == len(services) >= 10
    for service in rendered:
        assert service.name in compose["services"], service.name


def uncompose(value: str) -> str:
    return value.replace("$$", "$")


def test_each_container_gets_its_task_definitions_environment(
    template: dict[str, Any], compose: dict[str, Any],
) -> None:
    facts = predicted_facts(template)
    checked = 0
    for service in compose_services(template, facts):
        container = compose["services"][service.name]
        env = {k: uncompose(str(v)) for k, v in container["environment"].items()}
        assert set(env) - set(service.environment) == LOCAL_ADDITIONS, service.name
        task_env = {k: v for k, v in env.items() if k not in LOCAL_ADDITIONS}
        assert task_env == local_environment(service.environment), service.name
        # The only differences are the two documented local rules.
        for key, value in service.environment.items():
            if task_env[key] != value:
                assert (value, task_env[key]) == ("0.0.0.0", "127.0.0.1") or (
                    key.startswith("OTEL_EXPORTER_OTLP") and task_env[key] == f"${{{key}:-}}"
                ), (service.name, key)
            checked += 1
        assert container["command"] == list(service.command)
        assert container["stop_grace_period"] == f"{service.stop_grace_seconds}s"
        assert container.get("read_only", False) is service.read_only
        assert container["network_mode"] == "host"
        assert container["depends_on"] == {"glue": {"condition": "service_healthy"}}
    assert checked > 60


def test_every_fleetline_value_is_known_before_deploying(template: dict[str, Any]) -> None:
    """No placeholder is left: each FLEETLINE_* value is a name, URL or ARN of the stack."""
    for service in compose_services(template, predicted_facts(template)):
        for key, value in service.environment.items():
            assert value, (service.name, key)
            assert "${" not in value, (service.name, key, value)
            assert "{'" not in value, (service.name, key, value)


def test_stop_grace_periods_are_the_stop_timeouts(template: dict[str, Any],
                                                  compose: dict[str, Any]) -> None:
    for lid, task in template["Resources"].items():
        if task["Type"] != "AWS::ECS::TaskDefinition":
            continue
        worker = task["Properties"]["ContainerDefinitions"][0]
        assert worker["StopTimeout"] == 60, lid
    grace = {name: s.get("stop_grace_period") for name, s in compose["services"].items()}
    assert grace["telemetry"] == "60s"


def test_nothing_listens_beyond_the_loopback(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert "0.0.0.0" not in text
    for name, service in compose["services"].items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service, name


def test_the_tracing_profile_is_optional(compose: dict[str, Any]) -> None:
    profiled = {n for n, s in compose["services"].items() if s.get("profiles")}
    assert profiled == {"otel-collector", "jaeger"}
    for name, service in compose["services"].items():
        if name not in profiled:
            assert not set(service.get("depends_on", {})) & profiled, name


@pytest.mark.parametrize("profile", [[], ["--profile", "tracing"]])
def test_docker_compose_accepts_the_file(profile: list[str]) -> None:
    """`docker compose config` (Compose v2 from the tools venv, `make install`) validates the
    file as a fresh clone has it, with and without the tracing profile; no daemon needed."""
    found = sorted((ROOT / ".venv" / "tools").glob(
        "lib/python3*/site-packages/compose/docker-compose"))
    if not found:
        message = "docker compose v2 is missing: `make install` puts it in .venv/tools"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLEETLINE_", "DOCKER_", "COMPOSE_"))}
    done = subprocess.run([str(found[0]), "-f", str(COMPOSE), *profile, "config", "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
