"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here."""

from dagster import Definitions

from lerobot_assets.assets import ALL_ASSETS
from lerobot_assets.resources import HubResource, ImageEncodingResource, StorageResource

RESOURCES = {"storage": StorageResource(), "hub": HubResource(), "encoding": ImageEncodingResource()}

defs = Definitions(assets=ALL_ASSETS, resources=RESOURCES)
