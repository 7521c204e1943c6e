"""compose.yaml, rendered from the template: one container per ECS service, the emulator, and
the local glue (what `fleetline up --no-services` runs: the deployment, the Lambda triggers,
pipes, the HTTP API and the map runs).

The template stays the single source: each service's command, environment, stop grace
period and read-only root file system are its task definition's, resolved the way the
emulator deployment will resolve them. Every value a process receives must therefore be known
before deploying: resources the template names are predicted from their names (a queue's URL,
a topic's ARN, ...); the ones it leaves CloudFormation to name are named by the emulator
deployment itself (`shared.deployment.emulator_names`). `tests/unit/test_compose.py` keeps
the committed compose.yaml equal to `render_compose()`, and compares each container's
environment with its task definition's; `tests/integration/test_compose_stack.py` compares
the prediction with what the emulator deployed.

Two local rules change a task definition's environment, the same ones `fleetline up`
applies to its processes (docs/containers.md):
- an address a task listens on (`0.0.0.0`, every interface of the task) becomes 127.0.0.1:
  every container runs on the host's network, where "every interface" would be the host's;
- an OTLP endpoint on the task's loopback (the ADOT sidecar) becomes the one in your shell
  (`OTEL_EXPORTER_OTLP_ENDPOINT`), empty by default (no export): the sidecar is the
  `tracing` profile's collector, which listens on that same loopback address.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from shared.cloudformation import DEFAULT_TEMPLATE, Template, TemplateError, load_template
from shared.deployment import emulator_names, local_parameters
from shared.local._template import StackFacts, resolve

__all__ = [
    "COMPOSE_FILE",
    "LISTEN_EVERYWHERE",
    "ComposeService",
    "compose_services",
    "local_environment",
    "predicted_facts",
    "render_compose",
]

COMPOSE_FILE: Final = Path("compose.yaml")
EMULATOR_ACCOUNT: Final = "123456789012"  # moto's default account
LISTEN_EVERYWHERE: Final = "0.0.0.0"
_LOOPBACK: Final = "127.0.0.1"
_SIDECAR_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_ECS_DEFAULT_STOP_TIMEOUT: Final = 30  # seconds, when a container sets no StopTimeout
_IMAGE_PARAMETER: Final = "ImageUri"

# How the emulator turns a resource's name into the physical id `Ref` returns.
_PHYSICAL_ID: Final[dict[str, tuple[str, str]]] = {
    # type: (name property, physical id with {name}, {region}, {account})
    "AWS::SQS::Queue": ("QueueName", "https://sqs.{region}.amazonaws.com/{account}/{name}"),
    "AWS::SNS::Topic": ("TopicName", "arn:aws:sns:{region}:{account}:{name}"),
    "AWS::DynamoDB::Table": ("TableName", "{name}"),
    "AWS::Kinesis::Stream": ("Name", "{name}"),
    "AWS::Events::EventBus": ("Name", "{name}"),
    "AWS::StepFunctions::StateMachine": (
        "StateMachineName", "arn:aws:states:{region}:{account}:stateMachine:{name}"),
    "AWS::S3::Bucket": ("BucketName", "{name}"),
    "AWS::IAM::Role": ("RoleName", "{name}"),
    "AWS::ECS::Cluster": ("ClusterName", "{name}"),
    "AWS::Logs::LogGroup": ("LogGroupName", "{name}"),
}


def predicted_facts(
    template: Template,
    *,
    stack_name: str = "fleetline",
    region: str = "us-east-1",
    parameters: Mapping[str, str] | None = None,
) -> StackFacts:
    """The stack as the emulator deployment will make it, before it exists: the physical id of
    every resource whose name the template (or `emulator_names`) fixes. Pure.

    Raises:
        TemplateError: a name cannot be resolved.
    """
    values = dict(local_parameters(region=region))
    values.update(parameters or {})
    declared = set(template.get("Parameters", {}))
    facts = StackFacts(stack_name=stack_name, region=region, account=EMULATOR_ACCOUNT,
                       parameters={k: v for k, v in values.items() if k in declared})
    generated = emulator_names(template, stack_name)
    physical: dict[str, str] = {}
    for logical, resource in template.get("Resources", {}).items():
        rule = _PHYSICAL_ID.get(str(resource.get("Type")))
        if rule is None:
            continue
        prop, form = rule
        raw = (resource.get("Properties") or {}).get(prop)
        if raw is None and logical in generated:
            raw = generated[logical][1]
        if raw is None:
            continue
        name = str(resolve(raw, template, facts))
        physical[logical] = form.format(name=name, region=region, account=EMULATOR_ACCOUNT)
    return StackFacts(stack_name=stack_name, region=region, account=EMULATOR_ACCOUNT,
                      physical=physical, parameters=facts.parameters)


@dataclass(frozen=True, kw_only=True)
class ComposeService:
    """One ECS service's container, as compose runs it."""

    name: str  # the service's name without the stack prefix: `inventory`
    logical_id: str  # the AWS::ECS::Service
    command: tuple[str, ...]
    environment: dict[str, str]  # the task definition's, resolved
    stop_grace_seconds: int
    read_only: bool
    ports: tuple[int, ...] = ()


def compose_services(template: Template, facts: StackFacts) -> tuple[ComposeService, ...]:
    """Every ECS service's container that runs the project's image (`ImageUri`; not the ADOT
    sidecar), with its task definition's command and environment resolved against `facts`.

    Raises:
        TemplateError: a value cannot be resolved (say which resource, and why).
    """
    resources = template["Resources"]
    found = []
    for logical, service in resources.items():
        if service.get("Type") != "AWS::ECS::Service":
            continue
        props = service.get("Properties", {})
        task_ref = props.get("TaskDefinition")
        task_id = task_ref.get("Ref") if isinstance(task_ref, dict) else None
        if task_id not in resources:
            raise TemplateError(f"{logical}: TaskDefinition must be a Ref to a task definition")
        service_name = str(resolve(props.get("ServiceName", logical), template, facts))
        short = service_name.removeprefix(f"{facts.stack_name}-")
        containers = resources[task_id]["Properties"]["ContainerDefinitions"]
        ours = [c for c in containers if c.get("Image") == {"Ref": _IMAGE_PARAMETER}]
        for container in ours:
            try:
                environment = {
                    str(e["Name"]): str(resolve(e["Value"], template, facts))
                    for e in container.get("Environment", [])
                }
            except TemplateError as exc:
                raise TemplateError(f"{task_id}: {exc}") from None
            found.append(ComposeService(
                name=short if len(ours) == 1 else f"{short}-{container['Name']}",
                logical_id=logical,
                command=tuple(str(resolve(a, template, facts)) for a in container["Command"]),
                environment=environment,
                stop_grace_seconds=int(container.get("StopTimeout", _ECS_DEFAULT_STOP_TIMEOUT)),
                read_only=bool(container.get("ReadonlyRootFilesystem", False)),
                ports=tuple(int(p["ContainerPort"]) for p in container.get("PortMappings", [])),
            ))
    return tuple(found)


def local_environment(task_environment: Mapping[str, str]) -> dict[str, str]:
    """A task definition's environment as a container of compose.yaml gets it: the two local
    rules of the module docstring applied, nothing else changed. Pure."""
    local: dict[str, str] = {}
    for key, value in task_environment.items():
        if value == LISTEN_EVERYWHERE:
            value = _LOOPBACK
        elif key in _SIDECAR_ENDPOINTS and re.match(r"https?://(127\.0\.0\.1|localhost)", value):
            value = f"${{{key}:-}}"
        local[key] = value
    return local


def _glue_grace_seconds(template: Template) -> int:
    """The glue stops its children at once and waits for each up to its stop timeout (a
    function's timeout + 5 s, `shared.local._supply`); 10 s more for itself."""
    timeouts = [int(r.get("Properties", {}).get("Timeout", 3))
                for r in template["Resources"].values() if r.get("Type") == "AWS::Lambda::Function"]
    return max([*timeouts, _ECS_DEFAULT_STOP_TIMEOUT]) + 5 + 10


_HEADER = """\
# Generated from deploy/template.yaml by `fleetline compose`: do not edit by hand
# (tests/unit/test_compose.py fails when this file and the template disagree).
#
#   fleetline build                  # the images (or: docker compose build)
#   docker compose up -d --wait      # the emulator, the glue, one container per ECS service
#   docker compose down              # stops and removes all of it
#
# Every container runs on the host's network and listens on 127.0.0.1 only: the emulator on
# ${FLEETLINE_EMULATOR_PORT:-5000}, the orders HTTP API on ${FLEETLINE_API_PORT:-8000}, the
# dashboard on 8080 (its task definition's port). Then the README's "Try it" steps, each
# `fleetline` command run in the glue container (`docker compose exec glue fleetline ...`,
# which knows the stack) and ORDERS_API=http://127.0.0.1:8000.
#
# Each service's command, environment, stop grace period (its StopTimeout) and read-only
# root file system are its task definition's (docs/containers.md says how they are resolved
# and the two local rules: listen on 127.0.0.1, and the ADOT sidecar's OTLP endpoint is
# yours). The `tracing` profile adds the ADOT collector (the sidecar's stand-in, on the same
# 127.0.0.1:4318) and Jaeger's UI on http://127.0.0.1:16686; it needs a registry:
#
#   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 docker compose --profile tracing up -d
#
# The profile cannot run on machines without a container registry (the CI machines of this
# project): its images are public ones and are not built here.
"""


def render_compose(
    template_path: Path = DEFAULT_TEMPLATE,
    *,
    stack_name: str = "fleetline",
    region: str = "us-east-1",
) -> str:
    """compose.yaml's text for the template at `template_path`. Pure but for reading it.

    Raises:
        TemplateError: the template cannot be read, or a value cannot be resolved.
    """
    template = load_template(template_path)
    facts = predicted_facts(template, stack_name=stack_name, region=region)
    endpoint = "http://127.0.0.1:${FLEETLINE_EMULATOR_PORT:-5000}"
    aws_env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    image = "${FLEETLINE_IMAGE:-fleetline:local}"
    build = {
        "context": ".",
        "args": {"BASE": "${FLEETLINE_BASE_IMAGE:-python:3.11-slim}"},
        "secrets": ["ca"],
    }
    hardened: dict[str, Any] = {
        "network_mode": "host",
        "read_only": True,
        "tmpfs": ["/tmp"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
    }
    services: dict[str, Any] = {
        "emulator": {
            "image": "${FLEETLINE_EMULATOR_IMAGE:-fleetline-emulator:local}",
            "build": {**build, "target": "emulator"},
            **hardened,
            "command": ["-H", _LOOPBACK, "-p", "${FLEETLINE_EMULATOR_PORT:-5000}"],
            # Step Functions tasks call the server back on this port (docs/local.md).
            "environment": {"MOTO_PORT": "${FLEETLINE_EMULATOR_PORT:-5000}"},
            "healthcheck": {
                "test": ["CMD", "python", "-c",
                         "import os, urllib.request; urllib.request.urlopen("
                         "'http://127.0.0.1:%s/_fleetline/emulator' % os.environ['MOTO_PORT'])"],
                "interval": "2s", "timeout": "2s", "retries": 60,
            },
            "restart": "unless-stopped",
        },
        "glue": {
            "image": image,
            "build": {**build, "target": "worker"},
            **hardened,
            "command": [
                "fleetline", "up", "--no-services", "--stack-name", stack_name,
                "--template", "/opt/fleetline/deploy/template.yaml",
                "--api-port", "${FLEETLINE_API_PORT:-8000}", "--bind", _LOOPBACK,
            ],
            "volumes": ["./deploy:/opt/fleetline/deploy:ro"],
            "environment": {**aws_env, "FLEETLINE_STATE_DIR": "/tmp/fleetline"},
            "healthcheck": {
                # READY: deployed, gaps supplied, the API listening (the state file says so).
                "test": ["CMD", "python", "-c",
                         "import json, sys; sys.exit(json.load(open("
                         "'/tmp/fleetline/state.json'))['phase'] != 'ready')"],
                "interval": "2s", "timeout": "2s", "retries": 90, "start_period": "5s",
            },
            "stop_grace_period": f"{_glue_grace_seconds(template)}s",
            "depends_on": {"emulator": {"condition": "service_healthy"}},
            "restart": "unless-stopped",
        },
    }
    for service in compose_services(template, facts):
        spec: dict[str, Any] = {
            "image": image,
            **hardened,
            "command": list(service.command),
            "environment": {**local_environment(_escaped(service.environment)), **aws_env},
            "stop_grace_period": f"{service.stop_grace_seconds}s",
            "depends_on": {"glue": {"condition": "service_healthy"}},
            # ECS replaces a task that dies; docker restarts the container.
            "restart": "unless-stopped",
        }
        if not service.read_only:
            spec.pop("read_only")
        services[service.name] = spec
    services["otel-collector"] = {
        "profiles": ["tracing"],
        "image": "public.ecr.aws/aws-observability/aws-otel-collector:v0.40.0",
        "network_mode": "host",
        "command": ["--config=/etc/fleetline/collector.yaml"],
        "volumes": ["./deploy/otel/local-collector.yaml:/etc/fleetline/collector.yaml:ro"],
        "depends_on": ["jaeger"],
    }
    services["jaeger"] = {
        "profiles": ["tracing"],
        "image": "jaegertracing/all-in-one:1.62.0",
        "network_mode": "host",
        "command": [
            "--collector.otlp.enabled=true",
            "--collector.otlp.grpc.host-port=127.0.0.1:14317",
            "--collector.otlp.http.host-port=127.0.0.1:14318",
            "--query.http-server.host-port=127.0.0.1:16686",
        ],
    }
    document = {
        "name": stack_name,
        "services": services,
        # An empty file unless FLEETLINE_CA_BUNDLE names the proxy's CA bundle; the image's
        # pip runs use it when it is not empty (Dockerfile).
        "secrets": {"ca": {"file": "${FLEETLINE_CA_BUNDLE:-/dev/null}"}},
    }
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100,
                     default_flow_style=False)
    return _HEADER + "\n" + body


class _Dumper(yaml.SafeDumper):
    """Every value written out where it is used: no `&id001` anchors for shared lists."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _escaped(environment: Mapping[str, str]) -> dict[str, str]:
    """Values from the template as compose reads them literally (`$` is interpolation)."""
    return {k: v.replace("$", "$$") for k, v in environment.items()}

