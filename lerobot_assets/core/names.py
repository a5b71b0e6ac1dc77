"""Dataset names, and where a registered dataset comes from: names become directory names,
Dagster partition keys and asset key prefixes, so they are checked once, here.
"""

from __future__ import annotations

import re
from pathlib import Path

from lerobot_assets.core.errors import LeRobotAssetsError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe dataset name, else raise.

    Names become directory names, Dagster partition keys and parts of TQL-free lookups, so they are
    restricted to letters, digits, ``_``, ``-`` and ``.`` (no ``..``): a name can never escape the
    storage root or change the meaning of a query.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise LeRobotAssetsError(
            f"invalid dataset name {name!r}: use 1-100 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..'"
        )
    return name


def name_from_source(source: str) -> str:
    """Derive a dataset name from a repo id (``lerobot/aloha_mobile_shrimp``) or a local path."""
    last = Path(source.rstrip("/")).name or "dataset"
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", last).lstrip("._-").replace("..", "_")
    return check_name(cleaned[:100] or "dataset")
