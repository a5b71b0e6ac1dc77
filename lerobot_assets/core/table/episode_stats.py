"""Each episode's normalization statistics kept in the table with its rows, and their aggregate
over a set of episodes at a table version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lerobot_assets.core.lerobot.stats import Stats, aggregate_stats, stats_from_json, stats_to_json

#: The Text column holding each episode's stats as JSON on its first row ("" on the others): see :func:`stats_cells`.
STATS_COLUMN = "episode_stats"
#: Where tables written before that column keep them: one key per episode in this column's metadata.
_LEGACY_STATS_COLUMN = "episode_index"


def _stats_key(index: int) -> str:
    return f"episode_stats/{int(index)}"


def stats_cells(stats: Stats | None, rows: int) -> list[str]:
    """The :data:`STATS_COLUMN` values of an episode of ``rows`` rows: its stats (JSON) on the first row.

    Kept in a column, appended with the rows, rather than in column metadata (where they were
    first kept): Deeplake writes changed metadata into the version log, which every open replays,
    so ~10 KB of stats per episode made every open of the table slower by ~0.15 ms per episode
    written. A column is read only at the rows asked for (:func:`load_stats`), and versioned with
    the rows like the metadata was.
    """
    first = "" if stats is None else json.dumps(stats_to_json(stats))
    return [first] + [""] * (rows - 1) if rows else []


def load_stats(ds: Any, firsts: Mapping[int, int]) -> Stats | None:
    """The aggregated stats of the episodes whose first rows in Deeplake dataset ``ds`` are ``firsts``
    (episode -> row); None unless all have stats.

    Reads the stats column at those rows only (and, for episodes written before the column, the
    metadata key they were kept under). Partial stats would silently normalize with numbers that
    do not describe the data.
    """
    if not firsts:
        return None
    rows = list(firsts.values())
    has_column = STATS_COLUMN in {column.name for column in ds.schema.columns}
    cells = [cell or "" for cell in ds[STATS_COLUMN][rows]] if has_column else [""] * len(rows)  # "" reads back as None
    legacy = ds[_LEGACY_STATS_COLUMN].metadata
    stored = set(legacy.keys())
    texts = []
    for episode, cell in zip(firsts, cells):
        text = cell or (legacy[key] if (key := _stats_key(episode)) in stored else "")
        if not text:
            return None
        texts.append(text)
    return aggregate_stats([stats_from_json(json.loads(text)) for text in texts])
