"""The Dagster layer: partitions, resources, assets, checks and sensors of every dataset."""
