"""The claim check: payloads too large for EventBridge go to S3; the envelope carries a
reference (`data_ref`: s3 uri, sha256, size) instead of `data`, and decoding fetches it back.

Decisions (pure): `needs_claim_check` (would the PutEvents entry exceed the limit?),
`claim_check_key` (where the payload goes). AWS calls (thin): `ClaimCheck.offload` /
`ClaimCheck.fetch` through `shared.aws.AwsClients`.

The object key is derived from the event id, so a relay that retries or restarts overwrites
the same object with the same bytes: no orphans from retries, and the sha256 still matches.
Objects are never deleted by the code (a consumer replaying the archive needs them); the
bucket's lifecycle rule expires them after the archive's retention. The bucket name comes from
the stack output `ClaimCheckBucket` (env `FLEETLINE_CLAIM_CHECK_BUCKET`), read at the edge and
passed in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from shared.aws import AwsClients, aws_errors, error_code
from shared.events._envelope import DataRef, Envelope
from shared.events._errors import ClaimCheckIntegrityError
from shared.events._eventbridge import (
    MAX_PUT_EVENTS_ENTRY_BYTES,
    put_events_entry_size,
    to_put_events_entry,
)

__all__ = ["CLAIM_CHECK_BUCKET_OUTPUT", "ClaimCheck", "claim_check_key", "needs_claim_check"]

CLAIM_CHECK_BUCKET_OUTPUT: Final = "ClaimCheckBucket"
"""Stack output key of the bucket (env `FLEETLINE_CLAIM_CHECK_BUCKET`)."""

_MISSING_CODES: Final = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})


def needs_claim_check(envelope: Envelope, *, limit: int = MAX_PUT_EVENTS_ENTRY_BYTES) -> bool:
    """True when `envelope` carries inline `data` and its PutEvents entry would exceed
    `limit` bytes (EventBridge's 256 KB). The bus name is not counted by EventBridge."""
    if envelope.data is None:
        return False
    entry = to_put_events_entry(envelope, "-", limit=2**63)
    return put_events_entry_size(entry) > limit


def claim_check_key(envelope: Envelope, *, prefix: str = "claim-check/") -> str:
    """`claim-check/<source>/<type>/v<version>/<id>.json`: one object per event id."""
    return f"{prefix}{envelope.source}/{envelope.type}/v{envelope.version}/{envelope.id}.json"


def _payload_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class ClaimCheck:
    """Stores and fetches claim-checked payloads in one S3 bucket.

        claim_check = ClaimCheck(aws, bucket=resources.get("ClaimCheckBucket"))
        entry = await claim_check.put_events_entry(envelope, bus_name)    # producer / relay
        event = await registry.decode_async(body, claim_check=claim_check)  # consumer

    `aws` must stay entered while the instance is used.
    """

    def __init__(
        self,
        aws: AwsClients,
        *,
        bucket: str,
        prefix: str = "claim-check/",
        limit: int = MAX_PUT_EVENTS_ENTRY_BYTES,
    ) -> None:
        """Raises ValueError when `bucket` is empty or `limit` is not positive."""
        if not bucket:
            raise ValueError("bucket must not be empty (stack output ClaimCheckBucket)")
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        self._aws = aws
        self.bucket = bucket
        self.prefix = prefix
        self.limit = limit

    def __repr__(self) -> str:
        return f"ClaimCheck(bucket={self.bucket!r}, prefix={self.prefix!r}, limit={self.limit})"

    async def offload(self, envelope: Envelope) -> Envelope:
        """`envelope` unchanged when its entry fits; otherwise store `data` in S3 and return
        a copy with `data_ref` set and `data` removed.

        Raises:
            shared.errors.AwsUnavailableError: S3 is unavailable (retryable).
            shared.errors.AwsRequestError: S3 refused (e.g. no such bucket).
        """
        if not needs_claim_check(envelope, limit=self.limit):
            return envelope
        return await self.store(envelope)

    async def store(self, envelope: Envelope) -> Envelope:
        """Store `data` in S3 unconditionally and return the envelope with `data_ref` instead.

        Raises:
            ValueError: the envelope has no inline `data`.
            shared.errors.AwsUnavailableError / AwsRequestError: as `offload`.
        """
        if envelope.data is None:
            raise ValueError("envelope.data is None: nothing to store")
        body = _payload_bytes(envelope.data)
        key = claim_check_key(envelope, prefix=self.prefix)
        s3 = await self._aws.client("s3")
        with aws_errors():
            await s3.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
            )
        ref = DataRef(
            uri=f"s3://{self.bucket}/{key}",
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
        )
        return envelope.model_copy(update={"data": None, "data_ref": ref})

    async def put_events_entry(self, envelope: Envelope, bus_name: str) -> dict[str, Any]:
        """`to_put_events_entry` after `offload`: the entry always fits.

        Raises:
            shared.events.EventTooLargeError: even the claim-checked envelope is too large
                (its metadata alone exceeds the limit).
            shared.errors.AwsUnavailableError / AwsRequestError: as `offload`.
        """
        return to_put_events_entry(await self.offload(envelope), bus_name, limit=self.limit)

    async def fetch(self, ref: DataRef) -> dict[str, Any]:
        """The payload `ref` points to, checked against its size and sha256.

        Raises:
            ClaimCheckIntegrityError: the object is missing, or its size, sha256 or JSON
                shape differ from `ref` (permanent: dead-letter).
            shared.errors.AwsUnavailableError: S3 is unavailable (retryable).
        """
        s3 = await self._aws.client("s3")
        try:
            with aws_errors():
                response = await s3.get_object(Bucket=ref.bucket, Key=ref.key)
                async with response["Body"] as stream:
                    body: bytes = await stream.read()
        except Exception as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            if error_code(cause) in _MISSING_CODES:
                raise ClaimCheckIntegrityError(
                    f"claim-checked payload {ref.uri} does not exist", field="data_ref.uri"
                ) from exc
            raise
        if len(body) != ref.size:
            raise ClaimCheckIntegrityError(
                f"{ref.uri} is {len(body)} bytes, data_ref says {ref.size}", field="data_ref.size"
            )
        if hashlib.sha256(body).hexdigest() != ref.sha256:
            raise ClaimCheckIntegrityError(
                f"{ref.uri} does not match its sha256", field="data_ref.sha256"
            )
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ClaimCheckIntegrityError(
                f"{ref.uri} does not hold a JSON object", field="data_ref.uri"
            )
        return data

    async def resolve(self, envelope: Envelope) -> Envelope:
        """`envelope` with `data` filled from `data_ref` (unchanged when `data` is inline).

        Raises: as `fetch`.
        """
        if envelope.data is not None or envelope.data_ref is None:
            return envelope
        return envelope.model_copy(update={"data": await self.fetch(envelope.data_ref)})
