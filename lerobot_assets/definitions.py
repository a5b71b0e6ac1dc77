"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here."""

from dagster import Definitions, in_process_executor

from lerobot_assets.assets import ALL_ASSETS
from lerobot_assets.relabel_assets import RELABEL_ASSETS
from lerobot_assets.resources import HubResource, ImageEncodingResource, StorageResource
from lerobot_assets.sensors import upstream_revision_sensor

RESOURCES = {"storage": StorageResource(), "hub": HubResource(), "encoding": ImageEncodingResource()}

defs = Definitions(
    assets=[*ALL_ASSETS, *RELABEL_ASSETS],
    resources=RESOURCES,
    sensors=[upstream_revision_sensor],
    # A run is one partition's few steps; separate step processes would only add start-up time.
    executor=in_process_executor,
)
