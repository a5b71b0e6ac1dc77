"""Dagster resources: where tables and local files live, how to reach the Hub, how to encode images.

Secrets are never fields with values here: the Hub token comes from ``HF_TOKEN`` (read by
huggingface_hub itself) unless set through a Dagster ``EnvVar``, and storage credentials come from
the standard cloud environment variables (see :func:`lerobot_assets.table.storage_creds`).
"""

from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, FilesystemIOManager
from pydantic import Field

from lerobot_assets.home import Home, default_home
from lerobot_assets.source import HubSettings
from lerobot_assets.video import DEFAULT_TOLERANCE_S


class StorageResource(ConfigurableResource):
    """The lerobot-assets home directory: registry, sources, staging files, locks; and each dataset's table URL."""

    home_dir: str = Field(
        default_factory=lambda: str(default_home()),
        description="Local directory for sources, staging files and locks ($LEROBOT_ASSETS_HOME).",
    )

    @property
    def home(self) -> Home:
        return Home(Path(self.home_dir))

    def table_url(self, dataset: str) -> str:
        """The table URL recorded when the dataset was registered (a local path or s3://, gs://...)."""
        return self.home.dataset_source(dataset).table


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


def io_manager(home: Home) -> FilesystemIOManager:
    """Where asset values (``hf_snapshot``, ``episode_metadata``) are pickled: ``<home>/dagster/storage``
    whichever Dagster instance records the run (the embedded one, ``$DAGSTER_HOME``'s, or the
    temporary one of ``dagster dev`` started without it), so every run of a home reads the same values."""
    return FilesystemIOManager(base_dir=str(home.dagster_home / "storage"))
