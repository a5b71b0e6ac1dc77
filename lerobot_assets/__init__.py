"""lerobot-assets: LeRobot datasets as versioned, queryable, streamable Deeplake tables, built by Dagster."""

from typing import Any

__all__ = ["info", "ingest", "open_snapshot", "snapshot"]


def __getattr__(name: str) -> Any:
    """Import the launcher (and with it Dagster) only when used: DataLoader workers never need it."""
    if name in __all__:
        from lerobot_assets import launch

        return getattr(launch, name)
    raise AttributeError(f"module 'lerobot_assets' has no attribute {name!r}")
