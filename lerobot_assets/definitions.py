"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here.

Runs are launched through one named job per use, from the CLI (tagged ``launched-by:
lerobot-assets-cli``) as from the UI, so they show under what they did and can be re-executed.
"""

from typing import Any

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from lerobot_assets.assets import ALL_ASSETS, DATASET_ASSETS, EPISODE_ASSETS, training_snapshot
from lerobot_assets.home import Home, default_home
from lerobot_assets.relabel_assets import RELABEL_ASSETS, episode_labels, label_file
from lerobot_assets.resources import HubResource, ImageEncodingResource, StorageResource, io_manager
from lerobot_assets.sensors import upstream_revision_sensor

#: Job name -> (the assets its runs materialize, or a subset of them; what it is for).
JOB_ASSETS = {
    "ingest_dataset": (DATASET_ASSETS, "Pin a dataset's source at its current revision and read its meta/."),
    "ingest_episodes": (EPISODE_ASSETS, "Read, decode and write one episode's rows (unchanged episodes are recorded as such)."),
    "snapshot": ([training_snapshot], "Tag the table's current version for training."),
    "relabel_check": ([label_file], "Read a label file and check it against the table."),
    "relabel": ([episode_labels], "Write one episode's labels onto the review branch."),
}
JOBS = [
    define_asset_job(name, AssetSelection.assets(*assets), description=description)
    for name, (assets, description) in JOB_ASSETS.items()
]


def build_definitions(resources: dict[str, Any]) -> Definitions:
    """The code location's definitions with ``resources`` (the CLI's are those of its home and options)."""
    return Definitions(
        assets=[*ALL_ASSETS, *RELABEL_ASSETS],
        resources=resources,
        jobs=JOBS,
        sensors=[upstream_revision_sensor],
        # A run is one partition's few steps; separate step processes would only add start-up time.
        executor=in_process_executor,
    )


RESOURCES = {
    "storage": StorageResource(),
    "hub": HubResource(),
    "encoding": ImageEncodingResource(),
    "io_manager": io_manager(Home(default_home())),
}
defs = build_definitions(RESOURCES)
