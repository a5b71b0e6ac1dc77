"""What is materialized already: episode data versions in the Dagster instance, and what changed.

Each episode partition's data version is its input fingerprint plus the stages' code version. The
CLI and the sensor both compare the fingerprints of a new revision with the data versions of the
last ``deeplake_table`` materializations, so both redo exactly the episodes that changed.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dagster import AssetKey, DagsterEventType, DagsterInstance

from lerobot_assets.partitions import episode_partition

#: Bump when a stage's output changes for the same input, or the fingerprint's format changes (3:
#: fingerprints of values, not of their parquet encoding); part of each episode's data version, so
#: a bump makes the next ingest rewrite every episode rather than keep rows judged by another rule.
CODE_VERSION = "3"
DATA_VERSION_TAG = "dagster/data_version"
#: Data version recorded for an episode whose rows were removed because it vanished upstream.
REMOVED = "removed"


def episode_data_version(fingerprint: str) -> str:
    """The data version an episode partition gets for inputs with ``fingerprint``."""
    return f"{fingerprint}-{CODE_VERSION}"


@dataclass
class ChangePlan:
    """Episodes of one dataset sorted by what a new revision means for them."""

    added: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)

    @property
    def todo(self) -> list[int]:
        return sorted(self.added + self.changed)


def materialized_versions(instance: DagsterInstance, dataset: str, episodes: Iterable[int]) -> dict[int, str]:
    """The latest ``deeplake_table`` data version of each episode partition that has one (one query)."""
    keys = {str(episode_partition(dataset, i)): i for i in episodes}
    if not keys:
        return {}
    tags = instance.event_log_storage.get_latest_tags_by_partition(
        AssetKey("deeplake_table"),
        DagsterEventType.ASSET_MATERIALIZATION,
        [DATA_VERSION_TAG],
        asset_partitions=list(keys),
    )
    return {keys[k]: v[DATA_VERSION_TAG] for k, v in tags.items() if DATA_VERSION_TAG in v}


def plan_changes(instance: DagsterInstance, dataset: str, fingerprints: Mapping[int, str]) -> ChangePlan:
    """Compare ``fingerprints`` (episode -> fingerprint at the new revision) with what was materialized."""
    current = materialized_versions(instance, dataset, fingerprints)
    plan = ChangePlan()
    for index, fingerprint in sorted(fingerprints.items()):
        version = current.get(index)
        if version is None or version == REMOVED:
            plan.added.append(index)
        elif version != episode_data_version(fingerprint):
            plan.changed.append(index)
        else:
            plan.unchanged.append(index)
    return plan
