"""Speed: each host name is routed to its backend once.

moto's dispatcher listed its package directory (`backends.list_of_moto_modules`) under a
global lock on every request to find the backend for a host. The installed package does
not change while the server runs, and a host always routes to the same backend.
"""

from __future__ import annotations

from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]


def apply() -> None:
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = unpatched(DomainDispatcherApplication, "get_backend_for_host")
    if original is None:
        return
    modules = tuple(backends.list_of_moto_modules())  # the installed package: fixed
    listed = unpatched(backends, "list_of_moto_modules")
    if listed is not None:
        replace(backends, "list_of_moto_modules", lambda: iter(modules))
    routed: dict[str, Any] = {}

    def get_backend_for_host(self: Any, host: str | None) -> Any:
        # Called under the dispatcher's lock.
        if host is None:
            return None
        backend = routed.get(host)
        if backend is None:
            backend = original(self, host)
            if backend is not None:
                routed[host] = backend
        return backend

    replace(DomainDispatcherApplication, "get_backend_for_host", get_backend_for_host)


FIX = Fix(
    name="host-routing",
    kind=FixKind.SPEED,
    summary="each host name is routed to its backend once, not per request",
    checks=(
        "moto.moto_server.werkzeug_app:DomainDispatcherApplication.get_backend_for_host",
        "moto.backends:list_of_moto_modules",
    ),
    verified={"5.2.5": "179e45c777727645", "5.2.6": "179e45c777727645"},
    apply=apply,
)
