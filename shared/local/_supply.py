"""Carrying out a `GapPlan`: API calls for what the emulator skips, and the specs of the local
processes that stand in for ECS services, Lambda triggers, HTTP APIs, pipes and the map runs
of Distributed Map states."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import structlog

from shared.aws import AwsClients, aws_errors
from shared.errors import AwsRequestError
from shared.local import _consumers
from shared.local._distributed_map import MAP_RUNS_VISIBILITY_SECONDS
from shared.local._gaps import (
    ApiResourceSpec,
    BucketPolicySpec,
    FunctionSpec,
    GapPlan,
    QueuePolicySpec,
    StateMachineSpec,
    SubscriptionSpec,
    TimeToLiveSpec,
)
from shared.local._supervisor import ProcessSpec

__all__ = [
    "SPEC_ENV",
    "LocalProcesses",
    "apply_api_gaps",
    "module_exists",
    "plan_processes",
]

log = structlog.get_logger("fleetline.local")

SPEC_ENV = "FLEETLINE_LOCAL_SPEC"  # how a host process receives its spec (JSON)
_ECS_DEFAULT_STOP_TIMEOUT = 30.0


def module_exists(module: str) -> bool:
    """True when `module` can be imported by a child (without importing it). Children run
    `python -m ...` in this working directory, which puts it first on their path; the check
    does the same, so a console-script `fleetline` sees what its children will see."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


async def _subscribe(aws: AwsClients, sub: SubscriptionSpec) -> None:
    sns = await aws.client("sns")
    with aws_errors():
        listed = await sns.list_subscriptions_by_topic(TopicArn=sub.topic_arn)
    existing = [
        s["SubscriptionArn"]
        for s in listed.get("Subscriptions", [])
        if s["Protocol"] == sub.protocol and s["Endpoint"] == sub.endpoint
    ]
    with aws_errors():
        if existing:
            for key, value in sub.attributes.items():
                await sns.set_subscription_attributes(
                    SubscriptionArn=existing[0], AttributeName=key, AttributeValue=value
                )
        else:
            await sns.subscribe(
                TopicArn=sub.topic_arn,
                Protocol=sub.protocol,
                Endpoint=sub.endpoint,
                Attributes=sub.attributes,
                ReturnSubscriptionArn=True,
            )


async def _queue_policy(aws: AwsClients, policy: QueuePolicySpec) -> None:
    sqs = await aws.client("sqs")
    for url in policy.queue_urls:
        with aws_errors():
            await sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy.policy})


async def _bucket_policy(aws: AwsClients, policy: BucketPolicySpec) -> None:
    if not json.loads(policy.policy).get("Statement"):
        return  # only plain-HTTP denials, which the emulator cannot honour (_gaps)
    s3 = await aws.client("s3")
    with aws_errors():
        await s3.put_bucket_policy(Bucket=policy.bucket, Policy=policy.policy)


async def _time_to_live(aws: AwsClients, ttl: TimeToLiveSpec) -> None:
    dynamodb = await aws.client("dynamodb")
    try:
        with aws_errors():
            await dynamodb.update_time_to_live(
                TableName=ttl.table_name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl.attribute},
            )
    except AwsRequestError as exc:  # already enabled by an earlier `up`
        if exc.code != "ValidationException":
            raise


async def _api_resource(aws: AwsClients, spec: ApiResourceSpec) -> None:
    client = await aws.client(spec.service)
    try:
        with aws_errors():
            await getattr(client, spec.operation)(**spec.params)
    except AwsRequestError as exc:  # created by an earlier `up`
        if exc.code not in spec.exists_codes:
            raise


async def _map_runs_queue(aws: AwsClients, name: str) -> None:
    sqs = await aws.client("sqs")
    with aws_errors():
        await sqs.create_queue(
            QueueName=name,
            Attributes={"VisibilityTimeout": str(MAP_RUNS_VISIBILITY_SECONDS)},
        )


async def _state_machine(aws: AwsClients, machine: StateMachineSpec) -> None:
    for processor in machine.processors:  # the machines its Distributed Maps start
        await _state_machine(aws, processor)
    sfn = await aws.client("stepfunctions")
    # Same name -> same ARN as the stack created, so outputs and environments stay valid.
    if machine.arn:
        try:
            with aws_errors():
                await sfn.delete_state_machine(stateMachineArn=machine.arn)
        except AwsRequestError as exc:
            if exc.code not in {"StateMachineDoesNotExist", "ResourceNotFound"}:
                raise
    with aws_errors():
        await sfn.create_state_machine(
            name=machine.name,
            definition=machine.definition,
            roleArn=machine.role_arn,
            type=machine.type,
        )


async def apply_api_gaps(aws: AwsClients, plan: GapPlan) -> tuple[list[str], dict[str, str]]:
    """Create what the emulator skipped; idempotent (a second `up` on the same endpoint
    finds and keeps what the first created). Returns the logical ids supplied, and the ones
    the endpoint refused with the reason (`status` shows them); an unreachable endpoint
    raises."""
    done: list[str] = []
    problems: dict[str, str] = {}
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        *((s.logical_id, partial(_subscribe, aws, s)) for s in plan.subscriptions),
        *((p.logical_id, partial(_queue_policy, aws, p)) for p in plan.queue_policies),
        *((b.logical_id, partial(_bucket_policy, aws, b)) for b in plan.bucket_policies),
        *((t.logical_id, partial(_time_to_live, aws, t)) for t in plan.time_to_live),
        *((m.logical_id, partial(_state_machine, aws, m)) for m in plan.state_machines),
    ]
    if plan.map_runs_queue is not None:
        steps.append((plan.map_runs_queue, partial(_map_runs_queue, aws, plan.map_runs_queue)))

    async def run(logical: str, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except AwsRequestError as exc:
            problems[logical] = f"not supplied: {exc}"
            return
        done.append(logical)

    for spec in plan.api_resources:  # in order: a delivery stream after its Glue table
        await run(spec.logical_id, partial(_api_resource, aws, spec))

    # Independent resources: supplied concurrently (a few dozen requests on a busy emulator).
    async with anyio.create_task_group() as tg:
        for logical, step in steps:
            tg.start_soon(run, logical, step)
    return done, problems


@dataclass(frozen=True, kw_only=True)
class LocalProcesses:
    """The processes to run, and what was left out with the reason (shown by `status`)."""

    specs: tuple[ProcessSpec, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)


def _python_argv(command: list[str]) -> tuple[str, ...] | None:
    """A container command that runs Python, with this interpreter; None otherwise."""
    if not command or not os.path.basename(command[0]).startswith("python"):
        return None
    return (sys.executable, *command[1:])


_SIDECAR_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def _without_sidecar_endpoints(env: dict[str, str], base_env: Mapping[str, str]) -> None:
    """Sidecars (the ADOT collector) are not run locally, so an exporter endpoint on the
    task's own loopback points at nothing: use the caller's endpoint if it exported one
    (`base_env`), else drop it (the worker then exports no spans instead of logging a failure
    a batch)."""
    for key in _SIDECAR_ENDPOINTS:
        value = env.get(key, "")
        if "://127.0.0.1" in value or "://localhost" in value:
            if key in base_env:
                env[key] = base_env[key]
            else:
                del env[key]


def _command_modules(argv: tuple[str, ...]) -> list[str]:
    """Modules a `python -m module [module:attr]` command needs: the `-m` module and, for the
    worker host, the handler's module."""
    if "-m" not in argv:
        return []
    rest = argv[argv.index("-m") + 1 :]
    if not rest:
        return []
    needed = [rest[0]]
    if rest[0] == "shared.hosts.worker" and len(rest) > 1:
        needed.append(rest[1].split(":")[0])
    return needed


async def _function_env(aws: AwsClients, function: FunctionSpec) -> dict[str, str]:
    lam = await aws.client("lambda")
    with aws_errors():
        config = await lam.get_function_configuration(FunctionName=function.name)
    variables = config.get("Environment", {}).get("Variables", {})
    return {str(k): str(v) for k, v in variables.items()}


def _handler_module(handler: str) -> str:
    return handler.rsplit(".", 1)[0]


async def plan_processes(
    aws: AwsClients,
    plan: GapPlan,
    *,
    base_env: Mapping[str, str],
    free_port: Any,
    include_triggers: bool = True,
    include_services: bool = True,
    stack_name: str = "fleetline",
    api_port: int = 0,
    bind_host: str = "127.0.0.1",
    outputs: Mapping[str, str] | None = None,
    container_port: Callable[[int], int] | None = None,
) -> LocalProcesses:
    """Specs for every local process. ECS containers come from the deployed task definition
    (the emulator resolved its environment); Lambda environments from the deployed function.
    A process whose code is not importable yet is skipped with the reason, not crash-looped.

    `include_triggers=False` (real AWS) keeps only the ECS services; `include_services=False`
    leaves them out (compose.yaml runs them in containers of their own). `outputs` (the stack's)
    gives the pipes' relay the `ClaimCheckBucket` for events over 256 KB.
    `container_port(port)` moves a container's port on this machine (a later zone's copy of
    a server, which must not race the first zone's for the container port).
    """
    specs: list[ProcessSpec] = []
    skipped: dict[str, str] = {}
    for service in plan.services if include_services else ():
        ecs = await aws.client("ecs")
        with aws_errors():
            described = await ecs.describe_task_definition(taskDefinition=service.task_definition)
        containers = described["taskDefinition"]["containerDefinitions"]
        runnable = [(c, _python_argv(list(c.get("command") or []))) for c in containers]
        runnable = [(c, argv) for c, argv in runnable if argv is not None]
        if not runnable:
            skipped[service.logical_id] = "no container runs a Python command"
        for container, argv in runnable:
            assert argv is not None
            name = (
                service.logical_id
                if len(runnable) == 1
                else f"{service.logical_id}-{container['name']}"
            )
            absent = [m for m in _command_modules(argv) if not module_exists(m)]
            if absent:
                skipped[name] = f"module {absent[0]} not found"
                continue
            env = {**base_env, **{e["name"]: e["value"] for e in container.get("environment", [])}}
            _without_sidecar_endpoints(env, base_env)
            ports = [
                p["containerPort"]
                for p in container.get("portMappings", [])
                if "containerPort" in p
            ]
            url = None
            if ports:
                # a later zone's copy of a server must not race the first for its port
                wanted = int(ports[0]) if container_port is None else container_port(int(ports[0]))
                port = local_port(wanted, bind_host, free_port)
                listen_where(env, bind_host, port)
                url = f"http://{_url_host(bind_host)}:{port}"
            specs.append(
                ProcessSpec(
                    name=name,
                    kind="service",
                    argv=argv,
                    env=env,
                    stop_timeout=float(container.get("stopTimeout") or _ECS_DEFAULT_STOP_TIMEOUT),
                    url=url,
                )
            )
    if not include_triggers:
        return LocalProcesses(specs=tuple(specs), skipped=skipped)

    host = (sys.executable, "-m", "shared.local._hosts")
    by_function: dict[str, list[dict[str, Any]]] = {}
    functions: dict[str, FunctionSpec] = {}
    for mapping in plan.event_source_mappings:
        if not mapping.enabled:
            skipped[mapping.logical_id] = "disabled in the template"
            continue
        functions[mapping.function.logical_id] = mapping.function
        by_function.setdefault(mapping.function.logical_id, []).append(
            {
                "logical_id": mapping.logical_id,
                "source_arn": mapping.source_arn,
                "batch_size": mapping.batch_size,
                "batching_window_seconds": mapping.batching_window_seconds,
                "starting_position": mapping.starting_position,
                "report_batch_item_failures": mapping.report_batch_item_failures,
                "lease_table": _consumers.local_lease_table(stack_name),
            }
        )
    for logical, mappings in by_function.items():
        function = functions[logical]
        module = _handler_module(function.handler)
        if not module_exists(module):
            skipped[f"{logical}-triggers"] = f"module {module} not found"
            continue
        reasons = [_consumers.missing(_consumers.source_kind(m["source_arn"])) for m in mappings]
        if any(reasons):
            skipped[f"{logical}-triggers"] = next(r for r in reasons if r)
            continue
        spec = {"kind": "triggers", "function": _function_json(function), "mappings": mappings}
        env = {
            **base_env,
            **await _function_env(aws, function),
            # What the Lambda runtime sets: adapters name their logs and traces after it.
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            SPEC_ENV: json.dumps(spec),
        }
        specs.append(
            ProcessSpec(
                name=f"{logical}-triggers",
                kind="lambda",
                argv=host,
                env=env,
                stop_timeout=float(function.timeout) + 5,
            )
        )

    for api in plan.http_apis:
        routes = []
        api_env: dict[str, str] = dict(base_env)
        missing = [
            r.function.handler
            for r in api.routes
            if not module_exists(_handler_module(r.function.handler))
        ]
        if missing:
            skipped[api.logical_id] = f"handler module of {missing[0]} not found"
            continue
        for route in api.routes:
            # One process serves every route of the API, so the functions' environments are
            # merged; a variable two functions set differently is reported, first one wins.
            for key, value in (await _function_env(aws, route.function)).items():
                if key in api_env and key not in base_env and api_env[key] != value:
                    log.warning(
                        "conflicting function environment in one local API",
                        api=api.logical_id,
                        variable=key,
                    )
                    continue
                api_env[key] = value
            routes.append(
                {"route_key": route.route_key, "function": _function_json(route.function)}
            )
        # A fixed --api-port gives the first API that port and the next ones the following.
        port = api_port + len([s for s in specs if s.kind == "api"]) if api_port else free_port()
        api_spec = {
            "kind": "http-api",
            "name": api.name,
            "port": port,
            "routes": routes,
            "host": bind_host,
        }
        api_env[SPEC_ENV] = json.dumps(api_spec)
        names = {r.function.name for r in api.routes}
        if len(names) == 1:  # one function behind every route: the runtime's name for it
            api_env["AWS_LAMBDA_FUNCTION_NAME"] = names.pop()
        specs.append(
            ProcessSpec(
                name=api.logical_id,
                kind="api",
                argv=host,
                env=api_env,
                stop_timeout=10.0,
                url=f"http://{_url_host(bind_host)}:{port}",
            )
        )

    if plan.map_runs_queue is not None:
        specs.append(
            ProcessSpec(
                name="map-runs",
                kind="map-runs",
                argv=host,
                env={
                    **base_env,
                    SPEC_ENV: json.dumps({"kind": "map-runs", "queue": plan.map_runs_queue}),
                },
                stop_timeout=10.0,
            )
        )

    for pipe in plan.pipes:
        if not pipe.running:
            skipped[pipe.logical_id] = "DesiredState is STOPPED"
            continue
        reason = _consumers.missing("pipe")
        if reason:
            skipped[pipe.logical_id] = reason
            continue
        pipe_spec: dict[str, Any] = {
            "kind": "pipe",
            "logical_id": pipe.logical_id,
            "name": pipe.name,
            "source_arn": pipe.source_arn,
            "target_arn": pipe.target_arn,
            "enrichment_arn": pipe.enrichment_arn,
            "source_parameters": pipe.source_parameters,
            "target_parameters": pipe.target_parameters,
            "lease_table": _consumers.local_lease_table(stack_name),
            # The relay stands in for the Pipe and its enrichment, which claim-checks.
            "claim_check_bucket": (outputs or {}).get("ClaimCheckBucket"),
        }
        specs.append(
            ProcessSpec(
                name=pipe.logical_id,
                kind="pipe",
                argv=host,
                env={**base_env, SPEC_ENV: json.dumps(pipe_spec)},
                stop_timeout=10.0,
            )
        )
    return LocalProcesses(specs=tuple(specs), skipped=skipped)


def _function_json(function: FunctionSpec) -> dict[str, Any]:
    return {
        "logical_id": function.logical_id,
        "name": function.name,
        "handler": function.handler,
        "timeout": function.timeout,
    }


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def _url_host(bind_host: str) -> str:
    """Where a client reaches a server bound to `bind_host` (a wildcard: loopback)."""
    return "127.0.0.1" if bind_host in _WILDCARDS else bind_host


def port_free(host: str, port: int) -> bool:
    """True when a server can listen on `host`:`port` now (nothing else holds it)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def local_port(container_port: int, bind_host: str, free_port: Any) -> int:
    """The port a container's server listens on locally: its container port when free on
    `bind_host`, else a free one (`up` prints the URL it chose; another program holding the
    container port must not be mistaken for our server)."""
    return container_port if port_free(bind_host, container_port) else int(free_port())


def listen_where(env: dict[str, str], bind_host: str, port: int) -> None:
    """Point a container's listening settings at `bind_host` and `port`: every
    `FLEETLINE_<NAME>_HOST` variable (the template's say 0.0.0.0, right in a container) becomes
    `bind_host`, and its `FLEETLINE_<NAME>_PORT` the port; with no such variable the
    conventional FLEETLINE_<NAME> is unknown, so `FLEETLINE_BIND` / `FLEETLINE_PORT` are set."""
    named = [key[: -len("_HOST")] for key in env
             if key.startswith("FLEETLINE_") and key.endswith("_HOST")]
    for prefix in named:
        env[f"{prefix}_HOST"] = bind_host
        env[f"{prefix}_PORT"] = str(port)
    env["FLEETLINE_BIND"] = bind_host
    env["FLEETLINE_PORT"] = str(port)
