"""lerobot-assets: LeRobot datasets as versioned, queryable, streamable Deeplake tables, built by Dagster.

The public API, imported on first use (a DataLoader worker importing the package loads neither
Dagster nor torch until it asks for them):

- ``ingest``, ``snapshot``, ``info``, ``open_snapshot``: build a table, tag it, describe it, open a tag;
- ``relabel``, ``diff``, ``merge``: labels on a review branch, and merging it;
- ``open_view``, ``run_query``: TQL on a table's head or a tag;
- ``SnapshotDataset``, ``ReadAheadBatches``, ``collate``: a tag as a PyTorch dataset (``lerobot-assets[torch]``);
- ``generate_dataset``: a small real LeRobot dataset on disk, for trying things out.

The layers, from the bottom: ``core`` (data logic, no Dagster), ``defs`` (the Dagster assets),
``runtime`` (running them), ``cli``, ``training``, ``testing``; see docs/architecture.md.
"""

import importlib
from typing import Any

_WHERE = {
    "ingest": "lerobot_assets.runtime.commands",
    "snapshot": "lerobot_assets.runtime.commands",
    "info": "lerobot_assets.runtime.commands",
    "open_snapshot": "lerobot_assets.runtime.commands",
    "relabel": "lerobot_assets.runtime.relabel",
    "diff": "lerobot_assets.runtime.relabel",
    "merge": "lerobot_assets.runtime.relabel",
    "open_view": "lerobot_assets.core.table.query",
    "run_query": "lerobot_assets.core.table.query",
    "SnapshotDataset": "lerobot_assets.training",
    "ReadAheadBatches": "lerobot_assets.training",
    "collate": "lerobot_assets.training",
    "generate_dataset": "lerobot_assets.testing.synthetic",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import a public name's module only when the name is used."""
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lerobot_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
