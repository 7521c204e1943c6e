"""The Lambda adapter for API Gateway HTTP APIs (payload format 2.0): routes by `routeKey`
to async functions, answers in JSON. 413 over the body limit (checked before parsing), 400
naming the field of invalid JSON, a pydantic validation error or an `InvalidMessageError`,
an `HttpError`'s own status, 404 for an unknown route, 503 for a retryable failure, 500
otherwise (logged with its traceback; the client sees no details).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import structlog
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from shared.aws import AwsClients
from shared.config import Resources
from shared.errors import FleetlineError, InvalidMessageError, PermanentError, RetryableError
from shared.hosts.lambda_._runtime import (
    LambdaHandler,
    LambdaRuntime,
    check_sources,
    default_runtime,
)
from shared.tracing import extract, tracer

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "HttpError",
    "HttpRequest",
    "HttpResponse",
    "HttpRoute",
    "http_api_handler",
]

_log = structlog.get_logger("shared.hosts.lambda")
DEFAULT_MAX_BODY_BYTES: Final = 1_048_576


class HttpError(FleetlineError):
    """Raise from a route to answer `status` with `{"message": ..., "field": ...}`."""

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"status must be 4xx or 5xx, got {status!r}")
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.details = dict(details or {})


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, kw_only=True)
class HttpRequest:
    """An HTTP API request (payload format 2.0), with the container's clients."""

    method: str
    path: str
    route_key: str
    path_parameters: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    aws: AwsClients
    resources: Resources
    raw: Mapping[str, Any] = field(default_factory=dict)

    def json(self, model: type[M]) -> M:
        """The body validated as `model`.

        Raises:
            HttpError: 400 when the body is not JSON (field "body"), or when it fails the
                model (field: the first bad field's dotted path; `details.errors` lists all).
        """
        try:
            document = json.loads(self.body or b"null")
        except ValueError:
            raise HttpError(400, "body is not valid JSON", field="body") from None
        try:
            return model.model_validate(document)
        except ValidationError as exc:
            raise _validation_error(exc) from None


@dataclass(frozen=True)
class HttpResponse:
    """A route's answer. `body`: a JSON-able value or pydantic model (None: empty body)."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


HttpRoute = Callable[[HttpRequest], Awaitable[Any]]
"""`async def route(request) -> HttpResponse | JSON-able value | pydantic model`."""


def _validation_error(exc: ValidationError) -> HttpError:
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    return HttpError(400, f"{first['field']}: {first['message']}", field=first["field"],
                     details={"errors": errors})


def _json_response(status: int, body: Any, headers: Mapping[str, str] | None = None
                   ) -> dict[str, Any]:
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json")
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": "" if body is None else json.dumps(body, separators=(",", ":"), default=str),
        "isBase64Encoded": False,
    }


def _error_response(error: HttpError) -> dict[str, Any]:
    body: dict[str, Any] = {"message": error.message}
    if error.field is not None:
        body["field"] = error.field
    body.update(error.details)
    return _json_response(error.status, body)


def http_api_handler(
    routes: Mapping[str, HttpRoute] | None = None,
    *,
    setup: Callable[[AwsClients, Resources], Any] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    runtime: LambdaRuntime | None = None,
) -> LambdaHandler:
    """A Lambda entry point for API Gateway HTTP API routes (payload format 2.0).

    `routes` maps the event's `routeKey` ("POST /orders", "GET /orders/{id}", "$default")
    to an async function; or `setup(aws, resources)` returns that mapping once per container.
    Answers: the route's result as JSON (200 unless an `HttpResponse` says otherwise);
    413 when the body exceeds `max_body_bytes` (checked before parsing); 400 naming the
    field for invalid JSON, pydantic validation errors and `InvalidMessageError`; an
    `HttpError`'s status; 404 for an unknown route; 503 for a retryable failure; 500
    otherwise (logged with its traceback; the client sees no details).

    Raises ValueError unless exactly one of routes and setup is given, or when
    `max_body_bytes` < 1.
    """
    check_sources(routes, setup)
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes!r}")
    rt = default_runtime(runtime)

    async def table(aws: AwsClients) -> Mapping[str, HttpRoute]:
        if routes is not None:
            return routes
        assert setup is not None
        factory = setup
        built: Mapping[str, HttpRoute] = await rt.built(
            factory, lambda: factory(aws, rt.resources))
        return built

    async def invoke(aws: AwsClients, event: Mapping[str, Any]) -> dict[str, Any]:
        route_key = str(event.get("routeKey", "$default"))
        headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        raw_body = event.get("body") or ""
        body = (base64.b64decode(raw_body) if event.get("isBase64Encoded")
                else str(raw_body).encode())
        http = (event.get("requestContext") or {}).get("http") or {}
        # `http.route` is the route's template (`/orders/{id}`), never the path with ids in it.
        method = str(http.get("method", ""))
        template = route_key.split(" ", 1)[1] if " " in route_key else route_key
        with tracer("shared.hosts").start_as_current_span(
            f"{method} {template}" if method and template != "$default" else route_key,
            context=extract(headers), kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": template,
                        "url.path": str(http.get("path", event.get("rawPath", "")))},
        ) as span:
            answer = await respond(aws, event, route_key, headers, body, http)
            span.set_attribute("http.response.status_code", int(answer["statusCode"]))
            return answer

    async def respond(aws: AwsClients, event: Mapping[str, Any], route_key: str,
                      headers: dict[str, str], body: bytes, http: Mapping[str, Any]
                      ) -> dict[str, Any]:
        if len(body) > max_body_bytes:
            return _error_response(HttpError(
                413, f"body is {len(body)} bytes; the limit is {max_body_bytes}",
                field="body", details={"limit": max_body_bytes}))
        known = await table(aws)
        route = known.get(route_key) or known.get("$default")
        if route is None:
            return _error_response(HttpError(404, f"no route for {route_key}"))
        request = HttpRequest(
            method=str(http.get("method", route_key.split(" ", 1)[0])),
            path=str(http.get("path", event.get("rawPath", ""))),
            route_key=route_key,
            path_parameters=dict(event.get("pathParameters") or {}),
            query=dict(event.get("queryStringParameters") or {}),
            headers=headers,
            body=body,
            aws=aws,
            resources=rt.resources,
            raw=event,
        )
        try:
            answer = await route(request)
        except HttpError as exc:
            return _error_response(exc)
        except ValidationError as exc:
            return _error_response(_validation_error(exc))
        except InvalidMessageError as exc:
            return _error_response(HttpError(400, str(exc), field=exc.field))
        except RetryableError as exc:
            _log.warning("route failed; retryable", route=route_key, error=str(exc))
            return _error_response(HttpError(503, "Service Unavailable"))
        except PermanentError as exc:
            _log.warning("route refused", route=route_key, error=str(exc))
            return _error_response(HttpError(400, str(exc)))
        except Exception:
            _log.exception("route failed", route=route_key)
            return _error_response(HttpError(500, "Internal Server Error"))
        if isinstance(answer, HttpResponse):
            return _json_response(answer.status, answer.body, answer.headers)
        return _json_response(200, answer)

    def entry(event: Any, context: Any) -> dict[str, Any]:
        return rt.run(lambda aws: invoke(aws, event))

    return entry
