"""Reading and writing artifacts at local paths and `s3://` URIs.

S3 goes through boto3 with its own configuration from the environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION): the operator hands those to each Job from a
Secret, never through the request. Local writes go to a temporary name and are renamed into place,
so a reader never sees half a file.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlparse


class ArtifactError(RuntimeError):
    """An input artifact is missing or malformed; the message names the URI and what is wrong."""


class StorageUnavailable(RuntimeError):
    """S3 failed on its side (5xx) after every retry: no fault of the input, so the stage exits
    as failed (its Job retries it), not as bad input (which fails the run at once)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or local path."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ArtifactError(f"{uri}: an S3 URI needs a bucket, as in s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


@cache
def _s3_client():
    import boto3  # noqa: PLC0415 - keeps `import cream_stages` light
    from botocore.config import Config  # noqa: PLC0415

    # Self-hosted S3 (MinIO, Ceph, versitygw) behind AWS_ENDPOINT_URL wants path-style URLs.
    default = "path" if os.environ.get("AWS_ENDPOINT_URL") else "auto"
    style = os.environ.get("CREAM_S3_ADDRESSING_STYLE", default)
    return boto3.client("s3", config=Config(s3={"addressing_style": style},
                                            retries={"max_attempts": S3_ATTEMPTS,
                                                     "mode": "standard"}))


# Attempts of each S3 call. boto3's standard mode retries connection errors and 5xx with a
# backoff doubling from up to 1 s, capped at 20 s: 10 attempts ride out about a minute of S3
# being away (a restart, a failover) before the stage's attempt fails; its Job then tries again.
S3_ATTEMPTS = 10


def _s3_error(uri: str, exc: Exception) -> ArtifactError | StorageUnavailable:
    response = getattr(exc, "response", {})
    if response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
        return StorageUnavailable(f"{uri}: S3 unavailable: {exc}")
    code = response.get("Error", {}).get("Code", "")
    if code in ("NoSuchKey", "404", "NotFound"):
        return ArtifactError(f"{uri}: no such object in S3")
    if code == "NoSuchBucket":
        return ArtifactError(f"{uri}: the bucket does not exist")
    return ArtifactError(f"{uri}: S3 request failed: {exc}")


def exists(uri: str) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError  # noqa: PLC0415

        bucket, key = _split_s3(uri)
        try:
            _s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _s3_error(uri, exc) from exc
    return Path(uri).exists()


def data_uri(data: bytes, media_type: str = "application/json") -> str:
    """An RFC 2397 `data:` URI holding `data`: how the operator hands a Job its request inline."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def _read_data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ArtifactError("a data: URI needs a ',' before its payload")
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return unquote_to_bytes(payload)
    except ValueError as exc:
        raise ArtifactError(f"the data: URI's payload is not valid base64: {exc}") from exc


def read_bytes(uri: str) -> bytes:
    if uri.startswith("data:"):
        return _read_data_uri(uri)
    if is_s3(uri):
        from botocore.exceptions import ClientError  # noqa: PLC0415

        bucket, key = _split_s3(uri)
        try:
            return _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            raise _s3_error(uri, exc) from exc
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(f"{uri}: no such file") from exc
    except IsADirectoryError as exc:
        raise ArtifactError(f"{uri}: is a directory, expected a file") from exc


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(uri: str) -> str:
    try:
        return read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{uri}: not UTF-8 text ({exc})") from exc


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str):
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{uri}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def write_json(uri: str, obj) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_records(uri: str) -> list[dict]:
    """Records of a JSONL file, or of a JSON file holding a list (or a dict keyed by id).

    A dict keyed by id (the reference project's prompt sets) becomes records with an `id` field.
    """
    text = read_text(uri)
    stripped = text.lstrip()
    if not stripped:
        raise ArtifactError(f"{uri}: the file is empty")
    if _is_json_document(uri, stripped):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{uri}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        if isinstance(data, dict):
            data = [
                {"id": str(key), **value} if isinstance(value, dict) else {"id": str(key),
                                                                           "value": value}
                for key, value in data.items()
            ]
        if not isinstance(data, list):
            raise ArtifactError(f"{uri}: expected a list of records or a JSONL file")
        records = data
    else:
        records = list(_parse_jsonl(uri, text))
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ArtifactError(f"{uri}: record {i + 1} is not a JSON object")
    return records


def _is_json_document(uri: str, text: str) -> bool:
    """The extension decides; without one, a file whose first line is a whole object is JSONL."""
    if uri.endswith(".jsonl"):
        return False
    if uri.endswith(".json") or text[0] == "[":
        return True
    try:
        json.loads(text.split("\n", 1)[0])
    except json.JSONDecodeError:
        return True
    return False


def _parse_jsonl(uri: str, text: str) -> Iterator[dict]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{uri}: line {lineno} is not valid JSON: {exc.msg}") from exc


def write_jsonl(uri: str, records: Iterable[dict]) -> None:
    write_text(uri, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def download_dir(uri: str, dest: Path) -> Path:
    """Copy every object under an S3 prefix (or a local directory) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        shutil.copytree(uri, dest, dirs_exist_ok=True)
        return dest
    bucket, prefix = _split_s3(uri)
    prefix = prefix.rstrip("/") + "/"
    client = _s3_client()
    found = False
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found = True
            target = dest / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
    if not found:
        raise ArtifactError(f"{uri}: no objects under this S3 prefix")
    return dest


def upload_dir(src: Path, uri: str) -> None:
    """Copy a local directory to an S3 prefix or another local directory."""
    if not is_s3(uri):
        shutil.copytree(src, uri, dirs_exist_ok=True)
        return
    bucket, prefix = _split_s3(uri)
    client = _s3_client()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(src)}")


def delete_prefix(uri: str) -> int:
    """Delete everything under a prefix; returns how many objects or files went."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.exists():
            return 0
        count = sum(1 for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
        return count
    bucket, prefix = _split_s3(uri)
    client = _s3_client()
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
    ):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            count += len(keys)
    return count
