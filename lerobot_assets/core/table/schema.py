"""The table's schema: a column per feature and camera (types from ``info.json``), its indexes, and
creating a table or checking that an existing one can hold a dataset as it is now.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from typing import Any

import deeplake
import numpy as np

from lerobot_assets.core.errors import TableError, where
from lerobot_assets.core.lerobot.meta import INDEX_DTYPES, DatasetMeta, Feature
from lerobot_assets.core.table.access import half_created, open_writable, storage_creds
from lerobot_assets.core.table.episode_stats import STATS_COLUMN
from lerobot_assets.core.table.metadata import METADATA_KEY

log = logging.getLogger(__name__)

_SCALAR_TYPES = {
    "float32": deeplake.types.Float32,
    "float64": deeplake.types.Float64,
    "int8": deeplake.types.Int8,
    "int16": deeplake.types.Int16,
    "int32": deeplake.types.Int32,
    "int64": deeplake.types.Int64,
    "uint8": deeplake.types.UInt8,
    "uint16": deeplake.types.UInt16,
    "uint32": deeplake.types.UInt32,
    "bool": deeplake.types.Bool,
}
_COMPRESSION = {"jpeg": "jpg", "png": "png"}

#: The feature "nearest state" queries rank rows by: stored as a Deeplake ``Embedding`` (a float32
#: vector of fixed size) so that it carries a vector index.
EMBEDDING_KEY = "observation.state"
#: Indexes every new table gets: episode lookups, task filters (``==``, ``CONTAINS``), and the
#: embedding column's vector index (added by its type). Deeplake 4.7 keeps them current for appended rows
#: only: after values are set in place (relabel, merge) or rows deleted (a re-ingest replacing an episode)
#: they answer from the old rows, so :func:`refresh_indexes` recreates them then.
_INDEXES = {
    "episode_index": deeplake.types.NumericIndex(deeplake.types.Inverted),
    "task": deeplake.types.TextIndex(deeplake.types.Inverted),
}
#: The vector index Deeplake gives an ``Embedding`` column.
_VECTOR_INDEX = deeplake.types.EmbeddingIndex(deeplake.types.Clustered)


def table_columns(meta: DatasetMeta, image_format: str) -> dict[str, Any]:
    """The Deeplake column types for ``meta``'s features."""
    columns: dict[str, Any] = {
        camera: deeplake.types.Image(dtype=deeplake.types.UInt8(), sample_compression=_COMPRESSION[image_format])
        for camera in meta.cameras
    }
    for feature in meta.value_features:
        columns[feature.key] = _value_type(feature)
    columns.update({key: _SCALAR_TYPES[np.dtype(dtype).name]() for key, dtype in INDEX_DTYPES.items()})
    columns["task"] = deeplake.types.Text()
    return columns


def column_types(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> dict[str, str]:
    """Each column's Deeplake type as text, in table order (the schema the UI shows)."""
    return {column.name: str(column.dtype) for column in ds.schema.columns}


def _value_type(feature: Feature) -> Any:
    if feature.key == EMBEDDING_KEY and feature.dtype == "float32" and len(feature.shape) == 1:
        return deeplake.types.Embedding(feature.shape[0])
    scalar = _SCALAR_TYPES[feature.dtype]()
    return deeplake.types.Array(scalar, shape=list(feature.shape)) if feature.is_vector else scalar


def ingest_metadata(meta: DatasetMeta, image_format: str) -> dict[str, Any]:
    """What the table's metadata says about the dataset its rows come from: written at creation,
    then recorded with the rows of every episode write that changes it (:func:`set_table_metadata`),
    so it follows the dataset (``SnapshotDataset`` takes fps from it)."""
    return {
        "dataset": meta.name,
        "fps": meta.fps,
        "codebase_version": meta.version,
        "robot_type": meta.robot_type,
        "cameras": meta.cameras,
        "features": {f.key: {"dtype": f.dtype, "shape": list(f.shape)} for f in meta.features.values()},
        "image_format": image_format,
    }


#: Writable handles kept by :func:`open_table`: (url, process) -> dataset. Used under the table's
#: write lease, so by one thread at a time (a lease file's ``flock`` also excludes other threads).
_writers: dict[tuple[str, int], deeplake.Dataset] = {}


def open_table(url: str, meta: DatasetMeta, image_format: str) -> deeplake.Dataset:
    """Open the table at ``url``, creating it with ``meta``'s schema on first use; the caller holds the write lock.

    A table another writer created but did not commit (its process died between ``create`` and the
    commit of its columns: an empty table with no columns) is completed here.

    Opening replays the table's whole version log (Deeplake 4.7 keeps no checkpoint of it: ~0.2 ms
    per commit, ~0.35 ms with episode stats, so about a second at 3k episodes), so the handle is
    kept for this process and, at the next call, only rolled back (what a failed write
    left uncommitted) and refreshed with the commits made since.
    Raises :class:`TableError` when an existing table's columns do not match the dataset.
    """
    creds = storage_creds(url)
    key = (url, os.getpid())
    if not deeplake.exists(url, creds=creds):
        _writers.pop(key, None)
        ds = _define_table(deeplake.create(url, creds=creds), url, meta, image_format)
    elif key in _writers:
        ds = _writers[key]
        ds.rollback()
        ds.refresh()
    else:
        ds = deeplake.open(url, creds=creds)
    if half_created(ds):
        ds = _define_table(ds, url, meta, image_format)
    elif STATS_COLUMN not in {column.name for column in ds.schema.columns}:
        ds.add_column(STATS_COLUMN, deeplake.types.Text())  # a table from before the column: committed with the rows
    _refuse_misfit(ds, url, meta, table_columns(meta, image_format))
    _writers[key] = ds
    return ds


def _define_table(ds: deeplake.Dataset, url: str, meta: DatasetMeta, image_format: str) -> deeplake.Dataset:
    """Give a new (or half-created) table ``meta``'s columns, indexes and metadata, in one commit."""
    for name, dtype in table_columns(meta, image_format).items():
        ds.add_column(name, dtype)
    ds.add_column(STATS_COLUMN, deeplake.types.Text())
    for name, index in _INDEXES.items():
        ds[name].create_index(index)
    ds.metadata[METADATA_KEY] = json.dumps(ingest_metadata(meta, image_format))
    ds.commit(f"create table for dataset {meta.name}")
    log.info("created table %s", url)
    return ds


def check_table_fits(url: str, meta: DatasetMeta, image_format: str) -> None:
    """:class:`TableError` when the existing table at ``url`` cannot hold ``meta``'s rows (a camera
    or feature added or gone, a shape or dtype changed); nothing when there is no table yet.

    Checked before any episode is written, so a refused ingest leaves the table as it was.
    """
    creds = storage_creds(url)
    if deeplake.exists(url, creds=creds):
        ds = deeplake.open_read_only(url, creds=creds)
        if not half_created(ds):  # completed by the first write (open_table)
            _refuse_misfit(ds, url, meta, table_columns(meta, image_format))


def _refuse_misfit(ds: deeplake.Dataset | deeplake.ReadOnlyDataset, url: str, meta: DatasetMeta, expected: dict[str, Any]) -> None:
    present = {column.name: column.dtype for column in ds.schema.columns}
    new = sorted(set(expected) - set(present))
    gone = sorted(n for n in set(present) - set(expected) if not _is_label_column(present[n]))
    changed = [
        f"{n!r} is {present[n]} in the table but {expected[n]} now"
        for n in sorted(set(expected) & set(present))
        if str(present[n]) != str(expected[n])
    ]
    problems = ([f"new columns {new}"] if new else []) + ([f"columns {gone} are gone"] if gone else []) + changed
    if problems:
        raise TableError(
            f"{where(meta.name)}: the table {url} cannot hold the dataset as it is now ({'; '.join(problems)}); "
            "it was left unchanged: ingest the dataset under a new --name"
        )


def _is_label_column(dtype: Any) -> bool:
    """Text or scalar columns added by relabelling (``lerobot-assets relabel``); ingest leaves them at their default."""
    kinds = deeplake.types.TypeKind
    return dtype.kind == kinds.Text or (dtype.kind == kinds.Generic and not dtype.shape)


def refresh_indexes(ds: deeplake.Dataset, columns: Collection[str] | None = None) -> list[str]:
    """Recreate the indexes of ``columns`` (all indexed columns when None); return the columns done.

    Deeplake 4.7 indexes appended rows but leaves its indexes stale when values are overwritten in
    place (``CONTAINS(task, ...)`` and ``==`` then answer from the old values) or rows are deleted
    (rows go missing from ``==``, ``CONTAINS`` and ``COSINE_SIMILARITY`` results). Dropping and
    creating an index reindexes every row. The caller holds the write lock and commits.
    """
    indexes = {**_INDEXES, EMBEDDING_KEY: _VECTOR_INDEX}
    present = {column.name for column in ds.schema.columns}
    done = [name for name in indexes if name in present and ds[name].indexes and (columns is None or name in columns)]
    for name in done:
        ds[name].drop_index(indexes[name])
        ds[name].create_index(indexes[name])
    return done


def build_indexes(url: str) -> None:
    """Bring every index of the table at ``url`` up to date with its committed rows.

    Deeplake builds a vector index lazily, and rebuilding it costs seconds per 100k rows, so it is
    done once per snapshot rather than at every episode's commit. Queries stay exact without it,
    only slower. Building commits a version of its own ("Build indexes") when there was anything to
    build, which open handles do not see: reopen the table afterwards. The caller holds the write lock.
    """
    ds = open_writable(url)
    ds.indexing_mode = deeplake.IndexingMode.Always
    ds.build_indexes()
