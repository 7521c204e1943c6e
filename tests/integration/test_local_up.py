"""`fleetline up --detach` / `status` / `down` as a user runs them: subprocesses, a moto server
of their own on a free port, the small stack in tests/integration/local_up/template.yaml
(one resource of every kind the local runner supplies), checked over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from shared.aws import AwsClients
from shared.cloudformation import load_template
from shared.errors import EX_CONFIG
from shared.local import DemoContext, read_state
from shared.local._demo import bus_round_trip
from shared.local._state import ChildRecord, pid_alive
from shared.local._supervisor import ProcessSpec, RestartBackoff, Supervisor

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(__file__).parent / "local_up" / "template.yaml"
READY_WITHIN_S = 30.0  # the goal; bench/up_bench.py measures it


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }
    )
    return env


def _fleetline(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=ROOT,
        env={**_env(), **(env or {})},
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Up:
    endpoint: str
    urls: dict[str, str]
    state_dir: Path
    stack: str
    ready_seconds: float


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    state_dir = tmp_path_factory.mktemp("fleetline-up")
    stack = "uptest"
    started = time.monotonic()
    done = _fleetline(
        "up",
        "--detach",
        "--template",
        str(TEMPLATE),
        "--stack-name",
        stack,
        "--state-dir",
        str(state_dir),
        timeout=READY_WITHIN_S * 4,
    )
    elapsed = time.monotonic() - started
    try:
        assert done.returncode == 0, done.stderr + (state_dir / "up.log").read_text()
        ready = [line for line in done.stdout.splitlines() if line.startswith("READY ")]
        assert len(ready) == 1, done.stdout
        words = ready[0].split()
        urls = dict(w.split("=", 1) for w in words[2:])
        print(f"time to READY: {elapsed:.2f} s (stack {urls.get('stack')})")
        yield Up(
            endpoint=words[1], urls=urls, state_dir=state_dir, stack=stack, ready_seconds=elapsed
        )
    finally:
        _fleetline("down", "--state-dir", str(state_dir))


@pytest.fixture
async def aws(up: Up, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AwsClients]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", up.endpoint)
    async with AwsClients() as clients:
        yield clients


def test_ready_line_and_state_agree(up: Up) -> None:
    # Time to READY is a performance goal (< 30 s on the real template): measured by
    # bench/up_bench.py, not asserted here, where a loaded CI machine would make it flaky.
    state = read_state(up.state_dir)
    assert state is not None
    assert state.phase.value == "ready"
    assert state.endpoint == up.endpoint


def test_status_lists_every_resource_of_the_template(up: Up) -> None:
    done = _fleetline(
        "status", "--json", "--template", str(TEMPLATE), "--state-dir", str(up.state_dir)
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    listed = {r["logical_id"]: r for r in status["resources"]}
    assert set(listed) == set(load_template(TEMPLATE)["Resources"])
    assert listed["WorkQueue"]["state"] == "CREATE_COMPLETE"
    assert listed["CriticalAlarms"]["state"].startswith("local:")
    queues = {q["name"]: q for q in status["queues"]}
    assert queues["uptest-work-dlq"]["is_dlq"]
    assert not queues["uptest-work"]["is_dlq"]
    streams = {s["name"]: s for s in status["streams"]}
    assert streams["uptest-telemetry"]["shards"] == 1
    assert streams["uptest-outbox (stream)"]["shards"] >= 1  # the table stream the pipe reads
    processes = {p["name"]: p for p in status["processes"]}
    assert processes["emulator"]["alive"]
    assert processes["SleeperService"]["alive"]  # the ECS service whose module exists


def test_worker_runs_with_the_task_definition_environment(up: Up) -> None:
    state = read_state(up.state_dir)
    assert state is not None
    services = [c for c in state.children if c.kind == "service"]
    assert [c.name for c in services] == ["SleeperService"]
    assert pid_alive(services[0].pid)
    log = Path(services[0].log or "")
    deadline = time.monotonic() + 10
    while "queue=" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    # Ref resolved by the emulator into the container's environment:
    assert "queue=https://sqs.us-east-1.amazonaws.com/123456789012/uptest-work" in log.read_text()


def test_http_api_builds_api_gateway_events(up: Up) -> None:
    request = urllib.request.Request(
        f"{up.urls['HttpApi']}/echo/ada?x=1&x=2",
        data=b'{"n": 1}',
        method="POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        echoed = json.loads(response.read())
    assert echoed == {
        "route": "POST /echo/{name}",
        "name": "ada",
        "query": {"x": "1,2"},
        "body": '{"n": 1}',
        "function": "uptest-api",
        "queue": "https://sqs.us-east-1.amazonaws.com/123456789012/uptest-work",
    }
    missing = urllib.request.Request(f"{up.urls['HttpApi']}/nope", method="GET")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(missing, timeout=10)
    assert info.value.code == 404


async def _poll(check: object, within: float = 15.0) -> object:
    deadline = time.monotonic() + within
    while True:
        result = await check()  # type: ignore[operator]
        if result or time.monotonic() > deadline:
            return result
        await anyio.sleep(0.05)


async def test_event_source_mapping_invokes_the_function(aws: AwsClients, up: Up) -> None:
    sqs = await aws.client("sqs")
    dynamodb = await aws.client("dynamodb")
    url = (await sqs.get_queue_url(QueueName="uptest-work"))["QueueUrl"]
    await sqs.send_message(QueueUrl=url, MessageBody="hello-mapping")

    async def seen() -> bool:
        got = await dynamodb.get_item(
            TableName="uptest-outbox", Key={"pk": {"S": "seen#hello-mapping"}}
        )
        return "Item" in got

    assert await _poll(seen), "the WorkFunction handler never ran for the message"

    async def drained() -> bool:
        attrs = (
            await sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )
        )["Attributes"]
        return attrs == {
            "ApproximateNumberOfMessages": "0",
            "ApproximateNumberOfMessagesNotVisible": "0",
        }

    assert await _poll(drained), "the handled message was not deleted"


async def test_pipe_relays_outbox_events_to_the_bus(aws: AwsClients) -> None:
    """Outbox row -> table stream -> local pipe (consumer + relay) -> bus -> rule -> queue
    -> mapping -> function, which records the envelope id."""
    dynamodb = await aws.client("dynamodb")
    envelope = {
        "id": "evt-pipe-1",
        "type": "OrderPlaced",
        "source": "fleetline.orders",
        "version": 1,
        "data": {},
    }
    await dynamodb.put_item(
        TableName="uptest-outbox",
        Item={
            "pk": {"S": "order#1"},
            "outbox": {"L": [{"S": json.dumps(envelope)}]},
        },
    )

    async def seen() -> bool:
        got = await dynamodb.get_item(
            TableName="uptest-outbox", Key={"pk": {"S": "seen#evt-pipe-1"}}
        )
        return "Item" in got

    assert await _poll(seen, within=20), "the outbox event never reached the function"


async def test_kinesis_mapping_and_stream_lag(aws: AwsClients, up: Up) -> None:
    kinesis = await aws.client("kinesis")
    dynamodb = await aws.client("dynamodb")
    await kinesis.put_record(
        StreamName="uptest-telemetry", Data=b"hello-kinesis", PartitionKey="device-1"
    )

    async def seen() -> bool:
        got = await dynamodb.get_item(
            TableName="uptest-outbox", Key={"pk": {"S": "seen#hello-kinesis"}}
        )
        return "Item" in got

    assert await _poll(seen, within=20), "the Kinesis mapping never invoked the function"

    def lag() -> str:
        done = _fleetline(
            "status", "--json", "--template", str(TEMPLATE), "--state-dir", str(up.state_dir)
        )
        assert done.returncode == 0, done.stderr
        streams = {s["name"]: s for s in json.loads(done.stdout)["streams"]}
        return str(streams["uptest-telemetry"]["lag"])

    # Checkpointed after the batch: caught up (age of the oldest unprocessed record).
    async def caught_up() -> bool:
        return lag() == "TelemetryMapping: 0.0 s"

    assert await _poll(caught_up), lag()


async def test_subscription_filter_policy_is_supplied(aws: AwsClients) -> None:
    sns = await aws.client("sns")
    sqs = await aws.client("sqs")
    topic = next(
        t["TopicArn"]
        for t in (await sns.list_topics())["Topics"]
        if t["TopicArn"].endswith(":uptest-alarms")
    )
    for severity in ("info", "critical"):
        await sns.publish(
            TopicArn=topic,
            Message=f"alarm-{severity}",
            MessageAttributes={"severity": {"DataType": "String", "StringValue": severity}},
        )
    url = (await sqs.get_queue_url(QueueName="uptest-alarms"))["QueueUrl"]
    got = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    assert [m["Body"] for m in got.get("Messages", [])] == ["alarm-critical"]  # raw delivery


async def test_state_machine_is_recreated_and_executes(aws: AwsClients) -> None:
    sfn = await aws.client("stepfunctions")
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:uptest-saga"
    started = await sfn.start_execution(stateMachineArn=arn, name="probe-1", input="{}")

    async def finished() -> dict[str, object] | None:
        described = await sfn.describe_execution(executionArn=started["executionArn"])
        return described if described["status"] != "RUNNING" else None

    described = await _poll(finished)
    assert isinstance(described, dict)
    assert described["status"] == "SUCCEEDED"
    # DefinitionSubstitutions resolved from the deployed stack:
    assert str(described["output"]).strip('"').endswith("/123456789012/uptest-work")


async def test_a_distributed_map_runs_through_the_map_runs_process(aws: AwsClients, up: Up) -> None:
    """The template's Distributed Map: rewritten at deploy, its processor created as a
    machine of its own, its map run carried out by the supervised map-runs process."""
    sfn = await aws.client("stepfunctions")
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:uptest-rollout"
    started = await sfn.start_execution(
        stateMachineArn=arn, name="wave-1",
        input=json.dumps({"wave": "w1", "devices": ["d1", "d2", "d3"]}))

    async def finished() -> dict[str, object] | None:
        described = await sfn.describe_execution(executionArn=started["executionArn"])
        return described if described["status"] != "RUNNING" else None

    described = await _poll(finished, within=30)
    assert isinstance(described, dict)
    assert described["status"] == "SUCCEEDED", described
    assert json.loads(str(described["output"])) == [
        {"devices": ["d1", "d2"], "wave": "w1"}, {"devices": ["d3"], "wave": "w1"}]
    state = read_state(up.state_dir)
    assert state is not None
    assert [c.name for c in state.children if c.kind == "map-runs"] == ["map-runs"]


async def test_demo_bus_step_routes_through_a_temporary_tap(aws: AwsClients, up: Up) -> None:
    state = read_state(up.state_dir)
    assert state is not None
    ctx = DemoContext(
        aws=aws, state=state, outputs={}, template=load_template(TEMPLATE), template_path=TEMPLATE
    )
    lines = await bus_round_trip(ctx)
    assert len(lines) == 1
    assert lines[0].startswith("uptest-orders: event -> rule -> queue in ")
    rules = await (await aws.client("events")).list_rules(EventBusName="uptest-orders")
    assert [r["Name"] for r in rules["Rules"] if "demo-tap" in r["Name"]] == []  # cleaned up


def test_errors_are_one_line(tmp_path: Path, up: Up) -> None:
    port = int(up.endpoint.rsplit(":", 1)[1])
    busy = _fleetline(
        "up", "--port", str(port), "--template", str(TEMPLATE), "--state-dir", str(tmp_path / "a")
    )
    assert busy.returncode != 0
    assert busy.stderr.strip().count("\n") == 0
    assert f"port {port} is in use" in busy.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("Resources: [1, 2\n")
    invalid = _fleetline("up", "--template", str(bad), "--state-dir", str(tmp_path / "b"))
    assert invalid.returncode != 0
    assert "Traceback" not in invalid.stderr
    assert "is invalid" in invalid.stderr


def test_up_refuses_a_moto_its_fixes_were_not_verified_with(tmp_path: Path) -> None:
    """A moto version no fix names (here the installed one, made to say 9.9.9 by a
    sitecustomize in the emulator's process): one `error:` line naming the version and the
    way out, a non-zero exit, and no emulator left behind, never an HTTP 500 later."""
    fake = tmp_path / "fake-moto-version"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(
        "import importlib.metadata as m\n"
        "_version = m.version\n"
        "m.version = lambda name: '9.9.9' if name == 'moto' else _version(name)\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")]))
    done = _fleetline("up", "--template", str(TEMPLATE), "--state-dir", str(tmp_path / "s"),
                      env={"PYTHONPATH": pythonpath})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: the emulator cannot start: its fix 'rule-targets'")
    assert "moto 9.9.9 is not a version it was verified with (5.2.5, 5.2.6)" in lines[0]
    assert "make install" in lines[0]
    assert "requirements.lock" in lines[0]
    assert read_state(tmp_path / "s") is None or not any(
        pid_alive(pid) for pid in read_state(tmp_path / "s").pids())  # type: ignore[union-attr]


def test_down_stops_every_process(tmp_path: Path, up: Up) -> None:
    state = read_state(up.state_dir)
    assert state is not None
    pids = state.pids()
    assert all(pid_alive(pid) for pid in pids)
    done = _fleetline("down", "--state-dir", str(up.state_dir))
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 5
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if pid_alive(pid)]
    log = next(Path(c.log or "") for c in state.children if c.name == "SleeperService")
    assert "sleeper drained" in log.read_text()  # SIGTERM, then a graceful exit


# -- the supervisor on its own: real child processes, short timings ---------------------------


async def test_supervisor_restarts_a_crashed_child_with_backoff(tmp_path: Path) -> None:
    records: list[ChildRecord] = []
    supervisor = Supervisor(
        log_dir=tmp_path,
        on_change=records.append,
        backoff=RestartBackoff(initial=0.05, maximum=0.2, stable_after=30),
    )
    spec = ProcessSpec(
        name="crasher",
        kind="service",
        argv=(sys.executable, "-c", "print('up'); raise SystemExit(3)"),
        env=dict(os.environ),
        stop_timeout=1,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(supervisor.supervise, spec)

        async def restarted_thrice() -> bool:
            return len(records) >= 4

        assert await _poll(restarted_thrice, within=10)
        await supervisor.stop()
    assert [r.restarts for r in records[:4]] == [0, 1, 2, 3]
    assert len({r.pid for r in records}) == len(records)  # a new process each time
    assert (tmp_path / "crasher.log").read_text().count("up") >= 3  # one log, appended


async def test_supervisor_does_not_restart_a_misconfigured_child(tmp_path: Path) -> None:
    exits: list[tuple[str, int]] = []
    supervisor = Supervisor(
        log_dir=tmp_path,
        on_change=lambda r: None,
        on_exit=lambda name, code: exits.append((name, code)),
        backoff=RestartBackoff(initial=0.01),
    )
    spec = ProcessSpec(
        name="bad",
        kind="lambda",
        argv=(sys.executable, "-c", f"raise SystemExit({EX_CONFIG})"),
        env=dict(os.environ),
    )
    with anyio.fail_after(10):
        await supervisor.supervise(spec)  # returns: not restarted
    assert exits == [("bad", EX_CONFIG)]


async def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    supervisor = Supervisor(log_dir=tmp_path, on_change=lambda r: None)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    spec = ProcessSpec(
        name="stubborn",
        kind="service",
        argv=(sys.executable, "-c", stubborn),
        env=dict(os.environ),
        stop_timeout=0.5,
    )
    async with anyio.create_task_group() as tg:
        pid = await tg.start(supervisor.supervise, spec)

        async def ready() -> bool:
            return "ready" in (tmp_path / "stubborn.log").read_text()

        assert await _poll(ready, within=10)
        started = time.monotonic()
        await supervisor.stop()
        assert time.monotonic() - started < 3
    assert not pid_alive(pid)


def test_application_template_comes_up_and_status_lists_every_resource(tmp_path: Path) -> None:
    """The real stack (deploy/template.yaml) without local processes: deployed, gaps
    supplied, every resource listed by status, down leaves nothing running."""
    template = ROOT / "deploy" / "template.yaml"
    started = time.monotonic()
    done = _fleetline(
        "up",
        "--detach",
        "--no-workers",
        "--stack-name",
        "apptest",
        "--template",
        str(template),
        "--state-dir",
        str(tmp_path),
        timeout=90,
    )
    try:
        assert done.returncode == 0, done.stderr + (tmp_path / "up.log").read_text()[-2000:]
        print(f"application stack READY (no workers) in {time.monotonic() - started:.1f} s")
        shown = _fleetline(
            "status", "--json", "--template", str(template), "--state-dir", str(tmp_path)
        )
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        listed = {r["logical_id"]: r["state"] for r in status["resources"]}
        assert set(listed) == set(load_template(template)["Resources"])
        unsupplied = {k: v for k, v in listed.items() if "not supplied" in v or v == "MISSING"}
        assert unsupplied == {}
    finally:
        state = read_state(tmp_path)
        _fleetline("down", "--state-dir", str(tmp_path))
    assert state is not None
    assert not [pid for pid in state.pids() if pid_alive(pid)]
