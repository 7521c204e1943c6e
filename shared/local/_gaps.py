"""What the emulator skips, planned from the template and the deployed stack (pure).

`plan_gaps(template, facts)` reads the template's resources of the kinds the emulator does
not carry out (see ../shared/notes/emulator.md "Gaps") and returns what the local runner
must supply, every name and ARN resolved from the deployed stack:

- created through the API: SNS subscriptions (with filter policies), SQS queue policies,
  DynamoDB TTL settings, the resources moto's CloudFormation skips but its API serves (Glue
  databases and tables, Firehose delivery streams: `API_CREATED`, created in that order,
  the call's parameters being the resource's properties), state machines
  (CloudFormation-created ones cannot execute), their Distributed Map states rewritten and
  their item processors as machines of their own (`shared.local._distributed_map`), and the
  local map-runs queue those send requests to;
- run as local processes: EventBridge Pipes (the outbox relay), Lambda event source
  mappings (the runtime's consumers + the Lambda adapter), HTTP APIs (a local server that
  builds API Gateway v2 events), ECS services (the task definition's command), and the
  map runs of Distributed Map states.

(A rule target that is an SNS topic is not a gap here: moto has none, the embedded
emulator fills it, `shared.emulator`.)

Nothing is written twice: a spec holds only what the template says, resolved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.cloudformation import DEFAULT_TEMPLATE, Template, TemplateError
from shared.cloudformation import statemachines_dir as statemachines_of
from shared.local._distributed_map import DefinitionError, local_definition, map_runs_queue
from shared.local._template import StackFacts, condition_holds, resolve

__all__ = [
    "API_CREATED",
    "ApiResourceSpec",
    "BucketPolicySpec",
    "EventSourceMappingSpec",
    "FunctionSpec",
    "GapPlan",
    "HttpApiSpec",
    "PipeSpec",
    "QueuePolicySpec",
    "RouteSpec",
    "ServiceSpec",
    "StateMachineSpec",
    "SubscriptionSpec",
    "TimeToLiveSpec",
    "plan_gaps",
]

# Resource types the emulator skips or only records, and how the local runner covers them.
SUPPLIED = {
    "AWS::SNS::Subscription": "created through the API",
    "AWS::SQS::QueuePolicy": "created through the API",
    "AWS::S3::BucketPolicy": "created through the API",
    "AWS::StepFunctions::StateMachine": "re-created through the API",
    "AWS::Pipes::Pipe": "local relay process",
    "AWS::Lambda::EventSourceMapping": "local poller process",
    "AWS::ApiGatewayV2::Api": "local HTTP server",
    "AWS::ECS::Service": "local process",
}
# Skipped by moto's CloudFormation, served by its API: (service, create call, the error codes
# that mean "already there" on a second `up`). Created in this order (a delivery stream
# reads its Glue table's schema when it writes).
API_CREATED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "AWS::Glue::Database": ("glue", "create_database", ("AlreadyExistsException",)),
    "AWS::Glue::Table": ("glue", "create_table", ("AlreadyExistsException",)),
    "AWS::KinesisFirehose::DeliveryStream": (
        "firehose", "create_delivery_stream", ("ResourceInUseException",)),
}
NOT_EMULATED = {
    "AWS::Athena::WorkGroup": "not needed locally (the monthly report runs on DuckDB)",
    "AWS::IoT::TopicRule": "not emulated (the simulator writes where the rule would)",
    "AWS::CloudWatch::Alarm": "not emulated",
    "AWS::Events::Endpoint": (
        "not emulated (no global endpoints: producers publish to the bus of their Region; "
        "the failover drill switches them, docs/zones.md)"),
    "AWS::ApplicationAutoScaling::ScalableTarget": "not emulated",
    "AWS::ApplicationAutoScaling::ScalingPolicy": "not emulated",
    "AWS::Scheduler::Schedule": "not emulated",
    "AWS::EventSchemas::Registry": "not emulated",
    "AWS::ApiGatewayV2::Route": "served by the local HTTP server",
    "AWS::ApiGatewayV2::Integration": "served by the local HTTP server",
    "AWS::ApiGatewayV2::Stage": "served by the local HTTP server",
    "AWS::SNS::TopicPolicy": "not enforced by the emulator",
}


@dataclass(frozen=True, kw_only=True)
class SubscriptionSpec:
    logical_id: str
    topic_arn: str
    protocol: str
    endpoint: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class QueuePolicySpec:
    logical_id: str
    queue_urls: tuple[str, ...]
    policy: str


@dataclass(frozen=True, kw_only=True)
class BucketPolicySpec:
    logical_id: str
    bucket: str
    policy: str


@dataclass(frozen=True, kw_only=True)
class ApiResourceSpec:
    """A resource created with one API call (`API_CREATED`); `params` are its resolved
    properties, which are the call's parameters."""

    logical_id: str
    service: str
    operation: str
    params: dict[str, Any]
    exists_codes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TimeToLiveSpec:
    logical_id: str
    table_name: str
    attribute: str


@dataclass(frozen=True, kw_only=True)
class StateMachineSpec:
    """A state machine to create on the emulator. `definition` is the template's, with its
    Distributed Map states rewritten; `processors` are their item processors' machines
    (logical id `<machine's logical id>/<state>`), created before it."""

    logical_id: str
    name: str
    arn: str | None
    definition: str
    role_arn: str
    type: str = "STANDARD"
    processors: tuple[StateMachineSpec, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PipeSpec:
    logical_id: str
    name: str
    source_arn: str
    target_arn: str
    enrichment_arn: str | None = None
    source_parameters: dict[str, Any] = field(default_factory=dict)
    target_parameters: dict[str, Any] = field(default_factory=dict)
    running: bool = True  # DesiredState


@dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    logical_id: str
    name: str
    handler: str  # "module.function", as Lambda reads it
    timeout: int = 3


@dataclass(frozen=True, kw_only=True)
class EventSourceMappingSpec:
    logical_id: str
    function: FunctionSpec
    source_arn: str
    batch_size: int = 10
    batching_window_seconds: int = 0
    starting_position: str = "TRIM_HORIZON"
    report_batch_item_failures: bool = False
    enabled: bool = True


@dataclass(frozen=True, kw_only=True)
class RouteSpec:
    route_key: str  # "POST /orders", "GET /orders/{id}", "$default"
    function: FunctionSpec


@dataclass(frozen=True, kw_only=True)
class HttpApiSpec:
    logical_id: str
    name: str
    routes: tuple[RouteSpec, ...]


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    logical_id: str
    name: str
    cluster: str
    task_definition: str  # ARN: the emulator resolves the containers' environment
    desired_count: int = 1


@dataclass(frozen=True, kw_only=True)
class GapPlan:
    subscriptions: tuple[SubscriptionSpec, ...] = ()
    queue_policies: tuple[QueuePolicySpec, ...] = ()
    bucket_policies: tuple[BucketPolicySpec, ...] = ()
    time_to_live: tuple[TimeToLiveSpec, ...] = ()
    api_resources: tuple[ApiResourceSpec, ...] = ()  # in creation order
    state_machines: tuple[StateMachineSpec, ...] = ()
    pipes: tuple[PipeSpec, ...] = ()
    event_source_mappings: tuple[EventSourceMappingSpec, ...] = ()
    http_apis: tuple[HttpApiSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    map_runs_queue: str | None = None  # the local queue, when a machine has Distributed Maps
    problems: dict[str, str] = field(default_factory=dict)  # logical id -> why not supplied

    def functions(self) -> dict[str, FunctionSpec]:
        """Every function a local process hosts, by logical id."""
        found = {m.function.logical_id: m.function for m in self.event_source_mappings}
        for api in self.http_apis:
            found.update({r.function.logical_id: r.function for r in api.routes})
        return found


def _of_type(template: Template, kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (logical, resource)
        for logical, resource in template["Resources"].items()
        if resource.get("Type") == kind
    ]


def _props(resource: dict[str, Any], template: Template, facts: StackFacts) -> dict[str, Any]:
    resolved = resolve(resource.get("Properties", {}), template, facts)
    assert isinstance(resolved, dict)
    return resolved


def _as_json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _logical_for(template: Template, facts: StackFacts, kind: str, ref: str) -> str:
    """The logical id of the resource of `kind` whose name, ARN or physical id is `ref`."""
    for logical, resource in _of_type(template, kind):
        candidates = {logical, facts.physical.get(logical, "")}
        if kind == "AWS::Lambda::Function":
            name = facts.physical.get(logical) or str(
                resolve(resource.get("Properties", {}).get("FunctionName", ""), template, facts)
            )
            candidates |= {name, f"arn:aws:lambda:{facts.region}:{facts.account}:function:{name}"}
        if ref in candidates or ref.split(":")[-1] in candidates:
            return logical
    raise TemplateError(f"no {kind} in the template is named {ref!r}")


def _function(template: Template, facts: StackFacts, ref: str) -> FunctionSpec:
    if ref.startswith("arn:") and ref.count(":") > 6:  # qualified ARN (alias / version)
        ref = ":".join(ref.split(":")[:7])
    logical = _logical_for(template, facts, "AWS::Lambda::Function", ref)
    props = _props(template["Resources"][logical], template, facts)
    handler = props.get("Handler")
    if not handler:
        raise TemplateError(f"{logical}: Handler is required to run the function locally")
    return FunctionSpec(
        logical_id=logical,
        name=facts.physical.get(logical) or str(props.get("FunctionName", logical)),
        handler=str(handler),
        timeout=int(props.get("Timeout", 3)),
    )


def _definition(
    logical: str,
    props: dict[str, Any],
    statemachines_dir: Path,
) -> str:
    if "DefinitionString" in props:
        text = str(props["DefinitionString"])
    elif "Definition" in props:
        text = json.dumps(props["Definition"])
    elif "DefinitionS3Location" in props:
        key = str(props["DefinitionS3Location"].get("Key", ""))
        path = statemachines_dir / Path(key).name
        if not path.is_file():
            raise TemplateError(f"{logical}: definition {path} not found")
        text = path.read_text()
    else:
        raise TemplateError(f"{logical}: no Definition, DefinitionString or DefinitionS3Location")
    for key, value in dict(props.get("DefinitionSubstitutions", {})).items():
        text = text.replace("${" + key + "}", str(value))
    return text


def _http_apis(template: Template, facts: StackFacts) -> tuple[HttpApiSpec, ...]:
    # Only the IntegrationUri is resolved: ApiId refers to the API, which has no physical
    # id on the emulator.
    integrations = {
        logical: {
            "IntegrationUri": resolve(
                resource.get("Properties", {}).get("IntegrationUri", ""), template, facts
            )
        }
        for logical, resource in _of_type(template, "AWS::ApiGatewayV2::Integration")
    }
    routes = [
        (logical, resource.get("Properties", {}))
        for logical, resource in _of_type(template, "AWS::ApiGatewayV2::Route")
    ]
    apis = []
    for api_logical, api in _of_type(template, "AWS::ApiGatewayV2::Api"):
        props = api.get("Properties", {})
        if str(props.get("ProtocolType", "HTTP")) != "HTTP":
            continue
        specs: list[RouteSpec] = []
        if "Target" in props:  # quick create: one $default route to a function
            target = str(resolve(props["Target"], template, facts))
            specs.append(
                RouteSpec(route_key="$default", function=_function(template, facts, target))
            )
        for route_logical, route in routes:
            api_id = route.get("ApiId")
            if api_id != {"Ref": api_logical}:
                continue
            target = route.get("Target")
            integration_logical = _integration_of(target)
            if integration_logical is None or integration_logical not in integrations:
                raise TemplateError(
                    f"{route_logical}: Target must be integrations/${{Integration}} "
                    "of an AWS_PROXY integration in this template"
                )
            uri = str(integrations[integration_logical].get("IntegrationUri", ""))
            # IntegrationUri may be a function ARN or the apigateway invocation path.
            if "/functions/" in uri:
                uri = uri.split("/functions/")[1].split("/invocations")[0]
            specs.append(
                RouteSpec(
                    route_key=str(route.get("RouteKey")),
                    function=_function(template, facts, uri),
                )
            )
        name = str(resolve(props.get("Name", api_logical), template, facts))
        apis.append(HttpApiSpec(logical_id=api_logical, name=name, routes=tuple(specs)))
    return tuple(apis)


def _integration_of(target: Any) -> str | None:
    """`!Sub integrations/${Integ}` or `!Join [/, [integrations, !Ref Integ]]` -> "Integ"."""
    if isinstance(target, dict) and "Fn::Sub" in target:
        text = target["Fn::Sub"] if isinstance(target["Fn::Sub"], str) else target["Fn::Sub"][0]
        if str(text).startswith("integrations/${") and str(text).endswith("}"):
            return str(text)[len("integrations/${") : -1]
    if isinstance(target, dict) and "Fn::Join" in target:
        parts = target["Fn::Join"][1]
        if parts and parts[-1] and isinstance(parts[-1], dict) and "Ref" in parts[-1]:
            return str(parts[-1]["Ref"])
    return None


def _subscription(logical: str, props: dict[str, Any], ctx: _Ctx) -> SubscriptionSpec:
    attributes: dict[str, str] = {}
    for key in ("FilterPolicy", "FilterPolicyScope", "RawMessageDelivery", "RedrivePolicy"):
        if key in props:
            text = _as_json(props[key])
            attributes[key] = text.lower() if key == "RawMessageDelivery" else text
    return SubscriptionSpec(
        logical_id=logical,
        topic_arn=str(props["TopicArn"]),
        protocol=str(props["Protocol"]),
        endpoint=str(props["Endpoint"]),
        attributes=attributes,
    )


def _queue_policy(logical: str, props: dict[str, Any], ctx: _Ctx) -> QueuePolicySpec:
    return QueuePolicySpec(
        logical_id=logical,
        queue_urls=tuple(str(q) for q in props.get("Queues", [])),
        policy=_as_json(props.get("PolicyDocument", {})),
    )


def _bucket_policy(logical: str, props: dict[str, Any], ctx: _Ctx) -> BucketPolicySpec:
    return BucketPolicySpec(
        logical_id=logical,
        bucket=str(props["Bucket"]),
        policy=_as_json(without_plain_http_denials(props.get("PolicyDocument", {}))),
    )


def without_plain_http_denials(document: Any) -> Any:
    """`document` without its statements that deny requests made over plain HTTP
    (`Bool: {aws:SecureTransport: "false"}`). The emulator serves plain HTTP only, so such a
    statement denies every request there (moto evaluates bucket policies); on AWS, where
    clients use HTTPS, the template's policy applies as written. Pure."""
    if not isinstance(document, dict) or not isinstance(document.get("Statement"), list):
        return document

    def plain_http_denial(statement: Any) -> bool:
        if not isinstance(statement, dict) or statement.get("Effect") != "Deny":
            return False
        condition = (statement.get("Condition") or {}).get("Bool") or {}
        return str(condition.get("aws:SecureTransport", "")).lower() == "false"

    kept = [s for s in document["Statement"] if not plain_http_denial(s)]
    return {**document, "Statement": kept}


def _state_machine(logical: str, props: dict[str, Any], ctx: _Ctx) -> StateMachineSpec:
    arn = ctx.facts.physical.get(logical)
    name = str(props.get("StateMachineName") or (arn.split(":")[-1] if arn else logical))
    facts = ctx.facts
    local = local_definition(
        _definition(logical, props, ctx.statemachines_dir),
        machine=name,
        region=facts.region,
        account=facts.account,
        queue_url=f"https://sqs.{facts.region}.amazonaws.com/{facts.account}/"
        f"{map_runs_queue(facts.stack_name)}",
    )
    role = str(props["RoleArn"])
    return StateMachineSpec(
        logical_id=logical,
        name=name,
        arn=arn,
        definition=local.definition,
        role_arn=role,
        type=str(props.get("StateMachineType", "STANDARD")),
        processors=tuple(
            StateMachineSpec(
                logical_id=f"{logical}/{p.state}",
                name=p.name,
                arn=f"arn:aws:states:{facts.region}:{facts.account}:stateMachine:{p.name}",
                definition=p.definition,
                role_arn=role,
                type=p.type,
            )
            for p in local.processors
        ),
    )


def _pipe(logical: str, props: dict[str, Any], ctx: _Ctx) -> PipeSpec:
    enrichment = props.get("Enrichment")
    return PipeSpec(
        logical_id=logical,
        name=str(props.get("Name", logical)),
        source_arn=str(props["Source"]),
        target_arn=str(props["Target"]),
        enrichment_arn=None if enrichment is None else str(enrichment),
        source_parameters=dict(props.get("SourceParameters", {})),
        target_parameters=dict(props.get("TargetParameters", {})),
        running=str(props.get("DesiredState", "RUNNING")) == "RUNNING",
    )


def _mapping(logical: str, props: dict[str, Any], ctx: _Ctx) -> EventSourceMappingSpec:
    return EventSourceMappingSpec(
        logical_id=logical,
        function=_function(ctx.template, ctx.facts, str(props["FunctionName"])),
        source_arn=str(props["EventSourceArn"]),
        batch_size=int(props.get("BatchSize", 10)),
        batching_window_seconds=int(props.get("MaximumBatchingWindowInSeconds", 0)),
        starting_position=str(props.get("StartingPosition", "TRIM_HORIZON")),
        report_batch_item_failures="ReportBatchItemFailures"
        in props.get("FunctionResponseTypes", []),
        enabled=props.get("Enabled", True) not in (False, "false", "False"),
    )


def _service(logical: str, props: dict[str, Any], ctx: _Ctx) -> ServiceSpec:
    arn = ctx.facts.physical.get(logical, "")
    return ServiceSpec(
        logical_id=logical,
        name=str(props.get("ServiceName") or arn.split("/")[-1] or logical),
        cluster=str(props.get("Cluster", "default")),
        task_definition=str(props["TaskDefinition"]),
        desired_count=int(props.get("DesiredCount", 1)),
    )


@dataclass(frozen=True)
class _Ctx:
    template: Template
    facts: StackFacts
    statemachines_dir: Path


def _build_all(ctx: _Ctx, kind: str, build: Any, problems: dict[str, str]) -> tuple[Any, ...]:
    """`build` for every resource of `kind`; a resource that cannot be resolved is left out
    and its reason kept in `problems`, so one odd resource does not stop the others."""
    built = []
    for logical, resource in _of_type(ctx.template, kind):
        try:
            if not condition_holds(resource, ctx.template, ctx.facts):
                continue  # not in this stack
            built.append(build(logical, _props(resource, ctx.template, ctx.facts), ctx))
        except (TemplateError, DefinitionError, KeyError, TypeError, ValueError) as exc:
            problems[logical] = f"not supplied: {exc}"
    return tuple(built)


def plan_gaps(
    template: Template,
    facts: StackFacts,
    *,
    statemachines_dir: Path | None = None,
) -> GapPlan:
    """What the local runner must supply for this template on this deployed stack.

    A resource that cannot be resolved (an intrinsic the runner does not know, a missing
    definition file) is left out with the reason in `GapPlan.problems`, keyed by logical id.
    State machine definitions are read from `statemachines_dir`, by default the one beside
    the default template (`shared.cloudformation.statemachines_dir`).
    """
    machines = statemachines_dir or statemachines_of(DEFAULT_TEMPLATE)
    ctx = _Ctx(template, facts, machines)
    problems: dict[str, str] = {}

    time_to_live = []
    for logical, resource in _of_type(template, "AWS::DynamoDB::Table"):
        ttl = resource.get("Properties", {}).get("TimeToLiveSpecification")
        if not ttl or ttl.get("Enabled", True) not in (True, "true", "True"):
            continue
        try:
            table = facts.physical.get(logical) or str(
                resolve(resource["Properties"].get("TableName", logical), template, facts)
            )
            attribute = str(resolve(ttl["AttributeName"], template, facts))
        except (TemplateError, KeyError) as exc:
            problems[logical] = f"TTL not supplied: {exc}"
            continue
        time_to_live.append(
            TimeToLiveSpec(logical_id=logical, table_name=table, attribute=attribute)
        )

    try:
        http_apis = _http_apis(template, facts)
    except (TemplateError, KeyError) as exc:
        http_apis = ()
        problems["HttpApi"] = f"not supplied: {exc}"

    state_machines: tuple[StateMachineSpec, ...] = _build_all(
        ctx, "AWS::StepFunctions::StateMachine", _state_machine, problems
    )
    api_resources: list[ApiResourceSpec] = []
    for kind, (service, operation, exists) in API_CREATED.items():
        api_resources.extend(_build_all(
            ctx, kind,
            lambda logical, props, _ctx, s=service, o=operation, e=exists: ApiResourceSpec(
                logical_id=logical, service=s, operation=o, params=props, exists_codes=e),
            problems))
    return GapPlan(
        subscriptions=_build_all(ctx, "AWS::SNS::Subscription", _subscription, problems),
        queue_policies=_build_all(ctx, "AWS::SQS::QueuePolicy", _queue_policy, problems),
        bucket_policies=_build_all(ctx, "AWS::S3::BucketPolicy", _bucket_policy, problems),
        time_to_live=tuple(time_to_live),
        api_resources=tuple(api_resources),
        state_machines=state_machines,
        pipes=_build_all(ctx, "AWS::Pipes::Pipe", _pipe, problems),
        event_source_mappings=_build_all(
            ctx, "AWS::Lambda::EventSourceMapping", _mapping, problems
        ),
        http_apis=http_apis,
        services=_build_all(ctx, "AWS::ECS::Service", _service, problems),
        map_runs_queue=(
            map_runs_queue(facts.stack_name)
            if any(m.processors for m in state_machines)
            else None
        ),
        problems=problems,
    )
