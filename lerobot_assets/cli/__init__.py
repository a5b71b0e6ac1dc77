"""The ``lerobot-assets`` command line (``python -m lerobot_assets.cli``) and the demo."""

from lerobot_assets.cli.main import main

__all__ = ["main"]
