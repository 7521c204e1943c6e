"""Finding the envelope in whatever a transport delivers, and validating it.

Pure functions, no I/O. Accepted shapes (nested in any order, at most a few levels deep):

- a raw envelope (`{"id": ..., "type": ..., ...}`);
- an EventBridge event (`detail-type` + `detail`, where `detail` is the envelope), as SQS
  targets and Lambda receive it;
- an SNS notification (`"Type": "Notification"`, `Message` = JSON text), as a non-raw SQS
  subscription receives it, and a Lambda SNS record (`Sns`);
- a Lambda SQS record (`eventSource` `aws:sqs`, `body`);
- a Lambda Kinesis record (`kinesis.data`, base64); a Kinesis consumer hands over the record's
  decoded `Data`, which is the envelope itself;
- a DynamoDB Streams record (`dynamodb.NewImage`, typed attribute values) whose image either is
  an envelope or holds one in an attribute named `envelope` (JSON text or map).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from shared.dynamodb import from_item
from shared.events._envelope import Envelope
from shared.events._errors import InvalidEventDataError, MalformedMessageError

__all__ = [
    "deserialize_dynamodb_image",
    "find_envelope",
    "parse_envelope",
    "parse_json",
    "validation_error_field",
]

_MAX_NESTING: Final = 5


def parse_json(body: str | bytes | bytearray) -> Any:
    """Parse JSON text.

    Raises:
        MalformedMessageError: not UTF-8 or not JSON (field `body`).
    """
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessageError(f"not valid JSON ({exc})", field="body") from None


def deserialize_dynamodb_image(image: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB Streams image (typed attribute values, as the record's JSON has them) as
    Python values, with the project's one codec (`shared.dynamodb.from_item`): whole numbers
    become int, others float; binary values bytes; sets frozensets.

    Raises:
        MalformedMessageError: an attribute value is not in DynamoDB's typed form.
    """
    try:
        return from_item(image)
    except (ValueError, AttributeError, TypeError) as exc:
        raise MalformedMessageError(str(exc), field="dynamodb.NewImage") from None


def _looks_like_envelope(obj: Mapping[str, Any]) -> bool:
    return "type" in obj and "id" in obj and ("data" in obj or "data_ref" in obj)


def find_envelope(body: str | bytes | bytearray | Mapping[str, Any]) -> dict[str, Any]:
    """The envelope object inside `body` (see the module docstring for the shapes).

    Raises:
        MalformedMessageError: not JSON, or no envelope found; `field` says where.
    """
    current: Any = body
    for _ in range(_MAX_NESTING):
        if isinstance(current, (str, bytes, bytearray)):
            current = parse_json(current)
        if not isinstance(current, Mapping):
            raise MalformedMessageError(
                f"expected a JSON object, got {type(current).__name__}", field="body"
            )
        if "detail-type" in current and "detail" in current:
            current = current["detail"]
        elif current.get("Type") == "Notification" and "Message" in current:
            current = current["Message"]
        elif isinstance(current.get("Sns"), Mapping):
            current = current["Sns"]
        elif current.get("eventSource") == "aws:sqs" and "body" in current:
            current = current["body"]
        elif isinstance(current.get("kinesis"), Mapping) and "data" in current["kinesis"]:
            try:
                current = base64.b64decode(current["kinesis"]["data"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise MalformedMessageError("not base64", field="kinesis.data") from None
        elif isinstance(current.get("dynamodb"), Mapping):
            image = current["dynamodb"].get("NewImage")
            if not isinstance(image, Mapping):
                raise MalformedMessageError(
                    "record has no NewImage (the stream must use NEW_IMAGE or "
                    "NEW_AND_OLD_IMAGES)",
                    field="dynamodb.NewImage",
                )
            plain = deserialize_dynamodb_image(image)
            current = plain.get("envelope", plain)
        elif _looks_like_envelope(current):
            return dict(current)
        else:
            missing = [k for k in ("id", "type") if k not in current]
            raise MalformedMessageError(
                "no event envelope found: expected an envelope, an EventBridge event, an SNS "
                "notification, or a Kinesis / DynamoDB Streams record"
                + (f" (missing {', '.join(missing)})" if missing else " (no data or data_ref)"),
                field=missing[0] if missing else "data",
            )
    raise MalformedMessageError(
        f"envelope nested more than {_MAX_NESTING} levels deep", field="body"
    )


def validation_error_field(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """(dotted field path, message) of the first error in `exc`."""
    first = exc.errors(include_url=False)[0]
    path = ".".join(str(part) for part in first["loc"])
    field = f"{prefix}.{path}" if prefix and path else (prefix or path or "body")
    return field, str(first["msg"])


def parse_envelope(body: str | bytes | bytearray | Mapping[str, Any]) -> Envelope:
    """The validated envelope inside `body`.

    Raises:
        MalformedMessageError: not JSON or no envelope.
        InvalidEventDataError: an envelope field is invalid (`field` names it).
    """
    raw = find_envelope(body)
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        field, message = validation_error_field(exc)
        raise InvalidEventDataError(message, field=field) from None
