"""An episode's rows in the table: building them, finding them, replacing or removing them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import deeplake
import numpy as np
import pyarrow as pa

from lerobot_assets.core.errors import TableError, where
from lerobot_assets.core.lerobot.meta import DatasetMeta
from lerobot_assets.core.lerobot.telemetry import episode_values
from lerobot_assets.core.table.metadata import RUN_METADATA_COLUMN, version_key

log = logging.getLogger(__name__)


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
    ds[RUN_METADATA_COLUMN].metadata[version_key(episode_index)] = data_version or ""
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
