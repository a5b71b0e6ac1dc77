"""The partitions of the asset graph: datasets, and (dataset, episode) pairs.

Both dimensions are dynamic: datasets are added when registered, episodes when a dataset's
``meta/`` is read. The episode dimension is shared by all datasets, so not every pair exists;
launchers only request pairs that do.
"""

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

dataset_partitions = DynamicPartitionsDefinition(name="dataset")
episode_dimension = DynamicPartitionsDefinition(name="episode")
episode_partitions = MultiPartitionsDefinition({"dataset": dataset_partitions, "episode": episode_dimension})


def episode_key(index: int) -> str:
    """The episode dimension's key for ``index``: zero-padded so keys sort like numbers."""
    return f"{index:06d}"


def episode_partition(dataset: str, index: int) -> MultiPartitionKey:
    return MultiPartitionKey({"dataset": dataset, "episode": episode_key(index)})
