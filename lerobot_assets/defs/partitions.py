"""Names in Dagster for each registered dataset: its asset keys, its episode partitions, its jobs.

Every dataset gets its own assets (keys under the dataset's name) and its own dynamic partitions of
episodes, so each episode asset lists exactly the episodes its dataset has: the UI never offers a
(dataset, episode) pair that does not exist. See docs/architecture.md for why, and how it scales.
"""

import re
from collections.abc import Collection, Sequence

from dagster import AssetKey, DynamicPartitionsDefinition


def asset_prefix(dataset: str) -> str:
    """The dataset's name as a Dagster name (letters, digits, ``_``): its assets' key prefix and its jobs' prefix."""
    return re.sub(r"[^A-Za-z0-9_]", "_", dataset)


def dataset_asset_key(dataset: str, name: str) -> AssetKey:
    """The key of asset ``name`` (``deeplake_table``, ``hf_snapshot``...) of ``dataset``."""
    return AssetKey([asset_prefix(dataset), name])


def episode_partitions(dataset: str) -> DynamicPartitionsDefinition:
    """The episodes of ``dataset`` as dynamic partitions, added when its ``meta/`` is read."""
    return DynamicPartitionsDefinition(name=f"{asset_prefix(dataset)}_episodes")


def episode_pool(dataset: str) -> str:
    """The Dagster concurrency pool of ``dataset``'s episode step: a limit on it (``concurrency: pools:``
    in dagster.yaml, or ``dagster instance concurrency set``) holds for every run on the instance."""
    return f"{asset_prefix(dataset)}__episodes"


def episode_key(index: int) -> str:
    """An episode's partition key: zero-padded so keys sort like numbers."""
    return f"{index:06d}"


def episode_index(key: str) -> int:
    """The episode index of partition key ``key`` (the inverse of :func:`episode_key`)."""
    return int(key)


def job_name(dataset: str, use: str) -> str:
    """The named job of ``use`` (``ingest_episodes``, ``snapshot``...) for ``dataset``."""
    return f"{asset_prefix(dataset)}__{use}"


#: The run tags that make a run cover a range of partitions (Dagster's, as a backfill sets them).
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def partition_ranges(ordered: Sequence[str], wanted: Collection[str], size: int) -> list[list[str]]:
    """``wanted`` keys cut into runs of at most ``size`` keys that are consecutive in ``ordered``
    (the order Dagster keeps dynamic partitions in), so each run is a range ``[first, last]``."""
    wanted = set(wanted)
    ranges: list[list[str]] = []
    current: list[str] = []
    for key in ordered:
        if key in wanted and len(current) < size:
            current.append(key)
            continue
        if current:
            ranges.append(current)
        current = [key] if key in wanted else []
    if current:
        ranges.append(current)
    return ranges


def range_tags(keys: Sequence[str]) -> dict[str, str]:
    """The tags of a run over ``keys`` (a range from :func:`partition_ranges`)."""
    return {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}


#: Asset groups, one per use: ingesting a dataset, tagging it for training, relabelling it.
INGEST_GROUP, TRAINING_GROUP, LABELS_GROUP = "ingest", "training", "labels"


#: Asset groups, one per use: ingesting a dataset, tagging it for training, relabelling it.
INGEST_GROUP, TRAINING_GROUP, LABELS_GROUP = "ingest", "training", "labels"


#: Asset groups, one per use: ingesting a dataset, tagging it for training, relabelling it.
INGEST_GROUP, TRAINING_GROUP, LABELS_GROUP = "ingest", "training", "labels"
