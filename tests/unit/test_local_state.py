from pathlib import Path

import pytest

from shared.errors import ConfigurationError
from shared.local import ChildRecord, Phase, UpState, read_state
from shared.local._state import write_state
from shared.local._supervisor import RestartBackoff


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    state = UpState(
        stack_name="s",
        endpoint="http://127.0.0.1:1",
        supervisor_pid=10,
        phase=Phase.READY,
        emulator_port=1,
        urls={"HttpApi": "http://127.0.0.1:2"},
        skipped={"P": "why"},
        ready_seconds=3.5,
    ).with_child(ChildRecord(name="emulator", kind="emulator", pid=11))
    write_state(tmp_path, state)
    assert read_state(tmp_path) == state
    assert not list(tmp_path.glob(".state-*"))  # the temporary file was renamed


def test_missing_state_is_none_and_damaged_state_is_refused(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match="not JSON"):
        read_state(tmp_path)
    (tmp_path / "state.json").write_text('{"endpoint": null}')
    with pytest.raises(ConfigurationError, match="damaged"):
        read_state(tmp_path)


def test_with_child_replaces_by_name_and_pids_lists_supervisor_first() -> None:
    state = UpState(stack_name="s", endpoint=None, supervisor_pid=1)
    state = state.with_child(ChildRecord(name="w", kind="service", pid=2))
    state = state.with_child(ChildRecord(name="w", kind="service", pid=3, restarts=1))
    assert state.pids() == [1, 3]
    assert state.without_child("w").pids() == [1]


def test_restart_backoff_doubles_up_to_the_cap() -> None:
    backoff = RestartBackoff(initial=0.5, maximum=4.0)
    assert [backoff.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="failures"):
        backoff.delay(-1)


def test_missing_moto_is_a_one_line_instruction(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from shared.emulator import Emulator

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "moto" else real(name, *a)
    )
    with pytest.raises(ConfigurationError, match=r"pip install -e '\.\[local\]'"):
        Emulator().spawn()


def test_local_processes_drop_the_unrun_sidecars_endpoint() -> None:
    from shared.local._supply import _command_modules, _without_sidecar_endpoints

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SERVICE_NAME": "x"}
    _without_sidecar_endpoints(env, {})  # the caller exported no endpoint
    assert env == {"OTEL_SERVICE_NAME": "x"}
    callers = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"}
    _without_sidecar_endpoints(env, callers)
    assert env == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    remote = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example:4318"}
    _without_sidecar_endpoints(remote, callers)
    assert remote == {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example:4318"}
    assert _command_modules(("python", "-m", "shared.hosts.worker", "services.x.y:worker")) == [
        "shared.hosts.worker",
        "services.x.y",
    ]
    assert _command_modules(("--config=/etc/otel.yaml",)) == []
