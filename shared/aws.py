"""The one place AWS clients are made, and the seam where SDK errors become ours.

Endpoint and Region come from `ClientSettings` when it names them; what it leaves unset, and
credentials always, come from the standard AWS environment and config files
(`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, `AWS_PROFILE`, ...), which botocore reads itself.
So a process the stack runs is configured the AWS way, and code that learns an endpoint
elsewhere (the state file of `fleetline up`) passes it in the settings instead of writing it
into `os.environ`: the same code talks to the embedded emulator, a LocalStack container or
AWS.

Two hot-path escapes from botocore's per-value shape walk, on the same clients:
`AwsClients.send_encoded` (a request body encoded by the caller, sent as given whether the
clients validate parameters or not: the seam knows which, from its settings) and
`call_decoded` (a response decoded by orjson); see `shared._wire`. Both raise translated
errors.

SDK errors become `shared.errors` types here and nowhere else (`translate_error`,
`aws_errors`): a failed DynamoDB condition is a `ConditionFailedError` (with the item as it
was, when asked for), a cancelled transaction a `TransactionCanceledError` (with its
reasons), throttling and 5xx an `AwsUnavailableError`, other refusals an `AwsRequestError`.

Every HTTP request a client sends is counted (`RequestCounter`), retries included, because on
AWS requests are the bill; the benchmarks and `fleetline status` read these counts.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.utils import parse_timestamp

from shared import _wire
from shared.errors import (
    AwsRequestError,
    AwsUnavailableError,
    ConditionFailedError,
    FleetlineError,
    TransactionCanceledError,
)

__all__ = [
    "AwsClient",
    "AwsClients",
    "ClientSettings",
    "RequestCounter",
    "aws_errors",
    "call_decoded",
    "error_code",
    "translate_error",
]

# aiobotocore clients are generated at run time; their precise types would come from
# stub packages. Inside `shared` they are handled through this alias and wrapped by
# typed functions, so the looseness stays at the seam.
AwsClient = Any

_THROTTLE_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "KMSThrottlingException",
    }
)
# DynamoDB's two refusals that carry data the caller decides on (typed in `translate_error`).
_CONDITION_FAILED: Final = "ConditionalCheckFailedException"
_TRANSACTION_CANCELED: Final = "TransactionCanceledException"


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """How clients are configured. Defaults suit a long-running worker.

    `endpoint_url` (e.g. an emulator's `http://127.0.0.1:5000`) and `region` override the
    standard AWS configuration; None leaves them to it (`AWS_ENDPOINT_URL`, ...).

    Raises:
        ValueError: `endpoint_url` is not an http(s) URL.
    """

    endpoint_url: str | None = None
    region: str | None = None
    max_pool_connections: int = 64
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 4
    # Our requests are built by typed code; skipping botocore's validation saves ~20% client
    # CPU per call (../notes/cost.md). Turn it on when writing new call sites. Encoded bodies
    # (`AwsClients.send_encoded`) are validated too when it is on.
    parameter_validation: bool = False

    def __post_init__(self) -> None:
        if self.endpoint_url is not None and not self.endpoint_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"endpoint_url must be an http(s) URL, got {self.endpoint_url!r}")

    def aio_config(self) -> AioConfig:
        return AioConfig(
            region_name=self.region,
            max_pool_connections=self.max_pool_connections,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            parameter_validation=self.parameter_validation,
        )


class RequestCounter:
    """Counts HTTP requests sent to AWS, per `service.Operation`. Thread-safe."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _on_before_send(self, event_name: str, **_: Any) -> None:
        # event_name is "before-send.<service>.<Operation>"
        key = event_name.partition(".")[2]
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


def _fast_timestamp(value: Any) -> datetime.datetime:
    """botocore's timestamp parser with a fast path for epoch numbers (JSON protocols: Kinesis
    ApproximateArrivalTimestamp, DynamoDB Streams ApproximateCreationDateTime). The default
    makes a dateutil `tzlocal()` per value, about 100 us each: the largest client cost of a
    10,000-record GetRecords page. Same instant, as a UTC-aware datetime."""
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    parsed: datetime.datetime = parse_timestamp(value)
    return parsed


class AwsClients:
    """Owns one aiobotocore session and the clients made from it.

    Use as an async context manager; clients are created on first use and closed on exit:

        async with AwsClients() as aws:
            sqs = await aws.client("sqs")

    Reopening a closed instance is refused.
    """

    def __init__(
        self,
        settings: ClientSettings | None = None,
        *,
        counter: RequestCounter | None = None,
        session: AioSession | None = None,
    ) -> None:
        self.settings = settings or ClientSettings()
        self.counter = counter or RequestCounter()
        self._session = session or get_session()
        self._session.register("before-send", self.counter._on_before_send)
        self._session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=_fast_timestamp
        )
        _wire.register(self._session)  # `send_encoded` / `call_decoded`
        self._clients: dict[str, AwsClient] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError("Cannot reopen AwsClients once it has been closed.")
        if self._stack is not None:
            raise RuntimeError("AwsClients is already open.")
        self._stack = contextlib.AsyncExitStack()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._closed = True
        self._clients.clear()
        if stack is not None:
            await stack.aclose()

    async def client(self, service: str) -> AwsClient:
        """The client for `service` ("sqs", "dynamodb", ...), made once per instance."""
        if self._stack is None:
            raise RuntimeError("AwsClients must be entered (`async with`) before use.")
        existing = self._clients.get(service)
        if existing is not None:
            return existing
        made = await self._stack.enter_async_context(
            self._session.create_client(
                service, endpoint_url=self.settings.endpoint_url, config=self.settings.aio_config()
            )
        )
        self._clients[service] = made
        return made

    async def send_encoded(
        self, service: str, operation: str, body: bytes, *, decoded: bool = False
    ) -> dict[str, Any]:
        """Call `operation` of `service` with `body` (JSON, in the wire form) as the request,
        exactly as given: botocore does not serialize it again, and whether it validates
        it follows this instance's `ClientSettings.parameter_validation` (see
        `shared._wire`). The response is parsed by botocore, or with `decoded` returned as
        wire JSON decoded by orjson.

        Raises:
            ConditionFailedError, TransactionCanceledError, AwsUnavailableError,
                AwsRequestError: the service refused or could not be reached
                (`translate_error`).
            botocore's ParamValidationError: only with `parameter_validation=True`, for a
                body the service model refuses (a bug in the caller).
        """
        client = await self.client(service)
        with aws_errors():
            return await _wire.send_encoded(
                client, operation, body, validates=self.settings.parameter_validation,
                decoded=decoded)

    @property
    def region(self) -> str:
        region = self.settings.region or self._session.get_config_variable("region")
        return str(region or "us-east-1")


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a ClientError, else None."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def translate_error(exc: BaseException) -> FleetlineError | None:
    """Our error for an SDK error, or None when `exc` is not an SDK error: the most specific
    of `ConditionFailedError`, `TransactionCanceledError`, `AwsUnavailableError` (throttled,
    5xx, connection trouble) and `AwsRequestError`."""
    if isinstance(exc, ClientError):
        code = error_code(exc) or "Unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = str(exc)
        if code in _THROTTLE_CODES or status >= 500:
            return AwsUnavailableError(message, code=code)
        if code == _CONDITION_FAILED:
            return ConditionFailedError(message, code=code, item=exc.response.get("Item"))
        if code == _TRANSACTION_CANCELED:
            return TransactionCanceledError(
                message, code=code, reasons=exc.response.get("CancellationReasons") or ())
        return AwsRequestError(message, code=code)
    if isinstance(
        exc, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)
    ):
        return AwsUnavailableError(str(exc), code=type(exc).__name__)
    return None


@contextlib.contextmanager
def aws_errors() -> Iterator[None]:
    """Re-raise SDK errors as `shared.errors` types (`from` the original)."""
    try:
        yield
    except (ClientError, EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError,
            ReadTimeoutError) as exc:
        translated = translate_error(exc)
        if translated is None:  # pragma: no cover - every caught type translates
            raise
        raise translated from exc


async def call_decoded(client: AwsClient, operation: str, **params: Any) -> dict[str, Any]:
    """Call `operation` with `params` serialized by botocore; return the successful
    response's JSON as decoded by orjson (wire form: blobs base64, timestamps epoch seconds),
    plus botocore's `ResponseMetadata` (see `shared._wire`).

    Raises:
        AwsUnavailableError, AwsRequestError (or a subtype): as `translate_error`.
    """
    with aws_errors():
        return await _wire.call_decoded(client, operation, **params)
