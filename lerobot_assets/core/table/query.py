"""Running TQL queries on a table (head or a tag) and turning the result into plain rows.

Queries run on an opened dataset object (``ds.query``), so dataset names never become part of the
TQL text. Image columns are shown as their shape, not their pixels.
"""

from __future__ import annotations

from typing import Any

import deeplake
import numpy as np

from lerobot_assets.core.table.access import open_read_only, open_tag
from lerobot_assets.core.table.episode_stats import STATS_COLUMN


def open_view(url: str, tag: str | None = None) -> deeplake.ReadOnlyDataset:
    """The table at ``url``: its head, or tag ``tag``."""
    return open_tag(url, tag) if tag else open_read_only(url)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_query(ds: deeplake.ReadOnlyDataset, tql: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``tql`` run on ``ds``, as dicts of plain Python values (images as ``"<image HxWxC>"``;
    without the episodes' stats JSON, which ``SELECT *`` would otherwise bring on each first row)."""
    view = ds.query(tql)
    count = len(view) if limit is None else min(len(view), limit)
    columns = [c.name for c in view.schema.columns if c.name != STATS_COLUMN]
    images = {c.name for c in view.schema.columns if "image" in str(c.dtype).lower()}
    out: list[dict[str, Any]] = [{} for _ in range(count)]
    for name in columns:
        if name in images:
            for row, value in zip(out, view[name][:count]):
                row[name] = f"<image {'x'.join(str(s) for s in np.shape(value))}>"
        else:
            for row, value in zip(out, view[name][:count]):
                row[name] = _plain(value)
    return out
