"""`fleetline up`: emulator, deployment, what the emulator skips, local processes, supervision.

Order of work, and why:
1. read the template first (an invalid one fails before anything starts);
2. start moto server (or use AWS_ENDPOINT_URL, or real AWS with --aws);
3. deploy the template through the CloudFormation API (`shared.deployment`);
4. read the deployed stack back, plan the gaps from the template (`_gaps.plan_gaps`) and
   supply them: API calls first (subscriptions, queue policies, TTL, state machines), then
   the local processes (ECS services, Lambda triggers, HTTP APIs, pipes);
5. write the state file and print `READY`; then supervise until SIGINT/SIGTERM, or the
   emulator dies (everything would be lost: `up` stops with an error rather than limp on);
6. stop: children first (SIGTERM, their drain time, SIGKILL), the emulator last, so workers
   can still acknowledge what they finished.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from shared.aws import AwsClients, ClientSettings
from shared.cloudformation import DEFAULT_TEMPLATE, Template, load_template, statemachines_dir
from shared.emulator import Emulator, free_port
from shared.errors import ConfigurationError, FleetlineError
from shared.local._endpoint import child_environment, endpoint_clients, region_of
from shared.local._gaps import plan_gaps
from shared.local._stack import DeployedStack, describe_stack, gather_facts
from shared.local._state import ChildRecord, Phase, StackRecord, UpError, UpState, write_state
from shared.local._supervisor import Supervisor
from shared.local._supply import LocalProcesses, apply_api_gaps, plan_processes

__all__ = ["UpConfig", "UpError", "run_up", "spawn_emulator"]

log = structlog.get_logger("fleetline.local")


@dataclass(frozen=True, kw_only=True)
class UpConfig:
    stack_name: str = "fleetline"
    port: int = 0  # emulator port; 0 = a free one
    template: Path = DEFAULT_TEMPLATE
    statemachines_dir: Path | None = None  # None: beside the template (statemachines_dir())
    state_dir: Path = Path(".fleetline")
    endpoint: str | None = None  # AWS_ENDPOINT_URL: use it instead of starting moto
    real_aws: bool = False  # --aws: deploy to the account; no emulator gaps to supply
    workers: bool = True  # run local processes
    services: bool = True  # run the ECS services too (False: compose.yaml runs them)
    deploy_timeout: float = 120.0
    api_port: int = 0  # first local HTTP API port; 0 = free ones
    bind_host: str = "127.0.0.1"  # where local servers listen (0.0.0.0 in a container)
    parameters: dict[str, str] = field(default_factory=dict)  # template parameters (--parameter)
    # Zones to run, one stack each in its own Region: "eu", "us", "eu:secondary" (the zone's
    # standby in its secondary Region). Empty: one stack in the environment's Region, as
    # before zones (its zone is the ResidencyZone parameter, eu by default).
    zones: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class _Target:
    """One stack `up` deploys and runs: where, with which parameters, its processes' names."""

    zone: str
    role: str
    region: str
    prefix: str  # of its processes' names
    parameters: dict[str, str]
    api_port: int
    move_ports: bool  # a later zone's servers move off the first zone's container ports


def _targets(config: UpConfig, environ_region: str) -> list[_Target]:
    """The stacks of `config`, first to last (pure). On AWS each zone's standby stack
    (`eu:secondary`) is added when not named: the primary's global endpoint needs its bus.

    Raises ConfigurationError for an unknown zone or role, or a zone given twice."""
    from shared.zones import ZoneRole, parse_stack

    if not config.zones:
        zone = config.parameters.get("ResidencyZone", "eu")
        role = config.parameters.get("ZoneRole", ZoneRole.PRIMARY.value)
        return [_Target(zone=zone, role=role, region=environ_region, prefix="",
                        parameters=dict(config.parameters), api_port=config.api_port,
                        move_ports=False)]
    targets: list[_Target] = []
    items = list(config.zones)
    if config.real_aws:  # a primary's global endpoint needs its zone's standby: added
        items += [f"{name}:secondary" for name, _, role in (i.partition(":") for i in items)
                  if not role and f"{name}:secondary" not in items]
    for index, item in enumerate(items):
        found, role = parse_stack(item)
        name = found.name
        if any(t.zone == name and t.role == role.value for t in targets):
            raise ConfigurationError(f"zones: {item!r} is given twice")
        targets.append(_Target(
            zone=name, role=role.value, region=found.region(role),
            prefix=f"{name}-" if role is ZoneRole.PRIMARY else f"{name}-{role.value}-",
            parameters={**config.parameters, "ResidencyZone": name, "ZoneRole": role.value},
            api_port=config.api_port if index == 0 else 0,
            move_ports=index > 0))
    return targets


@dataclass
class _Run:
    """Mutable state of one `up` run, mirrored into the state file."""

    config: UpConfig
    state: UpState

    def save(self) -> None:
        write_state(self.config.state_dir, self.state)

    def child_changed(self, record: ChildRecord) -> None:
        self.state = self.state.with_child(record)
        self.save()

    def child_gave_up(self, name: str, status: int) -> None:
        skipped = {**self.state.skipped, name: f"exited {status} (misconfigured; see its log)"}
        self.state = replace(self.state.without_child(name), skipped=skipped)
        self.save()


async def _deploy(
    aws: AwsClients, config: UpConfig, template: Template, target: _Target,
) -> DeployedStack:
    from shared.local._deploy import deploy_template

    await deploy_template(
        aws,
        template=template,
        template_path=config.template,
        statemachines_dir=_statemachines(config),
        stack_name=config.stack_name,
        within_s=config.deploy_timeout,
        emulated=not config.real_aws,
        parameters=target.parameters,
        # zones' stacks share a name: their buckets and roles carry their Region
        names_region=target.region if config.zones else None,
    )
    stack = await describe_stack(aws, config.stack_name)
    if stack is None:
        raise UpError(f"stack {config.stack_name} vanished after deployment")
    return stack


async def run_up(
    config: UpConfig,
    *,
    on_ready: Callable[[UpState], None],
    emulator: Emulator | None = None,
) -> UpState:
    """Run the local platform until SIGINT/SIGTERM; returns the final state.

    `emulator` may be one the caller already spawned (`Emulator.spawn`), so it boots while
    this process imports the rest; `run_up` then owns it and stops it.

    A signal during start-up aborts it cleanly (everything started so far is stopped).
    Raises UpError (one line, for the CLI) when it cannot start or the emulator dies.
    """
    started = time.monotonic()
    try:
        template = load_template(config.template)  # fails fast on an invalid template
    except BaseException:
        if emulator is not None:
            emulator.stop()
        raise
    run = _Run(
        config=config,
        state=UpState(
            stack_name=config.stack_name,
            endpoint=config.endpoint,
            supervisor_pid=os.getpid(),
        ),
    )
    supervisor = Supervisor(
        log_dir=_log_dir(config),
        on_change=run.child_changed,
        on_exit=run.child_gave_up,
    )
    stop = anyio.Event()
    main = anyio.CancelScope()
    failure: BaseException | None = None

    async def on_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for sig in received:
                log.info("stopping", signal=signal.Signals(sig).name)
                stop.set()
                if run.state.phase is not Phase.READY:
                    main.cancel()  # still starting: abort start-up

    async with anyio.create_task_group() as outer:
        outer.start_soon(on_signals)
        try:
            with main:
                if config.endpoint is None and not config.real_aws:
                    if emulator is None:
                        emulator = spawn_emulator(config)
                    await anyio.to_thread.run_sync(emulator.wait_ready)
                    log.info(
                        "emulator started",
                        endpoint=emulator.endpoint_url,
                        seconds=round(time.monotonic() - started, 2),
                    )
                    _say_skipped_fixes(emulator)
                    assert emulator.process is not None
                    run.state = replace(
                        run.state,
                        endpoint=emulator.endpoint_url,
                        emulator_port=emulator.port,
                    ).with_child(
                        ChildRecord(
                            name="emulator",
                            kind="emulator",
                            pid=emulator.process.pid,
                            log=str(_log_dir(config) / "moto.log"),
                        )
                    )
                elif config.endpoint is not None:
                    await anyio.to_thread.run_sync(_configure_moto, config.endpoint)
                run.save()
                targets = _targets(config, region_of(os.environ))
                async with anyio.create_task_group() as children:
                    # One trace receiver for every stack's processes: the OTLP settings it
                    # gives are added to each stack's child environment.
                    trace_env = dict(os.environ)
                    receiver = await _start_trace_receiver(config, trace_env, children)
                    extra_env = {k: v for k, v in trace_env.items() if os.environ.get(k) != v}
                    started_stacks: list[tuple[_Target, LocalProcesses, dict[str, str]]] = []
                    deploy_lock = anyio.Lock()

                    async def start(target: _Target) -> None:
                        processes, problems = await _start_target(
                            run.state.endpoint, config, template, target, supervisor, children,
                            extra_env=extra_env, deploy_lock=deploy_lock)
                        started_stacks.append((target, processes, problems))

                    # The zones' stacks deploy and start side by side: each mostly waits on
                    # the emulator, which serves them all. On AWS a primary's global endpoint
                    # names its secondary's bus, so the standbys are deployed first.
                    waves = ([[t for t in targets if t.role != "primary"],
                              [t for t in targets if t.role == "primary"]]
                             if config.real_aws else [targets])
                    for wave in waves:
                        async with anyio.create_task_group() as starting:
                            for target in wave:
                                starting.start_soon(start, target)
                    started_stacks.sort(key=lambda s: targets.index(s[0]))
                    urls = {s.name: s.url for _, processes, _ in started_stacks
                            for s in processes.specs if s.url}
                    if receiver is not None:
                        urls["traces"] = receiver
                    run.state = replace(
                        run.state,
                        phase=Phase.READY,
                        error=None,
                        region=targets[0].region,
                        stacks=tuple(
                            StackRecord(
                                zone=target.zone, role=target.role, region=target.region,
                                stack_name=config.stack_name, prefix=target.prefix,
                                urls={s.name: s.url for s in processes.specs if s.url},
                                problems=problems)
                            for target, processes, problems in started_stacks),
                        urls=urls,
                        skipped={k: v for _, processes, _ in started_stacks
                                 for k, v in processes.skipped.items()},
                        problems={k: v for _, _, problems in started_stacks
                                  for k, v in problems.items()},
                        ready_seconds=round(time.monotonic() - started, 2),
                    )
                    run.save()
                    on_ready(run.state)
                    await _wait_for_stop(stop, emulator)
                    run.state = replace(run.state, phase=Phase.STOPPING)
                    run.save()
                    await supervisor.stop()
                    children.cancel_scope.cancel()
        except BaseException as exc:
            failure = _unwrap(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await supervisor.stop()
                if emulator is not None:
                    await anyio.to_thread.run_sync(emulator.stop)
            outer.cancel_scope.cancel()
    if failure is not None:
        message = _one_line(failure)
        run.state = replace(run.state, phase=Phase.FAILED, error=message)
        run.save()
        if isinstance(failure, FleetlineError | OSError):
            raise UpError(message) from failure
        raise failure
    run.state = replace(
        run.state,
        phase=Phase.STOPPED if stop.is_set() or main.cancel_called else run.state.phase,
        children=(),
    )
    run.save()
    return run.state


async def _start_trace_receiver(
    config: UpConfig, base_env: dict[str, str], children: anyio.abc.TaskGroup
) -> str | None:
    """The OTLP receiver `fleetline trace` reads (shared.local._traces), on loopback, for the
    local processes: their exporter endpoint, unless the shell names one (then spans go
    there, and the receiver is not started). Returns its URL."""
    if config.real_aws or not config.workers:
        return None
    if base_env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or base_env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return None
    from shared.local._traces import TraceReceiver, spans_path

    receiver = TraceReceiver(spans_path(config.state_dir))
    url: str = await children.start(receiver.serve)
    base_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
    base_env.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    # Spans reach the receiver within a second (the SDK's default is every 5 s).
    base_env.setdefault("OTEL_BSP_SCHEDULE_DELAY", "500")
    log.info("trace receiver listening", url=url)
    return url


async def _start_target(
    endpoint: str | None,
    config: UpConfig,
    template: Template,
    target: _Target,
    supervisor: Supervisor,
    children: anyio.abc.TaskGroup,
    *,
    extra_env: dict[str, str],
    deploy_lock: anyio.Lock,
) -> tuple[LocalProcesses, dict[str, str]]:
    """`_start` one stack in its Region, its children's environment with `extra_env`. The
    runner is an edge: it reads its own environment, hands each child a complete one (the
    stack's Region), and points its own clients through their settings at that Region
    (botocore alone would not read AWS_REGION)."""
    base_env = {**child_environment(endpoint, os.environ, region=target.region), **extra_env}
    clients = (
        endpoint_clients(endpoint, os.environ, region=target.region)
        if endpoint is not None
        else AwsClients(ClientSettings(region=target.region))
    )
    async with clients as aws:
        return await _start(aws, config, template, target, base_env, supervisor, children,
                            deploy_lock=deploy_lock)


async def _start(
    aws: AwsClients,
    config: UpConfig,
    template: Template,
    target: _Target,
    base_env: dict[str, str],
    supervisor: Supervisor,
    children: anyio.abc.TaskGroup,
    *,
    deploy_lock: anyio.Lock,
) -> tuple[LocalProcesses, dict[str, str]]:
    """Deploy, supply the gaps, start the local processes. Returns the processes (named
    with the target's prefix) and the resources that could not be supplied, with the
    reasons (keyed by the prefixed logical id)."""
    began = time.monotonic()
    if config.real_aws:
        stack = await _deploy(aws, config, template, target)
    else:
        # moto keeps IAM in one backend for every Region and changes its dicts without a
        # lock: two CreateStack calls at once can fail one with HTTP 500 ("dictionary
        # changed size during iteration" in put_role_policy, seen with three zones). On the
        # emulator the zones' stacks deploy one at a time; the rest of each zone's start-up
        # still runs side by side. AWS needs no such lock.
        async with deploy_lock:
            stack = await _deploy(aws, config, template, target)
    log.info("deployed", stack=config.stack_name, region=target.region,
             seconds=round(time.monotonic() - began, 2))
    facts = await gather_facts(aws, template, stack)
    plan = plan_gaps(template, facts, statemachines_dir=_statemachines(config))
    emulated = not config.real_aws
    problems = dict(plan.problems)
    if emulated:
        supplied, refused = await apply_api_gaps(aws, plan)
        problems.update(refused)
        log.info("supplied through the API", resources=supplied)
    for logical, reason in problems.items():
        log.warning("not supplied", resource=logical, reason=reason)
    processes = LocalProcesses()
    if config.workers:
        processes = await plan_processes(
            aws,
            plan,
            base_env=base_env,
            free_port=free_port,
            include_triggers=emulated,
            include_services=config.services,
            stack_name=config.stack_name,
            api_port=target.api_port,
            bind_host=config.bind_host,
            outputs=stack.outputs,
            container_port=(lambda _port: free_port()) if target.move_ports else None,
        )
    if target.prefix:
        processes = LocalProcesses(
            specs=tuple(replace(s, name=target.prefix + s.name) for s in processes.specs),
            skipped={target.prefix + k: v for k, v in processes.skipped.items()})
        problems = {target.prefix + k: v for k, v in problems.items()}
    for name, reason in processes.skipped.items():
        log.warning("not started", process=name, reason=reason)
    # READY means the printed URLs answer. Servers start first and are waited for; the
    # other processes start after them, so on a busy machine the servers get the CPU first
    # (workers need not be up for READY: what arrives meanwhile waits in queues and streams).
    servers = [s for s in processes.specs if s.url]
    for spec in servers:
        await children.start(supervisor.supervise, spec)
    await _wait_listening([s.url for s in servers if s.url], within_s=30.0)
    for spec in processes.specs:
        if not spec.url:
            await children.start(supervisor.supervise, spec)
    log.info(
        "local processes started",
        count=len(processes.specs),
        seconds=round(time.monotonic() - began, 2),
    )
    return processes, problems


async def _wait_listening(urls: list[str], *, within_s: float) -> None:
    """Return when every URL's port accepts a TCP connection, or after `within_s` (a server
    that does not come up is logged, and `status` shows its restarts)."""

    async def one(url: str) -> None:
        host_port = url.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        host = "127.0.0.1" if host in {"0.0.0.0", ""} else host
        with anyio.move_on_after(within_s) as scope:
            while True:
                try:
                    stream = await anyio.connect_tcp(host, int(port))
                except OSError:
                    await anyio.sleep(0.1)
                    continue
                await stream.aclose()
                return
        if scope.cancelled_caught:
            log.warning("server did not start listening", url=url, waited_s=within_s)

    async with anyio.create_task_group() as tg:
        for url in urls:
            tg.start_soon(one, url)


def _unwrap(exc: BaseException) -> BaseException:
    """The single cause inside (nested) exception groups, or the group itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _configure_moto(endpoint: str) -> None:
    """A moto server given by AWS_ENDPOINT_URL (compose.yaml) needs the same settings as the
    embedded one; other endpoints (LocalStack) have no /moto-api and are left alone."""
    from shared.emulator import configure_endpoint

    try:
        configure_endpoint(endpoint)
    except OSError as exc:
        log.info("endpoint is not a moto server; not configured", endpoint=endpoint, error=str(exc))


def spawn_emulator(config: UpConfig) -> Emulator:
    """Spawn (not wait for) the embedded emulator `config` asks for, logging to the state
    directory. Raises ConfigurationError (moto missing) or EmulatorError (port in use)."""
    _log_dir(config).mkdir(parents=True, exist_ok=True)
    return Emulator(port=config.port, log_path=_log_dir(config) / "moto.log").spawn()


def _say_skipped_fixes(emulator: Emulator) -> None:
    """Once, on stderr: the speed fixes the emulator started without (a moto version they
    were not verified with), so a slow emulator is not a mystery."""
    skipped = emulator.fixes.skipped if emulator.fixes is not None else {}
    if skipped and os.environ.get("FLEETLINE_EMULATOR_FIXES") != "0":
        reason = next(iter(skipped.values()))
        print(f"warning: the emulator started without its speed fixes {', '.join(skipped)} "
              f"({reason}): it is slower; install the locked version: `make install`",
              file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _statemachines(config: UpConfig) -> Path:
    return config.statemachines_dir or statemachines_dir(config.template)


def _log_dir(config: UpConfig) -> Path:
    return config.state_dir / "logs"


class _EmulatorDied(UpError):
    pass


async def _wait_for_stop(stop: anyio.Event, emulator: Emulator | None) -> None:
    """Return when `stop` is set; raise when the emulator process dies."""
    while not stop.is_set():
        with anyio.move_on_after(1.0):
            await stop.wait()
        if emulator is not None and emulator.process is not None:
            code = emulator.process.poll()
            if code is not None:
                raise _EmulatorDied(
                    f"the emulator exited with status {code}; its state is lost: "
                    "run `fleetline up` again"
                )
