"""The lerobot-assets home directory, dataset names, and the registry of dataset sources.

One directory holds everything a deployment keeps locally::

    <home>/dagster/          DAGSTER_HOME: runs, materializations, partitions (SQLite)
    <home>/tables/<name>     one Deeplake table per dataset (unless tables live at an s3:// or gs:// URL)
    <home>/sources/<name>/   local copies of each dataset pinned to a revision, and in .records/ what
                             each copy holds and cached file hashes (only to avoid re-reading files)
    <home>/staging/<name>/   per-episode decoded frames, kept when decoded_camera_frames runs alone
    <home>/datasets/<name>.json   where each registered dataset comes from
    <home>/locks/            the lock episode runs of this home hold while recording their results

The home is ``$LEROBOT_ASSETS_HOME`` if set, else ``./.lerobot_assets``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from lerobot_assets.errors import LeRobotAssetsError

HOME_ENV = "LEROBOT_ASSETS_HOME"
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
class DatasetSource:
    """Where a registered dataset comes from: a Hub repo id or a local directory."""

    name: str
    source: str
    kind: str  # "hub" or "local"
    table: str  # Deeplake URL of the dataset's table
    revision: str | None = None  # requested revision (branch, tag or sha); None = latest


@dataclass(frozen=True)
class Home:
    """Paths inside one lerobot-assets home directory."""

    root: Path

    @classmethod
    def at(cls, home: str | Path | None) -> "Home":
        """The home at ``home``, or the default one (:func:`default_home`) when it is None or empty."""
        return cls(Path(home) if home else default_home())

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    def sources(self, name: str) -> Path:
        return self.root / "sources" / check_name(name)

    def staging(self, name: str) -> Path:
        return self.root / "staging" / check_name(name)

    def error_details(self, name: str) -> Path:
        """A new file for the full list of problems an error line of ``name`` can only summarize."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return self.root / "errors" / check_name(name) / f"{stamp}-{os.getpid()}.json"

    @contextmanager
    def events_lock(self) -> Iterator[None]:
        """Held while an episode run records its materializations: a lock file of this home."""
        path = self.root / "locks" / ".episode-events.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path)):
            yield

    def _registry_file(self, name: str) -> Path:
        return self.root / "datasets" / f"{check_name(name)}.json"

    def register(self, source: DatasetSource) -> None:
        """Remember where dataset ``source.name`` comes from (overwrites an earlier registration)."""
        path = self._registry_file(source.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two ingests may register at once
        tmp.write_text(json.dumps(asdict(source), indent=2))
        tmp.replace(path)

    def unregister(self, name: str) -> None:
        """Forget dataset ``name`` (used when its first ingest fails, so nothing stays half-registered)."""
        self._registry_file(name).unlink(missing_ok=True)

    def dataset_source(self, name: str) -> DatasetSource:
        path = self._registry_file(name)
        if not path.is_file():
            raise LeRobotAssetsError(
                f"dataset {name!r} is not registered in {self.root}; run `lerobot-assets ingest SOURCE --name {name}`"
            )
        return DatasetSource(**json.loads(path.read_text()))

    def registered(self) -> list[DatasetSource]:
        folder = self.root / "datasets"
        return [self.dataset_source(p.stem) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
