"""The lerobot-assets home directory.

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
import time
from dataclasses import dataclass
from pathlib import Path

from lerobot_assets.core.names import check_name

HOME_ENV = "LEROBOT_ASSETS_HOME"
TABLES_ENV = "LEROBOT_ASSETS_TABLES"
DEFAULT_HOME = ".lerobot_assets"


def default_home() -> Path:
    """``$LEROBOT_ASSETS_HOME``, else ``./.lerobot_assets``, as an absolute path."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).absolute()


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
