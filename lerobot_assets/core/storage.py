"""Small objects kept beside the tables, where every run on every machine reads them.

A deployment's tables root holds, besides the Deeplake tables, reserved folders whose names start
with a dot (dataset names never do)::

    <root>/<name>                    the Deeplake table of dataset <name>
    <root>/.registry/<name>.json     where the dataset comes from (lerobot_assets.runtime.registry)
    <root>/.values/<asset key>       asset values passed between runs (lerobot_assets.defs.resources.TablesIOManager)
    <root>/.staging/<name>/...       decoded frames waiting for a deeplake_table run (lerobot_assets.core.media.staging)
    <root>/.leases/<name>            the table's write lease (lerobot_assets.core.table.lease)

Roots are local paths (a shared file system when runs are on several machines) or ``s3://`` URLs
(AWS, MinIO, GCS's S3-compatible endpoint...), with credentials and endpoint from the standard
environment variables (:func:`lerobot_assets.core.table.access.storage_creds`). A write replaces the whole
object at once: a reader sees the old or the new bytes, never a mix.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.files import write_bytes


def read_object(url: str) -> bytes | None:
    """The bytes at ``url``, or None if there is no such object."""
    if _is_s3(url):
        bucket, key = _s3_parts(url)
        client = s3_client_for(url)
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
    path = Path(url)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_object(url: str, data: bytes) -> None:
    """Replace the object at ``url`` with ``data``, atomically."""
    if _is_s3(url):
        bucket, key = _s3_parts(url)
        s3_client_for(url).put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(url)
    write_bytes(path, data)


def delete_object(url: str) -> None:
    """Delete the object at ``url`` if it exists."""
    if _is_s3(url):
        bucket, key = _s3_parts(url)
        s3_client_for(url).delete_object(Bucket=bucket, Key=key)
        return
    Path(url).unlink(missing_ok=True)


def list_objects(folder: str) -> list[str]:
    """The names of the objects directly in ``folder`` (no sub-folders, no temporary files), sorted."""
    if _is_s3(folder):
        bucket, prefix = _s3_parts(folder.rstrip("/") + "/")
        pages = s3_client_for(folder).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        return sorted(item["Key"][len(prefix):] for page in pages for item in page.get("Contents", []))
    path = Path(folder)
    return sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else []


def delete_folder(folder: str) -> None:
    """Delete every object in ``folder``."""
    for name in list_objects(folder):
        delete_object(f"{folder.rstrip('/')}/{name}")


def _is_s3(url: str) -> bool:
    if url.startswith("s3://"):
        return True
    if "://" in url:
        raise TableError(
            f"{url.split('://')[0]}:// tables root: the registry and run values beside the tables need a local path "
            "or s3:// (for GCS, its S3-compatible endpoint: s3://<bucket> with AWS_ENDPOINT_URL=https://storage.googleapis.com "
            "and HMAC keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        )
    return False


def _s3_parts(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


_clients: dict[tuple[tuple[str, str], ...], Any] = {}
_clients_lock = threading.Lock()


def s3_client_for(url: str) -> Any:
    """The boto3 S3 client for ``url``'s credentials (:func:`~lerobot_assets.core.table.access.storage_creds`), one per process."""
    from lerobot_assets.core.table.access import storage_creds

    return s3_client(storage_creds(url) or {})


def s3_client(creds: dict[str, str]) -> Any:
    """A boto3 S3 client for ``creds`` (the names :func:`~lerobot_assets.core.table.access.storage_creds` returns), one per process."""
    import boto3
    from botocore.config import Config

    key = tuple(sorted(creds.items()))
    with _clients_lock:
        if key not in _clients:
            _clients[key] = boto3.client(
                "s3",
                # a lease renewal stuck in retries for minutes would outlive the lease it renews
                config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}),
                endpoint_url=creds.get("endpoint_url"),
                region_name=creds.get("aws_region"),
                aws_access_key_id=creds.get("aws_access_key_id"),
                aws_secret_access_key=creds.get("aws_secret_access_key"),
                aws_session_token=creds.get("aws_session_token"),
            )
        return _clients[key]


def _forget_in_child() -> None:
    """A forked process makes its own clients (boto3's are not fork-safe)."""
    global _clients_lock
    _clients.clear()
    _clients_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
