"""The registry of datasets, kept beside the tables: where each comes from and where its table is.

Every run, on any machine, finds a dataset by name in ``<tables root>/.registry/<name>.json``;
the code location builds one set of assets per entry, the sensor watches every entry.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.core.names import check_name
from lerobot_assets.core.storage import delete_object, list_objects, read_object, write_object

REGISTRY_FOLDER = ".registry"


@dataclass(frozen=True)
class DatasetSource:
    """Where a registered dataset comes from: a Hub repo id or a local directory."""

    name: str
    source: str
    kind: str  # "hub" or "local"
    table: str  # Deeplake URL of the dataset's table
    revision: str | None = None  # requested revision (branch, tag or sha); None = latest


@dataclass(frozen=True)
class Registry:
    """The datasets registered under one tables root (a local path or an ``s3://`` URL)."""

    root: str

    def _url(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{REGISTRY_FOLDER}/{check_name(name)}.json"

    def register(self, source: DatasetSource) -> None:
        """Remember where dataset ``source.name`` comes from (overwrites an earlier registration)."""
        write_object(self._url(source.name), json.dumps(asdict(source), indent=2).encode())

    def unregister(self, name: str) -> None:
        """Forget dataset ``name`` (used when its first ingest fails, so nothing stays half-registered)."""
        delete_object(self._url(name))

    def get(self, name: str) -> DatasetSource | None:
        data = read_object(self._url(name))
        return None if data is None else DatasetSource(**json.loads(data))

    def dataset_source(self, name: str) -> DatasetSource:
        """The entry of ``name``, or an error that says which root was searched and how to name another."""
        entry = self.get(name)
        if entry is None:
            raise LeRobotAssetsError(
                f"dataset {name!r} is not registered under the tables root {self.root}; run "
                f"`lerobot-assets ingest SOURCE --name {name}`, or name the root it was ingested into with --tables "
                "or $LEROBOT_ASSETS_TABLES"
            )
        return entry

    def registered(self) -> list[DatasetSource]:
        """Every entry, by name."""
        folder = f"{self.root.rstrip('/')}/{REGISTRY_FOLDER}"
        entries = (self.get(name.removesuffix(".json")) for name in list_objects(folder) if name.endswith(".json"))
        return [entry for entry in entries if entry is not None]  # one unregistered meanwhile is gone
