"""A map run's result: the Map state's output, and what `ResultWriter` puts in S3 (pure).

Step Functions Developer Guide, "ResultWriter (Map)":

- without a ResultWriter the Map state's output is the array of the children's outputs, in
  item (batch) order (COMPACT); a child that did not succeed appears as its whole record
  ("If a child workflow execution fails, Step Functions returns its execution result
  unchanged", as with NONE);
- with `Resource` `arn:aws:states:::s3:putObject` and `Parameters` `Bucket` / `Prefix`, the
  records are written under `<Prefix>/<map run id>/`: `SUCCEEDED_0.json`, `FAILED_0.json`
  (failed, timed out and aborted children) and `PENDING_0.json` (children never started
  because the run failed), only the non-empty ones, then `manifest.json`:
  `{"DestinationBucket", "MapRunArn", "ResultFiles": {"FAILED": [{"Key", "Size"}...],
  "PENDING": [...], "SUCCEEDED": [...]}}`; the Map state's output is then
  `{"MapRunArn": ..., "ResultWriterDetails": {"Bucket": ..., "Key": <manifest key>}}`;
- `WriterConfig.Transformation`: NONE (whole records; the default when exporting), COMPACT
  (outputs only), FLATTEN (outputs, arrays spread); `WriterConfig.OutputType` JSON (an array)
  or JSONL (one record a line). A ResultWriter with only a WriterConfig shapes the state's
  output and writes nothing.

A record is what DescribeExecution says of a child: ExecutionArn, Name, StateMachineArn,
Status, StartDate, StopDate, Input and Output (JSON strings), Error and Cause. AWS splits a
status over several files of up to 5 GB; locally each status has one file (`_0`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shared.local._distributed_map._progress import ChildStatus

__all__ = [
    "ResultFile",
    "ResultWrite",
    "child_record",
    "map_output",
    "pending_record",
    "result_write",
    "writer_output",
]

_STATUS_FILES: Final = (ChildStatus.SUCCEEDED, ChildStatus.FAILED, ChildStatus.PENDING)


def _iso(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value


def child_record(described: Mapping[str, Any]) -> dict[str, Any]:
    """The record of one child execution, from its DescribeExecution answer."""
    record: dict[str, Any] = {
        "ExecutionArn": described["executionArn"],
        "Input": described.get("input", "{}"),
        "InputDetails": {"Included": True},
        "Name": described.get("name", described["executionArn"].rsplit(":", 1)[-1]),
    }
    if described.get("status") == ChildStatus.SUCCEEDED:
        record["Output"] = described.get("output", "null")
        record["OutputDetails"] = {"Included": True}
    else:
        record["Error"] = described.get("error", "")
        record["Cause"] = described.get("cause", "")
    record.update(
        {
            "RedriveCount": 0,
            "RedriveStatus": "NOT_REDRIVABLE",
            "StartDate": _iso(described.get("startDate")),
            "StateMachineArn": described.get("stateMachineArn", ""),
            "Status": described.get("status", ""),
        }
    )
    if described.get("stopDate") is not None:
        record["StopDate"] = _iso(described["stopDate"])
    return record


def pending_record(child_input: Any) -> dict[str, Any]:
    """The record of a child that was never started (the run failed first)."""
    return {
        "Input": json.dumps(child_input, separators=(",", ":")),
        "InputDetails": {"Included": True},
        "Status": ChildStatus.PENDING.value,
    }


def _transformed(records: Sequence[Mapping[str, Any]], transformation: str) -> list[Any]:
    if transformation == "NONE":
        return [dict(r) for r in records]
    out: list[Any] = []
    for record in records:
        if record.get("Status") != ChildStatus.SUCCEEDED:
            out.append(dict(record))  # unchanged, as AWS returns a failed child
            continue
        output = json.loads(record.get("Output", "null"))
        if transformation == "FLATTEN" and isinstance(output, list):
            out.extend(output)
        else:
            out.append(output)
    return out


def map_output(records: Sequence[Mapping[str, Any]], writer: Mapping[str, Any] | None) -> list[Any]:
    """The Map state's output when nothing is written to S3: the records (in child order)
    shaped by `WriterConfig.Transformation` (COMPACT when there is no ResultWriter)."""
    config = (writer or {}).get("WriterConfig", {})
    return _transformed(records, str(config.get("Transformation", "COMPACT")))


@dataclass(frozen=True, kw_only=True)
class ResultFile:
    key: str
    body: bytes


@dataclass(frozen=True, kw_only=True)
class ResultWrite:
    """The objects a ResultWriter puts, the manifest last."""

    bucket: str
    files: tuple[ResultFile, ...]
    manifest: ResultFile


def result_write(
    records: Sequence[Mapping[str, Any]],
    *,
    parameters: Mapping[str, Any],
    writer_config: Mapping[str, Any] | None,
    map_run_id: str,
    map_run_arn: str,
) -> ResultWrite:
    """The result files and manifest for `records` (every child's, PENDING ones included),
    `parameters` being the ResultWriter's evaluated Bucket and Prefix."""
    bucket = str(parameters["Bucket"])
    prefix = str(parameters.get("Prefix", "")).rstrip("/")
    base = f"{prefix}/{map_run_id}" if prefix else map_run_id
    config = writer_config or {}
    transformation = str(config.get("Transformation", "NONE"))
    lines = str(config.get("OutputType", "JSON")) == "JSONL"
    files: list[ResultFile] = []
    listed: dict[str, list[dict[str, Any]]] = {status: [] for status in _STATUS_FILES}
    for status in _STATUS_FILES:
        group = [r for r in records if _file_status(r) == status]
        if not group:
            continue
        shaped = _transformed(group, transformation) if status is ChildStatus.SUCCEEDED else group
        if lines:
            body = "".join(json.dumps(v, separators=(",", ":")) + "\n" for v in shaped).encode()
        else:
            body = json.dumps(shaped, separators=(",", ":")).encode()
        key = f"{base}/{status}_0.json"
        files.append(ResultFile(key=key, body=body))
        listed[status].append({"Key": key, "Size": len(body)})
    manifest = {
        "DestinationBucket": bucket,
        "MapRunArn": map_run_arn,
        "ResultFiles": {status: listed[status] for status in sorted(listed)},
    }
    return ResultWrite(
        bucket=bucket,
        files=tuple(files),
        manifest=ResultFile(key=f"{base}/manifest.json",
                            body=json.dumps(manifest, separators=(",", ":")).encode()),
    )


def _file_status(record: Mapping[str, Any]) -> ChildStatus:
    status = str(record.get("Status"))
    if status in {ChildStatus.SUCCEEDED, ChildStatus.PENDING}:
        return ChildStatus(status)
    return ChildStatus.FAILED


def writer_output(write: ResultWrite, map_run_arn: str) -> dict[str, Any]:
    """The Map state's output when its results went to S3."""
    return {
        "MapRunArn": map_run_arn,
        "ResultWriterDetails": {"Bucket": write.bucket, "Key": write.manifest.key},
    }
