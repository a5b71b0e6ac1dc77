"""Writing and reading the Deeplake tables: one table per LeRobot dataset, one row per frame.

Columns keep LeRobot's feature keys (``observation.images.<camera>``, ``observation.state``,
``action``...), plus ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index`` and
``task``, and each episode's statistics (:data:`~lerobot_assets.core.table.episode_stats.STATS_COLUMN`). Writing an
episode replaces that episode's rows; a run of episodes commits once (:class:`RunWriter`), under the
table's write lease (held by one writer on any machine), so a re-run never duplicates rows and a
crash before the commit leaves the previous version intact (Deeplake drops uncommitted writes when a
process dies).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import deeplake
import numpy as np
import pyarrow as pa

from lerobot_assets.core.errors import TableError, where
from lerobot_assets.core.lerobot.meta import INDEX_DTYPES, DatasetMeta, Feature
from lerobot_assets.core.lerobot.telemetry import episode_values
from lerobot_assets.core.names import check_name
from lerobot_assets.core.table.episode_stats import STATS_COLUMN
from lerobot_assets.core.table.lease import check_held, hold

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
METADATA_KEY = "lerobot_assets"
#: The column whose metadata holds, under :data:`METADATA_KEY`, the ingest values that change
#: between runs (see :func:`set_table_metadata`).
RUN_METADATA_COLUMN = "episode_index"
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
    if _half_created(ds):
        ds = _define_table(ds, url, meta, image_format)
    elif STATS_COLUMN not in {column.name for column in ds.schema.columns}:
        ds.add_column(STATS_COLUMN, deeplake.types.Text())  # a table from before the column: committed with the rows
    _refuse_misfit(ds, url, meta, table_columns(meta, image_format))
    _writers[key] = ds
    return ds


def _half_created(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> bool:
    """True for a table whose creation was not committed: no columns, no rows."""
    return not len(ds.schema.columns) and not len(ds)


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
        if not _half_created(ds):  # completed by the first write (open_table)
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


@contextmanager
def write_lock(url: str) -> Iterator[None]:
    """Hold the write lease of the table at ``url`` (:mod:`lerobot_assets.core.table.lease`): one writer at a
    time per table, across processes and machines (decoding still runs in parallel)."""
    with hold(url):
        yield


def episode_rows(meta: DatasetMeta, telemetry: pa.Table, images: Mapping[str, list[bytes]]) -> dict[str, Any]:
    """The columns of one episode's rows, ready for ``Dataset.append``; shapes follow ``info.json``."""
    rows: dict[str, Any] = {camera: list(images[camera]) for camera in meta.cameras}
    rows.update(episode_values(meta, telemetry))
    lengths = {key: len(values) for key, values in rows.items()}
    if len(set(lengths.values())) != 1:
        raise TableError(f"{where(meta.name, int(rows['episode_index'][0]))}: columns differ in length {lengths}")
    return rows


def episode_ranges(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> dict[int, range]:
    """Where each episode's rows are in the table (contiguous: written by one append).

    One read of the ``episode_index`` column (8 bytes a row: 75 ms at 100k rows on the loaded VM),
    for a whole run of episodes rather than once per episode. Asking its inverted index instead
    (``SELECT row FROM (SELECT ROW_NUMBER() AS row, episode_index) WHERE episode_index == k``)
    answers in 0.4 ms at 1M rows once the index is built, but Deeplake 4.7 does not keep it current
    at each commit (the query then scans: 166 ms at 100k rows) and it can go stale after deletes
    (see :func:`refresh_indexes`). An episode whose rows are not contiguous (written twice by
    writers that did not exclude each other) has no range: its rows are wrong, and its next write
    replaces them all.
    """
    return _ranges(np.asarray(ds["episode_index"][:]) if len(ds) else np.empty(0, np.int64))


def _ranges(values: np.ndarray) -> dict[int, range]:
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if len(values) else np.empty(0, np.int64)
    stops = np.r_[starts[1:], len(values)].astype(np.int64)
    episodes, runs = np.unique(values[starts], return_counts=True)
    split = set(episodes[runs > 1].tolist())
    return {int(values[a]): range(int(a), int(b)) for a, b in zip(starts, stops) if int(values[a]) not in split}


def episode_frames(ds: deeplake.Dataset | deeplake.ReadOnlyDataset, rows: range) -> np.ndarray:
    """``frame_index`` of the table's rows ``rows`` (one episode's :func:`episode_ranges`), for checks."""
    if not rows:
        return np.empty(0, dtype=np.int64)
    return np.asarray(ds["frame_index"][rows.start : rows.stop], dtype=np.int64)


def _version_key(index: int) -> str:
    return f"episode_version/{int(index)}"


def episode_versions(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> dict[int, str]:
    """Each episode's recorded data version (input fingerprint and code version) at this table version.

    Kept with the rows (see :func:`replace_episode`), so any run on any machine can tell an
    unchanged episode from the table alone, without the Dagster instance that wrote it.
    """
    if _half_created(ds):
        return {}  # a table another run is creating right now, or whose creation died, holds no episode
    metadata = ds[RUN_METADATA_COLUMN].metadata
    prefix = _version_key(0)[:-1]
    return {
        int(key[len(prefix):]): value
        for key in metadata.keys()
        if key.startswith(prefix) and (value := metadata[key])
    }


def replace_episode(
    ds: deeplake.Dataset,
    episode_index: int,
    rows: Mapping[str, Any] | None,
    data_version: str | None = None,
    episodes: np.ndarray | None = None,
) -> tuple[tuple[int, int], np.ndarray]:
    """Replace (or with ``rows=None`` remove) one episode's rows, without committing.

    ``data_version`` is recorded with the rows (cleared on removal) under one key per episode of
    :data:`RUN_METADATA_COLUMN`'s metadata: the next commit holds both. ``episodes`` is the
    table's ``episode_index`` column as this handle sees it (read here when None): a run passes
    back what the previous write returned, so that the column is read once per run, not once per
    episode. Returns ``((rows_deleted, rows_written), episode_index column after the write)``.

    The caller holds the table's write lock and commits. Deeplake 4.7 deletes one row per call
    (no range delete), from the last so no position shifts. Every row of the episode goes, also
    when they are not contiguous (the episode written twice by writers that did not exclude each
    other, before the table's lease): replacing it repairs that.
    """
    ds[RUN_METADATA_COLUMN].metadata[_version_key(episode_index)] = data_version or ""
    if episodes is None:
        episodes = np.asarray(ds["episode_index"][:]) if len(ds) else np.empty(0, np.int64)
    old = np.flatnonzero(episodes == episode_index)
    if len(old) and old[-1] - old[0] + 1 != len(old):
        log.warning("episode %d's %d rows were not contiguous in the table (%d..%d): all are replaced",
                    episode_index, len(old), old[0], old[-1])
    for offset in reversed(old):
        ds.delete(int(offset))
    episodes = np.delete(episodes, old)
    written = 0
    if rows is not None:
        ds.append(dict(rows))
        written = len(rows["episode_index"])
        episodes = np.concatenate([episodes, np.full(written, episode_index, dtype=episodes.dtype)])
    return (len(old), written), episodes


T = TypeVar("T")


class RunWriter:
    """The table writes of one run of episodes, committed as one version.

    Every open of a Deeplake 4.7 table replays its whole version log (~0.2 ms per commit, more with
    large log entries), and a commit's own cost grows with the commits before it, so one commit per
    episode made every open, ``info``, replace and loader grow with the number of episodes written
    (docs/benchmarks.md, "Table size"). A run's episodes are decoded in parallel threads; their
    writes go, one at a time, through this writer's own thread, which takes the table's write
    lease at the run's first write and keeps it until :meth:`commit`. Nothing is visible before
    the commit, and a process that dies before it leaves the previous version (Deeplake drops
    uncommitted writes); the caller records results only after it. Deeplake streams appended
    chunks to storage, so uncommitted rows do not accumulate in memory (measured: 30 uncommitted
    episodes of 3x200 480x640 JPEGs, 169 MB RSS; committing each, 262-347 MB).

    A write that raises part-way cannot be undone on its own: the run's uncommitted writes are
    rolled back with it, and the episodes concerned are listed in :attr:`lost`.
    """

    def __init__(self, url: str, image_format: str, metadata: Mapping[str, Any]) -> None:
        self.url, self._image_format, self._metadata = url, image_format, dict(metadata)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="table-writer")
        self._lease, self._leased = ExitStack(), False
        self.ds: deeplake.Dataset | None = None
        self._episodes: np.ndarray | None = None  # the episode_index column as self.ds sees it
        self._pending: list[int] = []
        self._replaced = False  # rows were deleted since the last commit: the indexes need recreating
        #: Episodes whose written rows were rolled back because a later write of the run failed.
        self.lost: list[int] = []

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._thread.submit(self._close).result()
        finally:
            self._thread.shutdown()

    def replace(
        self,
        meta: DatasetMeta,
        episode_index: int,
        rows: Mapping[str, Any],
        data_version: str,
        prepare: Callable[[deeplake.Dataset, dict[str, Any]], tuple[dict[str, Any], T]],
    ) -> tuple[int, int, T]:
        """Replace one episode's rows (``prepare(ds, rows)`` first gives the rows to write and a value
        returned with the counts), in turn with the run's other episodes; not committed yet.
        Returns ``(rows_deleted, rows_written, prepared value)``."""
        return self._thread.submit(self._replace, meta, episode_index, rows, data_version, prepare).result()

    def _replace(self, meta: DatasetMeta, episode_index: int, rows: Mapping[str, Any], data_version: str,
                 prepare: Callable[[deeplake.Dataset, dict[str, Any]], tuple[dict[str, Any], T]]) -> tuple[int, int, T]:
        if not self._leased:
            self._lease.enter_context(write_lock(self.url))
            self._leased = True
        if self.ds is None:  # at the first write, and again after a rollback (which undid what the open added)
            self.ds = open_table(self.url, meta, self._image_format)
        try:
            set_table_metadata(self.ds, **self._metadata)
            prepared, value = prepare(self.ds, dict(rows))
            (deleted, written), self._episodes = replace_episode(
                self.ds, episode_index, prepared, data_version, self._episodes)
        except BaseException:
            self.ds.rollback()
            self.lost += [*self._pending, episode_index]
            self._pending, self._episodes, self.ds = [], None, None
            raise
        self._pending.append(episode_index)
        self._replaced |= bool(deleted)
        return deleted, written, value

    @property
    def pending(self) -> list[int]:
        """The episodes written since the last commit (to name them in its message)."""
        return list(self._pending)

    def commit(self, message: str) -> tuple[list[int], str | None]:
        """Commit the episodes written since the last commit in one version, then release the lease;
        return them and the version committed (None when nothing was written). When rows were replaced, the indexes are recreated in the same commit
        (Deeplake's miss rows after deletes: :func:`refresh_indexes`)."""
        return self._thread.submit(self._commit, message).result()

    def _commit(self, message: str) -> tuple[list[int], str | None]:
        done, self._pending, version = self._pending, [], None
        if done and self.ds is not None:
            try:
                if self._replaced:
                    refreshed = refresh_indexes(self.ds)
                    message += f"; indexes of {refreshed} recreated" if refreshed else ""
                check_held()
                self.ds.commit(message)
                version = self.ds.version
            except BaseException:
                self.ds.rollback()
                self.lost += done
                raise
        self._replaced = False
        self._lease.close()
        self._leased = False
        return done, version

    def _close(self) -> None:
        if self.ds is not None and self._pending:  # a run that ends without its commit
            self.ds.rollback()
            self._pending = []
        self._lease.close()
        self._leased = False


@dataclass(frozen=True)
class TableSummary:
    """What a table holds at one version."""

    url: str
    version: str
    rows: int
    episodes: dict[int, int]  # episode_index -> rows
    tags: dict[str, str]  # tag -> version
    metadata: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.url,
            "version": self.version,
            "rows": self.rows,
            "episodes": sorted(self.episodes),
            "tags": self.tags,
            **{k: v for k, v in self.metadata.items() if k in ("source", "revision")},
        }


def summarize(ds: deeplake.Dataset | deeplake.ReadOnlyDataset, url: str) -> TableSummary:
    """Row count, rows per episode, version, tags and ingest metadata of ``ds``."""
    episodes: dict[int, int] = {}
    if len(ds):
        values, counts = np.unique(np.asarray(ds["episode_index"][:]), return_counts=True)
        episodes = {int(v): int(c) for v, c in zip(values, counts)}
    tags = {name: ds.tags[name].version for name in ds.tags.names()}
    return TableSummary(url, ds.version, len(ds), episodes, tags, table_metadata(ds))


def table_metadata(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> dict[str, Any]:
    """The table's ingest metadata: what was written at creation (:func:`ingest_metadata`), updated
    with what :func:`set_table_metadata` recorded with the rows (fps, features, cameras, source,
    revision as of the latest ingest at this version)."""
    metadata = _json_entry(ds.metadata)
    if not _half_created(ds):
        metadata.update(_json_entry(ds[RUN_METADATA_COLUMN].metadata))
    return metadata


def _json_entry(metadata: Any) -> dict[str, Any]:
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata.keys() else {}


def set_table_metadata(ds: deeplake.Dataset, **values: Any) -> None:
    """Record ``values`` (:func:`ingest_metadata`, source, revision) with the next commit, and only
    when they change.

    They go to :data:`RUN_METADATA_COLUMN`'s metadata, versioned with the rows (a tag shows the
    revision its rows came from), not to the dataset's own metadata, which is written once, at
    creation. Deeplake 4.7 keeps dataset metadata in a log of its own and checkpoints it every 64
    writes; when the entries are lz4-compressed (over ~512 bytes, as a commit message with a revision
    made them) but the checkpoint is not, the checkpoint is stored raw under a ``.lz4`` name and
    every later open decodes its first bytes as a block size: 1.87 GB allocated and 1-2 s per open,
    and the metadata read back empty. Writing it per episode made ingest collapse after ~64 episodes
    (docs/benchmarks.md, "Many small episodes").
    """
    metadata = ds[RUN_METADATA_COLUMN].metadata
    current = _json_entry(metadata)
    if {**current, **values} != current:
        metadata[METADATA_KEY] = json.dumps({**current, **values})


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


def create_tag(ds: deeplake.Dataset, tag: str, url: str) -> str:
    """Tag the current version of ``ds`` (committing pending changes first) and return the version id."""
    check_name(tag)
    if tag in ds.tags.names():
        raise TableError(f"table {url} already has a tag {tag!r} (version {ds.tags[tag].version}); choose another tag")
    return ds.tag(tag).version
