"""Gap: Firehose delivery to S3 with record deaggregation, dynamic partitioning and format
conversion to Parquet.

moto's direct-put stream writes each PutRecord(Batch) as one object of the records' bytes
joined, under `<Prefix>YYYY/MM/DD/HH/`, whatever the destination says: no
`RecordDeAggregation`, no `!{partitionKeyFromQuery:...}` in the prefix, no
`DataFormatConversionConfiguration`. Here a destination that asks for them gets them, as
Firehose delivers them: each record split into its JSON documents (concatenated or one a
line), each document's partition keys read with the `MetadataExtraction` query (the JQ
subset `{name: .field, ...}`), documents grouped by the prefix they evaluate to, and each
group written at once (no buffering) as one Parquet object (SNAPPY) whose columns are the
Glue table's of `SchemaConfiguration`, in order, typed as Glue says; a document field that is
not a column is left out, as the OpenX deserializer does. The object is named
`<stream>-<version>-<YYYY-MM-DD-HH-MM-SS>-<uuid>.parquet`. Destinations that ask for none of
this, and every other destination, go through moto's code unchanged.

A document that is not JSON, or misses a partition key, is written under the
`ErrorOutputPrefix` (its `!{firehose:error-output-type}` being `processing-failed`) as JSON
lines, as Firehose does with records it cannot process.
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from collections import defaultdict
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]

_KEY = re.compile(r"!\{partitionKeyFromQuery:([A-Za-z0-9_]+)\}")
_TIMESTAMP = re.compile(r"!\{timestamp:([^}]+)\}")
_JQ_FIELD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*")


def _extraction_query(destination: dict[str, Any]) -> dict[str, str] | None:
    """Partition key -> document field, from the MetadataExtraction processor's JQ query
    (`{zone: .zone, date: .date}`); None when the destination has none.

    Raises:
        ValueError: the query is not of that form.
    """
    processing = destination.get("ProcessingConfiguration") or {}
    for processor in processing.get("Processors") or []:
        if processor.get("Type") != "MetadataExtraction":
            continue
        for parameter in processor.get("Parameters") or []:
            if parameter.get("ParameterName") == "MetadataExtractionQuery":
                query = str(parameter.get("ParameterValue", "")).strip()
                if not (query.startswith("{") and query.endswith("}")):
                    raise ValueError(f"unsupported MetadataExtractionQuery {query!r}")
                fields = {}
                for part in query[1:-1].split(","):
                    match = _JQ_FIELD.fullmatch(part)
                    if match is None:
                        raise ValueError(f"unsupported MetadataExtractionQuery {query!r}")
                    fields[match.group(1)] = match.group(2)
                return fields
    return None


def _documents(data: bytes) -> list[Any]:
    """The JSON documents of one record, concatenated or one a line.

    Raises:
        ValueError: the data is not a sequence of JSON documents.
    """
    text = data.decode()
    decoder = json.JSONDecoder()
    out: list[Any] = []
    index, end = 0, len(text)
    while True:
        while index < end and text[index] in " \t\r\n":
            index += 1
        if index >= end:
            return out
        value, index = decoder.raw_decode(text, index)
        out.append(value)


def _prefix(template: str, keys: dict[str, str], document: Any, now: float) -> str:
    def key(match: re.Match[str]) -> str:
        field = keys.get(match.group(1))
        value = document.get(field) if isinstance(document, dict) and field else None
        if value is None:
            raise KeyError(match.group(1))
        return str(value)

    def stamp(match: re.Match[str]) -> str:
        java = match.group(1)
        py = (java.replace("yyyy", "%Y").replace("MM", "%m").replace("dd", "%d")
              .replace("HH", "%H").replace("mm", "%M").replace("ss", "%S"))
        return time.strftime(py, time.gmtime(now))

    return _TIMESTAMP.sub(stamp, _KEY.sub(key, template))


def _parquet_object(columns: list[dict[str, Any]], rows: list[Any]) -> bytes:
    """`rows` (JSON objects) as a Parquet file with `columns` (Glue `Name`, `Type`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "bigint": pa.int64(), "int": pa.int32(),
             "double": pa.float64(), "float": pa.float32(), "boolean": pa.bool_()}
    fields = [pa.field(c["Name"], types.get(str(c["Type"]).lower(), pa.string()))
              for c in columns]
    arrays = [pa.array([row.get(f.name) if isinstance(row, dict) else None for row in rows],
                       type=f.type) for f in fields]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), sink,
                   compression="snappy")
    return sink.getvalue()


def apply() -> None:
    from moto.firehose.models import FirehoseBackend
    from moto.glue.models import glue_backends
    from moto.s3.models import s3_backends

    original = unpatched(FirehoseBackend, "put_s3_records")
    if original is None:
        return

    def put_s3_records(self: Any, delivery_stream_name: str, version_id: str,
                       s3_destination: dict[str, Any], records: list[dict[str, bytes]]
                       ) -> list[dict[str, str]]:
        conversion = s3_destination.get("DataFormatConversionConfiguration") or {}
        partitioning = s3_destination.get("DynamicPartitioningConfiguration") or {}
        converting = conversion.get("Enabled") in (True, "true", "True")
        partitioned = partitioning.get("Enabled") in (True, "true", "True")
        if not converting and not partitioned:
            answer: list[dict[str, str]] = original(
                self, delivery_stream_name, version_id, s3_destination, records)
            return answer
        keys = _extraction_query(s3_destination) or {}
        columns: list[dict[str, Any]] | None = None
        if converting:
            schema = conversion.get("SchemaConfiguration") or {}
            glue = glue_backends[self.account_id][schema.get("Region") or self.region_name]
            table = glue.get_table(schema["DatabaseName"], schema["TableName"])
            columns = list(table.as_dict()["StorageDescriptor"]["Columns"])
        now = time.time()
        template = str(s3_destination.get("Prefix", ""))
        groups: dict[str, list[Any]] = defaultdict(list)
        failed: list[bytes] = []
        for record in records:
            data = record["Data"]
            raw = data if isinstance(data, bytes) else str(data).encode()
            try:
                docs = _documents(raw)
            except ValueError:
                failed.append(raw)
                continue
            for document in docs:
                try:
                    groups[_prefix(template, keys, document, now)].append(document)
                except KeyError:
                    failed.append(json.dumps(document).encode())
        bucket = s3_destination["BucketARN"].split(":")[-1]
        s3 = s3_backends[self.account_id][self.partition]
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(now))
        name = f"{delivery_stream_name}-{version_id}-{stamp}-"
        for prefix, docs in groups.items():
            if columns is not None:
                s3.put_object(bucket, f"{prefix}{name}{uuid.uuid4()}.parquet",
                              _parquet_object(columns, docs))
            else:
                s3.put_object(bucket, f"{prefix}{name}{uuid.uuid4()}",
                              b"".join(json.dumps(d).encode() + b"\n" for d in docs))
        if failed:
            errors = _prefix(str(s3_destination.get("ErrorOutputPrefix", "errors/")).replace(
                "!{firehose:error-output-type}", "processing-failed"), {}, {}, now)
            s3.put_object(bucket, f"{errors}{name}{uuid.uuid4()}",
                          b"\n".join(failed) + b"\n")
        return [{"RecordId": str(uuid.uuid4())} for _ in records]

    replace(FirehoseBackend, "put_s3_records", put_s3_records)


FIX = Fix(
    name="firehose-lake",
    kind=FixKind.GAP,
    summary="Firehose to S3 deaggregates, partitions by JQ keys and converts to Parquet",
    checks=(
        "moto.firehose.models:FirehoseBackend.put_s3_records",
        "moto.firehose.models:FirehoseBackend.put_record_batch",
        "moto.glue.models:GlueBackend.get_table",
        "moto.glue.models:FakeTable.as_dict",
        "moto.s3.models:S3Backend.put_object",
    ),
    verified={"5.2.6": "71dde29edbb71329"},
    apply=apply,
)
