"""Planning: the rollout's target devices, streamed from the devices read model into one
JSON manifest per wave in S3 (the Distributed Map's `ItemReader` reads them).

Never the whole fleet in memory: two passes over the read model (ProjectionExpression:
tenant, device, zone, firmware; a Query for one tenant, a Scan otherwise):

1. count the devices the rollout targets (`RolloutSpec.targets`), which fixes the wave
   sizes (`wave_sizes`);
2. stream them again and give each device a wave by sequential sampling (`WaveSampler`):
   device i joins wave k with probability (places left in k) / (devices left), so every
   wave gets exactly its size and its devices are a uniform random sample of the target,
   whatever order the read model returns them in (a Scan returns a tenant's devices
   together: the canary would otherwise be one tenant). The draws are seeded by the rollout
   id: planning again gives the same waves.

Each wave's manifest is written as it fills (`ManifestWriter`: S3 multipart upload in 8 MB
parts; a wave under one part is a single PutObject), so memory holds one part per wave.
A device added to the fleet between the passes joins the last wave; one removed leaves its
place empty (the waves are a little smaller).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from services.firmware.domain import RolloutSpec, wave_sizes
from shared.aws import AwsClients, aws_errors, call_decoded

__all__ = [
    "ManifestWriter",
    "PlannedWave",
    "TargetDevice",
    "WaveSampler",
    "manifest_items",
    "manifest_key",
    "plan_rollout",
    "read_model_source",
]

PART_BYTES: Final = 8 * 1024 * 1024  # S3 multipart: every part but the last >= 5 MiB


@dataclass(frozen=True, slots=True)
class TargetDevice:
    device_id: str
    tenant: str
    zone: str
    firmware: str | None


DeviceSource = Callable[[], AsyncIterator[Sequence[TargetDevice]]]
"""Each call streams the fleet from the start, a page at a time."""


@dataclass(frozen=True)
class PlannedWave:
    wave: int
    size: int
    bucket: str
    key: str

    def as_dict(self) -> dict[str, Any]:
        return {"wave": self.wave, "size": self.size, "bucket": self.bucket, "key": self.key}


def manifest_key(rollout_id: str, wave: int) -> str:
    return f"rollouts/{rollout_id}/waves/{wave:04d}.json"


async def manifest_items(aws: AwsClients, bucket: str, key: str,
                         chunk: int = 100) -> AsyncIterator[list[dict[str, Any]]]:
    """The items of a manifest `ManifestWriter` wrote, `chunk` at a time, streamed from S3
    line by line (a wave of half a million devices is never held whole)."""
    s3 = await aws.client("s3")
    with aws_errors():
        response = await s3.get_object(Bucket=bucket, Key=key)
    out: list[dict[str, Any]] = []
    async for line in response["Body"].iter_lines():
        text = bytes(line).strip().rstrip(b",")
        if not text or text in (b"[", b"]"):
            continue
        out.append(orjson.loads(text))
        if len(out) >= chunk:
            yield out
            out = []
    if out:
        yield out


@dataclass
class WaveSampler:
    """Sequential sampling into waves of fixed sizes (see the module docstring). Pure."""

    sizes: Sequence[int]
    seed: str
    _left: list[int] = field(init=False)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._left = list(self.sizes)
        self._rng = random.Random(self.seed)

    @property
    def remaining(self) -> int:
        return sum(self._left)

    def draw(self) -> int:
        """The wave of the next device; past the planned total, the last wave."""
        total = sum(self._left)
        if total <= 0:
            return len(self._left) - 1
        pick = self._rng.randrange(total)
        for wave, left in enumerate(self._left):
            if pick < left:
                self._left[wave] -= 1
                return wave
            pick -= left
        raise AssertionError("unreachable: pick < total")


class ManifestWriter:
    """One JSON array per wave in S3, written as devices arrive (multipart past one part)."""

    def __init__(self, aws: AwsClients, bucket: str, rollout_id: str, waves: int, *,
                 key_of: Callable[[int], str] | None = None) -> None:
        self._aws = aws
        self.bucket = bucket
        self.rollout_id = rollout_id
        self.key_of = key_of or (lambda wave: manifest_key(rollout_id, wave))
        self._buffers = [bytearray(b"[") for _ in range(waves)]
        self._counts = [0] * waves
        self._uploads: dict[int, tuple[str, list[dict[str, Any]]]] = {}
        self.requests = 0

    async def add(self, wave: int, item: Mapping[str, Any]) -> None:
        buffer = self._buffers[wave]
        # One item a line: still the JSON array ItemReader reads, and a reader can stream it
        # line by line (`manifest_items`) without holding the wave in memory.
        buffer += b",\n" if self._counts[wave] else b"\n"
        buffer += orjson.dumps(item)
        self._counts[wave] += 1
        if len(buffer) >= PART_BYTES:
            await self._upload_part(wave)

    async def _upload_part(self, wave: int) -> None:
        s3 = await self._aws.client("s3")
        key = self.key_of(wave)
        if wave not in self._uploads:
            with aws_errors():
                created = await s3.create_multipart_upload(
                    Bucket=self.bucket, Key=key, ContentType="application/json")
            self.requests += 1
            self._uploads[wave] = (str(created["UploadId"]), [])
        upload_id, parts = self._uploads[wave]
        body = bytes(self._buffers[wave])
        self._buffers[wave] = bytearray()
        with aws_errors():
            answer = await s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                          PartNumber=len(parts) + 1, Body=body)
        self.requests += 1
        parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})

    async def close(self) -> list[PlannedWave]:
        """Finish every manifest (an empty wave is an empty array); the waves written."""
        s3 = await self._aws.client("s3")
        planned: list[PlannedWave] = []
        for wave, buffer in enumerate(self._buffers):
            buffer += b"\n]"
            key = self.key_of(wave)
            if wave in self._uploads:
                upload_id, parts = self._uploads[wave]
                await self._upload_part(wave)
                with aws_errors():
                    await s3.complete_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id,
                        MultipartUpload={"Parts": parts})
            else:
                with aws_errors():
                    await s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer),
                                        ContentType="application/json")
            self.requests += 1
            planned.append(PlannedWave(wave=wave, size=self._counts[wave], bucket=self.bucket,
                                       key=key))
        return planned


async def plan_rollout(spec: RolloutSpec, rollout_id: str, source: DeviceSource,
                       writer_for: Callable[[int], ManifestWriter]) -> list[PlannedWave]:
    """Count the target, size the waves, stream the devices into their manifests. Returns
    the waves with their real sizes; no waves when nothing is targeted."""
    total = 0
    async for page in source():
        total += sum(1 for d in page if spec.targets(tenant=d.tenant, zone=d.zone,
                                                     firmware=d.firmware))
    if total == 0:
        return []
    sizes = list(wave_sizes(spec, total))
    sampler = WaveSampler(sizes, seed=rollout_id)
    writer = writer_for(len(sizes))
    async for page in source():
        for device in page:
            if not spec.targets(tenant=device.tenant, zone=device.zone,
                                firmware=device.firmware):
                continue
            item: dict[str, Any] = {"device_id": device.device_id, "tenant": device.tenant}
            if device.firmware is not None:
                item["from_version"] = device.firmware
            await writer.add(sampler.draw(), item)
    return await writer.close()


def read_model_source(aws: AwsClients, table: str, spec: RolloutSpec, *,
                      page_size: int = 1_000) -> DeviceSource:
    """The devices read model as a `DeviceSource`: a Query of one tenant, or a Scan, with
    only the four attributes planning needs and the zone (and from-version) filtered by
    DynamoDB."""

    async def pages() -> AsyncIterator[Sequence[TargetDevice]]:
        dynamodb = await aws.client("dynamodb")
        names = {"#t": "tenant_id", "#d": "device_id", "#z": "zone", "#f": "firmware"}
        values: dict[str, Any] = {":z": {"S": spec.zone}}
        filters = ["#z = :z"]
        if spec.from_version is not None:
            filters.append("#f = :f")
            values[":f"] = {"S": spec.from_version}
        params: dict[str, Any] = {
            "TableName": table, "Limit": page_size,
            "ProjectionExpression": "#t, #d, #z, #f",
            "ExpressionAttributeNames": names,
        }
        if spec.tenant is not None:
            params["KeyConditionExpression"] = "#t = :t"
            values[":t"] = {"S": spec.tenant}
        params["FilterExpression"] = " AND ".join(filters)
        params["ExpressionAttributeValues"] = values
        operation = "Query" if spec.tenant is not None else "Scan"
        while True:
            # orjson, not botocore's shape walk: planning reads the whole target twice
            page = await call_decoded(dynamodb, operation, **params)
            devices = []
            for item in page.get("Items", []):
                firmware = item.get("firmware", {}).get("S")
                devices.append(TargetDevice(
                    device_id=str(item["device_id"]["S"]), tenant=str(item["tenant_id"]["S"]),
                    zone=str(item.get("zone", {}).get("S", "")), firmware=firmware))
            if devices:
                yield devices
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    return pages
