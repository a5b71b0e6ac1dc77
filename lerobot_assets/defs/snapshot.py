"""``training_snapshot``: a tag on the table's current version, the exact and reloadable data a
training run names (its indexes brought up to date first).
"""

import time
from collections.abc import Collection
from typing import Optional

from dagster import AssetExecutionContext, AssetsDefinition, Config, MaterializeResult, MetadataValue, asset

from lerobot_assets.core.table.access import create_tag, open_writable
from lerobot_assets.core.table.lease import hold
from lerobot_assets.core.table.metadata import summarize
from lerobot_assets.core.table.schema import build_indexes
from lerobot_assets.core.table.versions import CODE_VERSION
from lerobot_assets.defs.partitions import TRAINING_GROUP, dataset_asset_key
from lerobot_assets.defs.resources import StorageResource


class SnapshotConfig(Config):
    """Run config of ``training_snapshot``."""

    tag: Optional[str] = None  # default: see default_tag


def default_tag(dataset: str, revision: str, existing: Collection[str]) -> str:
    """``<dataset>-<UTC time>-<revision[:8]>``, then ``-2``, ``-3``... for snapshots taken within the same second."""
    base = f"{dataset}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{revision[:8]}"
    tag, count = base, 1
    while tag in existing:
        count += 1
        tag = f"{base}-{count}"
    return tag


def _tag_table(context: AssetExecutionContext, dataset: str, config: SnapshotConfig, storage: StorageResource) -> MaterializeResult:
    url = storage.table_url(dataset)
    with hold(url):
        started = time.perf_counter()
        build_indexes(url)
        context.log.info(f"{dataset}: indexes up to date ({time.perf_counter() - started:.1f} s)")
        ds = open_writable(url)
        revision = summarize(ds, url).metadata.get("revision", "unknown")
        tag = config.tag or default_tag(dataset, revision, ds.tags.names())
        version = create_tag(ds, tag, url)
    summary = summarize(ds, url)
    context.log.info(f"{dataset}: tagged version {version} as {tag!r} ({summary.rows} rows)")
    return MaterializeResult(
        metadata={
            "tag": tag,
            "version": version,
            "rows": summary.rows,
            "episodes": MetadataValue.json(sorted(summary.episodes)),
            "revision": revision,
            "table": MetadataValue.path(url),
        }
    )


def training_snapshot_asset(dataset: str) -> AssetsDefinition:
    """``training_snapshot`` of ``dataset``."""

    @asset(
        key=dataset_asset_key(dataset, "training_snapshot"),
        deps=[dataset_asset_key(dataset, "deeplake_table")],
        code_version=CODE_VERSION,
        group_name=TRAINING_GROUP,
        kinds={"deeplake"},
    )
    def training_snapshot(context: AssetExecutionContext, config: SnapshotConfig, storage: StorageResource) -> MaterializeResult:
        """A tag on the table's current version: the exact, reloadable data a training run names."""
        return _tag_table(context, dataset, config, storage)

    return training_snapshot
