"""`python -m shared.local._hosts`: the local process behind a Lambda trigger, an HTTP API, a
pipe, or the map runs of Distributed Map states. Its spec comes as JSON in
FLEETLINE_LOCAL_SPEC (written by `_supply.plan_processes` from the template); its environment
is the function's, as deployed.

- `http-api`: an aiohttp server that turns requests into API Gateway v2 events.
- `triggers`: the function's event source mappings, each polled by the runtime's own
  consumer (SQS, Kinesis, DynamoDB Streams) whose batch handler builds the Lambda event and
  calls the function's handler unchanged: one polling loop in the codebase, not two.
- `pipe`: the outbox relay (`shared.outbox`), standing in for an EventBridge Pipe.
- `map-runs`: runs the map runs rewritten Distributed Map states ask for
  (`shared.local._distributed_map`), from the local map-runs queue.

SIGTERM stops polling, lets in-flight work finish, and exits (the supervisor kills after the
stop timeout).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import structlog

from shared.consumers import BatchResult, Message
from shared.errors import EX_CONFIG, ConfigurationError
from shared.local._apigw import MAX_PAYLOAD_BYTES, Route, build_event, http_response, match_route
from shared.local._lambda import (
    LambdaContext,
    dynamodb_stream_event,
    invoke,
    kinesis_event,
    load_handler,
    outcomes_from_response,
    sqs_event,
)
from shared.local._logs import setup_logging
from shared.local._supply import SPEC_ENV

log = structlog.get_logger("fleetline.local")

Runner = Callable[[anyio.Event], Awaitable[None]]


def _context(function: dict[str, Any]) -> LambdaContext:
    return LambdaContext(
        function_name=str(function["name"]),
        timeout_s=float(function.get("timeout", 3)),
        region=os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
    )


async def serve_http_api(spec: dict[str, Any], stop: anyio.Event) -> None:
    """Serve the API's routes on spec["host"]:spec["port"] until `stop` is set."""
    from aiohttp import web

    routes = [
        Route(route_key=r["route_key"], target=str(r["function"]["handler"]))
        for r in spec["routes"]
    ]
    functions = {r["route_key"]: r["function"] for r in spec["routes"]}
    handlers = {key: load_handler(f["handler"]) for key, f in functions.items()}

    async def handle(request: web.Request) -> web.StreamResponse:
        matched = match_route(routes, request.method, request.path)
        if matched is None:
            return web.json_response({"message": "Not Found"}, status=404)
        route, params = matched
        body = await request.read()
        event = build_event(
            route_key=route.route_key,
            method=request.method,
            path=request.path,
            query=list(request.query.items()),
            headers=list(request.headers.items()),
            body=body,
            path_parameters=params,
            source_ip=request.remote or "127.0.0.1",
            api_id=str(spec.get("name", "local")),
        )
        function = functions[route.route_key]
        try:
            result = await invoke(handlers[route.route_key], event, _context(function))
        except TimeoutError:
            log.error("handler timed out", route=route.route_key, function=function["name"])
            return web.json_response({"message": "Service Unavailable"}, status=503)
        except Exception as exc:  # API Gateway answers 500 and logs; the server keeps serving
            log.exception("handler failed", route=route.route_key, error=repr(exc))
            return web.json_response({"message": "Internal Server Error"}, status=500)
        status, headers, cookies, data = http_response(result)
        response = web.Response(status=status, body=data, headers=headers)
        for cookie in cookies:
            response.headers.add("Set-Cookie", cookie)
        return response

    app = web.Application(client_max_size=MAX_PAYLOAD_BYTES)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, str(spec.get("host", "127.0.0.1")), int(spec["port"]))
    await site.start()
    log.info("http api listening", api=spec.get("name"), url=f"http://127.0.0.1:{spec['port']}")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def lambda_batch_handler(
    function: dict[str, Any],
    mapping: dict[str, Any],
    build: Callable[[Sequence[Message], str], dict[str, Any]],
) -> Callable[[Sequence[Message]], Awaitable[BatchResult]]:
    """A consumer `BatchHandler` that invokes the function with the event Lambda would build.
    An exception or timeout fails the whole batch (retried), as on AWS."""
    handler = load_handler(str(function["handler"]))

    async def handle(messages: Sequence[Message]) -> BatchResult:
        event = build(messages, str(mapping["source_arn"]))
        try:
            response = await invoke(handler, event, _context(function))
        except Exception as exc:
            log.error(
                "function failed; batch will be retried", function=function["name"], error=repr(exc)
            )
            return outcomes_from_response(
                messages,
                {"batchItemFailures": [{"itemIdentifier": m.id} for m in messages]},
                report_batch_item_failures=True,
            )
        return outcomes_from_response(
            messages,
            response,
            report_batch_item_failures=bool(mapping.get("report_batch_item_failures")),
        )

    return handle


_BUILDERS = {"sqs": sqs_event, "kinesis": kinesis_event, "dynamodb-stream": dynamodb_stream_event}


async def run_triggers(spec: dict[str, Any], stop: anyio.Event) -> None:
    """Poll every mapping of the function with the runtime's consumer until `stop`."""
    from shared.local import _consumers  # the seam to the runtime's consumers

    function = spec["function"]
    async with anyio.create_task_group() as tg:
        for mapping in spec["mappings"]:
            kind = _consumers.source_kind(str(mapping["source_arn"]))
            handler = lambda_batch_handler(function, mapping, _BUILDERS[kind])
            tg.start_soon(_consumers.consume, kind, mapping, handler, stop)


async def run_pipe(spec: dict[str, Any], stop: anyio.Event) -> None:
    from shared.local import _consumers

    await _consumers.relay(spec, stop)


async def run_map_runs(spec: dict[str, Any], stop: anyio.Event) -> None:
    """Run Distributed Map runs from the queue named `spec["queue"]` until `stop`."""
    from shared.aws import AwsClients, aws_errors
    from shared.local._distributed_map import MapRunnerSettings, serve_map_runs

    async with AwsClients() as aws:
        sqs = await aws.client("sqs")
        with aws_errors():
            queue_url = (await sqs.get_queue_url(QueueName=str(spec["queue"])))["QueueUrl"]
        try:
            settings = MapRunnerSettings(**dict(spec.get("settings", {})))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{SPEC_ENV}: map-runs settings: {exc}") from None
        await serve_map_runs(aws, str(queue_url), stop, settings=settings)


_RUNNERS: dict[str, Callable[[dict[str, Any], anyio.Event], Awaitable[None]]] = {
    "http-api": serve_http_api,
    "triggers": run_triggers,
    "pipe": run_pipe,
    "map-runs": run_map_runs,
}


async def _main(spec: dict[str, Any]) -> None:
    runner = _RUNNERS.get(str(spec.get("kind")))
    if runner is None:
        raise ConfigurationError(f"{SPEC_ENV}: unknown kind {spec.get('kind')!r}")
    stop = anyio.Event()

    async def on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(on_signal)
        await runner(spec, stop)
        tg.cancel_scope.cancel()


def main() -> None:
    try:
        spec = json.loads(os.environ[SPEC_ENV])
    except (KeyError, json.JSONDecodeError):
        sys.exit(f"{SPEC_ENV} must hold this process's spec (JSON); `fleetline up` sets it")
    setup_logging(f"local-{spec.get('kind', 'host')}")
    # Spans to `up`'s receiver (OTEL_EXPORTER_OTLP_ENDPOINT), under the function's name
    # unless the environment names the service (OTEL_SERVICE_NAME), as Lambda's would.
    from shared.tracing import configure_tracing

    function = spec.get("function") or {}
    configure_tracing(os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or str(
        spec.get("name") or function.get("name") or f"local-{spec.get('kind', 'host')}"))
    try:
        anyio.run(_main, spec)
    except BaseException as exc:
        cause = exc
        while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
            cause = cause.exceptions[0]
        if isinstance(cause, ConfigurationError):
            # EX_CONFIG: a restart cannot fix it; the supervisor does not retry it.
            log.error("cannot start", error=str(cause))
            sys.exit(EX_CONFIG)
        raise


if __name__ == "__main__":
    main()
