"""The Dagster layer: partitions, resources, assets, checks and sensors of every dataset.

``lerobot_assets.definitions`` merges them into the code location.
"""

# First, before any library that brings its own mimalloc loads (Deeplake, pyarrow): processes that
# load the asset graph write tables (see lerobot_assets.core.allocator).
import lerobot_assets.core.allocator  # noqa: F401, I001
