"""The object store on S3 or any S3-compatible server (SeaweedFS, MinIO), via boto3."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
)

from xmlx.storage.base import (
    DEFAULT_CONTENT_TYPE,
    MAX_DELETE_BATCH,
    StorageError,
    check_key,
    too_large,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling"}
)


class S3ObjectStore:
    """Objects in one bucket. Large uploads go multipart above `multipart_threshold`.

    `public_endpoint_url` (if set) is used only to sign URLs handed to clients, for
    deployments where the service reaches S3 by an internal name.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str,
        access_key: str,
        secret_key: str,
        public_endpoint_url: str | None = None,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        multipart_threshold: int = 16 * MIB,
        multipart_chunksize: int = 16 * MIB,
    ) -> None:
        self.bucket = bucket
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self.client: S3Client = _make_client(endpoint_url, region, config, access_key, secret_key)
        self._signer: S3Client = _make_client(
            public_endpoint_url or endpoint_url, region, config, access_key, secret_key
        )
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize
        )

    def ensure_bucket(self) -> None:
        with _translated(self.bucket):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        if len(data) >= self.transfer_config.multipart_threshold:
            self._upload(key, lambda: io.BytesIO(data), content_type)
            return
        # One PUT: the transfer manager's thread pool and futures cost more CPU than
        # the request itself for the small heatmaps and masks workers write by the
        # thousand (docs/BENCHMARKS.md, service overhead).
        check_key(key)
        with _translated(key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_file(
        self, key: str, path: Path | str, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None:
        with Path(path).open("rb") as handle:
            self._upload(key, lambda: handle, content_type)

    def _upload(self, key: str, open_body: Callable[[], Any], content_type: str) -> None:
        check_key(key)
        with _translated(key):
            self.client.upload_fileobj(
                open_body(),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=self.transfer_config,
            )

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        check_key(key)
        with _translated(key):
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                # the size comes with the GET's headers: no HEAD round trip, and an
                # oversized object is refused before its body is read
                size = int(response.get("ContentLength", 0) or 0)
                if max_bytes is not None and size > max_bytes:
                    raise too_large(key, size, max_bytes)
                data = body.read() if max_bytes is None else body.read(max_bytes + 1)
            finally:
                body.close()
        if max_bytes is not None and len(data) > max_bytes:
            raise too_large(key, len(data), max_bytes)  # no or a wrong Content-Length
        return data

    def iter_lines(self, key: str) -> Iterator[str]:
        check_key(key)
        with _translated(key):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                for line in body.iter_lines():
                    yield line.decode("utf-8").rstrip("\r")
            finally:
                body.close()

    def head(self, key: str) -> int | None:
        check_key(key)
        try:
            with _translated(key):
                return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except StorageError as exc:
            if exc.code == "storage.not_found":
                return None
            raise

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def delete(self, key: str) -> None:
        check_key(key)
        with _translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def list_keys(
        self, prefix: str = "", *, limit: int = 1000, start_after: str | None = None
    ) -> list[str]:
        return [key for key, _ in self.list_sizes(prefix, limit=limit, start_after=start_after)]

    def list_sizes(
        self, prefix: str = "", *, limit: int = 1000, start_after: str | None = None
    ) -> list[tuple[str, int]]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": limit}
        if start_after is not None:
            params["StartAfter"] = start_after
        with _translated(prefix or self.bucket):
            answer = self.client.list_objects_v2(**params)
        return [(entry["Key"], int(entry.get("Size", 0))) for entry in answer.get("Contents", [])]

    def delete_many(self, keys: Sequence[str]) -> None:
        if len(keys) > MAX_DELETE_BATCH:
            raise StorageError("storage.error", f"{len(keys)} keys in one delete_many call")
        if not keys:
            return
        for key in keys:
            check_key(key)
        objects: Any = [{"Key": key} for key in keys]
        with _translated(keys[0]):
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
            )
        errors = answer.get("Errors", [])
        if errors:  # per-key failures come back in a 200 answer: retry the batch later
            first = errors[0]
            raise StorageError(
                "storage.unavailable",
                f"{len(errors)} of {len(keys)} deletes failed, e.g. {first.get('Key')}: "
                f"{first.get('Code')}",
                transient=True,
            )

    def presigned_get_url(self, key: str, expires_seconds: int) -> str:
        check_key(key)
        with _translated(key):
            return self._signer.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=expires_seconds,
            )

    def presigned_put_url(self, key: str, expires_seconds: int, content_type: str) -> str:
        check_key(key)
        with _translated(key):
            return self._signer.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type},
                ExpiresIn=expires_seconds,
            )


def _make_client(
    endpoint_url: str | None, region: str, config: Config, access_key: str, secret_key: str
) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=config,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def _translated(key: str) -> Iterator[None]:
    """Turn boto3/botocore errors into StorageError, marking the retryable ones."""
    try:
        yield
    except ClientError as exc:
        raise _from_client_error(exc, key) from exc
    except (ConnectionError, HTTPClientError, IncompleteReadError) as exc:
        raise StorageError("storage.unavailable", f"{key}: {exc}", transient=True) from exc
    except (S3UploadFailedError, S3TransferFailedError) as exc:
        raise StorageError("storage.unavailable", f"{key}: {exc}", transient=True) from exc
    except BotoCoreError as exc:
        raise StorageError("storage.error", f"{key}: {exc}") from exc


def _from_client_error(exc: ClientError, key: str) -> StorageError:
    code = _error_code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _NOT_FOUND_CODES:
        return StorageError("storage.not_found", f"no object {key}")
    if code == "NoSuchBucket":
        return StorageError("storage.no_bucket", f"the bucket does not exist ({key})")
    if status >= 500 or code in _TRANSIENT_CODES:
        return StorageError("storage.unavailable", f"{key}: {code} ({status})", transient=True)
    if status in (401, 403):
        return StorageError("storage.denied", f"{key}: {code}")
    return StorageError("storage.error", f"{key}: {code} ({status})")
