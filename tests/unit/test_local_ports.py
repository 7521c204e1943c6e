"""Local servers listen where `--bind` says, on their container port when it is free and on
a free one (printed by `up`) when another program holds it."""

from __future__ import annotations

import socket

from shared.local._supply import listen_where, local_port, port_free


def test_template_wildcard_host_becomes_the_bind_address() -> None:
    env = {"FLEETLINE_DASHBOARD_HOST": "0.0.0.0", "OTHER": "x"}
    listen_where(env, "127.0.0.1", 8080)
    assert env["FLEETLINE_DASHBOARD_HOST"] == "127.0.0.1"
    assert env["FLEETLINE_DASHBOARD_PORT"] == "8080"
    assert env["OTHER"] == "x"


def test_a_taken_container_port_gives_a_free_one() -> None:
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        taken = other_program.getsockname()[1]
        assert not port_free("127.0.0.1", taken)
        assert local_port(taken, "127.0.0.1", lambda: 54321) == 54321
    assert port_free("127.0.0.1", taken)
    assert local_port(taken, "127.0.0.1", lambda: 54321) == taken
