"""Dagster resources: where tables and local files live, how to reach the Hub, how to encode images.

Secrets are never fields with values here: the Hub token comes from ``HF_TOKEN`` (read by
huggingface_hub itself) unless set through a Dagster ``EnvVar``, and storage credentials come from
the standard cloud environment variables (see :func:`lerobot_assets.core.table.access.storage_creds`).
"""

import pickle
from pathlib import Path
from typing import Any, Optional

from dagster import AssetKey, ConfigurableIOManager, ConfigurableResource, InputContext, MetadataValue, OutputContext
from pydantic import Field

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.core.media.video import DEFAULT_TOLERANCE_S
from lerobot_assets.core.sources import HubSettings
from lerobot_assets.core.storage import read_object, write_object
from lerobot_assets.core.table.registry import Registry
from lerobot_assets.runtime.home import Home, default_home
from lerobot_assets.runtime.registry import registry_of


class StorageResource(ConfigurableResource):
    """Where things live: this machine's home (pinned copies, caches) and the tables root every run
    shares (tables, the registry, staged frames, leases)."""

    home_dir: str = Field(
        default_factory=lambda: str(default_home()),
        description="This machine's directory for pinned copies and caches ($LEROBOT_ASSETS_HOME).",
    )
    tables: Optional[str] = Field(
        default=None,
        description="Tables root, a local path or s3://...; default: $LEROBOT_ASSETS_TABLES, else <home>/tables.",
    )

    @property
    def home(self) -> Home:
        return Home(Path(self.home_dir), self.tables)

    @property
    def registry(self) -> Registry:
        return registry_of(self.home)

    def table_url(self, dataset: str) -> str:
        """The table URL recorded when the dataset was registered (a local path or s3://...)."""
        return self.registry.dataset_source(dataset).table


class HubResource(ConfigurableResource):
    """The Hugging Face Hub client settings; empty fields defer to HF_ENDPOINT / HF_TOKEN / HF_HUB_OFFLINE."""

    endpoint: Optional[str] = Field(default=None, description="Hub URL; default: $HF_ENDPOINT or huggingface.co")
    token: Optional[str] = Field(
        default=None, description="Access token; set it with EnvVar('HF_TOKEN'), never as a literal."
    )
    offline: bool = Field(default=False, description="Use only what is already cached (like HF_HUB_OFFLINE=1).")

    def settings(self) -> HubSettings:
        return HubSettings(endpoint=self.endpoint, token=self.token, offline=self.offline)


class ImageEncodingResource(ConfigurableResource):
    """How decoded frames are stored in the table, and how many episodes a run decodes at once."""

    image_format: str = Field(default="jpeg", description="'jpeg' or 'png'.")
    quality: int = Field(default=95, ge=1, le=100, description="JPEG quality.")
    workers: Optional[int] = Field(
        default=None, ge=1, description="Episodes of a run decoded at once, in threads (default: the CPU count)."
    )
    tolerance_s: float = Field(
        default=DEFAULT_TOLERANCE_S,
        gt=0,
        description="Largest allowed gap between a row's timestamp and its video frame (capped at 1/fps).",
    )


class TablesIOManager(ConfigurableIOManager):
    """Asset values (``hf_snapshot``, ``episode_metadata``) pickled beside the tables, in
    ``<root>/.values/<asset key>``, so a run on any machine reads what a run on another wrote. The
    values hold no local path: each machine pins its own copy of the source."""

    root: str = Field(description="The tables root (see StorageResource.tables), resolved.")

    def _url(self, key: AssetKey) -> str:
        return f"{self.root.rstrip('/')}/.values/{'/'.join(key.path)}.pickle"

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        url = self._url(context.asset_key)
        write_object(url, pickle.dumps(obj))
        context.add_output_metadata({"value": MetadataValue.path(url)})

    def load_input(self, context: InputContext) -> Any:
        url = self._url(context.asset_key)
        data = read_object(url)
        if data is None:
            raise LeRobotAssetsError(f"no value of {context.asset_key.to_user_string()} at {url}: materialize it first")
        return pickle.loads(data)
