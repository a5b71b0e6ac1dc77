"""The registry of a home: the one under its tables root (``--tables``, ``$LEROBOT_ASSETS_TABLES``,
else ``<home>/tables``); entries an earlier version kept in the home move there.
"""

from __future__ import annotations

import json
import logging

from lerobot_assets.core.table.registry import DatasetSource, Registry
from lerobot_assets.runtime.home import Home

log = logging.getLogger(__name__)


def registry_of(home: Home) -> Registry:
    """The registry of ``home``'s tables root. Entries an earlier version kept in ``<home>/datasets/``
    move there (they stay valid: each names its table's URL)."""
    registry = Registry(home.tables)
    legacy = home.root / "datasets"
    for path in sorted(legacy.glob("*.json")) if legacy.is_dir() else []:
        if registry.get(path.stem) is None:
            registry.register(DatasetSource(**json.loads(path.read_text())))
            log.info("moved the registration of %r from %s to %s", path.stem, legacy, home.tables)
        path.unlink()
    return registry
