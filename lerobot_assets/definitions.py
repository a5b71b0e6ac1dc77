"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here.

Every registered dataset gets its own assets and one named job per use (``<dataset>__ingest_episodes``
...). Runs from the CLI (tagged ``launched-by: lerobot-assets-cli``) and from the UI go through
these jobs, so they show under what they did and can be re-executed. A dataset registered while a
code server runs appears there when the code location is reloaded (Deployment > Reload).
"""

from collections.abc import Sequence
from typing import Any

from dagster import AssetsDefinition, AssetSelection, Definitions, define_asset_job, in_process_executor

from lerobot_assets.defs.ingest import dataset_assets
from lerobot_assets.defs.labels import label_assets
from lerobot_assets.defs.partitions import job_name
from lerobot_assets.defs.resources import HubResource, ImageEncodingResource, StorageResource, TablesIOManager
from lerobot_assets.defs.sensors import upstream_revision_sensor
from lerobot_assets.runtime.home import Home, default_home
from lerobot_assets.runtime.registry import registry_of

#: Job use -> what its runs do.
USES = {
    "ingest_dataset": "Pin the dataset's source at its current revision and read its meta/.",
    "ingest_episodes": "Read, decode and write a range of episodes' rows (unchanged episodes are recorded as such).",
    "snapshot": "Tag the table's current version for training.",
    "relabel_check": "Read a label file and check it against the table.",
    "relabel": "Write one episode's labels onto the review branch.",
}


def job_assets(dataset: str) -> dict[str, list[AssetsDefinition]]:
    """Job use -> the assets of ``dataset`` its runs materialize (or a subset of them)."""
    assets = dataset_assets(dataset)
    label_file, episode_labels = label_assets(dataset)
    return {
        "ingest_dataset": [assets.hf_snapshot, assets.episode_metadata],
        "ingest_episodes": [assets.episodes],
        "snapshot": [assets.training_snapshot],
        "relabel_check": [label_file],
        "relabel": [episode_labels],
    }


def build_definitions(resources: dict[str, Any], datasets: Sequence[str]) -> Definitions:
    """The code location's definitions for ``datasets`` with ``resources`` (the CLI's are those of its home and options)."""
    assets, jobs = [], []
    for dataset in datasets:
        for use, selected in job_assets(dataset).items():
            assets += selected
            jobs.append(define_asset_job(job_name(dataset, use), AssetSelection.assets(*selected), description=USES[use]))
    return Definitions(
        assets=assets,
        resources=resources,
        jobs=jobs,
        sensors=[upstream_revision_sensor(jobs)],
        # A run is one step (a range of episodes, decoded in threads); step processes would only add start-up time.
        executor=in_process_executor,
    )


HOME = Home(default_home())
RESOURCES = {
    "storage": StorageResource(),
    "hub": HubResource(),
    "encoding": ImageEncodingResource(),
    "io_manager": TablesIOManager(root=HOME.tables),
}
defs = build_definitions(RESOURCES, [source.name for source in registry_of(HOME).registered()])
