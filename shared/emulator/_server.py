"""moto's server with fleetline's fixes, and a route that says which were applied.

`python -m shared.emulator -H HOST -p PORT` (what `Emulator` spawns and the compose file
runs): checks every fix against the installed moto and applies them (a gap fix that does
not apply stops the server with one `error:` line and exit status 78), then serves moto's
application with waitress (keep-alive connections, a thread pool) when it is installed,
else with werkzeug. `GET /_fleetline/emulator` answers the `FixReport` as JSON, so a caller
knows what it talks to: `Emulator.wait_ready` reads it and tests assert on it.

Environment: `FLEETLINE_EMULATOR_FIXES=0` leaves the speed fixes out (to compare);
`FLEETLINE_EMULATOR_ACCESS_LOG=1` logs every request (werkzeug's server).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

from shared.emulator._fixes import FixReport, UnverifiedEmulatorError, apply_fixes
from shared.errors import EX_CONFIG

__all__ = ["STATUS_PATH", "main", "with_status"]

STATUS_PATH = "/_fleetline/emulator"

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def with_status(application: Wsgi, report: FixReport) -> Wsgi:
    """`application`, with `STATUS_PATH` answering `report` as JSON."""
    body = json.dumps(report.as_dict()).encode()

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == STATUS_PATH:
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        return application(environ, start_response)

    return serve


def _serve(application: Wsgi, host: str, port: int, *, access_log: bool) -> None:
    """waitress when installed (the `local` extra has it) and no access log is asked for.

    moto serves with werkzeug's development server, which closes the connection after every
    response and starts a thread per connection: each request paid a TCP connect and a
    thread start on both sides. waitress keeps connections open and serves from a pool of
    threads. Measured with 8 clients doing GetItem: 223 requests a second against 152, and
    2.0 ms of client CPU per request against 2.7. The pool is large because SQS long polls
    hold a thread for up to 20 s each."""
    if not access_log:
        try:
            import waitress
        except ImportError:
            pass
        else:
            waitress.serve(application, host=host, port=port, threads=128,
                           connection_limit=2000, asyncore_use_poll=True, ident="moto",
                           _quiet=True)
            return
    from werkzeug.serving import run_simple

    if not access_log:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    run_simple(host, port, application, threaded=True)


def main(host: str, port: int) -> int:
    """Apply the fixes and serve until SIGTERM; the exit status."""
    os.environ["MOTO_PORT"] = str(port)  # Step Functions tasks call the server back here
    from shared.emulator.fixes import ALL

    try:
        report = apply_fixes(ALL, speed=os.environ.get("FLEETLINE_EMULATOR_FIXES") != "0")
    except UnverifiedEmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EX_CONFIG
    for name, reason in report.skipped.items():
        print(f"warning: the emulator runs without its speed fix {name!r}: {reason}",
              file=sys.stderr, flush=True)
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    application = with_status(DomainDispatcherApplication(create_backend_app), report)
    _serve(application, host, port,
           access_log=os.environ.get("FLEETLINE_EMULATOR_ACCESS_LOG") == "1")
    return 0
