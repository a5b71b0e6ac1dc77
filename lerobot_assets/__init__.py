"""lerobot-assets: LeRobot datasets as versioned, queryable, streamable Deeplake tables, built by Dagster."""

from lerobot_assets.launch import info, ingest, open_snapshot, snapshot

__all__ = ["info", "ingest", "open_snapshot", "snapshot"]
