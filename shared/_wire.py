"""JSON-protocol calls whose body the caller encodes, or whose response the caller decodes.

botocore turns parameters into a request, and a response into a result, by walking the
operation's shape value by value. For an ordinary call that costs a few hundred
microseconds, nothing next to the network; on the two hot paths of a stream worker it is
most of the process's CPU (bench/devices_bench.py, docs/benchmarks.md):

- a TransactWriteItems of 100 devices: the serializer visits every attribute value of every
  item (about a third of the telemetry worker's CPU before this module);
- a GetRecords page of 10,000 records: the parser visits five members per record, decodes
  base64 and builds a datetime for each (about an eighth).

`send_encoded` sends a body the caller built (with orjson, from data already in wire form);
`call_decoded` returns the response as JSON decoded by orjson, without the shape walk.
Everything else is the client's own path: endpoint resolution, signing, retries, the
request counter, tracing instrumentation, error parsing (an error response is parsed by
botocore as usual and raises `ClientError`). Services use these through `shared.aws`, which
translates those errors.

How: two handlers on botocore's documented events, registered on the session by
`AwsClients` (so on every client it makes), act only for the call made inside
`send_encoded` / `call_decoded` (a context variable holds that call's override; other calls,
even on the same client, are untouched):

- `before-call` replaces the serialized body (botocore's own S3 handlers change the body
  here too) with the caller's bytes.
- `before-parse` takes a successful response's body (decoded by orjson) and leaves
  botocore an empty object to parse; botocore merges the handler's result into its own
  (`customized_response_dict`, the hook botocore's S3 `Expires` handling uses).

What `send_encoded` gives botocore to validate and serialize depends on whether the client
validates parameters, which the caller states (`validates`): `shared.aws.AwsClients` made
the client from its `ClientSettings`, so it knows (the client's own `meta.config` does not
say: botocore leaves `parameter_validation` out of it). Nothing is left to a default:

- not validating (`ClientSettings`' default): NO parameters; botocore serializes `{}`,
  which the body then replaces. Had the swap not happened, the service would refuse the
  empty request: it fails loudly and writes nothing.
- validating: the body itself, decoded, so botocore checks it as it checks any call (a
  request its model refuses raises `ParamValidationError` before anything is sent); the copy
  it serializes is then replaced by the caller's bytes, which are what is sent (botocore
  would encode a blob a second time: the body already holds it as base64 text).

Only for JSON protocols (DynamoDB, Kinesis, SQS JSON, ...): the caller writes the wire form
itself, so it must know it (DynamoDB JSON attribute values, base64 for Kinesis blobs, epoch
seconds for timestamps). And only for operations whose endpoint rules can do without the
request: botocore resolves the endpoint from the parameters it is given, `{}` when not
validating, which is fine for TransactWriteItems and BatchExecuteStatement but makes
BatchGetItem's and BatchWriteItem's rules (`keys(RequestItems)`) fail before anything is
sent; those take `call_decoded`.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from botocore import xform_name

__all__ = ["call_decoded", "register", "send_encoded"]


@dataclass(frozen=True, slots=True)
class _Override:
    operation: str
    body: bytes | None  # replaces the serialized request body
    decode: bool  # take the response body as orjson-decoded JSON


_OVERRIDE: ContextVar[_Override | None] = ContextVar("fleetline_wire_override", default=None)


def register(session: Any) -> None:
    """Install the two handlers on an aiobotocore session (clients made later inherit
    them). Idempotent."""
    session.register("before-call", _before_call, unique_id="fleetline-wire-before-call")
    session.register("before-parse", _before_parse, unique_id="fleetline-wire-before-parse")


async def send_encoded(
    client: Any, operation: str, body: bytes, *, validates: bool, decoded: bool = False
) -> dict[str, Any]:
    """Call `operation` ("TransactWriteItems") with `body` as the request's JSON body,
    exactly as given; `validates` says whether `client` validates parameters (see the module
    docstring). The response is parsed by botocore, or with `decoded` returned as
    `call_decoded` returns it (wire JSON decoded by orjson, plus `ResponseMetadata`).

    Raises:
        ClientError: as the client's own method would (`AwsClients.send_encoded` translates).
        ParamValidationError: the client validates parameters and its model refuses `body`.
    """
    params: dict[str, Any] = orjson.loads(body) if validates else {}
    return await _call(client, _Override(operation, body, decode=decoded), params)


async def call_decoded(client: Any, operation: str, **params: Any) -> dict[str, Any]:
    """Call `operation` ("GetRecords") with `params` serialized by botocore, and return
    the successful response's JSON as decoded by orjson (wire form: blobs base64, timestamps
    epoch seconds), plus botocore's `ResponseMetadata`.

    Raises:
        ClientError: as the client's own method would (`shared.aws.call_decoded` translates).
    """
    return await _call(client, _Override(operation, None, decode=True), params)


async def _call(client: Any, override: _Override, params: Mapping[str, Any]) -> dict[str, Any]:
    method = getattr(client, xform_name(override.operation))
    token = _OVERRIDE.set(override)
    try:
        result: dict[str, Any] = await method(**params)
    finally:
        _OVERRIDE.reset(token)
    return result


def _before_call(params: dict[str, Any], model: Any, **_: Any) -> None:
    override = _OVERRIDE.get()
    if override is not None and override.body is not None and model.name == override.operation:
        params["body"] = override.body


def _before_parse(
    operation_model: Any, response_dict: dict[str, Any],
    customized_response_dict: dict[str, Any], **_: Any,
) -> None:
    override = _OVERRIDE.get()
    if (
        override is None
        or not override.decode
        or operation_model.name != override.operation
        or response_dict.get("status_code", 500) >= 300
    ):
        return
    body = response_dict.get("body") or b"{}"
    customized_response_dict.update(orjson.loads(body))
    response_dict["body"] = b"{}"
