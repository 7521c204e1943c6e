"""Pointing a process at an endpoint (the emulator `fleetline up` runs, a moto or LocalStack
container): this process's own clients through `ClientSettings`, a child's through the
environment it is started with, as a task definition would give it. Nothing here writes
`os.environ`; the caller reads it (it is an edge: a command, the local runner) and hands it
in.

An emulator accepts any credentials, but botocore signs every request and needs some: the
caller's keys when its environment has them, else placeholders. The Region is the caller's
(`AWS_REGION`, else `AWS_DEFAULT_REGION`), else us-east-1, the one `fleetline up` deploys to
by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiobotocore.session import get_session

from shared.aws import AwsClients, ClientSettings, RequestCounter

__all__ = ["EMULATOR_CREDENTIALS", "child_environment", "endpoint_clients", "region_of"]

EMULATOR_CREDENTIALS: Final = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
DEFAULT_REGION: Final = "us-east-1"


def region_of(environ: Mapping[str, str]) -> str:
    """`AWS_REGION`, else `AWS_DEFAULT_REGION`, else us-east-1."""
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def _credentials(environ: Mapping[str, str]) -> tuple[str, str, str | None]:
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return key, secret, environ.get("AWS_SESSION_TOKEN") or None
    return (EMULATOR_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            EMULATOR_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], None)


def endpoint_clients(
    endpoint: str | None,
    environ: Mapping[str, str],
    *,
    counter: RequestCounter | None = None,
    region: str | None = None,
) -> AwsClients:
    """Clients on `endpoint`, with the Region and credentials `environ` gives (placeholders
    where it has none: see the module docstring); `region` overrides the environment's (a
    zone's stack: the state file says where it runs). `endpoint=None` means the standard AWS
    configuration, as `AwsClients()` (`environ` is then not consulted, `region` still is).

    Raises:
        ValueError: `endpoint` is not an http(s) URL.
    """
    if endpoint is None:
        return AwsClients(ClientSettings(region=region) if region else None, counter=counter)
    session = get_session()
    key, secret, token = _credentials(environ)
    # On the session, not from the chain: no profile or instance metadata is consulted.
    session.set_credentials(key, secret, token)
    settings = ClientSettings(endpoint_url=endpoint, region=region or region_of(environ))
    return AwsClients(settings, counter=counter, session=session)


def child_environment(
    endpoint: str | None, environ: Mapping[str, str], *, region: str | None = None,
) -> dict[str, str]:
    """The complete environment of a child process on `endpoint` (None: AWS): `environ` with
    the Region (`region`, else the environment's) set both ways and, on an endpoint,
    `AWS_ENDPOINT_URL` and credentials (the caller's or placeholders) instead of a profile."""
    region = region or region_of(environ)
    env = {**environ, "AWS_REGION": region, "AWS_DEFAULT_REGION": region,
           "PYTHONUNBUFFERED": "1"}
    if endpoint is not None:
        key, secret, _ = _credentials(environ)
        env.pop("AWS_PROFILE", None)
        env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    return env
