"""Dashboard viewer tokens: a viewer authenticates as one tenant and sees only its data.

A token is `<tenant_id>.<expires epoch s>.<hmac-sha256 hex>` signed with the dashboard
secret (FLEETLINE_DASHBOARD_SECRET). It stands in for the Cognito / IAM auth an AppSync API
would use: the server derives the tenant from the token alone, never from a query parameter
the viewer could change. Locally the secret defaults to a fixed development value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Mapping
from typing import Final

from shared.errors import PermanentError

__all__ = ["DEV_SECRET", "InvalidTokenError", "dashboard_secret", "issue_token", "verify_token"]

DEV_SECRET: Final = "fleetline-local-dashboard-secret"
_TENANT: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class InvalidTokenError(PermanentError):
    """The token is malformed, expired, or not signed with this deployment's secret."""


def dashboard_secret(environ: Mapping[str, str] | None = None) -> str:
    """FLEETLINE_DASHBOARD_SECRET of `environ` (default `os.environ`), else `DEV_SECRET`: for
    the edges (the dashboard's lifespan, the CLI) to hand to the functions below."""
    env = os.environ if environ is None else environ
    return env.get("FLEETLINE_DASHBOARD_SECRET") or DEV_SECRET


def _sign(secret: str, tenant_id: str, expires: int) -> str:
    message = f"{tenant_id}.{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def issue_token(tenant_id: str, *, secret: str, ttl: float = 12 * 3600,
                now: float | None = None) -> str:
    """A token for `tenant_id` valid for `ttl` seconds.

    Raises:
        ValueError: `tenant_id` is not 1-64 characters of letters, digits, '-' or '_'.
    """
    if not _TENANT.match(tenant_id):
        raise ValueError(f"tenant_id {tenant_id!r} must be 1-64 of [A-Za-z0-9_-]")
    expires = int((time.time() if now is None else now) + ttl)
    return f"{tenant_id}.{expires}.{_sign(secret, tenant_id, expires)}"


def verify_token(token: str, *, secret: str, now: float | None = None) -> str:
    """The tenant id the token was issued for.

    Raises:
        InvalidTokenError: malformed, expired, or a wrong signature.
    """
    parts = token.split(".")
    if len(parts) != 3 or not _TENANT.match(parts[0]) or not parts[1].isdigit():
        raise InvalidTokenError("token: malformed")
    tenant_id, expires_text, signature = parts
    expected = _sign(secret, tenant_id, int(expires_text))
    if not hmac.compare_digest(expected, signature):
        raise InvalidTokenError("token: bad signature")
    if int(expires_text) < (time.time() if now is None else now):
        raise InvalidTokenError("token: expired")
    return tenant_id
