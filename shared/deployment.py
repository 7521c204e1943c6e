"""Deploying `deploy/template.yaml`: artifacts to S3, create-or-update the stack, wait, read back.

The whole API:

    settings = DeploySettings(stack_name="fleetline", parameters=local_parameters(zone="eu"))
    async with AwsClients() as aws:
        deployment = await deploy(aws, settings)
    deployment.resources.get("OrdersTable")      # shared.config.Resources, from the outputs
    deployment.outputs["OrdersBusName"]          # the raw outputs
    deployment.stack_resources                   # (logical id, type, physical id, status), all
    deployment.elapsed                           # seconds the deployment took

    await describe(aws, "fleetline")             # the same view of an existing stack
    await delete(aws, "fleetline")               # delete and wait

What `deploy` does, in order:
1. ensures the artifact bucket exists (created encrypted and private when missing);
2. uploads the Lambda code zip (the top-level packages of the installed distribution this
   module belongs to: `shared` and `services`, from where they are imported), every
   `statemachines/*.json` beside the template and the template itself under a
   content-addressed prefix `artifacts/<digest>/`, so unchanged code yields an unchanged
   stack (and no update);
3. checks the template parses (locally, in milliseconds; `validate=True` also calls
   ValidateTemplate, which the emulator implements by running all of cfn-lint: ~25 s), then
   creates the stack, or updates it
   ("no updates" is success; a stack left in ROLLBACK_COMPLETE by a failed create is deleted
   and created again);
4. polls until the stack settles or the deadline passes, and on failure names the first
   resource that failed and why, in one line.

The template goes by URL (TemplateURL), not in the request body: it is larger than the
51,200-byte limit of TemplateBody. The Lambda zip holds only our packages; for AWS, build the
image and a zip with the dependencies as docs/deploy.md says. Locally the zip only has to
exist (the emulator reads it when it creates the functions; the local runner runs handlers
in-process).

Nothing here knows where the repository is: the template is a path (default
`deploy/template.yaml` in the working directory, as for `fleetline up`), the state machines
sit beside it, and the code is what Python imports.

Every error is a `DeploymentError` whose message is one line that says what to do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any, Final

import anyio

from shared.aws import AwsClients, aws_errors
from shared.cloudformation import (
    DEFAULT_TEMPLATE,
    TemplateError,
    parse_template,
    read_template,
    references,
    statemachines_dir,
)
from shared.config import Resources
from shared.errors import AwsRequestError, ConfigurationError, FleetlineError

__all__ = [
    "DeploySettings",
    "Deployment",
    "DeploymentError",
    "StackResource",
    "TemplateInvalidError",
    "delete",
    "deploy",
    "describe",
    "distribution_packages",
    "emulator_names",
    "local_parameters",
]

_CAPABILITIES: Final = ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]
# A fixed timestamp makes the zip (and so its digest and key) depend on content only.
_ZIP_EPOCH: Final = (2020, 1, 1, 0, 0, 0)
_EMULATOR_ACCOUNT: Final = "123456789012"


class DeploymentError(ConfigurationError):
    """The stack could not be deployed; the message says which resource failed and why."""


class TemplateInvalidError(DeploymentError):
    """CloudFormation refused the template itself."""


@dataclass(frozen=True, kw_only=True)
class DeploySettings:
    """What to deploy and where.

    `template` is the template's path; `statemachines_dir=None` means `statemachines/`
    beside it (`shared.cloudformation.statemachines_dir`), where the template's
    `${StateMachinesPrefix}/<file>` keys point. `packages` are the Python packages the Lambda
    zip holds, by import name with their directories; None means `distribution_packages()`.
    `parameters` are the template's parameters except the three `deploy` fills in itself
    (ArtifactBucket, CodeKey, StateMachinesPrefix). `artifact_bucket=None` means
    `<stack>-artifacts-<account>-<region>` (bucket names are global).
    `emulator=True` (the embedded emulator only, never AWS) disables the stack's Lambda event
    source mappings after deploying: moto "runs" an SQS mapping on every SendMessage by
    receiving the batch and failing to invoke (no Docker), which delays each send and moves
    messages to the DLQ after maxReceiveCount; the local runner polls those queues instead.
    It also names what the template leaves CloudFormation to name (`emulator_names`), so that
    every value a process receives is known before deploying (compose.yaml is rendered from
    the template). `names_region` puts a Region in those names (`<stack>-<LogicalId>-<region>`):
    buckets and roles have one namespace for every Region, so stacks of one name in several
    Regions of one emulator (`fleetline up --zones`) need it. `code` is a Lambda artifact
    built beforehand (`fleetline build`); None means a zip of `packages`, built here.
    """

    stack_name: str = "fleetline"
    template: Path = DEFAULT_TEMPLATE
    statemachines_dir: Path | None = None
    packages: Mapping[str, Path] | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    artifact_bucket: str | None = None
    timeout: float = 120.0
    poll_interval: float = 0.2
    validate: bool = False
    emulator: bool = False
    names_region: str | None = None
    code: Path | None = None

    def __post_init__(self) -> None:
        if not self.stack_name or not self.stack_name[0].isalpha():
            raise ValueError(f"stack_name must start with a letter, got {self.stack_name!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        reserved = {"ArtifactBucket", "CodeKey", "StateMachinesPrefix"} & set(self.parameters)
        if reserved:
            raise ValueError(f"parameters: {sorted(reserved)} are set by deploy() itself")


@dataclass(frozen=True)
class StackResource:
    """One resource of the deployed stack. `physical_id` is "" for a resource the emulator
    accepted without creating it (see docs/deploy.md, emulator gaps)."""

    logical_id: str
    resource_type: str
    physical_id: str
    status: str


@dataclass(frozen=True)
class Deployment:
    """A deployed stack, read back."""

    stack_name: str
    stack_id: str
    status: str
    outputs: Mapping[str, str]
    resources: Resources
    stack_resources: tuple[StackResource, ...]
    parameters: Mapping[str, str]
    elapsed: float = 0.0

    def physical_id(self, logical_id: str) -> str:
        """The physical id of `logical_id`. Raises KeyError naming it."""
        for resource in self.stack_resources:
            if resource.logical_id == logical_id:
                return resource.physical_id
        raise KeyError(f"{logical_id} is not a resource of stack {self.stack_name}")


def distribution_packages() -> dict[str, Path]:
    """The top-level packages of the installed distribution `shared` belongs to (fleetline:
    `services` and `shared`), by name, each with the directory Python imports it from: the
    checkout for an editable install, site-packages otherwise.

    Raises:
        DeploymentError: the project is not installed, or a package is split over several
            directories (pass `DeploySettings.packages`).
    """
    own = __name__.partition(".")[0]
    by_package = packages_distributions()
    distributions = set(by_package.get(own, ()))
    if not distributions:
        raise DeploymentError(
            f"no installed distribution provides {own}: install the project (`make install`)"
        )
    found: dict[str, Path] = {}
    for name in sorted(n for n, d in by_package.items() if distributions & set(d)):
        spec = importlib.util.find_spec(name)
        locations = spec.submodule_search_locations if spec is not None else None
        places = list(dict.fromkeys(Path(p) for p in locations or () if Path(p).is_dir()))
        if len(places) != 1:
            raise DeploymentError(
                f"package {name} is in {len(places)} directories, not one: pass "
                f"DeploySettings.packages"
            )
        found[name] = places[0]
    return found


# What CloudFormation generates a name for when the template gives none, by resource type.
_NAME_PROPERTIES: Final = {"AWS::S3::Bucket": "BucketName", "AWS::IAM::Role": "RoleName"}


def emulator_names(
    template: Mapping[str, Any], stack_name: str, *, region: str | None = None,
) -> dict[str, tuple[str, str]]:
    """The names an emulator deployment gives what the template leaves CloudFormation to name
    (buckets, roles) and hands to processes through an Output: logical id -> (property,
    name), the name `<stack>-<LogicalId>` (lower case for a bucket; `-<region>` appended when
    `region` is given: one stack name in several Regions). On AWS those names are
    generated with a random suffix and reach processes through the stack; locally they must
    be known before deploying, for the containers of compose.yaml. Pure."""
    resources = template.get("Resources", {})
    wanted: set[str] = set()
    for output in template.get("Outputs", {}).values():
        wanted |= references(output.get("Value"))
    names: dict[str, tuple[str, str]] = {}
    for logical in sorted(wanted & set(resources)):
        resource = resources[logical]
        prop = _NAME_PROPERTIES.get(str(resource.get("Type")))
        if prop is None or prop in (resource.get("Properties") or {}):
            continue
        name = f"{stack_name}-{logical}" + (f"-{region}" if region else "")
        names[logical] = (prop, name.lower() if prop == "BucketName" else name)
    return names


def _named_for_emulator(
    body: bytes, source: Path, stack_name: str, region: str | None = None,
) -> bytes:
    """The template with `emulator_names` filled in, as JSON (which moto also parses faster
    than YAML); the template itself unchanged when there is nothing to name."""
    try:
        document = parse_template(body, source=source)
    except TemplateError as exc:
        raise TemplateInvalidError(str(exc)) from None
    names = emulator_names(document, stack_name, region=region)
    if not names:
        return body
    for logical, (prop, name) in names.items():
        document["Resources"][logical].setdefault("Properties", {})[prop] = name
    return json.dumps(document, separators=(",", ":")).encode()


def local_parameters(*, zone: str = "eu", region: str = "us-east-1") -> dict[str, str]:
    """Parameters for the embedded emulator: placeholders where only AWS needs a real value
    (image, network), since the emulator runs no containers."""
    if zone not in {"eu", "us"}:
        raise ValueError(f"zone must be 'eu' or 'us', got {zone!r}")
    return {
        "ImageUri": f"{_EMULATOR_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/fleetline:local",
        "ImageRepositoryArn": f"arn:aws:ecr:{region}:{_EMULATOR_ACCOUNT}:repository/fleetline",
        "ResidencyZone": zone,
        # The emulator has no EventBridge global endpoints (CreateEndpoint: HTTP 500).
        "GlobalEndpoint": "disabled",
        "SubnetIds": "subnet-0local",
        "SecurityGroupIds": "sg-0local",
        # Four shards are plenty for one machine (AWS: 24, for the 20,000 records/s peak).
        "TelemetryShardCount": "4",
        # No collector layer: nothing runs functions' extensions locally.
        "LambdaCollectorLayerArn": "",
    }


# ------------------------------------------------------------------------------ artifacts
@dataclass(frozen=True)
class _Artifacts:
    prefix: str
    files: dict[str, bytes]  # key -> body

    @property
    def template_key(self) -> str:
        return f"{self.prefix}/template.yaml"

    @property
    def code_key(self) -> str:
        return f"{self.prefix}/lambda.zip"

    @property
    def statemachines_prefix(self) -> str:
        return f"{self.prefix}/statemachines"


def _code_zip(packages: Mapping[str, Path]) -> bytes:
    """A zip of every package's files under its name (`shared/aws.py`), caches left out."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for package, base in packages.items():
            if not base.is_dir():
                raise DeploymentError(
                    f"package {package}: {base} is not a directory; pass DeploySettings.packages"
                )
            for path in sorted(base.rglob("*")):
                if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                    continue
                name = (Path(package) / path.relative_to(base)).as_posix()
                info = zipfile.ZipInfo(name, _ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _check_parses(path: Path, body: bytes) -> None:
    """Refuse a template that is not YAML/JSON or has no Resources, before any AWS call (the
    one loader, `shared.cloudformation`)."""
    try:
        parse_template(body, source=path)
    except TemplateError as exc:
        raise TemplateInvalidError(str(exc)) from None


def _build_artifacts(settings: DeploySettings) -> _Artifacts:
    try:
        template = read_template(settings.template)
    except TemplateError as exc:
        raise TemplateInvalidError(str(exc)) from None
    _check_parses(settings.template, template)
    if settings.emulator:
        template = _named_for_emulator(template, settings.template, settings.stack_name,
                                       settings.names_region)
    if settings.code is not None:
        try:
            code = settings.code.read_bytes()
        except OSError as exc:
            raise DeploymentError(
                f"Lambda artifact {settings.code}: {exc.strerror}; run `fleetline build`"
            ) from None
    else:
        code = _code_zip(settings.packages if settings.packages is not None
                         else distribution_packages())
    machines_dir = settings.statemachines_dir or statemachines_dir(settings.template)
    machines = {p.name: p.read_bytes() for p in sorted(machines_dir.glob("*.json"))}
    digest = hashlib.sha256()
    for part in (template, code, *(n.encode() + b for n, b in machines.items())):
        digest.update(hashlib.sha256(part).digest())
    prefix = f"artifacts/{digest.hexdigest()[:16]}"
    files = {f"{prefix}/template.yaml": template, f"{prefix}/lambda.zip": code}
    files.update({f"{prefix}/statemachines/{name}": body for name, body in machines.items()})
    return _Artifacts(prefix=prefix, files=files)


async def _ensure_bucket(aws: AwsClients, bucket: str) -> None:
    s3 = await aws.client("s3")
    try:
        with aws_errors():
            await s3.head_bucket(Bucket=bucket)
        return
    except AwsRequestError as exc:
        if exc.code not in {"404", "NoSuchBucket", "NotFound"}:
            raise DeploymentError(
                f"artifact bucket {bucket} is not usable ({exc.code}): pass another "
                f"artifact_bucket or grant s3:ListBucket on it"
            ) from None
    create: dict[str, Any] = {"Bucket": bucket}
    if aws.region != "us-east-1":
        create["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    with aws_errors():
        await s3.create_bucket(**create)
        await s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        await s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True, "IgnorePublicAcls": True,
                "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
            },
        )


async def _upload(aws: AwsClients, bucket: str, artifacts: _Artifacts) -> None:
    s3 = await aws.client("s3")

    async def put(key: str, body: bytes) -> None:
        with aws_errors():
            await s3.put_object(Bucket=bucket, Key=key, Body=body)

    async with anyio.create_task_group() as group:
        for key, body in artifacts.files.items():
            group.start_soon(put, key, body)


async def _default_bucket(aws: AwsClients, stack_name: str) -> str:
    sts = await aws.client("sts")
    with aws_errors():
        account = (await sts.get_caller_identity())["Account"]
    return f"{stack_name.lower()}-artifacts-{account}-{aws.region}"


def _template_url(bucket: str, region: str, key: str) -> str:
    return f"https://{bucket}.s3.{region}.amazonaws.com/{key}"


# ------------------------------------------------------------------------------ the stack
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


async def _stack(aws: AwsClients, stack_name: str) -> dict[str, Any] | None:
    cfn = await aws.client("cloudformation")
    try:
        with aws_errors():
            stacks = (await cfn.describe_stacks(StackName=stack_name))["Stacks"]
    except AwsRequestError as exc:
        if exc.code == "ValidationError" and "does not exist" in str(exc):
            return None
        raise
    return dict(stacks[0]) if stacks else None


async def _failure_reason(aws: AwsClients, stack_name: str) -> str:
    """The first resource that failed, from the stack events (oldest first)."""
    cfn = await aws.client("cloudformation")
    try:
        with aws_errors():
            events = (await cfn.describe_stack_events(StackName=stack_name))["StackEvents"]
    except FleetlineError:
        return "no stack events available"
    for event in reversed(events):
        status = str(event.get("ResourceStatus", ""))
        if status.endswith("_FAILED") and event.get("LogicalResourceId") != stack_name:
            return _one_line(
                f"{event.get('LogicalResourceId')} ({event.get('ResourceType')}) {status}: "
                f"{event.get('ResourceStatusReason') or 'no reason given'}"
            )
    return "no failed resource reported"


async def _wait(aws: AwsClients, settings: DeploySettings, started: float) -> dict[str, Any]:
    deadline = started + settings.timeout
    while True:
        stack = await _stack(aws, settings.stack_name)
        if stack is None:
            raise DeploymentError(f"stack {settings.stack_name} disappeared while deploying")
        status = str(stack["StackStatus"])
        if not status.endswith("_IN_PROGRESS"):
            if status in {"CREATE_COMPLETE", "UPDATE_COMPLETE"}:
                return stack
            reason = await _failure_reason(aws, settings.stack_name)
            raise DeploymentError(
                f"stack {settings.stack_name} ended {status}: {reason}; fix the template or "
                f"the parameters and deploy again"
            )
        if time.monotonic() > deadline:
            raise DeploymentError(
                f"stack {settings.stack_name} still {status} after {settings.timeout:.0f} s: "
                f"check its events in the console or raise the timeout"
            )
        await anyio.sleep(settings.poll_interval)


async def _list_resources(aws: AwsClients, stack_name: str) -> tuple[StackResource, ...]:
    # ListStackResources pages; DescribeStackResources stops at 100 resources on AWS.
    cfn = await aws.client("cloudformation")
    found: list[StackResource] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"StackName": stack_name}
        if token:
            kwargs["NextToken"] = token
        with aws_errors():
            page = await cfn.list_stack_resources(**kwargs)
        found.extend(
            StackResource(
                logical_id=str(r["LogicalResourceId"]),
                resource_type=str(r["ResourceType"]),
                physical_id=str(r.get("PhysicalResourceId") or ""),
                status=str(r.get("ResourceStatus", "")),
            )
            for r in page.get("StackResourceSummaries", [])
        )
        token = page.get("NextToken")
        if not token:
            return tuple(found)


def _read_back(stack: Mapping[str, Any], resources: tuple[StackResource, ...],
               elapsed: float) -> Deployment:
    outputs = {str(o["OutputKey"]): str(o["OutputValue"]) for o in stack.get("Outputs", [])}
    return Deployment(
        stack_name=str(stack["StackName"]),
        stack_id=str(stack["StackId"]),
        status=str(stack["StackStatus"]),
        outputs=outputs,
        resources=Resources.from_outputs(outputs),
        stack_resources=resources,
        parameters={str(p["ParameterKey"]): str(p.get("ParameterValue", ""))
                    for p in stack.get("Parameters", [])},
        elapsed=elapsed,
    )


async def _validate(aws: AwsClients, settings: DeploySettings, url: str) -> None:
    cfn = await aws.client("cloudformation")
    try:
        with aws_errors():
            await cfn.validate_template(TemplateURL=url)
    except AwsRequestError as exc:
        raise TemplateInvalidError(
            f"{settings.template} is invalid: {_one_line(str(exc))}; run `cfn-lint "
            f"{settings.template}` and fix what it reports"
        ) from None


async def _create_or_update(
    aws: AwsClients, settings: DeploySettings, url: str, parameters: Sequence[Mapping[str, str]],
) -> bool:
    """True when a change was started; False when the stack is already up to date."""
    cfn = await aws.client("cloudformation")
    existing = await _stack(aws, settings.stack_name)
    if existing is not None and existing["StackStatus"] in {"ROLLBACK_COMPLETE",
                                                             "ROLLBACK_FAILED"}:
        # A failed first create cannot be updated, only replaced.
        await delete(aws, settings.stack_name, wait_seconds=settings.timeout)
        existing = None
    request: dict[str, Any] = {
        "StackName": settings.stack_name, "TemplateURL": url,
        "Parameters": list(parameters), "Capabilities": _CAPABILITIES,
    }
    try:
        with aws_errors():
            if existing is None:
                await cfn.create_stack(**request, OnFailure="ROLLBACK")
            else:
                await cfn.update_stack(**request)
    except AwsRequestError as exc:
        if "No updates are to be performed" in str(exc):
            return False
        raise DeploymentError(
            f"CloudFormation refused stack {settings.stack_name}: {_one_line(str(exc))}; "
            f"check the parameters and run `cfn-lint {settings.template}`"
        ) from None
    except FleetlineError as exc:
        # The emulator answers some template mistakes with a 500 and a half-built stack.
        raise DeploymentError(
            f"CloudFormation failed on stack {settings.stack_name}: {_one_line(str(exc))}; "
            f"run `cfn-lint {settings.template}` and see docs/deploy.md (emulator gaps)"
        ) from None
    return True


def _first_leaf(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a task group: ours first, so the one-line message survives."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(errors)
    ours = [e for e in leaves if isinstance(e, FleetlineError)]
    return (ours or leaves)[0]


async def deploy(aws: AwsClients, settings: DeploySettings | None = None) -> Deployment:
    """Upload artifacts, create or update the stack, wait for it, and read it back.

    Raises:
        TemplateInvalidError: the template is missing or CloudFormation refuses it.
        DeploymentError: the stack failed (naming the first failed resource and its reason)
            or did not settle before `settings.timeout`.
    """
    settings = settings or DeploySettings()
    started = time.monotonic()
    staged: list[tuple[str, _Artifacts]] = []

    async def stage() -> None:
        artifacts = await anyio.to_thread.run_sync(_build_artifacts, settings)
        bucket = settings.artifact_bucket or await _default_bucket(aws, settings.stack_name)
        await _ensure_bucket(aws, bucket)
        await _upload(aws, bucket, artifacts)
        staged.append((bucket, artifacts))

    try:
        async with anyio.create_task_group() as group:
            # The emulator loads its CloudFormation code (every backend: seconds) on the first
            # CloudFormation request; asking for the stack now overlaps that with staging.
            group.start_soon(_stack, aws, settings.stack_name)
            group.start_soon(stage)
    except BaseExceptionGroup as errors:
        raise _first_leaf(errors) from None
    bucket, artifacts = staged[0]
    url = _template_url(bucket, aws.region, artifacts.template_key)
    if settings.validate:
        await _validate(aws, settings, url)
    values = {
        **settings.parameters,
        "ArtifactBucket": bucket,
        "CodeKey": artifacts.code_key,
        "StateMachinesPrefix": artifacts.statemachines_prefix,
    }
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]
    if await _create_or_update(aws, settings, url, parameters):
        stack = await _wait(aws, settings, started)
    else:
        current = await _stack(aws, settings.stack_name)
        if current is None:  # pragma: no cover - it existed a moment ago
            raise DeploymentError(f"stack {settings.stack_name} disappeared while deploying")
        stack = current
    resources = await _list_resources(aws, settings.stack_name)
    if settings.emulator:
        await _disable_event_source_mappings(aws, resources)
    return _read_back(stack, resources, time.monotonic() - started)


async def _disable_event_source_mappings(
    aws: AwsClients, resources: tuple[StackResource, ...],
) -> None:
    lam = await aws.client("lambda")
    for resource in resources:
        if resource.resource_type == "AWS::Lambda::EventSourceMapping" and resource.physical_id:
            with aws_errors():
                await lam.update_event_source_mapping(UUID=resource.physical_id, Enabled=False)


async def describe(aws: AwsClients, stack_name: str) -> Deployment:
    """The deployed stack `stack_name`. Raises DeploymentError when it does not exist."""
    stack = await _stack(aws, stack_name)
    if stack is None:
        raise DeploymentError(f"stack {stack_name} does not exist: run `fleetline up` first")
    return _read_back(stack, await _list_resources(aws, stack_name), 0.0)


async def delete(aws: AwsClients, stack_name: str, *, wait_seconds: float = 120.0) -> None:
    """Delete `stack_name` and wait until it is gone (a missing stack is not an error).

    Raises DeploymentError when the deletion fails or outlasts `wait_seconds`.
    """
    cfn = await aws.client("cloudformation")
    if await _stack(aws, stack_name) is None:
        return
    with aws_errors():
        await cfn.delete_stack(StackName=stack_name)
    deadline = time.monotonic() + wait_seconds
    while True:
        stack = await _stack(aws, stack_name)
        if stack is None or stack["StackStatus"] == "DELETE_COMPLETE":
            return
        if stack["StackStatus"] == "DELETE_FAILED":
            reason = await _failure_reason(aws, stack_name)
            raise DeploymentError(f"stack {stack_name} could not be deleted: {reason}")
        if time.monotonic() > deadline:
            raise DeploymentError(
                f"stack {stack_name} still {stack['StackStatus']} after {wait_seconds:.0f} s"
            )
        await anyio.sleep(0.2)

