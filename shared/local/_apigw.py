"""A local stand-in for an API Gateway HTTP API: payload format 2.0 events in, Lambda proxy
responses out, so the function behind a route runs unchanged.

The pure parts (`match_route`, `build_event`, `http_response`) follow the documented
behaviour of HTTP APIs: the most specific route wins (exact path, then parameters, then a
greedy `{proxy+}`; an exact method before `ANY`; `$default` last); header names are lower
case and repeated headers joined with commas; a handler answer without `statusCode` is sent
as JSON with status 200; an exception is a 500 `{"message": "Internal Server Error"}` and a
timeout a 503, as API Gateway answers. The server is aiohttp (already a dependency through
aiobotocore).
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["Route", "build_event", "http_response", "match_route"]

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's request limit
_TEXT_TYPES = ("text/", "json", "xml", "javascript", "x-www-form-urlencoded")


@dataclass(frozen=True, kw_only=True)
class Route:
    route_key: str  # "POST /orders/{id}", "ANY /{proxy+}", "$default"
    target: str  # what to call (a handler string)

    @property
    def method(self) -> str:
        return "ANY" if self.route_key == "$default" else self.route_key.split(" ", 1)[0].upper()

    @property
    def path(self) -> str | None:
        return None if self.route_key == "$default" else self.route_key.split(" ", 1)[1]


def _path_pattern(path: str) -> tuple[re.Pattern[str], int]:
    """A regex for a route path and its specificity (higher is more specific)."""
    parts = [p for p in path.strip("/").split("/") if p != ""]
    regex = ""
    score = 0
    for part in parts:
        greedy = re.fullmatch(r"\{(\w+)\+\}", part)
        param = re.fullmatch(r"\{(\w+)\}", part)
        if greedy:
            regex += rf"/(?P<{greedy.group(1)}>.+)"
            score += 1
        elif param:
            regex += rf"/(?P<{param.group(1)}>[^/]+)"
            score += 10
        else:
            regex += "/" + re.escape(part)
            score += 100
    return re.compile(f"^{regex or '/'}/?$"), score


def match_route(
    routes: Sequence[Route],
    method: str,
    path: str,
) -> tuple[Route, dict[str, str]] | None:
    """The route a request goes to, with its path parameters; None when no route matches."""
    best: tuple[tuple[int, int], Route, dict[str, str]] | None = None
    fallback: Route | None = None
    for route in routes:
        if route.path is None:
            fallback = route
            continue
        if route.method not in {method.upper(), "ANY"}:
            continue
        pattern, score = _path_pattern(route.path)
        found = pattern.match(path)
        if found is None:
            continue
        rank = (score, 1 if route.method != "ANY" else 0)
        if best is None or rank > best[0]:
            best = (rank, route, {k: v for k, v in found.groupdict().items() if v is not None})
    if best is not None:
        return best[1], best[2]
    if fallback is not None:
        return fallback, {}
    return None


def _is_text(content_type: str | None) -> bool:
    return not content_type or any(t in content_type.lower() for t in _TEXT_TYPES)


def build_event(
    *,
    route_key: str,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    body: bytes,
    path_parameters: Mapping[str, str],
    source_ip: str = "127.0.0.1",
    api_id: str = "local",
    account: str = "123456789012",
    stage: str = "$default",
    now: float | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The payload format 2.0 event API Gateway sends to a Lambda proxy integration."""
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    params: dict[str, str] = {}
    for name, value in query:
        params[name] = f"{params[name]},{value}" if name in params else value
    raw_query = "&".join(f"{k}={v}" for k, v in query)
    when = time.time() if now is None else now
    text = _is_text(joined.get("content-type")) and _is_utf8(body)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": joined,
        "requestContext": {
            "accountId": account,
            "apiId": api_id,
            "domainName": joined.get("host", "localhost"),
            "domainPrefix": joined.get("host", "localhost").split(".")[0],
            "http": {
                "method": method.upper(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": joined.get("user-agent", ""),
            },
            "requestId": request_id or uuid.uuid4().hex,
            "routeKey": route_key,
            "stage": stage,
            "time": datetime.fromtimestamp(when, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(when * 1000),
        },
        "isBase64Encoded": bool(body) and not text,
    }
    if cookies:
        event["cookies"] = cookies
    if params:
        event["queryStringParameters"] = params
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body:
        event["body"] = body.decode("utf-8") if text else base64.b64encode(body).decode()
    return event


def _is_utf8(body: bytes) -> bool:
    """A text body that is not UTF-8 travels base64-encoded, byte for byte, so the function
    can say what is wrong with it (decoding with replacement characters hid it)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def http_response(result: Any) -> tuple[int, dict[str, str], list[str], bytes]:
    """(status, headers, set-cookie values, body) for a handler's answer (format 2.0)."""
    if isinstance(result, Mapping) and "statusCode" in result:
        status = int(result["statusCode"])
        headers = {str(k): str(v) for k, v in dict(result.get("headers") or {}).items()}
        cookies = [str(c) for c in result.get("cookies") or []]
        body = result.get("body")
        if body is None:
            data = b""
        elif result.get("isBase64Encoded"):
            data = base64.b64decode(str(body))
        else:
            data = str(body).encode()
        return status, headers, cookies, data
    # No statusCode: API Gateway infers 200 and sends the answer as JSON.
    data = (result if isinstance(result, str) else json.dumps(result)).encode()
    return 200, {"content-type": "application/json"}, [], data
