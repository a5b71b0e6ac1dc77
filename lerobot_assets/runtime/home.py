"""The lerobot-assets home directory and dataset names.

A home holds what one machine keeps for itself, caches it can rebuild::

    <home>/dagster/          the embedded Dagster instance (SQLite), used unless $DAGSTER_HOME names a deployment's
    <home>/sources/<name>/   this machine's copies of each dataset pinned to a revision, and in .records/
                             what each copy holds and cached file hashes (only to avoid re-reading files)
    <home>/errors/<name>/    the full lists of problems an error line could only summarize
    <home>/tables/           the default tables root (see :attr:`Home.tables`)

What runs share lives under the tables root, beside the tables (:mod:`lerobot_assets.core.storage`): the
registry, asset values, staged frames and write leases. The home is ``$LEROBOT_ASSETS_HOME`` if
set, else ``./.lerobot_assets``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from lerobot_assets.core.errors import LeRobotAssetsError

HOME_ENV = "LEROBOT_ASSETS_HOME"
TABLES_ENV = "LEROBOT_ASSETS_TABLES"
DEFAULT_HOME = ".lerobot_assets"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def default_home() -> Path:
    """``$LEROBOT_ASSETS_HOME``, else ``./.lerobot_assets``, as an absolute path."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).absolute()


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


@dataclass(frozen=True)
class Home:
    """Paths inside one lerobot-assets home directory."""

    root: Path
    tables_root: str | None = None  # None: $LEROBOT_ASSETS_TABLES, else <home>/tables

    @classmethod
    def at(cls, home: str | Path | None, tables: str | None = None) -> "Home":
        """The home at ``home``, or the default one (:func:`default_home`) when it is None or empty;
        its tables root is ``tables`` if given (see :attr:`tables`)."""
        return cls(Path(home) if home else default_home(), str(tables) if tables else None)

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def tables(self) -> str:
        """The tables root: where the tables, the registry and what runs share live (a local path or an
        ``s3://`` URL); ``--tables``, else ``$LEROBOT_ASSETS_TABLES``, else ``<home>/tables``."""
        root = self.tables_root or os.environ.get(TABLES_ENV) or str(self.root / "tables")
        return root.rstrip("/") if "://" in root else str(Path(root).absolute())

    def sources(self, name: str) -> Path:
        return self.root / "sources" / check_name(name)

    def error_details(self, name: str) -> Path:
        """A new file for the full list of problems an error line of ``name`` can only summarize."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return self.root / "errors" / check_name(name) / f"{stamp}-{os.getpid()}.json"
