"""The `fleetline` command. Platform commands live here; services add theirs through the
`fleetline.cli` entry-point group (name = "module:typer_app"), so `shared` imports no service.

Commands stay thin over `shared.local`: they parse options, call one function, and print.
Expected failures (port in use, moto missing, invalid template, nothing up) print one line
that says what to do and exit non-zero; tracebacks are for bugs.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import typer
from rich.console import Console
from rich.table import Table

from shared.cloudformation import DEFAULT_TEMPLATE
from shared.errors import ConfigurationError, FleetlineError

if TYPE_CHECKING:
    from shared.zones import Zone, ZoneRole

__all__ = ["app", "main"]  # the commands are the app's, not importable API

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="fleetline: event-driven services on AWS"
)
console = Console()
err = Console(stderr=True)

StackOpt = Annotated[str, typer.Option("--stack-name", help="CloudFormation stack name")]
StateDirOpt = Annotated[
    Path,
    typer.Option("--state-dir", envvar="FLEETLINE_STATE_DIR", help="where `up` keeps its state"),
]
TemplateOpt = Annotated[
    Path, typer.Option("--template", help="the CloudFormation template (state machines beside it)")
]
ParameterOpt = Annotated[
    list[str] | None,
    typer.Option("--parameter", "-P", help="template parameter KEY=VALUE (repeatable)"),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _parameters(items: list[str] | None) -> dict[str, str]:
    """`--parameter KEY=VALUE` options as a mapping (a later KEY wins).

    Raises:
        typer.Exit: an item without `=` or without a key (an `error:` line naming it).
    """
    parameters: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"--parameter {item!r}: expected KEY=VALUE")
        parameters[key] = value
    return parameters


def _ready_line(state: object) -> str:
    from shared.local import UpState

    assert isinstance(state, UpState)
    extras = " ".join(f"{name}={url}" for name, url in sorted(state.urls.items()))
    endpoint = state.endpoint or "aws"
    zones = ",".join(f"{z}@{s.region}" for z, s in zip(state.zones(), state.stacks, strict=True))
    where = f" zones={zones}" if len(state.stacks) > 1 else ""
    return f"READY {endpoint} stack={state.stack_name}{where} {extras}".rstrip()


def _zone_stack(text: str, option: str) -> tuple[Zone, ZoneRole]:
    """The zone and role `text` names (`eu`, `eu:secondary`), or the CLI's one-line error."""
    from shared.zones import parse_stack

    try:
        return parse_stack(text)
    except FleetlineError as exc:
        raise _fail(f"{option}: {exc}") from None


@app.command()
def up(
    port: Annotated[int, typer.Option(help="emulator port (default: a free one)")] = 0,
    stack_name: StackOpt = "fleetline",
    detach: Annotated[
        bool, typer.Option("--detach", help="run in the background and return when ready")
    ] = False,
    aws: Annotated[
        bool, typer.Option("--aws", help="deploy to real AWS (no AWS_ENDPOINT_URL)")
    ] = False,
    workers: Annotated[
        bool, typer.Option("--workers/--no-workers", help="run local processes")
    ] = True,
    services: Annotated[
        bool,
        typer.Option("--services/--no-services",
                     help="run the ECS services as local processes (compose.yaml: --no-services)"),
    ] = True,
    template: TemplateOpt = DEFAULT_TEMPLATE,
    state_dir: StateDirOpt = Path(".fleetline"),
    api_port: Annotated[
        int, typer.Option("--api-port", help="port of the local HTTP API (default: a free one)")
    ] = 0,
    bind_host: Annotated[
        str, typer.Option("--bind", envvar="FLEETLINE_BIND", help="address local servers listen on")
    ] = "127.0.0.1",
    parameter: ParameterOpt = None,
    zones: Annotated[
        str | None,
        typer.Option("--zones", help="residency zones, one stack each in its own Region: "
                     "eu,us (eu:secondary adds eu's standby in its secondary Region)"),
    ] = None,
) -> None:
    """Start the emulator, deploy the stack, run its workers; print READY when it takes traffic.

    With --zones, one stack per zone in the zone's Region (eu: eu-west-1, us: us-east-1) on
    the one emulator, each with its own local processes (named `<zone>-<process>`)."""
    # Only light modules before the emulator is spawned: it boots while the rest imports.
    from shared.emulator import Emulator, port_in_use
    from shared.local import ensure_no_running, start_detached

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    parameters = _parameters(parameter)
    if aws and endpoint:
        raise _fail("--aws deploys to real AWS: unset AWS_ENDPOINT_URL or drop --aws")
    zone_list = tuple(z.strip() for z in (zones or "").split(",") if z.strip())
    if zones is not None and not zone_list:
        raise _fail("--zones: name at least one zone, e.g. --zones eu,us")
    for item in zone_list:
        _zone_stack(item, "--zones")
    try:
        ensure_no_running(state_dir)
        if port and endpoint is None and not aws and port_in_use(port):
            raise _fail(f"port {port} is in use: stop what listens there or pass another --port")
        if detach:
            argv = [
                "--port",
                str(port),
                "--stack-name",
                stack_name,
                "--template",
                str(template),
                "--state-dir",
                str(state_dir),
                "--workers" if workers else "--no-workers",
                "--services" if services else "--no-services",
                "--api-port",
                str(api_port),
                "--bind",
                bind_host,
                *(["--aws"] if aws else []),
                *(["--zones", ",".join(zone_list)] if zone_list else []),
                *(arg for item in parameter or [] for arg in ("--parameter", item)),
            ]
            state = start_detached(argv, state_dir=state_dir)
            print(_ready_line(state), flush=True)
            return
        emulator = None
        if endpoint is None and not aws:
            (state_dir / "logs").mkdir(parents=True, exist_ok=True)
            emulator = Emulator(port=port, log_path=state_dir / "logs" / "moto.log").spawn()
        try:
            from shared.local import UpConfig, run_up
        except BaseException:
            if emulator is not None:
                emulator.stop()
            raise
        if not sys.stderr.isatty():  # a log file (detached) or a pipe: JSON lines
            from shared.local import setup_logging

            setup_logging("fleetline-up", stream=sys.stderr)
        config = UpConfig(
            stack_name=stack_name,
            port=port,
            template=template,
            state_dir=state_dir,
            endpoint=endpoint,
            real_aws=aws,
            workers=workers,
            services=services,
            api_port=api_port,
            bind_host=bind_host,
            parameters=parameters,
            zones=zone_list,
        )

        def on_ready(state: object) -> None:
            print(_ready_line(state), flush=True)
            err.print(
                f"[dim]Ctrl-C stops everything; logs in {state_dir / 'logs'}[/dim]", highlight=False
            )

        try:
            anyio.run(lambda: run_up(config, on_ready=on_ready, emulator=emulator))
        finally:
            if emulator is not None:  # no-op when run_up stopped it; not when interrupted early
                emulator.stop()
    except FleetlineError as exc:
        raise _fail(str(exc)) from None


@app.command()
def down(state_dir: StateDirOpt = Path(".fleetline")) -> None:
    """Stop every process `up` started, the emulator last."""
    from shared.local import stop_running

    try:
        state, killed = stop_running(state_dir)
    except FleetlineError as exc:
        raise _fail(str(exc)) from None
    if state is None:
        console.print("nothing is up")
        return
    console.print(
        f"stopped {state.stack_name} ({len(state.pids())} processes)"
        + (f"; killed {killed} after the stop timeout" if killed else "")
    )


@app.command()
def status(
    stack_name: Annotated[str | None, typer.Option("--stack-name")] = None,
    template: TemplateOpt = DEFAULT_TEMPLATE,
    state_dir: StateDirOpt = Path(".fleetline"),
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    zone: Annotated[str | None, typer.Option(
        "--zone", help="the zone's stack (eu, us, eu:secondary); default: the first one up")
    ] = None,
) -> None:
    """Every resource of the stack, queue and DLQ depths, streams, local processes."""
    from shared.local import collect_status, endpoint_clients, read_state

    try:
        state = read_state(state_dir)
        live = state if state is not None and state.phase.value in {"ready", "starting"} else None
        if live is not None:
            live = live.for_zone(zone)
    except FleetlineError as exc:
        raise _fail(str(exc)) from None
    endpoint = live.endpoint if live else os.environ.get("AWS_ENDPOINT_URL")
    if live is None and not endpoint:
        raise _fail("nothing is up here: run `fleetline up` (or set AWS_ENDPOINT_URL)")
    name = stack_name or (live.stack_name if live else "fleetline")
    region = live.region if live else None
    if region is None and zone is not None:
        found, role = _zone_stack(zone, "--zone")
        region = found.region(role)

    async def collect() -> object:
        async with endpoint_clients(endpoint or None, os.environ, region=region) as aws:
            return await collect_status(
                aws,
                stack_name=name,
                template_path=template,
                state=live,
                emulated=endpoint is not None,
            )

    try:
        result = anyio.run(collect)
    except FleetlineError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        import dataclasses
        import json

        assert dataclasses.is_dataclass(result)
        assert not isinstance(result, type)
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return
    _print_status(result)


def _print_status(result: object) -> None:
    from shared.local import StackStatus

    assert isinstance(result, StackStatus)
    console.print(
        f"[bold]{result.stack_name}[/bold] {result.stack_status} at {result.endpoint or 'AWS'}"
    )
    resources = Table("logical id", "type", "physical id", "state", title="resources")
    for r in result.resources:
        resources.add_row(r.logical_id, r.type, r.physical_id or "-", r.state)
    console.print(resources)
    if result.queues:
        queues = Table("queue", "visible", "in flight", "delayed", "dlq", title="queues")
        for q in result.queues:
            style = "red" if q.is_dlq and q.visible else None
            queues.add_row(
                q.name,
                str(q.visible),
                str(q.in_flight),
                str(q.delayed),
                "yes" if q.is_dlq else "",
                style=style,
            )
        console.print(queues)
    if result.streams:
        streams = Table("stream", "open shards", "lag", title="streams")
        for s in result.streams:
            streams.add_row(s.name, str(s.shards), s.lag)
        console.print(streams)
    if result.outputs:
        outputs = Table("output", "value", title="outputs")
        for key, value in sorted(result.outputs.items()):
            outputs.add_row(key, value)
        console.print(outputs)
    processes = Table(
        "process", "kind", "pid", "alive", "restarts", "note", title="local processes"
    )
    for p in result.processes:
        processes.add_row(
            p.name, p.kind, str(p.pid or "-"), "yes" if p.alive else "no", str(p.restarts), p.note
        )
    console.print(processes)


@app.command()
def demo(
    exit_after: Annotated[
        bool, typer.Option("--exit", help="stop everything after the steps")
    ] = False,
    stack_name: StackOpt = "fleetline",
    template: TemplateOpt = DEFAULT_TEMPLATE,
    state_dir: StateDirOpt = Path(".fleetline"),
) -> None:
    """`up` in the background, then scripted steps that show the system working."""
    from shared.local import run_demo
    from shared.logging import configure_logging

    # The steps print what they show; the libraries they drive log only what is wrong, on
    # stderr (LOG_LEVEL overrides).
    configure_logging(service="fleetline-demo", level=os.environ.get("LOG_LEVEL", "WARNING"),
                      stream=sys.stderr)

    try:
        ok = run_demo(
            stack_name=stack_name,
            template=template,
            state_dir=state_dir,
            keep_running=not exit_after,
            echo=lambda line: console.print(line, highlight=False, soft_wrap=True),
        )
    except FleetlineError as exc:
        raise _fail(str(exc)) from None
    if not ok:
        raise typer.Exit(1)


@app.command()
def schemas(
    out: Annotated[Path, typer.Option("--out", help="directory for the JSON Schemas")] = Path(
        "docs/events"
    ),
) -> None:
    """Write the JSON Schema of every registered event type into docs/events/."""
    from shared.events import export_schemas

    try:
        written = export_schemas(out)
    except (FleetlineError, OSError) as exc:
        raise _fail(f"{exc}; fix it and run `fleetline schemas` again") from None
    console.print(f"wrote {len(written)} schema files to {out}")


@app.command()
def build(
    base: Annotated[str, typer.Option(help="the images' base (a local Debian base without a "
                                            "registry: docs/containers.md)")] = "python:3.11-slim",
    image: Annotated[str, typer.Option(help="the worker image's tag")] = "fleetline:local",
    emulator_image: Annotated[str, typer.Option(help="the emulator image's tag")] = (
        "fleetline-emulator:local"),
    ca_bundle: Annotated[Path | None, typer.Option(
        envvar="FLEETLINE_CA_BUNDLE", help="CA bundle for a TLS-re-signing proxy (build secret)",
    )] = None,
    network: Annotated[str | None, typer.Option(help="the builds' network (host: a daemon "
                                                     "without a bridge)")] = None,
    out: Annotated[Path, typer.Option(help="where the Lambda artifact goes")] = Path("build"),
    images: Annotated[bool, typer.Option("--images/--no-images")] = True,
    lambda_artifact: Annotated[bool, typer.Option("--lambda/--no-lambda")] = True,
) -> None:
    """Build the worker and emulator images and the Lambda artifact; print their sizes."""
    from shared.build import BuildSettings
    from shared.build import build as run_build

    settings = BuildSettings(
        out=out, image=image, emulator_image=emulator_image, base=base, ca_bundle=ca_bundle,
        network=network, images=images, lambda_artifact=lambda_artifact,
    )
    try:
        result = run_build(settings, echo=lambda line: console.print(line, highlight=False))
    except FleetlineError as exc:
        raise _fail(str(exc)) from None
    console.print(f"built in {result.seconds:.0f} s")


@app.command()
def deploy(
    stack_name: StackOpt = "fleetline",
    template: TemplateOpt = DEFAULT_TEMPLATE,
    artifact: Annotated[Path, typer.Option(help="the Lambda artifact (`fleetline build`)")] = Path(
        "build/lambda.zip"),
    image: Annotated[str, typer.Option(help="the local worker image to push")] = "fleetline:local",
    repository: Annotated[str | None, typer.Option(
        help="ECR repository URI to push to (AWS); ImageRepositoryArn is derived from it")] = None,
    parameter: ParameterOpt = None,
) -> None:
    """Upload the built artifacts and create or update the stack (the image URI and the code
    key as parameters). With AWS_ENDPOINT_URL (the emulator) the same path, without the push."""
    from shared.build import DeployRequest, run_deploy

    request = DeployRequest(
        stack_name=stack_name, template=template, artifact=artifact, image=image,
        repository=repository, parameters=_parameters(parameter),
        endpoint=os.environ.get("AWS_ENDPOINT_URL") or None,
    )
    try:
        deployment = anyio.run(run_deploy, request)
    except FleetlineError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"deployed {deployment.stack_name} ({deployment.status}) in {deployment.elapsed:.1f} s: "
        f"ImageUri={deployment.parameters.get('ImageUri')} "
        f"CodeKey={deployment.parameters.get('CodeKey')}",
        highlight=False, soft_wrap=True,
    )


@app.command()
def compose(
    template: TemplateOpt = DEFAULT_TEMPLATE,
    out: Annotated[Path, typer.Option("--out", help="where to write it")] = Path("compose.yaml"),
    check: Annotated[
        bool, typer.Option("--check", help="exit 1 if the file differs; write nothing")
    ] = False,
) -> None:
    """Render compose.yaml from the template: one container per ECS service, the emulator,
    the glue (`up --no-services`); see docs/containers.md."""
    from shared.local import render_compose

    try:
        text = render_compose(template)
    except FleetlineError as exc:
        raise _fail(str(exc)) from None
    current = out.read_text() if out.exists() else None
    if check:
        if current != text:
            raise _fail(f"{out} is not what `fleetline compose` renders from {template}: run it")
        console.print(f"{out} is current")
        return
    if current != text:
        out.write_text(text)
    console.print(f"wrote {out}" if current != text else f"{out} is current")


def _add_operations() -> None:
    from shared.operations.cli import dlq_app, replay, trace

    app.add_typer(dlq_app, name="dlq")
    app.command()(replay)
    app.command()(trace)


def _load_plugins() -> None:
    for ep in entry_points(group="fleetline.cli"):
        plugin = ep.load()
        if isinstance(plugin, typer.Typer):
            app.add_typer(plugin, name=ep.name)


def main() -> None:
    _add_operations()
    _load_plugins()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except ConfigurationError as exc:  # e.g. a --zone that is not up here: one line, no trace
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
