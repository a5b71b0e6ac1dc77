"""Finding and opening a table: its URL and credentials, the head read-only, a tag (the rows a
training run saw), a writable handle, new tags; what a table costs on disk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import deeplake

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.names import check_name


def table_url(tables_root: str | Path, name: str) -> str:
    """The Deeplake URL of dataset ``name``'s table under ``tables_root`` (a local path or a URL)."""
    root = str(tables_root)
    if "://" not in root:
        root = str(Path(root).absolute())
    return f"{root.rstrip('/')}/{check_name(name)}"


def storage_creds(url: str) -> dict[str, str] | None:
    """Credentials for a cloud table URL, read from the standard environment variables.

    The returned dict goes straight to Deeplake and is never logged or stored.
    """
    if url.startswith("s3://"):
        names = {
            "aws_access_key_id": "AWS_ACCESS_KEY_ID",
            "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
            "aws_session_token": "AWS_SESSION_TOKEN",
            "endpoint_url": "AWS_ENDPOINT_URL",
            "aws_region": "AWS_REGION",
        }
        creds = {key: os.environ[env] for key, env in names.items() if os.environ.get(env)}
        return creds or None
    return None


def half_created(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> bool:
    """True for a table whose creation was not committed: no columns, no rows."""
    return not len(ds.schema.columns) and not len(ds)


def storage_report(url: str, rows: int, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What the table costs on disk: its bytes, bytes per camera-frame, and the ratio to the source's
    bytes (the pinned copy's, as recorded at ingest). None where unknown (a cloud table: listing
    every object to sum them would cost more than the question is worth)."""
    size = None if "://" in url else _tree_bytes(url)
    frames = rows * len(metadata.get("cameras", []))
    source = metadata.get("source_bytes")
    return {
        "table_bytes": size,
        "bytes_per_camera_frame": round(size / frames) if size is not None and frames else None,
        "source_bytes": source,
        "table_to_source": round(size / source, 2) if size is not None and source else None,
    }


def _tree_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (``scandir``: one stat per file, already fetched with the listing)."""
    total = 0
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            total += _tree_bytes(entry.path)
        elif entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def open_read_only(url: str) -> deeplake.ReadOnlyDataset:
    """Open the head of a table for reading; :class:`TableError` if it does not exist."""
    creds = storage_creds(url)
    if not deeplake.exists(url, creds=creds):
        raise TableError(f"no table at {url}; ingest the dataset first")
    return deeplake.open_read_only(url, creds=creds)


def open_tag(url: str, tag: str) -> deeplake.ReadOnlyDataset:
    """The table at tag ``tag``, read-only: the exact rows a training run saw."""
    ds = open_read_only(url)
    if tag not in ds.tags.names():
        raise TableError(f"table {url} has no tag {tag!r}; tags: {sorted(ds.tags.names())}")
    return ds.tags[tag].open()


def open_writable(url: str) -> deeplake.Dataset:
    """Open an existing table for writing; :class:`TableError` if it does not exist."""
    creds = storage_creds(url)
    if not deeplake.exists(url, creds=creds):
        raise TableError(f"no table at {url}; ingest the dataset first")
    return deeplake.open(url, creds=creds)


def create_tag(ds: deeplake.Dataset, tag: str, url: str) -> str:
    """Tag the current version of ``ds`` (committing pending changes first) and return the version id."""
    check_name(tag)
    if tag in ds.tags.names():
        raise TableError(f"table {url} already has a tag {tag!r} (version {ds.tags[tag].version}); choose another tag")
    return ds.tag(tag).version
