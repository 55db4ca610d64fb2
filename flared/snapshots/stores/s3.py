"""S3-protocol store: Cloudflare R2 or any S3-compatible service, through boto3.

Blobs move through boto3's transfer manager (multipart upload, parallel
ranged download), tuned by `store.*`. Every upload asks the service for a
SHA-256 checksum so the service itself rejects corrupted parts and reports
the checksum back for verification. The `latest` pointer uses S3 conditional
writes (`If-Match` / `If-None-Match`), which R2 and S3 both enforce.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.utils import ChunksizeAdjuster  # type: ignore[import-untyped]

from flared.config.models import StoreConfig
from flared.snapshots.stores import (
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    Progress,
    StoreError,
    StoreUnreachable,
)

_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.ProxyConnectionError,
)


def _boto_cause(exc: BaseException) -> Exception | None:
    """The botocore error behind a boto3/s3transfer wrapper (S3UploadFailedError, RetriesExceededError)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, botocore.exceptions.ClientError | botocore.exceptions.BotoCoreError):
            found: Exception = seen
            return found
        last = getattr(seen, "last_exception", None)
        seen = last if isinstance(last, BaseException) else (seen.__cause__ or seen.__context__)
    return None


def _classify(exc: Exception, what: str) -> StoreError:
    """Turn any error of a store request into one of our kinds, with a message free of secrets.

    An OSError that is not about the network (writing the download, reading the blob to
    upload) is this machine's and is raised as it is: the caller must not take it for the
    store's (a full disk is no reason to fall back to an older snapshot).
    """
    if isinstance(exc, StoreError):
        return exc
    local = isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError)
    if local and _boto_cause(exc) is None:
        raise exc
    if not isinstance(exc, botocore.exceptions.ClientError | botocore.exceptions.BotoCoreError):
        cause = _boto_cause(exc)
        if cause is not None:
            return _classify(cause, what)
        if isinstance(exc, ConnectionError | TimeoutError):
            return StoreUnreachable(f"{what}: store unreachable ({type(exc).__name__})")
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        return StoreError(f"{what}: {type(exc).__name__}{': ' + first if first else ''}")
    if isinstance(exc, _UNREACHABLE):
        return StoreUnreachable(f"{what}: store unreachable ({type(exc).__name__})")
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
            if code == "NoSuchBucket":
                return StoreUnreachable(f"{what}: bucket does not exist")
            return NotFound(f"{what}: no such object")
        if code in {"PreconditionFailed", "ConditionalRequestConflict"} or status in {409, 412}:
            return PreconditionFailed(f"{what}: changed since it was read ({code or status})")
        if status in {401, 403}:
            return StoreUnreachable(f"{what}: access denied ({code}); check store credentials")
        if status >= 500 or status == 429:
            return StoreUnreachable(f"{what}: store error {status} {code}".rstrip())
        return StoreError(f"{what}: {code or status} {err.get('Message', '')}".strip())
    return StoreUnreachable(f"{what}: {type(exc).__name__}")


def composite_sha256(path: Path, part_size: int) -> str:
    """The checksum S3 reports for a multipart object: sha256 of the parts' sha256s, `-N`."""
    digests = []
    with path.open("rb") as f:
        while chunk := f.read(part_size):
            digests.append(hashlib.sha256(chunk).digest())
    combined = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    return f"{combined}-{len(digests)}"


class S3Store:
    def __init__(
        self, client: Any, bucket: str, prefix: str, transfer: TransferConfig, endpoint: str
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.transfer = transfer
        where = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.description = f"{where} at {endpoint}" if endpoint else where

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> S3Store:
        bucket, _, prefix = cfg.url[len("s3://") :].partition("/")
        secret = cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=cfg.endpoint,
            region_name=cfg.region,
            aws_access_key_id=cfg.access_key_id.get_secret_value() if cfg.access_key_id else None,
            aws_secret_access_key=secret,
            config=Config(
                connect_timeout=cfg.timeout,
                read_timeout=cfg.timeout,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=max(10, cfg.max_concurrency * 2),
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        transfer = TransferConfig(
            multipart_threshold=cfg.multipart_threshold,
            multipart_chunksize=cfg.multipart_chunksize,
            max_concurrency=cfg.max_concurrency,
            use_threads=True,
        )
        return cls(client, bucket, prefix, transfer, cfg.endpoint or "")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _info(self, key: str, head: dict[str, Any]) -> ObjectInfo:
        checksum = head.get("ChecksumSHA256")
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            etag=str(head.get("ETag", "")),
            modified=head["LastModified"].timestamp(),
            sha256=checksum,
            metadata=dict(head.get("Metadata") or {}),
        )

    def expected_checksum(self, path: Path, sha256_hex: str) -> str:
        """What the service will report for this file once uploaded by :meth:`put_file`."""
        size = path.stat().st_size
        if size < self.transfer.multipart_threshold:
            return base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        part = ChunksizeAdjuster().adjust_chunksize(self.transfer.multipart_chunksize, size)
        return composite_sha256(path, part)

    # ------------------------------------------------------------------ protocol

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: str,
        metadata: dict[str, str],
        progress: Progress | None = None,
        consume: bool = False,
    ) -> ObjectInfo:
        try:
            self.client.upload_file(
                str(path),
                self.bucket,
                self._key(key),
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {**metadata, "sha256": sha256}},
                Config=self.transfer,
                Callback=progress,
            )
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
        except Exception as exc:
            raise _classify(exc, key) from None
        info = self._info(key, head)
        if info.sha256 is None:
            return info  # the service keeps no checksum: the engine verifies the size only
        # Composite checksums end in `-<parts>` on S3; some servers leave the suffix out.
        if info.sha256.split("-")[0] != self.expected_checksum(path, sha256).split("-")[0]:
            raise StoreError(f"{key}: the checksum the store reports differs from the file uploaded")
        return dataclasses.replace(info, sha256=sha256)

    def get_file(
        self, key: str, dest: Path, *, size: int | None = None, progress: Progress | None = None
    ) -> ObjectInfo:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if size is not None and size < self.transfer.multipart_threshold:
                return self._get_single(key, dest, progress)
            # Large: parallel ranged GETs through the transfer manager, one range per worker
            # (at least `multipart_chunksize`): few large ranges beat many small ones.
            config = self.transfer
            if size is not None:
                per_worker = -(-size // self.transfer.max_request_concurrency)
                config = copy.copy(self.transfer)
                config.multipart_chunksize = max(self.transfer.multipart_chunksize, per_worker)
            self.client.download_file(
                self.bucket, self._key(key), str(dest), Config=config, Callback=progress
            )
        except Exception as exc:
            raise _classify(exc, key) from None
        st = dest.stat()
        return ObjectInfo(key=key, size=st.st_size, etag="", modified=st.st_mtime)

    def _get_single(self, key: str, dest: Path, progress: Progress | None) -> ObjectInfo:
        """One GET, hashed while it streams to disk: no HEAD, no second read."""
        resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        h = hashlib.sha256()
        chunks = resp["Body"].iter_chunks(1024 * 1024)
        with dest.open("wb") as f:  # an OSError here is this machine's: raised as it is
            while True:
                try:
                    chunk = next(chunks, b"")
                except Exception as exc:  # the stream broke: the store's side
                    raise _classify(
                        exc if not isinstance(exc, OSError) else ConnectionError(str(exc)), key
                    ) from None
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                if progress:
                    progress(len(chunk))
        return ObjectInfo(
            key=key,
            size=dest.stat().st_size,
            etag=str(resp.get("ETag", "")),
            modified=resp["LastModified"].timestamp(),
            sha256=h.hexdigest(),
        )

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return resp["Body"].read(), str(resp["ETag"])
        except Exception as exc:
            raise _classify(exc, key) from None

    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_match is not None:
            args["IfMatch"] = if_match
        if if_none_match:
            args["IfNoneMatch"] = "*"
        try:
            return str(self.client.put_object(**args)["ETag"])
        except Exception as exc:
            raise _classify(exc, key) from None

    def head(self, key: str) -> ObjectInfo:
        try:
            return self._info(
                key, self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
            )
        except Exception as exc:
            raise _classify(exc, key) from None

    def local_path(self, key: str) -> Path | None:
        return None

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out.append(
                        ObjectInfo(
                            key=obj["Key"][strip:],
                            size=int(obj["Size"]),
                            etag=str(obj.get("ETag", "")),
                            modified=obj["LastModified"].timestamp(),
                        )
                    )
        except Exception as exc:
            raise _classify(exc, f"list {prefix}") from None
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            err = _classify(exc, key)
            if not isinstance(err, NotFound):
                raise err from None

    def clean_incomplete(self, prefix: str, ids: set[str], older_than: float) -> int:
        """Abort multipart uploads a killed writer left: ours at once, others after `older_than`."""
        n = 0
        try:
            resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self._key(prefix))
            for up in resp.get("Uploads", []):
                ours = any(i in up["Key"] for i in ids)
                if ours or time.time() - up["Initiated"].timestamp() > older_than:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
                    n += 1
        except Exception as exc:
            raise _classify(exc, f"clean {prefix}") from None
        return n
