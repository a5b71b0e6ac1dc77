"""What a table holds at one version (rows per episode, tags) and records besides its rows, versioned
with them: the ingest metadata (dataset, fps, features, source, revision) and each episode's data version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import deeplake
import numpy as np

from lerobot_assets.core.table.access import half_created

METADATA_KEY = "lerobot_assets"
#: The column whose metadata holds, under :data:`METADATA_KEY`, the ingest values that change
#: between runs (see :func:`set_table_metadata`).
RUN_METADATA_COLUMN = "episode_index"


def version_key(index: int) -> str:
    return f"episode_version/{int(index)}"


def episode_versions(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> dict[int, str]:
    """Each episode's recorded data version (input fingerprint and code version) at this table version.

    Kept with the rows (see :func:`replace_episode`), so any run on any machine can tell an
    unchanged episode from the table alone, without the Dagster instance that wrote it.
    """
    if half_created(ds):
        return {}  # a table another run is creating right now, or whose creation died, holds no episode
    metadata = ds[RUN_METADATA_COLUMN].metadata
    prefix = version_key(0)[:-1]
    return {
        int(key[len(prefix):]): value
        for key in metadata.keys()
        if key.startswith(prefix) and (value := metadata[key])
    }


@dataclass(frozen=True)
class TableSummary:
    """What a table holds at one version."""

    url: str
    version: str
    rows: int
    episodes: dict[int, int]  # episode_index -> rows
    tags: dict[str, str]  # tag -> version
    metadata: dict[str, Any]


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
    metadata = json_entry(ds.metadata)
    if not half_created(ds):
        metadata.update(json_entry(ds[RUN_METADATA_COLUMN].metadata))
    return metadata


def json_entry(metadata: Any, key: str = METADATA_KEY) -> Any:
    """The JSON value under ``key`` of Deeplake metadata (a dataset's or a column's); {} when absent or empty."""
    return json.loads(metadata[key]) if key in metadata.keys() and metadata[key] else {}


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
    current = json_entry(metadata)
    if {**current, **values} != current:
        metadata[METADATA_KEY] = json.dumps({**current, **values})
